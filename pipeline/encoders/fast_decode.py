"""The fast streaming decoder: a TAEHV-1.5-compatible tiny VAE decoder for HunyuanVideo-1.5 latents.

TAEHV (https://github.com/madebyollin/taehv, MIT) is a tiny autoencoder trained to decode the latents of
video models into frames at a fraction of the full VAE's cost; its ``taehv1_5`` weights target
HunyuanVideo-1.5 (32 latent channels, 4x temporal and 16x spatial compression). No maintained package
loads them (diffusers 0.42 has ``AutoencoderTiny`` for images only), so this is our own implementation
of the decoder half, laid out so the published safetensors load strictly, tensor for tensor.

The decoder is a plain stack of 2D layers applied to every frame, with three kinds of temporal blocks:

* a *memory block* sees its input frame and the input frame one step earlier (channel-concatenated;
  zeros before the first frame): three 3x3 convolutions with ReLUs and a residual (``base`` weights), or
  a 7x7 depthwise convolution and a 1x1 inverted bottleneck with a residual (``super`` weights);
* a *time-grow* block turns each frame into ``stride`` frames: a 1x1 convolution to ``stride x C``
  channels whose channel groups become consecutive frames (stride 1 in the first stage, 2 in the next two:
  one latent becomes 4 frames);
* spatial 2x upsampling (nearest for ``base``, a convolution + pixel shuffle for ``super``).

The last convolution gives ``3 x 2 x 2`` channels per frame, pixel-shuffled to RGB at 16x the latent size,
clamped to [0, 1]. A video of ``T`` latents gives ``4 T`` raw frames of which the first 3 are dropped, so
``4 (T - 1) + 1`` remain: the first latent decodes to 1 frame, each later one to 4, as with the full VAE.

TAEHV takes the latents the diffusion model works with, without any scale or shift (those are what the
DiT produces here; the full VAE divides them by its ``scaling_factor`` first, TAEHV does not).

Streaming: the only state that crosses frames is each memory block's previous input frame. So a chunk of
latents is decoded in one batched pass (all its frames at once) given the state the previous chunk left,
and the concatenation of the chunks' frames equals the whole video decoded at once: same arithmetic,
in the same order per frame. The 3-frame trim applies to the video's first chunk only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "FAST_DECODER_FILES",
    "FastVideoDecoder",
    "TAEHVDecoder",
    "TAEHVDecoderConfig",
    "fast_decoder_key_shapes",
    "load_fast_decoder",
]

#: The published weight files (madebyollin/taehv, folder ``safetensors/``), preferred first.
FAST_DECODER_FILES = ("taehv1_5.safetensors", "taehv1_5_super.safetensors")
VARIANTS = ("base", "super")


@dataclass(frozen=True)
class TAEHVDecoderConfig:
    """The decoder's shape. Defaults: ``taehv1_5`` (base) at its published widths."""

    latent_channels: int = 32
    patch_size: int = 2
    widths: tuple[int, int, int, int] = (256, 128, 64, 64)  # base; super: (512, 256, 128, 64)
    variant: str = "base"
    time_upscale: tuple[bool, bool, bool] = (False, True, True)

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")

    @classmethod
    def super_(cls) -> "TAEHVDecoderConfig":
        """``taehv1_5_super`` at its published widths."""
        return cls(widths=(512, 256, 128, 64), variant="super")

    @property
    def temporal_upscale(self) -> int:
        return 2 ** sum(self.time_upscale)

    @property
    def frames_to_trim(self) -> int:
        """Raw frames dropped at the start of a video (the first latent gives one frame, not four)."""
        return self.temporal_upscale - 1

    @classmethod
    def from_shapes(cls, shapes: dict[str, tuple[int, ...]]) -> "TAEHVDecoderConfig":
        """The config of a weight file, read from its ``decoder.*`` tensor shapes (tiny test files
        included); :func:`load_fast_decoder` then checks every tensor against it."""
        if "decoder.1.conv.0.weight" in shapes:  # super: a 1x1 projection then memory blocks
            first = shapes.get("decoder.0.weight")
            widths = tuple(shapes.get(f"decoder.{i}.conv.3.weight", (0,))[0] for i in (1, 8, 15)) + (
                shapes.get("decoder.22.weight", (0, 0))[1],)
            variant = "super"
        else:
            first = shapes.get("decoder.1.weight")
            widths = (shapes.get("decoder.1.weight", (0,))[0], shapes.get("decoder.8.weight", (0,))[0],
                      shapes.get("decoder.14.weight", (0,))[0], shapes.get("decoder.20.weight", (0,))[0])
            variant = "base"
        last = shapes.get("decoder.22.weight")
        if first is None or last is None or len(first) != 4 or len(last) != 4 or not all(widths):
            raise ValueError("not a TAEHV decoder: the decoder.* tensors of the published layout are missing")
        patch = math.isqrt(max(last[0] // 3, 1))
        if 3 * patch * patch != last[0]:
            raise ValueError(f"decoder.22.weight gives {last[0]} output channels, not 3 x patch^2")
        return cls(latent_channels=int(first[1]), patch_size=patch, widths=tuple(int(w) for w in widths),
                   variant=variant)


# ---- blocks (module and parameter names are those of the published weights) -------------------------


def _conv3(n_in: int, n_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, bias=bias)


class _SoftClamp(nn.Module):
    """Bounds the latents smoothly to (-3, 3)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class _MemoryBlock(nn.Module):
    """base: ``relu(convs([x, past]) + x)``, three 3x3 convolutions with ReLUs between."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Sequential(_conv3(2 * channels, channels), nn.ReLU(), _conv3(channels, channels), nn.ReLU(),
                                  _conv3(channels, channels))

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(torch.cat([x, past], 1)) + x)


class _WideMemoryBlock(nn.Module):
    """super: ``x + bottleneck(depthwise7x7([x, past]))`` (no activation after the sum)."""

    def __init__(self, channels: int):
        super().__init__()
        wide = 2 * channels
        self.conv = nn.Sequential(nn.Conv2d(wide, wide, 7, padding=3, groups=wide, bias=False),
                                  nn.Conv2d(wide, 4 * channels, 1), nn.ReLU(),
                                  nn.Conv2d(4 * channels, channels, 1, bias=False))

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([x, past], 1)) + x


class _TimeGrow(nn.Module):
    """One frame -> ``stride`` frames: a 1x1 convolution to ``stride x C`` channels, channel group ``k``
    becoming frame ``k``."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(channels, channels * stride, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N*T, C, H, W] -> [N*T*stride, C, H, W]
        frames, channels, height, width = x.shape
        return self.conv(x).reshape(frames * self.stride, channels, height, width)


_MEMORY = (_MemoryBlock, _WideMemoryBlock)


class TAEHVDecoder(nn.Module):
    """The decoder stack, ``self.decoder`` an ``nn.Sequential`` whose indices are the published ones."""

    def __init__(self, config: TAEHVDecoderConfig = TAEHVDecoderConfig()):
        super().__init__()
        self.config = config
        w, strides = config.widths, [2 if up else 1 for up in config.time_upscale]
        out_channels = 3 * config.patch_size**2
        layers: list[nn.Module]
        if config.variant == "base":
            layers = [_SoftClamp(), _conv3(config.latent_channels, w[0]), nn.ReLU()]
            for stage in range(3):
                layers += [_MemoryBlock(w[stage]) for _ in range(3)]
                layers += [nn.Upsample(scale_factor=2), _TimeGrow(w[stage], strides[stage]),
                           _conv3(w[stage], w[stage + 1], bias=False)]
            layers += [nn.ReLU(), _conv3(w[3], out_channels)]
        else:
            layers = [nn.Conv2d(config.latent_channels, w[0], 1, bias=False)]
            for stage in range(3):
                layers += [_WideMemoryBlock(w[stage]) for _ in range(3)]
                layers += [_conv3(w[stage], w[stage + 1] * 4), nn.ReLU(), nn.PixelShuffle(2),
                           _TimeGrow(w[stage + 1], strides[stage])]
            layers += [_conv3(w[3], out_channels)]
        self.decoder = nn.Sequential(*layers)

    def run(self, latents: torch.Tensor, memory: list[torch.Tensor | None]) -> torch.Tensor:
        """Latents ``[N, T, C, h, w]`` -> raw frames ``[N, T * 4, 3, 16 h, 16 w]`` (before the trim and the
        clamp), every frame of the chunk at once. ``memory`` holds, per layer, the memory block's input of
        the previous frame (None: the video's start, zeros); it is updated in place."""
        batch = latents.shape[0]
        x = latents.flatten(0, 1)
        for index, layer in enumerate(self.decoder):
            if isinstance(layer, _MEMORY):
                frames = x.unflatten(0, (batch, -1))
                before = memory[index]
                if before is None:
                    before = torch.zeros_like(frames[:, :1])
                past = torch.cat([before, frames[:, :-1]], 1).flatten(0, 1)
                memory[index] = frames[:, -1:].clone()
                x = layer(x, past)
            else:
                x = layer(x)
        if self.config.patch_size > 1:
            x = F.pixel_shuffle(x, self.config.patch_size)
        return x.unflatten(0, (batch, -1))

    def memory_slots(self) -> list[None]:
        return [None] * len(self.decoder)

    def history_latents(self) -> int:
        """Latents a restarted decoder must re-read so its carried state is exact again.

        A restart gives the first memory block zeros for the frame before its first input; that wrong
        value spreads one frame further through each memory block (at that block's frame rate). The
        state is exact once every memory block's last input lies past the spread."""
        rate, spread, needed = 1, -1, 1  # spread: last frame (at `rate` frames per latent) still wrong
        for layer in self.decoder:
            if isinstance(layer, _MEMORY):
                needed = max(needed, (spread + 1 + rate - 1) // rate + 1)  # latents wrong at its input, + 1
                spread += 1
            elif isinstance(layer, _TimeGrow):
                spread = (spread + 1) * layer.stride - 1
                rate *= layer.stride
        return needed


def fast_decoder_key_shapes(config: TAEHVDecoderConfig = TAEHVDecoderConfig()) -> dict[str, tuple[int, ...]]:
    """``decoder.*`` tensor name -> shape of a weight file of this config (what :func:`load_fast_decoder`
    requires)."""
    with torch.device("meta"):
        module = TAEHVDecoder(config)
    return {name: tuple(t.shape) for name, t in module.state_dict().items()}


def load_fast_decoder(path: str | Path, device: str | torch.device = "cpu",
                      dtype: torch.dtype = torch.float32) -> TAEHVDecoder:
    """The decoder of a TAEHV weight file, loaded strictly: every ``decoder.*`` tensor of the layout with
    its shape, none other (``encoder.*`` tensors, the encoder half, are not read). A time-grow layer of
    stride 1 also accepts the stride-2 weights TAEHV trains with, keeping the last frame's channels as the
    reference implementation does. Raises :class:`pipeline.errors.CheckpointError` otherwise."""
    from safetensors import safe_open

    from pipeline.errors import CheckpointError
    from pipeline.safetensors_header import read_header

    path = Path(path)
    try:
        header = read_header(path)
        problem = header.size_problem()
        shapes = {k: tuple(v["shape"]) for k, v in header.tensors.items()}
    except Exception as exc:  # noqa: BLE001 - unreadable, truncated or foreign
        problem, shapes = f"{type(exc).__name__}: {exc}", {}
    if problem:
        raise CheckpointError(f"{path.name}: not a complete safetensors file ({problem})")
    foreign = sorted(k for k in shapes if not k.startswith(("decoder.", "encoder.")))
    try:
        config = TAEHVDecoderConfig.from_shapes(shapes)
    except ValueError as exc:
        raise CheckpointError(f"{path.name}: {exc}") from None
    expected = fast_decoder_key_shapes(config)
    have = {k: s for k, s in shapes.items() if k.startswith("decoder.")}
    missing = sorted(set(expected) - set(have))
    unexpected = sorted(set(have) - set(expected)) + foreign
    grown = {f"decoder.{i}.conv.weight" for i, layer in enumerate(TAEHVDecoder(config).decoder)
             if isinstance(layer, _TimeGrow) and layer.stride == 1} if not missing else set()
    wrong = [f"{k} {list(have[k])} != {list(s)}" for k, s in expected.items() if k in have and have[k] != s
             and not (k in grown and have[k] == (2 * s[0], *s[1:]))]
    if missing or unexpected or wrong:
        parts = [f"missing {missing[:6]}" if missing else "", f"unexpected {unexpected[:6]}" if unexpected else "",
                 f"wrong shapes {wrong[:6]}" if wrong else ""]
        raise CheckpointError(f"{path.name} does not fit the TAEHV decoder ({config.variant}): "
                              + "; ".join(p for p in parts if p))
    state = {}
    with safe_open(str(path), framework="pt") as handle:
        for key, shape in expected.items():
            tensor = handle.get_tensor(key)
            if tensor.shape[0] != shape[0]:  # a stride-2 time-grow for a stride-1 layer: the last frame's
                tensor = tensor[-shape[0]:]
            state[key] = tensor
    model = TAEHVDecoder(config)
    model.load_state_dict(state, strict=True)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


class FastVideoDecoder:
    """Stateful, in-order decoder over one video, with the interface of
    :class:`pipeline.encoders.causal_decode.CausalVAEDecoder` (so ``ChunkFrames`` takes either).

    >>> dec = FastVideoDecoder(model)               # doctest: +SKIP
    >>> first = dec.decode(latents[:, :, :4])       # 13 frames
    >>> rest = dec.decode(latents[:, :, 4:])        # 4 frames per latent
    >>> torch.cat([first, rest], 2)  # == decoding all latents in one call

    ``decode`` takes the DiT's latents ``[B, C, t, h, w]`` and returns float32 video in [0, 1],
    ``[B, 3, frames, 16 h, 16 w]``.
    """

    kind = "fast"

    def __init__(self, model: TAEHVDecoder):
        self.model = model
        self.reset()

    def reset(self) -> None:
        """Forget the video decoded so far."""
        self._memory = self.model.memory_slots()
        self.latents_decoded = 0

    def history_latents(self) -> int:
        return self.model.history_latents()

    @property
    def frames_decoded(self) -> int:
        ratio = self.model.config.temporal_upscale
        return ratio * (self.latents_decoded - 1) + 1 if self.latents_decoded else 0

    def _input(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.ndim != 5 or latents.shape[2] == 0:
            raise ValueError(f"expected latents [B, C, t>0, h, w], got {tuple(latents.shape)}")
        param = next(self.model.parameters())
        return latents.to(device=param.device, dtype=param.dtype).transpose(1, 2)  # -> [B, t, C, h, w]

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode the next latent frames ``[B, C, t, h, w]``; returns float32 video in [0, 1]."""
        x = self._input(latents)
        first = self.latents_decoded == 0
        frames = self.model.run(x, self._memory)
        self.latents_decoded += x.shape[1]
        if first:
            frames = frames[:, self.model.config.frames_to_trim:]
        return frames.transpose(1, 2).float().clamp_(0, 1)

    @torch.inference_mode()
    def resume(self, latents: torch.Tensor, start: int) -> None:
        """Rebuild the state of a decoder that has decoded a video's latents up to ``start + t``, given
        only its last ``t`` latents; exact when ``start == 0`` or ``t >= history_latents()``."""
        x = self._input(latents)
        self.reset()
        self.model.run(x, self._memory)
        self.latents_decoded = int(start) + x.shape[1]
