"""Model resolution: find, fetch and verify exactly the files the worker needs (cold start, ``download_models.py``).

Components (``ModelPaths``): ``components``, the diffusers repo ``hunyuanvideo-community/HunyuanVideo-1.5-480p_i2v``
without ``transformer/``; ``ar`` and ``bidirectional``, a checkpoint each (and its ``config.json``) from
``tencent/HY-WorldPlay``. Each comes from the first place holding it complete (:mod:`pipeline.model_files.verify`):
1. ``WORLDPLAY_MODEL_DIR`` in the local layout, ``<dir>/HunyuanVideo-1.5-480p_i2v/`` and ``<dir>/HY-WorldPlay/<sub>/``;
2. the RunPod model cache (``RUNPOD_HF_CACHE``), then 3. the Hugging Face cache: in each, a bundle repo in the
local layout first, then the official repos; in each repo the snapshot ``refs/<revision>`` names, then the newest;
4. ``WORLDPLAY_DOWNLOAD_DIR`` (local layout); 5. a download of only the needed files (:mod:`pipeline.model_files.hub`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from pipeline.errors import ModelDownloadError, ModelNotFoundError
from pipeline.model_files.fast_decoder import beside as fast_decoder_beside
from pipeline.model_files.fast_decoder import find_fast_decoder
from pipeline.model_files.hub import (
    RepoFetch,
    RetryPolicy,
    fmt_bytes,
    is_transient_error,  # noqa: F401 - re-exported: pipeline.model_files.resolve is the entry point
)
from pipeline.model_files.verify import (  # noqa: F401
    check_components,
    check_transformer,
    safetensors_problem,
    verify_safetensors,
)
from pipeline.settings import env_flag, env_number

logger = logging.getLogger("worldplay.resolve")

MODES: tuple[str, ...] = ("ar", "bidirectional")
DEFAULT_COMPONENTS_REPO = "hunyuanvideo-community/HunyuanVideo-1.5-480p_i2v"
DEFAULT_WORLDPLAY_REPO = "tencent/HY-WorldPlay"
DEFAULT_RUNPOD_CACHE = "/runpod-volume/huggingface-cache/hub"
COMPONENTS_DIRNAME = "HunyuanVideo-1.5-480p_i2v"
WORLDPLAY_DIRNAME = "HY-WorldPlay"
#: mode -> (subfolder in tencent/HY-WorldPlay, checkpoint file name)
TRANSFORMER_FILES: dict[str, tuple[str, str]] = {
    "ar": ("ar_distilled_action_model", "model.safetensors"),
    "bidirectional": ("bidirectional_model", "diffusion_pytorch_model.safetensors"),
}
#: sub-folders of the diffusers repo the worker may need (never ``transformer/``).
COMPONENT_FOLDERS: tuple[str, ...] = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "image_encoder",
                                      "feature_extractor", "vae", "scheduler", "guider")


@dataclass
class ModelPaths:
    """Where each component lives; ``sources`` (local / runpod-cache / hf-cache / download) and ``timings`` by key."""

    components: Path
    transformer: dict[str, Path]
    sources: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # seconds, plus "total"
    # the optional fast decoder's weights (pipeline.model_files.fast_decoder.FastDecoderFile: path or reason)
    fast_decoder: object = None

    @property
    def modes(self) -> tuple[str, ...]:
        return tuple(m for m in MODES if m in self.transformer)


@dataclass
class Settings:
    """Everything resolution depends on, read from the environment at call time (:meth:`from_env`)."""

    model_dir: Path | None
    download_dir: Path | None
    allow_download: bool
    runpod_cache: Path
    hf_cache: Path
    bundle_repo: str | None
    repos: dict[str, tuple[str, str]]  # component key -> (repo id, revision)
    retry: RetryPolicy

    @classmethod
    def from_env(cls, model_dir=None, download_dir=None, allow_download: bool | None = None) -> "Settings":
        env = lambda name, default=None: os.environ.get(name, "").strip() or default  # noqa: E731
        path = lambda value: Path(value) if value else None  # noqa: E731
        hf_home = env("HF_HOME") or os.path.join(env("XDG_CACHE_HOME", "~/.cache"), "huggingface")
        hf_cache = env("HF_HUB_CACHE") or env("HUGGINGFACE_HUB_CACHE") or os.path.join(hf_home, "hub")
        worldplay = (env("WORLDPLAY_REPO", DEFAULT_WORLDPLAY_REPO), env("WORLDPLAY_REVISION", "main"))
        return cls(
            model_dir=path(model_dir or env("WORLDPLAY_MODEL_DIR")),
            download_dir=path(download_dir or env("WORLDPLAY_DOWNLOAD_DIR")),
            allow_download=env_flag("WORLDPLAY_ALLOW_DOWNLOAD", False) if allow_download is None else allow_download,
            runpod_cache=Path(env("RUNPOD_HF_CACHE", DEFAULT_RUNPOD_CACHE)),
            hf_cache=Path(os.path.expandvars(hf_cache)).expanduser(),  # huggingface_hub's rules, but read now
            bundle_repo=env("WORLDPLAY_BUNDLE_REPO"),
            repos={"components": (env("WORLDPLAY_COMPONENTS_REPO", DEFAULT_COMPONENTS_REPO),
                                  env("WORLDPLAY_COMPONENTS_REVISION", "main")), **dict.fromkeys(MODES, worldplay)},
            retry=RetryPolicy(attempts=max(1, env_number("WORLDPLAY_DOWNLOAD_ATTEMPTS", 5, int)),
                              wait_base=max(0.0, env_number("WORLDPLAY_RETRY_WAIT", 2.0, float)),
                              wait_max=max(0.0, env_number("WORLDPLAY_RETRY_WAIT_MAX", 60.0, float))),
        )


def set_hub_offline(offline: bool = True) -> None:
    """Switch huggingface_hub's offline mode now, and the variable libraries imported later read."""
    from huggingface_hub import constants

    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    else:
        os.environ.pop("HF_HUB_OFFLINE", None)
        os.environ.pop("TRANSFORMERS_OFFLINE", None)
    constants.HF_HUB_OFFLINE = bool(offline)


def _keys(modes: str | Sequence[str]) -> tuple[str, ...]:  # "components" and the modes asked for, in order
    modes = (modes,) if isinstance(modes, str) else tuple(modes)
    if not modes or any(m != "all" and m not in MODES for m in modes):
        raise ValueError(f"modes {modes!r}: expected one or more of {', '.join(MODES)} or 'all'")
    return ("components",) + tuple(m for m in MODES if m in modes or "all" in modes)


def _rel(key: str) -> str:  # path of a component inside its repo
    return "" if key == "components" else "/".join(TRANSFORMER_FILES[key])


def _check(key: str, path: Path) -> list[str]:
    return check_components(path) if key == "components" else check_transformer(path)


def layout_paths(root: str | os.PathLike, modes: str | Sequence[str] = MODES) -> ModelPaths:
    """The paths of the local-folder layout under ``root`` (nothing is checked)."""
    root = Path(root)
    return ModelPaths(root / COMPONENTS_DIRNAME, {m: root / WORLDPLAY_DIRNAME / _rel(m) for m in _keys(modes)[1:]},
                      fast_decoder=fast_decoder_beside(root / COMPONENTS_DIRNAME))


def check_model_dir(root: str | os.PathLike, modes: str | Sequence[str] = MODES) -> list[str]:
    """Problems with a local-layout folder for ``modes`` (empty list: complete). No network."""
    paths = layout_paths(root, modes)
    return check_components(paths.components) + [p for t in paths.transformer.values() for p in check_transformer(t)]


def snapshot_dirs(repo_folder: str | os.PathLike, revision: str = "main") -> list[Path]:
    """Snapshots of a cached repo, best first: the one ``revision`` names (``refs/<revision>``, a commit), then newest.

    huggingface_hub's cache readers (``scan_cache_dir``, ``try_to_load_from_cache``) read a ref verbatim (one ending
    in a newline misses) and never fall back to the newest snapshot, which RunPod's own resolver does.
    """
    snaps, ref = Path(repo_folder) / "snapshots", Path(repo_folder) / "refs" / revision
    if not snaps.is_dir():
        return []
    with contextlib.suppress(OSError):
        revision = ref.read_text().strip() if ref.is_file() else revision  # the commit the ref names
    first = [snaps / revision] if revision and (snaps / revision).is_dir() else []
    others = sorted(((d.stat().st_mtime, d.name, d) for d in snaps.iterdir() if d.is_dir() and d not in first))
    return first + [d for _, _, d in reversed(others)]


def _candidates(key: str, s: Settings) -> Iterator[tuple[str, str, Path]]:
    """(source, label, path) of each place ``key`` may be, in the order of the module docstring."""
    sub, rel = COMPONENTS_DIRNAME if key == "components" else WORLDPLAY_DIRNAME, _rel(key)
    folder = lambda cache, repo_id: cache / ("models--" + repo_id.replace("/", "--"))  # noqa: E731
    if s.model_dir is not None:
        yield "local", f"local folder {s.model_dir}", s.model_dir / sub / rel
    for cache, source in ((s.runpod_cache, "runpod-cache"), (s.hf_cache, "hf-cache")):
        if not cache.is_dir() or (source == "hf-cache" and cache.resolve() == s.runpod_cache.resolve()):
            continue
        bundles = [folder(cache, s.bundle_repo)] if s.bundle_repo else []
        if source == "runpod-cache":  # an endpoint's one cached model may be a bundle of any name
            official = bundles + [folder(cache, repo) for repo, _ in s.repos.values()]
            bundles += sorted(p for p in cache.glob("models--*") if p not in official)
        for bundle in bundles:
            for snap in snapshot_dirs(bundle):
                yield source, f"{source} bundle {bundle.name}@{snap.name[:12]}", snap / sub / rel
        repo = folder(cache, s.repos[key][0])
        for snap in snapshot_dirs(repo, s.repos[key][1]):
            yield source, f"{source} {repo.name}@{snap.name[:12]}", snap / rel
    if s.download_dir is not None and s.download_dir != s.model_dir:
        yield "local", f"download folder {s.download_dir}", s.download_dir / sub / rel


def _locate(keys: Sequence[str], s: Settings) -> tuple[dict[str, tuple[Path, str, float, str]], dict[str, list[str]]]:
    """key -> (path, source, seconds taken, label) of its first complete copy; else key -> the problems seen."""
    found, missing = {}, {}
    for key in keys:
        t0, problems = time.perf_counter(), []
        for source, label, path in _candidates(key, s):
            if not (path.exists() or (key != "components" and path.is_symlink())):
                continue
            if not (bad := _check(key, path)):
                found[key] = path, source, time.perf_counter() - t0, label
                logger.info("%s: %s from %s (%.3fs)", key, path, label, found[key][2])
                break
            logger.warning("%s in %s is incomplete: %s", key, label, "; ".join(bad))
            problems += [f"[{label}] {b}" for b in bad]
        else:
            missing[key] = problems
    return found, missing


def _not_found(missing: dict[str, list[str]], s: Settings, unset: str = "WORLDPLAY_MODEL_DIR (unset)") -> str:
    looked = [f"WORLDPLAY_MODEL_DIR={s.model_dir}" if s.model_dir else unset, f"RunPod cache {s.runpod_cache}",
              f"HF cache {s.hf_cache}", f"WORLDPLAY_DOWNLOAD_DIR={s.download_dir}" if s.download_dir else ""]
    detail = " | ".join(f"{k}: {'; '.join(p) if p else 'not found'}" for k, p in missing.items())
    return f"{detail}; looked in: {', '.join(filter(None, looked))}"


def _download(keys: Sequence[str], s: Settings, layout_root: Path | None) -> Iterator[tuple[str, Path, int, float]]:
    """Plan each component, check the disk once for the total, then fetch into ``layout_root`` (local layout)
    or else the HF cache, yielding (key, path, bytes fetched, seconds) as each lands."""
    root = layout_root or s.hf_cache
    with contextlib.suppress(OSError):
        root.mkdir(parents=True, exist_ok=True)
    if keys and not os.access(root, os.W_OK):
        raise ModelDownloadError(f"cannot download: {root} is not writable (read-only mount?); "
                                 "set WORLDPLAY_DOWNLOAD_DIR (download_models.py: --dest) to a writable folder")
    plans: dict[str, RepoFetch] = {}
    for key in keys:
        where = ({"local_dir": layout_root / (COMPONENTS_DIRNAME if key == "components" else WORLDPLAY_DIRNAME)}
                 if layout_root is not None else {"cache_dir": s.hf_cache})
        allow = (["model_index.json"] + [f"{f}/*" for f in COMPONENT_FOLDERS] if key == "components"
                 else [_rel(key), f"{TRANSFORMER_FILES[key][0]}/config.json"])
        plans[key] = RepoFetch(*s.repos[key], where, s.retry).plan(allow, allow[0])
    needed = sum(sum(f.todo.values()) for f in plans.values())
    if needed and needed > (free := shutil.disk_usage(root).free):
        raise ModelDownloadError(f"not enough disk space in {root}: need {needed} bytes ({fmt_bytes(needed)}), "
                                 f"{free} bytes free ({fmt_bytes(free)}); free space, enlarge the container disk, "
                                 "or point WORLDPLAY_DOWNLOAD_DIR / HF_HUB_CACHE elsewhere")
    for key, fetch in plans.items():
        t0 = time.perf_counter()
        fetched, path = fetch.fetch(), fetch.folder / _rel(key)
        if bad := _check(key, path):
            raise ModelDownloadError(f"{key} from {fetch.repo} is still incomplete after downloading: {'; '.join(bad)}")
        yield key, path, fetched, time.perf_counter() - t0


def resolve_models(modes: str | Sequence[str] = ("ar",), *, allow_download: bool | None = None,
                   model_dir: str | os.PathLike | None = None, download_dir: str | os.PathLike | None = None,
                   set_offline: bool = True) -> ModelPaths:
    """Find (or fetch) the components for ``modes``; the arguments override ``WORLDPLAY_ALLOW_DOWNLOAD`` (default
    off), ``WORLDPLAY_MODEL_DIR`` and ``WORLDPLAY_DOWNLOAD_DIR``. With ``set_offline``, huggingface_hub goes offline
    once all is on disk. An offline mode the entrypoint chose (``WORLDPLAY_AUTO_OFFLINE=1``) is lifted to download."""
    from huggingface_hub import constants

    t_start, keys = time.perf_counter(), _keys(modes)
    s = Settings.from_env(model_dir, download_dir, allow_download)
    if s.model_dir is not None and not s.model_dir.is_dir():
        logger.warning("WORLDPLAY_MODEL_DIR %s does not exist; looking elsewhere", s.model_dir)
    found, missing = _locate(keys, s)
    if missing:
        offline = constants.is_offline_mode()
        if not s.allow_download or (offline and not env_flag("WORLDPLAY_AUTO_OFFLINE", False)):
            fix = ("HF_HUB_OFFLINE=1 forbids downloading: unset it, or provide the files locally" if s.allow_download
                   else "set WORLDPLAY_ALLOW_DOWNLOAD=1 to fetch only the needed files, or pre-fetch them with `python "
                   f"download_models.py --mode {'all' if len(keys) > 2 else keys[1]} --dest DIR` and set "
                   "WORLDPLAY_MODEL_DIR=DIR")
            raise ModelNotFoundError(f"model files missing or incomplete for mode(s) {', '.join(keys[1:])} "
                                     f"({_not_found(missing, s)}); {fix}")
        if offline:
            logger.info("lifting the automatic offline mode to download %s", ", ".join(missing))
            set_hub_offline(False)
        try:
            for key, path, fetched, seconds in _download(list(missing), s, s.download_dir):
                found[key] = path, "download", seconds, ""
                logger.info("%s: %s downloaded (%s, %.1fs)", key, path, fmt_bytes(fetched), seconds)
        finally:
            if offline:
                set_hub_offline(True)
    if set_offline:
        set_hub_offline(True)
    fast = find_fast_decoder(s, snapshot_dirs, components=found["components"][0])  # optional: a path, or why not
    paths = ModelPaths(found["components"][0], {m: found[m][0] for m in keys[1:]}, {k: found[k][1] for k in keys},
                       {**{k: found[k][2] for k in keys}, "total": time.perf_counter() - t_start}, fast)
    logger.info("models resolved in %.2fs: %s", paths.timings["total"],
                ", ".join(f"{k}={v}" for k, v in paths.sources.items()))
    return paths


def _link_or_copy(src: str | Path, dst: str | Path) -> None:  # through a temporary name
    tmp = Path(f"{dst}.partial")
    tmp.unlink(missing_ok=True)
    try:
        os.link(os.path.realpath(src), tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def prefetch(modes: str | Sequence[str], dest: str | os.PathLike, *, allow_download=True) -> tuple[ModelPaths, dict]:
    """Make ``dest`` a complete local-layout folder for ``modes``; return its paths and where each component came from.

    What is complete there is kept; the rest is copied (hard-linked) from the first complete place (not
    ``WORLDPLAY_DOWNLOAD_DIR``), else its needed files are downloaded into ``dest`` when allowed.
    """
    keys, dest, s = _keys(modes), Path(dest), Settings.from_env(allow_download=allow_download)
    s.download_dir, s.model_dir = None, None if s.model_dir == dest else s.model_dir  # dest is the target, not a source
    layout = layout_paths(dest, keys[1:])
    want = {"components": layout.components, **layout.transformer}
    own = {key: bad for key in keys if (bad := _check(key, want[key]))}
    origins = {key: f"already present in {dest}" for key in keys if key not in own}
    layout.sources.update(dict.fromkeys(origins, "local"))
    found, missing = _locate(list(own), s)
    if missing and not allow_download:
        key = next(iter(missing))
        raise ModelNotFoundError(f"{key} missing or incomplete in {dest}: {'; '.join(own[key])}; "
                                 f"no complete copy elsewhere ({_not_found({key: missing[key]}, s, '')})")
    for key, (path, source, seconds, label) in found.items():
        t0 = time.perf_counter()
        if key == "components":
            shutil.copytree(path, want[key], ignore=shutil.ignore_patterns("transformer", ".cache"),
                            copy_function=_link_or_copy, dirs_exist_ok=True)
        else:  # the checkpoint, and its config.json when there is one
            want[key].parent.mkdir(parents=True, exist_ok=True)
            for src in filter(Path.exists, (path, path.parent / "config.json")):
                _link_or_copy(src, want[key].parent / src.name)
        origins[key], layout.sources[key] = f"copied from {label}", source
        layout.timings[key] = seconds + time.perf_counter() - t0
    for key, _, fetched, seconds in _download(list(missing), s, dest):
        origins[key] = f"downloaded from https://huggingface.co/{s.repos[key][0]} ({fmt_bytes(fetched)} fetched)"
        layout.sources[key], layout.timings[key] = "download", seconds
    for key in keys:
        logger.info("%s: %s (%.1fs)", key, origins[key], layout.timings.get(key, 0.0))
    return layout, {k: origins[k] for k in keys}
