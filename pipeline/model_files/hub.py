"""Hub access for model resolution, around ``huggingface_hub.snapshot_download``.

huggingface_hub pins a revision to one commit, lists and filters files, skips what is cached, transfers in
parallel with resume and writes ``refs/``. Added here: a plan (sizes, files to fetch) before the first byte, a
re-fetch of files whose copy on disk is truncated or corrupt, bounded backoff over whole calls (transient errors
only), and errors that say what to do (token, licence, repo id).
"""

from __future__ import annotations

import errno
import fnmatch
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

from pipeline.errors import ModelDownloadError
from pipeline.model_files.verify import file_problem

logger = logging.getLogger("worldplay.resolve")
_sleep = time.sleep  # backoff sleep; tests replace it

TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})  #: HTTP statuses retried; others fail at once
#: weight formats never fetched from a folder that has safetensors.
DUPLICATE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.msgpack", "*.h5", "*.onnx", "*.onnx_data", "*.gguf")
#: (error type names or HTTP status in the chain, what to do about it); the first match wins.
_HINTS = (
    ({"GatedRepoError", 403}, "gated repo (403): accept the licence at {page} with HF_TOKEN's account ({token})"),
    ({401}, "unauthorized (401): set HF_TOKEN to a valid read token ({token})"),
    ({"RevisionNotFoundError"}, "revision not found (404): check WORLDPLAY_REVISION / WORLDPLAY_COMPONENTS_REVISION"),
    ({"RemoteEntryNotFoundError", "EntryNotFoundError"},
     "file not found in the repo (404): check WORLDPLAY_REPO / WORLDPLAY_COMPONENTS_REPO and their *_REVISION"),
    ({"RepositoryNotFoundError", 404}, "repository not found (404): check the repo id; is it private? ({token})"),
    ({"OfflineModeIsEnabled"}, "the Hub is in offline mode (HF_HUB_OFFLINE=1): unset it, or provide the files locally"),
)


class RetryPolicy(NamedTuple):  # bounded exponential backoff for transient Hub errors
    attempts: int = 5
    wait_base: float = 2.0
    wait_max: float = 60.0


def _chain(exc: BaseException | None) -> list[BaseException]:
    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


def _status(exc: BaseException) -> int | None:
    return next((e.response.status_code for e in _chain(exc) if getattr(e, "response", None) is not None), None)


def _failed_file(exc: BaseException) -> str | None:
    """The repo file a failed request was for (``.../resolve/<revision>/<file>``), if any."""
    urls = [str(getattr(getattr(getattr(e, "response", None), "request", None), "url", "")) for e in _chain(exc)]
    return next((u.split("?")[0].split("/resolve/", 1)[1].split("/", 1)[-1] for u in urls if "/resolve/" in u), None)


def is_transient_error(exc: BaseException) -> bool:
    """True for errors worth retrying: timeouts, dropped connections, 408/425/429/5xx (causes included)."""
    import httpx2
    import requests
    from huggingface_hub.errors import OfflineModeIsEnabled, XetDownloadError

    if (status := _status(exc)) is not None:
        return status in TRANSIENT_STATUS
    chain = _chain(exc)
    if any(isinstance(e, OfflineModeIsEnabled) or getattr(e, "errno", None) == errno.ENOSPC for e in chain):
        return False
    transient = (TimeoutError, ConnectionError, httpx2.TransportError, XetDownloadError, requests.ConnectionError,
                 requests.Timeout, requests.exceptions.ChunkedEncodingError)
    return any(isinstance(e, transient) for e in chain)


def _token_configured() -> bool:
    from huggingface_hub import get_token

    try:
        return get_token() is not None
    except OSError:  # an unreadable token file must not hide the error being reported
        return False


def _first_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}".rstrip(": ")
    for secret in filter(None, (os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN"))):
        text = text.replace(secret, "***")  # defensive: Hub errors should not carry it
    return text


def retrying_call(fn: Callable, policy: RetryPolicy, repo_id: str, revision: str):
    """``fn()``, transient errors retried with capped exponential backoff (tenacity), others typed at once."""
    import tenacity

    def log_retry(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception()  # type: ignore[union-attr]
        logger.warning("transient error fetching %s%s (attempt %d/%d): %s; retrying in %.1fs", repo_id,
                       f"/{name}" if (name := _failed_file(exc)) else "", state.attempt_number, policy.attempts,
                       _first_line(exc), state.next_action.sleep)  # type: ignore[union-attr]

    try:
        return tenacity.Retrying(
            stop=tenacity.stop_after_attempt(policy.attempts), retry=tenacity.retry_if_exception(is_transient_error),
            wait=tenacity.wait_exponential(multiplier=policy.wait_base, min=0, max=policy.wait_max),
            before_sleep=log_retry, sleep=lambda s: _sleep(s), reraise=True,
        )(fn)
    except Exception as exc:  # noqa: BLE001 - typed below
        what = f"{repo_id}{f' file {name!r}' if (name := _failed_file(exc)) else ''} (revision {revision})"
        if is_transient_error(exc):
            raise ModelDownloadError(f"cannot fetch {what}: still failing after {policy.attempts} attempts "
                                     f"({_first_line(exc)}); the Hub may be down: retry later or provide the files "
                                     "locally") from None
        seen = {type(e).__name__ for e in _chain(exc)} | {_status(exc)}
        hint = next((text for keys, text in _HINTS if keys & seen), None)
        token = "a token is configured but was refused" if _token_configured() else "no HF_TOKEN is set"
        hint = hint.format(page=f"https://huggingface.co/{repo_id}", token=token) if hint else _first_line(exc)
        raise ModelDownloadError(f"cannot fetch {what}: {hint}") from None


def fmt_bytes(n: int) -> str:
    unit = next((u for u in range(4) if n < 1024 ** (u + 1)), 4)
    return f"{n} B" if unit == 0 else f"{n / 1024 ** unit:.1f} {'BKMGT'[unit]}B"


@dataclass
class RepoFetch:
    """One repo's share of a download into ``where`` (``cache_dir`` or ``local_dir``), planned first."""

    repo: str
    revision: str  # a branch, tag or commit; :meth:`plan` pins it to a commit
    where: dict[str, Path]
    policy: RetryPolicy
    folder: Path = Path()  # where the files land: local_dir, or the snapshot of the pinned commit
    files: list[str] = field(default_factory=list)
    todo: dict[str, int] = field(default_factory=dict)  # file -> bytes still to fetch

    def _snapshot_download(self, **kwargs):
        from huggingface_hub import snapshot_download

        fn = lambda: snapshot_download(self.repo, revision=self.revision, **self.where, **kwargs)  # noqa: E731
        return retrying_call(fn, self.policy, self.repo, self.revision)

    def plan(self, allow: list[str], required: str) -> "RepoFetch":
        """Dry run: pin the commit and list what ``allow`` matches; a bad copy on disk is deleted to be re-fetched."""
        infos = {i.filename: i for i in self._snapshot_download(allow_patterns=allow, dry_run=True)}
        if required not in infos:
            raise ModelDownloadError(f"cannot fetch {self.repo} file {required!r} (revision {self.revision}): not in "
                                     "the repo; check WORLDPLAY_REPO / WORLDPLAY_COMPONENTS_REPO and their *_REVISION")
        self.revision = infos[required].commit_hash
        self.folder = Path(infos[required].local_path).parents[required.count("/")]
        with_st = {f.rpartition("/")[0] for f in infos if f.endswith(".safetensors")}  # folders holding safetensors
        dups = {f for p in DUPLICATE_WEIGHTS for f in fnmatch.filter(infos, "*/" + p) if f.rsplit("/", 1)[0] in with_st}
        self.files = sorted(set(infos) - dups)
        for name in self.files:
            info = infos[name]
            if bad := bool(info.is_cached and file_problem(info.local_path)):
                logger.warning("re-fetching %s/%s: the copy on disk is truncated or corrupt", self.repo, name)
                for stale in (Path(info.local_path).resolve(), Path(info.local_path)):  # a cache blob and its link
                    stale.unlink(missing_ok=True)
            if bad or info.will_download:
                self.todo[name] = info.file_size or 0
        return self

    def fetch(self) -> int:
        """Download the planned files of the pinned commit; return the bytes fetched."""
        if self.todo:
            logger.info("downloading %d file(s) of %s", len(self.todo), self.repo)
            self._snapshot_download(allow_patterns=self.files)
        return sum(self.todo.values())
