"""Offline completeness checks of model files (no network, no tensor loaded).

The Hugging Face libraries trust any file that exists; a download cut short (a full disk, a killed
pod) leaves a truncated safetensors file that only fails deep inside loading. These checks read
headers only, so a 20 GB checkpoint is judged in microseconds.
"""

from __future__ import annotations

import json
import os
import struct
from math import prod
from pathlib import Path

from .errors import ModelNotFoundError

#: folders of the components repo that must hold weights.
WEIGHT_FOLDERS: tuple[str, ...] = ("text_encoder", "text_encoder_2", "image_encoder", "vae")

_MAX_HEADER_BYTES = 100 * 1024 * 1024
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}


def safetensors_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a complete safetensors file, or None when it is.

    Reads the 8-byte header length and the JSON header only; the file must be exactly
    ``8 + header_len + max(data_offsets end)`` bytes long and each tensor's span must fit its shape.
    """
    p = Path(path)
    try:
        size = p.stat().st_size  # follows symlinks (cache snapshots link to blobs)
    except FileNotFoundError:
        return "broken symlink (blob missing)" if p.is_symlink() else "missing"
    except OSError as exc:
        return f"cannot stat: {exc.strerror or exc}"
    if size < 8:
        return f"truncated: {size} bytes, shorter than the 8-byte header length"
    try:
        with open(p, "rb") as fh:
            (header_len,) = struct.unpack("<Q", fh.read(8))
            if header_len > _MAX_HEADER_BYTES or header_len > size - 8:
                return f"truncated or corrupt: header claims {header_len} bytes, file has {size - 8} after the length"
            header = json.loads(fh.read(header_len).decode("utf-8"))
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
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
            count = prod(int(d) for d in info["shape"])
            itemsize = _DTYPE_BYTES.get(str(info["dtype"]))
        except (KeyError, TypeError, ValueError):
            return f"corrupt header: bad entry for tensor {name!r}"
        if begin < 0 or end < begin:
            return f"corrupt header: bad data_offsets for tensor {name!r}"
        if itemsize is not None and end - begin != count * itemsize:
            return f"corrupt header: tensor {name!r} spans {end - begin} bytes, shape needs {count * itemsize}"
        data_end = max(data_end, end)
    expected = 8 + header_len + data_end
    if size != expected:
        return f"{'truncated' if size < expected else 'oversized'}: {size} bytes on disk, header accounts for {expected}"
    return None


def verify_safetensors(path: str | os.PathLike) -> int:
    """Size in bytes of a complete safetensors file; ModelNotFoundError naming path and reason otherwise."""
    problem = safetensors_problem(path)
    if problem is not None:
        raise ModelNotFoundError(f"{path}: {problem}")
    return Path(path).stat().st_size


def _read_json(path: Path) -> tuple[object, str | None]:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh), None
    except FileNotFoundError:
        return None, "missing"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"unreadable JSON: {exc}"


def file_problem(path: str | os.PathLike) -> str | None:
    """What is wrong with one downloaded file, as far as can be told offline (safetensors, JSON)."""
    name = str(path)
    if name.endswith(".safetensors"):
        return safetensors_problem(path)
    return _read_json(Path(path))[1] if name.endswith(".json") else None


def check_components(folder: str | os.PathLike) -> list[str]:
    """Problems that make a diffusers components folder unusable (empty list: complete).

    ``model_index.json`` parses; every non-transformer component it lists exists with a config;
    weight folders hold weights; every shard an index names exists; every safetensors file verifies.
    """
    root = Path(folder)
    if not root.is_dir():
        return [f"{root}: folder missing"]
    model_index, bad = _read_json(root / "model_index.json")
    if bad or not isinstance(model_index, dict):
        return [f"{root / 'model_index.json'}: {bad or 'not a JSON object'}"]
    problems: list[str] = []
    for name, value in model_index.items():
        if name.startswith("_") or name == "transformer" or not (
            isinstance(value, (list, tuple)) and len(value) == 2 and None not in value
        ):
            continue
        sub = root / name
        if not sub.is_dir():
            problems.append(f"{sub}: folder missing (listed in model_index.json)")
            continue
        files = [p for p in sub.rglob("*") if p.is_file() or p.is_symlink()]
        if not any(p.suffix == ".json" for p in files):
            problems.append(f"{sub}: no configuration file")
        if name in WEIGHT_FOLDERS and not any(p.name.endswith((".safetensors", ".bin")) for p in files):
            problems.append(f"{sub}: no weights")
        for index in (p for p in files if p.name.endswith(".safetensors.index.json")):
            data, bad = _read_json(index)
            if bad:
                problems.append(f"{index}: {bad}")
                continue
            for shard in sorted(set((data.get("weight_map") or {}).values())):  # type: ignore[union-attr]
                if not (index.parent / shard).exists():
                    problems.append(f"{index.parent / shard}: missing (named by {index.name})")
        for st in (p for p in files if p.name.endswith(".safetensors")):
            bad = safetensors_problem(st)
            if bad:
                problems.append(f"{st}: {bad}")
    return problems


def check_transformer(path: str | os.PathLike) -> list[str]:
    """Problems with one WorldPlay checkpoint file (and its optional ``config.json``)."""
    p = Path(path)
    problems = [f"{p}: {bad}"] if (bad := safetensors_problem(p)) else []
    cfg = p.parent / "config.json"
    if (cfg.exists() or cfg.is_symlink()) and (bad := _read_json(cfg)[1]):
        problems.append(f"{cfg}: {bad}")
    return problems
