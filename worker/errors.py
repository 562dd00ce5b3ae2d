"""Worker errors: a stable ``code`` plus a human message, returned as ``{"error": "CODE: message"}``.

Every failure a user can cause maps to one code (see README "Error codes"). GPU faults and
unexpected exceptions also set ``refresh_worker`` so RunPod replaces a possibly corrupted worker.
"""

from __future__ import annotations

import errno
import re
from typing import Optional

# code -> (refresh_worker, one-line meaning) — the README table is generated from the same facts
ERROR_CODES = {
    "INVALID_INPUT": (False, "the request does not match the input schema"),
    "INVALID_POSE": (False, "the camera spec (pose, pose_key, pose_json, actions) is malformed"),
    "INVALID_FRAME_COUNT": (False, "num_frames / latent count breaks the 4k+1 or mode rule"),
    "INVALID_IMAGE": (False, "the image is unreadable, not PNG/JPEG/WebP, too large or too small"),
    "MODE_UNAVAILABLE": (False, "the requested mode is not served by this worker (WORLDPLAY_MODES), or a "
                                "live world asks for a bidirectional model"),
    "MODEL_UNAVAILABLE": (False, "the requested model is not served by this worker (WORLDPLAY_MODELS; the "
                                 "message names those it serves), resolution 720p on a worker without "
                                 "WORLDPLAY_SR=1, or decoder 'fast' on a worker without its weights"),
    "OBJECT_NOT_FOUND": (False, "image_key / pose_key does not exist in the bucket"),
    "OBJECT_TOO_LARGE": (False, "an input object exceeds its size limit"),
    "BUCKET_NOT_FOUND": (False, "MINIO_BUCKET does not exist"),
    "STORAGE_ACCESS_DENIED": (False, "MinIO rejected the credentials or the operation"),
    "STORAGE_UNAVAILABLE": (False, "MinIO unreachable or failing after retries"),
    "STORAGE_NOT_CONFIGURED": (False, "MINIO_* incomplete or malformed, or a job needs storage the "
                                      "worker does not have (keyed input, video over the inline cap)"),
    "IMAGE_DOWNLOAD_FAILED": (False, "image_url could not be fetched"),
    "IMAGE_URL_FORBIDDEN": (False, "image_url (or a redirect) points at a non-public address"),
    "MODEL_NOT_FOUND": (False, "model weights missing and downloading disabled"),
    "MODEL_DOWNLOAD_FAILED": (False, "model download failed"),
    "CHECKPOINT_MISMATCH": (False, "a checkpoint does not match the architecture"),
    "STATE_NOT_FOUND": (False, "the world state named by continue_from does not exist"),
    "INVALID_STATE": (False, "continue_from names an object that is not a valid world state"),
    "STATE_MISMATCH": (False, "the world state was made by another checkpoint, mode or size"),
    "STATE_FORBIDDEN": (False, "continue_from names a key outside WORLDPLAY_CONTINUE_PREFIXES"),
    "SESSION_TOO_LONG": (False, "the world session exceeds the configured maximum (latents / bytes)"),
    "INVALID_MESSAGE": (False, "live socket: a message is malformed, unknown, too large or out of turn"),
    "LIVE_BUSY": (False, "live socket: this worker runs a live world already (close 1013; retry)"),
    "LIVE_UNAUTHORIZED": (False, "live socket: missing or wrong WORLDPLAY_LIVE_TOKEN, or an Origin not allowed"),
    "CANCELLED": (False, "the job was cancelled between denoising steps"),
    "DISK_FULL": (True, "the temp filesystem ran out of space writing the video"),
    "SEQUENCE_PARALLEL_CONFIG": (False, "WORLDPLAY_SEQUENCE_PARALLEL does not divide the heads or exceeds the GPUs"),
    "RANK_FAILED": (True, "a sequence-parallel rank died or failed; the worker is replaced"),
    "GPU_OUT_OF_MEMORY": (True, "CUDA out of memory; the worker is replaced"),
    "GPU_ERROR": (True, "a CUDA fault; the worker is replaced"),
    "INTERNAL_ERROR": (True, "an unexpected bug; the worker is replaced"),
}

_MAX_MESSAGE = 600
_SECRET_PATTERNS = [
    # key=value / key: value forms of secrets that might leak through library messages
    re.compile(r"(?i)(secret[_-]?(access[_-]?)?key|password|token|signature|x-amz-signature|"
               r"x-amz-credential|authorization)(['\"]?\s*[=:]\s*['\"]?)([^\s&'\",;]+)"),
]


def redact(text: str, secrets: tuple = ()) -> str:
    """Remove known secret values and secret-looking ``key=value`` pairs from ``text``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + m.group(3) + "***", text)
    return text


def _known_secrets() -> tuple:
    import os

    names = ("MINIO_SECRET_KEY", "RUNPOD_API_KEY", "HF_TOKEN", "AWS_SECRET_ACCESS_KEY",
             "MINIO_ACCESS_KEY", "WORLDPLAY_STATE_SECRET")
    return tuple(v for v in (os.environ.get(n) for n in names) if v)


def clean_message(message: str) -> str:
    """One line, bounded, with secrets removed."""
    text = " ".join(str(message).split())
    text = redact(text, _known_secrets())
    if len(text) > _MAX_MESSAGE:
        text = text[: _MAX_MESSAGE - 3] + "..."
    return text


class WorkerError(Exception):
    """A failure with a stable code; ``to_dict()`` is the handler's return value."""

    def __init__(self, code: str, message: str, *, refresh_worker: Optional[bool] = None):
        if code not in ERROR_CODES:
            raise ValueError(f"unknown error code {code!r}")
        self.code = code
        self.message = clean_message(message)
        self.refresh_worker = ERROR_CODES[code][0] if refresh_worker is None else refresh_worker
        super().__init__(f"{code}: {self.message}")

    def to_dict(self) -> dict:
        out = {"error": f"{self.code}: {self.message}"}
        if self.refresh_worker:
            out["refresh_worker"] = True
        return out


def _is_cuda_oom(exc: BaseException) -> bool:
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except Exception:  # noqa: BLE001 - torch missing or broken: fall back to the text
        pass
    text = str(exc)
    return type(exc).__name__ == "OutOfMemoryError" or "CUDA out of memory" in text


def _is_cuda_fault(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "CUDA error" in text or "CUBLAS_STATUS" in text or "cuDNN error" in text
        or "CUDNN_STATUS" in text or "device-side assert" in text
    )


def _where(exc: OSError) -> str:
    import os

    name = exc.filename if isinstance(exc.filename, str) else None
    return f"in {os.path.dirname(name) or '.'}" if name else "a temporary file"


def from_exception(exc: BaseException) -> WorkerError:
    """Map any exception to a WorkerError (pipeline errors keep their code)."""
    if isinstance(exc, WorkerError):
        return exc
    code = getattr(exc, "code", None)
    try:
        from pipeline.errors import PipelineError
    except Exception:  # noqa: BLE001
        PipelineError = ()  # type: ignore[assignment]
    if PipelineError and isinstance(exc, PipelineError) and code in ERROR_CODES:
        return WorkerError(code, getattr(exc, "message", str(exc)))
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return WorkerError("DISK_FULL", f"no space left writing {_where(exc)}; free space "
                                        "under WORLDPLAY_TMPDIR")
    if _is_cuda_oom(exc):
        first = str(exc).split(". ")[0]
        return WorkerError("GPU_OUT_OF_MEMORY", first or "CUDA out of memory")
    if _is_cuda_fault(exc):
        return WorkerError("GPU_ERROR", str(exc).splitlines()[0] if str(exc) else "CUDA error")
    short = str(exc).splitlines()[0] if str(exc) else ""
    short = short[:200]
    return WorkerError("INTERNAL_ERROR", f"{type(exc).__name__}: {short}" if short
                       else type(exc).__name__)
