"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of the tiny random-weight models (both modes), written once per test session.

    Layout: ``HunyuanVideo-1.5-480p_i2v/`` (diffusers components) and ``HY-WorldPlay/`` (checkpoints).
    Treat it as read-only: tests that need to modify files copy them first.
    """
    from pipeline.tools.tiny import write_tiny_models

    return write_tiny_models(tmp_path_factory.mktemp("tiny_models"),
                             models=("ar_distilled", "bidirectional", "ar", "ar_rl"))


# ==== worker / storage / handler fixtures (schemas, worker, handler, smoke tests) ===============
import base64 as _base64
import io as _io
import logging as _logging
import os as _os
import socket as _socket
import threading as _threading
import uuid as _uuid
from http.server import BaseHTTPRequestHandler as _BaseHandler
from http.server import ThreadingHTTPServer as _ThreadingHTTPServer

S3_ACCESS_KEY = "test-access-key"
S3_SECRET_KEY = "test-secret-Zq8vN3xPp2"  # tests assert this never shows up in outputs / logs


def stop_process(proc, grace: float = 10.0) -> None:
    """Terminate a child process; kill it if it does not exit within ``grace`` seconds."""
    import subprocess

    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def free_port() -> int:
    with _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def png_bytes(width: int = 96, height: int = 64, color=(40, 120, 200), fmt: str = "PNG") -> bytes:
    from PIL import Image

    buf = _io.BytesIO()
    img = Image.new("RGB", (width, height), color)
    for x in range(0, width, 8):  # some structure
        for y in range(height):
            img.putpixel((x, y), (255 - color[0], color[1], 255 - color[2]))
    img.save(buf, fmt)
    return buf.getvalue()


def decode_rgb(path):
    """Every frame of a video file as RGB uint8 [T, H, W, 3]."""
    import av
    import numpy as np

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def b64(data: bytes) -> str:
    return _base64.b64encode(data).decode("ascii")


def run(job_input: dict, job_id: str = "job-1") -> dict:
    """One job through the worker's async handler, as RunPod's loop calls it."""
    import asyncio

    from worker import job as worker_job

    return asyncio.run(worker_job.handler({"id": job_id, "input": job_input}))


def code_of(out: dict) -> str:
    """The error code of a failed job's output (which holds nothing but the error and, for faults that
    need a new worker, ``refresh_worker``)."""
    assert set(out) <= {"error", "refresh_worker"}, out
    assert isinstance(out["error"], str)
    return out["error"].split(":", 1)[0]


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1 (free port) for the whole session; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    _logging.getLogger("werkzeug").setLevel(_logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for _ in range(200):  # bounded wait for the socket
        try:
            _socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            import time as _time

            _time.sleep(0.025)
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch, tmp_path):
    """MINIO_* pointing at moto with a fresh bucket; worker state reset; temp dir isolated.
    Yields a dict of the environment it set (bucket under "MINIO_BUCKET")."""
    from worker import job as worker_job
    from worker.storage import Storage

    bucket = f"test-{_uuid.uuid4().hex[:12]}"
    env = {
        "MINIO_ENDPOINT": s3_server,
        "MINIO_ACCESS_KEY": S3_ACCESS_KEY,
        "MINIO_SECRET_KEY": S3_SECRET_KEY,
        "MINIO_BUCKET": bucket,
        "MINIO_REGION": "us-east-1",
        "MINIO_RETRY_ATTEMPTS": "2",
        "WORLDPLAY_TMPDIR": str(tmp_path / "worktmp"),
        "WORLDPLAY_MODES": "ar",
    }
    (tmp_path / "worktmp").mkdir()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("RUNPOD_WEBHOOK_GET_JOB", raising=False)
    monkeypatch.delenv("MINIO_PUBLIC_ENDPOINT", raising=False)
    monkeypatch.delenv("MINIO_USE_SSL", raising=False)
    Storage.from_env().ensure_bucket()
    saved_loader = worker_job.MODELS.loader
    worker_job.reset_state()
    yield env
    worker_job.reset_state(loader=saved_loader)


@pytest.fixture
def storage(s3_env):
    from worker.storage import RetryPolicy, Storage

    return Storage.from_env(retry=RetryPolicy(attempts=2, initial=0.01, maximum=0.02))


class FakeResult:
    def __init__(self, frames):
        self.frames = frames
        self.num_frames, self.height, self.width = frames.shape[:3]
        self.timings = {"denoise": 0.0}


class FakePipeline:
    """Honours the WorldPlayPipeline contract (generate/health/modes) with deterministic frames:
    a colour gradient that depends on the seed and moves with the frame index."""

    def __init__(self, modes=("ar",), width=64, height=48, fail=None, step_hook=None, stream=True,
                 fail_after_first_chunk=None):
        self._modes = tuple(modes)
        self.width, self.height = width, height
        self.fail = fail
        self.stream = stream  # hand frames over chunk by chunk (13, then 16 each), like the real one
        self.fail_after_first_chunk = fail_after_first_chunk
        self.step_hook = step_hook
        self.calls = []

    @property
    def modes(self):
        return self._modes

    @property
    def models(self):
        from pipeline.checkpoints import MODE_ALIASES

        return tuple(MODE_ALIASES[m] for m in self._modes)

    def health(self):
        return {"modes": list(self._modes), "device": "cpu", "dtype": "float32", "fake": True}

    def check_decoder(self, decoder):  # the fake decodes with anything it is asked for
        pass

    def generate(self, request, callback=None, should_cancel=None, on_frames=None):
        import numpy as np

        from pipeline.errors import GenerationCancelled

        self.calls.append(request)
        if self.fail is not None:
            raise self.fail
        total = int(request.num_inference_steps)
        for step in range(1, total + 1):
            if should_cancel is not None and should_cancel():
                raise GenerationCancelled(f"cancelled at step {step}/{total}")
            if self.step_hook is not None:
                self.step_hook(step)
            if callback is not None:
                callback("denoise", step, total)
        n = request.camera.num_frames
        t = np.arange(n, dtype=np.int64)[:, None, None]
        y = np.arange(self.height, dtype=np.int64)[None, :, None]
        x = np.arange(self.width, dtype=np.int64)[None, None, :]
        base = (x * 3 + y * 2 + t * 5 + int(request.seed)) % 256
        frames = np.stack([base, (base + 85) % 256, (255 - base)], axis=-1).astype(np.uint8)
        if on_frames is not None and self.stream:
            from pipeline.video import ar_chunks

            for piece in ar_chunks(frames):
                on_frames(piece)
                if self.fail_after_first_chunk is not None:
                    raise self.fail_after_first_chunk
        return FakeResult(frames)


@pytest.fixture
def fake_pipeline(s3_env, monkeypatch):
    """Installs a FakePipeline as the worker's model (no torch model involved)."""
    from dataclasses import make_dataclass

    from worker import job as worker_job

    pipe = FakePipeline()
    request_cls = make_dataclass("FakeRequest", [
        "prompt", "image", "camera", ("mode", object, None), ("negative_prompt", str, ""),
        ("num_inference_steps", object, None), ("guidance_scale", object, None),
        ("seed", int, 0), ("model", object, None), ("decoder", str, "full")])
    monkeypatch.setattr(worker_job, "_request_class", lambda: request_cls)
    worker_job.reset_state(loader=lambda modes: pipe)
    return pipe


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_models):
    """The REAL WorldPlayPipeline loaded once from the tiny models (AR mode)."""
    from pipeline.generation.engine import WorldPlayPipeline
    from pipeline.model_files.resolve import resolve_models

    paths = resolve_models(["ar_distilled"], model_dir=tiny_models, allow_download=False, set_offline=False)
    return WorldPlayPipeline.from_paths(paths, device="cpu", models=("ar_distilled",))


@pytest.fixture
def real_pipeline(s3_env, tiny_models, tiny_pipeline, monkeypatch):
    """The worker uses the real tiny pipeline (loaded once per session, handed to the holder)."""
    from worker import job as worker_job

    monkeypatch.setenv("WORLDPLAY_MODEL_DIR", str(tiny_models))
    worker_job.reset_state(loader=lambda modes: tiny_pipeline)
    return tiny_pipeline


class HttpStub:
    """A programmable HTTP server on 127.0.0.1: queue (status, headers, body) responses per path;
    the last response of a path repeats. ``hits[path]`` counts requests."""

    def __init__(self):
        self.routes = {}
        self.hits = {}
        stub = self

        class _H(_BaseHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _serve(self, head_only=False):
                path = self.path.split("?")[0]
                stub.hits[path] = stub.hits.get(path, 0) + 1
                queue = stub.routes.get(path) or [(404, {}, b"not found")]
                status, headers, body = queue.pop(0) if len(queue) > 1 else queue[0]
                self.send_response(status)
                chunked = headers.get("Transfer-Encoding") == "chunked"
                for k, v in headers.items():
                    self.send_header(k, v)
                if not chunked:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if head_only:
                    return
                if chunked:
                    for i in range(0, len(body), 4096):
                        part = body[i:i + 4096]
                        self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    self.wfile.write(body)

            def do_GET(self):
                self._serve()

            def do_HEAD(self):
                self._serve(head_only=True)

            def do_PUT(self):
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                self._serve()

            do_POST = do_PUT  # multi-object DELETE (POST ?delete)

        self.server = _ThreadingHTTPServer(("127.0.0.1", 0), _H)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = _threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def route(self, path, *responses):
        self.routes[path] = list(responses)
        self.hits[path] = 0

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def http_stub():
    stub = HttpStub()
    yield stub
    stub.close()


@pytest.fixture
def allow_private_urls(monkeypatch):
    """image_url may reach 127.0.0.1 (the test servers): the operator's WORLDPLAY_ALLOW_PRIVATE_URLS."""
    monkeypatch.setenv("WORLDPLAY_ALLOW_PRIVATE_URLS", "1")


@pytest.fixture
def no_secret_in_logs(caplog):
    """Capture everything at DEBUG; after the test assert the secret key never appeared."""
    caplog.set_level(_logging.DEBUG)
    yield caplog
    assert S3_SECRET_KEY not in caplog.text


def worker_subprocess_env(extra: dict) -> dict:
    """Environment for `python handler.py ...` subprocesses: inherit, then override."""
    env = dict(_os.environ)
    env.pop("RUNPOD_WEBHOOK_GET_JOB", None)
    env.update({"PYTHONUNBUFFERED": "1", "RUNPOD_LOG_LEVEL": "INFO", **extra})
    return env
class LiveServer:
    """worker.live's app (``settings``: a LiveSettings) on uvicorn, 127.0.0.1 on a free port, in a thread:
    ``url`` (the WebSocket), ``http`` (the base URL), ``page`` (the playground), ``state``, ``stop()``."""

    def __init__(self, settings):
        from worker.live import BackgroundServer, create_app

        self.app = create_app(settings, preload=False)
        self.background = BackgroundServer(self.app)
        self.port = self.background.port
        self.http = f"http://127.0.0.1:{self.port}"
        self.url = f"ws://127.0.0.1:{self.port}/session"
        self.page = self.http + "/"

    @property
    def state(self):
        return self.app.state.live

    def stop(self):
        self.background.stop()


def chromium_path() -> str:
    """Debian's Chromium (or WORLDPLAY_CHROMIUM) for the browser tests: a skip when none is installed,
    a failure when WORLDPLAY_REQUIRE_BROWSER=1 (CI, where .ci/run installs it)."""
    import shutil

    for name in (_os.environ.get("WORLDPLAY_CHROMIUM"), "chromium", "chromium-browser",
                 "google-chrome", "google-chrome-stable"):
        if name and shutil.which(name):
            return shutil.which(name)
    if _os.environ.get("WORLDPLAY_REQUIRE_BROWSER") == "1":
        pytest.fail("Chromium is required here (WORLDPLAY_REQUIRE_BROWSER=1) but not installed")
    pytest.skip("Chromium is not installed (apt-get install chromium; bash .ci/run does it)")


# ==== end of worker fixtures ===================================================================


@pytest.fixture(scope="module")
def pipe(tiny_models):
    """The tiny pipeline (both modes) on the CPU, built once per test module."""
    from pipeline.generation.engine import WorldPlayPipeline
    from pipeline.model_files.resolve import resolve_models

    paths = resolve_models(["ar_distilled", "bidirectional"], model_dir=tiny_models, allow_download=False, set_offline=False)
    return WorldPlayPipeline.from_paths(paths, device="cpu")


@pytest.fixture(scope="module")
def image():
    """A 160x90 smooth RGB test picture."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:90, 0:160]
    rgb = np.stack([(x * 1.5) % 256, (y * 2.8) % 256, ((x + y) * 0.9) % 256], -1).astype(np.uint8)
    return Image.fromarray(rgb)


def small_world_state():
    """A valid WorldState of 4 latents, 2 channels, 3x4 latent pixels and a [5, 8] image embedding,
    built without a model (reader tests: fuzzing, value checks)."""
    import torch

    from pipeline.generation.world_state import WorldState

    gen = torch.Generator().manual_seed(0)
    num = 4
    c2w = torch.eye(4, dtype=torch.float64).repeat(num, 1, 1)
    c2w[:, 2, 3] = torch.arange(num, dtype=torch.float64) * 0.1
    k = torch.tensor([[0.5, 0.0, 0.5], [0.0, 0.9, 0.5], [0.0, 0.0, 1.0]]).repeat(num, 1, 1)
    return WorldState(latents=torch.randn(num, 2, 3, 4, generator=gen), c2w=c2w, intrinsics=k,
                      actions=torch.zeros(num, dtype=torch.int64), image_latent=torch.randn(2, 3, 4, generator=gen),
                      vision=torch.randn(5, 8, generator=gen), prompt="a harbour", negative_prompt="", seed=5,
                      mode="ar", num_inference_steps=4, guidance_scale=1.0, width=64, height=48,
                      checkpoint="sha256:" + "0" * 32, worker_version="test")
