"""End-to-end generation at tiny size through WorldPlayPipeline.generate (both modes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.errors import FrameCountError, GenerationCancelled, PipelineError
from pipeline.generation.camera import parse_pose
from pipeline.generation.engine import GenerationRequest, WorldPlayPipeline
from pipeline.model_files.resolve import resolve_models


def request(image, pose="w-7", mode="ar", **kwargs) -> GenerationRequest:
    return GenerationRequest(prompt='a street, a sign reads "OPEN"', image=image, camera=parse_pose(pose), mode=mode,
                             **kwargs)


@pytest.fixture(scope="module")
def ar_result(pipe, image):
    return pipe.generate(request(image, seed=7))


def test_ar_frames_shape_range_and_size(ar_result):
    frames = ar_result.frames
    assert frames.dtype == np.uint8
    assert frames.shape == (29, ar_result.height, ar_result.width, 3)  # 8 latents -> 29 frames
    assert (ar_result.width, ar_result.height) == (80, 48)  # 16:9 bucket of the tiny resolution base (64)
    assert frames.std() > 1.0 and frames.min() < frames.max()
    assert ar_result.num_inference_steps == 4 and ar_result.guidance_scale == 1.0
    assert {"denoise", "decode", "encode_prompt", "prepare_image"} <= set(ar_result.timings)


def test_ar_is_deterministic_for_a_seed_and_seeds_differ(pipe, image, ar_result):
    again = pipe.generate(request(image, seed=7))
    other = pipe.generate(request(image, seed=8))
    np.testing.assert_array_equal(again.frames, ar_result.frames)
    assert np.abs(other.frames.astype(int) - ar_result.frames.astype(int)).mean() > 1.0


def test_ar_is_causal_in_the_camera(pipe, image, ar_result):
    """Changing the camera of the last chunk leaves the frames of the first chunk unchanged."""
    turned = pipe.generate(request(image, pose="w-3, left-4", seed=7))
    first_chunk_frames = 13  # latents 0..3
    np.testing.assert_array_equal(turned.frames[:first_chunk_frames], ar_result.frames[:first_chunk_frames])
    assert np.abs(turned.frames[first_chunk_frames:].astype(int) - ar_result.frames[first_chunk_frames:]).mean() > 0.5


def test_frames_are_handed_over_chunk_by_chunk_and_match_the_result(pipe, image, ar_result):
    seen = []
    result = pipe.generate(request(image, seed=7), on_frames=seen.append)
    assert [piece.shape[0] for piece in seen] == [13, 16]  # latents 0..3, then 4..7
    np.testing.assert_array_equal(np.concatenate(seen), result.frames)
    np.testing.assert_array_equal(result.frames, ar_result.frames)
    assert {"decode", "hand_over", "denoise"} <= set(result.timings)


def test_decoding_after_denoising_gives_the_same_frames(pipe, image, ar_result, monkeypatch):
    """WORLDPLAY_DECODE_DURING_DENOISE=0: chunks are decoded once the rollout is over (lower GPU peak);
    the frames are the same and still handed over chunk by chunk, just after the last step."""
    steps_done, seen = [], []
    monkeypatch.setattr(pipe, "decode_during_denoise", False)
    result = pipe.generate(request(image, seed=7), callback=lambda stage, step, total: steps_done.append(step),
                           on_frames=lambda frames: seen.append((len(steps_done), frames.shape[0])))
    np.testing.assert_array_equal(result.frames, ar_result.frames)
    assert seen == [(8, 13), (8, 16)]  # both chunks after all 8 denoising steps
    monkeypatch.setattr(pipe, "decode_during_denoise", True)
    seen.clear(), steps_done.clear()
    pipe.generate(request(image, seed=7), callback=lambda stage, step, total: steps_done.append(step),
                  on_frames=lambda frames: seen.append((len(steps_done), frames.shape[0])))
    assert seen == [(4, 13), (8, 16)]  # the first chunk as soon as its 4 steps are done


def test_out_of_memory_in_a_streamed_decode_falls_back_to_decoding_after_the_rollout(pipe, image, monkeypatch):
    """A decode that runs out of GPU memory beside the K/V cache does not fail the job: the rest of the
    video is decoded after the rollout (a fresh decoder re-reads the chunks already handed over to
    rebuild its causal state), every frame is handed over exactly once, in order, and the frames equal
    those of an undisturbed run. The worker then keeps decoding after the rollout."""
    from pipeline.encoders import causal_decode

    pose = "w-11"  # 12 latents: 3 chunks
    expected = pipe.generate(request(image, pose=pose, seed=3)).frames
    calls = {"n": 0}
    real_decode = causal_decode.CausalVAEDecoder.decode

    def decode_oom_on_second_call(self, latents):
        calls["n"] += 1
        if calls["n"] == 2:
            real_decode(self, latents[:, :, :1])  # leave the decoder's state half-updated, as a real OOM would
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_decode(self, latents)

    monkeypatch.setattr(causal_decode.CausalVAEDecoder, "decode", decode_oom_on_second_call)
    monkeypatch.setattr(pipe, "decode_during_denoise", True)
    steps_done, seen = [], []
    result = pipe.generate(request(image, pose=pose, seed=3),
                           callback=lambda stage, step, total: steps_done.append(step),
                           on_frames=lambda frames: seen.append((len(steps_done), frames)))
    assert [(steps, frames.shape[0]) for steps, frames in seen] == [(4, 13), (12, 16), (12, 16)]
    np.testing.assert_array_equal(np.concatenate([frames for _, frames in seen]), expected)
    np.testing.assert_array_equal(result.frames, expected)
    assert calls["n"] == 5  # chunk 0, the failed chunk 1, then after the rollout: chunk 0 again, 1, 2
    assert pipe.decode_during_denoise is False and pipe.health()["decode_during_denoise"] is False


@pytest.mark.parametrize("value, expected", [
    ("1", True), (" Yes ", True), ("ON", True), ("true", True),
    ("0", False), ("no", False), ("Off", False), ("FALSE", False),
    ("", None), ("auto", None), ("maybe", None),
])
def test_yes_no_settings_parse_one_way(monkeypatch, value, expected):
    from pipeline.settings import env_flag

    monkeypatch.setenv("WORLDPLAY_SOME_FLAG", value)
    assert env_flag("WORLDPLAY_SOME_FLAG", None) is expected
    assert env_flag("WORLDPLAY_SOME_FLAG", True) is (True if expected is None else expected)


def test_decode_mode_comes_from_the_environment(tiny_models, monkeypatch):
    monkeypatch.setenv("WORLDPLAY_DECODE_DURING_DENOISE", "0")
    paths = resolve_models(["ar_distilled"], model_dir=tiny_models, allow_download=False, set_offline=False)
    ar_only = WorldPlayPipeline.from_paths(paths, device="cpu")
    assert ar_only.decode_during_denoise is False and ar_only.health()["decode_during_denoise"] is False


def test_callback_once_per_denoising_step_with_totals(pipe, image):
    events = []
    pipe.generate(request(image, pose="w-7", num_inference_steps=3), callback=lambda *e: events.append(e))
    steps = [e for e in events if e[0] == "denoising"]
    assert steps == [("denoising", i, 6) for i in range(1, 7)]  # 2 chunks x 3 steps
    assert events[-1] == ("decoded", 1, 1)


def test_cancellation_stops_between_steps(pipe, image):
    events = []
    with pytest.raises(GenerationCancelled, match="after 3 of 8"):
        pipe.generate(request(image), callback=lambda *e: events.append(e), should_cancel=lambda: len(events) >= 3)
    assert len(events) == 3


@pytest.mark.parametrize(
    "pose, mode, nearest",
    [("w-5", "ar", "13 or 29"), ("w-7", "bidirectional", "61"), ("w-30", "bidirectional", "61 or 125")],
)
def test_constraint_errors_come_before_any_heavy_work(pipe, image, pose, mode, nearest):
    before = pipe.encoders.encode_count
    with pytest.raises(FrameCountError) as info:
        pipe.generate(request(image, pose=pose, mode=mode))
    assert nearest in str(info.value)
    assert pipe.encoders.encode_count == before


def test_unloaded_mode_is_a_clear_error(tiny_models, image):
    paths = resolve_models(["ar_distilled"], model_dir=tiny_models, allow_download=False, set_offline=False)
    ar_only = WorldPlayPipeline.from_paths(paths, device="cpu")
    with pytest.raises(PipelineError, match="not loaded"):
        ar_only.generate(request(image, pose="w-15", mode="bidirectional"))


def test_ar_with_guidance_runs_both_branches(pipe, image, ar_result):
    guided = pipe.generate(request(image, seed=7, guidance_scale=4.0, negative_prompt="blurry"))
    assert guided.frames.shape == ar_result.frames.shape
    assert not np.array_equal(guided.frames, ar_result.frames)


@pytest.fixture(scope="module")
def bi_result(pipe, image):
    return pipe.generate(request(image, pose="w-15", mode="bidirectional", num_inference_steps=2, seed=3))


def test_bidirectional_end_to_end(pipe, image, bi_result):
    assert bi_result.frames.shape == (61, 48, 80, 3)
    assert bi_result.guidance_scale == 6.0 and bi_result.num_inference_steps == 2
    assert bi_result.frames.std() > 1.0
    again = pipe.generate(request(image, pose="w-15", mode="bidirectional", num_inference_steps=2, seed=3))
    np.testing.assert_array_equal(again.frames, bi_result.frames)
    other = pipe.generate(request(image, pose="w-15", mode="bidirectional", num_inference_steps=2, seed=4))
    assert not np.array_equal(other.frames, bi_result.frames)


def test_bidirectional_second_chunk_uses_context(pipe, image):
    """32 latents = 2 chunks of 16; the callback counts 2 x steps."""
    events = []
    result = pipe.generate(
        request(image, pose="w-31", mode="bidirectional", num_inference_steps=1, guidance_scale=1.0),
        callback=lambda *e: events.append(e),
    )
    assert result.frames.shape[0] == 125
    assert [e for e in events if e[0] == "denoising"] == [("denoising", 1, 2), ("denoising", 2, 2)]


def test_warm_up_renders_each_loaded_mode_once_and_reports_it(pipe, monkeypatch):
    generated = []
    real_generate = pipe.generate

    def recording_generate(request, *args, **kwargs):
        result = real_generate(request, *args, **kwargs)
        generated.append((request.mode, result.num_frames, result.num_inference_steps, result.guidance_scale,
                          (result.width, result.height)))
        return result

    monkeypatch.setattr(pipe, "generate", recording_generate)
    monkeypatch.setitem(pipe.load_info, "warm_up_seconds", None)
    seconds = pipe.warm_up()
    assert set(seconds) == {"ar_distilled", "bidirectional"} and all(s > 0 for s in seconds.values())
    assert pipe.health()["warm_up_seconds"] == seconds
    # AR: three chunks (text pass, chunk steps, context passes of two sizes); bidirectional: one step with guidance
    assert generated == [("ar", 45, 1, 1.0, (80, 48)), ("bidirectional", 61, 1, 6.0, (80, 48))]


def test_warm_up_runs_by_default_only_with_compiled_blocks(pipe, monkeypatch):
    calls = []
    monkeypatch.setattr(pipe, "warm_up", lambda: calls.append(1) or {"ar": 1.0})
    monkeypatch.delenv("WORLDPLAY_WARMUP", raising=False)
    monkeypatch.setattr(pipe, "compiled", False)
    assert pipe.warm_up_if_configured() is None and calls == []
    monkeypatch.setattr(pipe, "compiled", True)
    assert pipe.warm_up_if_configured() == {"ar": 1.0} and calls == [1]
    monkeypatch.setenv("WORLDPLAY_WARMUP", "0")
    assert pipe.warm_up_if_configured() is None and calls == [1]
    monkeypatch.setattr(pipe, "compiled", False)
    monkeypatch.setenv("WORLDPLAY_WARMUP", "1")
    assert pipe.warm_up_if_configured() == {"ar": 1.0} and calls == [1, 1]


def test_warm_up_falls_back_to_eager_blocks_when_the_compiled_ones_fail(pipe, monkeypatch):
    from pipeline.generation import engine

    real_generate, restored = pipe.generate, []
    attempts = {"n": 0}

    def generate_failing_while_compiled(request, *args, **kwargs):
        attempts["n"] += 1
        if pipe.compiled:
            raise RuntimeError("BackendCompilerFailed: inductor could not build a kernel")
        return real_generate(request, *args, **kwargs)

    monkeypatch.setattr(pipe, "generate", generate_failing_while_compiled)
    monkeypatch.setattr(pipe, "compiled", True)
    monkeypatch.setattr(engine, "disable_compile", lambda: restored.append(True))
    seconds = pipe.warm_up()
    assert set(seconds) == {"ar_distilled", "bidirectional"}
    assert pipe.compiled is False and restored == [True] and attempts["n"] == 3  # AR compiled (fails), AR eager, bidirectional eager


def test_a_failing_warm_up_never_stops_the_worker(pipe, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no room for the warm-up")

    monkeypatch.setattr(pipe, "generate", broken)
    monkeypatch.setattr(pipe, "compiled", False)
    monkeypatch.setenv("WORLDPLAY_WARMUP", "1")
    monkeypatch.setitem(pipe.load_info, "warm_up_error", None)
    assert pipe.warm_up_if_configured() is None
    assert pipe.health()["warm_up_error"] == "RuntimeError: no room for the warm-up"
