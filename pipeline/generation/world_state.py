"""World sessions: the state file that lets a later request continue a generated world exactly.

A world state is one safetensors file (never pickle) holding everything the rollout needs to go on
from latent ``L`` as if it had never stopped:

======================  ===========  ==========================================================
tensor                  dtype        shape / meaning
======================  ===========  ==========================================================
``latents``             float32      [L, C, h, w] every clean latent of the session, exact
``c2w``                 float64      [L, 4, 4] camera-to-world per latent (float64, so pose
                                     strings continue bit for bit)
``intrinsics``          float32      [L, 3, 3] normalised intrinsics per latent
``actions``             int64        [L] the model's discrete action label per latent
``image_latent``        float32      [C, h, w] VAE latent of the conditioning image
``vision``              float32      [tokens, dim] SigLIP embedding of the conditioning image
======================  ===========  ==========================================================

and, as string metadata: ``format``, ``format_version``, ``prompt``, ``negative_prompt``, ``seed``,
``mode``, ``num_inference_steps``, ``guidance_scale``, ``width``, ``height``, ``checkpoint`` (the
fingerprint of the transformer checkpoint, :func:`checkpoint_fingerprint`), ``worker_version`` and ``model``
(the checkpoint's name, :mod:`pipeline.checkpoints`; optional: a state without it was made by its mode's model).

Reading is strict (:meth:`WorldState.from_bytes`): the size is bounded before anything is parsed,
the header length is bounded before the header is read, every tensor's name, dtype, shape and byte
range is checked against the others before any tensor is built, then values (NaN, infinity,
action range, camera matrices) are checked. Every fault is a coded :class:`pipeline.errors.StateError`.
:func:`pipeline.generation.continuation.continuation_request` turns a state plus a new camera path into a
``GenerationRequest``; the worker and ``python -m pipeline --continue-from`` both use it.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.checkpoints import CHECKPOINTS, MODE_ALIASES
from pipeline.errors import SessionTooLongError, StateError
from pipeline.generation.camera import MODE_LATENT_MULTIPLE, ROTATION_TOLERANCE
from pipeline.limits import MAX_SESSION_LATENTS
from pipeline.safetensors_header import SafetensorsHeaderError, parse_header
from pipeline.settings import env_number

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "SessionLimits",
    "WorldState",
    "checkpoint_fingerprint",
]

FORMAT = "worldplay-world-state"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 1024 * 1024
MAX_PROMPT_CHARS = 2000
MAX_VISION_TOKENS = 16384
MAX_VISION_DIM = 16384
MAX_LATENT_CHANNELS = 256
MAX_LATENT_SIDE = 1024
NUM_ACTIONS = 81
MIN_FOCAL = 1e-6  # normalised focal length (focal / image side); 832x480 at 60 deg: ~0.9

# name -> (safetensors dtype, torch dtype, shape as a function of (L, C, h, w), None: checked apart)
_TENSORS = {
    "latents": ("F32", torch.float32),
    "c2w": ("F64", torch.float64),
    "intrinsics": ("F32", torch.float32),
    "actions": ("I64", torch.int64),
    "image_latent": ("F32", torch.float32),
    "vision": ("F32", torch.float32),
}
_ITEMSIZE = {"F32": 4, "F64": 8, "I64": 8}
_META_KEYS = ("format", "format_version", "prompt", "negative_prompt", "seed", "mode", "num_inference_steps",
              "guidance_scale", "width", "height", "checkpoint", "worker_version")


@dataclass(frozen=True)
class SessionLimits:
    """How long a session may grow: ``WORLDPLAY_MAX_SESSION_LATENTS`` (default 1024 latents = 4093
    frames) and ``WORLDPLAY_MAX_SESSION_BYTES`` (default 256 MiB; a latent of an 832x480 video is
    about 0.2 MB)."""

    max_latents: int = MAX_SESSION_LATENTS
    max_bytes: int = 256 * 1024 * 1024

    @classmethod
    def from_env(cls) -> "SessionLimits":
        return cls(
            max_latents=max(1, env_number("WORLDPLAY_MAX_SESSION_LATENTS", MAX_SESSION_LATENTS, int)),
            max_bytes=max(1024, env_number("WORLDPLAY_MAX_SESSION_BYTES", cls.max_bytes, int)),
        )


@dataclass
class WorldState:
    """A world session after its last request (see the module docstring for the fields)."""

    latents: torch.Tensor
    c2w: torch.Tensor
    intrinsics: torch.Tensor
    actions: torch.Tensor
    image_latent: torch.Tensor
    vision: torch.Tensor
    prompt: str
    negative_prompt: str
    seed: int
    mode: str
    num_inference_steps: int
    guidance_scale: float
    width: int
    height: int
    checkpoint: str
    worker_version: str = ""
    model: str = ""  # the checkpoint's model name (pipeline.checkpoints); a state written before models had
    # names holds none: its mode's alias (ar -> ar_distilled)

    def __post_init__(self) -> None:
        if not self.model:
            self.model = MODE_ALIASES.get(self.mode, "")

    @property
    def num_latents(self) -> int:
        return int(self.latents.shape[0])

    @property
    def num_frames(self) -> int:
        return 4 * (self.num_latents - 1) + 1

    # ---------------------------------------------------------------------------------- writing
    def metadata(self) -> dict[str, str]:
        return {
            "format": FORMAT,
            "format_version": str(FORMAT_VERSION),
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "seed": str(int(self.seed)),
            "mode": self.mode,
            "num_inference_steps": str(int(self.num_inference_steps)),
            "guidance_scale": repr(float(self.guidance_scale)),
            "width": str(int(self.width)),
            "height": str(int(self.height)),
            "checkpoint": self.checkpoint,
            "worker_version": self.worker_version or "unknown",  # the worker sets its own version
            "model": self.model,
        }

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name).detach().to("cpu", dtype).contiguous()
                for name, (_, dtype) in _TENSORS.items()}

    def to_bytes(self) -> bytes:
        from safetensors.torch import save

        return save(self.tensors(), metadata=self.metadata())

    def save(self, path: str | os.PathLike) -> int:
        """Write the state to ``path``; returns its size in bytes."""
        data = self.to_bytes()
        Path(path).write_bytes(data)
        return len(data)

    # ---------------------------------------------------------------------------------- reading
    @classmethod
    def load(cls, path: str | os.PathLike, limits: SessionLimits | None = None) -> "WorldState":
        limits = limits or SessionLimits.from_env()
        path = Path(path)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            from pipeline.errors import StateNotFoundError

            raise StateNotFoundError(f"world state {str(path)!r} does not exist") from None
        check_state_size(size, limits)
        return cls.from_bytes(path.read_bytes(), limits)

    @classmethod
    def from_bytes(cls, data: bytes, limits: SessionLimits | None = None) -> "WorldState":
        """Parse and check a state file's bytes; raises StateError / SessionTooLongError."""
        limits = limits or SessionLimits.from_env()
        check_state_size(len(data), limits)
        header, body_start = _read_header(data)
        meta = _check_metadata(header.pop("__metadata__", None))
        num_latents = _check_layout(header, len(data) - body_start, meta, limits)
        try:
            from safetensors.torch import load

            tensors = load(bytes(data))
        except Exception as exc:  # noqa: BLE001 - any parse failure of the library is a bad state
            raise StateError(f"the world state could not be read: {type(exc).__name__}") from None
        _check_values(tensors)
        state = cls(**tensors, **meta)
        assert state.num_latents == num_latents
        return state


def check_state_size(size: int, limits: SessionLimits) -> None:
    if size > limits.max_bytes:
        raise SessionTooLongError(
            f"the world state is {size} bytes; this worker continues sessions of at most {limits.max_bytes} "
            "bytes (WORLDPLAY_MAX_SESSION_BYTES)"
        )


def _read_header(data: bytes) -> tuple[dict, int]:
    try:
        header = parse_header(data, max_header=MAX_HEADER_BYTES)
    except SafetensorsHeaderError as exc:
        raise StateError(f"not a world state: {exc}") from None
    return dict(header.entries), header.data_start


def _check_metadata(meta: Any) -> dict[str, Any]:
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise StateError("not a world state: the metadata is missing or not string to string")
    if meta.get("format") != FORMAT:
        raise StateError(f"not a world state: metadata format is not {FORMAT!r}")
    if meta.get("format_version") != str(FORMAT_VERSION):
        raise StateError(f"world state format version {meta.get('format_version')!r} is not supported "
                         f"(this worker reads version {FORMAT_VERSION})")
    missing = [k for k in _META_KEYS if k not in meta]
    if missing:
        raise StateError(f"world state metadata lacks {', '.join(missing)}")

    def integer(name: str, low: int, high: int) -> int:
        text = meta[name]
        # ASCII digits only: str.isdigit() also accepts e.g. '²', which int() refuses
        if not (text.isascii() and text.isdigit()) or len(text) > 20 or not low <= int(text) <= high:
            raise StateError(f"world state metadata {name}={text[:40]!r} is not an integer in {low}..{high}")
        return int(text)

    try:
        guidance = float(meta["guidance_scale"])
    except ValueError:
        guidance = float("nan")
    if not (math.isfinite(guidance) and 1.0 <= guidance <= 20.0):
        raise StateError("world state metadata guidance_scale is not a number in 1..20")
    if meta["mode"] not in MODE_LATENT_MULTIPLE:
        raise StateError(f"world state metadata mode {meta['mode'][:40]!r} is not ar or bidirectional")
    for name in ("prompt", "negative_prompt"):
        if len(meta[name]) > MAX_PROMPT_CHARS:
            raise StateError(f"world state metadata {name} is longer than {MAX_PROMPT_CHARS} characters")
    if not meta["prompt"].strip():
        raise StateError("world state metadata prompt is empty")
    if not 1 <= len(meta["checkpoint"]) <= 200 or len(meta["worker_version"]) > 100:
        raise StateError("world state metadata checkpoint / worker_version is malformed")
    model = meta.get("model") or MODE_ALIASES[meta["mode"]]  # optional: states written before models had names
    if model not in CHECKPOINTS or CHECKPOINTS[model].rollout != meta["mode"]:
        raise StateError(f"world state metadata model {model[:40]!r} is not a {meta['mode']} model "
                         f"({', '.join(m for m, c in CHECKPOINTS.items() if c.rollout == meta['mode'])})")
    return {
        "prompt": meta["prompt"],
        "negative_prompt": meta["negative_prompt"],
        "seed": integer("seed", 0, 2**32 - 1),
        "mode": meta["mode"],
        "num_inference_steps": integer("num_inference_steps", 1, 100),
        "guidance_scale": guidance,
        "width": integer("width", 16, 16 * MAX_LATENT_SIDE),
        "height": integer("height", 16, 16 * MAX_LATENT_SIDE),
        "checkpoint": meta["checkpoint"],
        "worker_version": meta["worker_version"],
        "model": model,
    }


def _check_layout(header: dict, body_bytes: int, meta: dict, limits: SessionLimits) -> int:
    """Names, dtypes, shapes and byte ranges, before any tensor is built. Returns L."""
    names = set(header)
    if names != set(_TENSORS):
        missing, extra = sorted(set(_TENSORS) - names), sorted(names - set(_TENSORS))
        raise StateError(f"world state tensors do not match: missing {missing}, unexpected {extra[:5]}")
    shapes: dict[str, tuple[int, ...]] = {}
    ranges = []
    for name, (st_dtype, _) in _TENSORS.items():
        entry = header[name]
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise StateError(f"world state tensor {name!r} has a malformed header entry")
        shape, offsets = entry["shape"], entry["data_offsets"]
        if entry["dtype"] != st_dtype:
            raise StateError(f"world state tensor {name!r} is {entry['dtype']!r}; expected {st_dtype}")
        if (not isinstance(shape, list) or len(shape) > 4
                or not all(type(d) is int and 0 <= d <= 2**31 for d in shape)):
            raise StateError(f"world state tensor {name!r} has a malformed shape")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(type(o) is int and 0 <= o for o in offsets) or offsets[0] > offsets[1]):
            raise StateError(f"world state tensor {name!r} has malformed data offsets")
        if offsets[1] - offsets[0] != math.prod(shape) * _ITEMSIZE[st_dtype]:
            raise StateError(f"world state tensor {name!r}: its byte range does not match its shape")
        shapes[name] = tuple(shape)
        ranges.append(tuple(offsets))
    ranges.sort()
    position = 0
    for begin, end in ranges:
        if begin != position:
            raise StateError("world state tensors overlap or leave gaps")
        position = end
    if position != body_bytes:
        raise StateError(f"world state data is {body_bytes} bytes; the header describes {position}")

    latents = shapes["latents"]
    if len(latents) != 4 or latents[0] < 1:
        raise StateError(f"world state latents must be [L, C, h, w] with L >= 1, got {list(latents)}")
    num_latents, channels, h, w = latents
    if num_latents > limits.max_latents:
        raise SessionTooLongError(
            f"the world state holds {num_latents} latents ({4 * (num_latents - 1) + 1} frames); this worker "
            f"continues sessions of at most {limits.max_latents} latents (WORLDPLAY_MAX_SESSION_LATENTS)"
        )
    if not (1 <= channels <= MAX_LATENT_CHANNELS and 1 <= h <= MAX_LATENT_SIDE and 1 <= w <= MAX_LATENT_SIDE):
        raise StateError(f"world state latents have an implausible shape {list(latents)}")
    if (meta["width"], meta["height"]) != (16 * w, 16 * h):
        raise StateError(f"world state size {meta['width']}x{meta['height']} does not match its latents "
                         f"({w}x{h} latent pixels)")
    if num_latents % MODE_LATENT_MULTIPLE[meta["mode"]]:
        raise StateError(f"world state holds {num_latents} latents, not a whole number of {meta['mode']} chunks")
    expected = {
        "c2w": (num_latents, 4, 4),
        "intrinsics": (num_latents, 3, 3),
        "actions": (num_latents,),
        "image_latent": (channels, h, w),
    }
    for name, shape in expected.items():
        if shapes[name] != shape:
            raise StateError(f"world state tensor {name!r} is {list(shapes[name])}; expected {list(shape)}")
    vision = shapes["vision"]
    if len(vision) != 2 or not (1 <= vision[0] <= MAX_VISION_TOKENS and 1 <= vision[1] <= MAX_VISION_DIM):
        raise StateError(f"world state vision embedding has an implausible shape {list(vision)}")
    return num_latents


def _check_values(tensors: dict[str, torch.Tensor]) -> None:
    for name in ("latents", "c2w", "intrinsics", "image_latent", "vision"):
        if not bool(torch.isfinite(tensors[name]).all()):
            raise StateError(f"world state tensor {name!r} contains NaN or infinity")
    actions = tensors["actions"]
    if actions.numel() and (int(actions.min()) < 0 or int(actions.max()) >= NUM_ACTIONS):
        raise StateError(f"world state actions must be labels 0..{NUM_ACTIONS - 1}")
    c2w = tensors["c2w"]
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    if not bool(torch.allclose(c2w[:, 3], bottom.expand_as(c2w[:, 3]), rtol=0, atol=1e-6)):
        raise StateError("world state c2w matrices must end in the row [0, 0, 0, 1]")
    if float(c2w.abs().max()) > 1e6 or float(tensors["intrinsics"].abs().max()) > 1e6:
        raise StateError("world state cameras hold values larger than 1e6")
    # the camera encoding inverts a w2c rotation by transposing it: each block must be a rotation
    rot = c2w[:, :3, :3]
    eye = torch.eye(3, dtype=torch.float64)
    if c2w.shape[0] and (float((rot.transpose(1, 2) @ rot - eye).abs().max()) > ROTATION_TOLERANCE
                         or bool((torch.linalg.det(rot) <= 0).any())):
        raise StateError(f"world state c2w rotation blocks must be rotations (orthonormal within "
                         f"{ROTATION_TOLERANCE:g}, determinant +1)")
    # the camera encoding divides by the focal lengths: positive and finite (finiteness checked above)
    intrinsics = tensors["intrinsics"].double()
    focal = torch.stack([intrinsics[:, 0, 0], intrinsics[:, 1, 1]])
    bottom3 = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    if focal.numel() and (float(focal.min()) < MIN_FOCAL
                          or not bool(torch.allclose(intrinsics[:, 2], bottom3.expand_as(intrinsics[:, 2]),
                                                     rtol=0, atol=1e-6))):
        raise StateError(f"world state intrinsics must have focal lengths of at least {MIN_FOCAL:g} (normalised) "
                         "and end in the row [0, 0, 1]")


# -------------------------------------------------------------------------------- fingerprints
def checkpoint_fingerprint(path: str | os.PathLike, samples: int = 16, block: int = 64 * 1024) -> str:
    """Identity of a safetensors checkpoint without reading all of it: SHA-256 over its size, its
    header (every tensor's name, dtype, shape, offset and the metadata) and ``samples`` blocks of
    ``block`` bytes spread evenly over the data (first and last included). Two checkpoints of one
    architecture but other weights differ in the sampled bytes; reading ~1 MB takes milliseconds."""
    path = Path(path)
    digest = hashlib.sha256()
    size = path.stat().st_size
    digest.update(str(size).encode())
    with path.open("rb") as fh:
        raw = fh.read(8)
        digest.update(raw)
        (length,) = struct.unpack("<Q", raw) if len(raw) == 8 else (0,)
        length = min(length, size)
        digest.update(fh.read(length))
        data_start, data_size = 8 + length, max(0, size - 8 - length)
        for i in range(samples):
            offset = data_start + (data_size - block) * i // max(1, samples - 1) if data_size > block else data_start
            fh.seek(max(data_start, offset))
            digest.update(fh.read(block))
    return "sha256:" + digest.hexdigest()[:32]


def c2w64_of(camera) -> np.ndarray:
    """A trajectory's float64 c2w (the float32 one widened when it was built without it)."""
    c2w64 = getattr(camera, "c2w64", None)
    return c2w64 if c2w64 is not None else camera.c2w.double().numpy()
