"""The chunked VAE decoder gives the frames of a whole-video decode, for any chunking, in both
attention modes: "causal" (diffusers' whole-video decode) and "frame" (upstream HY-WorldPlay's
streamed decode, where the mid-block attention sees one latent frame at a time)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers.models.autoencoders import autoencoder_kl_hunyuanvideo15 as hv15

from pipeline.encoders import components as C
from pipeline.encoders.causal_decode import CausalVAEDecoder
from pipeline.tools.tiny import COMPONENTS_DIR


@pytest.fixture(scope="module")
def vae(tiny_models: Path):
    return C.load_vae(tiny_models / COMPONENTS_DIR, "cpu", torch.float32)


def _frame_only_mask(n_frame: int, n_hw: int, dtype, device, batch_size: int = None):
    """Block-diagonal: a token sees the tokens of its own frame only."""
    frame = torch.arange(n_frame * n_hw, device=device) // n_hw
    mask = torch.zeros(n_frame * n_hw, n_frame * n_hw, dtype=dtype, device=device)
    mask.masked_fill_(frame[:, None] != frame[None, :], float("-inf"))
    return mask if batch_size is None else mask.unsqueeze(0).expand(batch_size, -1, -1)


def whole_video(vae, z: torch.Tensor, attention: str = "causal") -> torch.Tensor:
    """diffusers' own decoder on every latent at once (untiled), mapped like decode_latents. With
    attention="frame" its causal mask is swapped for a block-diagonal one: since every other layer is
    causal, that is exactly upstream's one-latent-at-a-time decode."""
    block = hv15.HunyuanVideo15AttnBlock
    saved = block.prepare_causal_attention_mask
    if attention == "frame":
        block.prepare_causal_attention_mask = staticmethod(_frame_only_mask)
    try:
        with torch.inference_mode():
            video = vae.decoder(z.to(vae.dtype) / vae.config.scaling_factor)
    finally:
        block.prepare_causal_attention_mask = staticmethod(saved)
    return (video.float() / 2 + 0.5).clamp(0, 1)


def decode_in_pieces(decoder: CausalVAEDecoder, z: torch.Tensor, pieces: list[int]) -> torch.Tensor:
    out, start = [], 0
    for size in pieces:
        out.append(decoder.decode(z[:, :, start:start + size]))
        start += size
    assert start == z.shape[2]
    return torch.cat(out, dim=2)


@pytest.mark.parametrize("attention", ["causal", "frame"])
@pytest.mark.parametrize("pieces, per_step", [
    ([1], 1),                 # the condition image alone
    ([2], 1),
    ([4, 4], 1),              # AR chunks, one latent per decoder pass
    ([4, 4, 1], 2),
    ([1, 3, 5], 3),           # uneven pieces and steps that straddle them
    ([9], 9),                 # one pass over everything
    ([16], 4),                # a bidirectional chunk
])
def test_matches_the_whole_video_decode(vae, pieces, per_step, attention):
    torch.manual_seed(sum(pieces) * 10 + per_step)
    z = torch.randn(1, 32, sum(pieces), 3, 4)
    decoder = CausalVAEDecoder(vae, latents_per_step=per_step, attention=attention)
    video = decode_in_pieces(decoder, z, pieces)
    expected = whole_video(vae, z, attention)
    assert video.shape == expected.shape == (1, 3, 4 * (sum(pieces) - 1) + 1, 48, 64)
    torch.testing.assert_close(video, expected, rtol=0, atol=1e-5)
    assert decoder.latents_decoded == sum(pieces) and decoder.frames_decoded == video.shape[2]


def test_the_two_attention_modes_differ_after_the_first_latent(vae):
    torch.manual_seed(2)
    z = torch.randn(1, 32, 3, 3, 4)
    frame = CausalVAEDecoder(vae).decode(z)  # "frame" is the default (upstream's pipeline)
    causal = CausalVAEDecoder(vae, attention="causal").decode(z)
    torch.testing.assert_close(frame[:, :, :1], causal[:, :, :1], rtol=0, atol=1e-6)  # one frame: same
    assert (frame[:, :, 1:] - causal[:, :, 1:]).abs().max() > 1e-3


def test_the_past_is_carried_between_pieces(vae):
    """Without the carried state (caches of the convolutions and attention) the later frames differ:
    the equality above is not an accident of a decoder that ignores time."""
    torch.manual_seed(3)
    z = torch.randn(1, 32, 8, 3, 4)
    expected = whole_video(vae, z)
    decoder = CausalVAEDecoder(vae, attention="causal")
    first = decoder.decode(z[:, :, :4])
    decoder._history.clear()  # forget the convolutions' past only
    forgot_convs = decoder.decode(z[:, :, 4:])
    decoder = CausalVAEDecoder(vae, attention="causal")
    decoder.decode(z[:, :, :4])
    decoder._keys_values.clear()  # forget the attention's past only
    forgot_attention = decoder.decode(z[:, :, 4:])
    torch.testing.assert_close(first, expected[:, :, :13], rtol=0, atol=1e-5)
    for wrong in (forgot_convs, forgot_attention):
        assert (wrong - expected[:, :, 13:]).abs().max() > 1e-3


def test_reset_starts_a_new_video(vae):
    torch.manual_seed(4)
    a, b = torch.randn(1, 32, 5, 3, 4), torch.randn(1, 32, 2, 3, 4)
    decoder = CausalVAEDecoder(vae, latents_per_step=2, attention="causal")
    decoder.decode(a)
    decoder.reset()
    assert decoder.latents_decoded == 0 and decoder.frames_decoded == 0
    torch.testing.assert_close(decoder.decode(b), whole_video(vae, b), rtol=0, atol=1e-5)


def test_decode_latents_is_upstreams_streamed_decode(vae):
    torch.manual_seed(5)
    z = torch.randn(1, 32, 6, 3, 4)
    expected = whole_video(vae, z, "frame")
    torch.testing.assert_close(C.decode_latents(vae, z), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(C.decode_latents(vae, z, latents_per_step=6), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("attention", ["causal", "frame"])
def test_bf16_stays_within_bf16_noise(vae, tiny_models: Path, attention):
    """On the GPU the VAE runs in bf16: streamed and whole decodes then differ only by rounding."""
    torch.manual_seed(6)
    z = torch.randn(1, 32, 8, 3, 4)
    vae16 = C.load_vae(tiny_models / COMPONENTS_DIR, "cpu", torch.bfloat16)
    streamed = decode_in_pieces(CausalVAEDecoder(vae16, attention=attention), z, [4, 4])
    whole = whole_video(vae16, z, attention)
    exact = whole_video(vae, z, attention)  # fp32
    assert (streamed - whole).abs().max() < 2e-2
    # the streamed bf16 decode is as close to fp32 as diffusers' own bf16 decode is
    assert (streamed - exact).abs().mean() < 1.5 * (whole - exact).abs().mean()


def test_bad_arguments(vae):
    with pytest.raises(ValueError, match="latents_per_step"):
        CausalVAEDecoder(vae, latents_per_step=0)
    with pytest.raises(ValueError, match="attention must be one of"):
        CausalVAEDecoder(vae, attention="full")
    decoder = CausalVAEDecoder(vae)
    with pytest.raises(ValueError, match="expected latents"):
        decoder.decode(torch.zeros(1, 32, 0, 3, 4))
    with pytest.raises(ValueError, match="expected latents"):
        decoder.decode(torch.zeros(32, 2, 3, 4))
