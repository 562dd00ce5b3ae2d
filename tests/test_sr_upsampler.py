"""pipeline.sr.upsampler: the 720p stage's latent upsampler (published layout, strict loading, causal in time) and
the stage's frame rule. Parity with upstream's SRTo720pUpsampler is checked outside the repository (docs/MODELS.md)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from pipeline.errors import CheckpointError, FrameCountError
from pipeline.sr.upsampler import LatentUpsampler, check_sr_frames, resize_latents


@pytest.fixture
def folder(tmp_path):
    torch.manual_seed(0)
    model = LatentUpsampler(32, 32, hidden_channels=8, num_blocks=2)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model.save_folder(tmp_path / "upsampler" / "720p_sr_distilled")


def test_published_layout_and_names(folder):
    config = json.loads((folder / "config.json").read_text())
    assert config["_class_name"] == "SRTo720pUpsampler" and config["hidden_channels"] == 8
    names = set(load_file(str(folder / "diffusion_pytorch_model.safetensors")))
    assert {"in_conv.conv.weight", "blocks.1.block.4.conv.bias", "out_conv.conv.weight"} <= names
    assert not any(".block.1." in n or ".block.3." in n for n in names)  # activations hold no weights


def test_loads_strictly(folder):
    model = LatentUpsampler.from_folder(folder)
    state = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    for edit, why in ((lambda s: s.pop("out_conv.conv.bias"), "missing"),
                      (lambda s: s.update(extra=torch.zeros(1)), "unexpected"),
                      (lambda s: s.update({"in_conv.conv.bias": torch.zeros(9)}), "shapes differ")):
        broken = dict(state)
        edit(broken)
        save_file(broken, str(folder / "diffusion_pytorch_model.safetensors"))
        with pytest.raises(CheckpointError, match=why):
            LatentUpsampler.from_folder(folder)
        save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_layers": 3}))
    with pytest.raises(CheckpointError, match="num_layers"):
        LatentUpsampler.from_folder(folder)


def test_upsample_resizes_to_the_720p_grid_and_is_causal_in_time(folder):
    model = LatentUpsampler.from_folder(folder)
    latents = torch.randn(1, 32, 6, 30, 52)
    out = model.upsample(latents, 45, 80)
    assert out.shape == (1, 32, 6, 45, 80) and out.dtype == torch.float32
    later = latents.clone()
    later[:, :, 4:] += 1.0  # changing frames 4.. leaves frames 0..3 as they were
    again = model.upsample(later, 45, 80)
    assert torch.equal(again[:, :, :4], out[:, :, :4]) and not torch.equal(again[:, :, 4:], out[:, :, 4:])


def test_resize_is_per_frame_bilinear():
    latents = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(1, 2, 3, 4, 4)
    out = resize_latents(latents, 8, 8)
    frame = torch.nn.functional.interpolate(latents[:, :, 1], size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.equal(out[:, :, 1], frame)


@pytest.mark.parametrize("frames", [1, 13, 61, 125])
def test_frame_counts_the_stage_takes(frames):
    check_sr_frames(frames)


@pytest.mark.parametrize("frames, why", [(124, "4k\\+1"), (129, "at most 125 frames"), (253, "at most 125")])
def test_frame_counts_the_stage_refuses(frames, why):
    with pytest.raises(FrameCountError, match=why):
        check_sr_frames(frames)
