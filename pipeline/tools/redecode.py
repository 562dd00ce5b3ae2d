"""A world state's latents decoded again, with the full VAE: the full-quality MP4 of a live world.

A live world streams its frames through the fast decoder (TAEHV), but what it saves (``world.safetensors``,
:class:`pipeline.generation.world_state.WorldState`) is the clean latents of the whole session, whichever
decoder showed them. Decoding those with the HunyuanVideo-1.5 VAE gives the frames a queue job with
``decoder: "full"`` would have made of the same latents::

    python -m pipeline --redecode world.safetensors --out full.mp4 [--model-dir DIR | --tiny]
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

#: latents per decoder call: one AR chunk (the decoder carries its causal state across calls)
LATENTS_PER_CALL = 4


def redecode_state(state, vae, on_frames: Callable[[np.ndarray], None], *, decoder: str = "full",
                   fast_model=None) -> int:
    """Decode every latent of `state` in order (chunk by chunk, one causal decoder) and hand each chunk's
    uint8 frames [n, H, W, 3] to `on_frames`; returns the frames decoded (``4 (latents - 1) + 1``)."""
    from pipeline.encoders import components as comp
    from pipeline.encoders.causal_decode import CausalVAEDecoder
    from pipeline.encoders.fast_decode import FastVideoDecoder

    latents = state.latents.permute(1, 0, 2, 3).unsqueeze(0)  # [T, C, h, w] -> [1, C, T, h, w]
    chunks = FastVideoDecoder(fast_model) if decoder == "fast" else CausalVAEDecoder(vae)
    frames = 0
    with torch.inference_mode():
        for start in range(0, latents.shape[2], LATENTS_PER_CALL):
            piece = comp.frames_to_uint8(chunks.decode(latents[:, :, start:start + LATENTS_PER_CALL]))
            frames += piece.shape[0]
            on_frames(piece)
    return frames


__all__ = ["LATENTS_PER_CALL", "redecode_state"]
