"""Model resolution: find, fetch and verify exactly the files the worker needs.

The one home of model location logic; the handler (cold start) and ``download_models.py`` use it.
Components (see docs/ARCHITECTURE.md, ``ModelPaths``): ``components``, the diffusers repo
``hunyuanvideo-community/HunyuanVideo-1.5-480p_i2v`` without ``transformer/``; ``ar`` and
``bidirectional``, one checkpoint each from ``tencent/HY-WorldPlay`` (with its ``config.json``).

Each component comes from the first place holding it complete:

1. a local folder (``model_dir`` / ``WORLDPLAY_MODEL_DIR``) in the local layout
   ``<dir>/HunyuanVideo-1.5-480p_i2v/...`` and ``<dir>/HY-WorldPlay/<subfolder>/<file>``;
2. the RunPod model cache (``RUNPOD_HF_CACHE``): a bundle repo in the local layout first, then the
   official repos; in each repo the snapshot ``refs/main`` names, then the newest;
3. the standard Hugging Face cache (``HF_HUB_CACHE`` / ``HF_HOME``), same rules;
4. a previous download into ``WORLDPLAY_DOWNLOAD_DIR`` (local layout), when set;
5. a download of only the needed files, when allowed (``WORLDPLAY_ALLOW_DOWNLOAD``).

"Complete" means every required file is present and every safetensors header accounts for the
file's exact size (:mod:`pipeline.resolve_verify`). A truncated file is never returned: it is
re-fetched when downloads are allowed, else reported by ``ModelNotFoundError``. Hub access (pinned
commit, retries, disk check, error hints) lives in :mod:`pipeline.resolve_hub`.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

from .errors import ModelDownloadError, ModelNotFoundError
from .resolve_hub import (
    RepoFetch,
    RetryPolicy,
    check_disk_space,
    existing_ancestor,
    fmt_bytes,
    hub_offline,
    is_transient_error,
    set_hub_offline,
)
from .resolve_verify import check_components, check_transformer, safetensors_problem, verify_safetensors
from .settings import env_flag, env_number

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
#: sub-folders of the diffusers repo the worker may need (``transformer/`` is never fetched).
COMPONENT_FOLDERS: tuple[str, ...] = (
    "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "image_encoder", "feature_extractor",
    "vae", "scheduler", "guider",
)
#: weight formats skipped when the same folder has safetensors (never fetch duplicates).
DUPLICATE_WEIGHT_PATTERNS: tuple[str, ...] = (
    "*.bin", "*.pt", "*.pth", "*.ckpt", "*.msgpack", "*.h5", "*.onnx", "*.onnx_data", "*.gguf",
)
SOURCE_LOCAL, SOURCE_RUNPOD, SOURCE_HF, SOURCE_DOWNLOAD = "local", "runpod-cache", "hf-cache", "download"


@dataclass
class ModelPaths:
    """Where every resolved component lives (see docs/ARCHITECTURE.md).

    ``sources`` maps ``components`` / ``ar`` / ``bidirectional`` to ``local``, ``runpod-cache``,
    ``hf-cache`` or ``download``; ``timings`` maps the same keys (plus ``total``) to seconds.
    """

    components: Path
    transformer: dict[str, Path]
    sources: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def modes(self) -> tuple[str, ...]:
        return tuple(m for m in MODES if m in self.transformer)


# ---------------------------------------------------------------------------------------------
# Settings (read from the environment at call time)
# ---------------------------------------------------------------------------------------------


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or default


def hf_cache_dir() -> Path:
    """The standard Hugging Face hub cache, by huggingface_hub's rules but read now (tests, late env)."""
    explicit = _env("HF_HUB_CACHE") or _env("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(explicit)).expanduser()
    home = _env("HF_HOME") or os.path.join(_env("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def runpod_cache_dir() -> Path:
    return Path(_env("RUNPOD_HF_CACHE", DEFAULT_RUNPOD_CACHE))  # type: ignore[arg-type]


@dataclass
class Settings:
    """Everything resolution depends on; :meth:`from_env` reads the environment at call time."""

    model_dir: Path | None = None
    runpod_cache: Path | None = None
    hf_cache: Path | None = None
    download_dir: Path | None = None
    bundle_repo: str | None = None
    components_repo: str = DEFAULT_COMPONENTS_REPO
    worldplay_repo: str = DEFAULT_WORLDPLAY_REPO
    components_revision: str = "main"
    worldplay_revision: str = "main"
    allow_download: bool = False
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    @classmethod
    def from_env(cls) -> "Settings":
        path = lambda name: Path(_env(name)) if _env(name) else None  # noqa: E731
        return cls(
            model_dir=path("WORLDPLAY_MODEL_DIR"), runpod_cache=runpod_cache_dir(), hf_cache=hf_cache_dir(),
            download_dir=path("WORLDPLAY_DOWNLOAD_DIR"), bundle_repo=_env("WORLDPLAY_BUNDLE_REPO"),
            components_repo=_env("WORLDPLAY_COMPONENTS_REPO", DEFAULT_COMPONENTS_REPO),  # type: ignore[arg-type]
            worldplay_repo=_env("WORLDPLAY_REPO", DEFAULT_WORLDPLAY_REPO),  # type: ignore[arg-type]
            components_revision=_env("WORLDPLAY_COMPONENTS_REVISION", "main"),  # type: ignore[arg-type]
            worldplay_revision=_env("WORLDPLAY_REVISION", "main"),  # type: ignore[arg-type]
            allow_download=bool(env_flag("WORLDPLAY_ALLOW_DOWNLOAD", False)),
            retry=RetryPolicy(
                attempts=max(1, env_number("WORLDPLAY_DOWNLOAD_ATTEMPTS", 5, int)),
                wait_base=max(0.0, env_number("WORLDPLAY_RETRY_WAIT", 2.0, float)),
                wait_max=max(0.0, env_number("WORLDPLAY_RETRY_WAIT_MAX", 60.0, float)),
            ),
        )

    def repo(self, key: str) -> tuple[str, str]:
        """(repo id, revision) a component comes from."""
        if key == "components":
            return self.components_repo, self.components_revision
        return self.worldplay_repo, self.worldplay_revision


# ---------------------------------------------------------------------------------------------
# Layout and checks
# ---------------------------------------------------------------------------------------------


def _norm_modes(modes: str | Sequence[str]) -> tuple[str, ...]:
    modes = (modes,) if isinstance(modes, str) else tuple(modes)
    for m in modes:
        if m != "all" and m not in MODES:
            raise ValueError(f"unknown mode {m!r}: expected one of {', '.join(MODES)} or 'all'")
    if not modes:
        raise ValueError("at least one mode is required")
    return tuple(m for m in MODES if m in modes or "all" in modes)


def _keys(modes: tuple[str, ...]) -> tuple[str, ...]:
    return ("components",) + modes


def _rel(key: str) -> str:
    """Path of a component inside its repo ("" for the components repo itself)."""
    return "" if key == "components" else "/".join(TRANSFORMER_FILES[key])


def layout_paths(root: str | os.PathLike, modes: str | Sequence[str] = MODES) -> ModelPaths:
    """The paths of the local-folder layout under ``root`` (nothing is checked)."""
    root = Path(root)
    return ModelPaths(
        components=root / COMPONENTS_DIRNAME,
        transformer={m: root / WORLDPLAY_DIRNAME / _rel(m) for m in _norm_modes(modes)},
    )


def _check(key: str, path: Path) -> list[str]:
    return check_components(path) if key == "components" else check_transformer(path)


def check_model_dir(root: str | os.PathLike, modes: str | Sequence[str] = MODES) -> list[str]:
    """Problems with a local-layout folder for ``modes`` (empty list: complete). No network."""
    paths = layout_paths(root, modes)
    return check_components(paths.components) + [p for t in paths.transformer.values() for p in check_transformer(t)]


# ---------------------------------------------------------------------------------------------
# Places on disk
# ---------------------------------------------------------------------------------------------


@dataclass
class _Place:
    source: str  # local / runpod-cache / hf-cache
    label: str  # for logs and errors
    components: Path | None = None  # components folder, when this place can hold it
    worldplay: Path | None = None  # folder holding <subfolder>/<file>

    def path_for(self, key: str) -> Path | None:
        root = self.components if key == "components" else self.worldplay
        return None if root is None else root / _rel(key)


def _repo_folder(cache: Path, repo_id: str) -> Path:
    return cache / ("models--" + repo_id.replace("/", "--"))


def snapshot_dirs(repo_folder: str | os.PathLike, revision: str = "main") -> list[Path]:
    """Snapshots of a cached repo, best first: the one ``revision`` names (a commit, or ``refs/<revision>``), then newest first.

    huggingface_hub's cache readers (``try_to_load_from_cache``, ``snapshot_download(local_files_only=True)``,
    ``scan_cache_dir``) read a ref verbatim (a ref written with a trailing newline misses) and have no
    newest-snapshot fallback, which RunPod's own resolver has; hence these few lines.
    """
    snaps = Path(repo_folder) / "snapshots"
    if not snaps.is_dir():
        return []
    ref = Path(repo_folder) / "refs" / revision
    try:
        named = ref.read_text().strip() if ref.is_file() else revision
    except OSError:
        named = revision
    first = [snaps / named] if named and (snaps / named).is_dir() else []
    others = [(d.stat().st_mtime, d.name, d) for d in snaps.iterdir() if d.is_dir() and d not in first]
    return first + [d for _, _, d in sorted(others, reverse=True)]


def _cache_places(cache: Path, source: str, s: Settings, discover_bundles: bool) -> list[_Place]:
    if not cache.is_dir():
        return []
    official = {_repo_folder(cache, s.components_repo), _repo_folder(cache, s.worldplay_repo)}
    bundles = [_repo_folder(cache, s.bundle_repo)] if s.bundle_repo else []
    if discover_bundles:
        bundles += sorted(p for p in cache.glob("models--*") if p.is_dir() and p not in official and p not in bundles)
    places = [
        _Place(source, f"{source} bundle {folder.name}@{snap.name[:12]}",
               components=snap / COMPONENTS_DIRNAME, worldplay=snap / WORLDPLAY_DIRNAME)
        for folder in bundles for snap in snapshot_dirs(folder)
        if (snap / COMPONENTS_DIRNAME).is_dir() or (snap / WORLDPLAY_DIRNAME).is_dir()
    ]
    for repo, revision, attr in ((s.components_repo, s.components_revision, "components"),
                                 (s.worldplay_repo, s.worldplay_revision, "worldplay")):
        folder = _repo_folder(cache, repo)
        for snap in snapshot_dirs(folder, revision):
            places.append(_Place(source, f"{source} {folder.name}@{snap.name[:12]}", **{attr: snap}))
    return places


def _places(s: Settings) -> list[_Place]:
    layout = lambda root, label: _Place(SOURCE_LOCAL, label, root / COMPONENTS_DIRNAME, root / WORLDPLAY_DIRNAME)  # noqa: E731
    places: list[_Place] = []
    if s.model_dir is not None:
        if not s.model_dir.is_dir():
            logger.warning("WORLDPLAY_MODEL_DIR %s does not exist; looking elsewhere", s.model_dir)
        places.append(layout(s.model_dir, f"local folder {s.model_dir}"))
    seen: set[Path] = set()
    for cache, source in ((s.runpod_cache, SOURCE_RUNPOD), (s.hf_cache, SOURCE_HF)):
        if cache is not None and cache.resolve() not in seen:
            seen.add(cache.resolve())
            places += _cache_places(cache, source, s, discover_bundles=source == SOURCE_RUNPOD)
    if s.download_dir is not None and s.download_dir != s.model_dir:
        places.append(layout(s.download_dir, f"download folder {s.download_dir}"))
    return places


def _find_local(key: str, places: list[_Place]) -> tuple[_Place | None, Path | None, list[str]]:
    """First place holding ``key`` complete, else (None, None, problems seen)."""
    problems: list[str] = []
    for place in places:
        path = place.path_for(key)
        if path is None or not (path.exists() or (key != "components" and path.is_symlink())):
            continue
        bad = _check(key, path)
        if not bad:
            return place, path, problems
        logger.warning("%s in %s is incomplete: %s", key, place.label, "; ".join(bad))
        problems += [f"[{place.label}] {b}" for b in bad]
    return None, None, problems


def _looked_in(s: Settings, dest: Path | None = None) -> str:
    """The places searched; with ``dest`` (prefetch), the model folder is named only when it is another source."""
    if dest is None:
        looked = [f"WORLDPLAY_MODEL_DIR={s.model_dir}" if s.model_dir else "WORLDPLAY_MODEL_DIR (unset)"]
    else:
        looked = [f"WORLDPLAY_MODEL_DIR={s.model_dir}"] if s.model_dir and s.model_dir != dest else []
    looked += [f"RunPod cache {s.runpod_cache}", f"HF cache {s.hf_cache}"]
    return ", ".join(looked + ([f"WORLDPLAY_DOWNLOAD_DIR={s.download_dir}"] if s.download_dir else []))


def _detail(missing: dict[str, list[str]]) -> str:
    return " | ".join(f"{k}: {'; '.join(p) if p else 'not found'}" for k, p in missing.items())


# ---------------------------------------------------------------------------------------------
# Downloads
# ---------------------------------------------------------------------------------------------


def _drop_duplicate_weights(paths: list[str]) -> list[str]:
    with_st = {p.rsplit("/", 1)[0] for p in paths if p.endswith(".safetensors")}
    return [p for p in paths if not (p.rsplit("/", 1)[0] in with_st and "/" in p
                                     and any(fnmatch.fnmatch(p.rsplit("/", 1)[1], pat) for pat in DUPLICATE_WEIGHT_PATTERNS))]


def _download(keys: Sequence[str], s: Settings, *, layout_root: Path | None = None,
              tqdm_class=None) -> dict[str, tuple[Path, int, float]]:
    """Plan every component (Hub metadata only), check the disk once for the total, then fetch.

    Into ``layout_root`` (local layout) when given, else the HF cache. Returns key -> (path, bytes, seconds).
    """
    if layout_root is None:
        cache = s.hf_cache or hf_cache_dir()
        if not os.access(existing_ancestor(cache), os.W_OK):
            raise ModelDownloadError(f"cannot download: the Hugging Face cache {cache} is not writable "
                                     "(read-only mount?); set WORLDPLAY_DOWNLOAD_DIR to a writable folder")
    t0 = time.perf_counter()
    fetches: dict[str, RepoFetch] = {}
    for key in keys:
        where = ({"local_dir": layout_root / (COMPONENTS_DIRNAME if key == "components" else WORLDPLAY_DIRNAME)}
                 if layout_root is not None else {"cache_dir": cache})
        if key == "components":
            allow, keep = ["model_index.json"] + [f"{f}/*" for f in COMPONENT_FOLDERS], _drop_duplicate_weights
        else:
            allow, keep = [_rel(key), f"{TRANSFORMER_FILES[key][0]}/config.json"], list
        fetches[key] = RepoFetch(*s.repo(key), allow, allow[0], **where).plan(s.retry, keep)
    check_disk_space(layout_root or cache, sum(sum(f.todo.values()) for f in fetches.values()))
    plan_seconds = (time.perf_counter() - t0) / max(1, len(fetches))
    out: dict[str, tuple[Path, int, float]] = {}
    for key, fetch in fetches.items():
        t1 = time.perf_counter()
        fetched = fetch.fetch(s.retry, tqdm_class)
        path = fetch.folder / _rel(key)
        bad = _check(key, path)
        if bad:
            raise ModelDownloadError(f"{key} from {fetch.repo} is still incomplete after downloading: " + "; ".join(bad))
        out[key] = (path, fetched, plan_seconds + time.perf_counter() - t1)
    return out


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------


def _settings(settings: Settings | None, **overrides) -> Settings:
    s = replace(settings) if settings is not None else Settings.from_env()
    for name, value in overrides.items():
        if value is not None:
            setattr(s, name, Path(value) if name.endswith("_dir") else bool(value))
    return s


def resolve_models(
    modes: str | Sequence[str] = ("ar",),
    *,
    allow_download: bool | None = None,
    model_dir: str | os.PathLike | None = None,
    download_dir: str | os.PathLike | None = None,
    set_offline: bool = True,
    settings: Settings | None = None,
    tqdm_class=None,
) -> ModelPaths:
    """Find (or fetch) the components for ``modes`` and return their paths.

    ``allow_download=None`` reads ``WORLDPLAY_ALLOW_DOWNLOAD`` (default off). ``model_dir`` /
    ``download_dir`` override ``WORLDPLAY_MODEL_DIR`` / ``WORLDPLAY_DOWNLOAD_DIR``. Once every
    component is on disk and ``set_offline`` is true, huggingface_hub is switched to offline mode.
    An offline mode the entrypoint chose (``WORLDPLAY_AUTO_OFFLINE=1``) is lifted to download;
    one the user chose is not. Raises ModelNotFoundError or ModelDownloadError.
    """
    t_start = time.perf_counter()
    modes = _norm_modes(modes)
    s = _settings(settings, model_dir=model_dir, download_dir=download_dir, allow_download=allow_download)
    places = _places(s)
    found: dict[str, Path] = {}
    sources: dict[str, str] = {}
    timings: dict[str, float] = {}
    missing: dict[str, list[str]] = {}
    for key in _keys(modes):
        t0 = time.perf_counter()
        place, path, problems = _find_local(key, places)
        if place is None or path is None:
            missing[key] = problems
            continue
        found[key], sources[key], timings[key] = path, place.source, time.perf_counter() - t0
        logger.info("%s: %s from %s (%.3fs)", key, path, place.label, timings[key])

    if missing:
        offline, auto = hub_offline(), bool(env_flag("WORLDPLAY_AUTO_OFFLINE", False))
        if not s.allow_download or (offline and not auto):
            if offline and s.allow_download:
                fix = "HF_HUB_OFFLINE=1 forbids downloading: unset it, or provide the files locally"
            else:
                fix = ("set WORLDPLAY_ALLOW_DOWNLOAD=1 to fetch only the needed files, or pre-fetch them with "
                       f"`python download_models.py --mode {'all' if len(modes) > 1 else modes[0]} --dest DIR` "
                       "and set WORLDPLAY_MODEL_DIR=DIR")
            raise ModelNotFoundError(f"model files missing or incomplete for mode(s) {', '.join(modes)} "
                                     f"({_detail(missing)}); looked in: {_looked_in(s)}; {fix}")
        if offline:
            logger.info("lifting the automatic offline mode to download %s", ", ".join(missing))
            set_hub_offline(False)
        try:
            for key, (path, fetched, seconds) in _download(list(missing), s, layout_root=s.download_dir,
                                                           tqdm_class=tqdm_class).items():
                found[key], sources[key], timings[key] = path, SOURCE_DOWNLOAD, seconds
                logger.info("%s: %s downloaded (%s, %.1fs)", key, path, fmt_bytes(fetched), seconds)
        finally:
            if offline:
                set_hub_offline(True)

    timings["total"] = time.perf_counter() - t_start
    if set_offline:
        set_hub_offline(True)
    logger.info("models resolved in %.2fs: %s", timings["total"], ", ".join(f"{k}={sources[k]}" for k in _keys(modes)))
    return ModelPaths(found["components"], {m: found[m] for m in modes}, sources, timings)


@dataclass
class FetchReport:
    """What :func:`prefetch` did for each component."""

    paths: ModelPaths
    origins: dict[str, str]  # key -> already present / copied from X / downloaded from repo
    total_bytes: int


def _copy_file(src: Path, dst: Path) -> None:
    """Hard link (same filesystem: no copy at all) or copy, through a temporary name."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".partial")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src.resolve(), tmp)
    except OSError:
        shutil.copyfile(src.resolve(), tmp)
    os.replace(tmp, dst)


def _size(path: Path) -> int:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file() and ".cache" not in p.relative_to(path).parts]
    return sum(p.stat().st_size for p in files)


def prefetch(
    modes: str | Sequence[str],
    dest: str | os.PathLike,
    *,
    allow_download: bool = True,
    settings: Settings | None = None,
    tqdm_class=None,
) -> FetchReport:
    """Make ``dest`` a complete local-layout folder for ``modes``.

    A component already complete in ``dest`` is kept; else it is copied (hard-linked when possible)
    from the first complete local place (``WORLDPLAY_MODEL_DIR``, RunPod cache, HF cache); else its
    needed files are downloaded into ``dest``. Without downloads, a component that stays missing or
    incomplete raises ModelNotFoundError naming ``dest``'s problem files and the places searched.
    """
    modes, dest = _norm_modes(modes), Path(dest)
    s = _settings(settings, allow_download=allow_download)
    s.download_dir = None  # dest is the target; another download folder is not a source
    others = [p for p in _places(s) if p.components != dest / COMPONENTS_DIRNAME]
    layout = layout_paths(dest, modes)
    origins: dict[str, str] = {}
    to_download: list[str] = []
    for key in _keys(modes):
        t0 = time.perf_counter()
        want = layout.components if key == "components" else layout.transformer[key]
        own = _check(key, want)
        if not own:
            origins[key], layout.sources[key] = f"already present in {dest}", SOURCE_LOCAL
        else:
            place, path, problems = _find_local(key, others)
            if place is None or path is None:
                if not allow_download:
                    raise ModelNotFoundError(
                        f"{key} missing or incomplete in {dest}: {'; '.join(own)}; no complete copy elsewhere "
                        f"({_detail({key: problems})}; looked in: {_looked_in(s, dest)})")
                to_download.append(key)
                continue
            if key == "components":
                for item in sorted(p for p in path.rglob("*") if not p.is_dir()):
                    rel = item.relative_to(path)
                    if rel.parts[0] not in ("transformer", ".cache"):
                        _copy_file(item, want / rel)
            else:
                for item in (path, path.parent / "config.json"):
                    if item.exists():
                        _copy_file(item, want.parent / item.name if item != path else want)
            if bad := _check(key, want):
                raise ModelNotFoundError(f"{key} in {dest} is incomplete: " + "; ".join(bad))
            origins[key], layout.sources[key] = f"copied from {place.label}", place.source
        layout.timings[key] = time.perf_counter() - t0
        logger.info("%s: %s (%.1fs)", key, origins[key], layout.timings[key])
    for key, (_, fetched, seconds) in _download(to_download, s, layout_root=dest, tqdm_class=tqdm_class).items():
        origins[key] = f"downloaded from https://huggingface.co/{s.repo(key)[0]} ({fmt_bytes(fetched)} fetched)"
        layout.sources[key], layout.timings[key] = SOURCE_DOWNLOAD, seconds
        logger.info("%s: %s (%.1fs)", key, origins[key], seconds)
    total = _size(layout.components) + sum(
        _size(p) + (_size(p.parent / "config.json") if (p.parent / "config.json").exists() else 0)
        for p in layout.transformer.values())
    return FetchReport(layout, {k: origins[k] for k in _keys(modes)}, total)


__all__ = [
    "MODES", "COMPONENTS_DIRNAME", "WORLDPLAY_DIRNAME", "TRANSFORMER_FILES", "COMPONENT_FOLDERS",
    "DEFAULT_COMPONENTS_REPO", "DEFAULT_WORLDPLAY_REPO", "DEFAULT_RUNPOD_CACHE",
    "ModelPaths", "Settings", "RetryPolicy", "FetchReport",
    "resolve_models", "prefetch", "layout_paths", "check_model_dir", "check_components", "check_transformer",
    "verify_safetensors", "safetensors_problem", "set_hub_offline", "hub_offline", "is_transient_error",
    "check_disk_space", "snapshot_dirs", "hf_cache_dir", "runpod_cache_dir",
]
