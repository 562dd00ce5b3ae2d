"""The latent upsampler of HunyuanVideo-1.5's 720p super-resolution stage (``upsampler/720p_sr_distilled``).

What it does: the 480p latents [B, 32, T, h, w] are first resized bilinearly (per frame, corners not aligned) to
the 720p latent grid, then refined by a small causal 3-D convolution network: an input convolution to
``hidden_channels``, ``num_blocks`` residual blocks of three convolutions with SiLU between them, an output
convolution back to ``out_channels`` (and, when configured and the shapes allow, a residual over the whole net).
Every convolution is causal in time: kernel 3, padded with 2 replicated frames before (none after) and one
replicated row / column on each side, so frame t sees frames t-2..t only.

The published weights load strictly (:meth:`LatentUpsampler.from_folder`): the ``config.json`` beside the
safetensors gives the widths; every tensor name and shape must match, none may be missing or left over.
The parameter names are the published file's (``in_conv.conv.weight``, ``blocks.{i}.block.{0,2,4}.conv.*``,
``out_conv.conv.*``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import CheckpointError, FrameCountError

__all__ = ["LatentUpsampler", "resize_latents", "check_sr_frames", "SR_MAX_LATENTS", "SR_LATENT_MULTIPLE"]

#: upstream enables SR for 125-frame videos only (HY-WorldPlay run.sh: "when NUM_FRAMES == 125"): the SR
#: transformer attends over the whole 720p video at once (32 latents x 45 x 80 = 115,200 tokens)
SR_MAX_LATENTS = 32
SR_LATENT_MULTIPLE = 1


def check_sr_frames(num_frames: int) -> None:
    """Frame counts the 720p stage takes: 4k+1 frames, at most 125 (32 latents). FrameCountError otherwise."""
    if num_frames < 1 or (num_frames - 1) % 4:
        raise FrameCountError(f"{num_frames} frames: the super-resolution stage takes 4k+1 frames")
    latents = (num_frames - 1) // 4 + 1
    if latents > SR_MAX_LATENTS:
        raise FrameCountError(
            f"{num_frames} frames: the 720p super-resolution stage takes at most {4 * (SR_MAX_LATENTS - 1) + 1} "
            f"frames ({SR_MAX_LATENTS} latents; it attends over the whole 720p video at once); render 480p, or "
            "continue a world in 125-frame parts")


class _CausalConv3d(nn.Module):
    """Kernel-3 convolution, causal in time (2 replicated frames before), replicate-padded in space."""

    def __init__(self, channels_in: int, channels_out: int):
        super().__init__()
        self.conv = nn.Conv3d(channels_in, channels_out, kernel_size=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (1, 1, 1, 1, 2, 0), mode="replicate"))


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        # indices 0, 2, 4 hold the convolutions (the published names); 1 and 3 the activations
        self.block = nn.Sequential(_CausalConv3d(channels, channels), nn.SiLU(),
                                   _CausalConv3d(channels, channels), nn.SiLU(),
                                   _CausalConv3d(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class LatentUpsampler(nn.Module):
    """The 720p upsampler network (see the module docstring); ``forward`` takes latents already on the 720p grid."""

    CONFIG_KEYS = ("in_channels", "out_channels", "hidden_channels", "num_blocks", "global_residual")

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int | None = None, num_blocks: int = 6,
                 global_residual: bool = False):
        super().__init__()
        hidden = 64 if hidden_channels is None else int(hidden_channels)  # the published class's default
        self.config = {"in_channels": int(in_channels), "out_channels": int(out_channels), "hidden_channels": hidden,
                       "num_blocks": int(num_blocks), "global_residual": bool(global_residual)}
        self.in_conv = _CausalConv3d(in_channels, hidden)
        self.blocks = nn.ModuleList(_ResidualBlock(hidden) for _ in range(int(num_blocks)))
        self.out_conv = _CausalConv3d(hidden, out_channels)
        self.global_residual = bool(global_residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.in_conv(x)
        for block in self.blocks:
            y = block(y)
        y = self.out_conv(y)
        if self.global_residual and y.shape == x.shape:
            y = y + x
        return y

    def upsample(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """480p latents [B, C, T, h, w] -> refined latents on the (height, width) latent grid, in float32 (the
        network runs in float32, as upstream runs it)."""
        resized = resize_latents(latents, height, width)
        weight = self.in_conv.conv.weight
        return self(resized.to(weight.device, torch.float32))

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, *, device: str | torch.device = "cpu") -> "LatentUpsampler":
        """Build from ``config.json`` and load ``diffusion_pytorch_model.safetensors`` strictly (float32)."""
        from safetensors.torch import load_file

        folder = Path(folder)
        config = json.loads((folder / "config.json").read_text())
        unknown = sorted(k for k in config if not k.startswith("_") and k not in cls.CONFIG_KEYS)
        if unknown:
            raise CheckpointError(f"{folder / 'config.json'}: unknown upsampler settings {unknown}")
        model = cls(**{k: config[k] for k in cls.CONFIG_KEYS if k in config})
        state = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
        own = model.state_dict()
        missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
        if missing or extra or shapes:
            raise CheckpointError(
                f"{folder}: the upsampler checkpoint does not match its config (missing {missing[:5]}, unexpected "
                f"{extra[:5]}, shapes differ {shapes[:5]})")
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        return model.to(device).eval().requires_grad_(False)

    def save_folder(self, folder: str | os.PathLike) -> Path:
        """Write ``config.json`` + ``diffusion_pytorch_model.safetensors`` in the published layout (tiny fixtures)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps({"_class_name": "SRTo720pUpsampler", **self.config}, indent=2)
                                            + "\n")
        save_file({k: v.contiguous() for k, v in self.state_dict().items()},
                  str(folder / "diffusion_pytorch_model.safetensors"))
        return folder


def resize_latents(latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[B, C, T, h, w] -> [B, C, T, height, width]: bilinear per frame, corners not aligned."""
    b, c, t, h, w = latents.shape
    frames = latents.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
    frames = F.interpolate(frames, size=(height, width), mode="bilinear", align_corners=False)
    return frames.reshape(b, t, c, height, width).permute(0, 2, 1, 3, 4)
