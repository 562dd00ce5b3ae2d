"""The job flow: validate -> fetch -> camera -> load -> generate -> encode -> upload -> result.

``run_job(job)`` is synchronous and never raises: it returns the output dict or
``{"error": "CODE: message"[, "refresh_worker": True]}``. ``handler(job)`` is the async RunPod
entry point: it runs ``run_job`` on a single worker thread (GPU work is serialised) and, when
RunPod cancels the job (per-job stop signal, runpod >= 1.12), sets the cancel flag that the
pipeline polls between denoising steps.

Models are loaded once per process (``ModelHolder``), on first use or by ``preload()``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import io
import json
import logging
import os
import random
import re
import shutil
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, Optional, Tuple

from pydantic import ValidationError

import schemas
from worker import session
from worker.errors import WorkerError, clean_message, from_exception

log = logging.getLogger("worldplay.job")

VALID_MODES = ("ar", "bidirectional")
_JOB_ID_RE = re.compile(r"[^A-Za-z0-9._-]")


# ---- configuration ----------------------------------------------------------------------------
def configured_modes(env=None) -> Tuple[str, ...]:
    """Modes this worker serves: ``WORLDPLAY_MODES`` (comma separated), default ``ar``."""
    env = os.environ if env is None else env
    raw = env.get("WORLDPLAY_MODES", "ar") or "ar"
    modes = tuple(dict.fromkeys(m.strip().lower() for m in raw.split(",") if m.strip()))
    bad = [m for m in modes if m not in VALID_MODES]
    if bad or not modes:
        raise WorkerError("MODE_UNAVAILABLE",
                          f"WORLDPLAY_MODES={raw!r} is invalid; use ar, bidirectional or "
                          "ar,bidirectional")
    return modes


def configure_logging(level: Optional[str] = None) -> None:
    """Configure the ``logging`` module from ``WORLDPLAY_LOG_LEVEL`` (default INFO)."""
    name = (level or os.environ.get("WORLDPLAY_LOG_LEVEL") or "INFO").upper()
    value = logging.getLevelName(name)
    if not isinstance(value, int):
        value = logging.INFO
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s | %(message)s")
    logging.getLogger("worldplay").setLevel(value)
    for noisy in ("urllib3", "werkzeug", "botocore", "filelock", "PIL"):
        logging.getLogger(noisy).setLevel(max(value, logging.WARNING))


# ---- model holder -----------------------------------------------------------------------------
def default_loader(modes: Tuple[str, ...]):
    """resolve_models + WorldPlayPipeline.from_paths (imported lazily: torch is heavy), on every
    sequence-parallel rank (WORLDPLAY_SEQUENCE_PARALLEL; pipeline.generation.ranks)."""
    from pipeline.generation.ranks import PathsLoader, load_ranked
    from pipeline.model_files.resolve import resolve_models

    paths = resolve_models(list(modes))  # reads WORLDPLAY_MODEL_DIR, WORLDPLAY_ALLOW_DOWNLOAD, ...
    device = os.environ.get("WORLDPLAY_DEVICE") or None
    pipe = load_ranked(PathsLoader(paths, tuple(modes)), device)
    pipe.warm_up_if_configured()  # WORLDPLAY_WARMUP (default: with WORLDPLAY_COMPILE=1 only)
    return pipe


class ModelHolder:
    """Loads the pipeline once per process; thread-safe; a failed load is retried next time."""

    def __init__(self, loader: Callable = default_loader):
        self.loader = loader
        self._lock = threading.Lock()
        self.pipe = None
        self.modes: Tuple[str, ...] = ()
        self.load_seconds: Optional[float] = None
        self.last_error: Optional[str] = None

    @property
    def loaded(self) -> bool:
        return self.pipe is not None

    def get(self, modes: Tuple[str, ...]) -> Tuple[Any, float]:
        """Return (pipeline, seconds spent loading in this call)."""
        if self.pipe is not None:
            return self.pipe, 0.0
        with self._lock:
            if self.pipe is not None:
                return self.pipe, 0.0
            t0 = time.perf_counter()
            log.info("loading models for modes %s", ",".join(modes))
            try:
                pipe = self.loader(modes)
            except BaseException as exc:
                err = from_exception(exc)
                self.last_error = f"{err.code}: {err.message}"
                raise
            self.load_seconds = time.perf_counter() - t0
            self.pipe, self.modes, self.last_error = pipe, modes, None
            log.info("models loaded in %.1f s", self.load_seconds)
            return pipe, self.load_seconds

    def reset(self) -> None:
        with self._lock:
            self.pipe, self.modes, self.load_seconds, self.last_error = None, (), None, None


MODELS = ModelHolder()

_storage_lock = threading.Lock()
_storage = None


def get_storage():
    """The process-wide Storage built from the MINIO_* environment (built on first use)."""
    global _storage
    with _storage_lock:
        if _storage is None:
            from worker.storage import Storage

            _storage = Storage.from_env()
        return _storage


def reset_state(loader: Optional[Callable] = None) -> None:
    """Forget the storage client and the loaded models (tests; env changes)."""
    global _storage
    with _storage_lock:
        _storage = None
    MODELS.reset()
    if loader is not None:
        MODELS.loader = loader


def preload() -> bool:
    """Load the models now (worker start). Failures are logged and reported per job."""
    try:
        MODELS.get(configured_modes())
        return True
    except Exception as exc:  # noqa: BLE001
        err = from_exception(exc)
        log.error("model preload failed: %s: %s", err.code, err.message)
        return False


def _request_class():
    from pipeline.generation.engine import GenerationRequest

    return GenerationRequest


def _camera_api():
    from pipeline.generation import camera

    return camera


# ---- progress ---------------------------------------------------------------------------------
def _progress_enabled(job: dict) -> bool:
    """Only on the real platform: locally (test_input, rp_serve_api) there is nowhere to send."""
    return bool(os.environ.get("RUNPOD_WEBHOOK_GET_JOB")) and bool(job.get("id"))


class ProgressReporter:
    """Throttled ``progress_update`` (at most one per ``interval`` seconds, never after close)."""

    def __init__(self, job: dict, *, interval: float = 1.0, sender: Optional[Callable] = None,
                 enabled: Optional[bool] = None):
        self.job = job
        self.interval = interval
        self.enabled = _progress_enabled(job) if enabled is None else enabled
        self._sender = sender
        self._last = 0.0
        self._closed = False
        self._lock = threading.Lock()
        self.sent = 0
        self.extra: Dict[str, Any] = {}  # fields every later update carries (live preview)
        self._current = ("start", 0, 0)

    def _send(self, payload: dict) -> None:
        if self._sender is not None:
            self._sender(self.job, payload)
            return
        import runpod

        runpod.serverless.progress_update(self.job, payload)

    def update(self, stage: str, step: int = 0, total: int = 0, force: bool = False) -> None:
        with self._lock:
            if self._closed or not self.enabled:
                return
            self._current = (stage, step, total)
            now = time.monotonic()
            if not force and now - self._last < self.interval:
                return
            self._last = now
            payload = {"stage": stage, "step": int(step), "total": int(total), **self.extra}
            try:
                self._send(payload)
                self.sent += 1
            except Exception as exc:  # noqa: BLE001 - progress must never fail a job
                log.debug("progress update failed: %s", type(exc).__name__)

    def attach(self, force: bool = False, **fields) -> None:
        """Add ``fields`` to this and every later update; ``force``: send one now (same stage)."""
        with self._lock:
            self.extra.update(fields)
            stage, step, total = self._current
        if force:
            self.update(stage, step, total, force=True)

    def close(self) -> None:
        """No update after this; give an in-flight update a moment to land before the result."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self.enabled and self.sent:
                gap = time.monotonic() - self._last
                if gap < 0.25:
                    time.sleep(0.25 - gap)


# ---- inputs -----------------------------------------------------------------------------------
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
)


def _sniff(data: bytes) -> Optional[str]:
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return fmt
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def decode_base64_image(value: str) -> bytes:
    body = schemas.strip_data_url(value.strip())
    if body.startswith("data:"):
        raise WorkerError("INVALID_IMAGE", "image_base64 data: URL must be image/png, image/jpeg "
                                           "or image/webp with ;base64")
    compact = "".join(body.split())
    try:
        if "-" in compact or "_" in compact:
            data = base64.urlsafe_b64decode(compact + "=" * (-len(compact) % 4))
        else:
            data = base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise WorkerError("INVALID_IMAGE", "image_base64 is not valid base64") from None
    if len(data) > schemas.MAX_IMAGE_BYTES:
        raise WorkerError("INVALID_IMAGE", f"decoded image is {len(data)} bytes; the limit is "
                                           f"{schemas.MAX_IMAGE_BYTES} bytes")
    return data


def load_image(data: bytes, source: str = "image"):
    """Bytes -> RGB PIL image. PNG/JPEG/WebP only; pixel count checked before decoding."""
    import warnings

    from PIL import Image, ImageOps

    Image.MAX_IMAGE_PIXELS = schemas.MAX_IMAGE_PIXELS
    if not data:
        raise WorkerError("INVALID_IMAGE", f"{source} is empty")
    fmt = _sniff(data)
    if fmt is None:
        raise WorkerError("INVALID_IMAGE", f"{source} is not a PNG, JPEG or WebP image")
    try:
        with warnings.catch_warnings():
            # 1x..2x the limit only warns in PIL: our own check below rejects it with the size
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=[fmt])
            w, h = img.size
            if w * h > schemas.MAX_IMAGE_PIXELS:
                raise WorkerError("INVALID_IMAGE", f"{source} is {w}x{h} = {w * h / 1e6:.1f} MP; "
                                                   f"the limit is "
                                                   f"{schemas.MAX_IMAGE_PIXELS / 1e6:.0f} MP")
            if min(w, h) < schemas.MIN_IMAGE_SIDE:
                raise WorkerError("INVALID_IMAGE", f"{source} is {w}x{h}; each side must be at "
                                                   f"least {schemas.MIN_IMAGE_SIDE} pixels")
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                img = Image.alpha_composite(background, rgba)
            return img.convert("RGB")
    except WorkerError:
        raise
    except Image.DecompressionBombError:
        raise WorkerError("INVALID_IMAGE", f"{source} has more pixels than the limit of "
                                           f"{schemas.MAX_IMAGE_PIXELS / 1e6:.0f} MP") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise WorkerError("INVALID_IMAGE", f"{source} could not be decoded as {fmt}: "
                                           f"{type(exc).__name__}") from None


def fetch_image(req: "schemas.JobInput", cancel_event: Optional[threading.Event] = None):
    if req.image_base64 is not None:
        return load_image(decode_base64_image(req.image_base64), "image_base64")
    if req.image_url is not None:
        from worker.fetch import fetch_url  # public addresses only, deadline, honours cancel

        return load_image(fetch_url(req.image_url, schemas.MAX_IMAGE_BYTES,
                                    cancel_event=cancel_event), "image_url")
    data = get_storage().get_bytes(req.image_key, schemas.MAX_IMAGE_BYTES)
    return load_image(data, f"image_key {req.image_key!r}")


def camera_spec(req: "schemas.JobInput") -> Any:
    if req.pose_key is not None:
        raw = get_storage().get_bytes(req.pose_key, schemas.MAX_POSE_JSON_BYTES)
        try:
            spec = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise WorkerError("INVALID_POSE", f"pose_key {req.pose_key!r} is not valid JSON: "
                                              f"{type(exc).__name__}") from None
        except RecursionError:
            raise WorkerError("INVALID_POSE", f"pose_key {req.pose_key!r} is nested too deeply"
                              ) from None
        except ValueError:  # an integer past Python's 4,300-digit limit (not a JSONDecodeError)
            raise WorkerError("INVALID_POSE", f"pose_key {req.pose_key!r} holds an integer with "
                                              "too many digits") from None
        if not isinstance(spec, dict):
            raise WorkerError("INVALID_POSE", f"pose_key {req.pose_key!r} must hold a JSON "
                                              f"object, got {type(spec).__name__}")
        return spec
    if req.pose_json is not None:
        return req.pose_json
    if req.actions is not None:
        return req.actions
    return req.pose


def parse_camera(req: "schemas.JobInput", spec: Any):
    camera = _camera_api()
    num_latents = None
    if req.num_frames is not None:  # checked first, so its error speaks in frames
        num_latents = camera.check_frame_count(req.num_frames, req.mode)
    # errors in the units the spec was written in (pose string / action moves, pose JSON entries)
    traj = camera.parse_pose(spec, num_latents=num_latents, mode=req.mode)
    if num_latents is not None and traj.num_latents != num_latents:  # defensive
        raise WorkerError("INVALID_FRAME_COUNT",
                          f"num_frames {req.num_frames} does not match the camera path "
                          f"({traj.num_frames} frames)")
    camera.check_latent_count(traj.num_latents, req.mode)
    return traj


def _job_id(job: dict) -> str:
    raw = str(job.get("id") or "")
    safe = _JOB_ID_RE.sub("-", raw)[:128].strip(".-")
    return safe or f"job-{uuid.uuid4().hex}"


# ---- the job ----------------------------------------------------------------------------------
class _Stages:
    def __init__(self):
        self.timings: Dict[str, float] = {k: 0.0 for k in
                                          ("validate", "fetch", "load", "generate", "encode",
                                           "upload")}

    def add(self, name: str, seconds: float) -> None:
        self.timings[name] = round(self.timings.get(name, 0.0) + seconds, 4)


def _check_cancel(cancel_event: Optional[threading.Event], stage: str) -> None:
    if cancel_event is not None and cancel_event.is_set():
        raise WorkerError("CANCELLED", f"job cancelled before {stage}")


def run_job(job: dict, *, cancel_event: Optional[threading.Event] = None,
            progress: Optional[ProgressReporter] = None) -> dict:
    """Run one job; returns the output or an error dict; never raises."""
    started = time.perf_counter()
    job = job if isinstance(job, dict) else {}
    job_id = _job_id(job)
    progress = progress or ProgressReporter(job)
    stages = _Stages()
    workdir = None
    preview = None
    try:
        # -- validate
        t0 = time.perf_counter()
        try:
            req = schemas.parse_input(job.get("input"))
        except ValidationError as exc:
            raise WorkerError("INVALID_INPUT", schemas.format_validation_error(exc)) from None
        except TypeError as exc:
            raise WorkerError("INVALID_INPUT", str(exc)) from None
        if isinstance(req, schemas.HealthInput):
            return health_report()
        modes = configured_modes()
        # a continuation's mode defaults to its state's: checked once the state is read
        if req.mode not in modes and (req.continue_from is None or "mode" in req.model_fields_set):
            raise WorkerError("MODE_UNAVAILABLE",
                              f"mode {req.mode!r} is not served by this worker "
                              f"(WORLDPLAY_MODES={','.join(modes)}); send it to an endpoint "
                              f"started with WORLDPLAY_MODES including {req.mode}")
        # where the video will go, checked now (not after paid GPU time); None: inline result
        from worker import delivery

        storage = delivery.preflight(req, get_storage)
        seed = req.seed if req.seed is not None else random.SystemRandom().randint(
            0, schemas.RANDOM_SEED_MAX)
        log.info("job %s: %s", job_id, json.dumps({**req.summary(), "seed": seed}))
        stages.add("validate", time.perf_counter() - t0)

        # -- fetch inputs + camera
        t0 = time.perf_counter()
        progress.update("fetch", force=True)
        spec = camera_spec(req)
        world = None
        if req.continue_from is not None:  # a world session: no image, new latents only
            world = session.open_world(req, spec, storage, modes)
            req, seed, trajectory, image = world.req, world.seed, world.request.camera, None
        else:
            trajectory = parse_camera(req, spec)
            image = fetch_image(req, cancel_event)
        stages.add("fetch", time.perf_counter() - t0)
        _check_cancel(cancel_event, "loading")

        # -- load (once per worker)
        t0 = time.perf_counter()
        progress.update("load", force=True)
        pipe, _ = MODELS.get(modes)
        stages.add("load", time.perf_counter() - t0)
        _check_cancel(cancel_event, "generation")

        # -- generate, with H.264 encoding of each finished chunk on a background thread
        t0 = time.perf_counter()
        request = world.request if world is not None else _request_class()(
            prompt=req.prompt, negative_prompt=req.negative_prompt, image=image,
            camera=trajectory, mode=req.mode, num_inference_steps=req.steps,
            guidance_scale=req.guidance, seed=seed)

        def _callback(stage: str, step: int, total: int) -> None:
            progress.update(stage, step, total)

        from pipeline.video import Mp4Writer

        workdir = tempfile.mkdtemp(prefix="worldplay-", dir=os.environ.get("WORLDPLAY_TMPDIR"))
        path = os.path.join(workdir, "video.mp4")
        streamed = 0

        def _on_frames(chunk) -> None:
            nonlocal streamed
            writer.write(chunk)
            streamed += len(chunk)

        from worker import preview as live_preview

        preview = live_preview.start(req, job_id, lambda: storage, progress)  # None when off
        # on any failure the writer aborts: queued chunks dropped, thread joined, partial file removed
        with Mp4Writer(path, req.fps, background=True,
                       **live_preview.writer_options(preview)) as writer:
            should_cancel = cancel_event.is_set if cancel_event is not None else None
            result = pipe.generate(request, callback=_callback, should_cancel=should_cancel,
                                   on_frames=_on_frames)
            frames = result.frames
            stages.add("generate", time.perf_counter() - t0)
            if getattr(frames, "shape", None) is None or len(frames.shape) != 4:
                raise WorkerError("INTERNAL_ERROR", "pipeline returned frames of an unexpected shape")
            if streamed not in (0, frames.shape[0]):
                raise WorkerError("INTERNAL_ERROR", f"pipeline handed over {streamed} frames but "
                                                    f"returned {frames.shape[0]}")
            expected = world.num_frames if world is not None else trajectory.num_frames
            if frames.shape[0] != expected:
                log.warning("job %s: pipeline returned %d frames, camera path has %d", job_id,
                            frames.shape[0], expected)
            _check_cancel(cancel_event, "encoding")

            # -- encode: what is left of it (the last chunk, the container's index)
            t0 = time.perf_counter()
            progress.update("encode", force=True)
            progress.close()
            if streamed == 0:  # a pipeline that does not stream: encode everything now
                writer.write(frames)
            info = writer.close()
        stages.add("encode", time.perf_counter() - t0)
        if preview is not None:
            preview.end()  # the last segment and #EXT-X-ENDLIST upload beside the MP4

        # -- upload (or, with no storage configured, the MP4 inline as base64)
        t0 = time.perf_counter()
        if storage is None:
            delivered = delivery.inline_video(path)
            where = "inline video_base64"
        else:
            key = f"{req.output.key_prefix}/{job_id}/video.mp4"
            storage.put_file(key, path, content_type="video/mp4")
            url, expires_at = storage.presigned_get(key, req.output.presign_expiry_seconds)
            delivered = dict(minio_key=key, bucket=storage.bucket, presigned_url=url,
                             expires_at=expires_at)
            where = f"s3://{storage.bucket}/{key}"
        if preview is not None and not preview.wait():
            log.warning("job %s: live preview still uploading; not waiting for it", job_id)
        saved = session.save_world(storage, req, job_id, result)  # state_key or state_error
        stages.add("upload", time.perf_counter() - t0)

        total = round(time.perf_counter() - started, 4)
        out = schemas.JobOutput(
            **delivered,
            num_frames=info.num_frames, fps=req.fps, width=info.width, height=info.height,
            duration_seconds=round(info.duration, 4), seed=seed, mode=req.mode,
            num_inference_steps=req.steps, guidance_scale=req.guidance,
            timings=schemas.Timings(**stages.timings), generation_time_seconds=total,
            **saved,
            **(preview.result() if preview is not None else {}),
        ).model_dump(by_alias=True, exclude=delivery.left_out(delivered))
        log.info("job %s: done in %.2f s (%s) -> %s", job_id, total,
                 ", ".join(f"{k} {v:.2f}" for k, v in stages.timings.items()), where)
        return out
    except BaseException as exc:  # noqa: BLE001 - every failure becomes an error dict
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        err = from_exception(exc)
        if err.code in ("INTERNAL_ERROR", "GPU_OUT_OF_MEMORY", "GPU_ERROR"):
            log.error("job %s failed: %s: %s", job_id, err.code, err.message, exc_info=exc)
            if err.code == "GPU_OUT_OF_MEMORY":
                _free_cuda_cache()
        else:
            log.warning("job %s failed: %s: %s", job_id, err.code, err.message)
        return err.to_dict()
    finally:
        progress.close()
        if preview is not None:  # failed or cancelled: the playlist still gets #EXT-X-ENDLIST
            preview.end()
            preview.wait(live_preview.FINISH_TIMEOUT)
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


def _free_cuda_cache() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001
        pass


# ---- health -----------------------------------------------------------------------------------
def _version(dist: str) -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def health_report() -> dict:
    """Readiness without generating (and without loading models)."""
    import worker

    try:
        modes = list(configured_modes())
        mode_error = None
    except WorkerError as exc:
        modes, mode_error = [], f"{exc.code}: {exc.message}"
    pipe = MODELS.pipe
    model: Dict[str, Any] = {}
    if pipe is not None:
        try:
            model = dict(pipe.health() or {})
        except Exception as exc:  # noqa: BLE001
            model = {"error": f"{type(exc).__name__}"}
        model.setdefault("load_seconds", MODELS.load_seconds)
    device = model.get("device")
    dtype = model.get("dtype")
    if device is None:
        try:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        except Exception:  # noqa: BLE001
            device = None
    from worker.delivery import storage_health

    storage, storage_ok = storage_health(get_storage)  # mode bucket / inline / incomplete
    ok = storage_ok and mode_error is None and MODELS.last_error is None
    report = schemas.HealthOutput(
        status="ok" if ok else "degraded",
        models_loaded=pipe is not None,
        modes=modes,
        loaded_modes=list(getattr(pipe, "modes", ()) or ()) if pipe is not None else [],
        device=str(device) if device is not None else None,
        dtype=str(dtype) if dtype is not None else None,
        versions={
            "worker": worker.__version__,
            "torch": _version("torch"),
            "diffusers": _version("diffusers"),
            "transformers": _version("transformers"),
            "runpod": _version("runpod"),
        },
        model=json.loads(json.dumps(model, default=str)),
        model_error=mode_error or MODELS.last_error,
        storage=storage,
    )
    return report.model_dump()


# ---- async entry point ------------------------------------------------------------------------
_EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="worldplay-job")


async def handler(job: dict) -> dict:
    """RunPod handler. GPU work runs on one worker thread so the SDK's event loop stays free to
    poll the per-job stop channel; a stop cancels this coroutine, which sets the cancel flag the
    pipeline checks between denoising steps (the thread then ends with CANCELLED)."""
    cancel = threading.Event()
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(_EXECUTOR, functools.partial(run_job, job,
                                                               cancel_event=cancel))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        cancel.set()
        log.warning("job %s: cancelled by the platform; stopping at the next step",
                    _job_id(job if isinstance(job, dict) else {}))
        raise


def error_message(exc: BaseException) -> str:
    """For callers outside the job flow (smoke test)."""
    return clean_message(str(exc))
