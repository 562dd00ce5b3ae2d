"""Camera trajectories for HY-WorldPlay: parse a user's camera spec into model inputs.

``parse_pose(spec, num_latents=None) -> CameraTrajectory`` is the one entry point. The
trajectory holds one camera per *latent* (one latent = 4 video frames, except latent 0 which is
the single conditioning frame), so ``num_frames = 4 * (num_latents - 1) + 1``.

Accepted specs
--------------
1. Pose string, ``"w-10, right-6, a-4"``: comma separated ``KEY-COUNT`` segments, COUNT *moves*
   each (one move = one latent of motion = 4 frames). N moves give N + 1 latents (latent 0 is the
   start camera), so ``"w-31"`` is 32 latents / 125 frames. Keys are case-insensitive, whitespace around keys, dashes and commas is
   ignored; the key ``idle`` stands still (a live world's chunk with no key held); COUNT must be a positive whole number (``"w-3.5"``, ``"w-0"`` are rejected, as are
   empty strings, empty segments such as a trailing comma, and unknown keys).
2. Upstream pose JSON, as a dict or a JSON text: ``{"0": {"extrinsic": 4x4 c2w, "K": 3x3 pixel
   intrinsics}, "1": ...}``. It counts *latents*, the start included: one entry per latent. Keys are
   the latent indices ``"0".."L-1"`` (any order, each exactly
   once, canonical decimal); each entry has exactly the fields ``extrinsic`` and ``K``.
3. Keyboard action list, as a list or a JSON text:
   ``[{"key": "w", "moves": 8, "speed": 0.12}, {"key": "w+left", "moves": 4, "degrees": 5}]``.
   ``moves`` counts moves like the pose string (the start latent is extra); ``latents`` is accepted
   as its deprecated old name (same meaning; giving both is an error). ``key`` is one key or several joined with ``+`` (keys held together, e.g. a controller moving
   and turning at once); opposite keys (w+s, a+d, up+down, left+right) and repeats are rejected.
   ``speed`` (scene units per latent, (0, 1], default 0.08) is allowed only when a w/s/a/d key is
   held; ``degrees`` (per latent, (0, 30], default 3) only when an up/down/left/right key is held,
   and below 30 when left/right is held with a move key (at 30 deg the step's direction sits on
   the 60 deg labelling threshold, beyond it the label becomes a diagonal move). Unknown fields
   are rejected.

Strings whose first non-blank character is ``{`` or ``[`` are read as JSON; file paths are never
opened.

Conventions (those the model was trained with)
----------------------------------------------
OpenCV camera axes: x right, y down, z forward; ``c2w`` maps camera to world coordinates.
Per latent of motion the camera is updated in a fixed order: yaw ``R = R @ Ry(yaw)`` (``right``
positive, ``left`` negative), then pitch ``R = R @ Rx(pitch)`` (``up`` positive, ``down`` negative),
then ``t += R @ [0, 0, forward]`` (``w`` +, ``s`` -), then ``t += R @ [right, 0, 0]`` (``d`` +,
``a`` -). Combined keys are applied in that order within one latent: rotate, then translate in
the rotated frame. Default intrinsics for string and list specs are those of a 1920x1080 camera,
``DEFAULT_K_PIXELS``.

Model inputs: ``w2c = inverse(c2w)`` (the transformer's ``viewmats``); ``intrinsics`` are the
normalised ``Ks``: ``fx / (2 cx)``, ``fy / (2 cy)``, ``cx = cy = 0.5`` (other entries as given).
``actions`` holds one of 81 discrete labels per latent, derived from the geometry of consecutive
cameras exactly as the model's training data was labelled (see ``action_labels``).

Everything is computed in float64 with numpy and returned as torch float32 (int64 for actions).
Faults raise ``PoseSpecError`` / ``FrameCountError`` with a message naming the offending part;
with ``parse_pose(..., mode=...)`` a length the mode cannot render is reported in the units the spec
was written in (moves for strings and action lists, entries for pose JSON).

``python -m pipeline.camera --plot SPEC out.png`` draws any camera spec from above (see
``pipeline.tools.camera_plot``).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from pipeline.errors import FrameCountError, PoseSpecError

__all__ = [
    "CameraTrajectory",
    "parse_pose",
    "action_labels",
    "latents_to_frames",
    "frames_to_latents",
    "check_latent_count",
    "check_frame_count",
    "spec_form",
    "MAX_LATENTS",
    "FRAMES_PER_LATENT",
    "DEFAULT_SPEED",
    "DEFAULT_DEGREES",
    "MAX_SPEED",
    "MAX_DEGREES",
    "DEFAULT_K_PIXELS",
    "MOVE_KEYS",
    "TURN_KEYS",
    "IDLE_KEY",
    "MODE_LATENT_MULTIPLE",
    "continue_pose",
    "check_continuation_count",
]

# --------------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------------

from pipeline.limits import MAX_LATENTS  # noqa: E402 - the one length limit (256 latents, 1021 frames)

FRAMES_PER_LATENT = 4

DEFAULT_SPEED = 0.08
"""Scene units moved per latent by w/s/a/d."""

DEFAULT_DEGREES = 3.0
"""Degrees turned per latent by up/down/left/right."""

MAX_SPEED = 1.0
MAX_DEGREES = 30.0

DEFAULT_K_PIXELS: tuple[tuple[float, float, float], ...] = (
    (969.6969696969696, 0.0, 960.0),
    (0.0, 969.6969696969696, 540.0),
    (0.0, 0.0, 1.0),
)
"""Pixel intrinsics of the default 1920x1080 camera used for string and list specs."""

# key -> (axis, sign). Translation axes "forward"/"right", rotation axes "yaw"/"pitch".
MOVE_KEYS: dict[str, tuple[str, int]] = {
    "w": ("forward", 1),
    "s": ("forward", -1),
    "d": ("right", 1),
    "a": ("right", -1),
}
TURN_KEYS: dict[str, tuple[str, int]] = {
    "right": ("yaw", 1),
    "left": ("yaw", -1),
    "up": ("pitch", 1),
    "down": ("pitch", -1),
}
IDLE_KEY = "idle"
"""Stand still for the move (no translation, no turn): a live world's chunk with no key held."""
_ALL_KEYS = {**MOVE_KEYS, **TURN_KEYS, IDLE_KEY: ("", 0)}
_KEY_LIST = "w, s, a, d, up, down, left, right, idle"

MODE_LATENT_MULTIPLE = {"ar": 4, "bidirectional": 16}

ROTATION_TOLERANCE = 1e-4
"""Largest |R^T R - I| of a pose JSON extrinsic's (and a world state's) rotation block: the camera
encoding inverts it by transposing, so it must be a rotation (float32 round trips stay near 1e-7)."""

_MAX_JSON_CHARS = 4_000_000
_MAX_ABS_VALUE = 1e6  # bound on matrix entries (scene units / pixels)
_LIST_FIELDS = ("key", "moves", "latents", "speed", "degrees")
_COUNT_FIELDS = ("moves", "latents")  # "latents": deprecated old name of "moves"
_ENTRY_FIELDS = ("extrinsic", "K")

# Action labelling thresholds (those used to label the training data).
_MOVE_MIN_NORM = 1e-4
_DIR_FORWARD_DEG = 60.0  # angle to an axis below this: moving along it
_DIR_BACKWARD_DEG = 120.0  # angle to an axis above this: moving against it
_TURN_MIN_DEG = 5e-2
# (first pair state, second pair state) -> class; state 0 none, 1 first member, 2 second member.
# Translation pairs: (forward, backward), (right, left).
# Rotation pairs: (yaw right, yaw left), (up, down).
_PAIR_CLASS = {
    (0, 0): 0,
    (1, 0): 1,
    (2, 0): 2,
    (0, 1): 3,
    (0, 2): 4,
    (1, 1): 5,
    (1, 2): 6,
    (2, 1): 7,
    (2, 2): 8,
}


# --------------------------------------------------------------------------------------------
# Result type and frame / latent rules
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class CameraTrajectory:
    """One camera per latent, ready for the transformer.

    c2w, w2c: float32 [L, 4, 4]; intrinsics: float32 [L, 3, 3] normalised (cx = cy = 0.5);
    actions: int64 [L] in 0..80 (latent 0 is 0); num_frames = 4 * (L - 1) + 1.
    """

    c2w: torch.Tensor
    w2c: torch.Tensor
    intrinsics: torch.Tensor
    actions: torch.Tensor
    num_latents: int
    num_frames: int
    # the float64 c2w the float32 tensors were made from (what a world session continues from exactly)
    c2w64: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = self.num_latents
        if self.c2w64 is not None and (self.c2w64.shape != (n, 4, 4) or self.c2w64.dtype != np.float64):
            raise ValueError(f"CameraTrajectory.c2w64 must be float64 [{n}, 4, 4]")
        shapes = {
            "c2w": (self.c2w, (n, 4, 4), torch.float32),
            "w2c": (self.w2c, (n, 4, 4), torch.float32),
            "intrinsics": (self.intrinsics, (n, 3, 3), torch.float32),
            "actions": (self.actions, (n,), torch.int64),
        }
        for name, (tensor, shape, dtype) in shapes.items():
            if tuple(tensor.shape) != shape or tensor.dtype != dtype:
                raise ValueError(
                    f"CameraTrajectory.{name} must be {dtype} {list(shape)}, "
                    f"got {tensor.dtype} {list(tensor.shape)}"
                )
        if self.num_frames != latents_to_frames(n):
            raise ValueError(f"num_frames {self.num_frames} does not match {n} latents")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def latents_to_frames(n: int) -> int:
    """Video frames produced by ``n`` latents: ``4 * (n - 1) + 1``."""
    if not _is_int(n) or n < 1:
        raise FrameCountError(f"latent count must be a positive integer, got {n!r}")
    return FRAMES_PER_LATENT * (int(n) - 1) + 1


def frames_to_latents(n: int) -> int:
    """Latents needed for ``n`` video frames; ``n`` must be ``4k + 1``."""
    if not _is_int(n) or n < 1:
        raise FrameCountError(f"frame count must be a positive integer, got {n!r}")
    if (n - 1) % FRAMES_PER_LATENT != 0:
        lower = n - (n - 1) % FRAMES_PER_LATENT
        raise FrameCountError(
            f"{n} frames is not 4k+1 (one conditioning frame plus 4 frames per latent): "
            f"nearest valid are {lower} or {lower + FRAMES_PER_LATENT} frames"
        )
    return (int(n) - 1) // FRAMES_PER_LATENT + 1


def check_latent_count(num_latents: int, mode: str) -> None:
    """Raise FrameCountError unless ``num_latents`` suits ``mode`` ("ar": multiple of 4,
    "bidirectional": multiple of 16) and lies in 1..MAX_LATENTS."""
    if mode not in MODE_LATENT_MULTIPLE:
        raise ValueError(f"unknown mode {mode!r}; expected one of {sorted(MODE_LATENT_MULTIPLE)}")
    if not _is_int(num_latents) or num_latents < 1:
        raise FrameCountError(f"latent count must be a positive integer, got {num_latents!r}")
    if num_latents > MAX_LATENTS:
        raise FrameCountError(
            f"{num_latents} latents ({latents_to_frames(num_latents)} frames) exceeds the maximum "
            f"of {MAX_LATENTS} latents ({latents_to_frames(MAX_LATENTS)} frames)"
        )
    multiple = MODE_LATENT_MULTIPLE[mode]
    if num_latents % multiple == 0:
        return
    lower = num_latents - num_latents % multiple
    options = [m for m in (lower, lower + multiple) if 1 <= m <= MAX_LATENTS]
    frames = [f"{latents_to_frames(m)}" for m in options]
    nearest = (
        f"nearest valid are {frames[0]} or {frames[1]} frames"
        if len(frames) == 2
        else f"nearest valid is {frames[0]} frames"
    )
    raise FrameCountError(
        f"{mode} needs a latent count divisible by {multiple}; {num_latents} latents "
        f"({latents_to_frames(num_latents)} frames) is not: {nearest}"
    )


def _nearest(options: Sequence[int], unit: str) -> str:
    if len(options) == 1:
        return f"the nearest valid is {options[0]}{unit}"
    return f"the nearest valid are {' or '.join(str(o) for o in options)}{unit}"


def _mode_frames(multiple: int, k: int) -> int:
    return latents_to_frames(multiple * k)


def check_frame_count(num_frames: int, mode: str) -> int:
    """Check a frame count a user typed (``num_frames``) against ``mode``; returns its latents.

    The error names valid *frame* counts: ``4 * latents - 3`` with latents a multiple of 4 (ar:
    13, 29, 45, 61, ...) or 16 (bidirectional: 61, 125, 189, ...).
    """
    if mode not in MODE_LATENT_MULTIPLE:
        raise ValueError(f"unknown mode {mode!r}; expected one of {sorted(MODE_LATENT_MULTIPLE)}")
    if not _is_int(num_frames) or num_frames < 1:
        raise FrameCountError(f"num_frames must be a positive integer, got {num_frames!r}")
    multiple = MODE_LATENT_MULTIPLE[mode]
    ok = (num_frames - 1) % FRAMES_PER_LATENT == 0 and (
        (num_frames - 1) // FRAMES_PER_LATENT + 1) % multiple == 0
    if not ok:
        period = FRAMES_PER_LATENT * multiple
        low = (int(num_frames) + FRAMES_PER_LATENT - 1) // period
        options = [_mode_frames(multiple, k) for k in (low, low + 1)
                   if k >= 1 and multiple * k <= MAX_LATENTS]
        valid = ", ".join(str(_mode_frames(multiple, k)) for k in (1, 2, 3))
        raise FrameCountError(
            f"num_frames {num_frames} cannot be rendered in {mode} mode: frames are 4k+1 (k moves "
            f"after the start frame) with k+1 latents a multiple of {multiple}, i.e. {valid}, ...; "
            f"{_nearest(options, '')}"
        )
    num_latents = frames_to_latents(int(num_frames))
    check_latent_count(num_latents, mode)
    return num_latents


def spec_form(spec: Any) -> str:
    """How a camera spec counts its length: ``"pose string"`` and ``"action list"`` count moves
    (the start latent is extra), ``"pose JSON"`` counts latents (one entry each)."""
    if isinstance(spec, str):
        stripped = spec.lstrip()
        if stripped.startswith("{"):
            return "pose JSON"
        return "action list" if stripped.startswith("[") else "pose string"
    if isinstance(spec, Mapping):
        return "pose JSON"
    return "action list"


def _in_units(num_latents: int, form: str) -> str:
    if form == "pose JSON":
        return f"{num_latents} entries"
    return f"{num_latents - 1} moves"


def _length_words(num_latents: int, form: str) -> str:
    frames = latents_to_frames(num_latents)
    if form == "pose JSON":
        return f"{num_latents} entries ({frames} frames)"
    return f"{num_latents - 1} moves ({num_latents} latents with the start, {frames} frames)"


def _mode_length_error(n: int, mode: str, form: str, fix: Any) -> FrameCountError:
    """The mode's latent multiple, broken by a spec of ``n`` latents, worded in the spec's units.

    ``fix(delta)`` (or None) returns the spec's last count changed by ``delta`` as the user
    would write it, for an example."""
    multiple = MODE_LATENT_MULTIPLE[mode]
    lower = n - n % multiple
    options = [m for m in (lower, lower + multiple) if 1 <= m <= MAX_LATENTS]
    if form == "pose JSON":
        valid = ", ".join(str(multiple * k) for k in (1, 2, 3))
        return FrameCountError(
            f"{mode} needs a multiple of {multiple} latents ({valid}, ... pose JSON entries); the "
            f"pose JSON has {_length_words(n, form)}: {_nearest(options, ' entries')}"
        )
    valid = ", ".join(str(multiple * k - 1) for k in (1, 2, 3))
    what = "the pose string's counts" if form == "pose string" else "the action list's moves"
    message = (
        f"{mode} needs a multiple of {multiple} latents, so {what} must add up to {valid}, ... "
        f"(the start latent is extra); they add up to {_length_words(n, form)}: "
        f"{_nearest([m - 1 for m in options], ' moves')}"
    )
    examples = [fix(m - n) for m in options] if fix is not None else []
    examples = [e for e in examples if e is not None]
    if examples and form == "pose string":
        message += f", e.g. {' or '.join(examples)} instead of {fix(0)}"
    elif examples:
        field = examples[0].split(":")[0]
        counts = " or ".join(e.split(": ")[1] for e in examples)
        message += f", e.g. {field}: {counts} in the last action"
    if (n - 1) % multiple == 0:  # the count a continuation takes (it has no start latent)
        message += (f" ({n - 1} moves would be right to continue a world with continue_from: a "
                    f"continuation has no start latent, so its moves are its latents)")
    return FrameCountError(message)


def _string_fix(text: str) -> Any:
    segments = [segment.strip() for segment in text.split(",")]
    match = _SEGMENT.match(segments[-1])
    if match is None or len(text) > 80:
        return None
    key, count = match["key"].strip(), int(match["count"].strip())

    def fix(delta: int) -> str | None:
        if count + delta < 1:
            return None
        return repr(", ".join(segments[:-1] + [f"{key}-{count + delta}"]))

    return fix


def _actions_fix(items: Sequence[Any]) -> Any:
    last = items[-1]
    field = "latents" if "latents" in last else "moves"
    count = last[field]

    def fix(delta: int) -> str | None:
        if count + delta < 1:
            return None
        return f"'{field}': {count + delta}"

    return fix


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


def _rot_x(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _rot_y(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _integrate(steps: Sequence[tuple[float, float, float, float]], start: np.ndarray | None = None) -> np.ndarray:
    """Chain per-latent motions (yaw rad, pitch rad, forward, right) from the identity camera
    (or from ``start``, a float64 c2w [4, 4]).

    Returns float64 c2w [len(steps) + 1, 4, 4] (the first one is the start camera).
    """
    out = np.empty((len(steps) + 1, 4, 4))
    pose = np.eye(4) if start is None else np.array(start, dtype=np.float64, copy=True)
    out[0] = pose
    for i, (yaw, pitch, forward, right) in enumerate(steps, start=1):
        if yaw:
            pose[:3, :3] = pose[:3, :3] @ _rot_y(yaw)
        if pitch:
            pose[:3, :3] = pose[:3, :3] @ _rot_x(pitch)
        if forward:
            pose[:3, 3] += pose[:3, :3] @ np.array([0.0, 0.0, forward])
        if right:
            pose[:3, 3] += pose[:3, :3] @ np.array([right, 0.0, 0.0])
        out[i] = pose
    return out


def _nearest_rotation(m: np.ndarray) -> np.ndarray:
    """Closest rotation matrix (Frobenius norm) to a 3x3 with positive determinant."""
    u, _, vt = np.linalg.svd(m)
    r = u @ vt
    if np.linalg.det(r) < 0:  # cannot happen for det(m) > 0, kept for safety
        u[:, -1] = -u[:, -1]
        r = u @ vt
    return r


def _euler_xyz_degrees(rot: np.ndarray) -> np.ndarray:
    """Extrinsic x-y-z Euler angles (a, b, c) in degrees with ``rot = Rz(c) @ Ry(b) @ Rx(a)``.

    ``rot`` is first projected onto the nearest rotation. At gimbal lock (b = +-90 deg) c is set to
    0 and the whole remaining rotation is carried by a.
    """
    r = rot
    det = np.linalg.det(r)
    if not (abs(det - 1.0) < 1e-12 and np.allclose(r @ r.T, np.eye(3), atol=1e-12, rtol=0)):
        r = _nearest_rotation(r)
    sin_b = -r[2, 0]
    cos_b = math.hypot(r[0, 0], r[1, 0])
    b = math.atan2(sin_b, cos_b)
    if cos_b > 1e-7:
        a = math.atan2(r[2, 1], r[2, 2])
        c = math.atan2(r[1, 0], r[0, 0])
    elif sin_b > 0:  # b = +90 deg: rot = Ry(90) @ Rx(a)
        a, c = math.atan2(r[0, 1], r[1, 1]), 0.0
    else:  # b = -90 deg: rot = Ry(-90) @ Rx(a)
        a, c = math.atan2(-r[0, 1], r[1, 1]), 0.0
    return np.array([a, b, c]) * (180.0 / math.pi)


def _classify_step(rel: np.ndarray) -> int:
    """Action label 0..80 of one relative camera motion ``rel = inv(c2w[i-1]) @ c2w[i]``."""
    move = rel[:3, 3]
    norm = float(np.linalg.norm(move))
    fb = rl = 0
    if norm > _MOVE_MIN_NORM:
        angles = np.arccos(np.clip(move / norm, -1.0, 1.0)) * (180.0 / math.pi)
        to_x, to_z = angles[0], angles[2]  # the y (vertical) component is ignored
        if to_z < _DIR_FORWARD_DEG:
            fb = 1
        elif to_z > _DIR_BACKWARD_DEG:
            fb = 2
        if to_x < _DIR_FORWARD_DEG:
            rl = 1
        elif to_x > _DIR_BACKWARD_DEG:
            rl = 2
    pitch, yaw, _ = _euler_xyz_degrees(rel[:3, :3])
    yaw_state = 1 if yaw > _TURN_MIN_DEG else 2 if yaw < -_TURN_MIN_DEG else 0
    pitch_state = 1 if pitch > _TURN_MIN_DEG else 2 if pitch < -_TURN_MIN_DEG else 0
    return _PAIR_CLASS[(fb, rl)] * 9 + _PAIR_CLASS[(yaw_state, pitch_state)]


def action_labels(c2w: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Discrete action label (0..80, int64) per camera of a c2w trajectory [L, 4, 4].

    Label = translation class * 9 + rotation class, from the motion relative to the previous
    camera: translation forward/backward by the angle of its direction to the z axis (< 60 / > 120
    deg) and right/left by the angle to the x axis, vertical motion ignored, only when the step is
    longer than 1e-4; yaw right/left by Euler "xyz" angle b > 0.05 / < -0.05 deg and pitch up/down
    by angle a. Classes per pair of axes: none 0, first 1, second 2, third 3, fourth 4, then the
    four diagonal combinations 5..8 (e.g. forward+right 5, forward+left 6, backward+right 7,
    backward+left 8). Latent 0 is always 0.
    """
    c2w = np.asarray(c2w.detach().cpu() if isinstance(c2w, torch.Tensor) else c2w, dtype=np.float64)
    if c2w.ndim != 3 or c2w.shape[1:] != (4, 4):
        raise ValueError(f"c2w must have shape [L, 4, 4], got {list(c2w.shape)}")
    # Relative motions via the same chain of inversions the training labels used
    # (c2w -> w2c -> c2w), so threshold decisions agree bit for bit.
    cams = np.linalg.inv(np.linalg.inv(c2w))
    labels = np.zeros(len(cams), dtype=np.int64)
    if len(cams) > 1:
        rel = np.linalg.inv(cams[:-1]) @ cams[1:]
        for i, step in enumerate(rel, start=1):
            labels[i] = _classify_step(step)
    return torch.from_numpy(labels)


def _normalise_intrinsics(k_pixels: np.ndarray) -> np.ndarray:
    k = np.array(k_pixels, dtype=np.float64, copy=True)
    k[..., 0, 0] /= 2.0 * k[..., 0, 2]
    k[..., 1, 1] /= 2.0 * k[..., 1, 2]
    k[..., 0, 2] = 0.5
    k[..., 1, 2] = 0.5
    return k


def _build(c2w: np.ndarray, k_pixels: np.ndarray, num_latents: int | None, *,
           form: str = "camera spec", mode: str | None = None, fix: Any = None) -> CameraTrajectory:
    n = len(c2w)
    if num_latents is not None:
        if not _is_int(num_latents) or num_latents < 1:
            raise FrameCountError(f"num_latents must be a positive integer, got {num_latents!r}")
        if num_latents != n:
            wanted = latents_to_frames(int(num_latents))
            message = (
                f"the {form} has {_length_words(n, form)}, but {wanted} frames were requested "
                f"(num_frames), which needs {_in_units(int(num_latents), form)}"
            )
            if fix is not None and fix(num_latents - n) is not None and form == "pose string":
                message += f", e.g. {fix(num_latents - n)}"
            raise FrameCountError(message)
    if mode is not None:
        if mode not in MODE_LATENT_MULTIPLE:
            raise ValueError(f"unknown mode {mode!r}; expected one of "
                             f"{sorted(MODE_LATENT_MULTIPLE)}")
        if n % MODE_LATENT_MULTIPLE[mode] != 0:
            raise _mode_length_error(n, mode, form, fix)
        check_latent_count(n, mode)
    return _trajectory(c2w, k_pixels, action_labels(c2w))


def _trajectory(c2w: np.ndarray, k_pixels: np.ndarray, actions: torch.Tensor) -> CameraTrajectory:
    n = len(c2w)
    w2c = np.linalg.inv(c2w)
    return CameraTrajectory(
        c2w=torch.from_numpy(c2w.astype(np.float32)),
        w2c=torch.from_numpy(w2c.astype(np.float32)),
        intrinsics=torch.from_numpy(_normalise_intrinsics(k_pixels).astype(np.float32)),
        actions=actions,
        num_latents=n,
        num_frames=latents_to_frames(n),
        c2w64=np.ascontiguousarray(c2w, dtype=np.float64),
    )


def _default_k(n: int) -> np.ndarray:
    return np.broadcast_to(np.array(DEFAULT_K_PIXELS, dtype=np.float64), (n, 3, 3))


def _too_many(total_latents: int, where: str) -> FrameCountError:
    return FrameCountError(
        f"{where} makes the trajectory longer than the maximum of {MAX_LATENTS} latents "
        f"({latents_to_frames(MAX_LATENTS)} frames); it has "
        f"{f'at least {total_latents}' if total_latents < 10**18 else 'more than 10^18'} latents"
    )


_TOO_MANY_DIGITS = "camera JSON text holds an integer with too many digits"


def _shown(value: Any) -> str:
    """``repr(value)`` for a message, safe for integers past Python's int -> str limit (whose repr
    raises ValueError) and short for long values."""
    if _is_int(value) and abs(int(value)) >= 10**18:
        return f"{'-' if value < 0 else ''}an integer of about {int(abs(int(value)).bit_length() * 0.30103) + 1} digits"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --------------------------------------------------------------------------------------------
# Pose string
# --------------------------------------------------------------------------------------------

_SEGMENT = re.compile(r"^(?P<key>[^-]*?)\s*-\s*(?P<count>.*)$", re.DOTALL)
_DIGITS = re.compile(r"\+?[0-9]+")  # ASCII digits only (\d also matches e.g. Arabic-Indic ones)


def _parse_string(text: str) -> list[tuple[float, float, float, float]]:
    if not text.strip():
        raise PoseSpecError("pose string is empty; expected e.g. 'w-31' or 'w-10, right-6'")
    steps: list[tuple[float, float, float, float]] = []
    for index, raw in enumerate(text.split(","), start=1):
        segment = raw.strip()
        if not segment:
            raise PoseSpecError(
                f"pose string segment {index} is empty (stray comma?) in {text.strip()!r}"
            )
        match = _SEGMENT.fullmatch(segment)
        if match is None:
            raise PoseSpecError(f"pose segment {segment!r} is not KEY-COUNT, e.g. 'w-8'")
        key = match["key"].strip().lower()
        count_text = match["count"].strip()
        if key not in _ALL_KEYS:
            raise PoseSpecError(
                f"pose segment {segment!r}: unknown key {match['key'].strip()!r}; "
                f"supported keys: {_KEY_LIST}"
            )
        if re.fullmatch(r"-\s*\+?\d+", count_text):
            raise PoseSpecError(
                f"pose segment {segment!r}: count must be a positive whole number of moves"
            )
        if not _DIGITS.fullmatch(count_text):
            raise PoseSpecError(
                f"pose segment {segment!r}: count {count_text!r} is not a whole number of moves"
            )
        if len(count_text.lstrip("+").lstrip("0")) > 7:
            raise _too_many(MAX_LATENTS + 1, f"pose segment {segment!r}")
        count = int(count_text)
        if count < 1:
            raise PoseSpecError(
                f"pose segment {segment!r}: count must be at least 1 move, got {count}"
            )
        if len(steps) + count + 1 > MAX_LATENTS:
            raise _too_many(len(steps) + count + 1, f"pose segment {segment!r}")
        steps.extend([_key_step((key,), DEFAULT_SPEED, DEFAULT_DEGREES)] * count)
    return steps


def _key_step(
    keys: Sequence[str], speed: float, degrees: float
) -> tuple[float, float, float, float]:
    motion = {"yaw": 0.0, "pitch": 0.0, "forward": 0.0, "right": 0.0}
    angle = float(np.deg2rad(degrees))
    for key in keys:
        if key == IDLE_KEY:
            continue
        if key in MOVE_KEYS:
            axis, sign = MOVE_KEYS[key]
            motion[axis] = sign * speed
        else:
            axis, sign = TURN_KEYS[key]
            motion[axis] = sign * angle
    return motion["yaw"], motion["pitch"], motion["forward"], motion["right"]


# --------------------------------------------------------------------------------------------
# Keyboard action list
# --------------------------------------------------------------------------------------------

_OPPOSITES = ({"w", "s"}, {"a", "d"}, {"up", "down"}, {"left", "right"})


def _parse_action_list(items: Sequence[Any]) -> list[tuple[float, float, float, float]]:
    if len(items) == 0:
        raise PoseSpecError("action list is empty; expected e.g. [{'key': 'w', 'moves': 15}]")
    steps: list[tuple[float, float, float, float]] = []
    for index, item in enumerate(items):
        where = f"action {index}"
        if not isinstance(item, Mapping):
            raise PoseSpecError(
                f"{where} must be an object like {{'key': 'w', 'moves': 15}}, "
                f"got {type(item).__name__}"
            )
        unknown = [str(f) for f in item if f not in _LIST_FIELDS]
        if unknown:
            raise PoseSpecError(
                f"{where}: unknown field(s) {', '.join(repr(f) for f in unknown)}; "
                f"allowed: {', '.join(_LIST_FIELDS)}"
            )
        if "key" not in item:
            raise PoseSpecError(f"{where}: missing field 'key'")
        key_spec = item["key"]
        if not isinstance(key_spec, str):
            raise PoseSpecError(f"{where}: 'key' must be a string such as 'w' or 'w+left'")
        where = f"action {index} ({key_spec!r})"
        keys = [k.strip().lower() for k in key_spec.split("+")]
        for k in keys:
            if k not in _ALL_KEYS:
                raise PoseSpecError(
                    f"{where}: unknown key {k!r}; supported keys: {_KEY_LIST}, "
                    f"combined with '+' (e.g. 'w+left')"
                )
        if len(set(keys)) != len(keys):
            raise PoseSpecError(f"{where}: a key is repeated")
        if IDLE_KEY in keys and len(keys) > 1:
            raise PoseSpecError(f"{where}: 'idle' (stand still) cannot be held with other keys")
        for pair in _OPPOSITES:
            if pair <= set(keys):
                a, b = sorted(pair)
                raise PoseSpecError(
                    f"{where}: opposite keys {a!r} and {b!r} cannot be held together"
                )
        given = [f for f in _COUNT_FIELDS if f in item]
        if len(given) > 1:
            raise PoseSpecError(
                f"{where}: give 'moves' or its deprecated old name 'latents', not both"
            )
        if not given:
            raise PoseSpecError(f"{where}: missing field 'moves' (how many moves, 4 frames each)")
        count = item[given[0]]
        if not _is_int(count) or count < 1:
            raise PoseSpecError(
                f"{where}: '{given[0]}' must be a positive whole number of moves, got {_shown(count)}"
            )
        moves = any(k in MOVE_KEYS for k in keys)
        turns = any(k in TURN_KEYS for k in keys)
        speed = _bounded(item, "speed", DEFAULT_SPEED, MAX_SPEED, allowed=moves, where=where,
                         why="only w/s/a/d move")
        degrees = _bounded(item, "degrees", DEFAULT_DEGREES, MAX_DEGREES, allowed=turns,
                           where=where, why="only up/down/left/right turn")
        yaws = any(TURN_KEYS.get(k, ("",))[0] == "yaw" for k in keys)
        if moves and yaws and degrees >= MAX_DEGREES:
            # A step turned by >= 30 deg leaves its translation >= 60 deg off the previous camera's
            # axis: the label would flip to (or flicker at) a diagonal move the user did not press.
            raise PoseSpecError(
                f"{where}: 'degrees' must be below {MAX_DEGREES:g} when turning left/right while "
                f"moving (the motion would be labelled as a diagonal move), got {degrees:g}"
            )
        if len(steps) + count + 1 > MAX_LATENTS:
            raise _too_many(len(steps) + int(count) + 1, where)
        steps.extend([_key_step(keys, speed, degrees)] * int(count))
    return steps


def _bounded(item: Mapping[str, Any], field: str, default: float, upper: float, *,
             allowed: bool, where: str, why: str) -> float:
    if field not in item:
        return default
    if not allowed:
        raise PoseSpecError(f"{where}: '{field}' does not apply to these keys ({why})")
    value = item[field]
    # NaN fails both comparisons and infinity the upper bound, so no separate finiteness test.
    if not _is_number(value) or not 0 < value <= upper:
        raise PoseSpecError(f"{where}: '{field}' must be a number in (0, {upper:g}], got {_shown(value)}")
    return float(value)


# --------------------------------------------------------------------------------------------
# Pose JSON
# --------------------------------------------------------------------------------------------


def _matrix(value: Any, rows: int, cols: int, where: str) -> np.ndarray:
    shape_msg = f"{where} must be a {rows}x{cols} matrix ({rows} rows of {cols} numbers)"
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        if value.shape != (rows, cols) or value.dtype.kind not in "iuf":
            raise PoseSpecError(f"{shape_msg}, got an array of {value.dtype} {list(value.shape)}")
        out = value.astype(np.float64)
    else:
        if not isinstance(value, (list, tuple)) or len(value) != rows:
            raise PoseSpecError(shape_msg)
        for row in value:
            if not isinstance(row, (list, tuple)) or len(row) != cols:
                raise PoseSpecError(shape_msg)
            if not all(_is_number(x) for x in row):
                raise PoseSpecError(f"{where} must contain only numbers")
        try:
            out = np.array(value, dtype=np.float64)
        except OverflowError:
            raise PoseSpecError(f"{where} has a number too large for float64") from None
    if not np.all(np.isfinite(out)):
        raise PoseSpecError(f"{where} contains a non-finite value (NaN or infinity)")
    if np.max(np.abs(out)) > _MAX_ABS_VALUE:
        raise PoseSpecError(f"{where} has an entry larger than {_MAX_ABS_VALUE:g} in magnitude")
    return out


def _latent_index(key: Any) -> int | None:
    if _is_int(key):
        return int(key) if key >= 0 else None
    if isinstance(key, str) and re.fullmatch(r"0|[1-9][0-9]{0,6}", key):
        return int(key)
    return None


def _parse_pose_json(data: Mapping[Any, Any]) -> tuple[np.ndarray, np.ndarray]:
    n = len(data)
    if n == 0:
        raise PoseSpecError(
            "pose JSON has no entries; expected {'0': {'extrinsic': ..., 'K': ...}, ...}"
        )
    if n > MAX_LATENTS:
        raise FrameCountError(
            f"pose JSON has {n} entries; at most {MAX_LATENTS} latents "
            f"({latents_to_frames(MAX_LATENTS)} frames) are allowed"
        )
    by_index: dict[int, Any] = {}
    for key in data:
        index = _latent_index(key)
        if index is None:
            raise PoseSpecError(
                f"pose JSON key {key!r} is not a latent index; keys must be '0'..'{n - 1}'"
            )
        if index in by_index:
            raise PoseSpecError(f"pose JSON latent index {index} appears twice")
        by_index[index] = data[key]
    missing = [i for i in range(n) if i not in by_index]
    if missing:
        extra = sorted(i for i in by_index if i >= n)
        raise PoseSpecError(
            f"pose JSON keys must be consecutive latent indices '0'..'{n - 1}': "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}"
        )
    c2w = np.empty((n, 4, 4))
    k_pixels = np.empty((n, 3, 3))
    for i in range(n):
        entry = by_index[i]
        where = f"pose JSON entry '{i}'"
        if not isinstance(entry, Mapping):
            raise PoseSpecError(f"{where} must be an object with 'extrinsic' and 'K'")
        unknown = [str(f) for f in entry if f not in _ENTRY_FIELDS]
        if unknown:
            raise PoseSpecError(
                f"{where}: unknown field(s) {', '.join(repr(f) for f in unknown)}; "
                f"allowed: extrinsic, K"
            )
        for field in _ENTRY_FIELDS:
            if field not in entry:
                raise PoseSpecError(f"{where}: missing field '{field}'")
        c2w[i] = _check_extrinsic(_matrix(entry["extrinsic"], 4, 4, f"{where} extrinsic"), where)
        k_pixels[i] = _check_intrinsics(_matrix(entry["K"], 3, 3, f"{where} K"), where)
    return c2w, k_pixels


def _check_extrinsic(m: np.ndarray, where: str) -> np.ndarray:
    if not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0], rtol=0.0, atol=1e-6):
        raise PoseSpecError(
            f"{where} extrinsic bottom row must be [0, 0, 0, 1], got {m[3].tolist()}"
        )
    singular = np.linalg.svd(m[:3, :3], compute_uv=False)
    if singular[0] == 0.0 or singular[-1] < 1e-8 * singular[0]:
        raise PoseSpecError(
            f"{where} extrinsic is not invertible (its 3x3 rotation block is singular)"
        )
    if np.linalg.det(m[:3, :3]) < 0:
        raise PoseSpecError(
            f"{where} extrinsic rotation block has a negative determinant (a reflection, not a "
            "camera pose)"
        )
    error = float(np.abs(m[:3, :3].T @ m[:3, :3] - np.eye(3)).max())
    if error > ROTATION_TOLERANCE:
        raise PoseSpecError(
            f"{where} extrinsic rotation block is not a rotation (|R^T R - I| = {error:.2g}, at most "
            f"{ROTATION_TOLERANCE:g} allowed): scaled or sheared camera poses are not camera poses"
        )
    return m


def _check_intrinsics(k: np.ndarray, where: str) -> np.ndarray:
    if not np.allclose(k[2], [0.0, 0.0, 1.0], rtol=0.0, atol=1e-6):
        raise PoseSpecError(f"{where} K bottom row must be [0, 0, 1], got {k[2].tolist()}")
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    if not (fx > 0 and fy > 0 and cx > 0 and cy > 0):
        raise PoseSpecError(
            f"{where} K must have positive fx, fy, cx, cy (pixels), got "
            f"fx={fx:g} fy={fy:g} cx={cx:g} cy={cy:g}"
        )
    return k


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def parse_pose(spec: Any, num_latents: int | None = None, *, mode: str | None = None
               ) -> CameraTrajectory:
    """Parse a camera spec (pose string, pose JSON dict/text, or action list/text).

    ``num_latents``, when given, must equal the spec's latent count (FrameCountError otherwise).
    ``mode``, when given, checks the length against the mode (``check_latent_count``), with the
    error worded in the spec's own units (moves or pose JSON entries).
    """
    if isinstance(spec, str):
        stripped = spec.lstrip()
        if stripped.startswith(("{", "[")):
            if len(spec) > _MAX_JSON_CHARS:
                raise PoseSpecError(
                    f"camera JSON text is {len(spec)} characters; at most {_MAX_JSON_CHARS} allowed"
                )
            try:
                spec = json.loads(spec)
            except json.JSONDecodeError as exc:
                raise PoseSpecError(
                    f"camera JSON text is not valid JSON: {exc.msg} (line {exc.lineno}, "
                    f"column {exc.colno})"
                ) from None
            except RecursionError:
                raise PoseSpecError("camera JSON text is nested too deeply") from None
            except ValueError:  # an integer literal past Python's 4,300-digit conversion limit
                raise PoseSpecError(_TOO_MANY_DIGITS) from None
        else:
            c2w = _integrate(_parse_string(spec))
            return _build(c2w, _default_k(len(c2w)), num_latents, form="pose string", mode=mode,
                          fix=_string_fix(spec))
    if isinstance(spec, Mapping):
        c2w, k_pixels = _parse_pose_json(spec)
        return _build(c2w, k_pixels, num_latents, form="pose JSON", mode=mode)
    if isinstance(spec, (list, tuple)):
        c2w = _integrate(_parse_action_list(spec))
        return _build(c2w, _default_k(len(c2w)), num_latents, form="action list", mode=mode,
                      fix=_actions_fix(spec))
    raise PoseSpecError(
        f"camera spec must be a pose string, a pose JSON object or an action list, "
        f"got {type(spec).__name__}"
    )


# --------------------------------------------------------------------------------------------
# Continuing a trajectory (world sessions)
# --------------------------------------------------------------------------------------------


def continue_pose(spec: Any, last_c2w: np.ndarray) -> CameraTrajectory:
    """The cameras of the *new* latents that continue a trajectory whose last camera is ``last_c2w``.

    A pose string or action list moves on from ``last_c2w`` (float64 c2w [4, 4]): ``"w-8"`` is 8 new
    latents, one per motion step, since there is no new start camera. A pose JSON gives the new
    latents' absolute cameras in the session's world frame, keys ``"0".."B-1"``. The action label of
    the first new latent is taken from the motion out of ``last_c2w``, exactly as inside one long
    trajectory. ``num_frames`` of the result counts 4 frames per new latent plus one, like any
    trajectory; a continuation's video holds ``4 * num_latents`` frames.
    """
    last = np.asarray(last_c2w, dtype=np.float64)
    if last.shape != (4, 4) or not np.all(np.isfinite(last)):
        raise ValueError("last_c2w must be a finite float64 [4, 4] camera-to-world matrix")
    if isinstance(spec, str) and spec.lstrip().startswith(("{", "[")):
        if len(spec) > _MAX_JSON_CHARS:
            raise PoseSpecError(f"camera JSON text is {len(spec)} characters; at most {_MAX_JSON_CHARS} allowed")
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as exc:
            raise PoseSpecError(f"camera JSON text is not valid JSON: {exc.msg} (line {exc.lineno}, "
                                f"column {exc.colno})") from None
        except RecursionError:
            raise PoseSpecError("camera JSON text is nested too deeply") from None
        except ValueError:
            raise PoseSpecError(_TOO_MANY_DIGITS) from None
    if isinstance(spec, str):
        c2w = _integrate(_parse_string(spec), start=last)[1:]
        k_pixels = _default_k(len(c2w))
    elif isinstance(spec, Mapping):
        c2w, k_pixels = _parse_pose_json(spec)
    elif isinstance(spec, (list, tuple)):
        c2w = _integrate(_parse_action_list(spec), start=last)[1:]
        k_pixels = _default_k(len(c2w))
    else:
        raise PoseSpecError(
            f"camera spec must be a pose string, a pose JSON object or an action list, got {type(spec).__name__}"
        )
    actions = action_labels(np.concatenate([last[None], c2w]))[1:].clone()
    return _trajectory(c2w, k_pixels, actions)


def check_continuation_count(new_latents: int, mode: str, spec_text: str | None = None) -> None:
    """Raise FrameCountError unless ``new_latents`` suits a continuation in ``mode`` (a whole number of
    chunks: 4 latents = 16 frames for "ar", 16 latents = 64 frames for "bidirectional")."""
    multiple = MODE_LATENT_MULTIPLE[mode]
    if new_latents >= 1 and new_latents % multiple == 0:
        return
    lower = new_latents - new_latents % multiple
    options = [m for m in (lower, lower + multiple) if m >= 1]
    words = " or ".join(f"{m} latents ({FRAMES_PER_LATENT * m} frames)" for m in options)
    what = f"{spec_text!r} adds" if spec_text else "the camera path adds"
    raise FrameCountError(
        f"a continuation in {mode} mode adds latents in steps of {multiple} ({FRAMES_PER_LATENT * multiple} "
        f"frames), e.g. 'w-{multiple}'; {what} {new_latents} latents ({FRAMES_PER_LATENT * new_latents} "
        f"frames): nearest valid are {words}"
    )

