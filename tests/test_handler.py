"""The job flow through the RunPod handler: success path (real tiny pipeline and a fake one), every
error code, progress, cancellation, health, secrets, local test mode as a subprocess."""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import requests
from conftest import S3_SECRET_KEY, b64, code_of, decode_rgb, png_bytes, run, worker_subprocess_env

from pipeline.video import is_faststart, probe_mp4
from worker import job as worker_job
from worker.errors import ERROR_CODES, WorkerError, from_exception

REPO = Path(__file__).resolve().parents[1]




def base_input(**extra):
    return {"prompt": "a quiet harbour at dawn", "image_base64": b64(png_bytes()),
            "pose": "w-3", **extra}


def check_video(out, storage, tmp_path, *, frames, fps=24):
    assert out["bucket"] == storage.bucket
    data = storage.get_bytes(out["minio_key"], 50 * 2**20)
    via_url = requests.get(out["presigned_url"], timeout=10)
    assert via_url.status_code == 200 and via_url.content == data
    assert via_url.headers["Content-Type"] == "video/mp4"
    path = tmp_path / "check.mp4"
    path.write_bytes(data)
    info = probe_mp4(path)
    assert (info.codec, info.pix_fmt) == ("h264", "yuv420p")
    assert (info.width, info.height) == (out["width"], out["height"])
    assert info.num_frames == out["num_frames"] == frames
    assert info.fps == pytest.approx(fps) and out["fps"] == fps
    assert out["duration_seconds"] == pytest.approx(frames / fps, abs=1e-3)
    assert is_faststart(path)
    return info


def tmp_is_clean(env) -> bool:
    return not any(Path(env["WORLDPLAY_TMPDIR"]).iterdir())


# ---- success, REAL tiny pipeline ---------------------------------------------------------------
def test_real_pipeline_image_key_and_pose_key(real_pipeline, storage, s3_env, tmp_path,
                                              no_secret_in_logs):
    from smoke_test import make_pose_json

    storage.put_bytes("inputs/room.png", png_bytes(128, 72), "image/png")
    storage.put_bytes("inputs/pose.json", json.dumps(make_pose_json(4)).encode())
    out = run({"prompt": "a room", "input_image_minio_path": "inputs/room.png",
               "pose_key": "inputs/pose.json", "seed": 11, "output": {"key_prefix": "renders/x"}},
              job_id="real-1")
    assert "error" not in out, out
    assert out["minio_key"] == "renders/x/real-1/video.mp4"
    check_video(out, storage, tmp_path, frames=13)
    assert (out["seed"], out["mode"], out["num_inference_steps"], out["guidance_scale"]) == (
        11, "ar", 4, 1.0)
    assert set(out["timings"]) == {"validate", "fetch", "load", "generate", "encode", "upload"}
    assert out["generation_time_seconds"] >= sum(out["timings"].values()) - 0.05
    assert tmp_is_clean(s3_env)
    assert S3_SECRET_KEY not in json.dumps(out)


def test_real_pipeline_legacy_request_shape(real_pipeline, storage, tmp_path):
    out = run({"prompt": "a forest path", "image_base64": "data:image/png;base64,"
               + b64(png_bytes(80, 48)), "num_frames": 13, "pose": "w-2, right-1",
               "num_inference_steps": 2})
    assert "error" not in out, out
    check_video(out, storage, tmp_path, frames=13)
    assert out["num_inference_steps"] == 2 and 0 <= out["seed"] <= 2**31 - 1


# ---- success details with the FAKE pipeline ----------------------------------------------------
def test_fake_pipeline_full_flow(fake_pipeline, storage, s3_env, tmp_path):
    out = run(base_input(seed=5, fps=12, mode="ar", num_inference_steps=3,
                         guidance_scale=1.5, negative_prompt="blur"), job_id="../../etc")
    assert "error" not in out, out
    assert out["minio_key"] == "worldplay/etc/video.mp4"  # job id sanitised
    check_video(out, storage, tmp_path, frames=13, fps=12)
    req = fake_pipeline.calls[-1]
    assert (req.seed, req.num_inference_steps, req.guidance_scale, req.negative_prompt) == (
        5, 3, 1.5, "blur")
    assert req.image.mode == "RGB" and req.image.size == (96, 64)
    assert req.camera.num_frames == 13
    assert tmp_is_clean(s3_env)


def test_frames_stream_into_the_encoder_during_generation(fake_pipeline, storage, s3_env, tmp_path,
                                                         monkeypatch):
    """The MP4 is written chunk by chunk while the pipeline runs, and equals one encoded at once."""
    from pipeline import video

    writes = []
    real_write = video.Mp4Writer.write

    def spy(self, frames):
        writes.append((len(frames), len(fake_pipeline.calls)))
        return real_write(self, frames)

    monkeypatch.setattr(video.Mp4Writer, "write", spy)
    out = run(base_input(pose="w-11", seed=3))
    assert "error" not in out, out
    assert [n for n, _ in writes] == [13, 16, 16]
    check_video(out, storage, tmp_path, frames=45)

    fake_pipeline.stream = False  # a pipeline that returns all frames at the end still works
    writes.clear()
    whole = run(base_input(pose="w-11", seed=3))
    assert [n for n, _ in writes] == [45]
    # same frames, same encoder settings: the same pictures whether streamed or not
    pictures = []
    for result in (out, whole):
        path = tmp_path / f"{result['minio_key'].replace('/', '_')}"
        path.write_bytes(storage.get_bytes(result["minio_key"], 2**24))
        pictures.append(decode_rgb(path).astype(int))
    assert pictures[0].shape == pictures[1].shape == (45, 48, 64, 3)
    assert np.abs(pictures[0] - pictures[1]).mean() < 0.5
    assert tmp_is_clean(s3_env)


def test_failure_mid_stream_leaves_nothing_behind(fake_pipeline, storage, s3_env):
    from pipeline.errors import GenerationCancelled

    fake_pipeline.fail_after_first_chunk = RuntimeError("CUDA error: an illegal memory access")
    out = run(base_input(pose="w-7"), job_id="mid-1")
    assert code_of(out) == "GPU_ERROR" and out["refresh_worker"] is True
    fake_pipeline.fail_after_first_chunk = GenerationCancelled("cancelled after 4 of 8 denoising steps")
    out = run(base_input(pose="w-7"), job_id="mid-2")
    assert code_of(out) == "CANCELLED"
    assert tmp_is_clean(s3_env)
    for job_id in ("mid-1", "mid-2"):
        with pytest.raises(WorkerError, match="OBJECT_NOT_FOUND|not found"):
            storage.stat_size(f"worldplay/{job_id}/video.mp4")
    assert not [t for t in threading.enumerate() if t.name == "mp4-writer"]  # encoder threads ended


@pytest.mark.parametrize("camera, frames", [
    ({"pose": "w-7"}, 29),
    ({"actions": [{"key": "w", "latents": 4}, {"key": "right", "latents": 3}]}, 29),
    ({"pose_json": None}, 13),
])
def test_camera_sources(fake_pipeline, storage, camera, frames):
    from smoke_test import make_pose_json

    if "pose_json" in camera:
        camera = {"pose_json": make_pose_json(4)}
    data = base_input(**camera)
    data.pop("pose") if "pose" not in camera else None
    out = run(data)
    assert "error" not in out, out
    assert out["num_frames"] == frames == fake_pipeline.calls[-1].camera.num_frames


def test_random_seed_is_returned_and_used(fake_pipeline):
    a, b = run(base_input()), run(base_input())
    for out, req in zip((a, b), fake_pipeline.calls):
        assert isinstance(out["seed"], int) and 0 <= out["seed"] <= 2**31 - 1
        assert req.seed == out["seed"]
    assert a["seed"] != b["seed"]


def test_image_url_and_jpeg_webp(fake_pipeline, http_stub, allow_private_urls):
    http_stub.route("/in.jpg", (200, {"Content-Type": "image/jpeg"}, png_bytes(fmt="JPEG")))
    out = run({"prompt": "p", "image_url": f"{http_stub.url}/in.jpg", "pose": "w-3"})
    assert "error" not in out, out
    out = run({"prompt": "p", "image_base64": b64(png_bytes(fmt="WEBP")), "pose": "w-3"})
    assert "error" not in out, out


def test_rgba_image_is_flattened(fake_pipeline):
    from io import BytesIO

    from PIL import Image

    buf = BytesIO()
    Image.new("RGBA", (40, 30), (255, 0, 0, 0)).save(buf, "PNG")
    assert "error" not in run(base_input(image_base64=b64(buf.getvalue())))
    img = fake_pipeline.calls[-1].image
    assert img.mode == "RGB" and img.getpixel((5, 5)) == (255, 255, 255)


# ---- errors ------------------------------------------------------------------------------------
def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression-bomb shape, no real data)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("patch, code, fragment", [
    ({"prompt": ""}, "INVALID_INPUT", "prompt: prompt must not be empty"),
    ({"colour": "red"}, "INVALID_INPUT", "colour: unknown field"),
    ({"seed": True}, "INVALID_INPUT", "seed:"),
    ({"num_inference_steps": 500}, "INVALID_INPUT", "num_inference_steps:"),
    ({"image_url": "https://x.invalid/a.png"}, "INVALID_INPUT", "exactly one of image_key"),
    ({"pose": "jump-3"}, "INVALID_POSE", ""),
    ({"pose": "w-2.5"}, "INVALID_POSE", ""),
    ({"pose": None, "pose_json": {"0": {"extrinsic": [[1, 0], [0, 1]]}}}, "INVALID_POSE", ""),
    ({"pose": None, "actions": [{"key": "fly", "latents": 4}]}, "INVALID_POSE", ""),
    ({"pose": "w-2"}, "INVALID_FRAME_COUNT", "nearest valid"),
    ({"pose": "w-3", "num_frames": 14}, "INVALID_FRAME_COUNT", "4k+1"),
    ({"pose": "w-3", "num_frames": 29}, "INVALID_FRAME_COUNT", "13 frames"),
    ({"image_base64": "!!!not base64!!!"}, "INVALID_IMAGE", "not valid base64"),
    ({"image_base64": b64(b"GIF89a" + b"\x00" * 40)}, "INVALID_IMAGE", "PNG, JPEG or WebP"),
    ({"image_base64": b64(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)}, "INVALID_IMAGE", "decoded"),
    ({"image_base64": b64(png_bytes(8, 8))}, "INVALID_IMAGE", "at least 16 pixels"),
    ({"image_base64": b64(_png_header_only(10000, 9000))}, "INVALID_IMAGE", "limit of 40 MP"),
    ({"image_base64": b64(_png_header_only(8000, 6000))}, "INVALID_IMAGE", "48.0 MP"),
    ({"mode": "bidirectional", "pose": "w-15"}, "MODE_UNAVAILABLE", "it serves ar_distilled"),
    ({"model": "ar_rl", "pose": "w-15"}, "MODEL_UNAVAILABLE", "it serves ar_distilled"),
])
def test_user_errors(fake_pipeline, s3_env, patch, code, fragment, no_secret_in_logs):
    data = base_input()
    for key, value in patch.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    out = run(data)
    assert code_of(out) == code, out
    assert fragment in out["error"]
    assert "refresh_worker" not in out
    assert "Traceback" not in out["error"]
    assert not fake_pipeline.calls  # failed before any generation
    assert tmp_is_clean(s3_env)


def test_invalid_input_when_input_is_not_an_object(fake_pipeline):
    out = asyncio.run(worker_job.handler({"id": "x", "input": ["prompt"]}))
    assert code_of(out) == "INVALID_INPUT" and "JSON object" in out["error"]


def test_storage_errors(fake_pipeline, storage, s3_env, monkeypatch):
    out = run({"prompt": "p", "image_key": "missing/input.png"})
    assert code_of(out) == "OBJECT_NOT_FOUND" and "missing/input.png" in out["error"]
    out = run({"prompt": "p", **{"image_base64": b64(png_bytes())}, "pose_key": "no/pose.json"})
    assert code_of(out) == "OBJECT_NOT_FOUND"
    storage.put_bytes("bad/pose.json", b"{not json")
    out = run({"prompt": "p", "image_base64": b64(png_bytes()), "pose_key": "bad/pose.json"})
    assert code_of(out) == "INVALID_POSE" and "not valid JSON" in out["error"]
    storage.put_bytes("bad/list.json", b"[1, 2]")
    out = run({"prompt": "p", "image_base64": b64(png_bytes()), "pose_key": "bad/list.json"})
    assert code_of(out) == "INVALID_POSE" and "JSON object" in out["error"]
    storage.put_bytes("big/input.png", b"\x89PNG" + b"0" * (7 * 2**20))
    out = run({"prompt": "p", "image_key": "big/input.png"})
    assert code_of(out) == "OBJECT_TOO_LARGE"

    monkeypatch.setenv("MINIO_BUCKET", "bucket-that-is-not-there")
    worker_job.reset_state(loader=worker_job.MODELS.loader)
    out = run({"prompt": "p", "image_key": "a.png"})
    assert code_of(out) == "BUCKET_NOT_FOUND"

    monkeypatch.setenv("MINIO_ENDPOINT", "127.0.0.1:9")
    monkeypatch.setenv("MINIO_RETRY_ATTEMPTS", "2")
    worker_job.reset_state(loader=worker_job.MODELS.loader)
    out = run({"prompt": "p", "image_key": "a.png"})
    assert code_of(out) == "STORAGE_UNAVAILABLE" and "after 2 attempts" in out["error"]

    monkeypatch.delenv("MINIO_SECRET_KEY")
    worker_job.reset_state(loader=worker_job.MODELS.loader)
    out = run({"prompt": "p", "image_key": "a.png"})
    assert code_of(out) == "STORAGE_NOT_CONFIGURED"
    assert not fake_pipeline.calls


def test_upload_failure_is_reported(fake_pipeline, s3_env, monkeypatch):
    from worker.storage import Storage

    def refuse(self, key, path, content_type="application/octet-stream"):
        raise WorkerError("STORAGE_ACCESS_DENIED", f"put s3://{self.bucket}/{key} was refused")

    monkeypatch.setattr(Storage, "put_file", refuse)
    out = run(base_input())
    assert code_of(out) == "STORAGE_ACCESS_DENIED"
    assert tmp_is_clean(s3_env)  # the encoded MP4 was removed anyway


def test_image_url_download_failure(fake_pipeline, http_stub, allow_private_urls):
    out = run({"prompt": "p", "image_url": f"{http_stub.url}/nothing.png"})
    assert code_of(out) == "IMAGE_DOWNLOAD_FAILED" and "HTTP 404" in out["error"]


def test_model_not_found(s3_env, tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    for var in ("WORLDPLAY_MODEL_DIR", "RUNPOD_HF_CACHE", "HF_HOME", "HF_HUB_CACHE",
                "WORLDPLAY_DOWNLOAD_DIR"):
        monkeypatch.setenv(var, str(empty))
    monkeypatch.setenv("WORLDPLAY_ALLOW_DOWNLOAD", "0")
    worker_job.reset_state(loader=worker_job.default_loader)
    out = run(base_input())
    assert code_of(out) == "MODEL_NOT_FOUND" and "refresh_worker" not in out
    health = run({"health": True})
    assert health["models_loaded"] is False and health["model_error"].startswith("MODEL_NOT_FOUND")
    assert health["status"] == "degraded"


def test_worker_start_with_warm_up_loads_warms_and_serves(s3_env, tiny_models, monkeypatch):
    """WORLDPLAY_WARMUP=1 (the default with WORLDPLAY_COMPILE=1): the worker's loader renders a short
    video per mode before the first job; health reports it and jobs run as usual."""
    monkeypatch.setenv("WORLDPLAY_MODEL_DIR", str(tiny_models))
    monkeypatch.setenv("WORLDPLAY_ALLOW_DOWNLOAD", "0")
    monkeypatch.setenv("WORLDPLAY_DEVICE", "cpu")
    monkeypatch.setenv("WORLDPLAY_WARMUP", "1")
    worker_job.reset_state(loader=worker_job.default_loader)
    try:
        assert worker_job.preload()
        health = run({"health": True})
        assert health["models_loaded"] is True and set(health["model"]["warm_up_seconds"]) == {"ar_distilled"}
        out = run(base_input())
        assert "error" not in out and out["minio_key"].endswith(".mp4")
    finally:
        worker_job.reset_state()  # the next test gets no pipeline loaded with this test's settings


def _raising(exc):
    def loader(modes):
        from conftest import FakePipeline

        return FakePipeline(fail=exc)
    return loader


@pytest.mark.parametrize("exc, code", [
    (RuntimeError("CUDA error: an illegal memory access was encountered\nCUDA kernel errors..."),
     "GPU_ERROR"),
    (RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB"), "GPU_OUT_OF_MEMORY"),
    (ValueError("shapes do not match: secret-ish detail"), "INTERNAL_ERROR"),
    (KeyError("missing"), "INTERNAL_ERROR"),
])
def test_gpu_and_internal_errors_refresh_the_worker(fake_pipeline, s3_env, caplog, exc, code):
    worker_job.reset_state(loader=_raising(exc))
    caplog.set_level(logging.ERROR, logger="worldplay")
    out = run(base_input())
    assert code_of(out) == code and out["refresh_worker"] is True
    assert "Traceback" not in out["error"] and "\n" not in out["error"]
    if code == "INTERNAL_ERROR":
        assert out["error"].startswith(f"INTERNAL_ERROR: {type(exc).__name__}: ")
    assert "Traceback" in caplog.text  # the operator gets the traceback in the log
    assert tmp_is_clean(s3_env)


def test_torch_out_of_memory_error_maps():
    import torch

    err = from_exception(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert err.code == "GPU_OUT_OF_MEMORY" and err.to_dict()["refresh_worker"] is True


def test_pipeline_error_codes_pass_through():
    from pipeline.errors import CheckpointError, ImageError, ModelDownloadError

    for exc, code in ((CheckpointError("bad keys"), "CHECKPOINT_MISMATCH"),
                      (ImageError("odd"), "INVALID_IMAGE"),
                      (ModelDownloadError("hub down"), "MODEL_DOWNLOAD_FAILED")):
        assert from_exception(exc).to_dict() == {"error": f"{code}: {exc.message}"}


def test_error_messages_are_redacted(monkeypatch):
    monkeypatch.setenv("MINIO_SECRET_KEY", S3_SECRET_KEY)
    err = from_exception(RuntimeError(f"connect failed secret_key={S3_SECRET_KEY} token: abc123"))
    text = err.to_dict()["error"]
    assert S3_SECRET_KEY not in text and "abc123" not in text
    with pytest.raises(ValueError):
        WorkerError("NOT_A_CODE", "x")
    assert "INVALID_INPUT" in ERROR_CODES


# ---- progress, cancellation --------------------------------------------------------------------
def test_progress_is_throttled_and_never_after_close():
    sent = []
    clock = {"t": 0.0}
    rep = worker_job.ProgressReporter({"id": "j"}, interval=1.0, enabled=True,
                                      sender=lambda job, p: sent.append((clock["t"], p)))
    real_monotonic = time.monotonic
    try:
        time.monotonic = lambda: clock["t"]  # deterministic clock
        for step in range(1, 31):
            clock["t"] = 100 + step * 0.1  # 10 steps per second for 3 s
            rep.update("denoise", step, 30)
        rep.update("encode", force=True)
        rep.close()
        rep.update("late", 1, 1, force=True)
    finally:
        time.monotonic = real_monotonic
    stages = [p["stage"] for _, p in sent]
    assert stages.count("denoise") == 3 and stages[-1] == "encode" and "late" not in stages
    assert all(p.keys() == {"stage", "step", "total"} for _, p in sent)


def test_progress_disabled_locally(fake_pipeline, monkeypatch):
    import runpod

    calls = []
    monkeypatch.setattr(runpod.serverless, "progress_update", lambda *a: calls.append(a))
    assert "error" not in run(base_input())
    assert calls == []  # no RUNPOD_WEBHOOK_GET_JOB: local run, nothing sent


def test_progress_sent_on_platform(fake_pipeline, monkeypatch):
    import runpod

    calls = []
    monkeypatch.setenv("RUNPOD_WEBHOOK_GET_JOB", "http://127.0.0.1:9/job-take/$ID")
    monkeypatch.setattr(runpod.serverless, "progress_update",
                        lambda job, payload: calls.append(payload))
    assert "error" not in run(base_input())
    stages = [c["stage"] for c in calls]
    assert stages[:2] == ["fetch", "load"] and stages[-1] == "encode"


def test_cancellation_stops_between_steps(fake_pipeline, s3_env):
    started, release = threading.Event(), threading.Event()

    def hook(step):
        if step == 1:
            started.set()
            release.wait(5)

    fake_pipeline.step_hook = hook

    async def scenario():
        task = asyncio.create_task(worker_job.handler({"id": "c1", "input": base_input(
            num_inference_steps=50)}))
        while not started.is_set():
            await asyncio.sleep(0.01)
        task.cancel()  # what runpod's stop channel does (JobScaler.stop_job)
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()

    asyncio.run(scenario())
    # the worker thread stops at the next step check and returns CANCELLED; nothing uploaded
    out = worker_job._EXECUTOR.submit(lambda: None)
    out.result(timeout=10)
    from worker.storage import Storage

    with pytest.raises(WorkerError) as info:
        Storage.from_env().stat_size("worldplay/c1/video.mp4")
    assert info.value.code == "OBJECT_NOT_FOUND"
    assert tmp_is_clean(s3_env)


def test_cancel_flag_before_generation(fake_pipeline):
    flag = threading.Event()
    flag.set()
    out = worker_job.run_job({"id": "c2", "input": base_input()}, cancel_event=flag)
    assert code_of(out) == "CANCELLED" and not fake_pipeline.calls


# ---- health ------------------------------------------------------------------------------------
def test_health(fake_pipeline, s3_env):
    out = run({"health": True})
    assert out["status"] == "ok" and out["models_loaded"] is False
    assert out["modes"] == ["ar"] and out["storage"]["bucket_exists"] is True
    assert out["versions"]["runpod"] == "1.12.0" and out["versions"]["worker"]
    assert "torch" in out["versions"]
    assert not fake_pipeline.calls
    run(base_input())
    out = run({"health": True})
    assert out["models_loaded"] is True and out["loaded_modes"] == ["ar"]
    assert out["model"]["fake"] is True and out["device"] == "cpu"
    assert S3_SECRET_KEY not in json.dumps(out)


def test_health_with_storage_down(fake_pipeline, monkeypatch):
    monkeypatch.setenv("MINIO_ENDPOINT", "127.0.0.1:9")
    worker_job.reset_state(loader=worker_job.MODELS.loader)
    t0 = time.monotonic()
    out = run({"health": True})
    assert time.monotonic() - t0 < 5
    assert out["status"] == "degraded" and out["storage"]["reachable"] is False
    assert out["storage"]["error"].startswith("STORAGE_UNAVAILABLE")
    assert "error" not in out


def test_modes_env(monkeypatch):
    assert worker_job.configured_modes({}) == ("ar",)
    assert worker_job.configured_modes({"WORLDPLAY_MODES": " AR, bidirectional ,ar"}) == (
        "ar", "bidirectional")
    with pytest.raises(WorkerError):
        worker_job.configured_modes({"WORLDPLAY_MODES": "turbo"})


def test_models_load_once(s3_env):
    loads = []

    def loader(modes):
        from conftest import FakePipeline

        loads.append(modes)
        return FakePipeline()

    worker_job.reset_state(loader=loader)
    holder = worker_job.MODELS
    threads = [threading.Thread(target=holder.get, args=(("ar",),)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert loads == [("ar",)] and holder.loaded


# ---- local test mode (subprocess) --------------------------------------------------------------
def _handler_cmd(*args):
    return [sys.executable, "handler.py", *args]


def test_local_test_mode_bad_input_exits_1(s3_env):
    bad = json.dumps({"input": {"prompt": "p", "image_key": "x.png", "steps": 4}})
    proc = subprocess.run(_handler_cmd("--test_input", bad), cwd=REPO, capture_output=True,
                          text=True, timeout=120, env=worker_subprocess_env(s3_env))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "INVALID_INPUT: steps: unknown field" in proc.stdout + proc.stderr
    assert S3_SECRET_KEY not in proc.stdout + proc.stderr


def test_local_test_mode_good_input_exits_0(real_pipeline, s3_env, tiny_models):
    good = json.dumps({"input": {"prompt": "a hall", "image_base64": b64(png_bytes(64, 48)),
                                 "pose": "w-3", "seed": 3}})
    proc = subprocess.run(_handler_cmd("--test_input", good), cwd=REPO, capture_output=True,
                          text=True, timeout=300, env=worker_subprocess_env(
                              {**s3_env, "WORLDPLAY_MODEL_DIR": str(tiny_models)}))
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    assert "completed successfully" in text and "video.mp4" in text
    assert S3_SECRET_KEY not in text
    assert b64(png_bytes(64, 48))[:40] not in text  # the input image is never logged


def test_test_input_json_runs(real_pipeline, s3_env, tiny_models, tmp_path):
    shipped = json.loads((REPO / "test_input.json").read_text())
    assert set(shipped) == {"input"}
    proc = subprocess.run(_handler_cmd(), cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=worker_subprocess_env({**s3_env,
                                                     "WORLDPLAY_MODEL_DIR": str(tiny_models)}))
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    assert "Using test_input.json" in text and "completed successfully" in text


# ---- health before the first load: do the weights resolve? (issue 23, item 8) -------------------
def test_health_is_ok_only_when_the_weights_resolve(s3_env, tiny_models, tmp_path, monkeypatch):
    """Locally the models load at the first job: health asks the resolver (nothing loaded, nothing
    downloaded) and says "ok" only when a job could run."""
    for name in ("WORLDPLAY_MODEL_DIR", "WORLDPLAY_BUNDLE_REPO", "WORLDPLAY_DOWNLOAD_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RUNPOD_HF_CACHE", str(tmp_path / "no-runpod-cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "no-hf-cache"))
    monkeypatch.setenv("WORLDPLAY_ALLOW_DOWNLOAD", "0")
    worker_job.reset_state(loader=worker_job.default_loader)
    try:
        out = run({"health": True})
        assert out["status"] == "degraded" and out["models_loaded"] is False
        assert out["weights"]["resolved"] is False and out["weights"]["download_allowed"] is False
        assert out["weights"]["problem"].startswith("MODEL_NOT_FOUND: ")
        assert "WORLDPLAY_ALLOW_DOWNLOAD=1" in out["weights"]["problem"]  # says what to do

        # downloads allowed: a job could run (it would fetch them first)
        monkeypatch.setenv("WORLDPLAY_ALLOW_DOWNLOAD", "1")
        worker_job.MODELS.reset()
        out = run({"health": True})
        assert out["status"] == "ok" and out["weights"]["download_allowed"] is True

        # weights on disk: resolved, with where from; and the probe is remembered for a while
        monkeypatch.setenv("WORLDPLAY_ALLOW_DOWNLOAD", "0")
        monkeypatch.setenv("WORLDPLAY_MODEL_DIR", str(tiny_models))
        worker_job.MODELS.reset()
        calls = []
        real_probe = worker_job.MODELS.probe
        worker_job.MODELS.probe = lambda modes: calls.append(modes) or real_probe(modes)
        out = run({"health": True})
        assert out["status"] == "ok" and out["weights"]["resolved"] is True
        assert set(out["weights"]["sources"].values()) == {"local"}
        run({"health": True})
        assert len(calls) == 1  # cached for WEIGHTS_PROBE_SECONDS
        assert worker_job.MODELS.pipe is None  # nothing was loaded
    finally:
        worker_job.reset_state(loader=worker_job.default_loader)
