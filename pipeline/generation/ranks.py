"""The ranks of one sequence-parallel worker: rank 0 (the caller's process) and N-1 follower processes.

:func:`load_ranked` is how the worker and the CLI load a pipeline: with one rank it is just the loader;
with N (``WORLDPLAY_SEQUENCE_PARALLEL``) it spawns N-1 followers (one per GPU, ``spawn`` start method),
joins them in one process group (NCCL on CUDA, gloo on the CPU), has every rank load its models (a
follower only the transformers when the loader offers ``for_follower()``: rank 0 alone encodes and
decodes, and broadcasts the DiT's inputs), and returns a :class:`RankedPipeline`: the pipeline of rank
0, which hands each request to every follower over a pipe before generating. All ranks then run the same
``generate``; the DiT passes are split between them (:mod:`pipeline.dit.parallel`), cancellation is
decided by all ranks at the same step, and only rank 0's callbacks reach the caller.

Failures: a request the pipeline rejects is rejected on rank 0 before any follower sees it; when rank 0
fails while preparing the DiT's inputs it tells the followers (they answer ``rank0_failed``) and the
group stays usable. A follower that dies, fails (anything but a cancellation or a rejected request: it
then exits, so that rank 0's collectives fail instead of waiting), hangs or does not answer makes the job
fail with :class:`~pipeline.errors.RankFailedError` (``RANK_FAILED``, the worker is replaced), and so does
every later job on this group, at once.

Hangs. Rank 0 generates on a thread while its calling thread is a watchdog (:meth:`RankedPipeline._watched`),
which keeps working while that thread is blocked inside a gloo/NCCL collective. Every rank counts the
collectives it entered and left in memory shared with rank 0 (:class:`pipeline.dit.parallel.Progress`).
Rank 0 waiting in a collective while no rank's counters move for ``WORLDPLAY_SP_STALL_SECONDS`` (default
30; the collective timeout while compiled blocks are not warmed up yet) is a stuck group: the ranks that
never reached that collective are named. A cancel asked meanwhile is polled by the watchdog itself (the
cancel decision is a collective a stuck rank would block): no progress for :data:`CANCEL_GRACE_S` after
it gives the group up too. Giving up kills the followers (a gloo collective on rank 0 then fails at once)
and aborts an NCCL group; NCCL's own error handling is set before the group forms
(``TORCH_NCCL_BLOCKING_WAIT=1``, ``TORCH_NCCL_ASYNC_ERROR_HANDLING=2``), so a collective that outlives
``WORLDPLAY_SP_TIMEOUT`` raises instead of tearing the process down.

Start-up. A follower says ``joining`` right before init_process_group and rank 0 joins only after every
follower did, so a follower that fails earlier (its reason and code kept) never leaves rank 0 in the
rendezvous; rank 0 then joins and loads on a watched thread, so one that dies while the group forms or
the models load fails the start at once. Should rank 0 be left in the rendezvous (a follower died inside
it), this process refuses every later start with ``RANK_FAILED`` at once (torch counted the failed group).

A world-session request reaches the followers without the history's latents (:func:`for_followers`):
rank 0 broadcasts them with the other DiT inputs.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing as mp
import os
import pickle
import socket
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable

import torch

from pipeline.dit.parallel import check_heads, configured_size, init_process_group, visible_gpus
from pipeline.errors import GenerationCancelled, PipelineError, RankFailedError, RankZeroFailedError
from pipeline.settings import env_number

logger = logging.getLogger("worldplay.ranks")

START_TIMEOUT_ENV = "WORLDPLAY_SP_START_TIMEOUT"  # seconds for every rank to load (default 1800)
TIMEOUT_ENV = "WORLDPLAY_SP_TIMEOUT"  # seconds a collective or a follower's answer may take (default 600)
STALL_ENV = "WORLDPLAY_SP_STALL_SECONDS"  # no progress while rank 0 waits in a collective: a stuck rank (30)
CANCEL_GRACE_S = 5.0  # after a cancel, no progress this long while rank 0 waits in a collective: given up
WATCH_POLL_S = 0.25  # how often rank 0's watchdog looks at the followers and the progress counters


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _device_for(rank: int, device_type: str) -> str:
    return f"cuda:{rank}" if device_type == "cuda" else "cpu"


def _error_of(exc: BaseException) -> tuple[str, str]:
    code = getattr(exc, "code", None) if isinstance(exc, PipelineError) else None
    return code or type(exc).__name__, getattr(exc, "message", None) or str(exc)


def load_ranked(load: Callable, device: str | None = None, world: int | None = None):
    """`load(device)` -> pipeline, on every rank. `load` must pickle (:class:`PathsLoader`, a module-level
    function or a ``functools.partial`` of one). `world`: the number of ranks (default:
    ``WORLDPLAY_SEQUENCE_PARALLEL``), checked against the visible GPUs and, before any rank starts, the
    heads of a loader that can tell them (every rank checks them again once its transformer is loaded)."""
    device_type = torch.device(device).type if device else ("cuda" if torch.cuda.is_available() else "cpu")
    if world is None:
        world = configured_size(None, device_type)
    else:
        from pipeline.dit.parallel import parse_size

        world = parse_size(world, heads=None, gpus=visible_gpus(), device_type=device_type)
    if world > 1 and callable(getattr(load, "heads", None)):
        for heads in load.heads():
            check_heads(world, heads)
    if world == 1:
        return load(device)
    return RankedPipeline.start(load, world, device_type)


# --------------------------------------------------------------------------------- followers


def follower_main(rank: int, world: int, port: int, device_type: str, timeout_s: float, load: Callable,
                  conn, counters=None) -> None:
    """A follower's whole life: join, load, then generate every request rank 0 sends until told to stop.

    It says ``("joining", rank)`` right before it joins the group, so that rank 0 joins only once every
    follower got that far (a follower that fails earlier never leaves rank 0 waiting in the rendezvous),
    and ``("failed", code, message)`` before it exits on any failure."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s rank{rank} %(name)s | %(message)s")
    try:
        follower_load = getattr(load, "for_follower", None)  # the transformers only (no encoders, no VAE)
        rank_load = follower_load() if follower_load is not None else load
        conn.send(("joining", rank))
        sp = init_process_group(rank, world, port, device_type, timeout_s, counters)
        pipe = rank_load(_device_for(rank, device_type))
        pipe.use_sequence_parallel(sp)
    except BaseException as exc:  # noqa: BLE001 - reported to rank 0, which fails the start
        logger.exception("rank %d failed to start", rank)
        try:
            conn.send(("failed", *_error_of(exc)))
        finally:
            os._exit(1)
    conn.send(("ready", rank, {"encoders": pipe.encoders is not None, "vae": pipe.vae is not None}))
    while True:
        try:
            message = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):  # rank 0 is gone
            return
        if message is None:
            break
        kind, payload = message
        try:
            if kind == "warm_up":
                pipe.warm_up() if payload else pipe.warm_up_if_configured()
            else:
                pipe.generate(payload)
            conn.send(("done", None))
        except GenerationCancelled as exc:
            conn.send(("cancelled", exc.message))
        except RankZeroFailedError as exc:  # rank 0 failed before the rollout and told us: still in step
            conn.send(("rank0_failed", exc.message))
        except BaseException as exc:  # noqa: BLE001 - this rank may be out of step: leave
            logger.exception("rank %d failed", rank)
            try:
                conn.send(("failed", *_error_of(exc)))
            finally:
                os._exit(1)
    torch.distributed.destroy_process_group()


def for_followers(request):
    """What a follower needs of `request`: a world session's history without its latents, image latent
    and image embedding (rank 0 broadcasts the DiT's inputs, the history's latents among them); shape-only
    ``meta`` tensors keep the checks and the lengths the follower reads, and fail loudly if it ever reads
    their values. Everything else (cameras, actions, seed, steps) is what the rollout needs."""
    history = getattr(request, "history", None)
    if history is None:
        return request

    def shape_only(t: torch.Tensor) -> torch.Tensor:
        return torch.empty(t.shape, dtype=t.dtype, device="meta")

    slim = replace(history, latents=shape_only(history.latents), image_latent=shape_only(history.image_latent),
                   vision=shape_only(history.vision))
    return replace(request, history=slim)


# ------------------------------------------------------------------------------------- rank 0

# Why this process cannot start ranks again (None: it can). Set when rank 0 entered init_process_group and
# did not come out of it with a group: torch keeps counting the failed group, so this process's next group
# would never meet fresh followers in the rendezvous, and the thread may still wait there. The worker is
# replaced instead (RANK_FAILED).
_start_blocked: str | None = None


@dataclass(frozen=True)
class _Fault:
    """A follower that has exited: ``text`` for the error, its own ``code`` and ``message`` when it said."""

    rank: int
    text: str
    code: str | None = None
    message: str | None = None


class RankedPipeline:
    """Rank 0's pipeline, with the followers it drives. Exposes what the worker uses of a pipeline."""

    def __init__(self, pipe, processes, conns, timeout_s: float, stall_s: float = 30.0, counters=None):
        self.pipe = pipe
        self.processes = processes
        self.conns = conns
        self.timeout_s = timeout_s
        self.stall_s = stall_s
        self.counters = counters
        self.world_size = len(processes) + 1
        self.broken: str | None = None
        self.followers: list[dict] = []  # what each follower loaded besides its transformers
        self.warmed_up = False
        atexit.register(self.close)

    @classmethod
    def start(cls, load: Callable, world: int, device_type: str) -> "RankedPipeline":
        global _start_blocked
        if _start_blocked is not None:
            raise RankFailedError(f"this process cannot start the sequence-parallel ranks again ({_start_blocked}); "
                                  f"the worker must be replaced")
        timeout_s = env_number(TIMEOUT_ENV, 600.0, float)
        start_timeout = env_number(START_TIMEOUT_ENV, 1800.0, float)
        stall_s = max(0.5, env_number(STALL_ENV, 30.0, float))
        port = _free_port()
        context = mp.get_context("spawn")
        counters = context.RawArray("q", 2 * world)  # Progress counters, shared with every follower
        processes, conns = [], []
        started = time.perf_counter()
        for rank in range(1, world):
            parent, child = context.Pipe()
            process = context.Process(
                target=follower_main, args=(rank, world, port, device_type, timeout_s, load, child, counters),
                name=f"worldplay-rank{rank}", daemon=True,
            )
            process.start()
            child.close()
            processes.append(process)
            conns.append(parent)
        group = cls(None, processes, conns, timeout_s, stall_s, counters)
        joined: list[str] = []  # rank 0's progress through init_process_group: "entered", then "done"
        try:
            # every follower is about to join: a follower that fails before never leaves rank 0 in the rendezvous
            group._expect({"joining"}, start_timeout, "start")

            def form():
                joined.append("entered")
                sp = init_process_group(0, world, port, device_type, timeout_s, counters)
                joined.append("done")
                pipe = load(_device_for(0, device_type))
                pipe.use_sequence_parallel(sp)
                return pipe, sp

            # joining and loading on a thread, the followers watched meanwhile: one that fails (or exits)
            # while the group forms or while the models load fails the start at once, with its own reason
            pipe, sp = group._watched(form, start=True, deadline_s=start_timeout)
            group.pipe = pipe
            ready = group._expect({"ready"}, start_timeout, "start")
            group.followers = [{"rank": r[1], **(r[2] if len(r) > 2 else {})} for r in ready]
        except BaseException as exc:
            group.close()
            if joined == ["entered"]:  # rank 0 is (or was) stuck in the rendezvous: no second start here
                _start_blocked = f"the ranks failed while forming their group: {_error_of(exc)[1]}"[:500]
                if not isinstance(exc, RankFailedError):
                    code, message = _error_of(exc)
                    raise RankFailedError(f"{code}: {message} (while the ranks formed their group; the worker "
                                          f"must be replaced)") from exc
            raise
        pipe.load_info.setdefault("load_seconds", {})["ranks_ready"] = round(time.perf_counter() - started, 3)
        logger.info("%d sequence-parallel ranks ready (%s)", world, sp.backend)
        return group

    # -- what the worker uses

    @property
    def modes(self):
        return self.pipe.modes

    @property
    def models(self):
        return self.pipe.models

    def health(self) -> dict:
        info = self.pipe.health()
        alive = [True] + [p.is_alive() for p in self.processes]
        info["sequence_parallel"] = {**info.get("sequence_parallel", {}), "world_size": self.world_size,
                                     "ranks_alive": alive, "broken": self.broken, "followers": self.followers,
                                     "stall_seconds": self.stall_s}
        return info

    def validate(self, request) -> None:
        self.pipe.validate(request)

    def __getattr__(self, name: str):
        # read-only facts of rank 0's pipeline (device, transformers, compiled, load_info); whatever
        # generates goes through the methods below, which bring the followers along
        if name in ("pipe", "processes", "conns", "world_size") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.pipe, name)

    def warm_up_if_configured(self):
        return self._warm_up(False)

    def warm_up(self):
        return self._warm_up(True)

    def _window(self) -> float:
        """How long the ranks may make no progress while rank 0 waits in a collective: the stall window,
        but the collective timeout while compiled blocks have not been warmed up (each rank compiles at
        its own pace)."""
        return self.timeout_s if getattr(self.pipe, "compiled", False) and not self.warmed_up else self.stall_s

    def _warm_up(self, forced: bool):
        self._check()
        self._send(("warm_up", forced))
        try:
            result = self._watched(self.pipe.warm_up if forced else self.pipe.warm_up_if_configured)
        except BaseException as exc:
            self.broken = self.broken or f"rank 0 warm-up failed: {type(exc).__name__}: {exc}"
            raise
        self._expect({"done"}, self.timeout_s, "warm-up")
        self.warmed_up = self.warmed_up or bool(result)
        return result

    def generate(self, request, callback=None, should_cancel=None, *, on_frames=None, trace=None,
                 on_preview_frames=None):
        self._check()
        self.pipe.validate(request)  # a rejected request never reaches the followers
        self._send(("generate", for_followers(request)))
        abandoned = threading.Event()  # set when the job was answered while rank 0's thread still runs

        def guard(fn):
            if fn is None:
                return None

            def guarded(*args, **kwargs):
                if abandoned.is_set():  # the job has its answer: nothing more reaches the caller
                    raise RankFailedError("the ranks were given up on")
                return fn(*args, **kwargs)

            return guarded

        try:
            result = self._watched(
                lambda: self.pipe.generate(request, guard(callback), guard(should_cancel),
                                           on_frames=guard(on_frames), trace=trace,
                                           **({"on_preview_frames": guard(on_preview_frames)}
                                              if on_preview_frames is not None else {})),
                should_cancel=should_cancel, abandoned=abandoned)
        except RankFailedError:
            raise
        except GenerationCancelled:
            self._expect({"cancelled"}, self.stall_s, "cancellation")
            raise
        except BaseException as exc:
            if getattr(exc, "ranks_in_step", False):
                # rank 0 failed before the rollout and told the followers (engine): the group stays usable
                self._expect({"rank0_failed"}, self.stall_s, "rank 0's failure")
                raise
            # the followers are mid-generation or waiting in a collective: the group is out of step
            dead = self._dead()
            self.broken = dead or f"rank 0 failed: {type(exc).__name__}: {exc}"
            if dead:
                raise RankFailedError(dead) from exc
            raise
        self._expect({"done"}, self.stall_s, "generation")
        return result

    def _watched(self, work: Callable, *, should_cancel: Callable | None = None, abandoned=None,
                 start: bool = False, deadline_s: float | None = None):
        """Run `work` on a thread while this one watches the followers (the watchdog: it works while the
        thread is blocked inside a collective). It fails the job at once with RANK_FAILED when

        - a follower exits (with the reason it sent; at start-up its own error, code kept);
        - rank 0 has waited in a collective with no rank making progress for the stall window
          (``WORLDPLAY_SP_STALL_SECONDS``): the ranks that never reached that collective are named;
        - a cancel was asked (`should_cancel`, polled here too) and the ranks then made no progress for
          :data:`CANCEL_GRACE_S` while rank 0 waits in a collective: a cancel never waits on a stuck rank.

        Giving up kills the followers (a stuck rank cannot be reused; a gloo collective on rank 0 then fails
        at once) and aborts an NCCL group, so rank 0's thread leaves its collective; the group is broken
        and every later job fails at once with RANK_FAILED (the worker is replaced)."""
        box: dict = {}
        done = threading.Event()

        def run() -> None:
            try:
                box["result"] = work()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller below
                box["error"] = exc
            finally:
                done.set()

        threading.Thread(target=run, name="worldplay-rank0", daemon=True).start()
        window = self._window()
        seen, changed = None, time.monotonic()
        began, cancel_asked = changed, None
        while not done.wait(WATCH_POLL_S):
            now = time.monotonic()
            fault = self._fault()
            if fault is not None:
                if start and fault.code not in (None, "EXITED"):
                    self._give_up(fault.text, abandoned)
                    raise _start_error(fault.code, f"rank {fault.rank}: {fault.message}")
                self._give_up(fault.text, abandoned)
                raise RankFailedError(fault.text)
            if deadline_s is not None and now - began > deadline_s:
                why = f"the ranks did not form and load within {deadline_s:.0f} s ({START_TIMEOUT_ENV})"
                self._give_up(why, abandoned)
                raise RankFailedError(why)
            if self.counters is None or start:
                continue
            snapshot = tuple(self.counters[:])
            if snapshot != seen:
                seen, changed = snapshot, now
            if should_cancel is not None and cancel_asked is None:
                try:
                    if should_cancel():
                        cancel_asked = now
                except Exception:  # noqa: BLE001 - the caller's poll failing is no cancel
                    pass
            waiting = snapshot[0] > snapshot[1]  # rank 0 is inside a collective
            idle = now - changed
            if waiting and idle >= window:
                why = self._stall_text(snapshot, idle)
                self._give_up(why, abandoned)
                raise RankFailedError(why)
            if waiting and cancel_asked is not None and now - cancel_asked >= CANCEL_GRACE_S \
                    and idle >= CANCEL_GRACE_S:
                why = f"cancelled while {self._stall_text(snapshot, idle)}"
                self._give_up(why, abandoned)
                raise RankFailedError(why)
        if "error" in box:
            raise box["error"]
        return box["result"]

    def _stall_text(self, snapshot: tuple, idle: float) -> str:
        entered = snapshot[0]
        behind = [r for r in range(1, self.world_size) if snapshot[2 * r] < entered]
        if behind:
            names = ", ".join(f"rank {r}" for r in behind)
            return (f"{names} stuck: rank 0 has waited {idle:.0f} s in collective #{entered}, which "
                    f"{'it has' if len(behind) == 1 else 'they have'} not reached ({STALL_ENV}={self.stall_s:g})")
        return (f"collective #{entered} made no progress on any rank for {idle:.0f} s "
                f"({STALL_ENV}={self.stall_s:g})")

    def _give_up(self, why: str, abandoned=None) -> None:
        """The group is unusable: stop the followers and free rank 0's thread from its collective."""
        self.broken = self.broken or why
        if abandoned is not None:
            abandoned.set()
        logger.error("sequence-parallel ranks given up: %s", why)
        for process in self.processes:
            if process.is_alive():
                process.kill()
        for process in self.processes:
            process.join(timeout=5)
        if torch.distributed.is_initialized() and torch.distributed.get_backend() == "nccl":
            try:  # NCCL does not notice a dead peer: abort the communicators so rank 0's wait raises
                torch.distributed.distributed_c10d._abort_process_group()
            except Exception:  # noqa: BLE001 - best effort; the worker is replaced anyway
                logger.exception("aborting the NCCL process group failed")

    def close(self) -> None:
        """Stop the followers (at once when the group is out of step: they may wait in a collective)."""
        out_of_step = self.broken is not None
        for conn in self.conns:
            try:
                conn.send_bytes(pickle.dumps(None))
            except (OSError, ValueError):
                pass
        for process in self.processes:
            process.join(timeout=1 if out_of_step else 10)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)
        self.processes, self.conns = [], []
        self.broken = self.broken or "the ranks were shut down"
        nccl_waiting = out_of_step and torch.distributed.is_initialized() and \
            torch.distributed.get_backend() == "nccl"  # a collective may still wait on rank 0's thread
        if torch.distributed.is_initialized() and not nccl_waiting:
            try:
                torch.distributed.destroy_process_group()
            except Exception:  # noqa: BLE001 - shutting down anyway
                pass

    # -- plumbing

    def _check(self) -> None:
        if self.broken is None:
            self.broken = self._dead()
        if self.broken:
            raise RankFailedError(f"sequence-parallel ranks unusable: {self.broken}")

    def _dead(self) -> str | None:
        fault = self._fault()
        return fault.text if fault is not None else None

    def _fault(self) -> _Fault | None:
        """The first follower that has exited, with its last words (a follower that fails always exits;
        a living one's replies are left for :meth:`_expect`)."""
        for rank, (process, conn) in enumerate(zip(self.processes, self.conns), start=1):
            if process.is_alive():
                continue
            process.join(timeout=5)
            code = message = None
            try:
                while conn.poll():
                    kind, *rest = conn.recv()
                    if kind == "failed":
                        code, message = rest[0], rest[1]
            except (EOFError, OSError):
                pass
            note = f": {code}: {message}" if code is not None else ""
            return _Fault(rank, f"rank {rank} failed (exit code {process.exitcode}){note}", code, message)
        return None

    def _send(self, message) -> None:
        # plain pickle: tensors travel as bytes, not as shared-memory handles
        data = pickle.dumps(message)
        for rank, conn in enumerate(self.conns, start=1):
            try:
                conn.send_bytes(data)
            except (OSError, ValueError) as exc:
                self.broken = f"rank {rank} unreachable ({type(exc).__name__})"
                raise RankFailedError(self.broken) from None

    def _expect(self, kinds: set[str], timeout_s: float, what: str) -> list[tuple]:
        """Each follower's reply, in rank order; one of another kind breaks the group. While waiting on one
        follower every other one is watched too: any that exits fails the wait at once."""
        deadline = time.monotonic() + timeout_s
        replies = []
        for rank, (process, conn) in enumerate(zip(self.processes, self.conns), start=1):
            reply = None
            while reply is None:
                try:
                    if conn.poll(min(WATCH_POLL_S, max(0.0, deadline - time.monotonic()))):
                        reply = conn.recv()
                        break
                except (EOFError, OSError):
                    reply = ("failed", "EXITED", f"exit code {process.exitcode}")
                    break
                if not process.is_alive() and not conn.poll():
                    process.join(timeout=5)
                    reply = ("failed", "EXITED", f"exit code {process.exitcode}")
                elif (other := self._fault()) is not None and other.rank != rank:
                    self.broken = f"{other.text} (during {what})"
                    self._give_up(self.broken)
                    if what == "start" and other.code is not None:
                        raise _start_error(other.code, f"rank {other.rank}: {other.message}")
                    raise RankFailedError(self.broken)
                elif time.monotonic() >= deadline:
                    reply = ("failed", "TIMEOUT", f"no answer within {timeout_s:.0f} s")
            kind, *rest = reply
            if kind not in kinds:
                detail = f"{rest[0]}: {rest[1]}" if kind == "failed" else kind
                self.broken = f"rank {rank} {what}: {detail}"
                if what == "start" and kind == "failed" and rest[0] not in ("EXITED", "TIMEOUT"):
                    self._give_up(self.broken)
                    raise _start_error(rest[0], rest[1])
                self._give_up(self.broken)
                raise RankFailedError(self.broken)
            replies.append(reply)
        return replies


def _start_error(code: str, message: str) -> PipelineError:
    """A follower's start-up failure, re-raised on rank 0 with its code when it has one."""
    from pipeline import errors

    for cls in vars(errors).values():
        if isinstance(cls, type) and issubclass(cls, PipelineError) and cls.code == code:
            return cls(message)
    return RankFailedError(f"{code}: {message}")


@dataclass(frozen=True)
class PathsLoader:
    """The loader the worker and the CLI hand to :func:`load_ranked`: the pipeline of resolved `paths`.

    Its :meth:`heads` reads the checkpoints' headers only, so a rank count that does not divide the
    heads fails before any rank is started."""

    paths: object  # pipeline.model_files.resolve.ModelPaths
    models: tuple  # model names (pipeline.checkpoints)
    dit_only: bool = False  # a follower rank's loader: no encoders, no VAE

    def __call__(self, device):
        from pipeline.generation.engine import WorldPlayPipeline

        return WorldPlayPipeline.from_paths(self.paths, device=device, models=tuple(self.models), dit_only=self.dit_only)

    def for_follower(self) -> "PathsLoader":
        return replace(self, dit_only=True)

    def heads(self) -> list[int]:
        from pipeline.dit.config import WorldPlayConfig

        return [WorldPlayConfig.from_checkpoint(self.paths.transformer[m]).num_heads for m in self.models]
