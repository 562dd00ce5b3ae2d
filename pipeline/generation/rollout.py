"""The two generation modes: autoregressive (chunks of 4 latents) and bidirectional (chunks of 16).

Both denoise latents chunk by chunk; later chunks see a selection of earlier, already clean latents
("memory": :mod:`pipeline.generation.memory`) at the stabilisation timestep 14.

* AR: the text stream runs once and its K/V is cached; per chunk the selected context latents run
  once to fill the context K/V; each denoising step then runs only the chunk's own tokens.
* Bidirectional: each step runs [context latents, chunk latents] jointly with the text tokens;
  classifier-free guidance runs the unconditional and conditional branches as two batch-1 passes
  (a padded batch of 2 would need an attention mask, which rules out the flash kernels).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch

from pipeline.dit.ar_cache import ARCacheLayout
from pipeline.dit.transformer import ConditionTokens, WorldPlayTransformer
from pipeline.encoders.components import set_timesteps
from pipeline.errors import GenerationCancelled

CONTEXT_TIMESTEP = 14.0  # upstream: stabilization_level - 1
AR_CHUNK_LATENTS = 4
BIDIRECTIONAL_CHUNK_LATENTS = 16

StepCallback = Callable[[str, int, int], None]
ChunkCallback = Callable[[int, int, torch.Tensor], None]


class ContextSelector(Protocol):
    def __call__(self, chunk_start: int, chunk_size: int) -> Sequence[int]: ...


@dataclass
class Conditioning:
    """One CFG branch's encoder outputs (batch 1)."""

    text: torch.Tensor  # [1, Lt, text_dim]
    text_mask: torch.Tensor  # [1, Lt]
    byt5: torch.Tensor  # [1, Lb, byt5_dim]
    byt5_mask: torch.Tensor  # [1, Lb]
    vision: torch.Tensor  # [1, Lv, vision_dim]

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self.text, self.text_mask, self.byt5, self.byt5_mask, self.vision

    def tokens(self, transformer: WorldPlayTransformer, timestep_txt: float | torch.Tensor) -> ConditionTokens:
        return transformer.embed_condition(
            self.text, self.text_mask, self.byt5, self.byt5_mask, self.vision, timestep_txt
        )


@dataclass
class Camera:
    """Per-latent camera inputs of the whole video, on the transformer's device."""

    viewmats: torch.Tensor  # [1, L, 4, 4] world-to-camera
    intrinsics: torch.Tensor  # [1, L, 3, 3] normalised
    actions: torch.Tensor  # [1, L] int



class Trace:
    """Optional per-pass record for benchmarks: kind, chunk, query/key token counts and seconds.

    Timing synchronises the device around each pass, so it is only enabled when asked for.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.events: list[dict] = []

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def run(self, kind: str, chunk: int, query_tokens: int, key_tokens: int, fn, *args, **kwargs):
        self._sync()
        started = time.perf_counter()
        out = fn(*args, **kwargs)
        self._sync()
        self.events.append(
            {"kind": kind, "chunk": chunk, "query_tokens": query_tokens, "key_tokens": key_tokens,
             "seconds": time.perf_counter() - started}
        )
        return out


def _traced(trace: "Trace | None", kind: str, chunk: int, query_tokens: int, key_tokens: int, fn, *args, **kwargs):
    if trace is None:
        return fn(*args, **kwargs)
    return trace.run(kind, chunk, query_tokens, key_tokens, fn, *args, **kwargs)


@dataclass
class RolloutInputs:
    """Everything a rollout needs besides the model and the scheduler."""

    latents: torch.Tensor  # [1, C, L, h, w] initial noise (float32); denoised in place
    cond_latents: torch.Tensor  # [1, C + 1, L, h, w] image latent at position 0 + mask channel
    camera: Camera
    positive: Conditioning
    negative: Conditioning | None
    guidance_scale: float
    num_steps: int
    select_context: ContextSelector
    callback: StepCallback | None = None
    should_cancel: Callable[[], bool] | None = None
    on_chunk: ChunkCallback | None = None
    trace: "Trace | None" = None
    # a resumed rollout (world session): latents[:, :, :first_latent] are the clean history, and the
    # rollout starts at the chunk holding latent first_latent (a multiple of the chunk size)
    first_latent: int = 0

    @property
    def use_cfg(self) -> bool:
        return self.negative is not None and self.guidance_scale > 1.0


class Progress:
    """Counts denoising steps, reports them, and stops between steps when asked to."""

    def __init__(self, total: int, callback: StepCallback | None, should_cancel: Callable[[], bool] | None):
        self.total = total
        self.done = 0
        self.callback = callback
        self.should_cancel = should_cancel

    def check(self) -> None:
        if self.should_cancel is not None and self.should_cancel():
            raise GenerationCancelled(f"cancelled after {self.done} of {self.total} denoising steps")

    def step(self) -> None:
        self.done += 1
        if self.callback is not None:
            self.callback("denoising", self.done, self.total)


def _timesteps(scheduler, steps: int, device: torch.device):
    """Restart the scheduler on upstream's shifted schedule (1000, 937.5, 833.3, 625 for 4 steps)."""
    return set_timesteps(scheduler, steps, device=device)


def _guided(uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    return uncond + scale * (cond - uncond)


def _context_indices(select: ContextSelector, start: int, size: int) -> list[int]:
    """Union of the memory selections of each 4-latent block of the chunk, chunk itself excluded."""
    chosen: set[int] = set()
    for block_start in range(start, start + size, AR_CHUNK_LATENTS):
        chosen.update(int(i) for i in select(block_start, AR_CHUNK_LATENTS))
    return sorted(i for i in chosen if not start <= i < start + size)


class ChunkRollout:
    """A rollout that denoises one chunk at a time: the loop both modes share.

    ``run_chunk(chunk)`` picks the chunk's context from ``job.select_context``, then Euler-steps the
    chunk's latents (``job.latents[:, :, start:end]``, initial noise) to clean ones, in place, and
    calls ``job.on_chunk``. Between calls its owner may grow ``job.latents``, ``job.cond_latents`` and
    ``job.camera`` by whole chunks (a world that steps as it is played,
    :mod:`pipeline.generation.world`) or change the conditioning (:meth:`set_conditioning`); a whole
    video is ``run_chunk`` over its chunks in order (:func:`ar_rollout`, :func:`bidirectional_rollout`).
    Subclasses give ``begin_chunk(chunk, context)`` (once per chunk) and ``velocity_at(chunk, start,
    end, context, chunk_latents, t)`` (the guided velocity of the chunk's latents at timestep ``t``).
    """

    size: int

    def __init__(self, transformer: WorldPlayTransformer, scheduler, job: RolloutInputs):
        self.transformer = transformer
        self.scheduler = scheduler
        self.job = job

    def set_conditioning(self, positive: Conditioning, negative: Conditioning | None) -> None:
        """Use another prompt's conditioning from the next chunk on."""
        self.job.positive, self.job.negative = positive, negative

    def begin_chunk(self, chunk: int, context: list[int]) -> None:
        pass

    def velocity_at(self, chunk, start, end, context, chunk_latents, t):  # pragma: no cover - abstract
        raise NotImplementedError

    def run_chunk(self, chunk: int, progress: "Progress") -> None:
        job, size = self.job, self.size
        latents = job.latents
        start, end = chunk * size, (chunk + 1) * size
        if end > latents.shape[2]:
            raise ValueError(f"chunk {chunk} ends at latent {end}; the rollout holds {latents.shape[2]}")
        context = _context_indices(job.select_context, start, size) if chunk else []
        self.begin_chunk(chunk, context)
        chunk_latents = latents[:, :, start:end]
        for t in _timesteps(self.scheduler, job.num_steps, self.transformer.device):
            progress.check()
            velocity = self.velocity_at(chunk, start, end, context, chunk_latents, t)
            chunk_latents = self.scheduler.step(velocity.float(), t, chunk_latents.float(), return_dict=False)[0]
            chunk_latents = chunk_latents.to(latents.dtype)
            progress.step()
        latents[:, :, start:end] = chunk_latents
        if job.on_chunk is not None:
            job.on_chunk(start, end, latents)


def _run_all(rollout: ChunkRollout) -> torch.Tensor:
    """Every chunk of ``rollout.job.latents`` after ``first_latent``, in order; the clean latents."""
    job, size = rollout.job, rollout.size
    latents = job.latents
    chunks = latents.shape[2] // size
    if job.first_latent % size or not 0 <= job.first_latent < latents.shape[2]:
        raise ValueError(f"first_latent {job.first_latent} is not a chunk start below {latents.shape[2]}")
    first_chunk = job.first_latent // size
    progress = Progress((chunks - first_chunk) * job.num_steps, job.callback, job.should_cancel)
    for chunk in range(first_chunk, chunks):
        rollout.run_chunk(chunk, progress)
    return latents


class ARRollout(ChunkRollout):
    """Chunks of 4 latents. The text K/V of each CFG branch is computed once (:meth:`set_conditioning`
    recomputes it); per chunk the context latents run once to fill the context K/V, then each step
    runs only the chunk's own tokens. The cache holds up to `max_context_latents` context latents."""

    size = AR_CHUNK_LATENTS

    def __init__(self, transformer: WorldPlayTransformer, scheduler, job: RolloutInputs, *,
                 max_context_latents: int):
        super().__init__(transformer, scheduler, job)
        self.layout = ARCacheLayout(latent_grid=tuple(job.latents.shape[3:]),
                                    max_context_latents=max_context_latents, chunk_latents=AR_CHUNK_LATENTS)
        self.caches: list = []
        self.set_conditioning(job.positive, job.negative)

    def set_conditioning(self, positive: Conditioning, negative: Conditioning | None) -> None:
        super().set_conditioning(positive, negative)
        job, transformer = self.job, self.transformer
        branches = [job.positive] + ([job.negative] if job.use_cfg else [])
        self.caches = []  # the old caches go before the new ones are allocated
        self.caches = [
            _traced(job.trace, "text", 0, 0, 0, lambda b=b: transformer.ar_start(b.tokens(transformer, 0.0), self.layout))
            for b in branches
        ]

    def release(self) -> None:
        """Drop the K/V caches (the rollout cannot run another chunk afterwards)."""
        self.caches = []

    def begin_chunk(self, chunk: int, context: list[int]) -> None:
        job, transformer = self.job, self.transformer
        if not context:
            for cache in self.caches:
                transformer.ar_clear_context(cache)
            return
        ctx_input = torch.cat([job.latents[:, :, context], job.cond_latents[:, :, context]], dim=1)
        ctx_video = transformer.embed_video(
            ctx_input, torch.full((len(context),), CONTEXT_TIMESTEP), *_camera_args(job.camera, context), rope_start=0
        )
        n_ctx = ctx_video.tokens.shape[1]
        for cache in self.caches:
            _traced(job.trace, "context", chunk, n_ctx, cache.text_len + n_ctx, transformer.ar_context_pass, cache,
                    ctx_video)

    def velocity_at(self, chunk, start, end, context, chunk_latents, t):
        job, transformer, caches, trace = self.job, self.transformer, self.caches, self.job.trace
        video = transformer.embed_video(
            torch.cat([chunk_latents, job.cond_latents[:, :, start:end]], dim=1),
            torch.full((AR_CHUNK_LATENTS,), float(t)),
            *_camera_args(job.camera, slice(start, end)),
            rope_start=caches[0].chunk_rope_start,
        )
        n_q = video.tokens.shape[1]
        n_k = caches[0].text_len + caches[0].context_len + n_q
        velocity = _traced(trace, "step", chunk, n_q, n_k, transformer.ar_chunk_pass, caches[0], video)
        if job.use_cfg:
            uncond = _traced(trace, "step", chunk, n_q, n_k, transformer.ar_chunk_pass, caches[1], video)
            velocity = _guided(uncond, velocity, job.guidance_scale)
        return velocity


class BidirectionalRollout(ChunkRollout):
    """Chunks of 16 latents with full attention over [context, chunk] and the text at every step."""

    size = BIDIRECTIONAL_CHUNK_LATENTS

    def velocity_at(self, chunk, start, end, context, chunk_latents, t):
        job, transformer, trace = self.job, self.transformer, self.job.trace
        latents = job.latents
        positions = context + list(range(start, end))
        frame_t = torch.full((len(positions),), float(t))
        frame_t[: len(context)] = CONTEXT_TIMESTEP
        # upstream quirk kept on purpose: the condition channels are those of the first n positions
        cond = job.cond_latents[:, :, : len(positions)]
        joint = torch.cat([latents[:, :, context], chunk_latents], dim=2) if context else chunk_latents
        video = transformer.embed_video(
            torch.cat([joint, cond], dim=1), frame_t, *_camera_args(job.camera, positions), rope_start=0
        )
        n_img = video.tokens.shape[1]
        cond_tokens = job.positive.tokens(transformer, t)
        velocity = _traced(trace, "joint", chunk, n_img, n_img + cond_tokens.tokens.shape[1], transformer, video,
                           cond_tokens)
        if job.use_cfg:
            uncond_tokens = job.negative.tokens(transformer, t)
            uncond = _traced(trace, "joint", chunk, n_img, n_img + uncond_tokens.tokens.shape[1], transformer, video,
                             uncond_tokens)
            velocity = _guided(uncond, velocity, job.guidance_scale)
        return velocity[:, :, len(context):]


def ar_rollout(transformer: WorldPlayTransformer, scheduler, job: RolloutInputs) -> torch.Tensor:
    """Denoise `job.latents` [1, C, L, h, w] in chunks of 4; returns the clean latents (same tensor)."""
    # the largest context is memory_size (20) latents; the cache holds it plus one chunk
    rollout = ARRollout(transformer, scheduler, job,
                        max_context_latents=_max_context(job.select_context, job.latents.shape[2]))
    return _run_all(rollout)


def bidirectional_rollout(transformer: WorldPlayTransformer, scheduler, job: RolloutInputs) -> torch.Tensor:
    """Denoise `job.latents` [1, C, L, h, w] in chunks of 16 with full attention per step."""
    return _run_all(BidirectionalRollout(transformer, scheduler, job))


ROLLOUTS = {"ar": ARRollout, "bidirectional": BidirectionalRollout}


def _camera_args(camera: Camera, index: slice | Sequence[int]):
    """(actions, viewmats, intrinsics) of the given latents, in `embed_video`'s argument order."""
    if not isinstance(index, slice):
        index = torch.as_tensor(list(index), dtype=torch.long, device=camera.viewmats.device)
    return camera.actions[:, index], camera.viewmats[:, index], camera.intrinsics[:, index]


def _max_context(select_context: ContextSelector, num_latents: int) -> int:
    limit = getattr(select_context, "memory_size", None)
    return min(num_latents, int(limit)) if limit else num_latents


def fresh_scheduler(scheduler):
    """An independent copy (the diffusers scheduler keeps per-run state)."""
    return copy.deepcopy(scheduler)
