"""Tests of pipeline.generation.camera: pose strings, pose JSON, action lists, action labels, frame rules."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from pipeline.errors import FrameCountError, PoseSpecError
from pipeline.generation import camera
from pipeline.generation.camera import (
    MAX_LATENTS,
    CameraTrajectory,
    action_labels,
    check_latent_count,
    frames_to_latents,
    latents_to_frames,
    parse_pose,
)

K_PX = np.array([[969.6969696969696, 0.0, 960.0], [0.0, 969.6969696969696, 540.0], [0.0, 0.0, 1.0]])
K_NORM = np.array([[969.6969696969696 / 1920.0, 0.0, 0.5], [0.0, 969.6969696969696 / 1080.0, 0.5],
                   [0.0, 0.0, 1.0]])


def rx(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def ry(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rz(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def pose(rot: np.ndarray | None = None, t=(0.0, 0.0, 0.0)) -> np.ndarray:
    m = np.eye(4)
    if rot is not None:
        m[:3, :3] = rot
    m[:3, 3] = t
    return m


def pose_json(c2ws, ks=None) -> dict:
    ks = [K_PX] * len(c2ws) if ks is None else ks
    return {str(i): {"extrinsic": np.asarray(c).tolist(), "K": np.asarray(k).tolist()}
            for i, (c, k) in enumerate(zip(c2ws, ks))}


def assert_close(actual: torch.Tensor, expected, atol=1e-6) -> None:
    np.testing.assert_allclose(actual.double().numpy(), np.asarray(expected, dtype=np.float64),
                               atol=atol, rtol=0)


# --------------------------------------------------------------------------------------------
# Pose strings: every key, by hand
# --------------------------------------------------------------------------------------------

# key -> (final c2w after n latents, action label of every motion latent)
SINGLE_KEYS = {
    "w": (lambda n: pose(t=(0.0, 0.0, 0.08 * n)), 9),
    "s": (lambda n: pose(t=(0.0, 0.0, -0.08 * n)), 18),
    "d": (lambda n: pose(t=(0.08 * n, 0.0, 0.0)), 27),
    "a": (lambda n: pose(t=(-0.08 * n, 0.0, 0.0)), 36),
    "right": (lambda n: pose(ry(3.0 * n)), 1),
    "left": (lambda n: pose(ry(-3.0 * n)), 2),
    "up": (lambda n: pose(rx(3.0 * n)), 3),
    "down": (lambda n: pose(rx(-3.0 * n)), 4),
}


@pytest.mark.parametrize("key", sorted(SINGLE_KEYS))
@pytest.mark.parametrize("n", [1, 7, 30])
def test_single_key_trajectory(key, n):
    final, label = SINGLE_KEYS[key]
    traj = parse_pose(f"{key}-{n}")
    assert traj.num_latents == n + 1
    assert traj.num_frames == 4 * n + 1
    assert_close(traj.c2w[0], np.eye(4), atol=0)
    assert_close(traj.c2w[-1], final(n), atol=2e-6)
    # intermediate poses follow the same rule
    assert_close(traj.c2w[n // 2 + 1], final(n // 2 + 1), atol=2e-6)
    assert traj.actions.tolist() == [0] + [label] * n


@pytest.mark.parametrize(
    "spec, forward_axis",
    [
        ("right-30", [1.0, 0.0, 0.0]),  # yaw right 90 deg: looks along world +x (OpenCV x right)
        ("left-30", [-1.0, 0.0, 0.0]),
        ("up-30", [0.0, -1.0, 0.0]),  # pitch up 90 deg: looks along world -y (OpenCV y down)
        ("down-30", [0.0, 1.0, 0.0]),
    ],
)
def test_turn_directions_match_opencv_axes(spec, forward_axis):
    traj = parse_pose(spec)
    assert_close(traj.c2w[-1, :3, 2], forward_axis, atol=1e-6)


def test_combined_segments_translate_in_rotated_frame():
    traj = parse_pose("w-2, right-30, w-1, d-1")
    assert traj.num_latents == 35
    # forward 0.16 along z, turn 90 deg right, forward 0.08 now along +x, right 0.08 now along -z
    assert_close(traj.c2w[-1], pose(ry(90.0), (0.08, 0.0, 0.16 - 0.08)), atol=2e-6)
    assert traj.actions.tolist() == [0, 9, 9] + [1] * 30 + [9, 27]


def test_brief_example_string():
    traj = parse_pose("w-10, right-6, a-4")
    assert traj.num_latents == 21
    assert traj.actions.tolist() == [0] + [9] * 10 + [1] * 6 + [36] * 4
    expected_t = np.array([0.0, 0.0, 0.8]) + ry(18.0) @ np.array([-0.32, 0.0, 0.0])
    assert_close(traj.c2w[-1], pose(ry(18.0), expected_t), atol=2e-6)


def test_w31_is_32_latents_125_frames_with_default_intrinsics():
    traj = parse_pose("w-31")
    assert (traj.num_latents, traj.num_frames) == (32, 125)
    assert traj.c2w.dtype == traj.w2c.dtype == traj.intrinsics.dtype == torch.float32
    assert traj.actions.dtype == torch.int64
    assert tuple(traj.c2w.shape) == (32, 4, 4) and tuple(traj.intrinsics.shape) == (32, 3, 3)
    assert_close(traj.intrinsics, np.broadcast_to(K_NORM, (32, 3, 3)), atol=1e-7)
    assert_close(traj.w2c[-1], pose(t=(0.0, 0.0, -0.08 * 31)), atol=2e-6)


def test_string_is_case_and_whitespace_tolerant():
    a = parse_pose("  W - 3 ,RIGHT-2,\tUp -1 ")
    b = parse_pose("w-3, right-2, up-1")
    assert torch.equal(a.c2w, b.c2w) and torch.equal(a.actions, b.actions)
    assert a.actions.tolist() == [0, 9, 9, 9, 1, 1, 3]


def test_w2c_is_inverse_of_c2w():
    traj = parse_pose("w-3, right-5, up-4, d-2, down-1, s-2, left-7, a-3")
    eye = torch.eye(4).expand(traj.num_latents, 4, 4)
    assert_close(traj.w2c.double() @ traj.c2w.double(), eye, atol=1e-6)


def test_trajectory_is_frozen():
    traj = parse_pose("w-1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        traj.num_latents = 5  # type: ignore[misc]
    with pytest.raises(ValueError, match="actions"):
        CameraTrajectory(traj.c2w, traj.w2c, traj.intrinsics, traj.actions.float(), 2, 5)


# --------------------------------------------------------------------------------------------
# Action lists and combined keys
# --------------------------------------------------------------------------------------------


def test_action_list_speed_and_degrees():
    traj = parse_pose([{"key": "w", "latents": 8, "speed": 0.12},
                       {"key": "left", "latents": 4, "degrees": 5}])
    assert traj.num_latents == 13
    assert_close(traj.c2w[8], pose(t=(0.0, 0.0, 0.96)), atol=2e-6)
    assert_close(traj.c2w[12], pose(ry(-20.0), (0.0, 0.0, 0.96)), atol=2e-6)
    assert traj.actions.tolist() == [0] + [9] * 8 + [2] * 4


def test_action_list_defaults_equal_pose_string():
    items = [{"key": k, "latents": 3} for k in ["w", "right", "up", "a", "down", "s", "left", "d"]]
    a = parse_pose(items)
    b = parse_pose("w-3, right-3, up-3, a-3, down-3, s-3, left-3, d-3")
    assert torch.equal(a.c2w, b.c2w) and torch.equal(a.actions, b.actions)


def test_combined_move_and_yaw_rotates_then_translates():
    traj = parse_pose([{"key": "w+right", "latents": 3, "speed": 0.1, "degrees": 20}])
    # latent k: yaw to 20k deg, then step 0.1 along the new forward axis
    t = sum(0.1 * np.array([math.sin(math.radians(a)), 0.0, math.cos(math.radians(a))])
            for a in (20, 40, 60))
    assert_close(traj.c2w[-1], pose(ry(60.0), t), atol=2e-6)
    # translating before rotating would have started straight ahead: t would differ
    t_wrong = sum(0.1 * np.array([math.sin(math.radians(a)), 0.0, math.cos(math.radians(a))])
                  for a in (0, 20, 40))
    assert np.abs(t - t_wrong).max() > 0.02
    # step direction is 20 deg off the previous forward axis: forward (1) + yaw right (1)
    assert traj.actions.tolist() == [0, 10, 10, 10]


@pytest.mark.parametrize("key", ["w+right", "s+left", "d+left", "a+right+up"])
def test_turning_30_degrees_while_moving_is_rejected(key):
    with pytest.raises(PoseSpecError, match="below 30 when turning left/right while moving"):
        parse_pose([{"key": key, "latents": 2, "degrees": 30}])
    assert parse_pose([{"key": key, "latents": 2, "degrees": 29.5}]).num_latents == 3


@pytest.mark.parametrize("key, label", [("right", 1), ("w+up", 12), ("d+down", 31)])
def test_30_degrees_allowed_without_yaw_and_move(key, label):
    traj = parse_pose([{"key": key, "latents": 2, "degrees": 30}])
    assert traj.actions.tolist() == [0, label, label]


def test_combined_move_and_pitch():
    traj = parse_pose([{"key": "w+up", "latents": 1, "speed": 0.1, "degrees": 30}])
    assert_close(traj.c2w[1], pose(rx(30.0), (0.0, -0.05, 0.1 * math.sqrt(3) / 2)), atol=2e-6)
    assert traj.actions.tolist() == [0, 1 * 9 + 3]


def test_combined_yaw_and_pitch_order():
    traj = parse_pose([{"key": "right+up", "latents": 1, "degrees": 20}])
    assert_close(traj.c2w[1], pose(ry(20.0) @ rx(20.0)), atol=1e-6)  # yaw first, then pitch
    assert not np.allclose(ry(20.0) @ rx(20.0), rx(20.0) @ ry(20.0), atol=1e-3)
    assert traj.actions.tolist() == [0, 5]


@pytest.mark.parametrize(
    "key, label",
    [("w+left", 1 * 9 + 2), ("s+right", 2 * 9 + 1), ("d+up", 3 * 9 + 3), ("a+down", 4 * 9 + 4),
     ("w+d", 5 * 9), ("w+a", 6 * 9), ("s+d", 7 * 9), ("s+a", 8 * 9), ("left+up", 7),
     ("right+down", 6), ("LEFT + Down", 8), ("w+d+right+up", 5 * 9 + 5)],
)
def test_combined_key_labels(key, label):
    traj = parse_pose([{"key": key, "latents": 2}])
    assert traj.actions.tolist() == [0, label, label]


def test_action_list_as_json_text():
    items = [{"key": "w+left", "latents": 2, "speed": 0.2}, {"key": "up", "latents": 1}]
    a = parse_pose(json.dumps(items))
    b = parse_pose(items)
    assert torch.equal(a.c2w, b.c2w) and a.actions.tolist() == [0, 11, 11, 3]


# --------------------------------------------------------------------------------------------
# Pose JSON
# --------------------------------------------------------------------------------------------


def _hand_poses():
    return [
        np.eye(4),
        pose(ry(10.0), (0.1, 0.0, 0.3)),
        pose(ry(25.0) @ rx(-5.0), (0.4, -0.1, 0.5)),
        pose(rz(3.0) @ ry(40.0) @ rx(8.0), (0.2, 0.05, 1.2)),
    ]


def _hand_ks():
    return [K_PX, np.array([[500.0, 0.0, 320.0], [0.0, 520.0, 240.0], [0.0, 0.0, 1.0]]),
            np.array([[1000.0, 2.0, 400.0], [0.0, 900.0, 300.0], [0.0, 0.0, 1.0]]), K_PX]


@pytest.mark.parametrize("as_text", [False, True])
def test_pose_json_round_trip(as_text):
    c2ws, ks = _hand_poses(), _hand_ks()
    data = pose_json(c2ws, ks)
    traj = parse_pose(json.dumps(data, indent=2) if as_text else data)
    assert traj.num_latents == 4 and traj.num_frames == 13
    assert_close(traj.c2w, np.stack(c2ws), atol=1e-7)
    assert_close(traj.w2c, np.linalg.inv(np.stack(c2ws)), atol=1e-6)
    expected_k = [
        K_NORM,
        [[500.0 / 640.0, 0.0, 0.5], [0.0, 520.0 / 480.0, 0.5], [0.0, 0.0, 1.0]],
        [[1000.0 / 800.0, 2.0, 0.5], [0.0, 900.0 / 600.0, 0.5], [0.0, 0.0, 1.0]],  # skew kept
        K_NORM,
    ]
    assert_close(traj.intrinsics, expected_k, atol=1e-6)
    assert traj.actions[0].item() == 0


def test_pose_json_from_string_trajectory_matches():
    s = parse_pose("w-4, left-3, up-2, a-1")
    data = pose_json(s.c2w.double().numpy())
    j = parse_pose(data)
    assert torch.equal(j.actions, s.actions)
    assert_close(j.w2c, s.w2c, atol=1e-6)
    assert_close(j.intrinsics, s.intrinsics, atol=0)


def test_pose_json_keys_any_order_and_int_keys():
    c2ws = _hand_poses()
    data = pose_json(c2ws)
    shuffled = {k: data[k] for k in ["2", "0", "3", "1"]}
    int_keys = {int(k): v for k, v in data.items()}
    ref = parse_pose(data)
    for spec in (shuffled, int_keys):
        traj = parse_pose(spec)
        assert torch.equal(traj.c2w, ref.c2w) and torch.equal(traj.actions, ref.actions)


def test_pose_json_scaled_rotation_block_is_refused():
    # a world state refuses what is not a rotation (the camera encoding inverts by transposing), so the
    # pose JSON that would start such a world is refused at once, in its own words
    c2w = pose(ry(5.0) * 2.0, (0.0, 0.0, 0.1))
    with pytest.raises(PoseSpecError, match="not a rotation"):
        parse_pose(pose_json([np.eye(4), c2w]))
    nearly = pose(ry(5.0) * (1 + 2e-5), (0.0, 0.0, 0.1))  # float noise of a stored pose: accepted
    assert parse_pose(pose_json([np.eye(4), nearly])).actions.tolist() == [0, 1 * 9 + 1]


# --------------------------------------------------------------------------------------------
# Action labels: the full 9 x 9 grid and the thresholds
# --------------------------------------------------------------------------------------------

# translation class -> step direction (y added to show vertical motion is ignored)
TRANS_DIRS = {
    0: None, 1: [0, 0.05, 1], 2: [0, -0.05, -1], 3: [1, 0.05, 0], 4: [-1, 0, 0],
    5: [1, 0, 1], 6: [-1, 0.05, 1], 7: [1, 0, -1], 8: [-1, -0.05, -1],
}
# rotation class -> (yaw deg, pitch deg)
ROTS = {0: (0, 0), 1: (2, 0), 2: (-2, 0), 3: (0, 2), 4: (0, -2),
        5: (2, 2), 6: (2, -2), 7: (-2, 2), 8: (-2, -2)}
START = pose(rz(7.0) @ ry(-35.0) @ rx(12.0), (1.0, -2.0, 3.0))  # labels are relative motions


@pytest.mark.parametrize("rot_class", range(9))
@pytest.mark.parametrize("trans_class", range(9))
def test_action_label_grid(trans_class, rot_class):
    yaw, pitch = ROTS[rot_class]
    direction = TRANS_DIRS[trans_class]
    t = (0.0, 0.0, 0.0) if direction is None else 0.1 * np.asarray(direction, float)
    rel = pose(ry(yaw) @ rx(pitch), t)
    traj = parse_pose(pose_json([START, START @ rel]))
    assert traj.actions.tolist() == [0, trans_class * 9 + rot_class]
    labels = action_labels(np.stack([START, START @ rel]))
    assert labels.tolist() == [0, trans_class * 9 + rot_class]


@pytest.mark.parametrize(
    "rel, label",
    [
        (pose(t=(0.0, 0.0, 5e-5)), 0),  # too short to count as motion
        (pose(t=(0.0, 0.0, 2e-4)), 9),
        (pose(t=(0.0, 0.3, 0.0)), 0),  # purely vertical: no class
        (pose(t=(math.sin(math.radians(59)), 0.0, math.cos(math.radians(59)))), 5 * 9),
        # 61 deg off forward is 29 deg off the x axis: right only
        (pose(t=(math.sin(math.radians(61)), 0.0, math.cos(math.radians(61)))), 3 * 9),
        (pose(t=(math.sin(math.radians(40)), 0.0, math.cos(math.radians(40)))), 5 * 9),
        (pose(t=(math.sin(math.radians(100)), 0.0, math.cos(math.radians(100)))), 3 * 9),
        (pose(t=(math.sin(math.radians(125)), 0.0, math.cos(math.radians(125)))), 7 * 9),
        (pose(ry(0.04)), 0),
        (pose(ry(0.06)), 1),
        (pose(rx(-0.04)), 0),
        (pose(rx(-0.06)), 4),
        (pose(rz(30.0)), 0),  # roll carries no label
    ],
)
def test_action_label_thresholds(rel, label):
    assert action_labels(np.stack([START, START @ rel])).tolist() == [0, label]


def test_euler_xyz_matches_definition_and_gimbal_lock():
    cases = [(10.0, 20.0, 30.0), (-40.0, 5.0, 170.0), (0.3, -0.2, 0.1), (-120.0, -80.0, 45.0)]
    for a, b, c in cases:
        np.testing.assert_allclose(camera._euler_xyz_degrees(rz(c) @ ry(b) @ rx(a)), [a, b, c],
                                   atol=1e-9)
    # at b = +-90 deg the third angle is 0 and the first carries a -+ c
    np.testing.assert_allclose(camera._euler_xyz_degrees(rz(30.0) @ ry(90.0) @ rx(10.0)),
                               [-20.0, 90.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(camera._euler_xyz_degrees(rz(30.0) @ ry(-90.0) @ rx(10.0)),
                               [40.0, -90.0, 0.0], atol=1e-6)


# --------------------------------------------------------------------------------------------
# Latent / frame rules
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "latents, frames", [(1, 1), (2, 5), (4, 13), (16, 61), (32, 125), (64, 253)]
)
def test_latents_frames_round_trip(latents, frames):
    assert latents_to_frames(latents) == frames
    assert frames_to_latents(frames) == latents


@pytest.mark.parametrize("frames, text", [(124, "121 or 125"), (126, "125 or 129"), (2, "1 or 5")])
def test_frames_to_latents_rejects_non_4k_plus_1(frames, text):
    with pytest.raises(FrameCountError, match=text) as exc:
        frames_to_latents(frames)
    assert f"{frames} frames" in str(exc.value)


@pytest.mark.parametrize("bad", [0, -3, 2.0, True, "5"])
def test_frame_helpers_reject_non_positive_ints(bad):
    with pytest.raises(FrameCountError):
        frames_to_latents(bad)
    with pytest.raises(FrameCountError):
        latents_to_frames(bad)


@pytest.mark.parametrize("mode, latents", [("ar", 4), ("ar", 32), ("ar", 256),
                                           ("bidirectional", 16), ("bidirectional", 64)])
def test_check_latent_count_accepts(mode, latents):
    assert check_latent_count(latents, mode) is None


@pytest.mark.parametrize(
    "mode, latents, message",
    [
        ("bidirectional", 30, "bidirectional needs a latent count divisible by 16; 30 latents "
                              "(117 frames) is not: nearest valid are 61 or 125 frames"),
        ("ar", 30, "ar needs a latent count divisible by 4; 30 latents (117 frames) is not: "
                   "nearest valid are 109 or 125 frames"),
        ("ar", 33, "nearest valid are 125 or 141 frames"),
        ("bidirectional", 5, "nearest valid is 61 frames"),
        ("ar", 1, "nearest valid is 13 frames"),
        ("ar", 260, "exceeds the maximum of 256 latents (1021 frames)"),
        ("ar", 0, "positive integer"),
    ],
)
def test_check_latent_count_rejects(mode, latents, message):
    with pytest.raises(FrameCountError) as exc:
        check_latent_count(latents, mode)
    assert message in str(exc.value)


def test_check_latent_count_unknown_mode():
    with pytest.raises(ValueError, match="'causal'"):
        check_latent_count(16, "causal")


def test_num_latents_must_match():
    assert parse_pose("w-31", num_latents=32).num_latents == 32
    with pytest.raises(FrameCountError) as exc:
        parse_pose("w-31", num_latents=29)
    # worded in the spec's units (moves), with the frames on both sides
    assert "31 moves (32 latents with the start, 125 frames)" in str(exc.value)
    assert "113 frames were requested" in str(exc.value) and "needs 28 moves" in str(exc.value)


def test_max_latents():
    assert parse_pose(f"w-{MAX_LATENTS - 1}").num_latents == MAX_LATENTS
    with pytest.raises(FrameCountError, match=str(MAX_LATENTS)):
        parse_pose(f"w-{MAX_LATENTS}")
    with pytest.raises(FrameCountError, match="'s-100'"):
        parse_pose("w-200, s-100")
    with pytest.raises(FrameCountError, match="maximum"):
        parse_pose("w-" + "9" * 5000)
    with pytest.raises(FrameCountError, match="maximum"):
        parse_pose([{"key": "w", "latents": 10**12}])
    with pytest.raises(FrameCountError, match=f"{MAX_LATENTS + 1} entries"):
        parse_pose(pose_json([np.eye(4)] * (MAX_LATENTS + 1)))


# --------------------------------------------------------------------------------------------
# Errors: each names its fault
# --------------------------------------------------------------------------------------------

STRING_ERRORS = [
    ("", "empty"),
    ("   ", "empty"),
    ("w-3.5", "'w-3.5'"),
    ("w-3.5", "not a whole number"),
    ("w-0", "'w-0'"),
    ("w--2", "positive"),
    ("x-3", "unknown key 'x'"),
    ("w-3, jump-2", "'jump-2'"),
    ("w-3,", "segment 2 is empty"),
    ("w-3,,d-1", "segment 2 is empty"),
    ("w3", "'w3'"),
    ("w-3 d-2", "'w-3 d-2'"),
    ("w-abc", "'abc'"),
    ("w-3-4", "'w-3-4'"),
]


@pytest.mark.parametrize("spec, fragment", STRING_ERRORS)
def test_pose_string_errors(spec, fragment):
    with pytest.raises(PoseSpecError) as exc:
        parse_pose(spec)
    assert fragment in str(exc.value)
    assert exc.value.code == "INVALID_POSE"


LIST_ERRORS = [
    ([], "empty"),
    (["w"], "action 0 must be an object"),
    ([{"latents": 2}], "missing field 'key'"),
    ([{"key": "w"}], "missing field 'moves'"),
    ([{"key": 3, "latents": 2}], "'key' must be a string"),
    ([{"key": "w", "latents": 2}, {"key": "jump", "latents": 1}],
     "action 1 ('jump'): unknown key 'jump'"),
    ([{"key": "w", "latents": 0}], "'latents' must be a positive whole number of moves"),
    ([{"key": "w", "latents": 2.0}], "'latents' must be a positive whole number of moves"),
    ([{"key": "w", "latents": True}], "'latents' must be a positive whole number of moves"),
    ([{"key": "w", "latents": 2, "speed": 0}], "'speed' must be a number in (0, 1]"),
    ([{"key": "w", "latents": 2, "speed": 1.5}], "'speed' must be a number in (0, 1]"),
    ([{"key": "w", "latents": 2, "speed": float("nan")}], "'speed'"),
    ([{"key": "w", "latents": 2, "speed": "0.1"}], "'speed'"),
    ([{"key": "left", "latents": 2, "degrees": 31}], "'degrees' must be a number in (0, 30]"),
    ([{"key": "left", "latents": 2, "degrees": -1}], "'degrees'"),
    ([{"key": "w", "latents": 2, "degrees": 5}], "'degrees' does not apply"),
    ([{"key": "left", "latents": 2, "speed": 0.1}], "'speed' does not apply"),
    ([{"key": "w", "latents": 2, "sped": 0.1}], "unknown field(s) 'sped'"),
    ([{"key": "w+s", "latents": 2}], "opposite keys 's' and 'w'"),
    ([{"key": "left+right", "latents": 2}], "opposite keys 'left' and 'right'"),
    ([{"key": "w+w", "latents": 2}], "repeated"),
    ([{"key": "w+", "latents": 2}], "unknown key ''"),
]


@pytest.mark.parametrize("spec, fragment", LIST_ERRORS)
def test_action_list_errors(spec, fragment):
    with pytest.raises(PoseSpecError) as exc:
        parse_pose(spec)
    assert fragment in str(exc.value)


def _entry_with(index: int, **changes) -> dict:
    data = pose_json(_hand_poses())
    data[str(index)] = {**data[str(index)], **changes}
    return data


def _without(data: dict, key: str) -> dict:
    return {k: v for k, v in data.items() if k != key}


def _bottom_row(row):
    m = pose(ry(10.0))
    m[3] = row
    return m.tolist()


JSON_ERRORS = [
    ({}, "no entries"),
    (_without(pose_json(_hand_poses()), "2"), "missing [2]"),
    ({**_without(pose_json(_hand_poses()), "3"), "7": pose_json(_hand_poses())["3"]},
     "unexpected [7]"),
    ({"0": pose_json(_hand_poses())["0"], "key": {}}, "'key' is not a latent index"),
    ({"0": pose_json(_hand_poses())["0"], "01": {}}, "'01' is not a latent index"),
    ({"0": pose_json(_hand_poses())["0"], 0: {}}, "index 0 appears twice"),
    ({"0": []}, "entry '0' must be an object"),
    ({"0": {"extrinsic": np.eye(4).tolist()}}, "entry '0': missing field 'K'"),
    (_entry_with(1, extra=1), "entry '1': unknown field(s) 'extra'"),
    (_entry_with(2, extrinsic=np.eye(3).tolist()), "entry '2' extrinsic must be a 4x4 matrix"),
    (_entry_with(2, extrinsic=[[1, 0, 0, 0]] * 3 + [[0, 0, 0]]),
     "entry '2' extrinsic must be a 4x4"),
    (_entry_with(1, K=np.eye(4).tolist()), "entry '1' K must be a 3x3 matrix"),
    (_entry_with(1, extrinsic=[[1, 0, 0, "0"], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]),
     "entry '1' extrinsic must contain only numbers"),
    (_entry_with(1, extrinsic=[[True, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]),
     "entry '1' extrinsic must contain only numbers"),
    (_entry_with(3, extrinsic=[[1, 0, 0, float("nan")], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]),
     "entry '3' extrinsic contains a non-finite value"),
    (_entry_with(3, K=[[float("inf"), 0, 1], [0, 1, 1], [0, 0, 1]]),
     "entry '3' K contains a non-finite"),
    (_entry_with(1, extrinsic=[[1, 0, 0, 1e9], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]),
     "entry '1' extrinsic has an entry larger than"),
    (_entry_with(1, extrinsic=[[1, 0, 0, 10**400], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]),
     "entry '1' extrinsic has a number too large"),
    (_entry_with(2, extrinsic=_bottom_row([0, 0, 1, 1])),
     "entry '2' extrinsic bottom row must be [0, 0, 0, 1]"),
    (_entry_with(2, extrinsic=_bottom_row([0, 0, 0, 2])), "entry '2' extrinsic bottom row"),
    (_entry_with(1, extrinsic=[[1, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 1]]),
     "entry '1' extrinsic is not invertible"),
    (_entry_with(1, extrinsic=[[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, 0], [0, 0, 0, 1]]),
     "entry '1' extrinsic rotation block has a negative determinant"),
    (_entry_with(2, K=[[500, 0, 0], [0, 500, 240], [0, 0, 1]]), "entry '2' K must have positive"),
    (_entry_with(2, K=[[-500, 0, 320], [0, 500, 240], [0, 0, 1]]),
     "entry '2' K must have positive"),
    (_entry_with(2, K=[[500, 0, 320], [0, 500, 240], [0, 1, 1]]), "entry '2' K bottom row"),
]


@pytest.mark.parametrize("spec, fragment", JSON_ERRORS)
def test_pose_json_errors(spec, fragment):
    with pytest.raises(PoseSpecError) as exc:
        parse_pose(spec)
    assert fragment in str(exc.value)


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ('{"0": {"extrinsic": [[1,0,0,0]]', "not valid JSON"),
        ("[{'key': 'w', 'latents': 2}]", "not valid JSON"),  # single quotes are not JSON
        ("[" * 100_000, "JSON"),
        (" " * 10 + "{" + " " * camera._MAX_JSON_CHARS, "characters"),
        (42, "got int"),
        (None, "got NoneType"),
        (b"w-3", "got bytes"),
    ],
)
def test_other_spec_errors(spec, fragment):
    with pytest.raises(PoseSpecError) as exc:
        parse_pose(spec)
    assert fragment in str(exc.value)


def test_num_latents_argument_validated():
    with pytest.raises(FrameCountError, match="positive integer"):
        parse_pose("w-3", num_latents=0)
