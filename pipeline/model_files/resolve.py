"""Model resolution: find, fetch and verify exactly the files the worker needs (cold start, ``download_models.py``).

Components (``ModelPaths``): ``components``, the diffusers repo ``hunyuanvideo-community/HunyuanVideo-1.5-480p_i2v``
without ``transformer/``; one WorldPlay checkpoint per model asked for (``ar_distilled``, ``ar``, ``ar_rl``,
``bidirectional``: :mod:`pipeline.checkpoints`), each (and its ``config.json``) from ``tencent/HY-WorldPlay``;
with ``sr=True`` (``resolution: "720p"``), ``sr``: the super-resolution stage of ``tencent/HunyuanVideo-1.5``, its
``transformer/720p_sr_distilled/`` and ``upsampler/720p_sr_distilled/`` (config + weights; nothing else of that repo). Each comes from the first place holding it complete (:mod:`pipeline.model_files.verify`):
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

from pipeline.checkpoints import CHECKPOINTS, MODEL_NAMES
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

MODELS: tuple[str, ...] = MODEL_NAMES  # every WorldPlay checkpoint, by model name
DEFAULT_COMPONENTS_REPO = "hunyuanvideo-community/HunyuanVideo-1.5-480p_i2v"
DEFAULT_WORLDPLAY_REPO = "tencent/HY-WorldPlay"
DEFAULT_RUNPOD_CACHE = "/runpod-volume/huggingface-cache/hub"
COMPONENTS_DIRNAME = "HunyuanVideo-1.5-480p_i2v"
WORLDPLAY_DIRNAME = "HY-WorldPlay"
#: model -> (subfolder in tencent/HY-WorldPlay, checkpoint file name)
TRANSFORMER_FILES: dict[str, tuple[str, str]] = {name: (c.folder, c.file) for name, c in CHECKPOINTS.items()}
#: sub-folders of the diffusers repo the worker may need (never ``transformer/``).
#: the super-resolution stage (480p -> 720p): its repo, local folder name, and files (each beside a config.json)
SR_REPO = "tencent/HunyuanVideo-1.5"
SR_DIRNAME = "HunyuanVideo-1.5"
SR_VERSION = "720p_sr_distilled"
SR_FILES: dict[str, str] = {
    "transformer": f"transformer/{SR_VERSION}/diffusion_pytorch_model.safetensors",
    "upsampler": f"upsampler/{SR_VERSION}/diffusion_pytorch_model.safetensors",
}
COMPONENT_FOLDERS: tuple[str, ...] = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "image_encoder",
                                      "feature_extractor", "vae", "scheduler", "guider")


@dataclass
class ModelPaths:
    """Where each component lives; ``sources`` (local / runpod-cache / hf-cache / download) and ``timings`` by key."""

    components: Path
    transformer: dict[str, Path]
    sources: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # seconds, plus "total"
    sr: Path | None = None  # the super-resolution folder (SR_FILES inside), when resolved
    # the optional fast decoder's weights (pipeline.model_files.fast_decoder.FastDecoderFile: path or reason)
    fast_decoder: object = None

    @property
    def sr_files(self) -> dict[str, Path]:
        """``transformer`` / ``upsampler`` -> the SR stage's weight files (each with config.json beside it)."""
        return {} if self.sr is None else {part: self.sr / rel for part, rel in SR_FILES.items()}

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(m for m in MODELS if m in self.transformer)


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
                                  env("WORLDPLAY_COMPONENTS_REVISION", "main")), **dict.fromkeys(MODELS, worldplay),
                   "sr": (SR_REPO, "main")},
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


def _keys(models: str | Sequence[str], sr: bool = False) -> tuple[str, ...]:
    """"components", the models asked for (in order), then "sr" when asked for."""
    models = (models,) if isinstance(models, str) else tuple(models)
    if not models or any(m != "all" and m not in MODELS for m in models):
        raise ValueError(f"models {models!r}: expected one or more of {', '.join(MODELS)} or 'all'")
    return ("components",) + tuple(m for m in MODELS if m in models or "all" in models) + (("sr",) if sr else ())


def _models(keys: Sequence[str]) -> list[str]:
    return [k for k in keys if k in TRANSFORMER_FILES]


def _dirname(key: str) -> str:  # the local-layout folder of a component
    return {"components": COMPONENTS_DIRNAME, "sr": SR_DIRNAME}.get(key, WORLDPLAY_DIRNAME)


def _rel(key: str) -> str:  # path of a component inside its repo ("": the folder itself)
    return "" if key in ("components", "sr") else "/".join(TRANSFORMER_FILES[key])


def check_sr(path: str | os.PathLike) -> list[str]:
    """Problems with a super-resolution folder: each SR_FILES weight file and the config.json beside it."""
    problems = []
    for rel in SR_FILES.values():
        weights = Path(path) / rel
        for f in (weights, weights.parent / "config.json"):
            if not (f.exists() or f.is_symlink()):
                problems.append(f"{f}: missing")
        if weights.exists():
            problems += check_transformer(weights)
    return problems


def _check(key: str, path: Path) -> list[str]:
    if key == "sr":
        return check_sr(path)
    return check_components(path) if key == "components" else check_transformer(path)


def layout_paths(root: str | os.PathLike, models: str | Sequence[str] = MODELS, *, sr: bool = False) -> ModelPaths:
    """The paths of the local-folder layout under ``root`` (nothing is checked)."""
    root = Path(root)
    keys = _keys(models, sr)
    return ModelPaths(root / COMPONENTS_DIRNAME, {m: root / WORLDPLAY_DIRNAME / _rel(m) for m in _models(keys)},
                      sr=root / SR_DIRNAME if sr else None,
                      fast_decoder=fast_decoder_beside(root / COMPONENTS_DIRNAME))


def check_model_dir(root: str | os.PathLike, models: str | Sequence[str] = MODELS, *, sr: bool = False) -> list[str]:
    """Problems with a local-layout folder for ``models`` (and the SR stage; empty list: complete). No network."""
    paths = layout_paths(root, models, sr=sr)
    return (check_components(paths.components) + [p for t in paths.transformer.values() for p in check_transformer(t)]
            + (check_sr(paths.sr) if paths.sr is not None else []))


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
    sub, rel = _dirname(key), _rel(key)
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
            if not (path.exists() or (key in TRANSFORMER_FILES and path.is_symlink())):
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
        where = ({"local_dir": layout_root / _dirname(key)} if layout_root is not None else {"cache_dir": s.hf_cache})
        if key == "components":
            allow = ["model_index.json"] + [f"{f}/*" for f in COMPONENT_FOLDERS]
        elif key == "sr":
            allow = [p for rel in SR_FILES.values() for p in (rel, rel.rpartition("/")[0] + "/config.json")]
        else:
            allow = [_rel(key), f"{TRANSFORMER_FILES[key][0]}/config.json"]
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


def resolve_models(models: str | Sequence[str] = ("ar_distilled",), *, allow_download: bool | None = None,
                   model_dir: str | os.PathLike | None = None, download_dir: str | os.PathLike | None = None,
                   set_offline: bool = True, sr: bool = False) -> ModelPaths:
    """Find (or fetch) the components for ``models`` (model names, :mod:`pipeline.checkpoints`); the arguments override ``WORLDPLAY_ALLOW_DOWNLOAD`` (default
    off), ``WORLDPLAY_MODEL_DIR`` and ``WORLDPLAY_DOWNLOAD_DIR``. With ``set_offline``, huggingface_hub goes offline
    once all is on disk. An offline mode the entrypoint chose (``WORLDPLAY_AUTO_OFFLINE=1``) is lifted to download.
    ``sr``: also the super-resolution stage (``resolution: "720p"``; ``WORLDPLAY_SR=1``)."""
    from huggingface_hub import constants

    t_start, keys = time.perf_counter(), _keys(models, sr)
    s = Settings.from_env(model_dir, download_dir, allow_download)
    if s.model_dir is not None and not s.model_dir.is_dir():
        logger.warning("WORLDPLAY_MODEL_DIR %s does not exist; looking elsewhere", s.model_dir)
    found, missing = _locate(keys, s)
    if missing:
        offline = constants.is_offline_mode()
        if not s.allow_download or (offline and not env_flag("WORLDPLAY_AUTO_OFFLINE", False)):
            fix = ("HF_HUB_OFFLINE=1 forbids downloading: unset it, or provide the files locally" if s.allow_download
                   else "set WORLDPLAY_ALLOW_DOWNLOAD=1 to fetch only the needed files, or pre-fetch them with `python "
                   f"download_models.py --model {','.join(_models(keys))}{' --sr' if sr else ''} --dest DIR` and set "
                   "WORLDPLAY_MODEL_DIR=DIR")
            raise ModelNotFoundError(f"model files missing or incomplete for {', '.join(keys[1:])} "
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
    paths = ModelPaths(found["components"][0], {m: found[m][0] for m in _models(keys)}, {k: found[k][1] for k in keys},
                       {**{k: found[k][2] for k in keys}, "total": time.perf_counter() - t_start},
                       sr=found["sr"][0] if sr else None, fast_decoder=fast)
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


def prefetch(models: str | Sequence[str], dest: str | os.PathLike, *, allow_download=True,
             sr: bool = False) -> tuple[ModelPaths, dict]:
    """Make ``dest`` a complete local-layout folder for ``models``; return its paths and where each component came from.

    What is complete there is kept; the rest is copied (hard-linked) from the first complete place (not
    ``WORLDPLAY_DOWNLOAD_DIR``), else its needed files are downloaded into ``dest`` when allowed.
    """
    keys, dest, s = _keys(models, sr), Path(dest), Settings.from_env(allow_download=allow_download)
    s.download_dir, s.model_dir = None, None if s.model_dir == dest else s.model_dir  # dest is the target, not a source
    layout = layout_paths(dest, _models(keys) or MODELS[:1], sr=sr)
    layout.transformer = {m: layout.transformer[m] for m in _models(keys)}
    want = {"components": layout.components, **layout.transformer, **({"sr": layout.sr} if sr else {})}
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
        elif key == "sr":  # the SR files only, never the rest of the repo
            for rel in SR_FILES.values():
                for src in (path / rel, (path / rel).parent / "config.json"):
                    (want[key] / rel).parent.mkdir(parents=True, exist_ok=True)
                    _link_or_copy(src, (want[key] / rel).parent / src.name)
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
