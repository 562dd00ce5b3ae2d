"""The seed scheme: every random draw of a generation comes from (seed, stream, chunk index).

A rollout denoises its latents chunk by chunk (4 latents per AR chunk, 16 per bidirectional chunk).
Chunk ``k``'s initial noise and the Monte-Carlo points of its memory selection are drawn from their
own CPU generator, seeded with

    int.from_bytes(sha256(f"worldplay/{stream}/{seed}/{k}".encode()).digest()[:8], "big")

where ``stream`` is ``noise`` or ``memory``. Nothing depends on how many latents the request has, so
a video of A latents continued by B more latents (a world session, :mod:`pipeline.generation.world_state`) draws
exactly what one video of A + B latents draws, and the split generation is bit-identical to the
long one on the same device. The noise of chunk ``k`` is ``torch.randn([1, C, n, h, w])`` (float32,
CPU) from its generator; the memory points are :func:`pipeline.generation.memory.sample_memory_points` from
its generator.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from pipeline.generation.memory import sample_memory_points

__all__ = ["chunk_seed", "chunk_generator", "chunk_noise", "chunk_memory_points", "MemoryPoints"]

_PREFETCH = ThreadPoolExecutor(max_workers=1, thread_name_prefix="worldplay-points")


def chunk_seed(seed: int, stream: str, chunk: int) -> int:
    """The 64-bit seed of ``stream``'s generator for chunk ``chunk`` of a generation seeded ``seed``."""
    if int(seed) < 0 or int(chunk) < 0:
        raise ValueError(f"seed and chunk must be >= 0, got {seed}, {chunk}")
    digest = hashlib.sha256(f"worldplay/{stream}/{int(seed)}/{int(chunk)}".encode("ascii")).digest()
    return int.from_bytes(digest[:8], "big")


def chunk_generator(seed: int, stream: str, chunk: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(chunk_seed(seed, stream, chunk))


def chunk_noise(seed: int, chunk: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Initial noise of one chunk, float32 on the CPU, ``shape`` = [1, C, latents, h, w]."""
    return torch.randn(shape, generator=chunk_generator(seed, "noise", chunk), dtype=torch.float32)


def chunk_memory_points(seed: int, chunk: int) -> torch.Tensor:
    """Monte-Carlo points of one chunk's memory selection, [NUM_POINTS, 3] float32 on the CPU."""
    return sample_memory_points(chunk_generator(seed, "memory", chunk))


class MemoryPoints:
    """Chunk ``k``'s memory points on demand, with chunk ``k + 1``'s drawn on a background thread
    meanwhile (drawing 50 000 points takes a few ms of CPU time, during which the GPU would wait)."""

    def __init__(self, seed: int, num_chunks: int):
        self.seed, self.num_chunks = int(seed), int(num_chunks)
        self._pending: dict[int, Future] = {}

    def __call__(self, chunk: int) -> torch.Tensor:
        future = self._pending.pop(chunk, None)
        points = future.result() if future is not None else chunk_memory_points(self.seed, chunk)
        for stale in [k for k in self._pending if k < chunk]:
            self._pending.pop(stale)
        following = chunk + 1
        if following < self.num_chunks and following not in self._pending:
            self._pending[following] = _PREFETCH.submit(chunk_memory_points, self.seed, following)
        return points
