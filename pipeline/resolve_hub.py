"""Hub access for model resolution: bounded retries, clear errors, a disk check, exact file lists.

``huggingface_hub`` does the transfers (resume, Xet, its own per-request retries); this module adds
what a cold start needs around them: one commit pinned for all files of a repo, only the files the
worker uses (``filter_repo_objects`` with allow/ignore patterns), a free-space check for the whole
set before the first byte, a re-fetch of files whose copy on disk is truncated, bounded backoff
over whole calls, and messages that say what to do (token, licence, repo id).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from .errors import ModelDownloadError
from .resolve_verify import safetensors_problem

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


def retrying_call(fn: Callable, policy: RetryPolicy, repo_id: str, revision: str, filename: str | None = None):
    """``fn()`` with tenacity: transient errors retried with capped exponential backoff, others typed at once."""
    import tenacity

    what = repo_id + (f" file {filename!r}" if filename else "") + f" (revision {revision})"

    def log_retry(state: tenacity.RetryCallState) -> None:
        logger.warning(
            "transient error fetching %s%s (attempt %d/%d): %s; retrying in %.1fs", repo_id,
            f"/{filename}" if filename else "", state.attempt_number, policy.attempts,
            _first_line(state.outcome.exception()), state.next_action.sleep,  # type: ignore[union-attr]
        )

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
        if is_transient_error(exc):
            raise ModelDownloadError(
                f"cannot fetch {what}: still failing after {policy.attempts} attempts ({_first_line(exc)}); "
                "the Hub may be down: retry later or provide the files locally"
            ) from None
        raise _permanent_error(exc, what, repo_id) from None


# ---------------------------------------------------------------------------------------------
# Planning and fetching
# ---------------------------------------------------------------------------------------------


def _hub_api():
    from huggingface_hub import HfApi

    return HfApi()


def hf_hub_download(**kwargs):
    """Indirection over ``huggingface_hub.hf_hub_download`` (tests replace it)."""
    from huggingface_hub import hf_hub_download as download

    return download(**kwargs)


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
    """One repo's part of a download: the files to fetch (planned before any byte moves) and where."""

    repo: str
    revision: str
    allow: list[str]  # allow_patterns (filter_repo_objects)
    ignore: list[str]
    required: str  # a file the repo must hold for the fetch to make sense
    cache_dir: Path | None = None  # HF-cache layout ...
    local_dir: Path | None = None  # ... or a plain folder
    commit: str = ""
    todo: list[tuple[str, int, bool]] | None = None  # (path, size, force: a bad copy is on disk)

    @property
    def folder(self) -> Path:
        """Where the repo's files land (the snapshot of ``commit`` in cache layout)."""
        if self.local_dir is not None:
            return self.local_dir
        return self.cache_dir / ("models--" + self.repo.replace("/", "--")) / "snapshots" / self.commit  # type: ignore[operator]

    @property
    def needed_bytes(self) -> int:
        return sum(size for _, size, _ in self.todo or ())

    def plan(self, policy: RetryPolicy, keep_duplicates: Callable[[list[str]], list[str]]) -> "RepoFetch":
        """Pin ``revision`` to a commit, list the wanted files with sizes, keep those not already valid on disk."""
        from huggingface_hub.hf_api import RepoFile
        from huggingface_hub.utils import filter_repo_objects

        api = _hub_api()
        info = retrying_call(lambda: api.repo_info(self.repo, revision=self.revision, repo_type="model"),
                             policy, self.repo, self.revision)
        self.commit = getattr(info, "sha", None) or self.revision
        tree = retrying_call(
            lambda: {e.path: (getattr(e.lfs, "size", None) or e.size) for e in api.list_repo_tree(
                self.repo, recursive=True, revision=self.commit, repo_type="model") if isinstance(e, RepoFile)},
            policy, self.repo, self.commit)
        if self.required not in tree:
            raise ModelDownloadError(
                f"cannot fetch {self.repo} file {self.required!r} (revision {self.commit}): not in the repo; "
                "check WORLDPLAY_REPO / WORLDPLAY_COMPONENTS_REPO and their *_REVISION")
        wanted = keep_duplicates(sorted(filter_repo_objects(tree, allow_patterns=self.allow, ignore_patterns=self.ignore)))
        self.todo = []
        for path in wanted:
            have = self.folder / path
            if not _valid_copy(have, tree[path]):
                self.todo.append((path, tree[path] or 0, have.exists() or have.is_symlink()))
        return self

    def fetch(self, policy: RetryPolicy, tqdm_class=None) -> int:
        """Download the planned files (pinned to ``commit``); return the bytes fetched."""
        if self.todo:
            logger.info("downloading %d file(s) of %s (%s)", len(self.todo), self.repo, fmt_bytes(self.needed_bytes))
        for path, _, force in self.todo or ():
            kwargs = dict(repo_id=self.repo, filename=path, revision=self.commit, repo_type="model", force_download=force)
            kwargs.update({"local_dir": str(self.local_dir)} if self.local_dir else {"cache_dir": str(self.cache_dir)})
            if tqdm_class is not None:
                kwargs["tqdm_class"] = tqdm_class
            if force:
                logger.warning("re-fetching %s/%s: the copy on disk is incomplete or corrupt", self.repo, path)
            retrying_call(lambda kw=kwargs: hf_hub_download(**kw), policy, self.repo, self.commit, path)
        if self.local_dir is None and self.revision != self.commit:  # downloads by commit write no ref
            ref = self.folder.parent.parent / "refs" / self.revision
            try:
                ref.parent.mkdir(parents=True, exist_ok=True)
                ref.write_text(self.commit)
            except OSError as exc:
                logger.debug("could not write %s: %s", ref, exc)
        return self.needed_bytes


def _valid_copy(path: Path, size: int | None) -> bool:
    try:
        if size is not None and path.stat().st_size != size:
            return False
    except OSError:
        return False
    return not path.name.endswith(".safetensors") or safetensors_problem(path) is None
