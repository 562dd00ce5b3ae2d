"""Draw a camera path from above: ``python -m pipeline.camera --plot SPEC out.png``.

SPEC is any camera form the worker takes: a pose string (``"w-15, right-8, a-8"``), an action list
or pose JSON as JSON text, a ``.json`` file holding either, or a world state (``world.safetensors``,
what a job's ``state_key`` names: the world's path so far). The picture (PIL, no plotting library)
shows, seen from above with the start camera looking up the page:

- the trajectory (camera positions, x to the right, forward up),
- the camera's heading at every latent (an arrow in its viewing direction); where the camera turns
  or tilts in place the arrows of one spot fan out, each a little longer than the one before, so a
  turn in place is a fan and a pitch in place a stripe of pitch colours, never a dot,
- a numbered marker at the first latent of every chunk (4 latents in AR, 16 bidirectional),
- the pitch where it changes (arrows coloured by pitch, the angle written where a stretch ends),
- the action label of each stretch, as the model sees it (derived from the geometry, so it is the
  same for every camera form), with its number of moves; no label is drawn over another,
- a title with the latent / frame counts and whether the mode can render that length: a length the
  mode refuses is marked in red on the picture, and ``--plot`` then exits 1 (the picture is still
  written, to show what was asked for).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipeline.errors import PipelineError, PoseSpecError
from pipeline.generation import camera as camera_mod

__all__ = ["action_name", "stretch_labels", "plot_path", "render_path", "load_spec", "main"]

_TRANSLATION = ("", "w", "s", "d", "a", "w+d", "w+a", "s+d", "s+a")
_ROTATION = ("", "right", "left", "up", "down", "right+up", "right+down", "left+up", "left+down")

_BG = (250, 250, 247)
_GRID = (226, 226, 220)
_PATH = (60, 60, 60)
_TEXT = (25, 25, 25)
_CHUNK = (214, 96, 39)
_LEVEL = (40, 110, 200)  # heading tick with no pitch
_UP = (200, 40, 40)
_DOWN = (40, 150, 80)
_BAD = (200, 20, 20)  # the frame and banner of a length the mode refuses


def action_name(label: int) -> str:
    """Keys of an action label 0..80 (translation * 9 + rotation), e.g. 15 -> "w+left"."""
    label = int(label)
    if not 0 <= label <= 80:
        raise ValueError(f"action label must be in 0..80, got {label}")
    parts = [p for p in (_TRANSLATION[label // 9], _ROTATION[label % 9]) if p]
    return "+".join(parts) or "still"


class StatePath:
    """The camera path of a world state (a ``world.safetensors``), shaped like a trajectory."""

    def __init__(self, state: Any, name: str = "world state"):
        import torch

        self.c2w = state.c2w.to(torch.float64)
        self.actions = state.actions.to(torch.int64)
        self.num_latents = int(state.num_latents)
        self.num_frames = int(state.num_frames)
        self.mode = str(state.mode)
        self.name = name


def load_spec(value: str) -> Any:
    """A camera spec from the command line: a ``.json`` file's content, a world state
    (``.safetensors``) as a :class:`StatePath`, else the text itself."""
    path = Path(value)
    if value.lower().endswith(".safetensors"):
        from pipeline.generation.world_state import WorldState

        return StatePath(WorldState.load(path), name=path.name)
    if value.lower().endswith(".json"):
        if not path.is_file():
            raise PoseSpecError(f"camera file {value!r} does not exist")
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PoseSpecError(f"camera file {value!r} is not valid JSON: {exc}") from None
    return value


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizing
        return ImageFont.load_default()


def _stretches(labels: Sequence[int]) -> list[tuple[int, int, int]]:
    """(first latent, last latent, label) of each run of equal labels over latents 1..L-1."""
    runs: list[tuple[int, int, int]] = []
    for i in range(1, len(labels)):
        if runs and runs[-1][2] == labels[i] and runs[-1][1] == i - 1:
            runs[-1] = (runs[-1][0], i, labels[i])
        else:
            runs.append((i, i, int(labels[i])))
    return runs


def _pitch_degrees(c2w: np.ndarray) -> np.ndarray:
    # OpenCV camera: y points down, so looking up means a negative y component of the view axis
    return np.degrees(np.arcsin(np.clip(-c2w[:, 1, 2], -1.0, 1.0)))


def stretch_labels(traj: "camera_mod.CameraTrajectory") -> list[tuple[int, int, str]]:
    """(first latent, last latent, text) per stretch of one action label, as the plot writes them:
    the keys the model sees and the number of moves, plus the pitch reached where it changed
    (e.g. ``"up x4  pitch +12°"``)."""
    c2w = traj.c2w.double().numpy()
    pitch = _pitch_degrees(c2w)
    out = []
    for first, last, label in _stretches(traj.actions.tolist()):
        text = f"{action_name(label)} x{last - first + 1}"
        if abs(pitch[last] - pitch[first - 1]) >= 0.05:
            text += f"  pitch {round(float(pitch[last])) + 0:+d}°"
        out.append((first, last, text))
    return out


def render_path(spec: Any, *, mode: str = "ar", title: str | None = None,
                size: tuple[int, int] = (900, 760)) -> Image.Image:
    """The top-down picture of a camera spec (raises PoseSpecError / FrameCountError)."""
    if mode not in camera_mod.MODE_LATENT_MULTIPLE:
        raise ValueError(f"unknown mode {mode!r}")
    traj = spec if isinstance(spec, StatePath) else camera_mod.parse_pose(spec)
    if isinstance(spec, StatePath):
        mode = spec.mode
    c2w = traj.c2w.double().numpy()
    n = traj.num_latents
    chunk = camera_mod.MODE_LATENT_MULTIPLE[mode]

    pos = np.stack([c2w[:, 0, 3], c2w[:, 2, 3]], axis=1)  # (x right, z forward)
    fwd = c2w[:, :3, 2]
    heading = np.stack([fwd[:, 0], fwd[:, 2]], axis=1)
    norms = np.linalg.norm(heading, axis=1, keepdims=True)
    heading = np.where(norms > 1e-9, heading / np.maximum(norms, 1e-9), 0.0)
    pitch = _pitch_degrees(c2w)

    width, height = size
    top, bottom, side = 120, 80, 90
    lo, hi = pos.min(axis=0), pos.max(axis=0)
    extent = max(float((hi - lo).max()), 0.5)
    centre = (lo + hi) / 2.0
    scale = min(width - 2 * side, height - top - bottom) / extent

    def px(point: np.ndarray) -> tuple[float, float]:
        x = width / 2 + (point[0] - centre[0]) * scale
        y = top + (height - top - bottom) / 2 - (point[1] - centre[1]) * scale
        return float(x), float(y)

    img = Image.new("RGB", size, _BG)
    draw = ImageDraw.Draw(img)
    small, normal, big = _font(13), _font(15), _font(18)
    placed: list[tuple[float, float, float, float]] = []  # boxes of the labels drawn so far

    def label(x: float, y: float, text: str, fill, font, anchor: str = "la") -> None:
        """Draw ``text`` at (x, y), moved down past every label already there."""
        for _ in range(60):
            box = draw.textbbox((x, y), text, font=font, anchor=anchor)
            box = (box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                break
            y += box[3] - box[1]
        placed.append(box)
        draw.text((x, y), text, fill=fill, font=font, anchor=anchor)

    # grid in scene units, with a scale bar
    step = 10 ** math.floor(math.log10(extent / 2)) if extent > 0 else 0.1
    for k in range(-40, 41):
        gx, _ = px(centre + np.array([k * step - (centre[0] % step), 0.0]))
        _, gy = px(centre + np.array([0.0, k * step - (centre[1] % step)]))
        if side / 2 <= gx <= width - side / 2:
            draw.line([(gx, top - 10), (gx, height - bottom + 10)], fill=_GRID)
        if top - 10 <= gy <= height - bottom + 10:
            draw.line([(side / 2, gy), (width - side / 2, gy)], fill=_GRID)
    bar = step * scale
    draw.line([(side, height - 30), (side + bar, height - 30)], fill=_TEXT, width=3)
    draw.text((side + bar + 8, height - 38), f"{step:g} scene unit{'' if step == 1 else 's'} (grid)",
              fill=_TEXT, font=small)

    problem = None if isinstance(spec, StatePath) else length_problem(spec, mode)
    if problem:  # refused length: a red frame and the reason, so the picture cannot pass for a plan
        draw.rectangle([0, 0, width - 1, height - 1], outline=_BAD, width=6)
        words, lines, line = f"NOT RENDERABLE: {problem}".split(), [], ""
        for word in words:
            if draw.textlength(f"{line} {word}", font=small) > width - side:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}".strip()
        lines.append(line)
        for k, text in enumerate(lines[:4]):
            label(side / 2, height - 80 - 16 * (min(len(lines), 4) - 1 - k), text, _BAD, small)

    # trajectory
    points = [px(p) for p in pos]
    if len(points) > 1:
        draw.line(points, fill=_PATH, width=2, joint="curve")

    # heading arrows, coloured by pitch; the k-th latent at one spot gets a longer arrow, so turns
    # and tilts in place fan out (drawn longest first: each arrow's tip stays visible)
    tick = 22.0
    stack = [sum(1 for j in range(i) if abs(points[j][0] - points[i][0]) < 3
                 and abs(points[j][1] - points[i][1]) < 3) for i in range(n)]
    grow = min(12.0, 90.0 / max(1, max(stack)))
    for i in sorted(range(n), key=lambda i: -stack[i]):
        x, y = points[i]
        dx, dy = heading[i]
        colour = _LEVEL if abs(pitch[i]) < 0.05 else (_UP if pitch[i] > 0 else _DOWN)
        length = tick + grow * stack[i]
        tip = (x + dx * length, y - dy * length)
        draw.line([(x, y), tip], fill=colour, width=3)
        # arrowhead: two short strokes back from the tip
        for side in (-1.0, 1.0):
            bx, by = -dx * 6 + side * dy * 4, dy * 6 + side * dx * 4
            draw.line([tip, (tip[0] + bx, tip[1] + by)], fill=colour, width=2)
    for i in range(n):
        x, y = points[i]
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=_PATH)

    # chunk markers
    markers: list[tuple[float, float, list[str]]] = []  # chunks starting at one spot share a label
    for index, first in enumerate(range(0, n, chunk)):
        x, y = points[first]
        if markers and abs(markers[-1][0] - x) < 8 and abs(markers[-1][1] - y) < 8:
            markers[-1][2].append(str(index + 1))
        else:
            markers.append((x, y, [str(index + 1)]))
    for x, y, names in markers:
        draw.ellipse([x - 6, y - 6, x + 6, y + 6], outline=_CHUNK, width=2)
    x0, y0 = points[0]
    label(x0 + 10, y0 + 8, "start", _TEXT, small)
    for x, y, names in markers:
        text = ",".join(names) if len(names) <= 6 else f"{names[0]}-{names[-1]}"
        label(x - 12, y + 4, text, _CHUNK, small, anchor="ra")

    # action labels per stretch (+ pitch where it changed)
    for first, last, text in stretch_labels(traj):
        mid = (first + last) // 2
        x, y = points[mid]
        # beside the stretch: to the right of its motion, or of the heading when turning in place
        motion = pos[last] - pos[first - 1]
        length = float(np.linalg.norm(motion))
        dx, dy = motion / length if length > 1e-6 else heading[mid]
        nx, ny = (dy, dx) if (dx or dy) else (1.0, 0.0)  # world (x, z) right-normal, on screen
        label(x + nx * 24, y + ny * 24, text, _TEXT, normal, anchor="lm")

    # title + legend
    frames = traj.num_frames
    if isinstance(spec, StatePath):
        verdict = f"the world so far, {mode}"
    else:
        verdict = f"{mode}: ok" if problem is None else f"{mode} needs a multiple of {chunk} latents"
    head = title if title is not None else (spec.name if isinstance(spec, StatePath) else
                                            spec if isinstance(spec, str) else camera_mod.spec_form(spec))
    head = head if len(head) <= 70 else head[:67] + "..."
    draw.text((side / 2, 14), head, fill=_TEXT, font=big)
    counts = (f"{n} latents, {frames} frames" if isinstance(spec, StatePath)
              else f"{n} latents = {n - 1} moves + start, {frames} frames")
    draw.text((side / 2, 40), f"{counts}, {math.ceil(n / chunk)} chunks of {chunk} ({verdict})",
              fill=_BAD if problem else _TEXT, font=normal)

    legend = [(_LEVEL, "heading, level"), (_UP, "looking up"), (_DOWN, "looking down"),
              (_CHUNK, "chunk start")]
    lx = side / 2
    for colour, name in legend:
        draw.line([(lx, 70), (lx + 16, 70)], fill=colour, width=3)
        draw.text((lx + 22, 70), name, fill=_TEXT, font=small, anchor="lm")
        lx += 40 + draw.textlength(name, font=small)
    draw.text((width - side / 2, 70), "top view, forward = up", fill=_TEXT, font=small,
              anchor="rm")
    img.info["labels"] = placed  # where the labels went (tests check that none overlaps another)
    img.info["problem"] = problem
    return img


def length_problem(spec: Any, mode: str) -> str | None:
    """Why ``mode`` refuses the length of ``spec`` (the worker's own message), or None."""
    try:
        camera_mod.parse_pose(spec, mode=mode)
    except camera_mod.FrameCountError as exc:
        return exc.message
    return None


def plot_path(spec: Any, out: str | Path, *, mode: str = "ar", title: str | None = None) -> Path:
    """Write :func:`render_path` to ``out`` (format from its suffix, e.g. .png)."""
    out = Path(out)
    render_path(spec, mode=mode, title=title).save(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.camera",
        description="Check a camera spec, or draw it from above with --plot.",
        epilog='examples: python -m pipeline.camera --plot "w-15, right-8, a-8" path.png; '
               "python -m pipeline.camera --plot '[{\"key\": \"w\", \"moves\": 15}]' path.png; "
               "python -m pipeline.camera --plot pose.json path.png; "
               "python -m pipeline.camera --plot world.safetensors path.png (a world state: its path so far); "
               'python -m pipeline.camera --check "w-8" --continuation')
    parser.add_argument("--plot", nargs=2, metavar=("SPEC", "OUT"),
                        help="camera spec (pose string, JSON text, .json file, or a world state .safetensors) and the image "
                             "to write (.png)")
    parser.add_argument("--check", metavar="SPEC",
                        help="print the spec's latents, frames and chunks, or the error the worker gives")
    parser.add_argument("--mode", choices=sorted(camera_mod.MODE_LATENT_MULTIPLE), default="ar",
                        help="mode whose chunks are marked and whose length rule is checked")
    parser.add_argument("--continuation", action="store_true",
                        help="--check: count SPEC as the camera path of a continue_from job (no start "
                             "latent: 'w-8' is 8 new latents = 32 new frames)")
    args = parser.parse_args(argv)
    if not args.plot and not args.check:
        parser.error("give --plot SPEC OUT or --check SPEC")
    if args.continuation and not args.check:
        parser.error("--continuation goes with --check")
    chunk = camera_mod.MODE_LATENT_MULTIPLE[args.mode]
    try:
        if args.check and args.continuation:
            spec = load_spec(args.check)
            new = camera_mod.continue_pose(spec, np.eye(4)).num_latents
            camera_mod.check_continuation_count(new, args.mode, args.check if isinstance(spec, str) else None)
            print(json.dumps({"new_latents": new, "new_frames": 4 * new, "chunks": new // chunk,
                              "mode": args.mode, "continuation": True}))
        elif args.check:
            traj = camera_mod.parse_pose(load_spec(args.check), mode=args.mode)
            print(json.dumps({"latents": traj.num_latents, "moves": traj.num_latents - 1,
                              "frames": traj.num_frames, "chunks": traj.num_latents // chunk,
                              "mode": args.mode}))
        if args.plot:
            spec_text, out = args.plot
            spec = load_spec(spec_text)
            img = render_path(spec, mode=args.mode,
                              title=spec_text if isinstance(spec, str) else Path(spec_text).name)
            img.save(out)
            print(f"wrote {out}")
            if img.info.get("problem"):
                print(f"error: INVALID_FRAME_COUNT: {img.info['problem']} (the picture, marked in red, "
                      f"shows what was asked for)", file=sys.stderr)
                return 1
    except PipelineError as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot write the picture: {exc}", file=sys.stderr)
        return 1
    return 0
