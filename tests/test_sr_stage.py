"""The 720p super-resolution stage (pipeline.sr.transformer, pipeline.sr.stage) and ``resolution: "720p"`` jobs:
strict loading of the SR transformer from the published layout, the schedule and sizes, the conditioning the
loop feeds it, and tiny end-to-end jobs through worker.job.run_job (WORLDPLAY_SR, MODEL_UNAVAILABLE,
INVALID_FRAME_COUNT, continuations)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import b64, code_of, png_bytes, run

from pipeline.errors import CheckpointError
from pipeline.model_files.resolve import SR_DIRNAME, SR_FILES
from worker import job as worker_job


@pytest.fixture(scope="module")
def sr_models(tmp_path_factory):
    from pipeline.tools.tiny import write_tiny_models

    return write_tiny_models(tmp_path_factory.mktemp("tiny_sr"), models=("ar_distilled",), sr=True)


@pytest.fixture(scope="module")
def sr_pipe(sr_models):
    from pipeline.generation.engine import WorldPlayPipeline
    from pipeline.model_files.resolve import resolve_models

    paths = resolve_models(["ar_distilled"], model_dir=sr_models, allow_download=False, set_offline=False, sr=True)
    return WorldPlayPipeline.from_paths(paths, device="cpu", dtype=torch.float32)


def _transformer_folder(root):
    return (root / SR_DIRNAME / SR_FILES["transformer"]).parent


# ---- the SR transformer --------------------------------------------------------------------------------------
def test_the_tiny_sr_transformer_is_in_the_published_layout(sr_models):
    from pipeline.sr.transformer import load_sr_transformer

    folder = _transformer_folder(sr_models)
    assert folder.parts[-2:] == ("transformer", "720p_sr_distilled")
    config = json.loads((folder / "config.json").read_text())
    assert (config["in_channels"], config["concat_condition"], config["use_meanflow"]) == (98, False, True)
    model = load_sr_transformer(folder, dtype=torch.float32)
    assert model.img_in.proj.weight.shape[1] == 98 and hasattr(model, "time_r_in")
    assert not any("prope" in name or "action_in" in name for name, _ in model.named_parameters())


def test_the_sr_transformer_loads_strictly(sr_models, tmp_path):
    from safetensors.torch import load_file, save_file

    from pipeline.sr.transformer import load_sr_transformer

    folder = tmp_path / "t"
    shutil.copytree(_transformer_folder(sr_models), folder)
    weights = folder / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    state.pop("time_r_in.mlp.0.weight")
    save_file(state, str(weights))
    with pytest.raises(CheckpointError, match="time_r_in.mlp.0.weight"):
        load_sr_transformer(folder)
    shutil.copy(_transformer_folder(sr_models) / "diffusion_pytorch_model.safetensors", weights)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "mm_single_blocks_depth": 2}))
    with pytest.raises(CheckpointError, match="mm_single_blocks_depth"):
        load_sr_transformer(folder)
    # upstream's default concat_condition (true) would mean a 2 x 98 + 1 channel patch embedding
    (folder / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "concat_condition"}))
    with pytest.raises(CheckpointError):
        load_sr_transformer(folder)


# ---- schedule, sizes, conditioning ---------------------------------------------------------------------------
def test_the_published_schedule():
    from pipeline.sr.stage import sr_sigmas

    assert torch.allclose(sr_sigmas() * 1000, torch.tensor([1000.0, 909.0909, 800.0, 666.6667, 500.0, 285.7143, 0.0]),
                          atol=1e-3)


@pytest.mark.parametrize("lr, hr", [((848, 480), (1280, 720)), ((480, 848), (720, 1280)), ((640, 640), (960, 960)),
                                    ((832, 480), (1248, 720))])
def test_720p_sizes(lr, hr):
    from pipeline.sr.stage import sr_size

    assert sr_size(*lr) == hr


def test_the_loop_feeds_upstreams_conditioning(sr_pipe):
    """98 channels: noise, the picture's latent + mask at frame 0, the re-noised upsampled latents + a mask of ones;
    the low-resolution part zeroed once t < 700; the next timestep for the meanflow embedding."""
    stage = sr_pipe.sr
    seen = []
    real = stage.transformer.forward

    def spy(x, t, t_next, condition):
        seen.append((x.clone(), float(t), float(t_next)))
        return real(x, t, t_next, condition)

    g = torch.Generator().manual_seed(0)
    lq = torch.randn(1, 32, 3, 3, 4, generator=g)
    image_latent = torch.randn(1, 32, 1, 4, 6, generator=g)
    text, byt5, vision = torch.randn(1, 5, 32), torch.randn(1, 3, 16), torch.randn(1, 16, 24)
    stage.transformer.forward = spy
    try:
        out = stage.run(lq, image_latent, text=text, text_mask=torch.ones(1, 5), byt5=byt5,
                        byt5_mask=torch.tensor([[1, 1, 0]]), vision=vision, seed=5)
    finally:
        del stage.transformer.forward
    assert out.shape == (1, 32, 3, 4, 6) and out.dtype == torch.float32
    assert [round(t) for _, t, _ in seen] == [1000, 909, 800, 667, 500, 286]
    assert [round(r) for _, _, r in seen] == [909, 800, 667, 500, 286, 0]
    x0 = seen[0][0]
    assert torch.equal(x0[:, 32:64, 0], image_latent[:, :, 0]) and not x0[:, 32:65, 1:].any()
    assert (x0[:, 64, 0] == 1).all() and not x0[:, 64, 1:].any()
    assert (x0[:, 97] == 1).all() and x0[:, 65:97].abs().sum() > 0
    generator = torch.Generator().manual_seed(5)
    noise = torch.randn(1, 32, 3, 4, 6, generator=generator)
    lq_noise = torch.randn(1, 32, 3, 4, 6, generator=generator)
    assert torch.equal(x0[:, :32], noise)
    upsampled = stage.upsampler.upsample(lq, 4, 6)
    assert torch.allclose(x0[:, 65:97], 0.3 * upsampled + 0.7 * lq_noise, atol=1e-6)
    for x, t, _ in seen:
        low_res = x[:, 65:]
        assert bool(low_res.any()) == (t >= 700)
        assert torch.equal(x[:, 32:65], x0[:, 32:65])  # the image condition stays


# ---- jobs ----------------------------------------------------------------------------------------------------
@pytest.fixture
def sr_served(s3_env, sr_models, sr_pipe, monkeypatch):
    loads = []
    monkeypatch.setenv("WORLDPLAY_MODEL_DIR", str(sr_models))
    monkeypatch.setenv("WORLDPLAY_MODELS", "ar_distilled")
    monkeypatch.setenv("WORLDPLAY_SR", "1")
    worker_job.reset_state(loader=lambda models: loads.append(models) or sr_pipe)
    yield loads
    worker_job.reset_state()


def job(**extra):
    return {"prompt": "a quiet harbour", "image_base64": b64(png_bytes(64, 48)), "seed": 3, **extra}


def test_a_720p_tiny_job_renders_the_720p_size(sr_served, sr_pipe, storage):
    from pipeline.encoders.components import select_bucket
    from pipeline.sr.stage import sr_size

    base = sr_pipe.transformers["ar_distilled"].config.resolution_base
    low = select_bucket(64, 48, base)
    high = sr_size(*low, base)
    assert high[0] > low[0] and high[1] > low[1]
    out = run(job(resolution="720p", pose="w-3", num_inference_steps=1), job_id="sr-720p")
    assert "error" not in out, out
    assert (out["width"], out["height"], out["num_frames"]) == (*high, 13)
    out = run(job(pose="w-3", num_inference_steps=1), job_id="sr-480p")  # the same worker still renders 480p
    assert "error" not in out, out
    assert (out["width"], out["height"]) == low
    assert len(sr_served) == 1


def test_the_engine_keeps_the_480p_state_and_streams_the_preview(sr_pipe):
    from PIL import Image

    from pipeline.generation.camera import parse_pose
    from pipeline.generation.engine import GenerationRequest

    image = Image.new("RGB", (64, 48), (90, 120, 30))
    preview, final = [], []
    request = GenerationRequest(prompt="p", image=image, camera=parse_pose("w-3"), model="ar_distilled",
                                num_inference_steps=1, seed=1, resolution="720p")
    result = sr_pipe.generate(request, on_frames=final.append, on_preview_frames=preview.append)
    assert sum(len(p) for p in preview) == 13 and preview[0].shape[1:3] == (result.state.height, result.state.width)
    assert len(final) == 1 and final[0].shape == result.frames.shape
    assert result.frames.shape[1:3] == (result.height, result.width) and result.height > result.state.height
    assert result.state.latents.shape[-2:] == (result.state.height // 16, result.state.width // 16)


def test_720p_without_the_sr_stage_is_refused_before_any_loading(s3_env, monkeypatch):
    monkeypatch.setenv("WORLDPLAY_MODELS", "ar_distilled")
    monkeypatch.delenv("WORLDPLAY_SR", raising=False)
    worker_job.reset_state(loader=lambda models: pytest.fail("nothing may load for a refused job"))
    out = run(job(resolution="720p", pose="w-3"))
    assert code_of(out) == "MODEL_UNAVAILABLE" and "WORLDPLAY_SR" in out["error"]


def test_720p_frame_counts_the_sr_stage_does_not_take(s3_env, monkeypatch):
    monkeypatch.setenv("WORLDPLAY_MODELS", "ar_distilled")
    monkeypatch.setenv("WORLDPLAY_SR", "1")
    worker_job.reset_state(loader=lambda models: pytest.fail("nothing may load for a refused job"))
    out = run(job(resolution="720p", pose="w-35"))  # 36 latents = 141 frames: AR takes it, SR does not
    assert code_of(out) == "INVALID_FRAME_COUNT" and "125" in out["error"]
    assert code_of(run(job(resolution="1080p"))) == "INVALID_INPUT"
    assert code_of(run({"continue_from": "worldplay/x/world.safetensors", "resolution": "720p"})) == "INVALID_INPUT"


def test_an_engine_without_the_sr_stage_refuses_720p(sr_pipe):
    from PIL import Image

    from pipeline.errors import ModelUnavailableError
    from pipeline.generation.camera import parse_pose
    from pipeline.generation.engine import GenerationRequest

    request = GenerationRequest(prompt="p", image=Image.new("RGB", (64, 48)), camera=parse_pose("w-3"),
                                resolution="720p")
    stage, sr_pipe.sr = sr_pipe.sr, None
    try:
        with pytest.raises(ModelUnavailableError, match="WORLDPLAY_SR"):
            sr_pipe.generate(request)
    finally:
        sr_pipe.sr = stage


def test_a_sequence_parallel_follower_needs_no_sr_stage(sr_pipe):
    """Followers only denoise the 480p rollout; rank 0 alone runs (and must hold) the SR stage."""
    import types

    from PIL import Image

    from pipeline.generation.camera import parse_pose
    from pipeline.generation.engine import GenerationRequest

    request = GenerationRequest(prompt="p", image=Image.new("RGB", (64, 48)), camera=parse_pose("w-3"),
                                resolution="720p")
    stage, sr_pipe.sr = sr_pipe.sr, None
    try:
        sr_pipe.sequence_parallel = types.SimpleNamespace(rank=1)
        sr_pipe.validate(request)
        sr_pipe.sequence_parallel = types.SimpleNamespace(rank=0)
        with pytest.raises(Exception, match="WORLDPLAY_SR"):
            sr_pipe.validate(request)
    finally:
        sr_pipe.sr, sr_pipe.sequence_parallel = stage, None


def test_720p_with_the_fast_decoder_decodes_the_preview_and_the_720p_frames_with_it(sr_pipe, tmp_path, monkeypatch):
    from PIL import Image

    from pipeline.encoders import components as comp
    from pipeline.encoders.fast_decode import FastVideoDecoder, load_fast_decoder
    from pipeline.generation.camera import parse_pose
    from pipeline.generation.engine import GenerationRequest
    from pipeline.tools.tiny import write_tiny_fast_decoder

    fast = load_fast_decoder(write_tiny_fast_decoder(tmp_path / "taehv1_5.safetensors"))
    monkeypatch.setattr(sr_pipe, "fast_decoder", fast)
    image = Image.new("RGB", (64, 48), (90, 120, 30))
    results = {}
    for decoder in ("full", "fast"):
        preview = []
        request = GenerationRequest(prompt="p", image=image, camera=parse_pose("w-3"), model="ar_distilled",
                                    num_inference_steps=1, seed=1, resolution="720p", decoder=decoder)
        results[decoder] = (sr_pipe.generate(request, on_preview_frames=preview.append), preview)
    (full, _), (quick, preview) = results["full"], results["fast"]
    assert torch.equal(quick.state.latents, full.state.latents)  # the decoder never touches the latents
    assert quick.frames.shape == full.frames.shape and quick.height > quick.state.height
    assert not np.array_equal(quick.frames, full.frames)
    latents = quick.state.latents.permute(1, 0, 2, 3)[None]
    assert np.array_equal(np.concatenate(preview), comp.frames_to_uint8(FastVideoDecoder(fast).decode(latents)))
