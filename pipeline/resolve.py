"""Model resolution: find, fetch and verify exactly the files the worker needs.

This module is the one home of model location logic; the handler (cold start) and
``download_models.py`` both go through it.

Components resolved (see docs/ARCHITECTURE.md, ``ModelPaths``):

* ``components``: the diffusers-layout repo ``hunyuanvideo-community/HunyuanVideo-1.5-480p_i2v``
  without its ``transformer/`` folder;
* ``ar``: ``tencent/HY-WorldPlay`` ``ar_distilled_action_model/model.safetensors``;
* ``bidirectional``: ``tencent/HY-WorldPlay`` ``bidirectional_model/diffusion_pytorch_model.safetensors``
  (each with a ``config.json`` beside it when the repo has one).

Each required component comes from the first place holding it complete:

1. an explicit local folder (``model_dir`` / ``WORLDPLAY_MODEL_DIR``) in the local layout
   ``<dir>/HunyuanVideo-1.5-480p_i2v/...`` and ``<dir>/HY-WorldPlay/<subfolder>/<file>``;
2. the RunPod model cache (``RUNPOD_HF_CACHE``), a "bundle" repo in the local layout first, then
   the official repos; snapshot of ``refs/main`` first, then the newest snapshots;
3. the standard Hugging Face cache (``HF_HUB_CACHE`` / ``HF_HOME``), same rules;
4. a previous download into ``WORLDPLAY_DOWNLOAD_DIR`` (local layout), when set;
5. a download of only the needed files, when allowed (``WORLDPLAY_ALLOW_DOWNLOAD``).

"Complete" means every required file is present and every safetensors file's header parses
and accounts for the file's exact size (:func:`verify_safetensors`). A truncated file is never
returned: it is re-fetched when downloads are allowed, else reported by ``ModelNotFoundError``.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import shutil
import socket
import struct
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from .errors import ModelDownloadError, ModelNotFoundError
from .settings import env_flag, env_number

logger = logging.getLogger("worldplay.resolve")

# ---------------------------------------------------------------------------------------------
# Names and defaults
# ---------------------------------------------------------------------------------------------

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
    "text_encoder",
    "tokenizer",
    "text_encoder_2",
    "tokenizer_2",
    "image_encoder",
    "feature_extractor",
    "vae",
    "scheduler",
    "guider",
)
#: folders that must hold weights (a folder listed in model_index.json with no weights is incomplete).
WEIGHT_FOLDERS: tuple[str, ...] = ("text_encoder", "text_encoder_2", "image_encoder", "vae")
#: weight formats skipped when the same folder has safetensors (never fetch duplicates).
DUPLICATE_WEIGHT_PATTERNS: tuple[str, ...] = (
    "*.bin", "*.pt", "*.pth", "*.ckpt", "*.msgpack", "*.h5", "*.onnx", "*.onnx_data", "*.gguf",
)

SOURCE_LOCAL = "local"
SOURCE_RUNPOD = "runpod-cache"
SOURCE_HF = "hf-cache"
SOURCE_DOWNLOAD = "download"

#: HTTP statuses worth retrying; everything else (401/403/404 ...) fails at once.
TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})

_MAX_HEADER_BYTES = 100 * 1024 * 1024
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}


# ---------------------------------------------------------------------------------------------
# Public result type
# ---------------------------------------------------------------------------------------------


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
# Environment
# ---------------------------------------------------------------------------------------------


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip()


def hf_cache_dir() -> Path:
    """The standard Hugging Face hub cache, read from the environment at call time."""
    explicit = _env("HF_HUB_CACHE") or _env("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(explicit)).expanduser()
    home = _env("HF_HOME")
    if home:
        return Path(os.path.expandvars(home)).expanduser() / "hub"
    xdg = _env("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "huggingface" / "hub"


def runpod_cache_dir() -> Path:
    return Path(_env("RUNPOD_HF_CACHE", DEFAULT_RUNPOD_CACHE))


@dataclass
class RetryPolicy:
    """Bounded exponential backoff for transient Hub errors."""

    attempts: int = 5
    wait_base: float = 2.0
    wait_max: float = 60.0

    @classmethod
    def from_env(cls) -> "RetryPolicy":
        return cls(
            attempts=max(1, env_number("WORLDPLAY_DOWNLOAD_ATTEMPTS", 5, int)),
            wait_base=max(0.0, env_number("WORLDPLAY_RETRY_WAIT", 2.0, float)),
            wait_max=max(0.0, env_number("WORLDPLAY_RETRY_WAIT_MAX", 60.0, float)),
        )


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
        model_dir = _env("WORLDPLAY_MODEL_DIR")
        download_dir = _env("WORLDPLAY_DOWNLOAD_DIR")
        return cls(
            model_dir=Path(model_dir) if model_dir else None,
            runpod_cache=runpod_cache_dir(),
            hf_cache=hf_cache_dir(),
            download_dir=Path(download_dir) if download_dir else None,
            bundle_repo=_env("WORLDPLAY_BUNDLE_REPO"),
            components_repo=_env("WORLDPLAY_COMPONENTS_REPO", DEFAULT_COMPONENTS_REPO),
            worldplay_repo=_env("WORLDPLAY_REPO", DEFAULT_WORLDPLAY_REPO),
            components_revision=_env("WORLDPLAY_COMPONENTS_REVISION", "main"),
            worldplay_revision=_env("WORLDPLAY_REVISION", "main"),
            allow_download=env_flag("WORLDPLAY_ALLOW_DOWNLOAD", False),
            retry=RetryPolicy.from_env(),
        )


# ---------------------------------------------------------------------------------------------
# Integrity checks (no network)
# ---------------------------------------------------------------------------------------------


def safetensors_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a complete safetensors file, or None when it is.

    Reads only the 8-byte header length and the JSON header; the file must be exactly
    ``8 + header_len + max(data_offsets end)`` bytes long.
    """
    p = Path(path)
    try:
        size = p.stat().st_size  # follows symlinks (HF cache snapshots link to blobs)
    except FileNotFoundError:
        return "missing" if not p.is_symlink() else "broken symlink (blob missing)"
    except OSError as exc:
        return f"cannot stat: {exc.strerror or exc}"
    if size < 8:
        return f"truncated: {size} bytes, shorter than the 8-byte header length"
    try:
        with open(p, "rb") as fh:
            (header_len,) = struct.unpack("<Q", fh.read(8))
            if header_len > _MAX_HEADER_BYTES or header_len > size - 8:
                return (
                    f"truncated or corrupt: header claims {header_len} bytes, "
                    f"file has {size - 8} after the length"
                )
            raw = fh.read(header_len)
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"corrupt header: {exc}"
    if not isinstance(header, dict):
        return "corrupt header: not a JSON object"
    data_end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = (int(v) for v in info["data_offsets"])
            shape = [int(d) for d in info["shape"]]
            dtype = str(info["dtype"])
        except (KeyError, TypeError, ValueError):
            return f"corrupt header: bad entry for tensor {name!r}"
        if begin < 0 or end < begin:
            return f"corrupt header: bad data_offsets for tensor {name!r}"
        itemsize = _DTYPE_BYTES.get(dtype)
        if itemsize is not None:
            count = 1
            for d in shape:
                count *= d
            if (end - begin) != count * itemsize:
                return f"corrupt header: tensor {name!r} spans {end - begin} bytes, shape needs {count * itemsize}"
        data_end = max(data_end, end)
    expected = 8 + header_len + data_end
    if size != expected:
        kind = "truncated" if size < expected else "oversized"
        return f"{kind}: {size} bytes on disk, header accounts for {expected}"
    return None


def verify_safetensors(path: str | os.PathLike) -> int:
    """Check a safetensors file without loading it; return its size in bytes.

    Raises ModelNotFoundError naming the path and the reason when the file is missing,
    truncated or corrupt.
    """
    problem = safetensors_problem(path)
    if problem is not None:
        raise ModelNotFoundError(f"{path}: {problem}")
    return Path(path).stat().st_size


def _json_problem(path: Path) -> str | None:
    try:
        with open(path, encoding="utf-8") as fh:
            json.load(fh)
    except FileNotFoundError:
        return "missing"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"unreadable JSON: {exc}"
    return None


def check_components(folder: str | os.PathLike) -> list[str]:
    """Problems that make a diffusers components folder unusable (empty list: complete).

    Offline and structural: ``model_index.json`` parses; every non-transformer component it
    lists exists with a config; weight folders hold weights; every safetensors shard named by an
    index exists; every safetensors file verifies.
    """
    root = Path(folder)
    if not root.is_dir():
        return [f"{root}: folder missing"]
    index_path = root / "model_index.json"
    problem = _json_problem(index_path)
    if problem:
        return [f"{index_path}: {problem}"]
    with open(index_path, encoding="utf-8") as fh:
        model_index = json.load(fh)
    problems: list[str] = []
    required = [
        name
        for name, value in model_index.items()
        if not name.startswith("_")
        and name != "transformer"
        and isinstance(value, (list, tuple))
        and len(value) == 2
        and value[0] is not None
        and value[1] is not None
    ]
    for name in required:
        sub = root / name
        if not sub.is_dir():
            problems.append(f"{sub}: folder missing (listed in model_index.json)")
            continue
        files = [p for p in sub.rglob("*") if p.is_file() or p.is_symlink()]
        if not any(p.suffix == ".json" for p in files):
            problems.append(f"{sub}: no configuration file")
        if name in WEIGHT_FOLDERS and not any(p.name.endswith((".safetensors", ".bin")) for p in files):
            problems.append(f"{sub}: no weights")
        for idx in (p for p in files if p.name.endswith(".safetensors.index.json")):
            bad = _json_problem(idx)
            if bad:
                problems.append(f"{idx}: {bad}")
                continue
            with open(idx, encoding="utf-8") as fh:
                weight_map = json.load(fh).get("weight_map", {})
            for shard in sorted(set(weight_map.values())):
                if not (idx.parent / shard).exists():
                    problems.append(f"{idx.parent / shard}: missing (named by {idx.name})")
        for st in (p for p in files if p.name.endswith(".safetensors")):
            bad = safetensors_problem(st)
            if bad:
                problems.append(f"{st}: {bad}")
    return problems


def check_transformer(path: str | os.PathLike) -> list[str]:
    """Problems with one WorldPlay checkpoint file (and its optional ``config.json``)."""
    p = Path(path)
    problems = []
    bad = safetensors_problem(p)
    if bad:
        problems.append(f"{p}: {bad}")
    cfg = p.parent / "config.json"
    if cfg.exists() or cfg.is_symlink():
        bad = _json_problem(cfg)
        if bad:
            problems.append(f"{cfg}: {bad}")
    return problems


def _norm_modes(modes: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(modes, str):
        modes = (modes,)
    out: list[str] = []
    for m in modes:
        if m == "all":
            out.extend(MODES)
        elif m in MODES:
            out.append(m)
        else:
            raise ValueError(f"unknown mode {m!r}: expected one of {', '.join(MODES)} or 'all'")
    if not out:
        raise ValueError("at least one mode is required")
    return tuple(m for m in MODES if m in out)


def _component_keys(modes: tuple[str, ...]) -> tuple[str, ...]:
    return ("components",) + modes


def layout_paths(root: str | os.PathLike, modes: str | Sequence[str] = MODES) -> ModelPaths:
    """The paths of the local-folder layout under ``root`` (nothing is checked)."""
    root = Path(root)
    modes = _norm_modes(modes)
    return ModelPaths(
        components=root / COMPONENTS_DIRNAME,
        transformer={m: root / WORLDPLAY_DIRNAME / TRANSFORMER_FILES[m][0] / TRANSFORMER_FILES[m][1] for m in modes},
    )


def check_model_dir(root: str | os.PathLike, modes: str | Sequence[str] = MODES) -> list[str]:
    """Problems with a local-layout folder for ``modes`` (empty list: complete). No network."""
    paths = layout_paths(root, modes)
    problems = check_components(paths.components)
    for mode in paths.transformer:
        problems.extend(check_transformer(paths.transformer[mode]))
    return problems


# ---------------------------------------------------------------------------------------------
# Candidate places (local folder, cache snapshots)
# ---------------------------------------------------------------------------------------------


@dataclass
class _Place:
    source: str  # local / runpod-cache / hf-cache
    label: str  # for logs and errors
    components: Path | None = None  # components folder, when this place can hold it
    worldplay_root: Path | None = None  # folder holding <subfolder>/<file>

    def path_for(self, key: str) -> Path | None:
        if key == "components":
            return self.components
        if self.worldplay_root is None:
            return None
        sub, name = TRANSFORMER_FILES[key]
        return self.worldplay_root / sub / name


def _repo_cache_folder(cache: Path, repo_id: str) -> Path:
    return cache / ("models--" + repo_id.replace("/", "--"))


def snapshot_dirs(repo_folder: str | os.PathLike, revision: str = "main") -> list[Path]:
    """Snapshots of a cached repo, best first: the one ``refs/<revision>`` names, then newest first."""
    repo_folder = Path(repo_folder)
    snaps = repo_folder / "snapshots"
    if not snaps.is_dir():
        return []
    ordered: list[Path] = []
    if (snaps / revision).is_dir():  # a commit hash given directly
        ordered.append(snaps / revision)
    ref = repo_folder / "refs" / revision
    if ref.is_file():
        try:
            commit = ref.read_text().strip()
        except OSError:
            commit = ""
        if commit and (snaps / commit).is_dir() and (snaps / commit) not in ordered:
            ordered.append(snaps / commit)
    others = []
    for d in snaps.iterdir():
        if d.is_dir() and d not in ordered:
            try:
                others.append((d.stat().st_mtime, d.name, d))
            except OSError:
                continue
    others.sort(key=lambda t: (t[0], t[1]), reverse=True)
    ordered.extend(d for _, _, d in others)
    return ordered


def _is_bundle_snapshot(snapshot: Path) -> bool:
    return (snapshot / COMPONENTS_DIRNAME).is_dir() or (snapshot / WORLDPLAY_DIRNAME).is_dir()


def _cache_places(cache: Path | None, source: str, settings: Settings, discover_bundles: bool) -> list[_Place]:
    if cache is None or not cache.is_dir():
        return []
    places: list[_Place] = []
    bundle_folders: list[Path] = []
    if settings.bundle_repo:
        bundle_folders.append(_repo_cache_folder(cache, settings.bundle_repo))
    if discover_bundles:
        official = {
            _repo_cache_folder(cache, settings.components_repo),
            _repo_cache_folder(cache, settings.worldplay_repo),
        }
        try:
            found = sorted(p for p in cache.iterdir() if p.name.startswith("models--") and p.is_dir())
        except OSError:
            found = []
        bundle_folders.extend(p for p in found if p not in official and p not in bundle_folders)
    for folder in bundle_folders:
        for snap in snapshot_dirs(folder):
            if _is_bundle_snapshot(snap):
                places.append(
                    _Place(source, f"{source} bundle {folder.name}@{snap.name[:12]}",
                           components=snap / COMPONENTS_DIRNAME, worldplay_root=snap / WORLDPLAY_DIRNAME)
                )
    comp_folder = _repo_cache_folder(cache, settings.components_repo)
    for snap in snapshot_dirs(comp_folder, settings.components_revision):
        places.append(_Place(source, f"{source} {comp_folder.name}@{snap.name[:12]}", components=snap))
    wp_folder = _repo_cache_folder(cache, settings.worldplay_repo)
    for snap in snapshot_dirs(wp_folder, settings.worldplay_revision):
        places.append(_Place(source, f"{source} {wp_folder.name}@{snap.name[:12]}", worldplay_root=snap))
    return places


def _layout_place(root: Path, source: str, label: str) -> _Place:
    return _Place(source, label, components=root / COMPONENTS_DIRNAME, worldplay_root=root / WORLDPLAY_DIRNAME)


def _places(settings: Settings) -> list[_Place]:
    places: list[_Place] = []
    if settings.model_dir is not None:
        if not settings.model_dir.is_dir():
            logger.warning("WORLDPLAY_MODEL_DIR %s does not exist; looking elsewhere", settings.model_dir)
        places.append(_layout_place(settings.model_dir, SOURCE_LOCAL, f"local folder {settings.model_dir}"))
    seen: set[Path] = set()
    for cache, source, discover in (
        (settings.runpod_cache, SOURCE_RUNPOD, True),
        (settings.hf_cache, SOURCE_HF, False),
    ):
        if cache is None:
            continue
        key = cache.resolve() if cache.exists() else cache
        if key in seen:
            continue
        seen.add(key)
        places.extend(_cache_places(cache, source, settings, discover))
    if settings.download_dir is not None and settings.download_dir != settings.model_dir:
        places.append(_layout_place(settings.download_dir, SOURCE_LOCAL, f"download folder {settings.download_dir}"))
    return places


def _check(key: str, path: Path) -> list[str]:
    return check_components(path) if key == "components" else check_transformer(path)


def _find_local(key: str, places: list[_Place]) -> tuple[_Place | None, Path | None, list[str]]:
    """First place holding ``key`` complete, else (None, None, problems seen)."""
    problems: list[str] = []
    for place in places:
        path = place.path_for(key)
        if path is None:
            continue
        if key == "components" and not path.exists():
            continue
        if key != "components" and not path.exists() and not path.is_symlink():
            continue
        bad = _check(key, path)
        if not bad:
            return place, path, problems
        logger.warning("%s in %s is incomplete: %s", key, place.label, "; ".join(bad))
        problems.extend(f"[{place.label}] {b}" for b in bad)
    return None, None, problems


# ---------------------------------------------------------------------------------------------
# Hub offline switch
# ---------------------------------------------------------------------------------------------


def set_hub_offline(offline: bool = True) -> None:
    """Switch the Hugging Face libraries to (or out of) offline mode at run time.

    huggingface_hub reads ``HF_HUB_OFFLINE`` once at import; its request hook checks
    ``huggingface_hub.constants.is_offline_mode()`` (i.e. ``constants.HF_HUB_OFFLINE``) on
    every request, and diffusers copied the flag into a few modules. Set all of them, and the
    environment variable for libraries imported later.
    """
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    else:
        os.environ.pop("HF_HUB_OFFLINE", None)
        os.environ.pop("TRANSFORMERS_OFFLINE", None)
    try:
        from huggingface_hub import constants

        constants.HF_HUB_OFFLINE = bool(offline)
    except ImportError:  # pragma: no cover - huggingface_hub is a hard dependency
        pass
    for name, module in list(sys.modules.items()):
        if module is None or not (name.startswith("diffusers") or name.startswith("transformers")):
            continue
        if isinstance(getattr(module, "HF_HUB_OFFLINE", None), bool):
            try:
                setattr(module, "HF_HUB_OFFLINE", bool(offline))
            except (AttributeError, TypeError):
                pass


def hub_offline() -> bool:
    try:
        from huggingface_hub import constants

        return bool(constants.is_offline_mode())
    except ImportError:  # pragma: no cover
        return env_flag("HF_HUB_OFFLINE", False)


# ---------------------------------------------------------------------------------------------
# Hub access with retries
# ---------------------------------------------------------------------------------------------


def _exc_chain(exc: BaseException) -> Iterator[BaseException]:
    seen = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def _http_status(exc: BaseException) -> int | None:
    for e in _exc_chain(exc):
        response = getattr(e, "response", None)
        status = getattr(response, "status_code", None)
        if isinstance(status, int):
            return status
    return None


def _transient_types() -> tuple[type, ...]:
    types: list[type] = [TimeoutError, ConnectionError, socket.timeout]
    for mod_name, attrs in (
        ("httpx2", ("TimeoutException", "TransportError")),
        ("httpx", ("TimeoutException", "TransportError")),
        ("requests.exceptions", ("ConnectionError", "Timeout", "ChunkedEncodingError")),
        ("huggingface_hub.errors", ("XetDownloadError",)),
    ):
        try:
            module = __import__(mod_name, fromlist=list(attrs))
        except ImportError:
            continue
        for attr in attrs:
            t = getattr(module, attr, None)
            if isinstance(t, type):
                types.append(t)
    return tuple(types)


def is_transient_error(exc: BaseException) -> bool:
    """True for errors worth retrying: timeouts, connection resets, 408/429/5xx."""
    try:
        from huggingface_hub.errors import OfflineModeIsEnabled
    except ImportError:  # pragma: no cover
        OfflineModeIsEnabled = ()  # type: ignore[assignment]
    status = _http_status(exc)
    if status is not None:
        return status in TRANSIENT_STATUS
    transient = _transient_types()
    for e in _exc_chain(exc):
        if OfflineModeIsEnabled and isinstance(e, OfflineModeIsEnabled):
            return False
        if isinstance(e, OSError) and getattr(e, "errno", None) in (28,):  # ENOSPC
            return False
        if isinstance(e, transient):
            return True
    return False


def _token_configured() -> bool:
    try:
        from huggingface_hub import get_token

        return get_token() is not None
    except Exception:  # noqa: BLE001 - a broken token file must not break resolution
        return bool(_env("HF_TOKEN"))


def _scrub(text: str) -> str:
    """Remove any credential from a message (defensive: Hub errors should not carry it)."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        secret = os.environ.get(name)
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return _scrub(f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": "))


def _permanent_error(exc: BaseException, repo_id: str, filename: str | None, revision: str) -> ModelDownloadError:
    what = f"{repo_id}" + (f" file {filename!r}" if filename else "") + f" (revision {revision})"
    status = _http_status(exc)
    names = {type(e).__name__ for e in _exc_chain(exc)}
    token = "a token is configured but was refused" if _token_configured() else "no HF_TOKEN is set"
    licence = f"https://huggingface.co/{repo_id}"
    if "GatedRepoError" in names or status == 403:
        hint = (
            f"access denied (403, gated repo): accept the licence at {licence} with the account whose "
            f"token is in HF_TOKEN ({token})"
        )
    elif status == 401:
        hint = f"unauthorized (401): set HF_TOKEN to a valid read token ({token}); gated repos also need the licence accepted at {licence}"
    elif "RemoteEntryNotFoundError" in names or "EntryNotFoundError" in names:
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


def _retrying_call(fn: Callable, *, what: tuple[str, str | None, str], policy: RetryPolicy):
    """Call ``fn()`` with tenacity: retry transient errors with exponential backoff, bounded."""
    import tenacity

    repo_id, filename, revision = what

    def _log_retry(state: "tenacity.RetryCallState") -> None:
        exc = state.outcome.exception() if state.outcome else None
        logger.warning(
            "transient error fetching %s%s (attempt %d/%d): %s; retrying in %.1fs",
            repo_id, f"/{filename}" if filename else "", state.attempt_number, policy.attempts,
            _first_line(exc) if exc else "?", state.next_action.sleep if state.next_action else 0.0,
        )

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(policy.attempts),
        wait=tenacity.wait_exponential(multiplier=policy.wait_base, min=0, max=policy.wait_max),
        retry=tenacity.retry_if_exception(is_transient_error),
        before_sleep=_log_retry,
        sleep=lambda seconds: _sleep(seconds),
        reraise=True,
    )
    try:
        return retrying(fn)
    except ModelDownloadError:
        raise
    except Exception as exc:  # noqa: BLE001 - converted to a typed error below
        if is_transient_error(exc):
            raise ModelDownloadError(
                f"cannot fetch {repo_id}" + (f" file {filename!r}" if filename else "")
                + f" (revision {revision}): still failing after {policy.attempts} attempts "
                f"({_first_line(exc)}); the Hub may be down: retry later or provide the files locally"
            ) from None
        raise _permanent_error(exc, repo_id, filename, revision) from None


@dataclass
class RemoteFile:
    path: str  # path in the repo
    size: int | None


def _hub_api():
    from huggingface_hub import HfApi

    return HfApi()


def _resolve_commit(repo_id: str, revision: str, policy: RetryPolicy) -> str:
    """The commit hash ``revision`` points at (pins every file of one download to one commit)."""
    info = _retrying_call(
        lambda: _hub_api().repo_info(repo_id, revision=revision, repo_type="model"),
        what=(repo_id, None, revision), policy=policy,
    )
    return getattr(info, "sha", None) or revision


def _select_component_files(entries: Iterable[RemoteFile]) -> list[RemoteFile]:
    wanted = [
        f for f in entries
        if f.path == "model_index.json" or f.path.split("/", 1)[0] in COMPONENT_FOLDERS
    ]
    folders_with_st: set[str] = {f.path.rsplit("/", 1)[0] for f in wanted if f.path.endswith(".safetensors")}
    out = []
    for f in wanted:
        folder = f.path.rsplit("/", 1)[0] if "/" in f.path else ""
        name = f.path.rsplit("/", 1)[-1]
        if folder in folders_with_st and any(fnmatch.fnmatch(name, pat) for pat in DUPLICATE_WEIGHT_PATTERNS):
            continue
        out.append(f)
    return sorted(out, key=lambda f: f.path)


def list_needed_files(key: str, settings: Settings, commit: str) -> tuple[str, list[RemoteFile]]:
    """(repo id, files) the Hub holds for one component at ``commit``, with sizes."""
    policy = settings.retry
    if key == "components":
        repo = settings.components_repo

        def _list():
            from huggingface_hub.hf_api import RepoFolder

            out = []
            for entry in _hub_api().list_repo_tree(repo, recursive=True, revision=commit, repo_type="model"):
                if isinstance(entry, RepoFolder):
                    continue
                lfs = getattr(entry, "lfs", None)
                out.append(RemoteFile(entry.path, getattr(lfs, "size", None) or getattr(entry, "size", None)))
            return out

        entries = _retrying_call(_list, what=(repo, None, commit), policy=policy)
        files = _select_component_files(entries)
        if not any(f.path == "model_index.json" for f in files):
            raise ModelDownloadError(f"{repo} (revision {commit}) has no model_index.json: is WORLDPLAY_COMPONENTS_REPO a diffusers repo?")
        return repo, files
    repo = settings.worldplay_repo
    sub, name = TRANSFORMER_FILES[key]
    wanted = [f"{sub}/{name}", f"{sub}/config.json"]

    def _info():
        from huggingface_hub.hf_api import RepoFolder

        return [
            RemoteFile(e.path, getattr(getattr(e, "lfs", None), "size", None) or getattr(e, "size", None))
            for e in _hub_api().get_paths_info(repo, wanted, revision=commit, repo_type="model")
            if not isinstance(e, RepoFolder)
        ]

    entries = _retrying_call(_info, what=(repo, f"{sub}/{name}", commit), policy=policy)
    if not any(e.path == wanted[0] for e in entries):
        raise ModelDownloadError(
            f"cannot fetch {repo} file {wanted[0]!r} (revision {commit}): not in the repo; check WORLDPLAY_REPO / WORLDPLAY_REVISION"
        )
    return repo, sorted(entries, key=lambda f: f.path)


def hf_hub_download(*args, **kwargs):
    """Indirection over ``huggingface_hub.hf_hub_download`` (tests replace it)."""
    from huggingface_hub import hf_hub_download as _download

    return _download(*args, **kwargs)


def _existing_ancestor(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p.parent != p:
        p = p.parent
    return p


def _fmt_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def check_disk_space(target: Path, needed: int) -> None:
    """Fail early when ``target``'s filesystem lacks ``needed`` bytes."""
    if needed <= 0:
        return
    anchor = _existing_ancestor(target)
    free = shutil.disk_usage(anchor).free
    if free < needed:
        raise ModelDownloadError(
            f"not enough disk space in {anchor}: need {needed} bytes ({_fmt_bytes(needed)}), "
            f"{free} bytes free ({_fmt_bytes(free)}); free space, enlarge the container disk, "
            f"or point WORLDPLAY_DOWNLOAD_DIR / HF_HUB_CACHE elsewhere"
        )


def _valid_copy(path: Path | None, remote: RemoteFile) -> bool:
    if path is None or not path.exists():
        return False
    try:
        size = path.stat().st_size
    except OSError:
        return False
    if remote.size is not None and size != remote.size:
        return False
    if path.name.endswith(".safetensors"):
        return safetensors_problem(path) is None
    return True


@dataclass
class _Target:
    """Where a download lands: the HF cache (cache_dir) or a local-layout folder (local_dir)."""

    cache_dir: Path | None = None
    layout_root: Path | None = None

    def local_dir(self, key: str) -> Path | None:
        if self.layout_root is None:
            return None
        return self.layout_root / (COMPONENTS_DIRNAME if key == "components" else WORLDPLAY_DIRNAME)

    def anchor(self) -> Path:
        return self.layout_root if self.layout_root is not None else self.cache_dir  # type: ignore[return-value]

    def existing(self, repo: str, commit: str, key: str, filename: str) -> Path | None:
        if self.layout_root is not None:
            return self.local_dir(key) / filename  # type: ignore[operator]
        return _repo_cache_folder(self.cache_dir, repo) / "snapshots" / commit / filename  # type: ignore[arg-type]


@dataclass
class _DownloadPlan:
    """The files one component still needs from the Hub (planned before any byte is fetched)."""

    key: str
    repo: str
    revision: str
    commit: str
    target: _Target
    todo: list[tuple[RemoteFile, bool]]  # (file, force: a bad copy is on disk)

    @property
    def needed_bytes(self) -> int:
        return sum(f.size or 0 for f, _ in self.todo)


def _plan_download(key: str, settings: Settings, target: _Target) -> _DownloadPlan:
    policy = settings.retry
    repo = settings.components_repo if key == "components" else settings.worldplay_repo
    revision = settings.components_revision if key == "components" else settings.worldplay_revision
    commit = _resolve_commit(repo, revision, policy)
    repo, files = list_needed_files(key, settings, commit)
    todo: list[tuple[RemoteFile, bool]] = []
    for f in files:
        have = target.existing(repo, commit, key, f.path)
        if _valid_copy(have, f):
            continue
        todo.append((f, bool(have is not None and (have.exists() or have.is_symlink()))))
    return _DownloadPlan(key, repo, revision, commit, target, todo)


def _execute_download(plan: _DownloadPlan, policy: RetryPolicy, *, tqdm_class=None) -> tuple[Path, int]:
    """Fetch a planned component's files; return (component path, bytes fetched)."""
    key, repo, commit, target = plan.key, plan.repo, plan.commit, plan.target
    if plan.todo:
        logger.info("downloading %d file(s) of %s (%s) for %s", len(plan.todo), repo, _fmt_bytes(plan.needed_bytes), key)
    fetched = 0
    for f, force in plan.todo:
        kwargs = dict(repo_id=repo, filename=f.path, revision=commit, repo_type="model", force_download=force)
        if tqdm_class is not None:
            kwargs["tqdm_class"] = tqdm_class
        if target.layout_root is not None:
            kwargs["local_dir"] = str(target.local_dir(key))
        else:
            kwargs["cache_dir"] = str(target.cache_dir)
        if force:
            logger.warning("re-fetching %s/%s: the copy on disk is incomplete or corrupt", repo, f.path)
        _retrying_call(lambda kw=kwargs: hf_hub_download(**kw), what=(repo, f.path, commit), policy=policy)
        fetched += f.size or 0

    if target.layout_root is not None:
        base = target.local_dir(key)
    else:
        base = _repo_cache_folder(target.cache_dir, repo) / "snapshots" / commit  # type: ignore[arg-type]
        _write_ref(_repo_cache_folder(target.cache_dir, repo), plan.revision, commit)  # type: ignore[arg-type]
    path = base if key == "components" else base / TRANSFORMER_FILES[key][0] / TRANSFORMER_FILES[key][1]  # type: ignore[operator]
    bad = _check(key, path)
    if bad:
        raise ModelDownloadError(f"{key} from {repo} is still incomplete after downloading: " + "; ".join(bad))
    return path, fetched


def _download_components(
    keys: Sequence[str], settings: Settings, target: _Target, *, tqdm_class=None
) -> dict[str, tuple[Path, int, float]]:
    """Plan every component (Hub metadata only), check the disk once for the total, then fetch.

    Returns key -> (path, bytes fetched, seconds).
    """
    t0 = time.perf_counter()
    plans = [_plan_download(key, settings, target) for key in keys]
    check_disk_space(target.anchor(), sum(p.needed_bytes for p in plans))
    plan_seconds = (time.perf_counter() - t0) / max(1, len(plans))
    out: dict[str, tuple[Path, int, float]] = {}
    for plan in plans:
        t1 = time.perf_counter()
        path, fetched = _execute_download(plan, settings.retry, tqdm_class=tqdm_class)
        out[plan.key] = (path, fetched, plan_seconds + time.perf_counter() - t1)
    return out


def _write_ref(repo_folder: Path, revision: str, commit: str) -> None:
    """Record ``refs/<revision> -> commit`` the way the HF cache does (downloads by commit skip it)."""
    if revision == commit or len(revision) == 40 and all(c in "0123456789abcdef" for c in revision):
        return
    try:
        ref = repo_folder / "refs" / revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        if not ref.is_file() or ref.read_text().strip() != commit:
            ref.write_text(commit)
    except OSError as exc:
        logger.debug("could not write %s ref: %s", revision, exc)


def _download_target(settings: Settings) -> _Target:
    if settings.download_dir is not None:
        return _Target(layout_root=settings.download_dir)
    cache = settings.hf_cache or hf_cache_dir()
    anchor = _existing_ancestor(cache)
    if not os.access(anchor, os.W_OK):
        raise ModelDownloadError(
            f"cannot download: the Hugging Face cache {cache} is not writable (read-only mount?); "
            "set WORLDPLAY_DOWNLOAD_DIR to a writable folder"
        )
    return _Target(cache_dir=cache)


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


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
    ``download_dir`` override ``WORLDPLAY_MODEL_DIR`` / ``WORLDPLAY_DOWNLOAD_DIR``. When every
    component is on disk and ``set_offline`` is true, the Hugging Face libraries are switched to
    offline mode (:func:`set_hub_offline`) so later loaders never call the Hub.

    Raises ModelNotFoundError (not on disk, download not allowed) or ModelDownloadError.
    """
    t_start = time.perf_counter()
    modes = _norm_modes(modes)
    s = replace(settings) if settings is not None else Settings.from_env()
    if model_dir is not None:
        s.model_dir = Path(model_dir)
    if download_dir is not None:
        s.download_dir = Path(download_dir)
    if allow_download is not None:
        s.allow_download = bool(allow_download)

    places = _places(s)
    found: dict[str, Path] = {}
    sources: dict[str, str] = {}
    timings: dict[str, float] = {}
    missing: dict[str, list[str]] = {}
    for key in _component_keys(modes):
        t0 = time.perf_counter()
        place, path, problems = _find_local(key, places)
        if place is not None and path is not None:
            found[key] = path
            sources[key] = place.source
            timings[key] = time.perf_counter() - t0
            logger.info("%s: %s from %s (%.3fs)", key, path, place.label, timings[key])
        else:
            missing[key] = problems

    if missing:
        env_offline = hub_offline()
        auto_offline = env_flag("WORLDPLAY_AUTO_OFFLINE", False)
        if not s.allow_download or (env_offline and not auto_offline):
            raise ModelNotFoundError(_not_found_message(missing, s, modes, env_offline))
        target = _download_target(s)
        if env_offline:
            logger.info("lifting the automatic offline mode to download %s", ", ".join(missing))
            set_hub_offline(False)
        try:
            for key, (path, fetched, seconds) in _download_components(
                list(missing), s, target, tqdm_class=tqdm_class
            ).items():
                found[key] = path
                sources[key] = SOURCE_DOWNLOAD
                timings[key] = seconds
                logger.info("%s: %s downloaded (%s, %.1fs)", key, path, _fmt_bytes(fetched), seconds)
        finally:
            if env_offline:
                set_hub_offline(True)

    timings["total"] = time.perf_counter() - t_start
    if set_offline:
        set_hub_offline(True)
    logger.info(
        "models resolved in %.2fs: %s",
        timings["total"], ", ".join(f"{k}={sources[k]}" for k in _component_keys(modes)),
    )
    return ModelPaths(
        components=found["components"],
        transformer={m: found[m] for m in modes},
        sources=sources,
        timings=timings,
    )


def _not_found_message(missing: dict[str, list[str]], s: Settings, modes: tuple[str, ...], offline: bool) -> str:
    looked = [
        f"WORLDPLAY_MODEL_DIR={s.model_dir}" if s.model_dir else "WORLDPLAY_MODEL_DIR (unset)",
        f"RunPod cache {s.runpod_cache}",
        f"HF cache {s.hf_cache}",
    ]
    if s.download_dir:
        looked.append(f"WORLDPLAY_DOWNLOAD_DIR={s.download_dir}")
    parts = []
    for key, problems in missing.items():
        detail = "; ".join(problems) if problems else "not found"
        parts.append(f"{key}: {detail}")
    if offline and s.allow_download:
        fix = "HF_HUB_OFFLINE=1 forbids downloading: unset it, or provide the files locally"
    else:
        fix = (
            "set WORLDPLAY_ALLOW_DOWNLOAD=1 to fetch only the needed files, or pre-fetch them with "
            f"`python download_models.py --mode {'all' if len(modes) > 1 else modes[0]} --dest DIR` and set WORLDPLAY_MODEL_DIR=DIR"
        )
    return f"model files missing or incomplete for mode(s) {', '.join(modes)} ({' | '.join(parts)}); looked in: {', '.join(looked)}; {fix}"


# ---------------------------------------------------------------------------------------------
# Pre-fetch into a local-layout folder (download_models.py, image baking, bundles)
# ---------------------------------------------------------------------------------------------


@dataclass
class FetchReport:
    """What :func:`prefetch` did for each component."""

    paths: ModelPaths
    origins: dict[str, str]  # key -> human-readable origin (already present / copied from X / downloaded from repo)
    total_bytes: int


def _copy_tree(src: Path, dst: Path, *, skip_top: Iterable[str] = ()) -> None:
    skip = set(skip_top)
    for item in sorted(src.rglob("*")):
        rel = item.relative_to(src)
        if rel.parts[0] in skip or rel.parts[0] == ".cache":
            continue
        if item.is_dir():
            continue
        _copy_file(item, dst / rel)


def _copy_file(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    real = src.resolve()
    tmp = dst.with_name(dst.name + ".partial")
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(real, tmp)  # same filesystem: no copy at all
    except OSError:
        shutil.copyfile(real, tmp)
    os.replace(tmp, dst)


def _dir_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and ".cache" not in p.relative_to(path).parts)


def prefetch(
    modes: str | Sequence[str],
    dest: str | os.PathLike,
    *,
    allow_download: bool = True,
    settings: Settings | None = None,
    tqdm_class=None,
) -> FetchReport:
    """Make ``dest`` a complete local-layout folder for ``modes``.

    Each component already complete in ``dest`` is kept; else it is copied (hard-linked when
    possible) from the first complete local place (``WORLDPLAY_MODEL_DIR``, RunPod cache, HF
    cache); else only its needed files are downloaded into ``dest``.
    """
    modes = _norm_modes(modes)
    dest = Path(dest)
    s = replace(settings) if settings is not None else Settings.from_env()
    s.allow_download = allow_download
    s.download_dir = None  # dest is the target; do not treat another download folder as a source
    others = [p for p in _places(s) if not (p.source == SOURCE_LOCAL and p.components == dest / COMPONENTS_DIRNAME)]
    layout = layout_paths(dest, modes)
    target = _Target(layout_root=dest)
    origins: dict[str, str] = {}
    sources: dict[str, str] = {}
    timings: dict[str, float] = {}
    to_download: list[str] = []
    for key in _component_keys(modes):
        t0 = time.perf_counter()
        want = layout.components if key == "components" else layout.transformer[key]
        if (want.exists() or key == "components") and not _check(key, want):
            origins[key] = f"already present in {dest}"
            sources[key] = SOURCE_LOCAL
        else:
            place, path, problems = _find_local(key, others)
            if place is not None and path is not None:
                if key == "components":
                    _copy_tree(path, want, skip_top=("transformer",))
                else:
                    _copy_file(path, want)
                    cfg = path.parent / "config.json"
                    if cfg.exists():
                        _copy_file(cfg, want.parent / "config.json")
                origins[key] = f"copied from {place.label}"
                sources[key] = place.source
            elif allow_download:
                to_download.append(key)
                continue
            else:
                raise ModelNotFoundError(_not_found_message({key: problems}, s, modes, hub_offline()))
            bad = _check(key, want)
            if bad:
                raise ModelNotFoundError(f"{key} in {dest} is incomplete: " + "; ".join(bad))
        timings[key] = time.perf_counter() - t0
        logger.info("%s: %s (%.1fs)", key, origins[key], timings[key])
    if to_download:
        for key, (_, fetched, seconds) in _download_components(to_download, s, target, tqdm_class=tqdm_class).items():
            repo = s.components_repo if key == "components" else s.worldplay_repo
            origins[key] = f"downloaded from https://huggingface.co/{repo} ({_fmt_bytes(fetched)} fetched)"
            sources[key] = SOURCE_DOWNLOAD
            timings[key] = seconds
            logger.info("%s: %s (%.1fs)", key, origins[key], seconds)
    origins = {k: origins[k] for k in _component_keys(modes)}
    total = _dir_size(layout.components) + sum(
        _dir_size(p) + (_dir_size(p.parent / "config.json") if (p.parent / "config.json").exists() else 0)
        for p in layout.transformer.values()
    )
    layout.sources, layout.timings = sources, timings
    return FetchReport(paths=layout, origins=origins, total_bytes=total)


__all__ = [
    "MODES",
    "COMPONENTS_DIRNAME",
    "WORLDPLAY_DIRNAME",
    "TRANSFORMER_FILES",
    "DEFAULT_COMPONENTS_REPO",
    "DEFAULT_WORLDPLAY_REPO",
    "DEFAULT_RUNPOD_CACHE",
    "ModelPaths",
    "Settings",
    "RetryPolicy",
    "FetchReport",
    "resolve_models",
    "prefetch",
    "layout_paths",
    "check_model_dir",
    "check_components",
    "check_transformer",
    "verify_safetensors",
    "safetensors_problem",
    "set_hub_offline",
    "hub_offline",
    "is_transient_error",
    "check_disk_space",
    "snapshot_dirs",
    "hf_cache_dir",
    "runpod_cache_dir",
]
