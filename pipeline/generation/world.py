"""World: one generated world that steps chunk by chunk, everything it needs kept resident.

A world is opened from a picture + prompt + seed (:meth:`WorldPlayPipeline.open_world`) or from a saved
world state (:meth:`WorldPlayPipeline.resume_world`). Each :meth:`World.step` renders the next chunk
(4 latents = 16 frames in AR mode; the first chunk of a new world holds the start latent and 3 moves,
13 frames) along the cameras of the given actions, and hands back that chunk's frames. Between steps
the world keeps on its device the clean latents so far, the condition latents, the prompt's
conditioning, the AR text K/V and the causal VAE decoder's carried state: no state file round trip and
no decoder resume inside a world.

Three drivers, one object (so they cannot drift):

* the queue job renders a whole camera path: :meth:`WorldPlayPipeline.generate` opens a world and steps
  it over the path's chunks;
* a continuation (``continue_from``) resumes a world from its state and steps the new chunks;
* the live socket (``worker.live``) steps a world with each chunk's keys as the player presses them.

The noise and the memory points of chunk ``k`` come from ``(seed, k)`` (:mod:`pipeline.generation.seeding`),
the cameras of an action list are integrated move by move whatever the chunking
(:func:`pipeline.generation.camera.continue_pose`), and nothing depends on how many chunks will follow.
So a world stepped with actions A1..An gives bit for bit the latents of one job with the equivalent action
list (:meth:`World.actions`) and the same seed, on the same device, attention kernel, GPU count and
compile setting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from pipeline.checkpoints import rollout_of
from pipeline.errors import PoseSpecError, SessionTooLongError
from pipeline.generation import camera as cameras
from pipeline.generation.camera import CameraTrajectory
from pipeline.generation.memory import MEMORY_SIZE, select_context_latents
from pipeline.generation.rollout import (
    ROLLOUTS,
    Camera,
    Conditioning,
    Progress,
    RolloutInputs,
    fresh_scheduler,
)
from pipeline.generation.seeding import MemoryPoints, chunk_noise
from pipeline.generation.world_state import SessionLimits, WorldState
from pipeline.limits import MAX_SESSION_LATENTS

__all__ = ["ChunkActions", "World", "WorldChunk", "slice_trajectory"]

_OPPOSITE = ({"w", "s"}, {"a", "d"}, {"up", "down"}, {"left", "right"})


@dataclass(frozen=True)
class ChunkActions:
    """What the player holds during one chunk: keys of ``w s a d up down left right`` (none: stand still),
    the move speed (scene units per latent; default 0.08) and the turn (degrees per latent; default 3).
    A controller sends its speed and turn settings with every chunk: the speed counts only while a move
    key is held and the turn only while a turn key is, as in an action list (where giving one that does
    not apply is refused, so :meth:`item` leaves it out)."""

    keys: tuple[str, ...] = ()
    speed: float | None = None
    degrees: float | None = None

    def __post_init__(self) -> None:
        keys = tuple(dict.fromkeys(str(k).strip().lower() for k in self.keys))
        object.__setattr__(self, "keys", keys)
        known = set(cameras.MOVE_KEYS) | set(cameras.TURN_KEYS)
        unknown = [k for k in keys if k not in known]
        if unknown:
            raise PoseSpecError(f"unknown key(s) {unknown}; keys are w, s, a, d, up, down, left, right")
        for pair in _OPPOSITE:
            if pair <= set(keys):
                a, b = sorted(pair)
                raise PoseSpecError(f"opposite keys {a!r} and {b!r} cannot be held together")
        self.item(1)  # speed / degrees checked by the action-list parser, in its words

    @property
    def moves_keys(self) -> bool:
        return any(k in cameras.MOVE_KEYS for k in self.keys)

    @property
    def turns_keys(self) -> bool:
        return any(k in cameras.TURN_KEYS for k in self.keys)

    def item(self, moves: int) -> dict[str, Any]:
        """The action-list item of `moves` moves with these keys (what a queue job would send)."""
        item: dict[str, Any] = {"key": "+".join(self.keys) if self.keys else cameras.IDLE_KEY, "moves": int(moves)}
        if self.moves_keys:
            item["speed"] = cameras.DEFAULT_SPEED if self.speed is None else self.speed
        if self.turns_keys:
            item["degrees"] = cameras.DEFAULT_DEGREES if self.degrees is None else self.degrees
        cameras.parse_pose([item])  # the same checks (and words) as a job's action list
        for name in ("speed", "degrees"):
            if name in item:
                item[name] = float(item[name])
        return item


@dataclass
class WorldChunk:
    """One step's result: chunk `index` covers latents [start, end)."""

    index: int
    start: int
    end: int
    frames: np.ndarray | None  # uint8 [n, H, W, 3] (None: decoded later, or a follower rank)
    c2w: np.ndarray  # float64 [end - start, 4, 4]
    action: dict[str, Any] | None  # the action-list item used (None: cameras given directly)
    timings: dict[str, float] = field(default_factory=dict)


def slice_trajectory(camera: CameraTrajectory, start: int, end: int) -> CameraTrajectory:
    """Latents [start, end) of a trajectory, as a trajectory (the values themselves, not recomputed)."""
    c2w64 = camera.c2w64 if camera.c2w64 is not None else camera.c2w.double().numpy()
    n = end - start
    return CameraTrajectory(
        c2w=camera.c2w[start:end], w2c=camera.w2c[start:end], intrinsics=camera.intrinsics[start:end],
        actions=camera.actions[start:end], num_latents=n, num_frames=cameras.latents_to_frames(n),
        c2w64=np.ascontiguousarray(c2w64[start:end]),
    )


class World:
    """A world being generated (`pipe`: the :class:`~pipeline.generation.engine.WorldPlayPipeline` holding the
    models; `frames`: its ``ChunkFrames`` decoder, None on a follower rank; `timer`: its stage timer). Build it with :meth:`WorldPlayPipeline.open_world` /
    :meth:`WorldPlayPipeline.resume_world` (or :meth:`WorldPlayPipeline.generate`, which steps one)."""

    def __init__(self, pipe, *, model: str, seed: int, prompt: str, negative_prompt: str,
                 steps: int, guidance: float, width: int, height: int, image_latent: torch.Tensor,
                 vision: torch.Tensor | None, positive: Conditioning, negative: Conditioning | None,
                 history: WorldState | None, history_latents: torch.Tensor | None, frames,
                 timer, limits: SessionLimits | None = None):
        self.pipe = pipe
        self.model = model  # the checkpoint (pipeline.checkpoints)
        self.mode = mode = rollout_of(model)  # its rollout: "ar" or "bidirectional"
        self.seed = int(seed)
        self.prompt = prompt
        self.negative_prompt = negative_prompt
        self.steps = int(steps)
        self.guidance = float(guidance)
        self.width, self.height = int(width), int(height)
        self.fps = 24
        self.device = pipe.device
        self.transformer = pipe.transformers[model]
        self.image_latent = image_latent  # [1, C, 1, h, w] on the device
        self.vision = vision  # [1, Lv, D] on the device (None on a follower rank)
        self.timer = timer
        self.frames = frames  # None on a follower rank (no VAE)
        self.limits = limits or SessionLimits.from_env()
        self.closed = False
        self._actions: list[dict[str, Any]] = []
        self.history_latents = history.num_latents if history is not None else 0

        _, channels, _, h, w = image_latent.shape
        self.latent_shape = (int(channels), int(h), int(w))
        if history is not None:
            self.c2w64 = history.c2w.numpy().astype(np.float64, copy=True)
            # the inverse per matrix, as a one-shot trajectory computes it
            self.w2c = torch.from_numpy(np.linalg.inv(self.c2w64).astype(np.float32))
            self.intrinsics = history.intrinsics.float().clone()
            self.actions_labels = history.actions.long().clone()
            latents = history_latents.to(self.device, torch.float32)
        else:
            self.c2w64 = np.zeros((0, 4, 4))
            self.w2c = torch.zeros(0, 4, 4)
            self.intrinsics = torch.zeros(0, 3, 3)
            self.actions_labels = torch.zeros(0, dtype=torch.long)
            latents = torch.zeros((1, channels, 0, h, w), dtype=torch.float32, device=self.device)
        past = latents.shape[2]
        cond = torch.zeros(1, channels + 1, past, h, w, device=self.device, dtype=torch.float32)
        if past:
            cond[:, :channels, 0] = image_latent[:, :, 0].float()
            cond[:, channels, 0] = 1.0
        self._points = MemoryPoints(self.seed, 1 << 30)  # the next chunk's points drawn ahead
        self._cached_points: dict[int, torch.Tensor] = {}
        self.job = RolloutInputs(
            latents=latents, cond_latents=cond, camera=self._camera(), positive=positive, negative=negative,
            guidance_scale=self.guidance, num_steps=self.steps, select_context=self._select,
            on_chunk=self._chunk_done if frames is not None else None, first_latent=past,
        )
        rollout_class = ROLLOUTS[mode]
        options = {"max_context_latents": MEMORY_SIZE} if mode == "ar" else {}
        self.rollout = rollout_class(self.transformer, fresh_scheduler(pipe.scheduler), self.job, **options)
        self._decoded: np.ndarray | None = None

    # ------------------------------------------------------------------------------ what it is

    @property
    def num_latents(self) -> int:
        return int(self.job.latents.shape[2])

    @property
    def chunk_latents(self) -> int:
        return self.rollout.size

    @property
    def chunks(self) -> int:
        """Chunks generated so far (a resumed world counts its history's)."""
        return self.num_latents // self.chunk_latents

    @property
    def c2w(self) -> np.ndarray:
        """float64 [L, 4, 4]: every camera so far."""
        return self.c2w64

    @property
    def decoder(self) -> str | None:
        """Which decoder turns this world's chunks into frames: ``"fast"`` (TAEHV) or ``"full"`` (the VAE);
        None on a follower rank, which decodes nothing."""
        return self.frames.decoder_name if self.frames is not None else None

    def actions(self) -> list[dict[str, Any]]:
        """The action list a queue job sends to render what this world rendered (a resumed world: the
        continuation's part), given every step was made with :class:`ChunkActions`."""
        return [dict(a) for a in self._actions]

    def next_moves(self) -> int:
        """Moves the next step covers: 3 for a new world's first chunk (its first latent is the start
        camera), otherwise one per latent of the chunk."""
        return self.chunk_latents - 1 if self.num_latents == 0 else self.chunk_latents

    # ------------------------------------------------------------------------------ stepping

    def cameras_for(self, actions: ChunkActions) -> CameraTrajectory:
        """The next chunk's cameras when `actions` are held during it."""
        item = actions.item(self.next_moves())
        if self.num_latents == 0:
            return cameras.parse_pose([item])
        return cameras.continue_pose([item], self.c2w64[-1])

    def step(self, actions: ChunkActions | CameraTrajectory, *, should_cancel: Callable[[], bool] | None = None,
             callback: Callable[[str, int, int], None] | None = None,
             progress: Progress | None = None) -> WorldChunk:
        """Render the next chunk along `actions` (held keys, or the chunk's cameras). On any failure
        (a cancel included) the world is left as it was before the step."""
        if self.closed:
            raise RuntimeError("this world is closed")
        item = None
        if isinstance(actions, ChunkActions):
            item = actions.item(self.next_moves())
            camera = self.cameras_for(actions)
        else:
            camera = actions
        size = self.chunk_latents
        if camera.num_latents != size:
            raise ValueError(f"a {self.mode} chunk has {size} latents; got cameras for {camera.num_latents}")
        start, end = self.num_latents, self.num_latents + size
        allowed = min(self.limits.max_latents, MAX_SESSION_LATENTS)
        if end > allowed:
            raise SessionTooLongError(
                f"the world would reach {end} latents ({4 * (end - 1) + 1} frames); this worker allows at most "
                f"{allowed} latents per session (WORLDPLAY_MAX_SESSION_LATENTS)")
        self.pipe.use_cpu_threads()  # this thread's own count decides the bits (see the engine)
        before = self.timer.timings.copy()
        saved = (self.job.latents, self.job.cond_latents, self.job.camera, self.c2w64, self.w2c, self.intrinsics,
                 self.actions_labels)
        self._decoded = None
        try:
            self._extend(camera, start, end)
            progress = progress or Progress(self.steps, callback, should_cancel)
            with torch.inference_mode(), self.timer.stage("denoise"):
                self.rollout.run_chunk(start // size, progress)
        except BaseException:
            (self.job.latents, self.job.cond_latents, self.job.camera, self.c2w64, self.w2c, self.intrinsics,
             self.actions_labels) = saved
            raise
        if item is not None:
            self._actions.append(item)
        timings = {k: round(v - before.get(k, 0.0), 4) for k, v in self.timer.timings.items()
                   if v != before.get(k, 0.0)}
        return WorldChunk(index=start // size, start=start, end=end, frames=self._decoded,
                          c2w=self.c2w64[start:end].copy(), action=item, timings=timings)

    def set_prompt(self, prompt: str) -> None:
        """Condition the following chunks on `prompt` (the negative prompt stays)."""
        if prompt == self.prompt:
            return
        self.pipe.use_cpu_threads()
        positive, negative = self.pipe._world_conditioning(prompt, self.negative_prompt, self.vision,
                                                           self.guidance, self.timer)
        with torch.inference_mode():
            self.rollout.set_conditioning(positive, negative)
        self.prompt = prompt

    def state(self) -> WorldState:
        """The whole world so far (what a job saves as ``world.safetensors``)."""
        return WorldState(
            latents=self.job.latents[0].permute(1, 0, 2, 3).float().cpu().contiguous(),
            c2w=torch.from_numpy(self.c2w64.copy()),
            intrinsics=self.intrinsics.cpu().clone(),
            actions=self.actions_labels.cpu().clone(),
            image_latent=self.image_latent[0, :, 0].float().cpu(),
            vision=self.vision[0].float().cpu() if self.vision is not None else torch.zeros(0, 0),
            prompt=self.prompt, negative_prompt=self.negative_prompt, seed=self.seed, mode=self.mode,
            num_inference_steps=self.steps, guidance_scale=self.guidance, width=self.width, height=self.height,
            checkpoint=self.pipe.checkpoint_ids[self.model], model=self.model,
        )

    def release_cache(self) -> None:
        """Free the DiT's K/V cache (after the last chunk of a job, before decoding what waits)."""
        release = getattr(self.rollout, "release", None)
        if release is not None:
            release()

    def close(self) -> None:
        """Free what the world holds on the device. The world cannot step afterwards."""
        self.closed = True
        self.release_cache()
        if self.frames is not None:
            self.frames.decoder = None
        self.job.latents = self.job.latents[:, :, :0]
        self.job.cond_latents = self.job.cond_latents[:, :, :0]
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------------------ internals

    def _extend(self, camera: CameraTrajectory, start: int, end: int) -> None:
        """Append the chunk's cameras, its noise (from (seed, chunk)) and zero condition latents."""
        channels, h, w = self.latent_shape
        c2w64 = camera.c2w64 if camera.c2w64 is not None else camera.c2w.double().numpy()
        self.c2w64 = np.concatenate([self.c2w64, c2w64])
        self.w2c = torch.cat([self.w2c, camera.w2c])
        self.intrinsics = torch.cat([self.intrinsics, camera.intrinsics])
        self.actions_labels = torch.cat([self.actions_labels, camera.actions.long()])
        noise = chunk_noise(self.seed, start // self.chunk_latents, (1, channels, end - start, h, w))
        job = self.job
        job.latents = torch.cat([job.latents, noise.to(self.device)], dim=2)
        cond = torch.zeros(1, channels + 1, end - start, h, w, device=self.device, dtype=torch.float32)
        if start == 0:
            cond[:, :channels, 0] = self.image_latent[:, :, 0].float()
            cond[:, channels, 0] = 1.0
        job.cond_latents = torch.cat([job.cond_latents, cond], dim=2)
        job.camera = self._camera()

    def _camera(self) -> Camera:
        return Camera(
            viewmats=self.w2c.unsqueeze(0).to(self.device),
            intrinsics=self.intrinsics.unsqueeze(0).to(self.device),
            actions=self.actions_labels.unsqueeze(0).to(self.device),
        )

    def _select(self, chunk_start: int, chunk_size: int):
        if chunk_start <= MEMORY_SIZE:  # every earlier latent is context: no points needed
            return select_context_latents(self.w2c, chunk_start, chunk_size, points=torch.zeros(0, 3))
        chunk = chunk_start // self.chunk_latents
        if chunk not in self._cached_points:
            self._cached_points.clear()
            self._cached_points[chunk] = self._points(chunk)
        return select_context_latents(self.w2c, chunk_start, chunk_size, points=self._cached_points[chunk])

    def _chunk_done(self, start: int, end: int, latents: torch.Tensor) -> None:
        self._decoded = self.frames.chunk_done(start, end, latents)
