"""HunyuanVideo-1.5's 720p super-resolution stage run on a finished 480p world (``resolution: "720p"``).

What :meth:`SRStage.run` does, as upstream's ``720p_sr_distilled`` pipeline (HunyuanVideo-1.5
``hunyuan_video_sr_pipeline.py``, which HY-WorldPlay's ``--sr`` calls with the 480p latents):

1. the 720p size: the bucket of the 720p list (base 960 = 1.5 x the 480p base, stride 16) whose width/height
   ratio is nearest the 480p video's (:func:`sr_size`; 848x480 -> 1280x720);
2. the low-resolution condition: the 480p latents resized bilinearly to the 720p latent grid, refined by the
   latent upsampler (:mod:`pipeline.sr.upsampler`), then noised to strength 0.7
   (``0.3 * latents + 0.7 * noise``), with a mask channel of ones;
3. the image condition: the reference picture cropped to the 720p size, VAE-encoded, at latent frame 0 (zeros
   after) with a mask that is 1 at frame 0; its SigLIP embedding is taken at the 720p crop too; the text and
   byT5 embeddings are the 480p stage's (same prompt; guidance 1.0, so no negative branch);
4. 6 Euler steps of the flow-matching ODE from pure noise at t = 1000, sigmas ``linspace(1, 0, 7)`` shifted with
   flow shift 2.0 (t = 1000, 909, 800, 667, 500, 286); the transformer reads
   [noisy 32, image condition 33, low-resolution condition 33] = 98 channels and, being meanflow-distilled,
   the timestep the step lands on; once t < 700 the low-resolution condition and its mask are zeroed (from the
   4th step on), as upstream does.

The two random draws (the starting noise, then the condition's noise) come from one CPU generator seeded
with the job's seed (upstream draws the second from the global generator).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from pipeline.errors import GenerationCancelled
from pipeline.sr.transformer import SRTransformer, load_sr_transformer
from pipeline.sr.upsampler import LatentUpsampler

__all__ = ["SRStage", "SR_STEPS", "SR_FLOW_SHIFT", "SR_LQ_NOISE", "sr_sigmas", "sr_size", "lq_condition"]

logger = logging.getLogger("worldplay.sr")

#: upstream's SR_PIPELINE_CONFIGS["720p_sr_distilled"]: 6 steps, flow shift 2.0, guidance 1.0 (no CFG)
SR_STEPS = 6
SR_FLOW_SHIFT = 2.0
#: strength of the noise added to the upsampled low-resolution latents, and the timestep below which the
#: low-resolution condition is dropped (1000 x strength)
SR_LQ_NOISE = 0.7
#: the 720p bucket list's base size over the 480p one (960 / 640)
SR_SCALE = 1.5


def sr_sigmas(steps: int = SR_STEPS, shift: float = SR_FLOW_SHIFT) -> torch.Tensor:
    """The steps + 1 noise levels, 1 -> 0 (float32): ``linspace(1, 0, steps + 1)`` with the SD3 time shift."""
    sigmas = torch.linspace(1, 0, steps + 1)
    return (shift * sigmas) / (1 + (shift - 1) * sigmas)


def sr_size(width: int, height: int, base_size: int = 640, stride: int = 16) -> tuple[int, int]:
    """(W, H) of the 720p video for a ``width`` x ``height`` 480p one: the bucket of the list with base
    ``1.5 * base_size`` whose width/height ratio is nearest (the first such, as upstream's argmin)."""
    from diffusers.pipelines.hunyuan_video1_5.image_processor import generate_crop_size_list

    buckets = [tuple(int(v) for v in b) for b in generate_crop_size_list(int(round(base_size * SR_SCALE)), stride)]
    ratios = np.array([w / h for w, h in buckets])  # upstream reads the pairs as (width, height) here
    w, h = buckets[int(np.abs(ratios - width / height).argmin())]
    return w, h


def lq_condition(upsampled: torch.Tensor, noise: torch.Tensor, strength: float = SR_LQ_NOISE) -> torch.Tensor:
    """[B, 33, T, H, W]: the upsampled latents noised to `strength`, and a mask channel of ones."""
    noised = (1 - strength) * upsampled + strength * noise
    return torch.cat([noised, torch.ones_like(noised[:, :1])], dim=1)


def image_condition(image_latent: torch.Tensor, frames: int) -> torch.Tensor:
    """[1, 33, T, H, W]: the picture's latent [1, 32, 1, H, W] at frame 0 (zeros after) and a mask that is 1
    at frame 0."""
    b, c, _, h, w = image_latent.shape
    cond = torch.zeros(b, c + 1, frames, h, w, dtype=torch.float32, device=image_latent.device)
    cond[:, :c, 0] = image_latent[:, :, 0].float()
    cond[:, c, 0] = 1.0
    return cond


@dataclass
class SRStage:
    transformer: SRTransformer
    upsampler: LatentUpsampler
    steps: int = SR_STEPS
    flow_shift: float = SR_FLOW_SHIFT

    @classmethod
    def from_folders(cls, transformer: str | Path, upsampler: str | Path, *, device: str | torch.device = "cpu",
                     dtype: torch.dtype = torch.bfloat16) -> "SRStage":
        """From the resolved ``transformer/720p_sr_distilled`` and ``upsampler/720p_sr_distilled`` folders
        (``ModelPaths.sr_files``' parents)."""
        started = time.perf_counter()
        transformer = load_sr_transformer(Path(transformer), device=device, dtype=dtype)
        upsampler = LatentUpsampler.from_folder(Path(upsampler), device=device)
        logger.info("SR stage loaded in %.2f s", time.perf_counter() - started)
        return cls(transformer=transformer, upsampler=upsampler)

    @torch.inference_mode()
    def run(self, lq_latents: torch.Tensor, image_latent: torch.Tensor, *, text: torch.Tensor,
            text_mask: torch.Tensor, byt5: torch.Tensor, byt5_mask: torch.Tensor, vision: torch.Tensor, seed: int,
            callback: Callable[[int, int], None] | None = None,
            should_cancel: Callable[[], bool] | None = None) -> torch.Tensor:
        """The 720p latents [1, 32, T, H, W] (float32, normalised like the DiT's) of the 480p latents
        `lq_latents` [1, 32, T, h, w]; `image_latent` [1, 32, 1, H, W] is the picture's latent at the 720p size
        (H, W: the 720p latent grid), `vision` its SigLIP embedding at that crop. `callback(step, total)` after
        each step; `should_cancel()` before each (it raises the engine's cancellation when it returns True)."""
        device = self.transformer.device
        dtype = self.transformer.dtype
        _, channels, frames, _, _ = lq_latents.shape
        height, width = image_latent.shape[-2:]
        generator = torch.Generator("cpu").manual_seed(int(seed))
        latents = torch.randn((1, channels, frames, height, width), generator=generator).to(device)
        upsampled = self.upsampler.upsample(lq_latents.float(), height, width).to(device)
        lq_noise = torch.randn(upsampled.shape, generator=generator).to(device)
        condition = torch.cat([image_condition(image_latent.to(device), frames),
                               lq_condition(upsampled, lq_noise)], dim=1)
        without_lq = condition.clone()
        without_lq[:, channels + 1:] = 0  # the low-resolution latents and their mask
        sigmas = sr_sigmas(self.steps, self.flow_shift)
        timesteps = sigmas * 1000
        for i in range(self.steps):
            if should_cancel is not None and should_cancel():
                raise GenerationCancelled(f"cancelled after {i} of {self.steps} super-resolution steps")
            t, t_next = timesteps[i], timesteps[i + 1]
            cond = condition if t >= 1000 * SR_LQ_NOISE else without_lq
            tokens = self.transformer.condition_tokens(text, text_mask, byt5, byt5_mask, vision, t)
            x = torch.cat([latents, cond], dim=1).to(dtype)
            velocity = self.transformer(x, t, t_next, tokens)
            latents = latents + velocity.float() * float(sigmas[i + 1] - sigmas[i])
            if callback is not None:
                callback(i + 1, self.steps)
        return latents
