"""The fast decoder's weights (:mod:`pipeline.encoders.fast_decode`): optional, found like every component.

One file, ``taehv1_5.safetensors`` (or ``taehv1_5_super.safetensors`` with ``WORLDPLAY_FAST_DECODER=
taehv1_5_super``), published in the GitHub repository ``madebyollin/taehv`` (folder ``safetensors/``, MIT).
It is looked for, first complete copy wins (:func:`pipeline.model_files.verify.safetensors_problem`):

1. ``WORLDPLAY_MODEL_DIR/TAEHV/<file>`` (the local layout; ``download_models.py --fast-decoder`` writes it);
2. the RunPod model cache, then the Hugging Face cache: a bundle repo's snapshot, ``<snapshot>/TAEHV/<file>``;
3. ``WORLDPLAY_DOWNLOAD_DIR/TAEHV/<file>``;
4. with downloading allowed (``WORLDPLAY_ALLOW_DOWNLOAD=1``) and the file named (``WORLDPLAY_FAST_DECODER``
   set: an optional file from outside the Hub is never fetched unasked), a download of the file at a pinned commit of
   the repository, retried on transient errors, checked against the file's git blob id (so a corrupt or
   changed file is refused), into ``WORLDPLAY_DOWNLOAD_DIR`` or else ``WORLDPLAY_MODEL_DIR`` or else
   ``<HF cache>/../worldplay/TAEHV``.

The worker runs without it: :func:`find_fast_decoder` returns the path or the reason it has none.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from pipeline.errors import ModelDownloadError, ModelNotFoundError
from pipeline.model_files.verify import safetensors_problem

logger = logging.getLogger("worldplay.resolve")

FAST_DECODER_DIRNAME = "TAEHV"
SOURCE_REPO = "madebyollin/taehv"
#: the commit the download is pinned to, and each file's git blob id at that commit
SOURCE_COMMIT = "1f14a568f24bf8811e0a0ac601613e04fc1581e8"
SOURCE_BLOBS = {
    "taehv1_5.safetensors": "ede3340b89ae7c58c3e203d1872b8c595c604169",
    "taehv1_5_super.safetensors": "28a4a5a7aca3f3e0416082d1c400d206a0478377",
}
DEFAULT_FILE = "taehv1_5.safetensors"
FAST_DECODER_ENV = "WORLDPLAY_FAST_DECODER"
_TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


def source_url(name: str, commit: str = SOURCE_COMMIT) -> str:
    return f"https://github.com/{SOURCE_REPO}/raw/{commit}/safetensors/{name}"


def chosen_file(env=None) -> str | None:
    """The weight file this worker wants (``WORLDPLAY_FAST_DECODER``: ``taehv1_5`` (default),
    ``taehv1_5_super``, or ``0`` / ``off`` for none)."""
    env = os.environ if env is None else env
    raw = (env.get(FAST_DECODER_ENV) or "taehv1_5").strip().lower()
    if raw in ("0", "off", "false", "no", "none"):
        return None
    name = raw if raw.endswith(".safetensors") else f"{raw}.safetensors"
    if name not in SOURCE_BLOBS:
        raise ModelNotFoundError(f"{FAST_DECODER_ENV}={raw!r}: expected taehv1_5, taehv1_5_super or 0")
    return name


def git_blob_id(path: str | os.PathLike) -> str:
    """The git blob id (SHA-1 of ``blob <size>\\0`` + content) of a file, as a repository lists it."""
    digest = hashlib.sha1(f"blob {os.stat(path).st_size}\0".encode())
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_fast_decoder(path: str | os.PathLike) -> list[str]:
    """Problems with a fast-decoder weight file, offline (empty: usable)."""
    problem = safetensors_problem(path)
    return [f"{path}: {problem}"] if problem else []


@dataclass
class FastDecoderFile:
    path: Path | None  # None: no fast decoder on this worker
    source: str | None = None  # local / runpod-cache / hf-cache / download
    reason: str | None = None  # why there is none
    seconds: float = 0.0


def _candidates(name: str, settings, snapshot_dirs) -> Iterator[tuple[str, str, Path]]:
    rel = Path(FAST_DECODER_DIRNAME) / name
    if settings.model_dir is not None:
        yield "local", f"local folder {settings.model_dir}", settings.model_dir / rel
    for cache, source in ((settings.runpod_cache, "runpod-cache"), (settings.hf_cache, "hf-cache")):
        if not cache.is_dir() or (source == "hf-cache" and cache.resolve() == settings.runpod_cache.resolve()):
            continue
        bundles = [cache / ("models--" + settings.bundle_repo.replace("/", "--"))] if settings.bundle_repo else []
        if source == "runpod-cache":
            bundles += sorted(p for p in cache.glob("models--*") if p not in bundles)
        for bundle in bundles:
            for snap in snapshot_dirs(bundle):
                yield source, f"{source} bundle {bundle.name}@{snap.name[:12]}", snap / rel
    if settings.download_dir is not None and settings.download_dir != settings.model_dir:
        yield "local", f"download folder {settings.download_dir}", settings.download_dir / rel


def download_target(settings) -> Path:
    root = settings.download_dir or settings.model_dir or settings.hf_cache.parent / "worldplay"
    return Path(root) / FAST_DECODER_DIRNAME


def beside(components: str | os.PathLike) -> FastDecoderFile:
    """The file in the local layout next to a components folder (``<root>/TAEHV/<file>``), no search."""
    try:
        name = chosen_file()
    except ModelNotFoundError as exc:
        return FastDecoderFile(None, reason=exc.message)
    if name is None:
        return FastDecoderFile(None, reason=f"{FAST_DECODER_ENV}=0")
    path = Path(components).parent / FAST_DECODER_DIRNAME / name
    if not path.exists():
        return FastDecoderFile(None, reason=f"no {path}")
    problems = check_fast_decoder(path)
    return FastDecoderFile(None, reason="; ".join(problems)) if problems else FastDecoderFile(path, "local")


def find_fast_decoder(settings, snapshot_dirs, *, components: str | os.PathLike | None = None,
                      name: str | None = None) -> FastDecoderFile:
    """The fast decoder's weight file, or why there is none (never raises for a missing file).
    `settings`: :class:`pipeline.model_files.resolve.Settings`; `snapshot_dirs`: its snapshot lister (passed
    in: resolve imports this module). With `components` (a resolved components folder), ``TAEHV/<file>``
    beside it is tried first (the local layout or a bundle snapshot it came from)."""
    t0 = time.perf_counter()
    try:
        name = name or chosen_file()
    except ModelNotFoundError as exc:
        return FastDecoderFile(None, reason=exc.message)
    if name is None:
        return FastDecoderFile(None, reason=f"{FAST_DECODER_ENV}=0")
    problems = []
    places = list(_candidates(name, settings, snapshot_dirs))
    if components is not None:
        places.insert(0, ("local", f"beside {components}", Path(components).parent / FAST_DECODER_DIRNAME / name))
    for source, label, path in places:
        if not (path.exists() or path.is_symlink()):
            continue
        if not (bad := check_fast_decoder(path)):
            logger.info("fast decoder: %s from %s", path, label)
            return FastDecoderFile(path, source, seconds=time.perf_counter() - t0)
        problems += bad
    # an optional file from outside the Hub: downloaded only when asked for by name
    if not (settings.allow_download and (os.environ.get(FAST_DECODER_ENV) or "").strip()):
        where = "; ".join(problems) or f"no {FAST_DECODER_DIRNAME}/{name} in the model folders or caches"
        return FastDecoderFile(None, reason=f"{where} (fetch it with `python download_models.py --fast-decoder`, "
                                            f"or set {FAST_DECODER_ENV}={name.removesuffix('.safetensors')} with "
                                            "WORLDPLAY_ALLOW_DOWNLOAD=1)")
    try:
        path = download_fast_decoder(name, download_target(settings), settings.retry)
    except ModelDownloadError as exc:
        logger.warning("fast decoder unavailable: %s", exc.message)
        return FastDecoderFile(None, reason=exc.message)
    return FastDecoderFile(path, "download", seconds=time.perf_counter() - t0)


def check_published(path: str | os.PathLike, name: str | None = None) -> list[str]:
    """:func:`check_fast_decoder`, and the file must be the published one (its git blob id)."""
    if problems := check_fast_decoder(path):
        return problems
    name = name or Path(path).name
    blob, expected = git_blob_id(path), SOURCE_BLOBS.get(name)
    if expected is not None and blob != expected:
        return [f"{path}: not the published {name} (git blob {blob}, expected {expected} at "
                f"{SOURCE_REPO}@{SOURCE_COMMIT[:12]})"]
    return []


def prefetch_fast_decoder(dest: str | os.PathLike, settings, snapshot_dirs, *,
                          allow_download: bool = True) -> tuple[Path, str]:
    """Make ``dest/TAEHV/<file>`` the published fast-decoder file (``download_models.py --fast-decoder``):
    kept when already there, else copied from the first complete copy elsewhere, else downloaded
    (`settings`, `snapshot_dirs`: as for :func:`find_fast_decoder`)."""
    import shutil

    name = chosen_file() or DEFAULT_FILE
    target = Path(dest) / FAST_DECODER_DIRNAME / name
    if target.exists() and not check_published(target, name):
        return target, f"already present in {dest}"
    settings.download_dir, settings.model_dir = None, None if settings.model_dir == Path(dest) else settings.model_dir
    for _, label, path in _candidates(name, settings, snapshot_dirs):
        if path.exists() and not check_published(path, name):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, f"{target}.partial")
            os.replace(f"{target}.partial", target)
            return target, f"copied from {label}"
    if not allow_download:
        raise ModelNotFoundError(f"{target}: missing or not the published file, and no copy elsewhere; run without "
                                 "--no-download to fetch it")
    download_fast_decoder(name, target.parent, settings.retry)
    return target, f"downloaded from {source_url(name)}"


def _is_transient(exc: BaseException) -> bool:
    import requests

    response = getattr(exc, "response", None)
    if response is not None:
        return response.status_code in _TRANSIENT_STATUS
    return isinstance(exc, (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                            TimeoutError, ConnectionError))


def download_fast_decoder(name: str, folder: Path, policy=None, *, url: str | None = None,
                          expected_blob: str | None = None) -> Path:
    """Fetch ``name`` from the pinned commit into ``folder`` (through a temporary name), retrying transient
    errors with capped exponential backoff; the file must have the expected git blob id."""
    import requests

    from pipeline.model_files import hub
    from pipeline.model_files.hub import RetryPolicy

    policy = policy or RetryPolicy()
    url = url or source_url(name)
    expected_blob = expected_blob or SOURCE_BLOBS[name]
    folder.mkdir(parents=True, exist_ok=True)
    target, partial = folder / name, folder / f"{name}.partial"
    for attempt in range(1, policy.attempts + 1):
        try:
            with requests.get(url, stream=True, timeout=60) as response:
                response.raise_for_status()
                with open(partial, "wb") as out:
                    for block in response.iter_content(1 << 20):
                        out.write(block)
            break
        except Exception as exc:  # noqa: BLE001 - typed below
            partial.unlink(missing_ok=True)
            if not _is_transient(exc) or attempt == policy.attempts:
                what = "still failing after retries" if _is_transient(exc) else "failed"
                raise ModelDownloadError(f"cannot fetch the fast decoder {url}: {what} "
                                         f"({type(exc).__name__}: {str(exc)[:200]})") from None
            wait = min(policy.wait_max, policy.wait_base * 2 ** (attempt - 1))
            logger.warning("transient error fetching %s (attempt %d/%d): %s; retrying in %.1fs", url, attempt,
                           policy.attempts, type(exc).__name__, wait)
            hub._sleep(wait)
    blob = git_blob_id(partial)
    if blob != expected_blob:
        partial.unlink(missing_ok=True)
        raise ModelDownloadError(f"the fast decoder from {url} is not the published file (git blob {blob}, "
                                 f"expected {expected_blob})")
    os.replace(partial, target)
    logger.info("fast decoder downloaded: %s (%d bytes)", target, target.stat().st_size)
    return target


__all__ = ["DEFAULT_FILE", "FAST_DECODER_DIRNAME", "FastDecoderFile", "SOURCE_BLOBS", "SOURCE_COMMIT", "SOURCE_REPO",
           "check_fast_decoder", "check_published", "chosen_file", "prefetch_fast_decoder", "download_fast_decoder", "find_fast_decoder", "git_blob_id",
           "source_url"]
