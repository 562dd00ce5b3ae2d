"""Offline completeness checks of model files (no network, no tensor loaded).

The Hugging Face loaders trust any file that exists, so a download cut short (a full disk, a killed pod) leaves
a truncated file that only fails deep inside loading. These checks read headers: 20 GB are judged in microseconds.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from pipeline.errors import ModelNotFoundError

WEIGHT_FOLDERS: tuple[str, ...] = ("text_encoder", "text_encoder_2", "image_encoder", "vae")  #: must hold weights


def safetensors_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a complete safetensors file: its size must be 8 + header length + the last data offset."""
    p = Path(path)
    try:
        size = p.stat().st_size  # follows the cache's symlinks to blobs
        if size < 8:
            return f"truncated: {size} bytes, shorter than the 8-byte header length"
        with open(p, "rb") as fh:
            (header_len,) = struct.unpack("<Q", fh.read(8))
            if header_len > min(size - 8, 100 << 20):
                return f"truncated or corrupt: header claims {header_len} bytes, file has {size - 8} after the length"
            header = json.loads(fh.read(header_len).decode("utf-8"))
    except FileNotFoundError:
        return "broken symlink (blob missing)" if p.is_symlink() else "missing"
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    except ValueError as exc:  # bad UTF-8 or JSON
        return f"corrupt header: {exc}"
    if not isinstance(header, dict):
        return "corrupt header: not a JSON object"
    try:
        spans = [[int(v) for v in info["data_offsets"]] for name, info in header.items() if name != "__metadata__"]
    except (KeyError, TypeError, ValueError):
        return "corrupt header: a tensor entry without valid data_offsets"
    if any(len(span) != 2 or not 0 <= span[0] <= span[1] for span in spans):
        return "corrupt header: bad data_offsets"
    expected = 8 + header_len + max((end for _, end in spans), default=0)
    if size != expected:
        return f"{'truncated' if size < expected else 'oversized'}: {size} bytes on disk, the header says {expected}"
    return None


def verify_safetensors(path: str | os.PathLike) -> int:
    """Size of a complete safetensors file; ModelNotFoundError naming the path and the reason otherwise."""
    if problem := safetensors_problem(path):
        raise ModelNotFoundError(f"{path}: {problem}")
    return Path(path).stat().st_size


def _read_json(path: Path) -> tuple[object, str | None]:
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except FileNotFoundError:
        return None, "missing"
    except (OSError, ValueError) as exc:
        return None, f"unreadable JSON: {exc}"


def file_problem(path: str | os.PathLike) -> str | None:
    """What is wrong with one safetensors or JSON file, as far as can be told offline."""
    if str(path).endswith(".safetensors"):
        return safetensors_problem(path)
    return _read_json(Path(path))[1] if str(path).endswith(".json") else None


def check_components(folder: str | os.PathLike) -> list[str]:
    """Problems that make a diffusers components folder unusable (empty list: complete): each component
    ``model_index.json`` lists (not the transformer) needs a config, weights, every indexed shard, whole files."""
    root = Path(folder)
    if not root.is_dir():
        return [f"{root}: folder missing"]
    model_index, bad = _read_json(root / "model_index.json")
    if bad or not isinstance(model_index, dict):
        return [f"{root / 'model_index.json'}: {bad or 'not a JSON object'}"]
    problems: list[str] = []
    for name, value in model_index.items():
        if name.startswith("_") or name == "transformer" or not isinstance(value, list) or None in value:
            continue
        if not (sub := root / name).is_dir():
            problems.append(f"{sub}: folder missing (listed in model_index.json)")
            continue
        files = [p for p in sub.rglob("*") if p.is_file() or p.is_symlink()]
        if not any(p.suffix == ".json" for p in files):
            problems.append(f"{sub}: no configuration file")
        if name in WEIGHT_FOLDERS and not any(p.name.endswith((".safetensors", ".bin")) for p in files):
            problems.append(f"{sub}: no weights")
        for p in files:
            if p.name.endswith(".safetensors.index.json"):
                index, bad = _read_json(p)
                shards = [] if bad else sorted(set((index or {}).get("weight_map", {}).values()))  # type: ignore
                problems += [f"{p}: {bad}"] if bad else [
                    f"{p.parent / s}: missing (named by {p.name})" for s in shards if not (p.parent / s).exists()]
            elif p.name.endswith(".safetensors") and (bad := safetensors_problem(p)):
                problems.append(f"{p}: {bad}")
    return problems


def check_transformer(path: str | os.PathLike) -> list[str]:
    """Problems with one WorldPlay checkpoint file and its optional ``config.json``."""
    cfg = Path(path).parent / "config.json"
    files = [Path(path)] + ([cfg] if cfg.exists() or cfg.is_symlink() else [])
    return [f"{f}: {bad}" for f in files if (bad := file_problem(f))]
