"""The one home of object-storage (MinIO / S3) access, plus the bounded ``image_url`` fetch.

Configuration (environment):
  MINIO_ENDPOINT         host:port, or http(s)://host:port (the scheme decides TLS)
  MINIO_ACCESS_KEY       access key id
  MINIO_SECRET_KEY       secret key (never logged, never in a message or repr)
  MINIO_BUCKET           bucket for inputs and outputs
  MINIO_USE_SSL          true/false when MINIO_ENDPOINT has no scheme (default false)
  MINIO_REGION           optional; saves a bucket-location round trip
  MINIO_PUBLIC_ENDPOINT  optional host:port or URL used only to sign presigned URLs, for when
                         clients reach MinIO under another name than the worker does
  MINIO_RETRY_ATTEMPTS   attempts per operation for transient failures (default 4)
  MINIO_UPLOAD_RETRY_SECONDS  how long the upload of a finished video keeps retrying transient
                         failures (default 120, exponential backoff with jitter)

Transient failures (connection errors, timeouts, HTTP 5xx, SlowDown) are retried with a short
exponential backoff; NoSuchKey, NoSuchBucket and AccessDenied fail at once with a clear code.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple, TypeVar
from urllib.parse import urlparse

from worker.errors import WorkerError

log = logging.getLogger("worldplay.storage")

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_TRANSIENT_S3_CODES = {"InternalError", "SlowDown", "ServiceUnavailable", "RequestTimeout",
                       "RequestTimeTooSkewed", "OperationAborted", "XMinioServerNotInitialized"}
_DENIED_S3_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                    "AllAccessDisabled", "AccountProblem", "InvalidToken", "ExpiredToken"}


def _parse_bool(name: str, value: Optional[str], default: bool) -> bool:
    if value is None:
        return default
    low = value.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise WorkerError("STORAGE_NOT_CONFIGURED", f"{name} must be true or false, got {value!r}")


def parse_endpoint(endpoint: str, use_ssl: Optional[bool] = None) -> Tuple[str, bool]:
    """``host:port`` or ``http(s)://host:port[/]`` -> (``host:port``, secure)."""
    raw = (endpoint or "").strip()
    if not raw:
        raise WorkerError("STORAGE_NOT_CONFIGURED", "MINIO_ENDPOINT is not set")
    if "://" in raw:
        parsed = urlparse(raw)
        if parsed.scheme not in ("http", "https"):
            raise WorkerError("STORAGE_NOT_CONFIGURED",
                              f"MINIO_ENDPOINT scheme must be http or https, got {parsed.scheme!r}")
        if parsed.path not in ("", "/") or parsed.query or parsed.username:
            raise WorkerError("STORAGE_NOT_CONFIGURED",
                              "MINIO_ENDPOINT must be host[:port] without a path or credentials")
        if not parsed.hostname:
            raise WorkerError("STORAGE_NOT_CONFIGURED", "MINIO_ENDPOINT has no host")
        return parsed.netloc, parsed.scheme == "https"
    if "/" in raw or "@" in raw:
        raise WorkerError("STORAGE_NOT_CONFIGURED",
                          "MINIO_ENDPOINT must be host[:port] or an http(s) URL without a path")
    return raw, bool(use_ssl)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4
    initial: float = 0.5
    maximum: float = 4.0


def _is_transient(exc: BaseException) -> bool:
    import urllib3
    from minio.error import InvalidResponseError, S3Error, ServerError

    if isinstance(exc, WorkerError):
        return False
    if isinstance(exc, S3Error):
        status = getattr(exc.response, "status", 0) or 0
        return exc.code in _TRANSIENT_S3_CODES or status >= 500
    if isinstance(exc, ServerError):
        return exc.status_code >= 500 or exc.status_code in (408, 429)
    if isinstance(exc, InvalidResponseError):
        return (getattr(exc, "_code", 0) or 0) >= 500
    return isinstance(exc, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError))


UPLOAD_RETRY_ENV = "MINIO_UPLOAD_RETRY_SECONDS"
DEFAULT_UPLOAD_WINDOW = 120.0
UPLOAD_BACKOFF_INITIAL = 1.0
UPLOAD_BACKOFF_MAX = 15.0


def storage_number(env, name: str, default, cast, low, high, what: str):
    """A numeric storage setting from ``env``: unset or blank gives ``default``; a value that is not a
    ``cast`` in ``low..high`` is STORAGE_NOT_CONFIGURED (``what`` says what was expected)."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = cast(raw)
        if not low <= value <= high:
            raise ValueError
    except ValueError:
        raise WorkerError("STORAGE_NOT_CONFIGURED", f"{name} must be {what}, got {raw!r}") from None
    return value


def upload_window(env=None) -> float:
    """Seconds an upload keeps retrying (``MINIO_UPLOAD_RETRY_SECONDS``; default 120, 0 = one try)."""
    return storage_number(os.environ if env is None else env, UPLOAD_RETRY_ENV, DEFAULT_UPLOAD_WINDOW,
                          float, 0, 3600, "a number of seconds in 0..3600")


class Storage:
    """MinIO access for one bucket. Build with :meth:`from_env` or directly (tests)."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        *,
        secure: Optional[bool] = None,
        region: Optional[str] = None,
        public_endpoint: Optional[str] = None,
        retry: RetryPolicy = RetryPolicy(),
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
    ):
        import urllib3
        from minio import Minio

        host, is_secure = parse_endpoint(endpoint, secure)
        if not access_key or not secret_key:
            raise WorkerError("STORAGE_NOT_CONFIGURED",
                              "MINIO_ACCESS_KEY and MINIO_SECRET_KEY must both be set")
        if not bucket:
            raise WorkerError("STORAGE_NOT_CONFIGURED", "MINIO_BUCKET is not set")
        self.endpoint = host
        self.secure = is_secure
        self.bucket = bucket
        self.region = region or None
        self.retry = retry
        # urllib3 retries are off: tenacity below is the single, bounded retry layer.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            retries=False,
            maxsize=8,
            cert_reqs="CERT_REQUIRED" if is_secure else "CERT_NONE",
        )
        self._client = Minio(host, access_key=access_key, secret_key=secret_key,
                             secure=is_secure, region=self.region, http_client=http)
        self._presign_client = self._client
        self.public_endpoint = None
        if public_endpoint:
            pub_host, pub_secure = parse_endpoint(public_endpoint, is_secure)
            self.public_endpoint = pub_host
            # a region is required so that signing never calls the public endpoint
            self._presign_client = Minio(pub_host, access_key=access_key, secret_key=secret_key,
                                         secure=pub_secure, region=self.region or "us-east-1",
                                         http_client=http)

    @classmethod
    def from_env(cls, env=None, **kwargs) -> "Storage":
        env = os.environ if env is None else env
        secure = _parse_bool("MINIO_USE_SSL", env.get("MINIO_USE_SSL"), False)
        if "retry" not in kwargs and (env.get("MINIO_RETRY_ATTEMPTS") or "").strip():
            kwargs["retry"] = RetryPolicy(attempts=storage_number(
                env, "MINIO_RETRY_ATTEMPTS", None, int, 1, 20, "an integer in 1..20"))
        return cls(
            env.get("MINIO_ENDPOINT", ""),
            env.get("MINIO_ACCESS_KEY", ""),
            env.get("MINIO_SECRET_KEY", ""),
            env.get("MINIO_BUCKET", ""),
            secure=secure,
            region=env.get("MINIO_REGION") or None,
            public_endpoint=env.get("MINIO_PUBLIC_ENDPOINT") or None,
            **kwargs,
        )

    def with_retry(self, retry: RetryPolicy) -> "Storage":
        """The same client with another retry policy."""
        import copy

        clone = copy.copy(self)
        clone.retry = retry
        return clone

    def __repr__(self) -> str:  # never the keys
        scheme = "https" if self.secure else "http"
        return f"Storage(endpoint={scheme}://{self.endpoint}, bucket={self.bucket!r})"

    __str__ = __repr__

    # ---- retry / error mapping ------------------------------------------------------------
    def _call(self, what: str, key: Optional[str], fn: Callable[[], T]) -> T:
        from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

        def _before_sleep(state) -> None:
            exc = state.outcome.exception()
            log.warning("storage %s failed (attempt %d/%d): %s; retrying", what,
                        state.attempt_number, self.retry.attempts, _describe(exc))

        try:
            for attempt in Retrying(
                stop=stop_after_attempt(max(1, self.retry.attempts)),
                wait=wait_exponential(multiplier=self.retry.initial, max=self.retry.maximum),
                retry=retry_if_exception(_is_transient),
                before_sleep=_before_sleep,
                reraise=True,
            ):
                with attempt:
                    return fn()
        except WorkerError:
            raise
        except Exception as exc:  # noqa: BLE001 - mapped to a code below
            raise self._map(exc, what, key) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _map(self, exc: BaseException, what: str, key: Optional[str]) -> WorkerError:
        from minio.error import S3Error

        where = f"s3://{self.bucket}/{key}" if key else f"bucket {self.bucket!r}"
        if isinstance(exc, S3Error):
            if exc.code in ("NoSuchKey", "NoSuchObject") or (exc.code == "ResourceNotFound" and key):
                return WorkerError("OBJECT_NOT_FOUND", f"object {key!r} not found in bucket "
                                                       f"{self.bucket!r}")
            if exc.code == "NoSuchBucket":
                return WorkerError("BUCKET_NOT_FOUND", f"bucket {self.bucket!r} does not exist "
                                                       f"on {self.endpoint}")
            if exc.code in _DENIED_S3_CODES:
                return WorkerError("STORAGE_ACCESS_DENIED",
                                   f"{what} {where} was refused ({exc.code}); check "
                                   "MINIO_ACCESS_KEY / MINIO_SECRET_KEY and the bucket policy")
        if _is_transient(exc):
            return WorkerError("STORAGE_UNAVAILABLE",
                               f"{what} {where} failed after {self.retry.attempts} attempts: "
                               f"{_describe(exc)}")
        return WorkerError("STORAGE_UNAVAILABLE", f"{what} {where} failed: {_describe(exc)}")

    # ---- operations -----------------------------------------------------------------------
    def bucket_exists(self) -> bool:
        return bool(self._call("bucket check", None,
                               lambda: self._client.bucket_exists(self.bucket)))

    def ensure_bucket(self) -> None:
        """Create the bucket when missing (local/dev convenience; production buckets exist)."""
        def _do():
            if not self._client.bucket_exists(self.bucket):
                self._client.make_bucket(self.bucket, location=self.region)
        self._call("make bucket", None, _do)

    def stat_size(self, key: str) -> int:
        return self.stat(key)[0]

    def stat(self, key: str) -> Tuple[int, Dict[str, str]]:
        """An object's size and its user metadata (``x-amz-meta-*``), names lower-cased without the
        prefix: ``put_bytes(..., headers={"x-amz-meta-worldplay-signature": s})`` reads back as
        ``{"worldplay-signature": s}``."""
        try:
            info = self._call("stat", key, lambda: self._client.stat_object(self.bucket, key))
        except WorkerError as exc:
            # a HEAD has no error body: a missing bucket also looks like a missing key
            if exc.code == "OBJECT_NOT_FOUND" and not self.bucket_exists():
                raise WorkerError("BUCKET_NOT_FOUND", f"bucket {self.bucket!r} does not exist "
                                                      f"on {self.endpoint}") from None
            raise
        prefix = "x-amz-meta-"
        meta = {str(name).lower()[len(prefix):]: str(value) for name, value in (info.metadata or {}).items()
                if str(name).lower().startswith(prefix)}
        return int(info.size), meta

    def get_bytes(self, key: str, max_bytes: int) -> bytes:
        """Read an object of at most ``max_bytes`` (checked with a stat before downloading)."""
        size = self.stat_size(key)
        if size > max_bytes:
            raise WorkerError("OBJECT_TOO_LARGE",
                              f"object {key!r} is {size} bytes; the limit is {max_bytes} bytes")

        def _read() -> bytes:
            response = self._client.get_object(self.bucket, key)
            try:
                chunks, total = [], 0
                for chunk in response.stream(256 * 1024):
                    total += len(chunk)
                    if total > max_bytes:  # the object changed between stat and get
                        raise WorkerError("OBJECT_TOO_LARGE",
                                          f"object {key!r} exceeds {max_bytes} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)
            finally:
                response.close()
                response.release_conn()

        return self._call("get", key, _read)

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream",
                  headers: Optional[dict] = None, *, window: Optional[float] = None):
        """``headers``: extra standard headers stored with the object (e.g. Cache-Control). With
        ``window`` (seconds) transient failures are retried like :meth:`put_file`'s, else with the
        client's short retry policy."""
        import io

        def put():
            return self._client.put_object(self.bucket, key, io.BytesIO(data), len(data),
                                           content_type=content_type, metadata=headers)

        if window is None:
            self._call("put", key, put)
        else:
            self._call_window("put", key, put, window)

    # the upload of a finished video: minutes of GPU work stand behind it
    _sleep = staticmethod(time.sleep)
    _clock = staticmethod(time.monotonic)

    def put_file(self, key: str, path, content_type: str = "application/octet-stream", *,
                 window: Optional[float] = None) -> None:
        """Store a local file as one object with a single PUT (S3 makes it visible whole or not at
        all, so a failed attempt never leaves a partial object). Transient failures are retried for
        ``window`` seconds (default ``MINIO_UPLOAD_RETRY_SECONDS``) with exponential backoff and
        jitter; the caller keeps the file until this returns."""
        from minio.helpers import MAX_PART_SIZE, MIN_PART_SIZE

        size = os.path.getsize(path)
        # one part up to 5 GiB: a single PUT; above that minio's multipart upload aborts on failure
        part_size = max(size, MIN_PART_SIZE) if size <= MAX_PART_SIZE else 0
        window = upload_window() if window is None else float(window)
        self._call_window("put", key, lambda: self._client.fput_object(
            self.bucket, key, str(path), content_type=content_type, part_size=part_size), window)

    def _call_window(self, what: str, key: str, fn: Callable[[], T], window: float) -> T:
        start = self._clock()
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn()
            except WorkerError:
                raise
            except Exception as exc:  # noqa: BLE001 - mapped to a code below
                if not _is_transient(exc):
                    raise self._map(exc, what, key) from None
                left = window - (self._clock() - start)
                if left <= 0:
                    where = f"s3://{self.bucket}/{key}"
                    raise WorkerError("STORAGE_UNAVAILABLE",
                                      f"{what} {where} failed after {attempt} attempts over "
                                      f"{window:g} s: {_describe(exc)}") from None
                backoff = min(UPLOAD_BACKOFF_MAX, UPLOAD_BACKOFF_INITIAL * 2 ** (attempt - 1))
                delay = min(left, backoff / 2 + random.uniform(0, backoff / 2))  # equal jitter
                log.warning("storage %s failed (attempt %d, %.0f s of %g s left): %s; retrying in "
                            "%.1f s", what, attempt, left, window, _describe(exc), delay)
                self._sleep(delay)

    def remove(self, key: str) -> None:
        self._call("remove", key, lambda: self._client.remove_object(self.bucket, key))

    def remove_objects(self, keys) -> int:
        """Delete ``keys`` (missing ones count as deleted, as in S3) with one multi-object DELETE
        per 1000 keys. Returns how many keys were asked for; a key the store refused raises the
        same coded errors as the other operations, naming how many of them failed."""
        from minio.deleteobjects import DeleteObject

        keys = list(dict.fromkeys(keys))  # in order, once each
        for start in range(0, len(keys), 1000):
            batch = keys[start:start + 1000]

            def _delete(batch=batch):
                # the errors come back lazily: reading them is what sends the request
                return list(self._client.remove_objects(self.bucket,
                                                        [DeleteObject(k) for k in batch]))

            errors = self._call("remove", batch[0] if len(batch) == 1 else None, _delete)
            if errors:
                first = errors[0]
                code, name = getattr(first, "code", "Error"), getattr(first, "name", None)
                if code in _DENIED_S3_CODES:
                    raise WorkerError("STORAGE_ACCESS_DENIED",
                                      f"remove of {len(errors)} of {len(batch)} objects in bucket "
                                      f"{self.bucket!r} was refused ({code}, first {name!r}); check "
                                      "MINIO_ACCESS_KEY / MINIO_SECRET_KEY and the bucket policy")
                raise WorkerError("STORAGE_UNAVAILABLE",
                                  f"remove of {len(errors)} of {len(batch)} objects in bucket "
                                  f"{self.bucket!r} failed ({code}: first {name!r})")
        return len(keys)

    def presigned_get(self, key: str, expiry: int = 3600) -> Tuple[str, str]:
        """A GET URL valid for ``expiry`` seconds and its expiry as ISO-8601 UTC."""
        expiry = int(expiry)
        if not 1 <= expiry <= 604800:
            raise ValueError("expiry must be in 1..604800 seconds")
        now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
        url = self._call("presign", key, lambda: self._presign_client.presigned_get_object(
            self.bucket, key, expires=_dt.timedelta(seconds=expiry), request_date=now))
        expires_at = (now + _dt.timedelta(seconds=expiry)).strftime("%Y-%m-%dT%H:%M:%SZ")
        return url, expires_at


def _describe(exc: Optional[BaseException]) -> str:
    if exc is None:
        return "unknown error"
    try:
        from minio.error import S3Error

        if isinstance(exc, S3Error):
            return f"{exc.code}: {exc.message}"
    except Exception:  # noqa: BLE001
        pass
    text = str(exc).splitlines()[0] if str(exc) else ""
    # urllib3 messages embed the pool object repr; keep them short
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


# ---- image_url fetch --------------------------------------------------------------------------
def fetch_url(url: str, max_bytes: int, **kwargs) -> bytes:
    """The SSRF-safe, bounded ``image_url`` download; it lives in :mod:`worker.fetch`."""
    from worker.fetch import fetch_url as _fetch

    return _fetch(url, max_bytes, **kwargs)


def _fetch_url_method(self, url: str, max_bytes: int) -> bytes:
    """``Storage.fetch_url``: the bounded http(s) fetch used for ``image_url``."""
    return fetch_url(url, max_bytes)


Storage.fetch_url = _fetch_url_method
