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
import contextlib
import functools
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
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

from pydantic import ValidationError

import schemas
from worker import preview as live_preview
from worker import session
from worker.errors import WorkerError, clean_message, from_exception

log = logging.getLogger("worldplay.job")

VALID_MODES = ("ar", "bidirectional")  # the older WORLDPLAY_MODES names (ar = model ar_distilled)
_JOB_ID_RE = re.compile(r"[^A-Za-z0-9._-]")


# ---- configuration ----------------------------------------------------------------------------
def configured_models(env=None) -> Tuple[str, ...]:
    """Models this worker serves (and loads, nothing else): ``WORLDPLAY_MODELS`` (comma separated model names,
    or ``all``), else the older ``WORLDPLAY_MODES`` (``ar`` = ar_distilled, ``bidirectional``); default
    ar_distilled."""
    from pipeline.checkpoints import MODEL_NAMES, parse_model_list

    env = os.environ if env is None else env
    raw = (env.get("WORLDPLAY_MODELS") or "").strip()
    if raw:
        try:
            return parse_model_list(raw.split(","))
        except ValueError:
            raise WorkerError("MODEL_UNAVAILABLE", f"WORLDPLAY_MODELS={raw!r} is invalid; use one or more of "
                                                   f"{', '.join(MODEL_NAMES)} (comma separated) or all") from None
    raw = env.get("WORLDPLAY_MODES", "ar") or "ar"
    modes = tuple(dict.fromkeys(m.strip().lower() for m in raw.split(",") if m.strip()))
    bad = [m for m in modes if m not in VALID_MODES]
    if bad or not modes:
        raise WorkerError("MODE_UNAVAILABLE",
                          f"WORLDPLAY_MODES={raw!r} is invalid; use ar, bidirectional or "
                          "ar,bidirectional (or WORLDPLAY_MODELS)")
    return parse_model_list(modes, legacy_modes=True)


def configured_modes(env=None) -> Tuple[str, ...]:
    """The rollouts of the models this worker serves (``ar``, ``bidirectional``)."""
    from pipeline.checkpoints import rollout_of

    return tuple(dict.fromkeys(rollout_of(m) for m in configured_models(env)))


def sr_enabled(env=None) -> bool:
    """``WORLDPLAY_SR=1``: this worker resolves and loads the 720p super-resolution stage and serves
    ``resolution: "720p"``."""
    from pipeline.settings import TRUE_WORDS

    value = ((os.environ if env is None else env).get("WORLDPLAY_SR") or "").strip().lower()
    return value in TRUE_WORDS


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
def default_loader(models: Tuple[str, ...]):
    """resolve_models + WorldPlayPipeline.from_paths (imported lazily: torch is heavy), on every
    sequence-parallel rank (WORLDPLAY_SEQUENCE_PARALLEL; pipeline.generation.ranks). Only the checkpoints
    of `models` are resolved and loaded."""
    from pipeline.generation.ranks import PathsLoader, load_ranked
    from pipeline.model_files.resolve import resolve_models

    # reads WORLDPLAY_MODEL_DIR, WORLDPLAY_ALLOW_DOWNLOAD, ...
    paths = resolve_models(list(models), sr=sr_enabled())  # WORLDPLAY_SR=1: the 720p stage too
    device = os.environ.get("WORLDPLAY_DEVICE") or None
    pipe = load_ranked(PathsLoader(paths, tuple(models)), device)
    pipe.warm_up_if_configured()  # WORLDPLAY_WARMUP (default: with WORLDPLAY_COMPILE=1 only)
    return pipe


WEIGHTS_PROBE_SECONDS = 30.0  # how long health remembers a weights probe


def default_weights_probe(modes: Tuple[str, ...]) -> Dict[str, Any]:
    """Would the default loader find the weights? A resolve that loads nothing and downloads nothing
    (every file present, safetensors headers and sizes checked: what resolve_models checks)."""
    from pipeline.errors import PipelineError
    from pipeline.model_files.resolve import resolve_models
    from pipeline.settings import env_flag

    try:
        paths = resolve_models(list(modes), allow_download=False, set_offline=False)
    except PipelineError as exc:
        allowed = env_flag("WORLDPLAY_ALLOW_DOWNLOAD", False)
        return {"resolved": False, "download_allowed": allowed, "problem": f"{exc.code}: {exc.message}"}
    return {"resolved": True, "sources": dict(paths.sources)}


class ModelHolder:
    """Loads the pipeline once per process; thread-safe; a failed load is retried next time.

    ``probe(modes)`` says, without loading, whether ``loader`` would find its weights (health asks it
    while nothing is loaded); None for loaders that need no weights on disk (tests' stand-ins)."""

    def __init__(self, loader: Callable = default_loader, probe: Optional[Callable] = default_weights_probe):
        self.loader = loader
        self.probe = probe
        self._probed: Optional[Tuple[float, Tuple[str, ...], Dict[str, Any]]] = None
        self._lock = threading.Lock()
        self.pipe = None
        self.models: Tuple[str, ...] = ()
        self.load_seconds: Optional[float] = None
        self.last_error: Optional[str] = None

    @property
    def loaded(self) -> bool:
        return self.pipe is not None

    def get(self, models: Tuple[str, ...]) -> Tuple[Any, float]:
        """Return (pipeline, seconds spent loading in this call)."""
        if self.pipe is not None:
            return self.pipe, 0.0
        with self._lock:
            if self.pipe is not None:
                return self.pipe, 0.0
            t0 = time.perf_counter()
            log.info("loading models %s", ",".join(models))
            try:
                pipe = self.loader(models)
            except BaseException as exc:
                err = from_exception(exc)
                self.last_error = f"{err.code}: {err.message}"
                raise
            self.load_seconds = time.perf_counter() - t0
            self.pipe, self.models, self.last_error = pipe, models, None
            log.info("models loaded in %.1f s", self.load_seconds)
            return pipe, self.load_seconds

    def reset(self) -> None:
        with self._lock:
            self.pipe, self.models, self.load_seconds, self.last_error = None, (), None, None
            self._probed = None

    def weights(self, models: Tuple[str, ...]) -> Optional[Dict[str, Any]]:
        """The probe's answer for ``models`` (remembered WEIGHTS_PROBE_SECONDS); None when loaded or no probe."""
        if self.pipe is not None or self.probe is None:
            return None
        now = time.monotonic()
        cached = self._probed
        if cached is not None and cached[1] == models and now - cached[0] < WEIGHTS_PROBE_SECONDS:
            return cached[2]
        try:
            result = dict(self.probe(models))
        except Exception as exc:  # noqa: BLE001 - health must answer whatever the disk holds
            result = {"resolved": False, "download_allowed": False,
                      "problem": f"{type(exc).__name__}: {exc}"[:500]}
        self._probed = (now, models, result)
        return result


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
        # the weights probe answers for the default loader only (a stand-in loads nothing from disk)
        MODELS.probe = default_weights_probe if loader is default_loader else None


def preload() -> bool:
    """Load the models now (worker start). Failures are logged and reported per job."""
    try:
        MODELS.get(configured_models())
        return True
    except Exception as exc:  # noqa: BLE001
        err = from_exception(exc)
        log.error("model preload failed: %s: %s", err.code, err.message)
        return False


def _request_class():
    from pipeline.generation.engine import GenerationRequest

    return GenerationRequest


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
        self.extra: Dict[str, Any] = {}  # fields every later update carries
        self._sources: list = []  # callables whose fields are computed for each update (live preview)
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
            for source in self._sources:
                try:
                    payload.update(source())
                except Exception as exc:  # noqa: BLE001 - progress must never fail a job
                    log.debug("progress fields not added: %s", type(exc).__name__)
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

    def attach_source(self, source: Callable[[], Dict[str, Any]]) -> None:
        """``source()``'s fields go into every later update, computed as each one is sent (a URL
        signed afresh each time)."""
        with self._lock:
            self._sources.append(source)

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


# ---- inputs (worker.inputs: shared by the queue job and the live socket) ----------------------
from worker.inputs import camera_spec, fetch_image, parse_camera  # noqa: E402 - the fetch stage's pieces


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


@dataclass
class JobPlan:
    """What the validate stage decided: the request, where the video goes (``storage`` None: inline),
    the seed, and the models this worker serves."""

    req: Any
    job_id: str
    storage: Any
    seed: int
    models: Tuple[str, ...]


@dataclass
class JobInputs:
    """What the fetch stage produced: the generation request (a new world, or a continuation of a
    saved one), the job input with a continuation's settings filled in, and the frames expected."""

    request: Any
    req: Any
    seed: int
    expected_frames: int


@dataclass
class Rendered:
    """What the render stage produced: the finished MP4 on local disk and the pipeline's result."""

    path: str
    info: Any
    result: Any


def validate_job(job: dict) -> "JobPlan | dict":
    """The validate stage: the schema, the model, the storage (checked now, not after paid GPU
    time) and the seed. A health request returns the health report instead."""
    job_id = _job_id(job)
    try:
        req = schemas.parse_input(job.get("input"))
    except ValidationError as exc:
        raise WorkerError("INVALID_INPUT", schemas.format_validation_error(exc)) from None
    except TypeError as exc:
        raise WorkerError("INVALID_INPUT", str(exc)) from None
    if isinstance(req, schemas.HealthInput):
        return health_report()
    models = configured_models()
    redecode = isinstance(req, schemas.RedecodeInput)
    if not redecode:  # a redecode generates nothing: any worker's VAE decodes any state
        check_model_served(req, models)
        check_resolution_served(req)
    from worker import delivery

    storage = delivery.preflight(req, get_storage)  # None: inline result
    # a redecode's seed is its state's (read in the fetch stage)
    seed = 0 if redecode else req.seed if req.seed is not None else random_seed()
    log.info("job %s: %s", job_id, json.dumps({**req.summary(), "seed": seed}))
    return JobPlan(req=req, job_id=job_id, storage=storage, seed=seed, models=models)


def check_model_served(req, models: Tuple[str, ...]) -> None:
    """The request's model is one this worker holds (a continuation naming none: checked once the state is
    read). ``model`` not served: MODEL_UNAVAILABLE; the older ``mode`` (or the default): MODE_UNAVAILABLE, as
    before models had names. Both name what the worker serves."""
    if req.continue_from is not None and not req.model_named:
        return
    model = req.resolved_model
    if model in models:
        return
    if req.model is not None:
        raise WorkerError("MODEL_UNAVAILABLE",
                          f"model {model!r} is not served by this worker (it serves {', '.join(models)}: "
                          f"WORLDPLAY_MODELS); send it to an endpoint started with WORLDPLAY_MODELS including "
                          f"{model}")
    mode = req.mode or "ar"
    raise WorkerError("MODE_UNAVAILABLE",
                      f"mode {mode!r} (model {model}) is not served by this worker (it serves "
                      f"{', '.join(models)}: WORLDPLAY_MODELS / WORLDPLAY_MODES); send it to an endpoint "
                      f"started with WORLDPLAY_MODES including {mode}")


def check_resolution_served(req) -> None:
    """``resolution: "720p"`` needs the super-resolution stage, which only a worker with ``WORLDPLAY_SR=1``
    loads: MODEL_UNAVAILABLE otherwise, before anything is fetched or loaded."""
    resolution = getattr(req, "resolution", "480p")
    if resolution != "480p" and not sr_enabled():
        raise WorkerError("MODEL_UNAVAILABLE",
                          f"resolution {resolution!r} needs the super-resolution stage, which this worker does not "
                          "load: send it to an endpoint started with WORLDPLAY_SR=1, or ask for 480p")


def random_seed() -> int:
    return random.SystemRandom().randint(0, schemas.RANDOM_SEED_MAX)


def fetch_inputs(plan: JobPlan, cancel_event: Optional[threading.Event] = None) -> JobInputs:
    """The fetch stage: the camera spec and the picture, or the saved world a continuation resumes (or a
    redecode decodes again: then the request is that :class:`WorldState`)."""
    req = plan.req
    if isinstance(req, schemas.RedecodeInput):
        state, _ = session.read_state(req.redecode_from, plan.storage, field="redecode_from")
        return JobInputs(request=state, req=req, seed=int(state.seed),
                         expected_frames=4 * (state.num_latents - 1) + 1)
    spec = camera_spec(req, get_storage)
    if req.continue_from is not None:  # a world session: no image, new latents only
        world = session.open_world(req, spec, plan.storage, plan.models)
        world.request.decoder = req.decoder
        return JobInputs(request=world.request, req=world.req, seed=world.seed,
                         expected_frames=world.num_frames)
    trajectory = parse_camera(req, spec)
    resolution = getattr(req, "resolution", "480p")
    extra = {}
    if resolution != "480p":
        from pipeline.sr.upsampler import check_sr_frames

        check_sr_frames(trajectory.num_frames)  # INVALID_FRAME_COUNT before the image is fetched
        extra["resolution"] = resolution
    image = fetch_image(req, get_storage, cancel_event)
    request = _request_class()(
        prompt=req.prompt, negative_prompt=req.negative_prompt, image=image, camera=trajectory,
        model=req.resolved_model, num_inference_steps=req.steps, guidance_scale=req.guidance, seed=plan.seed,
        decoder=req.decoder, **extra)
    return JobInputs(request=request, req=req, seed=plan.seed, expected_frames=trajectory.num_frames)


def render(pipe, plan: JobPlan, inputs: JobInputs, workdir: str, progress: "ProgressReporter",
           cancel_event: Optional[threading.Event], preview, stages: "_Stages") -> Rendered:
    """The generate + encode stages: the world's chunks stream into a background H.264 writer (and
    the live preview) as they are decoded; on any failure the writer drops its partial file."""
    from pipeline.video import Mp4Writer

    req = inputs.req
    path = os.path.join(workdir, "video.mp4")
    streamed = 0
    t0 = time.perf_counter()
    super_resolve = getattr(inputs.request, "resolution", "480p") != "480p"
    redecode = isinstance(req, schemas.RedecodeInput)  # a saved world's latents decoded again: no generation

    def _on_frames(chunk) -> None:
        nonlocal streamed
        writer.write(chunk)
        streamed += len(chunk)

    def _callback(stage: str, step: int, total: int) -> None:
        progress.update(stage, step, total)

    extra: Dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        if super_resolve:
            # the MP4 gets the 720p frames at the end; the live preview (if any) the 480p chunks as they come,
            # through a writer of its own whose file is not kept
            writer = stack.enter_context(Mp4Writer(path, req.fps, background=True))
            if preview is not None:
                preview_writer = stack.enter_context(Mp4Writer(os.path.join(workdir, "preview-480p.mp4"), req.fps,
                                                               background=True,
                                                               **live_preview.writer_options(preview)))
                extra["on_preview_frames"] = preview_writer.write
        else:
            writer = stack.enter_context(Mp4Writer(path, req.fps, background=True,
                                                   **live_preview.writer_options(preview)))
        should_cancel = cancel_event.is_set if cancel_event is not None else None
        if redecode:
            progress.update("decode", force=True)
            result = pipe.redecode(inputs.request, decoder=req.decoder, on_frames=_on_frames,
                                   should_cancel=should_cancel, keep_frames=False)  # streamed only
        else:
            result = pipe.generate(inputs.request, callback=_callback, should_cancel=should_cancel,
                                   on_frames=_on_frames, **extra)
        if "on_preview_frames" in extra:
            preview_writer.close()
        frames = result.frames
        stages.add("generate", time.perf_counter() - t0)
        if getattr(frames, "shape", None) is None or len(frames.shape) != 4:
            raise WorkerError("INTERNAL_ERROR", "pipeline returned frames of an unexpected shape")
        # a redecode hands its frames over without keeping them; a generation returns them all too
        made = result.num_frames if redecode else frames.shape[0]
        if streamed not in ((made,) if redecode else (0, made)):
            raise WorkerError("INTERNAL_ERROR", f"pipeline handed over {streamed} frames but made {made}")
        if made != inputs.expected_frames:
            log.warning("job %s: pipeline made %d frames, expected %d", plan.job_id, made,
                        inputs.expected_frames)
        _check_cancel(cancel_event, "encoding")

        # -- encode: what is left of it (the last chunk, the container's index)
        t0 = time.perf_counter()
        progress.update("encode", force=True)
        progress.close()
        if streamed == 0:  # a pipeline that does not stream: encode everything now
            writer.write(frames)
        info = writer.close()
    stages.add("encode", time.perf_counter() - t0)
    return Rendered(path=path, info=info, result=result)


def run_job(job: dict, *, cancel_event: Optional[threading.Event] = None,
            progress: Optional[ProgressReporter] = None) -> dict:
    """Run one job through its stages (validate -> fetch -> load -> render -> deliver -> save);
    returns the output or an error dict; never raises."""
    from worker import delivery

    started = time.perf_counter()
    job = job if isinstance(job, dict) else {}
    job_id = _job_id(job)
    progress = progress or ProgressReporter(job)
    stages = _Stages()
    workdir = None
    preview = storage = None
    saved: Dict[str, Any] = {}
    try:
        t0 = time.perf_counter()
        plan = validate_job(job)
        if not isinstance(plan, JobPlan):
            return plan  # the health report
        stages.add("validate", time.perf_counter() - t0)

        t0 = time.perf_counter()
        progress.update("fetch", force=True)
        inputs = fetch_inputs(plan, cancel_event)
        req, storage = inputs.req, plan.storage
        stages.add("fetch", time.perf_counter() - t0)
        _check_cancel(cancel_event, "loading")

        t0 = time.perf_counter()
        progress.update("load", force=True)
        pipe, _ = MODELS.get(plan.models)  # once per worker
        stages.add("load", time.perf_counter() - t0)
        pipe.check_decoder(req.decoder)  # MODEL_UNAVAILABLE before any GPU work (the preview, the workdir)
        _check_cancel(cancel_event, "generation")

        workdir = tempfile.mkdtemp(prefix="worldplay-", dir=os.environ.get("WORLDPLAY_TMPDIR"))
        preview = live_preview.start(req, job_id, lambda: storage, progress)  # None when off
        rendered = render(pipe, plan, inputs, workdir, progress, cancel_event, preview, stages)
        if preview is not None:
            preview.end()  # the last segment and #EXT-X-ENDLIST upload beside the MP4

        t0 = time.perf_counter()
        delivered = delivery.deliver_video(storage, f"{req.output.key_prefix}/{job_id}/video.mp4",
                                           rendered.path, req.output.presign_expiry_seconds)
        saved = session.save_world(storage, req, job_id, rendered.result)  # state_key or state_error
        previewed = live_preview.finish(preview)  # waits once (at most 2 s) for the last playlist
        stages.add("upload", time.perf_counter() - t0)

        total = round(time.perf_counter() - started, 4)
        info = rendered.info
        out = schemas.JobOutput(
            **delivered,
            num_frames=info.num_frames, fps=req.fps, width=info.width, height=info.height,
            duration_seconds=round(info.duration, 4), seed=inputs.seed, **_described(req, rendered.result),
            timings=schemas.Timings(**stages.timings), generation_time_seconds=total,
            **saved, **previewed,
        ).model_dump(by_alias=True, exclude=delivery.left_out(delivered))
        where = (f"s3://{storage.bucket}/{delivered['minio_key']}" if storage is not None
                 else "inline video_base64")
        log.info("job %s: done in %.2f s (%s) -> %s", job_id, total,
                 ", ".join(f"{k} {v:.2f}" for k, v in stages.timings.items()), where)
        return out
    except BaseException as exc:  # noqa: BLE001 - every failure becomes an error dict
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        live_preview.discard(preview)  # its objects go (WORLDPLAY_PREVIEW_KEEP_FAILED=1 keeps them)
        session.discard_world(storage, saved)  # a failed job leaves no world state
        return failure(exc, job_id)
    finally:
        progress.close()
        live_preview.close(preview)  # waits (at most 2 s) unless finish() did
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


def _described(req, result) -> Dict[str, Any]:
    """The output's model, rollout, steps and guidance: the request's, or for a redecode its state's."""
    if isinstance(req, schemas.RedecodeInput):
        return {"model": result.model, "mode": result.mode, "num_inference_steps": result.num_inference_steps,
                "guidance_scale": result.guidance_scale}
    return {"model": req.resolved_model, "mode": req.rollout, "num_inference_steps": req.steps,
            "guidance_scale": req.guidance}


def failure(exc: BaseException, what: str) -> dict:
    """The coded error dict of a failed job or live world (logged; GPU memory freed after an OOM)."""
    err = from_exception(exc)
    if err.code in ("INTERNAL_ERROR", "GPU_OUT_OF_MEMORY", "GPU_ERROR"):
        log.error("%s failed: %s: %s", what, err.code, err.message, exc_info=exc)
        if err.code == "GPU_OUT_OF_MEMORY":
            _free_cuda_cache()
    else:
        log.warning("%s failed: %s: %s", what, err.code, err.message)
    return err.to_dict()


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

    from pipeline.checkpoints import rollout_of

    try:
        models = list(configured_models())
        mode_error = None
    except WorkerError as exc:
        models, mode_error = [], f"{exc.code}: {exc.message}"
    modes = list(dict.fromkeys(rollout_of(m) for m in models))
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
    # before the first load: would a job find its weights? (loads and downloads nothing; cached)
    weights = MODELS.weights(tuple(models)) if models else None
    weights_ok = weights is None or weights["resolved"] or weights.get("download_allowed", False)
    ok = storage_ok and mode_error is None and MODELS.last_error is None and weights_ok
    report = schemas.HealthOutput(
        status="ok" if ok else "degraded",
        models_loaded=pipe is not None,
        models=models,
        loaded_models=list(getattr(pipe, "models", ()) or ()) if pipe is not None else [],
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
        weights=weights,
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
