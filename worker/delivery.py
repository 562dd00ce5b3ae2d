"""Where a finished video goes, decided and checked before any model or GPU work.

Two ways out:

* **bucket** — all of ``MINIO_ENDPOINT``, ``MINIO_ACCESS_KEY``, ``MINIO_SECRET_KEY`` and
  ``MINIO_BUCKET`` are set: the MP4 is uploaded and the job returns its key and a presigned URL.
  The bucket is checked (configured, reachable, exists) in the validate stage; a successful check is
  remembered for ``CHECK_TTL_SECONDS`` per storage client, so a busy worker asks once per half minute.
* **inline** — none of them is set (RunPod's convention for its image workers without a bucket): the
  MP4 comes back in the job result as ``video_base64`` when it is at most ``WORLDPLAY_INLINE_MAX_BYTES``
  (default 6 MiB: base64 makes it 8.4 MB, under the 10 MB RunPod allows a ``/run`` payload); a larger
  video fails with ``STORAGE_NOT_CONFIGURED``. Inputs read by key (``image_key``, ``pose_key``) need
  a bucket and fail at once with the same code.

Some but not all ``MINIO_*`` set is a mistake, never a silent fall-back to inline: every job fails
with ``STORAGE_NOT_CONFIGURED`` naming the missing variables, and health reports them.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

from worker.errors import WorkerError
from worker.storage import storage_number

log = logging.getLogger("worldplay.delivery")

STORAGE_VARS = ("MINIO_ENDPOINT", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY", "MINIO_BUCKET")
INLINE_ENV = "WORLDPLAY_INLINE_MAX_BYTES"
DEFAULT_INLINE_MAX_BYTES = 6 * 1024 * 1024
CHECK_TTL_SECONDS = 30.0
KEYED_INPUTS = ("image_key", "pose_key")
# JobOutput fields that only one way out fills; the other's are left out of the result.
BUCKET_FIELDS = ("minio_key", "bucket", "presigned_url", "expires_at")
INLINE_FIELDS = ("video_base64",)


@dataclass(frozen=True)
class StorageSetup:
    """Which ``MINIO_*`` variables are missing (blank counts as missing)."""

    missing: Tuple[str, ...]

    @property
    def mode(self) -> str:
        if not self.missing:
            return "bucket"
        if len(self.missing) == len(STORAGE_VARS):
            return "inline"
        return "incomplete"

    def incomplete_error(self) -> WorkerError:
        return WorkerError(
            "STORAGE_NOT_CONFIGURED",
            f"missing {', '.join(self.missing)}: set all of {', '.join(STORAGE_VARS)} to upload "
            "videos to a bucket, or none of them to get small videos inline as video_base64")


def storage_setup(env=None) -> StorageSetup:
    env = os.environ if env is None else env
    return StorageSetup(tuple(name for name in STORAGE_VARS if not (env.get(name) or "").strip()))


def inline_max_bytes(env=None) -> int:
    """``WORLDPLAY_INLINE_MAX_BYTES`` (an integer >= 0; 0 turns inline results off)."""
    return storage_number(os.environ if env is None else env, INLINE_ENV, DEFAULT_INLINE_MAX_BYTES,
                          int, 0, float("inf"), "a whole number of bytes >= 0")


class BucketCheck:
    """Remembers, per storage client, that its bucket answered within the last ``ttl`` seconds.

    Only a success is remembered: after a failure the next job asks again, so fixing the bucket
    takes effect at once."""

    def __init__(self, ttl: float = CHECK_TTL_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.ttl = ttl
        self.clock = clock
        self._lock = threading.Lock()
        self._storage = None
        self._checked_at = 0.0
        self.checks = 0  # requests actually sent (tests, logs)

    def ensure(self, storage) -> None:
        with self._lock:
            if self._storage is storage and self.clock() - self._checked_at < self.ttl:
                return
            self.checks += 1
            exists = storage.bucket_exists()  # STORAGE_UNAVAILABLE / STORAGE_ACCESS_DENIED raise here
            if not exists:
                self._storage = None
                raise WorkerError("BUCKET_NOT_FOUND", f"bucket {storage.bucket!r} does not exist on "
                                                      f"{storage.endpoint}; create it or fix MINIO_BUCKET")
            self._storage, self._checked_at = storage, self.clock()

    def forget(self) -> None:
        with self._lock:
            self._storage = None


BUCKET_CHECK = BucketCheck()


def preflight(req: Any, get_storage: Callable[[], Any]):
    """Validate stage: the checked storage client, or ``None`` for inline delivery.

    Raises STORAGE_NOT_CONFIGURED (incomplete or malformed settings, a keyed input without a
    bucket, inline results turned off), BUCKET_NOT_FOUND, STORAGE_ACCESS_DENIED or
    STORAGE_UNAVAILABLE — all before any model is loaded."""
    setup = storage_setup()
    if setup.mode == "inline":
        keyed = [name for name in KEYED_INPUTS if getattr(req, name, None) is not None]
        if keyed:
            raise WorkerError(
                "STORAGE_NOT_CONFIGURED",
                f"{keyed[0]} is read from the bucket, but this worker has no storage (no MINIO_* "
                "variables set); send image_base64 / image_url and pose / pose_json / actions "
                "instead, or configure " + ", ".join(STORAGE_VARS))
        if inline_max_bytes() == 0:
            raise WorkerError("STORAGE_NOT_CONFIGURED",
                              f"no MINIO_* variables are set and inline results are off "
                              f"({INLINE_ENV}=0); configure " + ", ".join(STORAGE_VARS))
        return None
    if setup.mode == "incomplete":
        raise setup.incomplete_error()
    storage = get_storage()  # STORAGE_NOT_CONFIGURED when a value is malformed
    BUCKET_CHECK.ensure(storage)
    return storage


def inline_video(path) -> Dict[str, str]:
    """The MP4 at ``path`` as the result's ``video_base64``, or STORAGE_NOT_CONFIGURED when it is
    over the inline limit."""
    size = os.path.getsize(path)
    cap = inline_max_bytes()
    if size > cap:
        raise WorkerError(
            "STORAGE_NOT_CONFIGURED",
            f"the MP4 is {size} bytes, over the {cap}-byte limit for inline results "
            f"({INLINE_ENV}); configure {', '.join(STORAGE_VARS)} to receive it through a bucket, "
            "or ask for fewer frames")
    with open(path, "rb") as fh:
        return {"video_base64": base64.b64encode(fh.read()).decode("ascii")}


def deliver_video(storage, key: str, path, expiry_seconds: int) -> Dict[str, Any]:
    """The deliver stage, shared by jobs (their MP4) and live worlds (their recording): upload ``path``
    as ``key`` (one PUT retried over the upload window) and presign it, or, with no storage (``None``),
    the MP4 inline as ``video_base64``."""
    if storage is None:
        return inline_video(path)
    storage.put_file(key, path, content_type="video/mp4")
    url, expires_at = storage.presigned_get(key, expiry_seconds)
    return dict(minio_key=key, bucket=storage.bucket, presigned_url=url, expires_at=expires_at)


def left_out(delivered: Dict[str, Any]) -> set:
    """Output fields the other way out would have filled (dropped from the result)."""
    return {name for name in BUCKET_FIELDS + INLINE_FIELDS if name not in delivered}


def storage_health(get_storage: Callable[[], Any]) -> Tuple[Dict[str, Any], bool]:
    """(the health report's ``storage`` section, whether jobs can deliver). One attempt, no cache."""
    setup = storage_setup()
    info: Dict[str, Any] = {"mode": setup.mode, "missing": list(setup.missing),
                            "reachable": False, "bucket_exists": False}
    if setup.mode == "inline":
        try:
            cap = inline_max_bytes()
        except WorkerError as exc:
            info["error"] = f"{exc.code}: {exc.message}"
            return info, False
        info["inline_max_bytes"] = cap
        info["note"] = ("no MINIO_* set: videos come back inline as video_base64 up to "
                        f"{cap} bytes; image_key / pose_key need a bucket")
        return info, cap > 0
    if setup.mode == "incomplete":
        err = setup.incomplete_error()
        info["error"] = f"{err.code}: {err.message}"
        return info, False
    try:
        st = get_storage()
        info.update(endpoint=st.endpoint, bucket=st.bucket, secure=st.secure)
        from worker.storage import RetryPolicy

        # same client, one attempt: a health check must answer fast
        info["bucket_exists"] = st.with_retry(RetryPolicy(attempts=1)).bucket_exists()
        info["reachable"] = True
    except WorkerError as exc:
        info["error"] = f"{exc.code}: {exc.message}"
        info["reachable"] = exc.code not in ("STORAGE_UNAVAILABLE", "STORAGE_NOT_CONFIGURED")
    return info, bool(info["bucket_exists"])
