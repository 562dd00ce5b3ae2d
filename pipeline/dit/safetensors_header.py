"""The JSON header of a safetensors file, read with a truncation check (no tensor data is read).

Shared by :mod:`pipeline.dit.config` (a config inferred from tensor shapes) and :mod:`pipeline.dit.checkpoint`
(strict loading); it depends on neither, so neither imports the other.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from pipeline.errors import CheckpointError

_MAX_HEADER = 100 * 1024 * 1024


def read_header(path: Path) -> dict:
    """The JSON header of a safetensors file, after checking the file is not truncated."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                raise CheckpointError(f"{path} is too short to be a safetensors file ({size} bytes)")
            (header_len,) = struct.unpack("<Q", raw)
            if header_len > _MAX_HEADER or 8 + header_len > size:
                raise CheckpointError(f"{path} has a corrupt or truncated safetensors header")
            header = json.loads(fh.read(header_len))
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} has an unreadable safetensors header: {exc}") from exc
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + end > size:
        raise CheckpointError(
            f"{path} is truncated: the header describes {8 + header_len + end} bytes, the file has {size}"
        )
    return header
