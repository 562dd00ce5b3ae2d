"""Ulysses sequence parallelism: one DiT pass split across the N ranks (GPUs) of one worker.

Outside attention every rank holds a 1/N slice of the tokens with all heads ("sequence-sharded"); the
token-wise work (modulation, q/k/v projections, QK-norm, output projections, MLP) runs on that slice.
Around attention one all-to-all per direction swaps to all tokens with H/N heads ("head-sharded"):
RoPE, PRoPE and attention then run unchanged on the full sequence, and the AR K/V cache holds H/N
heads per rank.

Sharding is per latent frame: each frame's S = h*w tokens are padded to S' (a multiple of N) and rank
r keeps tokens [r*S'/N, (r+1)*S'/N) of every frame, so its slice is still T frames of S'/N tokens and
the per-frame modulation code needs no change. The all-to-all into the head-sharded layout trims the
padding and restores the original token order, so attention never sees a padded key and the
reduction order of every attention row equals the single-rank path's. Text tokens are one "frame".

:class:`Local` is the identity layout of a single rank; the transformer always goes through a layout,
so one code path serves both.

``WORLDPLAY_SEQUENCE_PARALLEL``: ``1`` (default), ``N``, or ``auto`` (every visible GPU). The ranks use
NCCL on CUDA and gloo on the CPU (tests).

Every collective a rank runs goes through :class:`Progress`: two counters per rank (collectives entered,
collectives left) in memory shared with rank 0, whose watchdog (:mod:`pipeline.generation.ranks`) reads
them while its own thread may be blocked inside a collective. NCCL's error handling is set before the
group forms (:data:`NCCL_ERROR_HANDLING`): a collective that times out raises in the thread that waits on
it and aborts the communicator, instead of tearing the process down.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from pipeline.errors import SequenceParallelConfigError

ENV = "WORLDPLAY_SEQUENCE_PARALLEL"

# NCCL's error handling on every rank, set before the group forms (torch's documented meanings):
# TORCH_NCCL_BLOCKING_WAIT=1: a collective's wait() blocks the calling thread and raises when the group's
# timeout passes (and the host-side Progress counters follow the collectives as they complete);
# TORCH_NCCL_ASYNC_ERROR_HANDLING=2: on an error the watchdog aborts the communicator only (1 and 3, the
# default, would also tear the process down, leaving no coded answer). An operator's own values win.
NCCL_ERROR_HANDLING = {"TORCH_NCCL_BLOCKING_WAIT": "1", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "2"}


# ------------------------------------------------------------------------------------ settings


def visible_gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def parse_size(value: str | int | None, *, heads: int | None, gpus: int, device_type: str) -> int:
    """The number of ranks asked for, checked against the heads (when known) and, on CUDA, the visible GPUs.

    `value`: None/""/"1" -> 1; "auto" -> every visible GPU (1 without a GPU); "N". On the CPU any N
    (that divides the heads) is allowed: gloo ranks, for tests."""
    raw = "" if value is None else str(value).strip().lower()
    if raw in ("", "1"):
        return 1
    if raw == "auto":
        size = max(1, gpus) if device_type == "cuda" else 1
    else:
        try:
            size = int(raw)
        except ValueError:
            raise SequenceParallelConfigError(f"{ENV}={value!r} is not a number or 'auto'") from None
    if size < 1:
        raise SequenceParallelConfigError(f"{ENV}={value!r}: the number of ranks must be at least 1")
    if heads is not None:
        check_heads(size, heads)
    if device_type == "cuda" and size > gpus:
        raise SequenceParallelConfigError(
            f"{ENV}={size} but only {gpus} GPU(s) are visible; set 'GPUs per worker' on the endpoint to "
            f"at least {size}, or lower {ENV}")
    return size


def check_heads(size: int, heads: int) -> None:
    if heads % size:
        raise SequenceParallelConfigError(
            f"{ENV}={size} does not divide the transformer's {heads} attention heads "
            f"(use one of {[n for n in range(1, heads + 1) if heads % n == 0]})")


def configured_size(heads: int | None, device_type: str, env=None) -> int:
    env = os.environ if env is None else env
    return parse_size(env.get(ENV), heads=heads, gpus=visible_gpus(), device_type=device_type)


# ------------------------------------------------------------------------------------- layouts


class Local:
    """The single-rank layout: every conversion is the identity."""

    world = 1

    def shard(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def to_heads(self, *xs):
        return xs

    def to_seq(self, *xs):
        return xs


LOCAL = Local()


class Progress:
    """Where each rank is in the group's collectives: ``counters`` is a shared int64 array of 2 x world
    (a ``multiprocessing`` RawArray made by rank 0 and handed to every follower process); rank r counts
    the collectives it entered in ``[2r]`` and those it left in ``[2r + 1]``. Every rank runs the same
    collectives in the same order, so rank 0's watchdog can tell a rank that never reached the collective
    rank 0 waits in (its entered count is lower) from a collective that no rank gets out of."""

    def __init__(self, counters, rank: int):
        self.counters = counters
        self.rank = rank

    def run(self, fn: Callable, *args, **kwargs):
        counters, i = self.counters, 2 * self.rank
        counters[i] += 1
        try:
            return fn(*args, **kwargs)
        finally:
            counters[i + 1] += 1

    @staticmethod
    def snapshot(counters) -> tuple[int, ...]:
        return tuple(counters[:])


def _untracked(fn: Callable, *args, **kwargs):
    return fn(*args, **kwargs)


class Ulysses:
    """The layouts of one token stream of `frames` x `per_frame` tokens over the ranks of `group`."""

    def __init__(self, group, world: int, rank: int, frames: int, per_frame: int, run: Callable = _untracked):
        self.group = group
        self.run = run  # every collective goes through it (Progress.run)
        self.world = world
        self.rank = rank
        self.frames = frames
        self.per_frame = per_frame
        self.slice = -(-per_frame // world)  # tokens per frame per rank, after padding
        self.padded = self.slice * world

    # -- activations [B, tokens, C]

    def shard(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens [B, T*S, C] -> this rank's slice [B, T*S'/N, C] (padding rows are zeros)."""
        b, _, c = x.shape
        x = x.view(b, self.frames, self.per_frame, c)
        if self.padded != self.per_frame:
            x = F.pad(x, (0, 0, 0, self.padded - self.per_frame))
        lo = self.rank * self.slice
        return x[:, :, lo:lo + self.slice].reshape(b, self.frames * self.slice, c)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Every rank's slice [B, T*S'/N, C] -> all tokens [B, T*S, C], in order, padding dropped."""
        b, _, c = x.shape
        parts = [torch.empty_like(x) for _ in range(self.world)]
        self.run(dist.all_gather, parts, x.contiguous(), group=self.group)
        full = torch.stack(parts).view(self.world, b, self.frames, self.slice, c)
        full = full.permute(1, 2, 0, 3, 4).reshape(b, self.frames, self.padded, c)
        return full[:, :, : self.per_frame].reshape(b, self.frames * self.per_frame, c)

    # -- around attention: [B, tokens, H, D]

    def _exchange(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(x)
        self.run(dist.all_to_all_single, out, x, group=self.group)
        return out

    def to_heads(self, *xs: Optional[torch.Tensor]) -> tuple:
        """Sequence-sharded [B, T*S'/N, H, D] -> head-sharded [B, T*S, H/N, D] (original token order),
        for several tensors of one shape in one all-to-all. None passes through."""
        present = [x for x in xs if x is not None]
        if not present:
            return xs
        stacked = torch.stack(present)  # [K, B, L/N, H, D]
        k, b, _, heads, d = stacked.shape
        n, hn = self.world, heads // self.world
        send = stacked.view(k, b, self.frames, self.slice, n, hn, d).permute(4, 0, 1, 2, 3, 5, 6).contiguous()
        recv = self._exchange(send)  # [N source rank, K, B, T, S'/N, H/N, D]
        full = recv.permute(1, 2, 3, 0, 4, 5, 6).reshape(k, b, self.frames, self.padded, hn, d)
        full = full[:, :, :, : self.per_frame].reshape(k, b, self.frames * self.per_frame, hn, d)
        it = iter(full.unbind(0))
        return tuple(None if x is None else next(it) for x in xs)

    def to_seq(self, *xs: torch.Tensor) -> tuple:
        """Head-sharded [B, T*S, H/N, D] -> sequence-sharded [B, T*S'/N, H, D] (inverse of to_heads)."""
        stacked = torch.stack(xs)  # [K, B, T*S, H/N, D]
        k, b, _, hn, d = stacked.shape
        n = self.world
        stacked = stacked.view(k, b, self.frames, self.per_frame, hn, d)
        if self.padded != self.per_frame:
            stacked = F.pad(stacked, (0, 0, 0, 0, 0, self.padded - self.per_frame))
        send = stacked.view(k, b, self.frames, n, self.slice, hn, d).permute(3, 0, 1, 2, 4, 5, 6).contiguous()
        recv = self._exchange(send)  # [N head group, K, B, T, S'/N, H/N, D]
        out = recv.permute(1, 2, 3, 4, 0, 5, 6).reshape(k, b, self.frames * self.slice, n * hn, d)
        return tuple(out.unbind(0))


class SequenceParallel:
    """This process's place in the worker's ranks, and the layouts the transformer asks for."""

    def __init__(self, group=None, counters=None):
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.backend = str(dist.get_backend(group))
        self.progress = Progress(counters, self.rank) if counters is not None else None
        self.run = self.progress.run if self.progress is not None else _untracked

    def layout(self, frames: int, per_frame: int) -> Ulysses:
        return Ulysses(self.group, self.world, self.rank, frames, per_frame, self.run)

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when `flag` is true on any (cancellation is decided together)."""
        def reduce() -> bool:
            t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
            return bool(t.item())

        return self.run(reduce)

    def agreed(self, should_cancel: Optional[Callable[[], bool]], device: torch.device) -> Callable[[], bool]:
        """A cancellation poll that every rank calls at the same step and that answers the same on all."""
        return lambda: self.any(bool(should_cancel is not None and should_cancel()), device)

    def share(self, obj=None, src: int = 0):
        """Rank `src`'s small picklable `obj` (e.g. the shapes of what :meth:`broadcast` sends next), on
        every rank; the others pass nothing."""
        box = [obj if self.rank == src else None]
        self.run(dist.broadcast_object_list, box, src=src, group=self.group)
        return box[0]

    def broadcast(self, tensors: Sequence[torch.Tensor], src: int = 0) -> None:
        """Overwrite `tensors` (same shapes on every rank) with rank `src`'s values, in place."""
        for t in tensors:
            if self.backend == "nccl" and t.device.type != "cuda" or not t.is_contiguous():
                staged = t.to("cuda" if self.backend == "nccl" else t.device).contiguous()
                self.run(dist.broadcast, staged, src=src, group=self.group)
                t.copy_(staged)
            else:
                self.run(dist.broadcast, t, src=src, group=self.group)


def layout_for(sp: "SequenceParallel | None", frames: int, per_frame: int):
    return LOCAL if sp is None else sp.layout(frames, per_frame)


def backend_for(device_type: str) -> str:
    return "nccl" if device_type == "cuda" else "gloo"


def set_nccl_error_handling(env=None) -> dict:
    """:data:`NCCL_ERROR_HANDLING` into `env` (default ``os.environ``) where not set already; returns the
    values in force."""
    env = os.environ if env is None else env
    for name, value in NCCL_ERROR_HANDLING.items():
        env.setdefault(name, value)
    return {name: env[name] for name in NCCL_ERROR_HANDLING}


def init_process_group(rank: int, world: int, port: int, device_type: str, timeout_s: float,
                       counters=None) -> SequenceParallel:
    """Join the worker's ranks (127.0.0.1:`port`, rank 0 hosts the store); NCCL on CUDA, gloo on the CPU.
    `counters`: the group's shared :class:`Progress` counters (rank 0's watchdog reads them), or None."""
    if device_type == "cuda":
        set_nccl_error_handling()  # read by ProcessGroupNCCL when it is made: before init
        torch.cuda.set_device(rank)
    dist.init_process_group(
        backend_for(device_type), init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
        timeout=timedelta(seconds=timeout_s),
    )
    return SequenceParallel(counters=counters)
