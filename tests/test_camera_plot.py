"""`python -m pipeline.camera --plot SPEC out.png` (issue 12, item 11): one picture for every
camera form, with headings, chunk markers, pitch and action labels."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.generation.camera import parse_pose
from pipeline.tools.camera_plot import (
    _BAD,
    _CHUNK,
    _DOWN,
    _LEVEL,
    _UP,
    action_name,
    main,
    render_path,
    stretch_labels,
)

REPO = Path(__file__).resolve().parents[1]
SPEC = "w-15, right-8, up-4, a-8, down-4"


def pose_json_of(spec: str) -> dict:
    """The same path as a pose JSON (what pose_json / pose_key take)."""
    traj = parse_pose(spec)
    k = [[969.7, 0.0, 960.0], [0.0, 969.7, 540.0], [0.0, 0.0, 1.0]]
    return {str(i): {"extrinsic": traj.c2w[i].double().tolist(), "K": k}
            for i in range(traj.num_latents)}


def count_colour(img: Image.Image, colour) -> int:
    """Pixels of exactly ``colour`` in the drawing (below the title and legend)."""
    pixels = np.asarray(img.convert("RGB"))[90:].reshape(-1, 3)
    return int((np.abs(pixels.astype(int) - np.array(colour)).sum(axis=1) == 0).sum())


def test_action_names_follow_the_models_labels():
    assert action_name(0) == "still"
    assert [action_name(x) for x in parse_pose("w-1, left-1, up-1, d-1").actions.tolist()[1:]] \
        == ["w", "left", "up", "d"]
    assert action_name(parse_pose([{"key": "w+left", "moves": 1}]).actions[1]) == "w+left"
    assert action_name(80) == "s+a+left+down"
    with pytest.raises(ValueError):
        action_name(81)


def test_every_camera_form_gets_the_same_labels():
    expected = [(1, 15, "w x15"), (16, 23, "right x8"), (24, 27, "up x4  pitch +12°"),
                (28, 35, "a x8"), (36, 39, "down x4  pitch +0°")]
    actions = [{"key": "w", "moves": 15}, {"key": "right", "moves": 8}, {"key": "up", "moves": 4},
               {"key": "a", "moves": 8}, {"key": "down", "moves": 4}]
    for spec in (SPEC, actions, json.dumps(actions), pose_json_of(SPEC)):
        assert stretch_labels(parse_pose(spec)) == expected


def test_picture_shows_headings_chunks_and_pitch():
    level = render_path("w-7")
    assert level.size == (900, 760)
    assert count_colour(level, _LEVEL) > 50 and count_colour(level, _CHUNK) > 20
    assert count_colour(level, _UP) == count_colour(level, _DOWN) == 0  # no pitch, no pitch colours
    pitched = render_path("w-3, up-4, w-4, down-8, w-4")  # looking up, then down, while walking
    assert count_colour(pitched, _UP) > 10 and count_colour(pitched, _DOWN) > 10
    # more chunks, more markers: 2 chunks of 4 latents against 8
    assert count_colour(render_path("w-31"), _CHUNK) > 2 * count_colour(level, _CHUNK)
    # a turn in place (no translation) still draws
    assert count_colour(render_path("right-31"), _LEVEL) > 50


def test_cli_plots_a_string_an_action_list_and_a_pose_json_file(tmp_path, capsys):
    actions = json.dumps([{"key": "w", "moves": 7, "speed": 0.12}, {"key": "w+left", "moves": 8}])
    pose_file = tmp_path / "pose.json"
    pose_file.write_text(json.dumps(pose_json_of(SPEC)))
    actions_file = tmp_path / "actions.json"
    actions_file.write_text(actions)
    for i, spec in enumerate((SPEC, actions, str(pose_file), str(actions_file))):
        out = tmp_path / f"path{i}.png"
        assert main(["--plot", spec, str(out)]) == 0
        img = Image.open(out)
        assert img.format == "PNG" and img.size == (900, 760)
        assert count_colour(img, _CHUNK) > 0
    assert "wrote" in capsys.readouterr().out


def test_cli_reports_bad_specs_without_a_traceback(tmp_path, capsys):
    out = tmp_path / "bad.png"
    assert main(["--plot", "w-3, fly-2", str(out)]) == 1
    assert main(["--plot", str(tmp_path / "missing.json"), str(out)]) == 1
    err = capsys.readouterr().err
    assert "error: INVALID_POSE: pose segment 'fly-2'" in err and "does not exist" in err
    assert "Traceback" not in err and not out.exists()
    assert main(["--check", "w-30"]) == 1
    assert "INVALID_FRAME_COUNT" in capsys.readouterr().err
    assert main(["--check", "w-31"]) == 0
    assert json.loads(capsys.readouterr().out) == {"latents": 32, "moves": 31, "frames": 125,
                                                   "chunks": 8, "mode": "ar"}


def test_python_m_pipeline_camera_plot(tmp_path):
    out = tmp_path / "p.png"
    done = subprocess.run([sys.executable, "-m", "pipeline.camera", "--plot", "w-10, right-6, a-3",
                           str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert Image.open(out).size == (900, 760)
    helped = subprocess.run([sys.executable, "-m", "pipeline.camera", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "--plot SPEC OUT" in helped.stdout


# ---- issue 23: units at the command line, visible turns, labels apart, refused lengths, states ----
def test_check_counts_a_continuation_without_the_start_latent(capsys):
    """`w-8` is refused for a new AR job (9 latents) but right for a continuation (8 new latents)."""
    assert main(["--check", "w-8"]) == 1
    err = capsys.readouterr().err
    assert "INVALID_FRAME_COUNT" in err and "'w-7' or 'w-11' instead of 'w-8'" in err
    assert "8 moves would be right to continue a world with continue_from" in err  # and why
    assert main(["--check", "w-8", "--continuation"]) == 0
    assert json.loads(capsys.readouterr().out) == {"new_latents": 8, "new_frames": 32, "chunks": 2,
                                                   "mode": "ar", "continuation": True}
    assert main(["--check", "w-7", "--continuation"]) == 1
    assert "nearest valid are 4 latents (16 frames) or 8 latents (32 frames)" in capsys.readouterr().err
    assert main(["--check", "w-15", "--continuation", "--mode", "bidirectional"]) == 1
    assert main(["--check", "w-16", "--continuation", "--mode", "bidirectional"]) == 0
    assert json.loads(capsys.readouterr().out)["chunks"] == 1


def _extent(img: Image.Image, colour) -> int:
    pixels = np.asarray(img.convert("RGB"))[90:]
    ys, xs = np.nonzero((np.abs(pixels.astype(int) - np.array(colour)).sum(axis=2) == 0))
    return int(max(xs.max() - xs.min(), ys.max() - ys.min())) if len(xs) else 0


def test_turns_and_pitch_in_place_are_drawn_as_fans_not_a_dot():
    turn = render_path("right-31")  # 32 latents at one spot, turning 93 degrees
    assert _extent(turn, _LEVEL) > 80  # a fan of arrows, not a dot
    assert count_colour(turn, _LEVEL) > 2 * count_colour(render_path("right-3"), _LEVEL)
    # looking up 12 degrees in place: the up-coloured arrows reach out of the start's dot
    pitch = render_path("up-3")
    assert _extent(pitch, _UP) > 30


def test_labels_never_overlap():
    img = render_path("right-3, up-4, left-4, down-4, right-4, up-4, left-4, down-3")  # all in place
    boxes = img.info["labels"]
    assert len(boxes) >= 8  # start, chunk labels, one label per stretch
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (a, b)


def test_a_refused_length_is_marked_and_exits_1(tmp_path, capsys):
    out = tmp_path / "bad-length.png"
    assert main(["--plot", "w-30", str(out)]) == 1
    err = capsys.readouterr().err
    assert "INVALID_FRAME_COUNT" in err and "'w-27' or 'w-31'" in err
    img = Image.open(out)  # still written, to show what was asked for, framed in red
    assert count_colour(img, _BAD) > 2000 and render_path("w-31").info["problem"] is None
    assert count_colour(render_path("w-31"), _BAD) == 0
    assert main(["--plot", "w-15", str(tmp_path / "bi.png"), "--mode", "bidirectional"]) == 0


def test_a_world_state_plots_the_path_so_far(tmp_path, capsys):
    import torch

    from pipeline.generation.world_state import WorldState

    traj = parse_pose("w-7, right-8")  # 16 latents: a whole number of AR chunks
    n = traj.num_latents
    state = WorldState(latents=torch.zeros(n, 32, 3, 5), c2w=traj.c2w.double(),
                       intrinsics=traj.intrinsics.float().expand(n, 3, 3).clone()
                       if traj.intrinsics.dim() == 2 else traj.intrinsics.float(),
                       actions=traj.actions.long(), image_latent=torch.zeros(32, 3, 5),
                       vision=torch.zeros(4, 8), prompt="p", negative_prompt="", seed=1, mode="ar",
                       num_inference_steps=4, guidance_scale=1.0, width=80, height=48, checkpoint="x" * 64)
    path = tmp_path / "world.safetensors"
    state.save(path)
    out = tmp_path / "state.png"
    assert main(["--plot", str(path), str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    img = Image.open(out)
    assert count_colour(img, _CHUNK) > 0 and count_colour(img, _BAD) == 0
    assert [t for _, _, t in stretch_labels(parse_pose("w-7, right-8"))] == ["w x7", "right x8"]
    assert main(["--plot", str(tmp_path / "missing.safetensors"), str(out)]) == 1
    assert "does not exist" in capsys.readouterr().err
