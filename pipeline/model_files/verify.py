"""Offline completeness checks of model files (no network, no tensor loaded).

The Hugging Face loaders trust any file that exists, so a download cut short (a full disk, a killed pod) leaves
a truncated file that only fails deep inside loading. These checks read headers: 20 GB are judged in microseconds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pipeline.errors import ModelNotFoundError
from pipeline.safetensors_header import SafetensorsHeaderError, read_header

WEIGHT_FOLDERS: tuple[str, ...] = ("text_encoder", "text_encoder_2", "image_encoder", "vae")  #: must hold weights


def safetensors_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a complete safetensors file: its size must be 8 + header length + the last data offset."""
    try:
        return read_header(path).size_problem()
    except FileNotFoundError:
        return "broken symlink (blob missing)" if Path(path).is_symlink() else "missing"
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    except SafetensorsHeaderError as exc:
        return str(exc)


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
