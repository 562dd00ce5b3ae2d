"""The World engine object: a world that steps chunk by chunk (tiny model, CPU).

The queue job (``generate``), the continuation (``resume_world``) and the live socket drive the same
object, so a world stepped with actions A1..An must give bit for bit the latents of one job with the
equivalent action list and the same seed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.errors import GenerationCancelled, PoseSpecError, SessionTooLongError
from pipeline.generation.camera import parse_pose
from pipeline.generation.continuation import continuation_request
from pipeline.generation.engine import GenerationRequest
from pipeline.generation.world import ChunkActions

PROMPT = "a lantern-lit alley"
PLAY = [ChunkActions(("w",)), ChunkActions(("w", "left"), degrees=6.0), ChunkActions(()),
        ChunkActions(("d", "up"), speed=0.2)]


@pytest.fixture(scope="module")
def ar_pipe(tiny_pipeline):
    return tiny_pipeline


def job(pipe, image, spec, **extra):
    request = GenerationRequest(prompt=PROMPT, image=image, camera=parse_pose(spec, mode="ar"), mode="ar",
                                num_inference_steps=2, seed=11, **extra)
    return pipe.generate(request)


def played(pipe, image, actions, **extra):
    world = pipe.open_world(prompt=PROMPT, image=image, seed=11, num_inference_steps=2, **extra)
    chunks = [world.step(a) for a in actions]
    return world, chunks


def test_a_played_world_equals_one_job_with_the_equivalent_action_list(ar_pipe, image):
    world, chunks = played(ar_pipe, image, PLAY)
    actions = world.actions()
    assert actions == [
        {"key": "w", "moves": 3, "speed": 0.08},
        {"key": "w+left", "moves": 4, "speed": 0.08, "degrees": 6.0},
        {"key": "idle", "moves": 4},
        {"key": "d+up", "moves": 4, "speed": 0.2, "degrees": 3.0},
    ]
    reference = job(ar_pipe, image, actions)
    state = world.state()
    assert torch.equal(state.latents, reference.state.latents)  # bit-identical
    assert torch.equal(state.c2w, reference.state.c2w) and torch.equal(state.actions, reference.state.actions)
    assert [c.frames.shape[0] for c in chunks] == [13, 16, 16, 16]
    assert [c.index for c in chunks] == [0, 1, 2, 3] and chunks[2].start == 8 and chunks[2].end == 12
    assert np.array_equal(np.concatenate([c.frames for c in chunks]), reference.frames)
    # the idle chunk stands still; the others move as their keys say
    assert np.array_equal(chunks[2].c2w[0], chunks[2].c2w[-1])
    assert chunks[0].c2w[-1][2, 3] > 0.2  # w: forward along +z
    assert chunks[3].timings["denoise"] > 0 and chunks[3].timings["decode"] > 0
    world.close()
    with pytest.raises(RuntimeError):
        world.step(ChunkActions(("w",)))


def test_the_same_actions_as_a_pose_string(ar_pipe, image):
    world, _ = played(ar_pipe, image, [ChunkActions(("w",)), ChunkActions(("right",))])
    reference = job(ar_pipe, image, "w-3, right-4")
    assert torch.equal(world.state().latents, reference.state.latents)


def test_a_prompt_change_equals_a_continuation_with_the_new_prompt(ar_pipe, image):
    world, _ = played(ar_pipe, image, PLAY[:2])
    world.set_prompt("the same alley in snow")
    world.step(PLAY[2])
    first = job(ar_pipe, image, world.actions()[:2])
    then = ar_pipe.generate(continuation_request(first.state, [world.actions()[2]], prompt="the same alley in snow"))
    assert torch.equal(world.state().latents, then.state.latents)
    assert world.state().prompt == "the same alley in snow"


def test_a_world_stepped_from_another_thread_gives_the_same_latents(ar_pipe, image):
    """A thread keeps the CPU thread count it first ran with (the live server steps its world on its own
    thread); the world steps with the pipeline's count whichever thread steps it."""
    from concurrent.futures import ThreadPoolExecutor

    reference, _ = played(ar_pipe, image, PLAY[:2])
    other = ThreadPoolExecutor(1)
    try:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            other.submit(lambda: torch.ones(1 << 20).sum()).result()  # that thread now runs with 1
        finally:
            torch.set_num_threads(threads)
        world, _ = other.submit(played, ar_pipe, image, PLAY[:2]).result()
        assert other.submit(torch.get_num_threads).result() == ar_pipe.cpu_threads
    finally:
        other.shutdown()
    assert torch.equal(world.state().latents, reference.state().latents)


def test_a_resumed_world_steps_on_like_the_one_that_never_stopped(ar_pipe, image):
    whole, _ = played(ar_pipe, image, PLAY)
    first, _ = played(ar_pipe, image, PLAY[:2])
    resumed = ar_pipe.resume_world(first.state())
    chunks = [resumed.step(a) for a in PLAY[2:]]
    assert torch.equal(resumed.state().latents, whole.state().latents)
    assert [c.index for c in chunks] == [2, 3] and [c.frames.shape[0] for c in chunks] == [16, 16]
    assert resumed.actions() == whole.actions()[2:]


def test_a_failed_step_leaves_the_world_as_it_was(ar_pipe, image):
    world, _ = played(ar_pipe, image, PLAY[:1])
    calls = []

    def cancel_on_second_step():
        calls.append(1)
        return len(calls) > 1

    with pytest.raises(GenerationCancelled):
        world.step(PLAY[1], should_cancel=cancel_on_second_step)
    assert world.num_latents == 4 and len(world.c2w) == 4 and world.actions() == world.actions()[:1]
    for action in PLAY[1:]:
        world.step(action)
    reference, _ = played(ar_pipe, image, PLAY)
    assert torch.equal(world.state().latents, reference.state().latents)


def test_the_session_limit_holds(ar_pipe, image, monkeypatch):
    monkeypatch.setenv("WORLDPLAY_MAX_SESSION_LATENTS", "8")
    world, _ = played(ar_pipe, image, PLAY[:2])
    with pytest.raises(SessionTooLongError, match="8 latents"):
        world.step(PLAY[2])
    assert world.num_latents == 8


@pytest.mark.parametrize("kwargs, match", [
    ({"keys": ("w", "s")}, "opposite"),
    ({"keys": ("jump",)}, "unknown key"),
    ({"keys": ("w",), "speed": 2.0}, "speed"),
    ({"keys": ("left",), "degrees": 0}, "degrees"),
    ({"keys": ("w",), "speed": 0.0}, "speed"),
    ({"keys": ("w", "left"), "degrees": 30}, "below 30"),
])
def test_bad_actions_are_refused_in_the_action_lists_words(kwargs, match):
    with pytest.raises(PoseSpecError, match=match):
        ChunkActions(**kwargs)


def test_a_controllers_settings_count_only_for_the_keys_held():
    assert ChunkActions(("left",), speed=0.5, degrees=4).item(4) == {"key": "left", "moves": 4, "degrees": 4.0}
    assert ChunkActions((), speed=0.5, degrees=4).item(4) == {"key": "idle", "moves": 4}


def test_idle_is_a_key_of_pose_strings_and_action_lists():
    still = parse_pose("idle-3, w-4")
    assert np.array_equal(still.c2w64[0], still.c2w64[3]) and still.num_latents == 8
    assert parse_pose([{"key": "idle", "moves": 3}]).num_latents == 4
    with pytest.raises(PoseSpecError, match="idle"):
        parse_pose([{"key": "idle+w", "moves": 3}])
    with pytest.raises(PoseSpecError, match="speed"):
        parse_pose([{"key": "idle", "moves": 3, "speed": 0.1}])
