"""World sessions in the job flow: continue a job's world from its saved state, and save the new one.

``open_world`` reads the state named by ``continue_from`` from the bucket (size checked before the
download), parses it strictly (:mod:`pipeline.generation.world_state`) and builds the continuation's
``GenerationRequest`` with :func:`pipeline.generation.world_state.continuation_request` — the same code path as
``python -m pipeline --continue-from``. ``save_world`` writes ``{key_prefix}/{job_id}/world.safetensors``
after the video, unless the request (``output.save_state: false``) or ``WORLDPLAY_SAVE_STATE=0`` turns
it off, no storage is configured, or the pipeline returned no state.

Trust (README, *World sessions*): with ``WORLDPLAY_STATE_SECRET`` set, ``store_state`` signs every state
the worker writes (jobs and live worlds) and ``read_state`` (``continue_from`` of jobs and live worlds)
refuses a state whose signature is missing or wrong (``INVALID_STATE``) before a byte of it is parsed.
The signature is HMAC-SHA256 under the secret over ``b"worldplay-world-state/v1\\0"``, the object key's
length (8 bytes, big-endian), the key (UTF-8) and the object's bytes exactly as stored (the safetensors
file): no field is parsed or re-serialised to check it, and a state copied to another key no longer
verifies. It travels as the object's user metadata
``x-amz-meta-worldplay-signature: v1:<hex>``, so the object stays a plain safetensors file.
``WORLDPLAY_CONTINUE_PREFIXES`` (comma-separated key prefixes) limits the keys ``continue_from`` may
name (``STATE_FORBIDDEN``), checked before the bucket is asked anything.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import struct
import time
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from worker.errors import WorkerError
from worker.storage import upload_window

log = logging.getLogger("worldplay.session")

STATE_FILE = "world.safetensors"
SECRET_ENV = "WORLDPLAY_STATE_SECRET"
PREFIXES_ENV = "WORLDPLAY_CONTINUE_PREFIXES"
SIGNATURE_META = "worldplay-signature"  # stored as the object's x-amz-meta-worldplay-signature
_SIGNATURE_VERSION = "v1"
_DOMAIN = b"worldplay-world-state/v1\0"


def state_secret(env=None) -> Optional[bytes]:
    """``WORLDPLAY_STATE_SECRET`` as bytes, or None when unset or empty (states are then not signed)."""
    env = os.environ if env is None else env
    value = env.get(SECRET_ENV, "")
    return value.encode("utf-8") if value else None


def continue_prefixes(env=None) -> Tuple[str, ...]:
    """``WORLDPLAY_CONTINUE_PREFIXES``: the key prefixes continue_from may name (empty: any key)."""
    env = os.environ if env is None else env
    return tuple(p.strip() for p in env.get(PREFIXES_ENV, "").split(",") if p.strip())


def sign_state(secret: bytes, key: str, data: bytes) -> str:
    """The signature of the state ``data`` stored at ``key``: ``v1:`` + hex HMAC-SHA256 (module docstring)."""
    raw_key = key.encode("utf-8")
    mac = hmac.new(secret, _DOMAIN + struct.pack(">Q", len(raw_key)) + raw_key, hashlib.sha256)
    mac.update(data)
    return f"{_SIGNATURE_VERSION}:{mac.hexdigest()}"


def verify_state(secret: bytes, key: str, data: bytes, signature: Optional[str]) -> None:
    """Raise INVALID_STATE unless ``signature`` is this deployment's signature of ``data`` at ``key``
    (constant-time comparison; neither the secret nor the expected signature is ever shown)."""
    if not signature:
        raise WorkerError("INVALID_STATE", f"world state {key!r} is not signed; this worker continues only "
                                           f"states it wrote itself ({SECRET_ENV} is set)")
    expected = sign_state(secret, key, data)
    if not hmac.compare_digest(expected.encode("ascii"), signature.strip().encode("utf-8", "replace")):
        raise WorkerError("INVALID_STATE", f"world state {key!r} does not carry a valid signature of this "
                                           "deployment: it was altered, moved to another key, or written "
                                           f"with another {SECRET_ENV}")


def check_continue_key(key: str, prefixes: Tuple[str, ...], field: str = "continue_from") -> None:
    if prefixes and not any(key.startswith(prefix) for prefix in prefixes):
        raise WorkerError("STATE_FORBIDDEN", f"{field} {key!r} is outside the key prefixes this worker "
                                             f"reads world states from ({PREFIXES_ENV}={','.join(prefixes)})")


@dataclass
class ContinuedWorld:
    """A continuation ready to generate: the request, the resolved job input and the state's size."""

    request: Any  # pipeline.generation.engine.GenerationRequest with history
    req: Any  # schemas.JobInput with mode / steps / guidance / seed / prompts filled from the state
    seed: int
    new_latents: int
    state_bytes: int
    load_seconds: float

    @property
    def num_frames(self) -> int:
        """Frames of the continuation's video: 4 per new latent (no new start frame)."""
        return 4 * self.new_latents


def read_state(key: str, storage, field: str = "continue_from"):
    """The world state ``key`` from the bucket, size-checked before the download and parsed strictly:
    ``(state, size in bytes)``. Shared by ``continue_from`` and ``redecode_from`` jobs (`field`: the input
    that named it, for the messages) and live worlds (worker.live_session)."""
    from pipeline.generation.world_state import SessionLimits, WorldState, check_state_size

    check_continue_key(key, continue_prefixes(), field)  # before the bucket is asked anything
    if storage is None:
        raise WorkerError("STORAGE_NOT_CONFIGURED", f"{field} reads the world state from the bucket: "
                                                    "this worker has no storage configured (MINIO_*)")
    limits = SessionLimits.from_env()
    try:
        size, meta = storage.stat(key)
    except WorkerError as exc:
        if exc.code == "OBJECT_NOT_FOUND":
            raise WorkerError("STATE_NOT_FOUND", f"world state {key!r} does not exist in bucket "
                                                 f"{storage.bucket!r} ({field} takes the state_key "
                                                 "of an earlier job or live world)") from None
        raise
    check_state_size(size, limits)
    data = storage.get_bytes(key, limits.max_bytes)
    secret = state_secret()
    if secret is not None:  # checked before any byte of the state is parsed
        # the signature is read with the first stat: an object replaced in between fails the check
        verify_state(secret, key, data, meta.get(SIGNATURE_META))
    return WorldState.from_bytes(data, limits), size


def check_continuation_frames(num_frames: int, mode: str) -> None:
    """``num_frames`` of a continuation, checked in frames: 4 per new latent and no start frame, in
    whole chunks (ar: 16, 32, 48, ...; bidirectional: 64, 128, ...)."""
    from pipeline.generation.camera import FRAMES_PER_LATENT, MODE_LATENT_MULTIPLE

    step = FRAMES_PER_LATENT * MODE_LATENT_MULTIPLE[mode]
    if num_frames >= step and num_frames % step == 0:
        return
    lower = num_frames - num_frames % step
    options = [f for f in (lower, lower + step) if f >= step]
    nearest = " or ".join(str(f) for f in options)
    raise WorkerError("INVALID_FRAME_COUNT",
                      f"num_frames {num_frames} cannot continue a world in {mode} mode: a continuation adds "
                      f"whole chunks of {step} frames (4 per new latent, no start frame), i.e. {step}, "
                      f"{2 * step}, {3 * step}, ...; the nearest valid {'are' if len(options) > 1 else 'is'} "
                      f"{nearest} frames")


def open_world(req, spec: Any, storage, models: Tuple[str, ...]) -> ContinuedWorld:
    """Load and check the state ``req.continue_from`` and build the continuation request."""
    from pipeline.generation.continuation import continuation_request

    started = time.perf_counter()
    key = req.continue_from
    state, size = read_state(key, storage)
    fields = req.model_fields_set
    mode = req.mode if "mode" in fields else state.mode  # another mode than the state's: STATE_MISMATCH
    if req.num_frames is not None and getattr(req, "camera_defaulted", False) and mode in ("ar", "bidirectional"):
        # num_frames alone made the camera path: answer in the frames the user wrote, not in its latents
        check_continuation_frames(req.num_frames, mode)
    # another model than the state's (named by model, or by mode, its alias): STATE_MISMATCH
    model = req.resolved_model if req.model_named else None
    request = continuation_request(
        state, spec,
        prompt=req.prompt,
        negative_prompt=req.negative_prompt if "negative_prompt" in fields else None,
        model=model,
        num_inference_steps=req.num_inference_steps,
        guidance_scale=req.guidance_scale,
        seed=req.seed,
        spec_text=req.pose if req.pose is not None and len(req.pose) <= 80 else None,
    )
    if request.model not in models:
        raise WorkerError("MODEL_UNAVAILABLE", f"the world state was made with model {request.model}, which this "
                                               f"worker does not serve (it serves {', '.join(models)}: "
                                               "WORLDPLAY_MODELS)")
    new_latents = request.camera.num_latents
    if req.num_frames is not None and req.num_frames != 4 * new_latents:
        raise WorkerError("INVALID_FRAME_COUNT",
                          f"num_frames {req.num_frames} does not match the camera path, which adds "
                          f"{4 * new_latents} new frames (4 per new latent; a continuation has no start "
                          f"frame): send num_frames {4 * new_latents}, or leave num_frames out")
    resolved = req.model_copy(update={
        "prompt": request.prompt, "negative_prompt": request.negative_prompt, "model": request.model,
        "mode": None,
        "num_inference_steps": request.num_inference_steps, "guidance_scale": request.guidance_scale,
    })
    log.info("continuing world %s: %d latents + %d new (%d bytes)", key, state.num_latents, new_latents, size)
    return ContinuedWorld(request=request, req=resolved, seed=int(request.seed), new_latents=new_latents,
                          state_bytes=size, load_seconds=round(time.perf_counter() - started, 4))


def save_enabled(req) -> bool:
    from pipeline.settings import env_flag

    return bool(req.output.save_state) and bool(env_flag("WORLDPLAY_SAVE_STATE", True))


def save_world(storage, req, job_id: str, result) -> Dict[str, Any]:
    """Upload the session's state after this job (the video is already stored), unless turned off."""
    state = getattr(result, "state", None)
    if state is None or storage is None or not save_enabled(req):
        return {}
    return save_state(storage, req.output.key_prefix, job_id, state)


def save_state(storage, key_prefix: str, name: str, state) -> Dict[str, Any]:
    """Upload a world state as ``{key_prefix}/{name}/world.safetensors`` (a job's or a live world's).
    Returns ``state_key`` and ``session_latents``, or, when the upload fails, ``state_error`` instead:
    a storage fault after the video is stored must not turn a finished video into a failure."""
    key = f"{key_prefix}/{name}/{STATE_FILE}"
    try:
        size = store_state(storage, key, state)
    except WorkerError as exc:
        log.warning("%s: world state not saved: %s: %s", name, exc.code, exc.message)
        return {"state_error": f"{exc.code}: {exc.message}"}
    log.info("saved world state (%d latents, %d bytes) -> %s", state.num_latents, size, key)
    return {"state_key": key, "session_latents": state.num_latents}


def store_state(storage, key: str, state) -> int:
    """Upload a world state as ``key`` (stamped with this worker's version, signed with
    ``WORLDPLAY_STATE_SECRET`` when set; retried over the video's upload window: the state is GPU work
    too). Returns its size in bytes; raises WorkerError."""
    import worker

    state.worker_version = worker.__version__
    data = state.to_bytes()
    secret = state_secret()
    headers = {f"x-amz-meta-{SIGNATURE_META}": sign_state(secret, key, data)} if secret is not None else None
    storage.put_bytes(key, data, content_type="application/octet-stream", headers=headers,
                      window=upload_window())
    return len(data)


def discard_world(storage, saved: Dict[str, Any]) -> None:
    """A job that fails after :func:`save_world` stored its state (``saved``, what that returned)
    removes it: nobody learns the key of a failed job's state. Logged, never raised."""
    key = (saved or {}).get("state_key")
    if key is None or storage is None:
        return
    try:
        storage.remove_objects([key])
        log.info("removed the world state of a failed job: %s", key)
    except WorkerError as exc:
        log.warning("world state %s of a failed job not removed: %s: %s", key, exc.code, exc.message)
