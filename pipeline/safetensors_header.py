"""The header of a safetensors file, parsed and checked without reading any tensor data.

A safetensors file is an 8-byte little-endian header length, that many bytes of JSON (one object:
tensor name -> ``{"dtype", "shape", "data_offsets"}``, plus an optional ``"__metadata__"``), then the
tensor data; a complete file is exactly ``8 + header length + the largest end offset`` bytes.

One parser for the three places that read such headers, each of which words the reason in its own
error: the model-file checks (:mod:`pipeline.model_files.verify`: a download cut short), the DiT
loader (:mod:`pipeline.dit.checkpoint`, :mod:`pipeline.dit.config`) and the world-state reader
(:mod:`pipeline.generation.world_state`: bytes a client handed over). Reasons never quote the file's
contents.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from typing import Callable, Optional

__all__ = ["MAX_HEADER_BYTES", "SafetensorsHeader", "SafetensorsHeaderError", "parse_header",
           "read_header"]

#: The largest header accepted unless a reader asks for less (safetensors' own limit).
MAX_HEADER_BYTES = 100 * 1024 * 1024


class SafetensorsHeaderError(ValueError):
    """The bytes are not a safetensors file; the message is the reason (``truncated: ...``,
    ``corrupt header: ...``)."""


@dataclass(frozen=True)
class SafetensorsHeader:
    entries: dict  #: the header's JSON object as in the file (``"__metadata__"`` included)
    data_start: int  #: where the tensor data begins: 8 + the header length
    file_size: int  #: bytes in the file (or the buffer)

    @property
    def tensors(self) -> dict:
        """Tensor name -> entry, without ``"__metadata__"``."""
        return {name: entry for name, entry in self.entries.items() if name != "__metadata__"}

    def data_end(self) -> int:
        """The largest end offset: how many data bytes the header describes."""
        try:
            spans = [[int(v) for v in entry["data_offsets"]] for entry in self.tensors.values()]
        except (KeyError, TypeError, ValueError):
            raise SafetensorsHeaderError(
                "corrupt header: a tensor entry without valid data_offsets") from None
        if any(len(span) != 2 or not 0 <= span[0] <= span[1] for span in spans):
            raise SafetensorsHeaderError("corrupt header: bad data_offsets")
        return max((end for _, end in spans), default=0)

    def size_problem(self) -> Optional[str]:
        """Why the file's size is not the one its header describes (None when it is)."""
        expected = self.data_start + self.data_end()
        if self.file_size == expected:
            return None
        verdict = "truncated" if self.file_size < expected else "oversized"
        return f"{verdict}: the header describes {expected} bytes, the file has {self.file_size}"


def _parse(size: int, read: Callable[[int], bytes], max_header: int) -> SafetensorsHeader:
    if size < 8:
        raise SafetensorsHeaderError(
            f"truncated: {size} bytes, too short for a safetensors file (8-byte header length)")
    (length,) = struct.unpack("<Q", read(8))
    if length > min(size - 8, max_header):
        limit = f"; at most {max_header} are accepted" if length > max_header else ""
        raise SafetensorsHeaderError(
            f"truncated or corrupt: the header length claims {length} bytes, {size - 8} follow it{limit}")
    try:
        entries = json.loads(read(length).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise SafetensorsHeaderError(
            f"corrupt header: not valid JSON ({type(exc).__name__})") from None
    except ValueError:  # an integer literal past Python's 4,300-digit int conversion limit
        raise SafetensorsHeaderError("corrupt header: an integer with too many digits") from None
    if not isinstance(entries, dict):
        raise SafetensorsHeaderError("corrupt header: not a JSON object")
    return SafetensorsHeader(entries, 8 + length, size)


def parse_header(data: bytes, *, max_header: int = MAX_HEADER_BYTES) -> SafetensorsHeader:
    """The header of a safetensors file held in memory; raises :class:`SafetensorsHeaderError`."""
    view = memoryview(data)
    position = 0

    def read(n: int) -> bytes:
        nonlocal position
        chunk = bytes(view[position:position + n])
        position += n
        return chunk

    return _parse(len(data), read, max_header)


def read_header(path: str | os.PathLike, *, max_header: int = MAX_HEADER_BYTES) -> SafetensorsHeader:
    """The header of a safetensors file on disk: two reads (the length, then the JSON), whatever the
    file's size. Raises :class:`SafetensorsHeaderError`, or ``OSError`` when it cannot be read
    (``FileNotFoundError`` for a missing file or a symlink to a missing blob)."""
    size = os.stat(path).st_size  # follows symlinks (the Hugging Face cache's links to blobs)
    with open(path, "rb") as fh:
        return _parse(size, fh.read, max_header)
