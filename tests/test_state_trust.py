"""World states that can be trusted, through the real handler (tiny model, moto S3 on 127.0.0.1):
WORLDPLAY_STATE_SECRET signs every state the worker writes and refuses unsigned / altered / moved ones,
WORLDPLAY_CONTINUE_PREFIXES limits the keys continue_from may name, and the reader refuses camera and
image-embedding values the model cannot use (issue 20)."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import b64, code_of, png_bytes, run, small_world_state

from pipeline.errors import StateError
from pipeline.generation.world_state import WorldState
from worker import session

SECRET = "state-secret-Kq7Vw2Lp9x"  # must never show up in an output or a log line


def first_job(**extra):
    return {"prompt": "a quiet harbour at dawn", "image_base64": b64(png_bytes(96, 54)), "seed": 5,
            "num_inference_steps": 2, "pose": "w-3", **extra}


def refused(out, code="INVALID_STATE"):
    assert code_of(out) == code and "refresh_worker" not in out, out
    return out["error"]


def test_signed_states_only(real_pipeline, storage, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("WORLDPLAY_STATE_SECRET", SECRET)
    a = run(first_job(output={"key_prefix": "tenant-a"}), "signed-a")
    assert "error" not in a, a
    key = a["state_key"]
    data = storage.get_bytes(key, 2**30)
    size, meta = storage.stat(key)
    assert size == len(data)
    signature = meta["worldplay-signature"]
    assert signature == session.sign_state(SECRET.encode(), key, data) and signature.startswith("v1:")

    b = run({"continue_from": key, "pose": "w-4"}, "signed-b")  # its own state, signed: continued
    assert "error" not in b and b["session_latents"] == 8, b
    assert storage.stat(b["state_key"])[1]["worldplay-signature"].startswith("v1:")

    headers = {"x-amz-meta-worldplay-signature": signature}
    # the same bytes and signature under another key: the signature covers the key
    storage.put_bytes("tenant-b/copied/world.safetensors", data, headers=headers)
    assert "moved to another key" in refused(run({"continue_from": "tenant-b/copied/world.safetensors",
                                                  "pose": "w-4"}, "moved"))
    # one field changed, the old signature kept
    state = WorldState.from_bytes(data)
    state.prompt = "someone else's world"
    storage.put_bytes(key, state.to_bytes(), headers=headers)
    assert "altered" in refused(run({"continue_from": key, "pose": "w-4"}, "altered"))
    # unsigned: refused before a byte is parsed (garbage gets the same answer as a valid state)
    for name, body in (("unsigned", data), ("garbage", b"\x00" * 64)):
        storage.put_bytes(f"tenant-a/{name}/world.safetensors", body)
        assert "is not signed" in refused(run({"continue_from": f"tenant-a/{name}/world.safetensors",
                                               "pose": "w-4"}, name))
    # a bad signature value, and the right one under another secret
    storage.put_bytes(key, data, headers={"x-amz-meta-worldplay-signature": "v1:" + "0" * 64})
    refused(run({"continue_from": key, "pose": "w-4"}, "zeros"))
    storage.put_bytes(key, data, headers=headers)
    monkeypatch.setenv("WORLDPLAY_STATE_SECRET", "another-deployment-secret")
    assert "another WORLDPLAY_STATE_SECRET" in refused(run({"continue_from": key, "pose": "w-4"}, "foreign"))
    # without a secret nothing is checked: the signed state continues like any other
    monkeypatch.delenv("WORLDPLAY_STATE_SECRET")
    c = run({"continue_from": "tenant-a/unsigned/world.safetensors", "pose": "w-4", "output": {"save_state": False}},
            "no-secret")
    assert "error" not in c, c
    assert SECRET not in caplog.text
    for out in (a, b, c):
        assert SECRET not in str(out)


def test_the_secret_is_redacted_from_messages(monkeypatch):
    from worker.errors import WorkerError

    monkeypatch.setenv("WORLDPLAY_STATE_SECRET", SECRET)
    assert SECRET not in WorkerError("INTERNAL_ERROR", f"boom {SECRET} boom").to_dict()["error"]


def test_continue_prefixes(s3_env, storage, monkeypatch):
    monkeypatch.setenv("WORLDPLAY_CONTINUE_PREFIXES", " tenant-a/ , shared/")
    storage.put_bytes("tenant-b/job/world.safetensors", b"\x00" * 64)
    out = run({"continue_from": "tenant-b/job/world.safetensors", "pose": "w-4"}, "other-tenant")
    message = refused(out, "STATE_FORBIDDEN")
    assert "tenant-a/,shared/" in message and "WORLDPLAY_CONTINUE_PREFIXES" in message
    # an allowed prefix goes on to the bucket: a missing key there is STATE_NOT_FOUND
    refused(run({"continue_from": "tenant-a/none/world.safetensors", "pose": "w-4"}, "missing"), "STATE_NOT_FOUND")
    refused(run({"continue_from": "shared/job/world.safetensors", "pose": "w-4"}, "shared"), "STATE_NOT_FOUND")
    # "tenant-a/" does not admit "tenant-ab/"
    refused(run({"continue_from": "tenant-ab/x/world.safetensors", "pose": "w-4"}, "near"), "STATE_FORBIDDEN")
    assert session.continue_prefixes({"WORLDPLAY_CONTINUE_PREFIXES": ", ,"}) == ()


def test_state_values_the_model_cannot_use(real_pipeline, storage):
    a = run(first_job(), "values-a")
    assert "error" not in a, a
    good = WorldState.from_bytes(storage.get_bytes(a["state_key"], 2**30))
    tokens, width = real_pipeline.encoders.vision_shape()
    assert tuple(good.vision.shape) == (tokens, width)  # what the worker wrote is what the encoder makes

    def attempt(name, change, code="INVALID_STATE"):
        state = WorldState.from_bytes(good.to_bytes())
        change(state)
        storage.put_bytes(f"crafted/{name}.safetensors", state.to_bytes())
        return refused(run({"continue_from": f"crafted/{name}.safetensors", "pose": "w-4"}, name), code)

    # an image embedding of more tokens than the image encoder makes (it would inflate the conditioning
    # and the AR cache), or of fewer: the token count comes from the loaded SigLIP's config
    for rows in (tokens * 64, tokens - 1):
        message = attempt(f"vision-{rows}", lambda s, r=rows: setattr(s, "vision", torch.zeros(r, width)),
                          "STATE_MISMATCH")
        assert f"[{rows}, {width}]" in message and f"[{tokens}, {width}]" in message
    # focal lengths the camera encoding divides by
    for name, value in (("fx-zero", 0.0), ("fx-negative", -0.5), ("fx-tiny", 1e-9)):
        def focal(s, v=value):
            s.intrinsics[2, 0, 0] = v
        assert "focal" in attempt(name, focal)
    # rotation blocks the camera encoding inverts by transposing
    def scaled(s):
        s.c2w[1, :3, :3] *= 2.0

    def sheared(s):
        s.c2w[3, 0, 1] += 0.01

    def reflected(s):
        s.c2w[0, :3, 0] *= -1.0

    for name, change in (("scaled", scaled), ("sheared", sheared), ("reflected", reflected)):
        assert "orthonormal" in attempt(name, change)


def test_rotation_tolerance_admits_float_rounding():
    state = WorldState.from_bytes(small_world_state().to_bytes())
    state.c2w[:, :3, :3] += 1e-7  # float32 round trips of a pose JSON stay far inside 1e-4
    assert WorldState.from_bytes(state.to_bytes()).num_latents == 4
    state.c2w[:, :3, :3] += 1e-3
    with pytest.raises(StateError, match="orthonormal"):
        WorldState.from_bytes(state.to_bytes())

