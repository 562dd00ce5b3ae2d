"""Hub access for model resolution, around ``huggingface_hub.snapshot_download``.

huggingface_hub does the work: pinning a revision to one commit, listing and filtering files
(``allow_patterns``), skipping what is cached, parallel transfers with resume, ``refs/`` in the cache.
This module adds what a cold start needs around it: a free-space check for the whole set before the
first byte, a re-fetch of files whose copy on disk is truncated, bounded backoff over whole calls
(transient errors only), and messages that say what to do (token, licence, repo id).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from .errors import ModelDownloadError
from .resolve_verify import file_problem

logger = logging.getLogger("worldplay.resolve")

#: HTTP statuses worth retrying; everything else (401/403/404 ...) fails at once.
TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass
class RetryPolicy:
    """Bounded exponential backoff for transient Hub errors."""

    attempts: int = 5
    wait_base: float = 2.0
    wait_max: float = 60.0


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


def set_hub_offline(offline: bool = True) -> None:
    """Switch huggingface_hub's offline mode (and the variable libraries read at import).

    The entrypoint sets ``HF_HUB_OFFLINE`` before any import when the weights are on disk; this
    is only used to lift it for a download and to set it once everything is local.
    """
    from huggingface_hub import constants

    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    else:
        os.environ.pop("HF_HUB_OFFLINE", None)
        os.environ.pop("TRANSFORMERS_OFFLINE", None)
    constants.HF_HUB_OFFLINE = bool(offline)


# ---------------------------------------------------------------------------------------------
# Errors and retries
# ---------------------------------------------------------------------------------------------


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]


def _status(exc: BaseException) -> int | None:
    for e in _chain(exc):
        status = getattr(getattr(e, "response", None), "status_code", None)
        if isinstance(status, int):
            return status
    return None


def _transient_types() -> tuple[type, ...]:
    import httpx2
    import requests
    from huggingface_hub.errors import XetDownloadError

    return (TimeoutError, ConnectionError, socket.timeout, httpx2.TimeoutException, httpx2.TransportError,
            requests.exceptions.ConnectionError, requests.exceptions.Timeout,
            requests.exceptions.ChunkedEncodingError, XetDownloadError)


def is_transient_error(exc: BaseException) -> bool:
    """True for errors worth retrying: timeouts, connection resets, 408/429/5xx (looks through causes)."""
    from huggingface_hub.errors import OfflineModeIsEnabled

    status = _status(exc)
    if status is not None:
        return status in TRANSIENT_STATUS
    transient = _transient_types()
    for e in _chain(exc):
        if isinstance(e, OfflineModeIsEnabled) or getattr(e, "errno", None) == 28:  # ENOSPC
            return False
        if isinstance(e, transient):
            return True
    return False


def _token_configured() -> bool:
    try:
        from huggingface_hub import get_token

        return get_token() is not None
    except Exception:  # noqa: BLE001 - a broken token file must not break resolution
        return bool(os.environ.get("HF_TOKEN"))


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):  # defensive: Hub errors should not carry it
        secret = os.environ.get(name)
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def _permanent_error(exc: BaseException, what: str, repo_id: str) -> ModelDownloadError:
    status, names = _status(exc), {type(e).__name__ for e in _chain(exc)}
    token = "a token is configured but was refused" if _token_configured() else "no HF_TOKEN is set"
    licence = f"https://huggingface.co/{repo_id}"
    if "GatedRepoError" in names or status == 403:
        hint = f"access denied (403, gated repo): accept the licence at {licence} with the account whose token is in HF_TOKEN ({token})"
    elif status == 401:
        hint = f"unauthorized (401): set HF_TOKEN to a valid read token ({token}); gated repos also need the licence accepted at {licence}"
    elif names & {"RemoteEntryNotFoundError", "EntryNotFoundError"}:
        hint = "file not found in the repo (404): check the repo id and revision env vars (WORLDPLAY_REPO, WORLDPLAY_COMPONENTS_REPO, *_REVISION)"
    elif "RevisionNotFoundError" in names:
        hint = "revision not found (404): check WORLDPLAY_REVISION / WORLDPLAY_COMPONENTS_REVISION"
    elif "RepositoryNotFoundError" in names or status == 404:
        hint = f"repository not found (404), or private: check the repo id; if it is private or gated set HF_TOKEN ({token})"
    elif "OfflineModeIsEnabled" in names:
        hint = "the Hub is in offline mode (HF_HUB_OFFLINE=1): unset it, or provide the files locally"
    else:
        hint = _first_line(exc)
    return ModelDownloadError(f"cannot fetch {what}: {hint}")


def _sleep(seconds: float) -> None:
    """Backoff sleep (a module function so tests can observe it)."""
    time.sleep(seconds)


def _failed_file(exc: BaseException) -> str | None:
    """The repo file a failed request was for (``.../resolve/<revision>/<file>``), when there is one."""
    for e in _chain(exc):
        url = str(getattr(getattr(getattr(e, "response", None), "request", None), "url", "") or "")
        if "/resolve/" in url:
            return url.split("?")[0].split("/resolve/", 1)[1].split("/", 1)[-1]
    return None


def retrying_call(fn: Callable, policy: RetryPolicy, repo_id: str, revision: str):
    """``fn()`` with tenacity: transient errors retried with capped exponential backoff, others typed at once."""
    import tenacity

    def log_retry(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception()  # type: ignore[union-attr]
        logger.warning("transient error fetching %s%s (attempt %d/%d): %s; retrying in %.1fs", repo_id,
                       f"/{_failed_file(exc)}" if _failed_file(exc) else "", state.attempt_number, policy.attempts,
                       _first_line(exc), state.next_action.sleep)  # type: ignore[union-attr]

    try:
        return tenacity.Retrying(
            stop=tenacity.stop_after_attempt(policy.attempts),
            wait=tenacity.wait_exponential(multiplier=policy.wait_base, min=0, max=policy.wait_max),
            retry=tenacity.retry_if_exception(is_transient_error),
            before_sleep=log_retry, sleep=lambda s: _sleep(s), reraise=True,
        )(fn)
    except ModelDownloadError:
        raise
    except Exception as exc:  # noqa: BLE001 - typed below
        name = _failed_file(exc)
        what = repo_id + (f" file {name!r}" if name else "") + f" (revision {revision})"
        if is_transient_error(exc):
            raise ModelDownloadError(
                f"cannot fetch {what}: still failing after {policy.attempts} attempts ({_first_line(exc)}); "
                "the Hub may be down: retry later or provide the files locally"
            ) from None
        raise _permanent_error(exc, what, repo_id) from None


# ---------------------------------------------------------------------------------------------
# Planning and fetching
# ---------------------------------------------------------------------------------------------


def fmt_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024:
            return f"{value:.1f} {unit}" if unit != "B" else f"{n} B"
        value /= 1024
    return f"{value:.1f} TB"


def existing_ancestor(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p.parent != p:
        p = p.parent
    return p


def check_disk_space(target: Path, needed: int) -> None:
    """Fail early when ``target``'s filesystem lacks ``needed`` bytes."""
    if needed <= 0:
        return
    anchor = existing_ancestor(target)
    free = shutil.disk_usage(anchor).free
    if free < needed:
        raise ModelDownloadError(
            f"not enough disk space in {anchor}: need {needed} bytes ({fmt_bytes(needed)}), {free} bytes free "
            f"({fmt_bytes(free)}); free space, enlarge the container disk, or point WORLDPLAY_DOWNLOAD_DIR / HF_HUB_CACHE elsewhere"
        )


@dataclass
class RepoFetch:
    """One repo's share of a download, planned (Hub metadata only) before any byte moves.

    ``snapshot_download`` does the work: ``dry_run=True`` pins the revision to a commit (and records
    ``refs/<revision>`` in the cache), lists the files ``allow`` matches with their sizes and says which
    are already on disk; the real call fetches the kept files of that commit in parallel.
    """

    repo: str
    revision: str
    allow: list[str]  # allow_patterns
    required: str  # a file the repo must hold for the fetch to make sense
    cache_dir: Path | None = None  # HF-cache layout ...
    local_dir: Path | None = None  # ... or a plain folder
    commit: str = ""
    files: list[str] = field(default_factory=list)
    todo: dict[str, int] = field(default_factory=dict)  # file -> bytes still to fetch

    @property
    def folder(self) -> Path:
        """Where the repo's files land (the snapshot of ``commit`` in cache layout)."""
        if self.local_dir is not None:
            return self.local_dir
        return self.cache_dir / ("models--" + self.repo.replace("/", "--")) / "snapshots" / self.commit  # type: ignore[operator]

    def _snapshot_download(self, policy: RetryPolicy, revision: str, **kwargs):
        from huggingface_hub import snapshot_download

        where = {"local_dir": str(self.local_dir)} if self.local_dir is not None else {"cache_dir": str(self.cache_dir)}
        return retrying_call(lambda: snapshot_download(self.repo, repo_type="model", revision=revision, **where, **kwargs),
                             policy, self.repo, revision)

    def plan(self, policy: RetryPolicy, keep: Callable[[list[str]], list[str]] = list) -> "RepoFetch":
        """List what ``allow`` matches (``keep`` may drop some); a truncated copy on disk is removed to be re-fetched."""
        for _ in range(2):
            infos = {i.filename: i for i in self._snapshot_download(policy, self.revision, allow_patterns=self.allow, dry_run=True)}
            bad = [i for i in infos.values() if i.is_cached and os.path.exists(i.local_path) and file_problem(i.local_path)]
            for info in bad:
                logger.warning("re-fetching %s/%s: the copy on disk is incomplete or corrupt", self.repo, info.filename)
                Path(info.local_path).resolve().unlink(missing_ok=True)
                Path(info.local_path).unlink(missing_ok=True)
            if not bad:
                break
        if self.required not in infos:
            raise ModelDownloadError(f"cannot fetch {self.repo} file {self.required!r} (revision {self.revision}): not in "
                                     "the repo; check WORLDPLAY_REPO / WORLDPLAY_COMPONENTS_REPO and their *_REVISION")
        self.commit, self.files = infos[self.required].commit_hash, keep(sorted(infos))
        self.todo = {f: infos[f].file_size or 0 for f in self.files if infos[f].will_download}
        return self

    def fetch(self, policy: RetryPolicy, tqdm_class=None) -> int:
        """Download the planned files of ``commit``; return the bytes fetched."""
        if self.todo:
            logger.info("downloading %d file(s) of %s (%s)", len(self.todo), self.repo, fmt_bytes(sum(self.todo.values())))
            self._snapshot_download(policy, self.commit, allow_patterns=self.files, tqdm_class=tqdm_class)
        return sum(self.todo.values())
