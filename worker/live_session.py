"""One live world on one socket (docs/LIVE.md): open, drive chunk by chunk, stream, save, record.

Threads and hand-offs (the event loop never waits on the GPU or the encoder):

- **worldplay-gpu** (one per process, :data:`GPU`): every call into the engine (``open_world``,
  ``resume_world``, ``World.step``, ``World.state``, ``World.close``), in order.
- **live-encode** (one per session): :class:`pipeline.video.FragmentedMp4Encoder` turns a chunk's
  frames into one fMP4 fragment; the fragment is appended to the session recording (a temp file) and
  sent after the chunk's JSON record.
- The event loop runs three tasks: the *receiver* (client messages), the *driver* (picks the next
  chunk's actions and hands the step to the GPU thread; in continuous mode it starts the next step as
  soon as the previous one returns, while the *emitter* encodes and sends the previous chunk) and the
  *emitter* (encode + record + send, in chunk order, bounded queue = back-pressure).

Whatever way the session ends (``close``, idle, wall time, session limit, disconnect, shutdown), the
finished chunks are kept: the state covers exactly the chunks that finished (a chunk in flight at a
disconnect is cancelled between denoising steps and dropped), it is saved to
``{key_prefix}/{session_id}/world.safetensors`` and the recording (the init segment + every
fragment, itself a valid MP4) to ``{key_prefix}/{session_id}/session.mp4`` when storage is configured.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import List, Optional

import schemas
from schemas import live as msgs
from worker import job, session
from worker.errors import WorkerError, from_exception

log = logging.getLogger("worldplay.live")

GPU = ThreadPoolExecutor(max_workers=1, thread_name_prefix="worldplay-gpu")
EMIT_QUEUE = 3  # chunks generated but not yet sent before the driver waits (back-pressure)


@dataclass
class LiveSettings:
    """Limits and access rules of the live server (env, documented in README "Live worlds")."""

    idle_seconds: float = 300.0
    max_seconds: float = 3600.0
    max_queued_actions: int = 8
    token: Optional[str] = None
    origins: tuple = ()
    allow_no_token: bool = False
    max_session_latents: int = 1024

    @classmethod
    def from_env(cls) -> "LiveSettings":
        from pipeline.generation.world_state import SessionLimits
        from pipeline.settings import env_flag, env_number

        origins = tuple(o.strip().rstrip("/") for o in
                        (os.environ.get("WORLDPLAY_LIVE_ORIGINS") or "").split(",") if o.strip())
        return cls(
            idle_seconds=max(1.0, env_number("WORLDPLAY_LIVE_IDLE_SECONDS", 300.0, float)),
            max_seconds=max(1.0, env_number("WORLDPLAY_LIVE_MAX_SECONDS", 3600.0, float)),
            max_queued_actions=max(1, env_number("WORLDPLAY_LIVE_MAX_QUEUED", 8, int)),
            token=os.environ.get("WORLDPLAY_LIVE_TOKEN") or None,
            origins=origins,
            allow_no_token=bool(env_flag("WORLDPLAY_LIVE_ALLOW_NO_TOKEN", False)),
            max_session_latents=SessionLimits.from_env().max_latents,
        )


@dataclass
class ChunkStat:
    """The server's own work on one chunk (what tools/live_bench.py reports)."""

    index: int
    frames: int
    bytes: int
    generate: float
    encode: float
    server: float  # handed over -> its fragment sent (encode + record + send)
    handed_over: float  # perf_counter when the GPU thread returned it
    sent: float


@dataclass
class SessionRecord:
    stats: List[ChunkStat] = field(default_factory=list)
    closed: Optional[dict] = None


def _yaw_degrees(c2w) -> float:
    """Heading of a camera-to-world matrix (OpenCV axes: +z forward, +y down): 0 = the start's."""
    return float(math.degrees(math.atan2(float(c2w[0][2]), float(c2w[2][2]))))


def _open_request(msg: msgs.OpenMessage) -> "schemas.JobInput":
    """The open message as a job input: the same validation, image fetch and storage checks as jobs."""
    data = {name: getattr(msg, name) for name in ("prompt", "image_base64", "image_url", "image_key",
                                                  "continue_from", "seed", "negative_prompt")
            if getattr(msg, name) is not None}
    data["output"] = {"key_prefix": msg.key_prefix, "presign_expiry_seconds": msg.presign_expiry_seconds,
                      "preview": False}
    try:
        return schemas.parse_input(data)
    except Exception as exc:  # pydantic ValidationError
        from pydantic import ValidationError

        if isinstance(exc, ValidationError):
            raise WorkerError("INVALID_INPUT", "open: " + schemas.format_validation_error(exc)) from None
        raise


class LiveSession:
    """Drives one world for one socket. ``run()`` returns the ``closed`` message (also sent)."""

    def __init__(self, ws, settings: LiveSettings, record: Optional[SessionRecord] = None):
        self.ws = ws
        self.settings = settings
        self.session_id = f"live-{uuid.uuid4().hex[:16]}"
        self.record = record or SessionRecord()
        self.world = None
        self.encoder = None
        self.storage = None
        self.req = None
        self.drive = "step"
        self.seed = 0
        self.connected = True
        self.reason: Optional[str] = None
        self.done = asyncio.Event()
        self.cancel = threading.Event()  # the chunk in flight stops between denoising steps
        self.steps: asyncio.Queue = asyncio.Queue()
        self.emit: asyncio.Queue = asyncio.Queue(maxsize=EMIT_QUEUE)
        self.held = None  # continuous mode: ChunkActions held now
        self.running = asyncio.Event()  # continuous mode: not paused
        self.pending_prompt: Optional[str] = None
        self.chunks = 0
        self.frames = 0
        self.last_message = time.monotonic()
        self.started = time.monotonic()
        self.encode_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="live-encode")
        self.recording_path: Optional[str] = None
        self._recording = None
        self._send_lock = asyncio.Lock()
        self.saved: dict = {}

    # ---- sending ---------------------------------------------------------------------------
    async def send_json(self, payload: dict) -> None:
        if not self.connected:
            return
        try:
            async with self._send_lock:
                await self.ws.send_text(json.dumps(payload))
        except Exception:  # noqa: BLE001 - the peer is gone: the session still ends cleanly
            self.connected = False
            self.finish("disconnect")

    async def send_error(self, code: str, message: str) -> None:
        await self.send_json(msgs.ErrorMessage(code=code, message=message).model_dump())

    async def _send_chunk(self, record: dict, fragment: bytes) -> None:
        if not self.connected:
            return
        try:
            async with self._send_lock:  # the record and its fragment go out back to back
                await self.ws.send_text(json.dumps(record))
                await self.ws.send_bytes(fragment)
        except Exception:  # noqa: BLE001
            self.connected = False
            self.finish("disconnect")

    def finish(self, reason: str) -> None:
        """End the session (the first reason wins); the driver stops before its next chunk."""
        if self.reason is None:
            self.reason = reason
            log.info("live %s: ending (%s)", self.session_id, reason)
        if reason in ("disconnect", "shutdown", "binary"):
            self.cancel.set()
        self.done.set()
        self.running.set()
        self.steps.put_nowait(None)

    async def gpu(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(GPU, lambda: fn(*args))

    # ---- open ------------------------------------------------------------------------------
    async def open(self, msg: msgs.OpenMessage) -> None:
        """Build the world (raises WorkerError: the caller answers ``error`` and waits for another
        ``open``)."""
        if msg.mode != "ar":
            raise WorkerError("MODE_UNAVAILABLE", "live worlds step 4 latents per chunk in AR mode; "
                                                  "bidirectional worlds are rendered by queue jobs "
                                                  "(whole 16-latent chunks), not live")
        from pipeline.checkpoints import rollout_of

        models = job.configured_models()
        autoregressive = [m for m in models if rollout_of(m) == "ar"]
        if not autoregressive:
            raise WorkerError("MODE_UNAVAILABLE", f"this worker serves {','.join(models)} "
                                                  "(WORLDPLAY_MODELS); live worlds need an autoregressive model")
        # a live world steps the distilled model when the worker holds it (4 steps a chunk), else its first AR model
        live_model = "ar_distilled" if "ar_distilled" in autoregressive else autoregressive[0]
        from worker import delivery

        req = _open_request(msg)
        storage = await asyncio.to_thread(delivery.preflight, req, job.get_storage)
        if req.continue_from is not None:
            state, _ = await asyncio.to_thread(session.read_state, req.continue_from, storage)
            image = None
        else:
            state, image = None, await asyncio.to_thread(job.fetch_image, req, job.get_storage)

        def build():
            pipe, _ = job.MODELS.get(models)
            if state is not None:
                return pipe.resume_world(state, prompt=msg.prompt, seed=msg.seed,
                                         negative_prompt=msg.negative_prompt, decoder=msg.decoder)
            seed = msg.seed if msg.seed is not None else job.random_seed()
            return pipe.open_world(prompt=msg.prompt, image=image, seed=seed,
                                   negative_prompt=msg.negative_prompt or "", model=live_model, decoder=msg.decoder)

        self.world = await self.gpu(build)
        self.req, self.storage, self.drive = req, storage, msg.drive
        self.seed = int(self.world.seed)
        from pipeline.video import FragmentedMp4Encoder

        self.encoder = FragmentedMp4Encoder(self.world.width, self.world.height, self.world.fps)
        fd, self.recording_path = tempfile.mkstemp(prefix=f"{self.session_id}-", suffix=".mp4",
                                                   dir=os.environ.get("WORLDPLAY_TMPDIR") or None)
        self._recording = os.fdopen(fd, "wb")
        self._recording.write(self.encoder.init_segment)
        self.started = time.monotonic()
        log.info("live %s: open (%s, seed %s, drive %s, %dx%d, %s decoder)", self.session_id,
                 "continue_from " + req.continue_from if req.continue_from else "new world",
                 self.world.seed, self.drive, self.world.width, self.world.height, self.world.decoder)
        s = self.settings
        ready = msgs.ReadyMessage(
            session_id=self.session_id, width=self.world.width, height=self.world.height,
            fps=float(self.world.fps), mime=self.encoder.mime, drive=self.drive, decoder=self.world.decoder,
            seed=int(self.world.seed),
            prompt=self.world.prompt, num_latents=int(self.world.num_latents),
            limits=msgs.Limits(max_session_latents=s.max_session_latents, idle_seconds=s.idle_seconds,
                               max_seconds=s.max_seconds, max_queued_actions=s.max_queued_actions))
        await self.send_json(ready.model_dump())
        if self.connected:
            async with self._send_lock:
                await self.ws.send_bytes(self.encoder.init_segment)

    # ---- running ---------------------------------------------------------------------------
    async def run(self, receive) -> dict:
        """After a successful :meth:`open`: run until the session ends; returns ``closed``."""
        self.running.set()
        tasks = [asyncio.create_task(self._receiver(receive), name="live-receiver"),
                 asyncio.create_task(self._driver(), name="live-driver"),
                 asyncio.create_task(self._emitter(), name="live-emitter"),
                 asyncio.create_task(self._clock(), name="live-clock")]
        try:
            await self.done.wait()
            await tasks[1]  # the chunk in flight completes (or is cancelled: disconnect)
            await self.emit.put(None)
            await tasks[2]  # every finished chunk encoded, recorded and (when connected) sent
        except asyncio.CancelledError:  # server shutdown
            self.finish("shutdown")
            raise
        finally:
            for task in (tasks[0], tasks[3]):
                task.cancel()
            closed = await self._close()
        return closed

    async def _clock(self) -> None:
        while not self.done.is_set():
            now = time.monotonic()
            if now - self.started > self.settings.max_seconds:
                await self.send_error("SESSION_TOO_LONG", f"the live session reached its "
                                      f"{self.settings.max_seconds:g} s limit (WORLDPLAY_LIVE_MAX_SECONDS)")
                self.finish("max_seconds")
                return
            if now - self.last_message > self.settings.idle_seconds:
                self.finish("idle")
                return
            await asyncio.sleep(min(1.0, self.settings.idle_seconds / 10))

    async def _receiver(self, receive) -> None:
        while not self.done.is_set():
            kind, payload = await receive()
            if kind == "disconnect":
                self.connected = False
                self.finish("disconnect")
                return
            if kind == "binary":
                await self.close_socket(1003, "INVALID_MESSAGE: binary frames are not accepted; send JSON text")
                self.finish("binary")
                return
            self.last_message = time.monotonic()
            try:
                msg = msgs.parse_client_message(payload)
            except msgs.MessageError as exc:
                await self.send_error("INVALID_MESSAGE", str(exc))
                continue
            await self.handle(msg)

    async def handle(self, msg) -> None:
        kind = msg.type
        if kind == "open":
            await self.send_error("INVALID_MESSAGE", "the world is already open; close it first")
        elif kind == "actions":
            from pipeline.errors import PoseSpecError

            try:
                actions = self._chunk_actions(msg)
            except PoseSpecError as exc:  # valid JSON, refused by the action rules (e.g. speed with no move key)
                await self.send_error("INVALID_MESSAGE", f"actions: {exc}")
                return
            if self.drive == "continuous":
                self.held = actions
            elif self.steps.qsize() >= self.settings.max_queued_actions:
                await self.send_error("INVALID_MESSAGE", f"{self.steps.qsize()} actions are waiting "
                                      f"already (the limit is {self.settings.max_queued_actions}); "
                                      "this one is dropped: wait for chunk records before sending more")
            else:
                self.steps.put_nowait(("actions", actions))
        elif kind == "prompt":
            if self.drive == "step":
                self.steps.put_nowait(("prompt", msg.prompt))
            else:
                self.pending_prompt = msg.prompt
        elif kind in ("pause", "resume"):
            if self.drive != "continuous":
                await self.send_error("INVALID_MESSAGE", f"{kind} is for continuous drive; this world "
                                      "steps one chunk per actions message")
            elif kind == "pause":
                self.running.clear()
            else:
                self.running.set()
        elif kind == "save":
            asyncio.create_task(self._save_and_tell())
        elif kind == "close":
            if self.drive == "step":
                self.steps.put_nowait(("close", None))  # after the actions sent before it
            else:
                self.finish("close")

    def _chunk_actions(self, msg: msgs.ActionsMessage):
        from pipeline.generation.world import ChunkActions

        kwargs = {}
        if msg.speed is not None:
            kwargs["speed"] = msg.speed
        if msg.degrees is not None:
            kwargs["degrees"] = msg.degrees
        return ChunkActions(keys=tuple(msg.keys), **kwargs)

    async def _next_actions(self):
        """The next chunk's actions, or None when the session ends."""
        while not self.done.is_set():
            if self.drive == "continuous":
                await self.running.wait()
                if self.done.is_set():
                    return None
                if self.held is None:
                    from pipeline.generation.world import ChunkActions

                    self.held = ChunkActions(keys=())
                return self.held
            item = await self.steps.get()
            if item is None:
                return None
            kind, value = item
            if kind == "close":
                self.finish("close")
                return None
            if kind == "prompt":
                self.pending_prompt = value
                continue
            return value
        return None

    async def _driver(self) -> None:
        from pipeline.errors import GenerationCancelled

        while True:
            actions = await self._next_actions()
            if actions is None:
                return
            if self.world.num_latents + 4 > self.settings.max_session_latents:
                await self.send_error("SESSION_TOO_LONG", f"the world holds {self.world.num_latents} "
                                      f"latents; another chunk would pass the session limit of "
                                      f"{self.settings.max_session_latents} (WORLDPLAY_MAX_SESSION_LATENTS)")
                self.finish("session_limit")
                return
            prompt, self.pending_prompt = self.pending_prompt, None

            def step(actions=actions, prompt=prompt):
                if prompt is not None:
                    self.world.set_prompt(prompt)
                t0 = time.perf_counter()
                chunk = self.world.step(actions, should_cancel=self.cancel.is_set)
                return chunk, time.perf_counter() - t0

            try:
                chunk, seconds = await self.gpu(step)
            except GenerationCancelled:
                log.info("live %s: the chunk in flight was dropped (%s)", self.session_id, self.reason)
                return
            except Exception as exc:  # noqa: BLE001 - a failed chunk ends the world; what is done stays
                err = from_exception(exc)
                log.error("live %s: chunk failed: %s: %s", self.session_id, err.code, err.message,
                          exc_info=exc if err.code == "INTERNAL_ERROR" else None)
                await self.send_error(err.code, err.message)
                self.finish("error")
                return
            self.chunks += 1
            self.frames += int(len(chunk.frames))
            await self.emit.put((chunk, seconds, time.perf_counter(), int(self.world.num_latents)))

    async def _emitter(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            item = await self.emit.get()
            if item is None:
                return
            chunk, gen_seconds, handed, num_latents = item
            t0 = time.perf_counter()
            fragment = await loop.run_in_executor(self.encode_pool, self._encode_and_record, chunk.frames)
            encoded = time.perf_counter() - t0
            c2w = [[float(v) for v in row] for row in chunk.c2w[-1]]
            record = msgs.ChunkMessage(
                index=int(chunk.index), action=dict(chunk.action), c2w=c2w,
                position=[c2w[0][3], c2w[1][3], c2w[2][3]], yaw_degrees=round(_yaw_degrees(c2w), 4),
                frames=int(len(chunk.frames)), bytes=len(fragment), num_latents=num_latents,
                timings=msgs.ChunkTimings(generate=round(gen_seconds, 4), encode=round(encoded, 4),
                                          server=round(time.perf_counter() - handed, 4))).model_dump()
            await self._send_chunk(record, fragment)
            sent = time.perf_counter()
            self.record.stats.append(ChunkStat(index=int(chunk.index), frames=int(len(chunk.frames)),
                                               bytes=len(fragment), generate=gen_seconds, encode=encoded,
                                               server=sent - handed, handed_over=handed, sent=sent))

    def _encode_and_record(self, frames) -> bytes:
        fragment = self.encoder.encode_chunk(frames)
        self._recording.write(fragment)
        return fragment

    # ---- saving ----------------------------------------------------------------------------
    async def save(self) -> dict:
        """Upload the state of the finished chunks (between chunks: the GPU thread orders it)."""
        if self.world is None:
            return {}
        state = await self.gpu(self.world.state)
        if self.storage is None or self.chunks == 0 and self.req.continue_from is None:
            return {}
        self.saved = await asyncio.to_thread(session.save_state, self.storage, self.req.output.key_prefix,
                                             self.session_id, state)
        return self.saved

    async def _save_and_tell(self) -> None:
        if self.storage is None:
            await self.send_error("STORAGE_NOT_CONFIGURED", "save writes the world state to the bucket: this "
                                  "worker has no storage configured (MINIO_*)")
            return
        saved = await self.save()
        await self.send_json(msgs.SavedMessage(state_key=saved.get("state_key"),
                                               session_latents=saved.get("session_latents"),
                                               state_error=saved.get("state_error")).model_dump())

    async def _store_recording(self) -> dict:
        if self._recording is None:
            return {}
        self._recording.close()
        self._recording = None
        if self.storage is None or self.chunks == 0:
            return {}
        key = f"{self.req.output.key_prefix}/{self.session_id}/session.mp4"

        from worker import delivery

        try:  # the deliver stage of jobs: one PUT retried over the upload window, then presigned
            delivered = await asyncio.to_thread(delivery.deliver_video, self.storage, key, self.recording_path,
                                                self.req.output.presign_expiry_seconds)
        except WorkerError as exc:
            log.warning("live %s: recording not stored: %s: %s", self.session_id, exc.code, exc.message)
            return {"recording_error": f"{exc.code}: {exc.message}"}
        log.info("live %s: recording (%d frames) -> %s", self.session_id, self.frames, key)
        return {"minio_key": key, "presigned_url": delivered["presigned_url"]}

    async def _close(self) -> dict:
        saved, stored, actions = {}, {}, []
        try:
            if self.world is not None:
                saved = await self.save()
                actions = list(await self.gpu(self.world.actions))
            stored = await self._store_recording()
        except Exception as exc:  # noqa: BLE001 - closing must always answer
            err = from_exception(exc)
            log.error("live %s: closing failed: %s: %s", self.session_id, err.code, err.message)
            saved = saved or {"state_error": f"{err.code}: {err.message}"}
        finally:
            if self.world is not None:
                world, self.world = self.world, None
                await self.gpu(world.close)
            if self.encoder is not None:
                await asyncio.get_running_loop().run_in_executor(self.encode_pool, self.encoder.close)
            self.encode_pool.shutdown(wait=False)
            if self.recording_path:
                try:
                    os.unlink(self.recording_path)
                except OSError:
                    pass
        closed = msgs.ClosedMessage(
            session_id=self.session_id, reason=self.reason or "close", chunks=self.chunks,
            frames=self.frames, actions=actions, seed=self.seed,
            **{k: v for k, v in {**saved, **stored}.items() if k in msgs.ClosedMessage.model_fields},
        ).model_dump()
        self.record.closed = closed
        log.info("live %s: closed (%s): %d chunks, %d frames, state %s, recording %s", self.session_id,
                 closed["reason"], self.chunks, self.frames, closed.get("state_key") or "-",
                 closed.get("minio_key") or "-")
        await self.send_json(closed)
        return closed

    async def close_socket(self, code: int, reason: str) -> None:
        if not self.connected:
            return
        self.connected = False
        try:
            await self.ws.close(code=code, reason=reason[:120])
        except Exception:  # noqa: BLE001
            pass
