"""Encoders, VAE, scheduler and image helpers of pipeline.encoders.components, on the tiny fixture."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.encoders import components as C
from pipeline.errors import ImageError, ModelNotFoundError
from pipeline.tools.tiny import CHECKPOINT_FILES, COMPONENTS_DIR, TINY_DIMS, WORLDPLAY_DIR

QUOTED = 'A shop front with a sign reading "OPEN" and a neon “CAFE” above the door, then "OPEN" again'


@pytest.fixture(scope="module")
def root(tiny_models: Path) -> Path:
    return tiny_models / COMPONENTS_DIR


@pytest.fixture(scope="module")
def encoders(root: Path) -> C.ConditionEncoders:
    return C.ConditionEncoders.from_pretrained(root, "cpu", torch.float32)


@pytest.fixture(scope="module")
def vae(root: Path):
    return C.load_vae(root, "cpu", torch.float32)


# --- fixture layout ----------------------------------------------------------------------------------


def test_tiny_fixture_has_the_real_layout(tiny_models: Path, root: Path):
    index = json.loads((root / "model_index.json").read_text())
    assert index["text_encoder"] == ["transformers", "Qwen2_5_VLTextModel"]
    assert index["tokenizer"] == ["transformers", "Qwen2Tokenizer"]
    assert index["vae"] == ["diffusers", "AutoencoderKLHunyuanVideo15"]
    from pipeline.model_files.resolve import COMPONENT_FOLDERS

    for name in COMPONENT_FOLDERS:
        assert (root / name).is_dir(), name
    assert not (root / "transformer").exists()
    for rel in CHECKPOINT_FILES.values():
        assert (tiny_models / WORLDPLAY_DIR / rel).is_file()
    total = sum(p.stat().st_size for p in tiny_models.rglob("*") if p.is_file())
    assert total < 16 * 1024**2  # four checkpoints


def test_tiny_transformer_consumes_the_tiny_encoders(tiny_models: Path, encoders, vae):
    from pipeline.dit.config import WorldPlayConfig

    for rel in CHECKPOINT_FILES.values():
        config = WorldPlayConfig.from_checkpoint(tiny_models / WORLDPLAY_DIR / rel)
        assert config.text_dim == encoders.text_encoder.config.hidden_size == TINY_DIMS["text_dim"]
        assert config.byt5_dim == encoders.byt5_encoder.config.d_model == TINY_DIMS["byt5_dim"]
        assert config.vision_dim == encoders.image_encoder.config.hidden_size == TINY_DIMS["vision_dim"]
        assert config.latent_channels == vae.config.latent_channels == 32


def test_tiny_fixture_is_deterministic(tmp_path: Path, tiny_models: Path):
    from pipeline.tools.tiny import write_tiny_models

    again = write_tiny_models(tmp_path, models=("ar_distilled",))
    files = ["text_encoder/model.safetensors", "vae/diffusion_pytorch_model.safetensors", "tokenizer/tokenizer.json"]
    for rel in files:
        assert (again / COMPONENTS_DIR / rel).read_bytes() == (tiny_models / COMPONENTS_DIR / rel).read_bytes()
    assert not (again / WORLDPLAY_DIR / CHECKPOINT_FILES["bidirectional"]).exists()


def test_missing_component_folder_is_reported(tmp_path: Path):
    (tmp_path / "vae").mkdir()
    with pytest.raises(ModelNotFoundError, match="text_encoder"):
        C.ConditionEncoders.from_pretrained(tmp_path)
    with pytest.raises(ModelNotFoundError, match="scheduler"):
        C.load_scheduler(tmp_path)


# --- prompt encoding ---------------------------------------------------------------------------------


def test_prompt_without_quotes(encoders):
    emb = encoders.encode_prompt("a quiet street at dawn")
    assert emb.text.shape == (1, C.TEXT_MAX_LENGTH, TINY_DIMS["text_dim"])
    assert emb.text_mask.shape == (1, C.TEXT_MAX_LENGTH) and emb.text_mask.dtype == torch.int64
    n = emb.text_len
    assert 0 < n < 100
    assert emb.text_mask[0, :n].eq(1).all() and emb.text_mask[0, n:].eq(0).all()  # right padding
    assert emb.byt5.shape == (1, C.BYT5_MAX_LENGTH, TINY_DIMS["byt5_dim"])
    assert emb.byt5_len == 0 and emb.byt5.abs().sum() == 0
    assert emb.text.dtype == emb.byt5.dtype == torch.float32


def test_prompt_with_quotes_fills_byt5(encoders):
    emb = encoders.encode_prompt(QUOTED)
    glyph = 'Text "OPEN". Text "CAFE". '  # quoted texts, de-duplicated, upstream's format
    assert emb.byt5_len == len(glyph.encode("utf-8")) + 1  # one token per byte + </s>
    assert emb.byt5_mask[0, : emb.byt5_len].eq(1).all() and emb.byt5_mask[0, emb.byt5_len :].eq(0).all()
    assert emb.byt5[0, : emb.byt5_len].abs().sum(-1).gt(0).all()


def test_crop_start_skips_exactly_the_template(encoders):
    from diffusers.pipelines.hunyuan_video1_5.pipeline_hunyuan_video1_5 import format_text_input

    prompt = "a red door"
    ids = encoders.tokenizer.apply_chat_template(
        format_text_input([prompt], C.SYSTEM_MESSAGE), add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"][0]
    head = encoders.tokenizer.decode(ids[: encoders.crop_start])
    tail = encoders.tokenizer.decode(ids[encoders.crop_start :])
    assert head.startswith("<|im_start|>system\n" + C.SYSTEM_MESSAGE) and head.endswith("<|im_start|>user\n")
    assert tail == prompt + "<|im_end|>\n<|im_start|>assistant\n"
    assert encoders.encode_prompt(prompt).text_len == len(ids) - encoders.crop_start


def test_text_embedding_equals_layer_minus_three_of_the_full_model(root: Path, encoders):
    """Our truncated encoder == diffusers' reference encoding on the untruncated model."""
    from diffusers.pipelines.hunyuan_video1_5.pipeline_hunyuan_video1_5 import HunyuanVideo15Pipeline
    from transformers import Qwen2_5_VLTextModel

    full = Qwen2_5_VLTextModel.from_pretrained(root / "text_encoder", dtype=torch.float32).eval()
    assert len(encoders.text_encoder.layers) == len(full.layers) - 2
    for prompt in ["a red door", "", QUOTED]:
        with torch.inference_mode():
            ref, ref_mask = HunyuanVideo15Pipeline._get_mllm_prompt_embeds(
                text_encoder=full,
                tokenizer=encoders.tokenizer,
                prompt=prompt,
                device=torch.device("cpu"),
                system_message=C.SYSTEM_MESSAGE,
                crop_start=encoders.crop_start,
            )
        ours = encoders.encode_prompt(prompt)
        assert torch.equal(ours.text_mask, ref_mask)
        torch.testing.assert_close(ours.text, ref, rtol=0, atol=1e-6)


def test_prompt_cache_returns_the_same_object(root: Path):
    enc = C.ConditionEncoders.from_pretrained(root, "cpu", torch.float32, cache_size=2)
    first = enc.encode_prompt("one")
    assert enc.encode_count == 1
    assert enc.encode_prompt("one") is first and enc.encode_count == 1
    enc.encode_prompt("two")
    enc.encode_prompt("one")  # refreshes "one": "two" is now the oldest
    enc.encode_prompt("three")  # evicts "two"
    assert enc.encode_count == 3
    assert enc.encode_prompt("one") is first and enc.encode_count == 3
    enc.encode_prompt("two")
    assert enc.encode_count == 4
    assert enc.to("cpu") is enc


def test_empty_prompt_encodes(encoders):
    emb = encoders.encode_prompt("")
    assert emb.text_len > 0 and emb.byt5_len == 0


# --- images ------------------------------------------------------------------------------------------


def test_image_encoding_shape(encoders):
    image = Image.new("RGB", (1920, 1080), (30, 120, 200))
    out = encoders.encode_image(image, *C.select_bucket(*image.size))
    assert out.shape == (1, 16, TINY_DIMS["vision_dim"])  # (32 / 8)^2 tokens; 729 x 1152 at full size
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    # a grey-scale input is accepted (converted to RGB)
    assert encoders.encode_image(Image.new("L", (64, 48), 128), 64, 48).shape == out.shape


@pytest.mark.parametrize(
    ("size", "bucket"),
    [
        ((1920, 1080), (848, 480)),  # 16:9 landscape
        ((1280, 720), (848, 480)),
        ((832, 480), (832, 480)),  # exact buckets are kept
        ((848, 480), (848, 480)),
        ((1080, 1920), (480, 848)),  # portrait
        ((1000, 1000), (640, 640)),  # square
        ((1024, 768), (720, 544)),  # 4:3
        ((768, 1024), (544, 720)),
    ],
)
def test_select_bucket(size, bucket):
    assert C.select_bucket(*size) == bucket


def test_buckets_are_480p_multiples_of_16():
    for h, w in C.bucket_sizes():
        assert h % 16 == 0 and w % 16 == 0
        assert 0.9 * 640**2 <= h * w <= 640**2
        assert max(h, w) / min(h, w) <= 4


def test_prepare_image_range_size_and_centre_crop():
    # three vertical stripes red | green | blue; a square crop keeps the green centre
    stripes = np.zeros((100, 300, 3), np.uint8)
    stripes[:, :100, 0] = 255
    stripes[:, 100:200, 1] = 255
    stripes[:, 200:, 2] = 255
    x = C.prepare_image(Image.fromarray(stripes), 64, 64)
    assert x.shape == (1, 3, 1, 64, 64) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert torch.allclose(x[0, :, 0, 32, 32], torch.tensor([-1.0, 1.0, -1.0]), atol=0.02)
    # exact affine map 0..255 -> -1..1 when no resampling happens
    solid = C.prepare_image(Image.new("RGB", (32, 16), (0, 255, 51)), 32, 16)
    assert torch.allclose(solid[0, :, 0, 0, 0], torch.tensor([-1.0, 1.0, 51 / 255 * 2 - 1]))
    # upscaling a small portrait image to a landscape bucket
    assert C.prepare_image(Image.new("RGB", (30, 50)), 848, 480).shape == (1, 3, 1, 480, 848)


def test_load_image_rejects_unreadable_data(tmp_path: Path):
    with pytest.raises(ImageError):
        C.load_image(b"definitely not an image")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, format="PNG")
    with pytest.raises(ImageError):
        C.load_image(buf.getvalue()[:60])  # truncated
    with pytest.raises(ImageError, match="pixels"):
        C.load_image(buf.getvalue(), max_pixels=1000)
    with pytest.raises(ImageError):
        C.load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError):
        C.load_image(12345)  # type: ignore[arg-type]
    assert issubclass(ImageError, ValueError) and ImageError.code == "INVALID_IMAGE"


def test_load_image_converts_and_applies_exif_orientation():
    buf = io.BytesIO()
    rgba = Image.new("RGBA", (40, 20), (10, 20, 30, 128))
    exif = rgba.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    rgba.convert("RGB").save(buf, format="JPEG", exif=exif)
    image = C.load_image(buf.getvalue())
    assert image.mode == "RGB" and image.size == (20, 40)
    assert C.load_image(rgba).mode == "RGB"


# --- VAE ---------------------------------------------------------------------------------------------


def test_vae_has_the_real_compression(vae):
    assert vae.dtype == torch.float32  # the dtype asked for; bf16 on the GPU
    assert not vae.use_tiling  # decoding is causal and chunked (pipeline.encoders.causal_decode), never tiled
    assert vae.config.latent_channels == 32
    assert vae.temporal_compression_ratio == 4 and vae.spatial_compression_ratio == 16
    assert C.latent_frames(125) == 32 and C.video_frames(32) == 125 and C.latent_frames(1) == 1


def test_vae_round_trip_shapes(vae):
    torch.manual_seed(0)
    video = torch.rand(1, 3, 9, 32, 48) * 2 - 1
    with torch.inference_mode():
        latents = vae.encode(video).latent_dist.mode()
    assert latents.shape == (1, 32, C.latent_frames(9), 2, 3)
    decoded = C.decode_latents(vae, latents)
    assert decoded.shape == (1, 3, C.video_frames(3), 32, 48) == (1, 3, 9, 32, 48)
    assert decoded.dtype == torch.float32 and decoded.min() >= 0 and decoded.max() <= 1


def test_condition_latents_are_scaled_posterior_modes(vae):
    image = C.prepare_image(Image.new("RGB", (128, 96), (90, 160, 30)), 96, 64)
    cond = C.encode_condition_latents(vae, image)
    assert cond.shape == (1, 32, 1, 4, 6)
    with torch.inference_mode():
        mode = vae.encode(image).latent_dist.mode()
    torch.testing.assert_close(cond, mode * 1.03682)
    assert vae.config.scaling_factor == pytest.approx(1.03682)


def test_decode_divides_by_the_scaling_factor_and_maps_to_unit_range(vae):
    torch.manual_seed(1)
    latents = torch.randn(1, 32, 1, 2, 3)  # one latent: every decode semantics agrees (see test_causal_decode)
    with torch.inference_mode():
        raw = vae.decode(latents / vae.config.scaling_factor).sample
    torch.testing.assert_close(C.decode_latents(vae, latents), (raw / 2 + 0.5).clamp(0, 1))


def test_frames_to_uint8_truncates_like_upstream():
    video = torch.tensor([0.0, 0.5, 0.999, 1.0, 1.5]).view(1, 1, 5, 1, 1).expand(1, 3, 5, 1, 1)
    frames = C.frames_to_uint8(video)
    assert frames.shape == (5, 1, 1, 3) and frames.dtype == np.uint8
    assert frames[:, 0, 0, 0].tolist() == [0, 127, 254, 255, 255]


# --- scheduler ---------------------------------------------------------------------------------------


def _upstream_timesteps(steps: int, shift: float = 5.0) -> np.ndarray:
    s = np.linspace(1.0, 0.0, steps + 1)
    s = shift * s / (1 + (shift - 1) * s)
    return s[:-1] * 1000


def test_scheduler_four_steps(root: Path):
    scheduler = C.load_scheduler(root)
    timesteps = C.set_timesteps(scheduler, 4)
    np.testing.assert_allclose(timesteps.numpy(), [1000.0, 937.5, 833.3333, 625.0], rtol=1e-6)
    np.testing.assert_allclose(scheduler.sigmas.numpy(), [1.0, 0.9375, 0.833333, 0.625, 0.0], rtol=1e-5)


def test_scheduler_thirty_steps_and_euler_step(root: Path):
    scheduler = C.load_scheduler(root)
    timesteps = C.set_timesteps(scheduler, 30)
    np.testing.assert_allclose(timesteps.numpy(), _upstream_timesteps(30), rtol=1e-5)
    x, v = torch.ones(2, 3), torch.full((2, 3), 2.0)
    out = scheduler.step(v, timesteps[0], x, return_dict=False)[0]
    sigma0, sigma1 = scheduler.sigmas[0].item(), scheduler.sigmas[1].item()
    torch.testing.assert_close(out, x + (sigma1 - sigma0) * v)
    # restarting the schedule (as each AR chunk does) resets the step index
    C.set_timesteps(scheduler, 30)
    torch.testing.assert_close(scheduler.step(v, timesteps[0], x, return_dict=False)[0], out)


def test_scheduler_ignores_dynamic_shifting_in_config(root: Path, tmp_path: Path):
    folder = tmp_path / "components"
    shutil.copytree(root / "scheduler", folder / "scheduler")
    config_file = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config.update(shift=9.0, use_dynamic_shifting=True)
    config_file.write_text(json.dumps(config))
    scheduler = C.load_scheduler(folder, shift=5.0)
    np.testing.assert_allclose(C.set_timesteps(scheduler, 4).numpy(), _upstream_timesteps(4), rtol=1e-6)
