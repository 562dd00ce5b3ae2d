"""The one length limit of a video, shared by the request schema and the camera parser.

Every camera form (pose string, action list, inline pose JSON, pose JSON read by ``pose_key``) is
checked against ``MAX_LATENTS`` while it is parsed, before the image is fetched or any model runs;
``num_frames`` in the request schema is capped at the same length (``MAX_FRAMES``).

What the limit costs (H100, 832x480, docs/PERFORMANCE.md): AR distilled takes ~24 s per 125 frames
(32 latents, 8 chunks of 4; the memory context stops growing after 20 latents, so the cost per chunk
is then constant), i.e. ~3 minutes at the limit. Bidirectional takes ~80 s for its first chunk of
16 latents and ~255 s for each later one at 30 steps + CFG, i.e. ~65 minutes at the limit, and ~5/3 of
that (~110 minutes) at its published default of 50 steps (the non-distilled AR models likewise cost
~25x the distilled one per step count): set the endpoint's execution timeout accordingly, or keep such
requests short.
"""

from __future__ import annotations

FRAMES_PER_LATENT = 4

MAX_LATENTS = 256
"""Latents of the longest trajectory (latent 0 is the conditioning frame)."""

MAX_FRAMES = FRAMES_PER_LATENT * (MAX_LATENTS - 1) + 1
"""Frames of the longest video: 1021."""

MAX_SESSION_LATENTS = 1024
"""Latents of the longest world session (``continue_from`` chains; 4093 frames): the default and the
ceiling of ``WORLDPLAY_MAX_SESSION_LATENTS``. Each job still renders at most ``MAX_LATENTS``; a session
costs no more GPU memory per job as it grows (the AR K/V cache holds a bounded memory selection)."""
