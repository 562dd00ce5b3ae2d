"""Camera lengths in the units the user wrote (issue 12, items 7 and 8).

A pose string and an action list count *moves* (the start latent is extra); a pose JSON counts
latents; num_frames counts frames. Errors name valid counts in those units, the action list's
``moves`` field (``latents`` its deprecated alias) means what the pose string's count means, and a
request with ``num_frames`` but no camera field gets a forward path of that length.
"""

from __future__ import annotations


import pytest
from conftest import b64, png_bytes, run

import schemas
from pipeline.errors import FrameCountError, PoseSpecError
from pipeline.generation.camera import check_frame_count, parse_pose, spec_form

IDENTITY = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
K = [[969.7, 0, 960], [0, 969.7, 540], [0, 0, 1]]



def request(**camera):
    return {"prompt": "a quiet harbour at dawn", "image_base64": b64(png_bytes()), **camera}


def error_of(out) -> tuple[str, str]:
    assert set(out) == {"error"}, out
    code, _, message = out["error"].partition(": ")
    return code, message


# ---- moves, the same unit in the pose string and the action list --------------------------------
def test_moves_count_like_the_pose_string_and_latents_is_a_deprecated_alias():
    by_string = parse_pose("w-15, right-8, a-8")
    by_moves = parse_pose([{"key": "w", "moves": 15}, {"key": "right", "moves": 8},
                           {"key": "a", "moves": 8}])
    by_old_name = parse_pose([{"key": "w", "latents": 15}, {"key": "right", "moves": 8},
                              {"key": "a", "latents": 8}])
    assert by_string.num_latents == by_moves.num_latents == by_old_name.num_latents == 32
    assert by_moves.num_frames == 125
    assert (by_string.c2w == by_moves.c2w).all() and (by_moves.c2w == by_old_name.c2w).all()
    with pytest.raises(PoseSpecError, match="give 'moves' or its deprecated old name 'latents'"):
        parse_pose([{"key": "w", "moves": 3, "latents": 3}])
    with pytest.raises(PoseSpecError, match="missing field 'moves'"):
        parse_pose([{"key": "w"}])
    with pytest.raises(PoseSpecError, match="'moves' must be a positive whole number of moves"):
        parse_pose([{"key": "w", "moves": 0}])


def test_spec_form_names_the_unit_of_each_camera_form():
    assert spec_form("w-3") == "pose string"
    assert spec_form('[{"key": "w", "moves": 3}]') == spec_form([{"key": "w", "moves": 3}]) \
        == "action list"
    assert spec_form({"0": {}}) == spec_form(' {"0": {}}') == "pose JSON"


# ---- errors worded in the user's units ------------------------------------------------------------
def test_pose_string_error_names_valid_move_counts_and_the_fixed_string():
    with pytest.raises(FrameCountError) as exc:
        parse_pose("w-30", mode="ar")
    message = str(exc.value)
    assert "must add up to 3, 7, 11, ..." in message
    assert "30 moves (31 latents with the start, 121 frames)" in message
    assert ("the nearest valid are 27 or 31 moves, e.g. 'w-27' or 'w-31' instead of 'w-30'"
            in message)
    with pytest.raises(FrameCountError) as exc:
        parse_pose("w-10, right-6, a-4", mode="ar")
    assert "'w-10, right-6, a-3' or 'w-10, right-6, a-7'" in str(exc.value)
    with pytest.raises(FrameCountError) as exc:
        parse_pose("w-30", mode="bidirectional")
    assert "15, 31, 47" in str(exc.value)
    assert "the nearest valid are 15 or 31 moves" in str(exc.value)
    assert parse_pose("w-31", mode="ar").num_frames == 125
    assert parse_pose("w-31", mode="bidirectional").num_frames == 125


def test_action_list_error_names_valid_move_counts():
    with pytest.raises(FrameCountError) as exc:
        parse_pose([{"key": "w", "moves": 8, "speed": 0.12}], mode="ar")
    message = str(exc.value)
    assert "the action list's moves must add up to 3, 7, 11" in message
    assert "8 moves (9 latents with the start, 33 frames)" in message
    assert "'moves': 7 or 11 in the last action" in message
    with pytest.raises(FrameCountError, match="'latents': 7 or 11 in the last action"):
        parse_pose([{"key": "w", "latents": 8}], mode="ar")


def test_pose_json_error_counts_entries():
    pose = {str(i): {"extrinsic": IDENTITY, "K": K} for i in range(9)}
    with pytest.raises(FrameCountError) as exc:
        parse_pose(pose, mode="ar")
    assert ("the pose JSON has 9 entries (33 frames): the nearest valid are 8 or 12 entries"
            in str(exc.value))


@pytest.mark.parametrize("frames, mode, expected", [
    (33, "ar", "are 29 or 45"), (30, "ar", "are 29 or 45"), (1, "ar", "is 13"),
    (62, "bidirectional", "are 61 or 125"), (29, "bidirectional", "is 61"),
])
def test_num_frames_error_names_valid_frame_counts(frames, mode, expected):
    with pytest.raises(FrameCountError) as exc:
        check_frame_count(frames, mode)
    assert f"num_frames {frames} cannot be rendered in {mode} mode" in str(exc.value)
    assert str(exc.value).endswith(f"the nearest valid {expected}")


def test_num_frames_checks_pass_and_return_latents():
    assert check_frame_count(125, "ar") == check_frame_count(125, "bidirectional") == 32
    assert check_frame_count(13, "ar") == 4


def test_handler_words_each_error_in_the_field_the_user_wrote(fake_pipeline):
    code, message = error_of(run(request(actions=[{"key": "w", "moves": 8, "speed": 0.12}])))
    assert code == "INVALID_FRAME_COUNT" and "'moves': 7 or 11" in message
    code, message = error_of(run(request(pose="w-30")))
    assert code == "INVALID_FRAME_COUNT" and "'w-31'" in message
    code, message = error_of(run(request(pose="w-31", num_frames=33)))
    assert code == "INVALID_FRAME_COUNT" and message.startswith("num_frames 33") \
        and "29 or 45" in message
    code, message = error_of(run(request(pose="w-31", num_frames=61)))
    assert code == "INVALID_FRAME_COUNT"
    assert "the pose string has 31 moves" in message and "61 frames were requested" in message \
        and "needs 15 moves, e.g. 'w-15'" in message
    assert not fake_pipeline.calls  # nothing was generated for any of them


# ---- num_frames without a camera field ---------------------------------------------------------
def test_default_pose_follows_num_frames():
    assert schemas.parse_input(request()).pose == "w-31"
    assert schemas.parse_input(request(num_frames=61)).pose == "w-15"
    assert schemas.parse_input(request(num_frames=13)).pose == "w-3"
    assert schemas.parse_input(request(num_frames=60)).pose == "w-31"  # reported in frames later
    assert schemas.parse_input(request(num_frames=61, pose="w-15, right-16")).pose \
        == "w-15, right-16"


def test_num_frames_alone_renders_that_many_frames_forward(fake_pipeline):
    out = run(request(num_frames=61))
    assert "error" not in out, out
    camera = fake_pipeline.calls[-1].camera
    assert out["num_frames"] == camera.num_frames == 61
    assert camera.num_latents == 16 and (camera.c2w[-1, :3, :3] == camera.c2w[0, :3, :3]).all()
    assert camera.c2w[-1, 2, 3] > 1.0  # walked forward (15 moves of 0.08)
    code, message = error_of(run(request(num_frames=33)))
    assert code == "INVALID_FRAME_COUNT" and message.startswith("num_frames 33") \
        and "29 or 45" in message
    code, message = error_of(run(request(num_frames=60)))
    assert code == "INVALID_FRAME_COUNT" and "the nearest valid are 45 or 61" in message


def test_num_frames_alone_through_the_real_tiny_pipeline(real_pipeline):
    out = run(request(num_frames=29), job_id="units-real")
    assert "error" not in out, out
    assert out["num_frames"] == 29
