"""One safetensors header parser (pipeline/safetensors_header.py) behind the model-file checks, the
DiT loader and the world-state reader: the same bad bytes get the same reason from all three, each
in its own error."""

from __future__ import annotations

import struct

import pytest
import torch
from safetensors.torch import save, save_file

from pipeline.dit.config import checkpoint_shapes
from pipeline.errors import CheckpointError, StateError
from pipeline.generation.world_state import WorldState
from pipeline.model_files.verify import safetensors_problem
from pipeline.safetensors_header import (
    SafetensorsHeaderError,
    parse_header,
    read_header,
)


def _with_header(text: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(text)) + text + data


GOOD = save({"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.zeros(4)})

BAD = {
    "empty": (b"", "truncated: 0 bytes, too short"),
    "short": (b"\x05\x00\x00", "truncated: 3 bytes, too short"),
    "huge length": (struct.pack("<Q", 10**12) + b"{}", "the header length claims 1000000000000 bytes"),
    "length past the end": (struct.pack("<Q", 50) + b"{}", "the header length claims 50 bytes, 2 follow"),
    "not json": (_with_header(b"nope"), "corrupt header: not valid JSON"),
    "not utf-8": (_with_header(b"\xff\xfe{}"), "corrupt header: not valid JSON"),
    "deep nesting": (_with_header(b"[" * 200_000 + b"]" * 200_000), "corrupt header: not valid JSON"),
    "not an object": (_with_header(b"[]"), "corrupt header: not a JSON object"),
    "truncated data": (GOOD[:-5], f"truncated: the header describes {len(GOOD)} bytes, the file has "
                                  f"{len(GOOD) - 5}"),
    "appended bytes": (GOOD + b"junk", f"oversized: the header describes {len(GOOD)} bytes"),
    "bad offsets": (_with_header(b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}'),
                    "corrupt header: bad data_offsets"),
    "no offsets": (_with_header(b'{"a": {"dtype": "F32", "shape": [1]}}'),
                   "corrupt header: a tensor entry without valid data_offsets"),
}


def test_a_whole_file_parses_the_same_from_disk_and_from_memory(tmp_path):
    path = tmp_path / "good.safetensors"
    path.write_bytes(GOOD)
    on_disk, in_memory = read_header(path), parse_header(GOOD)
    assert on_disk == in_memory
    assert set(on_disk.tensors) == {"a", "b"} and on_disk.size_problem() is None
    assert on_disk.data_start + on_disk.data_end() == on_disk.file_size == len(GOOD)
    assert checkpoint_shapes(path) == {"a": (2, 3), "b": (4,)}
    assert safetensors_problem(path) is None


@pytest.mark.parametrize("name", list(BAD))
def test_every_reader_gives_the_same_reason(tmp_path, name):
    data, reason = BAD[name]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)

    # the model-file check returns the reason itself
    assert reason in safetensors_problem(path)
    # the DiT loader names the file and the reason
    with pytest.raises(CheckpointError) as err:
        checkpoint_shapes(path)
    assert str(path) in str(err.value) and reason in str(err.value)
    # the shared parser: header-level faults raise at once, size faults are reported by size_problem
    try:
        header = parse_header(data)
        problem = header.size_problem()
    except SafetensorsHeaderError as exc:
        problem = str(exc)
    assert reason in problem


@pytest.mark.parametrize("name", ["empty", "short", "huge length", "not json", "deep nesting",
                                  "not an object"])
def test_world_states_word_the_same_reasons(name):
    data, reason = BAD[name]
    with pytest.raises(StateError) as err:
        WorldState.from_bytes(data)
    assert str(err.value) == f"not a world state: {parse_error(data)}"
    assert reason in str(err.value) and err.value.code == "INVALID_STATE"


def parse_error(data: bytes) -> str:
    from pipeline.generation.world_state import MAX_HEADER_BYTES

    with pytest.raises(SafetensorsHeaderError) as err:
        parse_header(data, max_header=MAX_HEADER_BYTES)
    return str(err.value)


def test_a_reader_can_ask_for_a_smaller_header_limit():
    data = _with_header(b'{"__metadata__": {"x": "' + b"y" * 2000 + b'"}}')
    assert parse_header(data).size_problem() is None
    with pytest.raises(SafetensorsHeaderError, match="at most 1024 are accepted"):
        parse_header(data, max_header=1024)


def test_reasons_never_quote_the_file(tmp_path):
    secret = b"password=hunter2"
    for data in (_with_header(secret), _with_header(b'{"' + secret + b'": 1')):
        with pytest.raises(SafetensorsHeaderError) as err:
            parse_header(data)
        assert b"hunter2".decode() not in str(err.value)


def test_missing_and_broken_links(tmp_path):
    assert safetensors_problem(tmp_path / "nope.safetensors") == "missing"
    link = tmp_path / "link.safetensors"
    link.symlink_to(tmp_path / "blob-gone")
    assert safetensors_problem(link) == "broken symlink (blob missing)"
    with pytest.raises(CheckpointError, match="cannot read"):
        checkpoint_shapes(tmp_path / "nope.safetensors")


def test_a_real_checkpoint_written_by_safetensors(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"w": torch.ones(3, 5)}, str(path), metadata={"format": "pt"})
    header = read_header(path)
    assert header.entries["__metadata__"] == {"format": "pt"} and set(header.tensors) == {"w"}
    assert checkpoint_shapes(path) == {"w": (3, 5)}
