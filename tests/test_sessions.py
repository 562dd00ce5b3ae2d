"""World sessions through the real handler: tiny model, moto S3 on 127.0.0.1."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from conftest import b64, decode_rgb, png_bytes, run

from pipeline.generation.world_state import WorldState
from worker.errors import WorkerError



def code_of(out) -> str:
    assert set(out) <= {"error", "refresh_worker"}, out
    assert "refresh_worker" not in out  # a bad state is the user's fault: the worker stays
    return out["error"].split(":", 1)[0]


def first_job(**extra):
    return {"prompt": "a quiet harbour at dawn", "image_base64": b64(png_bytes(96, 54)), "seed": 5,
            "num_inference_steps": 2, **extra}


def state_of(storage, key) -> WorldState:
    return WorldState.from_bytes(storage.get_bytes(key, 2**30))


def frames_of(storage, out, tmp_path, name):
    path = tmp_path / f"{name}.mp4"
    path.write_bytes(storage.get_bytes(out["minio_key"], 2**30))
    return decode_rgb(path)


@pytest.fixture
def sixteen(real_pipeline, storage):
    """One job of 16 latents (the reference) and job A of 8 latents."""
    one = run(first_job(pose="w-7, right-8"), "one-shot")
    a = run(first_job(pose="w-7", output={"key_prefix": "sessions"}), "job-a")
    assert "error" not in one and "error" not in a, (one, a)
    return one, a


def test_continuation_equals_one_long_job(sixteen, storage, tmp_path):
    one, a = sixteen
    assert a["state_key"] == "sessions/job-a/world.safetensors" and a["session_latents"] == 8
    b = run({"continue_from": a["state_key"], "pose": "right-8"}, "job-b")
    assert "error" not in b, b
    assert (b["seed"], b["mode"], b["num_inference_steps"], b["num_frames"]) == (5, "ar", 2, 32)
    assert b["session_latents"] == 16 and b["state_key"] == "worldplay/job-b/world.safetensors"
    whole, split = state_of(storage, one["state_key"]), state_of(storage, b["state_key"])
    assert torch.equal(split.latents, whole.latents)  # bit-identical
    assert torch.equal(split.c2w, whole.c2w) and torch.equal(split.actions, whole.actions)
    # the MP4s hold 29 + 32 frames; joined they are the one-shot video up to H.264 (same encoder input)
    ref = frames_of(storage, one, tmp_path, "one").astype(int)
    got = np.concatenate([frames_of(storage, a, tmp_path, "a"), frames_of(storage, b, tmp_path, "b")]).astype(int)
    assert got.shape == ref.shape == (61, 48, 80, 3)
    assert np.abs(got[29:] - ref[29:]).mean() < 3.0  # only the encoder's independent GOPs differ


def test_chain_of_three_with_prompt_change_and_pose_json(sixteen, storage):
    one, a = sixteen
    whole = state_of(storage, one["state_key"])
    k = [[969.6969696969696, 0.0, 960.0], [0.0, 969.6969696969696, 540.0], [0.0, 0.0, 1.0]]
    pose_json = {str(i): {"extrinsic": whole.c2w[8 + i].tolist(), "K": k} for i in range(4)}
    b = run({"continue_from": a["state_key"], "pose_json": pose_json}, "chain-b")
    c = run({"continue_from": b["state_key"], "pose": "right-4"}, "chain-c")
    assert "error" not in b and "error" not in c, (b, c)
    assert c["session_latents"] == 16 and c["num_frames"] == 16
    assert torch.equal(state_of(storage, c["state_key"]).latents, whole.latents)
    d = run({"continue_from": c["state_key"], "actions": [{"key": "w", "latents": 8}, {"key": "a", "latents": 4}],
             "prompt": "the harbour at night, lanterns lit"}, "chain-d")
    assert "error" not in d, d
    final = state_of(storage, d["state_key"])
    assert final.num_latents == 28 and final.prompt == "the harbour at night, lanterns lit"
    assert torch.equal(final.latents[:16], whole.latents)


def test_saving_can_be_turned_off(real_pipeline, storage, monkeypatch):
    out = run(first_job(pose="w-3", output={"save_state": False}), "nosave")
    assert "error" not in out and out["state_key"] is None
    monkeypatch.setenv("WORLDPLAY_SAVE_STATE", "0")
    out = run(first_job(pose="w-3"), "nosave-env")
    assert "error" not in out and out["state_key"] is None
    with pytest.raises(Exception):
        storage.get_bytes("worldplay/nosave-env/world.safetensors", 2**20)


def test_session_errors(sixteen, storage, monkeypatch):
    one, a = sixteen
    key = a["state_key"]
    assert code_of(run({"continue_from": "sessions/missing/world.safetensors", "pose": "w-4"}, "e1")) == \
        "STATE_NOT_FOUND"
    storage.put_bytes("junk/world.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    assert code_of(run({"continue_from": "junk/world.safetensors", "pose": "w-4"}, "e2")) == "INVALID_STATE"
    storage.put_bytes("junk/video.mp4", storage.get_bytes(one["minio_key"], 2**30))
    assert code_of(run({"continue_from": "junk/video.mp4", "pose": "w-4"}, "e3")) == "INVALID_STATE"
    # another checkpoint (the fingerprint differs), another mode
    state = state_of(storage, key)
    state.checkpoint = "sha256:" + "f" * 32
    storage.put_bytes("junk/other.safetensors", state.to_bytes())
    out = run({"continue_from": "junk/other.safetensors", "pose": "w-4"}, "e4")
    assert code_of(out) == "STATE_MISMATCH" and "checkpoint" in out["error"]
    out = run({"continue_from": key, "pose": "w-4", "mode": "bidirectional"}, "e5")
    assert code_of(out) in ("STATE_MISMATCH", "MODE_UNAVAILABLE")
    monkeypatch.setenv("WORLDPLAY_MODES", "ar,bidirectional")
    out = run({"continue_from": key, "pose": "w-16", "mode": "bidirectional"}, "e5b")
    assert code_of(out) == "STATE_MISMATCH" and "ar mode" in out["error"]
    monkeypatch.setenv("WORLDPLAY_MODES", "ar")
    # the mode's rule, in the user's units
    out = run({"continue_from": key, "pose": "w-6"}, "e6")
    assert code_of(out) == "INVALID_FRAME_COUNT" and "'w-6' adds 6 latents (24 frames)" in out["error"]
    out = run({"continue_from": key, "pose": "w-8", "num_frames": 33}, "e7")
    assert code_of(out) == "INVALID_FRAME_COUNT" and "32 new frames" in out["error"]
    # session limits: latents and bytes
    monkeypatch.setenv("WORLDPLAY_MAX_SESSION_LATENTS", "12")
    out = run({"continue_from": key, "pose": "w-8"}, "e8")
    assert code_of(out) == "SESSION_TOO_LONG" and "16 latents" in out["error"]
    monkeypatch.setenv("WORLDPLAY_MAX_SESSION_BYTES", "4096")
    assert code_of(run({"continue_from": key, "pose": "w-4"}, "e9")) == "SESSION_TOO_LONG"
    monkeypatch.delenv("WORLDPLAY_MAX_SESSION_LATENTS")
    monkeypatch.delenv("WORLDPLAY_MAX_SESSION_BYTES")
    # an image with continue_from is refused by the schema
    out = run({"continue_from": key, "pose": "w-4", "image_base64": b64(png_bytes())}, "e10")
    assert code_of(out) == "INVALID_INPUT" and "takes no image" in out["error"]
    # a NaN inside an otherwise valid state
    state = state_of(storage, key)
    state.latents[0, 0, 0, 0] = float("nan")
    storage.put_bytes("junk/nan.safetensors", state.to_bytes())
    out = run({"continue_from": "junk/nan.safetensors", "pose": "w-4"}, "e11")
    assert code_of(out) == "INVALID_STATE" and "NaN" in out["error"]


def test_a_state_upload_that_fails_keeps_the_finished_video(real_pipeline, storage, monkeypatch):
    """The state goes up after the video: a storage fault then is retried over the upload window,
    and if it persists the job still returns its stored video, with state_error instead of state_key."""
    import minio
    import urllib3

    from worker import storage as storage_mod

    real_put_object = minio.Minio.put_object
    failures = {"left": 2}

    def put_object(self, bucket_name, object_name, *args, **kwargs):
        if object_name.endswith("world.safetensors") and failures["left"] > 0:
            failures["left"] -= 1
            raise urllib3.exceptions.ProtocolError("connection reset by the test")
        return real_put_object(self, bucket_name, object_name, *args, **kwargs)

    monkeypatch.setattr(minio.Minio, "put_object", put_object)
    monkeypatch.setattr(storage_mod.Storage, "_sleep", staticmethod(lambda seconds: None))
    out = run(first_job(pose="w-3"), "state-blip")  # two failures, then stored within the window
    assert "error" not in out and out["state_key"] == "worldplay/state-blip/world.safetensors"
    assert failures["left"] == 0 and state_of(storage, out["state_key"]).num_latents == 4

    failures["left"] = 10**6
    monkeypatch.setenv("MINIO_UPLOAD_RETRY_SECONDS", "0")  # one attempt: the fault persists
    out = run(first_job(pose="w-3"), "state-lost")
    assert "error" not in out and out["state_key"] is None and out["session_latents"] is None
    assert out["state_error"].startswith("STORAGE_UNAVAILABLE")
    assert storage.get_bytes(out["minio_key"], 2**30)[4:8] == b"ftyp"  # the video is stored


def test_num_frames_of_a_continuation_is_answered_in_frames(sixteen, storage):
    """issue 23, item 9: a continuation's num_frames is checked in the frames the user wrote (4 per
    new latent, whole chunks), not in the latents of the camera path it implies."""
    from worker.session import check_continuation_frames

    with pytest.raises(WorkerError) as info:
        check_continuation_frames(30, "ar")
    assert info.value.code == "INVALID_FRAME_COUNT"
    assert info.value.message == ("num_frames 30 cannot continue a world in ar mode: a continuation adds "
                                  "whole chunks of 16 frames (4 per new latent, no start frame), i.e. 16, "
                                  "32, 48, ...; the nearest valid are 16 or 32 frames")
    with pytest.raises(WorkerError) as info:
        check_continuation_frames(33, "bidirectional")
    assert "the nearest valid are 64 frames" not in info.value.message and "64" in info.value.message
    check_continuation_frames(32, "ar")
    check_continuation_frames(128, "bidirectional")
    key = sixteen[1]["state_key"]
    out = run({"continue_from": key, "num_frames": 30}, "nf2")  # no camera field: num_frames alone
    assert code_of(out) == "INVALID_FRAME_COUNT" and "num_frames 30" in out["error"]
    assert "16 or 32 frames" in out["error"] and "latents (" not in out["error"]
    ok = run({"continue_from": key, "num_frames": 32}, "nf3")
    assert "error" not in ok and ok["num_frames"] == 32
    out = run({"continue_from": key, "pose": "w-8", "num_frames": 48}, "nf4")
    assert "send num_frames 32, or leave num_frames out" in out["error"]


def test_redecode_from_gives_the_whole_world_again_as_one_job_made_it(sixteen, storage, tmp_path, monkeypatch):
    """A saved world's whole video decoded again from its latents (a live world's full-quality MP4): the
    frames of the one job that rendered the same world, with nothing generated and no new state."""
    one, a = sixteen
    b = run({"continue_from": a["state_key"], "pose": "right-8"}, "job-b2")
    again = run({"redecode_from": b["state_key"], "output": {"preview": False}}, "redecode")
    assert "error" not in again, again
    assert (again["seed"], again["model"], again["mode"], again["num_inference_steps"]) == (5, "ar_distilled", "ar", 2)
    assert again["num_frames"] == 61 and again["state_key"] is None  # the state it read stays the one
    assert again["minio_key"] == "worldplay/redecode/video.mp4"
    diff = frames_of(storage, again, tmp_path, "again").astype(int) - frames_of(storage, one, tmp_path, "one")
    assert np.abs(diff).mean() < 0.5  # the same frames into the same encoder (the decode itself: test_world)
    # what it refuses, by name and before any decoding
    assert code_of(run({"redecode_from": "worldplay/none/world.safetensors"}, "r1")) == "STATE_NOT_FOUND"
    refused = run({"redecode_from": b["state_key"], "prompt": "more"}, "r2")
    assert code_of(refused) == "INVALID_INPUT" and "prompt: unknown field" in refused["error"]
    assert code_of(run({"redecode_from": b["state_key"], "decoder": "fast"}, "r3")) == "MODEL_UNAVAILABLE"
    monkeypatch.setenv("WORLDPLAY_CONTINUE_PREFIXES", "sessions/")
    forbidden = run({"redecode_from": b["state_key"]}, "r4")
    assert code_of(forbidden) == "STATE_FORBIDDEN" and "redecode_from" in forbidden["error"]
