"""Draw a camera path from above: ``python -m pipeline.camera --plot SPEC out.png``.

SPEC is any camera form the worker takes: a pose string (``"w-15, right-8, a-8"``), an action list
or pose JSON as JSON text, or a ``.json`` file holding either. The picture (PIL, no plotting
library) shows, seen from above with the start camera looking up the page:

- the trajectory (camera positions, x to the right, forward up),
- the camera's heading at every latent (a short tick in its viewing direction),
- a numbered marker at the first latent of every chunk (4 latents in AR, 16 bidirectional),
- the pitch where it changes (ticks coloured by pitch, the angle written where a stretch ends),
- the action label of each stretch, as the model sees it (derived from the geometry, so it is the
  same for every camera form), with its number of moves,
- a title with the latent / frame counts and whether the mode can render that length.
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


def action_name(label: int) -> str:
    """Keys of an action label 0..80 (translation * 9 + rotation), e.g. 15 -> "w+left"."""
    label = int(label)
    if not 0 <= label <= 80:
        raise ValueError(f"action label must be in 0..80, got {label}")
    parts = [p for p in (_TRANSLATION[label // 9], _ROTATION[label % 9]) if p]
    return "+".join(parts) or "still"


def load_spec(value: str) -> Any:
    """A camera spec from the command line: a ``.json`` file's content, else the text itself."""
    path = Path(value)
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
            text += f"  pitch {pitch[last]:+.0f}°"
        out.append((first, last, text))
    return out


def render_path(spec: Any, *, mode: str = "ar", title: str | None = None,
                size: tuple[int, int] = (900, 760)) -> Image.Image:
    """The top-down picture of a camera spec (raises PoseSpecError / FrameCountError)."""
    if mode not in camera_mod.MODE_LATENT_MULTIPLE:
        raise ValueError(f"unknown mode {mode!r}")
    traj = camera_mod.parse_pose(spec)
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

    # trajectory
    points = [px(p) for p in pos]
    if len(points) > 1:
        draw.line(points, fill=_PATH, width=2, joint="curve")

    # heading ticks, coloured by pitch
    tick = 16.0
    for i in range(n):
        x, y = points[i]
        dx, dy = heading[i]
        colour = _LEVEL if abs(pitch[i]) < 0.05 else (_UP if pitch[i] > 0 else _DOWN)
        draw.line([(x, y), (x + dx * tick, y - dy * tick)], fill=colour, width=2)
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
        draw.text((x - 12, y + 4), ",".join(names), fill=_CHUNK, font=small, anchor="rt")
    x0, y0 = points[0]
    draw.text((x0 + 10, y0 + 8), "start", fill=_TEXT, font=small)

    # action labels per stretch (+ pitch where it changed)
    placed: list[tuple[float, float]] = []
    for first, last, text in stretch_labels(traj):
        mid = (first + last) // 2
        x, y = points[mid]
        # beside the stretch: to the right of its motion, or of the heading when turning in place
        motion = pos[last] - pos[first - 1]
        length = float(np.linalg.norm(motion))
        dx, dy = motion / length if length > 1e-6 else heading[mid]
        nx, ny = (dy, dx) if (dx or dy) else (1.0, 0.0)  # world (x, z) right-normal, on screen
        lx, ly = x + nx * 24, y + ny * 24
        while any(abs(lx - px_) < 60 and abs(ly - py_) < 16 for px_, py_ in placed):
            ly += 16
        placed.append((lx, ly))
        draw.text((lx, ly), text, fill=_TEXT, font=normal, anchor="lm")

    # title + legend
    frames = traj.num_frames
    try:
        camera_mod.check_latent_count(n, mode)
        verdict = f"{mode}: ok"
    except PipelineError:
        verdict = f"{mode} needs a multiple of {chunk} latents"
    head = title if title is not None else (spec if isinstance(spec, str) else
                                            camera_mod.spec_form(spec))
    head = head if len(head) <= 70 else head[:67] + "..."
    draw.text((side / 2, 14), head, fill=_TEXT, font=big)
    draw.text((side / 2, 40), f"{n} latents = {n - 1} moves + start, {frames} frames, "
                              f"{math.ceil(n / chunk)} chunks of {chunk} ({verdict})",
              fill=_TEXT, font=normal)
    legend = [(_LEVEL, "heading, level"), (_UP, "looking up"), (_DOWN, "looking down"),
              (_CHUNK, "chunk start")]
    lx = side / 2
    for colour, name in legend:
        draw.line([(lx, 70), (lx + 16, 70)], fill=colour, width=3)
        draw.text((lx + 22, 70), name, fill=_TEXT, font=small, anchor="lm")
        lx += 40 + draw.textlength(name, font=small)
    draw.text((width - side / 2, 70), "top view, forward = up", fill=_TEXT, font=small,
              anchor="rm")
    return img


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
               "python -m pipeline.camera --plot pose.json path.png")
    parser.add_argument("--plot", nargs=2, metavar=("SPEC", "OUT"),
                        help="camera spec (pose string, JSON text, or .json file) and the image "
                             "to write (.png)")
    parser.add_argument("--check", metavar="SPEC", help="print the spec's latent / frame counts")
    parser.add_argument("--mode", choices=sorted(camera_mod.MODE_LATENT_MULTIPLE), default="ar",
                        help="mode whose chunks are marked and whose length rule is checked")
    args = parser.parse_args(argv)
    if not args.plot and not args.check:
        parser.error("give --plot SPEC OUT or --check SPEC")
    try:
        if args.check:
            traj = camera_mod.parse_pose(load_spec(args.check), mode=args.mode)
            print(json.dumps({"latents": traj.num_latents, "moves": traj.num_latents - 1,
                              "frames": traj.num_frames, "mode": args.mode}))
        if args.plot:
            spec_text, out = args.plot
            spec = load_spec(spec_text)
            written = plot_path(spec, out, mode=args.mode,
                                title=spec_text if isinstance(spec, str) else Path(spec_text).name)
            print(f"wrote {written}")
    except PipelineError as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot write the picture: {exc}", file=sys.stderr)
        return 1
    return 0
