"""The K/V cache of the AR rollout: what it holds, where each pass writes, and the checks on both.

Each AR step attends to the sequence ``[text | context | chunk]``: the text K/V (written once by
``ar_start``), the K/V of the clean context latents selected for the current chunk (rewritten once
per chunk by a context pass) and the chunk's own K/V (rewritten at every denoising step). The cache
keeps one preallocated buffer per layer and owns the bookkeeping around it:

* its capacity, computed from an :class:`ARCacheLayout` (latent grid, largest context, chunk size)
  and the text length, so no caller computes token budgets;
* the context it currently holds (in latents; tokens follow from the grid);
* the temporal RoPE start each pass must use: 0 for a context pass, the number of context latents
  for a chunk pass (positions restart per call: context first, chunk after);
* checks of every pass against all of that, raised as ``ValueError`` before anything is written,
  so a wrong offset or an overflow can never silently change the output.

The cache knows nothing about which latents the context holds or where the chunk sits in the
video: any selection from any history (a resumed rollout included) is stored the same way. Its
head count is that of the K/V it is handed, so a cache of a head-sharded model holds only the local
heads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: temporal RoPE start of a context pass (the context latents come first)
CONTEXT_ROPE_START = 0


@dataclass(frozen=True)
class ARCacheLayout:
    """What an AR cache holds after its text: up to `max_context_latents` clean context latents and
    one chunk of up to `chunk_latents`, each latent a `latent_grid` = (h, w) of tokens."""

    latent_grid: tuple[int, int]
    max_context_latents: int
    chunk_latents: int

    def __post_init__(self) -> None:
        h, w = self.latent_grid
        object.__setattr__(self, "latent_grid", (int(h), int(w)))
        if h < 1 or w < 1 or self.max_context_latents < 0 or self.chunk_latents < 1:
            raise ValueError(f"invalid AR cache layout {self}")

    @property
    def tokens_per_latent(self) -> int:
        return self.latent_grid[0] * self.latent_grid[1]

    @property
    def video_tokens(self) -> int:
        """Image tokens after the text: the largest context plus one chunk."""
        return self.tokens_per_latent * (self.max_context_latents + self.chunk_latents)

    def capacity(self, text_len: int) -> int:
        """Tokens per layer buffer: text + largest context + one chunk."""
        return text_len + self.video_tokens


class ARCache:
    """Per-layer K/V along the sequence axis as [text | context | chunk], and what is stored where.

    ``keys[i]`` / ``values[i]`` have shape [2, heads, capacity, head_dim]: index 0 holds the RoPE
    branch, index 1 the PRoPE branch (the text K/V, which carries no positional encoding, is stored in
    both). Build it with :meth:`add_layer` per layer (``WorldPlayTransformer.ar_start`` does).
    """

    def __init__(self, layout: ARCacheLayout, text_len: int):
        self.layout = layout
        self.text_len = int(text_len)
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self._context_latents = 0

    # -- building

    def add_layer(self, text_keys: torch.Tensor, text_values: torch.Tensor) -> None:
        """Allocate the next layer's buffers (heads, width, dtype and device of the given K/V) and
        store its text K/V [heads, text_len, head_dim] in both branches."""
        heads, length, head_dim = text_keys.shape
        if length != self.text_len or text_values.shape != text_keys.shape:
            raise ValueError(f"text K/V {tuple(text_keys.shape)} / {tuple(text_values.shape)} do not match the "
                             f"cache's {self.text_len} text tokens")
        capacity = self.layout.capacity(self.text_len)
        keys = torch.empty(2, heads, capacity, head_dim, dtype=text_keys.dtype, device=text_keys.device)
        values = torch.empty_like(keys)
        keys[:, :, : self.text_len] = text_keys
        values[:, :, : self.text_len] = text_values
        self.keys.append(keys)
        self.values.append(values)

    # -- what it holds

    @property
    def capacity(self) -> int:
        return self.layout.capacity(self.text_len)

    @property
    def heads(self) -> int:
        return self.keys[0].shape[1]

    @property
    def context_latents(self) -> int:
        """Context latents currently stored after the text."""
        return self._context_latents

    @property
    def context_len(self) -> int:
        """Tokens of context currently stored after the text."""
        return self._context_latents * self.layout.tokens_per_latent

    @property
    def chunk_rope_start(self) -> int:
        """The temporal RoPE start a chunk pass must use now: right after the stored context."""
        return self._context_latents

    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() * 2 for k in self.keys)

    # -- the passes' slots (checked before anything is written)

    def clear_context(self) -> None:
        self._context_latents = 0

    def reserve_context(self, shape: tuple[int, int, int], rope_start: int) -> int:
        """Check a context pass of `shape` (T, h, w) and its RoPE start, forget the old context (its
        slot is about to be overwritten) and return the sequence offset to write the new one at."""
        self._check("context pass", shape, rope_start, CONTEXT_ROPE_START, self.layout.max_context_latents)
        self._context_latents = 0
        return self.text_len

    def commit_context(self, shape: tuple[int, int, int]) -> None:
        """Record that the context reserved for `shape` has been written."""
        self._context_latents = int(shape[0])

    def chunk_offset(self, shape: tuple[int, int, int], rope_start: int) -> int:
        """Check a chunk pass of `shape` (T, h, w) and its RoPE start; the sequence offset of the chunk."""
        self._check("chunk pass", shape, rope_start, self.chunk_rope_start, self.layout.chunk_latents)
        return self.text_len + self.context_len

    def _check(self, what: str, shape: tuple[int, int, int], rope_start: int, expected_start: int,
               max_latents: int) -> None:
        latents, h, w = shape
        grid = self.layout.latent_grid
        if (h, w) != grid:
            raise ValueError(f"AR cache is laid out for {grid[0]}x{grid[1]}-token latents; this {what} has {h}x{w}")
        if latents > max_latents:
            raise ValueError(
                f"AR cache holds {self.capacity} tokens (text {self.text_len}, up to "
                f"{self.layout.max_context_latents} context latents, a chunk of up to {self.layout.chunk_latents}); "
                f"this {what} has {latents} latents, more than the {max_latents} it was sized for"
            )
        if rope_start != expected_start:
            raise ValueError(
                f"this {what} has RoPE start {rope_start}; it must be {expected_start} "
                f"({'context latents come first' if what == 'context pass' else 'right after the stored context'})"
            )
