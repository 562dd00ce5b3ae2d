"""``python -m tools.gpu_check --out DIR``: one prepared GPU run that measures every GPU claim of
docs/PERFORMANCE.md, on one GPU, with random full-size weights generated on the GPU (no download).

    python -m tools.gpu_check --out DIR                  # one GPU, full size, <= 8 min (--budget 420)
    python -m tools.gpu_check --out DIR --budget 300     # drop the costliest items first to fit
    python -m tools.gpu_check --out DIR --only ar_125 continuation
    python -m tools.gpu_check --out DIR --tiny           # CPU, tiny random models, < 1 min (CI)

Items (each in its own ``try``: a failure is recorded and the next item runs):

==============  ==========================================================================================
ar_125          AR 125 frames at 832x480 through ``WorldPlayPipeline.generate`` after the worker's warm-up:
                DiT (text / context / steps), VAE decode, generate, H.264 tail, first frames, DiT / floor
vae_decode      the causal VAE decode chunk by chunk (4 latents per chunk, 32 latents), and the fast decoder
                (``pipeline/encoders/fast_decode.py``, random weights at the published size) on the same latents
live_world      ``pipe.open_world`` + ``World.step(ChunkActions(("w",)))``: open, first frame, chunk cadence, with
                the fast decoder (what live worlds stream with) and then the full VAE
preview         the live preview's first playable segment (``worker.preview``) with chunks handed over at
                the cadence ``ar_125`` measured (default and ``WORLDPLAY_PREVIEW_LOW_LATENCY=1``)
live_server     the live server in-process (``worker.live`` on uvicorn, a ``websockets`` client, continuous
                drive): open, key -> first fragment, fragment cadence, the server's own work per chunk
continuation    a 32-latent continuation (``continue_from``: the state serialised and parsed) against the
                same 32 latents inside one job of 64; ``decode_resume``
cold_load       ``load_transformer`` to the GPU against a plain read of the same safetensors file (the AR
                DiT's random weights written to local disk, the page cache dropped before each)
bidirectional   bidirectional 125 frames at ``--bi-steps`` (default 2) steps, CFG; the DiT scaled to 30
                steps from the median time of a step per chunk (first-call costs excluded)
stage_720p      the 720p stage: a stated skip (not timed yet: no random-weight SR item written)
peak_memory     the peak GPU memory of every item that ran
==============  ==========================================================================================

Layout. This module lives in the top-level ``tools/`` package, not in ``pipeline/tools/``: two of its
items need the worker (``worker.preview``, ``worker.live``) and ``pipeline/`` must never import
``worker/`` (tests/test_layout.py). It holds no model code of its own: the full-size random models
come from :func:`pipeline.tools.bench.build_full_size` (the builder of every earlier GPU figure), the
FLOP floor from :func:`pipeline.tools.bench.pass_flops`, the tiny models from
:mod:`pipeline.tools.tiny`; the paced preview run reuses ``paced_once`` of the preview bench (in
``tools/`` or ``worker/``, wherever it is) when its signature fits, else a copy of its logic below.

Budget. Each item has an expected cost (seconds on an H100, from docs/PERFORMANCE.md's figures; a
separate column for ``--tiny``). Before each item the run adds up what is still to come; while that
exceeds what ``--budget`` leaves, the costliest item left is dropped, with the reason written down.
The one DiT on the GPU at a time is the AR one (both DiTs and the AR K/V cache do not fit 80 GB);
``bidirectional`` swaps it for the bidirectional DiT, so it runs last.

Output: ``DIR/gpu_check.json`` and ``DIR/gpu_check.md`` (the same figures as a table), with the GPU,
driver, torch, CUDA, cuDNN and attention kernel versions and the date. Exit status 0 when every item
ran or was skipped with a reason, 1 when one failed.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable


JSON_NAME = "gpu_check.json"
MD_NAME = "gpu_check.md"
DEFAULT_BUDGET = 420.0  # seconds of wall time for set-up + items on one H100 (the command: <= 8 minutes)
PROMPT = ("A paved pathway leads towards a stone arch bridge over calm water, lush trees on both banks, "
          "a pavilion with a tiered reddish-brown roof on the far shore, soft natural light.")


class Skip(Exception):
    """An item that cannot run here, with the reason (recorded as a stated skip, not a failure)."""


# ------------------------------------------------------------------------------------ context


@dataclass
class Ctx:
    tiny: bool
    out: Path
    scratch: Path
    args: argparse.Namespace
    device: Any = None
    dtype: Any = None
    pipe: Any = None
    tiny_root: Path | None = None
    setup_error: str | None = None
    shared: dict = field(default_factory=dict)  # what one item leaves for another (cadence, peaks)

    # sizes: the production ones on a GPU, small ones with --tiny (the same code path)
    @property
    def width(self) -> int:  # the picture; the tiny model's bucket is 80x48
        return 80 if self.tiny else 832

    @property
    def height(self) -> int:
        return 48 if self.tiny else 480

    @property
    def ar_latents(self) -> int:  # the 125-frame job (tiny: 29 frames)
        return 8 if self.tiny else 32

    @property
    def live_chunks(self) -> int:  # World.step: chunk 5 is the first with the full memory context (steady)
        return 3 if self.tiny else 6

    @property
    def server_chunks(self) -> int:  # through the live server: first fragment, the server's own work
        return 3 if self.tiny else 5

    def need_pipe(self):
        if self.pipe is None:
            raise RuntimeError(f"the models were not built: {self.setup_error or 'setup did not run'}")
        return self.pipe

    def sync(self) -> None:
        import torch

        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        import torch

        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gb(self) -> float | None:
        import torch

        if self.device is not None and self.device.type == "cuda":
            return round(torch.cuda.max_memory_allocated(self.device) / 1e9, 2)
        return None


def _image(width: int, height: int):
    from pipeline.tools.bench import demo_image

    return demo_image(width, height)


def _pose(latents: int) -> str:
    return f"w-{latents - 1}"


def setup(ctx: Ctx) -> dict:
    """Build the AR pipeline once: full size with random weights on the GPU, or the tiny models on the CPU.
    With a GPU, the worker's warm-up runs after it (kernel selection, FlashAttention's compile)."""
    import torch

    from pipeline.generation.engine import WorldPlayPipeline
    from pipeline.model_files.resolve import layout_paths
    from pipeline.tools.tiny import write_tiny_models

    started = time.perf_counter()
    torch.manual_seed(0)
    if ctx.tiny:
        ctx.device, ctx.dtype = torch.device("cpu"), torch.float32
        ctx.tiny_root = write_tiny_models(ctx.scratch / "tiny", models=("ar_distilled", "bidirectional"),
                                          fast_decoder=True)
        ctx.pipe = WorldPlayPipeline.from_paths(layout_paths(ctx.tiny_root, ("ar_distilled",)), device="cpu",
                                                dtype=torch.float32, models=("ar_distilled",))
    else:
        from pipeline.generation.engine import default_dtype
        from pipeline.tools.bench import build_full_size

        ctx.device = torch.device("cuda")
        ctx.dtype = default_dtype(ctx.device)
        ctx.tiny_root = write_tiny_models(ctx.scratch / "tiny", models=())  # tokenizers only
        ctx.pipe = build_full_size(("ar",), ctx.device, ctx.dtype, ctx.scratch, ctx.tiny_root)
    build_s = time.perf_counter() - started
    # the worker's warm-up (kernel selection, FlashAttention's compile), as the earlier GPU figures had it;
    # --tiny leaves it out (seconds of CPU for nothing to select)
    warm = ctx.pipe.warm_up() if not ctx.tiny else {"ar_distilled": "skipped with --tiny"}
    return {"build_seconds": round(build_s, 2), "warm_up_seconds": next(iter(warm.values()), None),
            "attention_at_start": ctx.pipe.load_info.get("attention"),
            "attention_prepare_seconds": ctx.pipe.load_info.get("load_seconds", {}).get("attention_kernel")}


# ------------------------------------------------------------------------------------ timed generate


def _generate(ctx: Ctx, request, *, writer_path: Path | None = None) -> tuple[dict, Any]:
    """``pipe.generate`` with a pass trace, frames handed to a background H.264 writer (when PyAV is
    installed) as the worker does; returns (figures, result)."""
    from pipeline.tools.bench import timed_generate

    run = timed_generate(ctx.need_pipe(), request, writer_path)
    result, trace, handed, generate_s, tail_s = run.result, run.trace, run.handed, run.generate_seconds, run.tail_seconds
    by_kind: dict[str, float] = {}
    by_chunk: dict[int, list[float]] = {}
    for event in trace.events:
        by_kind[event["kind"]] = by_kind.get(event["kind"], 0.0) + event["seconds"]
        by_chunk.setdefault(event["chunk"], []).append(event["seconds"])
    figures = {
        "frames": int(result.num_frames),
        "size": f"{result.width}x{result.height}",
        "steps": int(result.num_inference_steps),
        "dit_seconds": round(sum(by_kind.values()), 3),
        "dit_seconds_by_kind": {k: round(v, 3) for k, v in by_kind.items()},
        "decode_seconds": round(result.timings.get("decode", 0.0), 3),
        "generate_seconds": round(generate_s, 3),
        "h264_tail_seconds": round(tail_s, 3) if tail_s is not None else None,
        "total_seconds": round(generate_s + (tail_s or 0.0), 3),
        "first_frames_seconds": round(handed[0][0], 3) if handed else None,
        "frames_handed_over": [[round(at, 3), n] for at, n in handed],
        "stage_seconds": {k: round(v, 3) for k, v in result.timings.items()},
    }
    figures["_trace"] = trace.events
    figures["_by_chunk"] = by_chunk
    return figures, result


def _request(ctx: Ctx, pose, *, mode: str = "ar", steps: int | None = None, history=None):
    from pipeline.generation.camera import parse_pose
    from pipeline.generation.engine import GenerationRequest

    return GenerationRequest(prompt=PROMPT, image=None if history is not None else _image(ctx.width, ctx.height),
                             camera=parse_pose(pose), mode=mode, num_inference_steps=steps, seed=42, history=history)


def _floor(ctx: Ctx, events: list[dict]) -> dict:
    from pipeline.tools.bench import device_peak_tflops, pass_flops

    config = next(iter(ctx.pipe.transformers.values())).config
    flops = sum(pass_flops(config, e["kind"], e["query_tokens"], e["key_tokens"]) for e in events)
    peak = device_peak_tflops(ctx.device)
    dit = sum(e["seconds"] for e in events)
    out = {"dit_pflop": round(flops / 1e15, 3), "achieved_tflops": round(flops / dit / 1e12, 1) if dit else None}
    if peak:
        out["dit_floor_seconds"] = round(flops / (peak * 1e12), 2)
        out["dit_vs_floor"] = round(dit / (flops / (peak * 1e12)), 2)
    return out


def _public(figures: dict) -> dict:
    return {k: v for k, v in figures.items() if not k.startswith("_")}


# ------------------------------------------------------------------------------------ items


def item_ar_125(ctx: Ctx) -> dict:
    """AR, 125 frames (tiny: 29), 4 steps, after the worker's warm-up; its state feeds ``continuation``."""
    ctx.reset_peak()
    figures, result = _generate(ctx, _request(ctx, _pose(ctx.ar_latents)), writer_path=ctx.scratch / "ar.mp4")
    handed = figures["frames_handed_over"]
    gaps = [b[0] - a[0] for a, b in zip(handed, handed[1:])]
    ctx.shared["cadence"] = {"first": figures["first_frames_seconds"],
                             "gap": round(statistics.median(gaps), 3) if gaps else figures["first_frames_seconds"]}
    ctx.shared["ar_state"] = result.state
    ctx.shared["ar_generate_seconds"] = figures["generate_seconds"]
    out = _public(figures)
    out.update(_floor(ctx, figures["_trace"]))
    out["chunk_gap_median_seconds"] = ctx.shared["cadence"]["gap"]
    out["peak_gpu_memory_gb"] = ctx.peak_gb()
    out["headline"] = (f"generate {figures['generate_seconds']} s (DiT {figures['dit_seconds']} s, decode "
                       f"{figures['decode_seconds']} s), first frames {figures['first_frames_seconds']} s")
    return out


def _fast_decoder(pipe):
    """The pipeline's fast decoder (TAEHV, :mod:`pipeline.encoders.fast_decode`) fed chunk by chunk like
    :class:`CausalVAEDecoder`, or :class:`Skip` when the pipeline has none."""
    from pipeline.encoders.fast_decode import FastVideoDecoder

    if pipe.fast_decoder is None:
        raise Skip(f"this pipeline has no fast decoder ({pipe.fast_decoder_info.get('reason', 'not loaded')})")
    return FastVideoDecoder(pipe.fast_decoder)


def _decode_chunks(ctx: Ctx, decoder, latents) -> list[float]:
    import torch

    seconds = []
    with torch.inference_mode():
        for start in range(0, latents.shape[2], 4):
            ctx.sync()
            t0 = time.perf_counter()
            decoder.decode(latents[:, :, start:start + 4])
            ctx.sync()
            seconds.append(time.perf_counter() - t0)
    return seconds


def item_vae_decode(ctx: Ctx) -> dict:
    """The causal VAE decode per 4-latent chunk over a 125-frame video (random latents), and the fast one."""
    import torch

    from pipeline.encoders.causal_decode import CausalVAEDecoder

    pipe = ctx.need_pipe()
    vae = pipe.vae
    from pipeline.encoders.components import select_bucket

    channels = int(vae.config.latent_channels)
    ratio = int(getattr(vae.config, "spatial_compression_ratio", 16))
    base = next(iter(pipe.transformers.values())).config.resolution_base
    width, height = select_bucket(ctx.width, ctx.height, base)  # what a job of this picture renders
    generator = torch.Generator("cpu").manual_seed(0)
    latents = torch.randn(1, channels, ctx.ar_latents, height // ratio, width // ratio,
                          generator=generator).to(ctx.device, ctx.dtype)
    ctx.reset_peak()
    full = _decode_chunks(ctx, CausalVAEDecoder(vae), latents)
    out = {"size": f"{width}x{height}", "latents": ctx.ar_latents, "chunks": len(full), "full_first_chunk_seconds": round(full[0], 3),
           "full_chunk_median_seconds": round(statistics.median(full[1:] or full), 3),
           "full_total_seconds": round(sum(full), 3), "peak_gpu_memory_gb": ctx.peak_gb()}
    try:
        fast = _decode_chunks(ctx, _fast_decoder(pipe), latents)
    except Exception as exc:  # noqa: BLE001 - the full decode's figures stand whatever the fast one does
        word = "skipped" if isinstance(exc, Skip) else "failed"
        out["fast"] = f"{word}: {exc}" if isinstance(exc, Skip) else f"{word}: {type(exc).__name__}: {exc}"[:400]
        out["headline"] = f"full {out['full_total_seconds']} s for {len(full)} chunks; fast {word}"
        return out
    out.update({"fast_first_chunk_seconds": round(fast[0], 3),
                "fast_chunk_median_seconds": round(statistics.median(fast[1:] or fast), 3),
                "fast_total_seconds": round(sum(fast), 3),
                "fast_speedup": round(sum(full) / sum(fast), 2) if sum(fast) else None})
    out["headline"] = f"full {out['full_total_seconds']} s, fast {out['fast_total_seconds']} s for {len(full)} chunks"
    return out


def _live_run(ctx: Ctx, pipe, decoder: str) -> dict:
    """Open a world with `decoder` and step it ``ctx.live_chunks`` chunks with W held."""
    from pipeline.generation.world import ChunkActions

    ctx.sync()
    t0 = time.perf_counter()
    world = pipe.open_world(prompt=PROMPT, image=_image(ctx.width, ctx.height), seed=7, decoder=decoder)
    ctx.sync()
    open_s = time.perf_counter() - t0
    steps = []
    try:
        for _ in range(ctx.live_chunks):
            s0 = time.perf_counter()
            chunk = world.step(ChunkActions(("w",)))
            ctx.sync()
            steps.append((time.perf_counter() - s0, 0 if chunk.frames is None else int(chunk.frames.shape[0]),
                          chunk.timings.get("decode", 0.0)))
    finally:
        world.close()
    later = [s for s, _, _ in steps[1:]]
    return {
        "decoder": decoder,
        "open_seconds": round(open_s, 3),
        "first_frame_seconds": round(open_s + steps[0][0], 3),  # open + first chunk: the player's wait
        "first_chunk_seconds": round(steps[0][0], 3),
        "chunk_seconds": [round(s, 3) for s, _, _ in steps],
        "chunk_median_seconds": round(statistics.median(later), 3) if later else None,
        "steady_chunk_seconds": round(later[-1], 3) if later else None,  # the memory context full
        "decode_median_seconds": round(statistics.median(d for _, _, d in steps[1:]), 3) if later else None,
        "frames_per_chunk": [n for _, n, _ in steps],
    }


def item_live_world(ctx: Ctx) -> dict:
    """A live world stepped chunk by chunk with W held (``World.step``): open, first frame, cadence; with
    the decoder a live world streams with (the fast one when loaded), then again with the full VAE."""
    pipe = ctx.need_pipe()
    ctx.reset_peak()
    out = _live_run(ctx, pipe, pipe.live_decoder())
    out["peak_gpu_memory_gb"] = ctx.peak_gb()
    if out["decoder"] != "full":
        full = _live_run(ctx, pipe, "full")
        out["full_vae"] = {k: full[k] for k in ("first_frame_seconds", "chunk_median_seconds",
                                                "decode_median_seconds")}
    median = out["chunk_median_seconds"]
    out["headline"] = (f"{out['decoder']} decoder: first frame {out['first_frame_seconds']} s, then a 16-frame chunk "
                       f"every {median if median is not None else '-'} s (median)"
                       + (f"; full VAE: every {out['full_vae']['chunk_median_seconds']} s" if "full_vae" in out else ""))
    return out


class MemoryStorage:
    """In-memory stand-in for :class:`worker.storage.Storage` (what LivePreview calls), so the preview's
    timing is measured on a machine without an S3 server (a local upload is milliseconds either way)."""

    def __init__(self):
        self.objects: dict[str, bytes] = {}
        self.lock = threading.Lock()

    def with_retry(self, *args, **kwargs):
        return self

    def put_bytes(self, key, data, content_type=None, **kwargs):
        with self.lock:
            self.objects[key] = bytes(data)

    def put_file(self, key, path, content_type=None, **kwargs):
        self.put_bytes(key, Path(path).read_bytes())

    def presigned_get(self, key, expiry=3600, *args, **kwargs):
        return f"memory://{key}", int(expiry)

    def remove_objects(self, keys, *args, **kwargs):
        with self.lock:
            for key in keys:
                self.objects.pop(key, None)

    def __getattr__(self, name):  # anything else the preview may call: a no-op
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args, **kwargs: None


def _paced(frames, storage, workdir: Path, **kwargs) -> dict:
    """The preview bench's paced run (:func:`tools.preview_bench.paced_once`): chunks handed to the
    worker's writer at the GPU's cadence (a sleep stands in for the GPU), the preview cutting segments
    from its packets and closing the way run_job closes it."""
    from tools.preview_bench import paced_once

    return paced_once(frames, storage, workdir, **kwargs)


def item_preview(ctx: Ctx) -> dict:
    """The first playable HLS segment at the AR cadence measured by ``ar_125`` (3 chunks: the first
    segment is complete while the second chunk encodes), default and low-latency."""
    if importlib.util.find_spec("av") is None:
        raise Skip("PyAV (av) is not installed: carry its wheel (docs/PERFORMANCE.md, One GPU check)")
    from pipeline.video import synthetic_pan

    cadence = ctx.shared.get("cadence")
    source = "measured by ar_125"
    if not cadence or not cadence.get("first"):
        cadence, source = {"first": 1.42, "gap": 2.9}, "ar_125 did not run: the H100 figures of docs/PERFORMANCE.md"
    if ctx.tiny:  # the tiny model's cadence on a shared CPU says nothing: keep the run short
        cadence = {"first": min(cadence["first"], 0.3), "gap": min(cadence["gap"], 0.3)}
        source += " (capped at 0.3 s with --tiny)"
    frames = synthetic_pan(13 + 16 * 2, ctx.width, ctx.height)
    out: dict[str, Any] = {"first_chunk_after_seconds": cadence["first"], "chunk_gap_seconds": cadence["gap"],
                           "cadence_source": source}
    before = os.environ.get("WORLDPLAY_PREVIEW_LOW_LATENCY")
    try:
        for label, value in (("default", "0"), ("low_latency", "1")):
            os.environ["WORLDPLAY_PREVIEW_LOW_LATENCY"] = value
            run = _paced(frames, MemoryStorage(), ctx.scratch, preview_on=True, first=cadence["first"],
                         gap=cadence["gap"], name=f"preview-{label}")
            first = run.get("first_playable_s")
            out[f"{label}_first_playable_seconds"] = round(first, 3) if first is not None else None
            out[f"{label}_segments"] = run.get("segments")
    finally:
        if before is None:
            os.environ.pop("WORLDPLAY_PREVIEW_LOW_LATENCY", None)
        else:
            os.environ["WORLDPLAY_PREVIEW_LOW_LATENCY"] = before
    out["headline"] = (f"first playable segment {out['default_first_playable_seconds']} s "
                       f"(low latency {out['low_latency_first_playable_seconds']} s)")
    return out


def item_live_server(ctx: Ctx) -> dict:
    """The live server in-process on the same models: uvicorn on 127.0.0.1, a websockets client in
    continuous drive holding W; open, key -> first fragment, fragment cadence, server work per chunk."""
    missing = [m for m in ("fastapi", "uvicorn", "websockets", "pydantic") if importlib.util.find_spec(m) is None]
    if missing:
        raise Skip(f"{', '.join(missing)} not installed: carry their wheels (docs/PERFORMANCE.md, One GPU check)")
    import asyncio
    import base64

    try:
        import uvicorn  # noqa: F401 - the live server's stack, checked before the models are touched
        import websockets

        from worker import job
        from worker.live import BackgroundServer, create_app
        from worker.live_session import LiveSettings
    except ImportError as exc:
        raise Skip(f"the live server does not import here ({exc}): carry its wheels (docs/PERFORMANCE.md, "
                   f"One GPU check)") from exc

    pipe = ctx.need_pipe()
    saved_env = {n: os.environ.pop(n) for n in ("MINIO_ENDPOINT", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY",
                                                 "MINIO_BUCKET") if n in os.environ}
    saved_loader = job.MODELS.loader
    job.reset_state(loader=lambda modes: pipe)
    server = None
    try:
        job.MODELS.get(("ar_distilled",))
        app = create_app(LiveSettings(), preload=False)
        server = BackgroundServer(app)
        port = server.port
        buf = io.BytesIO()
        _image(ctx.width, ctx.height).save(buf, "PNG")
        image = base64.b64encode(buf.getvalue()).decode()
        chunks = ctx.server_chunks
        ctx.reset_peak()

        async def drive():
            async with websockets.connect(f"ws://127.0.0.1:{port}/session", max_size=None) as ws:
                t_open = time.perf_counter()
                await ws.send(json.dumps({"type": "open", "prompt": PROMPT, "drive": "continuous",
                                          "image_base64": image}))
                while True:
                    msg = await ws.recv()
                    if isinstance(msg, str):
                        data = json.loads(msg)
                        if data.get("type") == "error":
                            raise RuntimeError(f"live server: {data}")
                        if data.get("type") == "ready":
                            break
                t_ready = time.perf_counter()
                await ws.recv()  # the init segment
                t_keys = time.perf_counter()
                await ws.send(json.dumps({"type": "actions", "keys": ["w"]}))
                fragments = []
                while len(fragments) < chunks:
                    msg = await ws.recv()
                    if isinstance(msg, bytes):
                        fragments.append(time.perf_counter())
                    elif json.loads(msg).get("type") == "error":
                        raise RuntimeError(f"live server: {msg}")
                await ws.send(json.dumps({"type": "pause"}))
                await ws.send(json.dumps({"type": "close"}))
                while True:
                    msg = await ws.recv()
                    if isinstance(msg, str) and json.loads(msg).get("type") == "closed":
                        break
                return t_open, t_ready, t_keys, fragments

        t_open, t_ready, t_keys, fragments = asyncio.run(drive())
        records = app.state.live.records
        deadline = time.time() + 10
        while not records and time.time() < deadline:
            time.sleep(0.05)
        stats = list(records[-1].stats)[:chunks] if records else []
        gaps = [b - a for a, b in zip(fragments, fragments[1:])]
        out = {
            "open_seconds": round(t_ready - t_open, 3),
            "key_to_first_fragment_seconds": round(fragments[0] - t_keys, 3),
            "fragment_gap_median_seconds": round(statistics.median(gaps), 3) if gaps else None,
            "server_work_median_seconds": round(statistics.median(s.server for s in stats), 3) if stats else None,
            "generate_median_seconds": round(statistics.median(s.generate for s in stats), 3) if stats else None,
            "chunks": len(fragments),
            "peak_gpu_memory_gb": ctx.peak_gb(),
        }
        out["headline"] = (f"key -> first fragment {out['key_to_first_fragment_seconds']} s, a fragment every "
                           f"{out['fragment_gap_median_seconds']} s")
        return out
    finally:
        if server is not None:
            server.stop()
        job.reset_state(loader=saved_loader)
        os.environ.update(saved_env)


def item_continuation(ctx: Ctx) -> dict:
    """32 latents as a continuation (state serialised and parsed, as the worker does) against the same 32
    latents inside one job of 64: overhead = T(continuation) / (T(64) - T(32)) - 1."""
    from pipeline.generation.continuation import continuation_request
    from pipeline.generation.world_state import WorldState

    n = ctx.ar_latents
    first = ctx.shared.get("ar_state")
    t_a = ctx.shared.get("ar_generate_seconds")
    a_source = "ar_125"
    # --tiny: ar_125 was the process's first generation (no warm-up on the CPU), so A runs again here
    if first is None or t_a is None or ctx.tiny:
        figures, result = _generate(ctx, _request(ctx, _pose(n)), writer_path=ctx.scratch / "a.mp4")
        first, t_a, a_source = result.state, figures["generate_seconds"], "run here"
    one, _ = _generate(ctx, _request(ctx, f"{_pose(n)}, right-{n}"), writer_path=ctx.scratch / "one.mp4")
    t0 = time.perf_counter()
    data = first.to_bytes()
    request = continuation_request(WorldState.from_bytes(data), f"right-{n}")
    state_s = time.perf_counter() - t0
    cont, _ = _generate(ctx, request, writer_path=ctx.scratch / "cont.mp4")
    t_b = cont["generate_seconds"] + state_s
    inside = one["generate_seconds"] - t_a
    out = {"latents": n, "job_a_seconds": t_a, "job_a_source": a_source,
           "one_job_seconds": one["generate_seconds"], "inside_one_job_seconds": round(inside, 3),
           "continuation_seconds": round(t_b, 3), "state_bytes": len(data), "state_io_seconds": round(state_s, 3),
           "decode_resume_seconds": cont["stage_seconds"].get("decode_resume"),
           "overhead": round(t_b / inside - 1, 4) if inside > 0 else None}
    out["headline"] = (f"continuation {out['continuation_seconds']} s vs {out['inside_one_job_seconds']} s inside "
                       f"one job: {round(out['overhead'] * 100, 1) if out['overhead'] is not None else '-'} % "
                       f"(goal <= 5 %)")
    return out


def _drop_page_cache(path: Path, everything: bool) -> str:
    """Drop `path` from the page cache: fsync + posix_fadvise(DONTNEED); with `everything` (the GPU
    machine, not a shared CPU box) also the global drop when root may write drop_caches."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    how = "posix_fadvise(DONTNEED)"
    if not everything:
        return how
    try:
        subprocess.run(["sync"], check=False, timeout=60)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        how += " + drop_caches"
    except (OSError, subprocess.SubprocessError):
        pass
    return how


def item_cold_load(ctx: Ctx) -> dict:
    """``load_transformer`` to the device against a plain sequential read (64 MiB buffers) of the same
    safetensors file: the AR DiT's random weights written to local disk, page cache dropped before each."""
    import torch
    from safetensors.torch import save_file

    from pipeline.dit.checkpoint import load_transformer

    pipe = ctx.need_pipe()
    model = pipe.transformers["ar_distilled"]
    folder = Path(ctx.args.scratch_disk or ctx.scratch) / "cold_load"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.safetensors"
    t0 = time.perf_counter()
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"format": "pt"})
    model.config.save(folder)
    write_s = time.perf_counter() - t0
    size = path.stat().st_size
    try:
        rows = []
        for rep in range(max(1, int(ctx.args.cold_repeats))):
            how = _drop_page_cache(path, not ctx.tiny)
            t0 = time.perf_counter()
            with open(path, "rb", buffering=0) as f:
                buf = bytearray(64 << 20)
                view = memoryview(buf)
                while f.readinto(view):
                    pass
            read_s = time.perf_counter() - t0
            _drop_page_cache(path, not ctx.tiny)
            ctx.sync()
            t0 = time.perf_counter()
            loaded = load_transformer(path, device=ctx.device, dtype=ctx.dtype)
            ctx.sync()
            load_s = time.perf_counter() - t0
            del loaded
            if ctx.device.type == "cuda":
                torch.cuda.empty_cache()
            rows.append((read_s, load_s))
        read_s = min(r for r, _ in rows)
        load_s = min(ld for _, ld in rows)
    finally:
        path.unlink(missing_ok=True)
    return {"bytes": size, "write_seconds": round(write_s, 2), "read_seconds": round(read_s, 3),
            "load_seconds": round(load_s, 3), "read_gb_s": round(size / read_s / 1e9, 2),
            "load_gb_s": round(size / load_s / 1e9, 2), "load_vs_read": round(read_s / load_s, 3),
            "page_cache": how, "repeats": len(rows),
            "headline": f"load {round(load_s, 2)} s vs plain read {round(read_s, 2)} s: ratio "
                        f"{round(read_s / load_s, 2)} (target >= 0.8)"}


def _swap_to_bidirectional(ctx: Ctx) -> None:
    """Replace the AR DiT by the bidirectional one (one DiT on the GPU at a time)."""
    import torch

    from pipeline.dit.checkpoint import load_transformer
    from pipeline.generation.engine import _config_fingerprint

    pipe = ctx.need_pipe()
    if "bidirectional" in pipe.transformers:
        return
    pipe.transformers.clear()
    ctx.shared.pop("ar_state", None)
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()
    if ctx.tiny:
        from pipeline.model_files.resolve import layout_paths

        model = load_transformer(layout_paths(ctx.tiny_root, ("bidirectional",)).transformer["bidirectional"],
                                 device=ctx.device, dtype=ctx.dtype)
    else:
        from pipeline.dit.config import WorldPlayConfig
        from pipeline.dit.transformer import WorldPlayTransformer
        from pipeline.tools.bench import _random_init_

        with torch.device("meta"):
            model = WorldPlayTransformer(WorldPlayConfig.full())
        model = model.to_empty(device=ctx.device).to(ctx.dtype)
        _random_init_(model)
        model = model.eval().requires_grad_(False)
    pipe.transformers["bidirectional"] = model
    pipe.checkpoint_ids["bidirectional"] = _config_fingerprint(model)


def item_bidirectional(ctx: Ctx) -> dict:
    """Bidirectional 125 frames with CFG at ``--bi-steps`` steps; the DiT scaled to 30 steps from the
    median pass per chunk (so one-time costs of the first pass are not multiplied)."""
    steps = int(ctx.args.bi_steps)
    t0 = time.perf_counter()
    _swap_to_bidirectional(ctx)
    swap_s = time.perf_counter() - t0
    ctx.reset_peak()
    figures, _ = _generate(ctx, _request(ctx, "w-31", mode="bidirectional", steps=steps),
                           writer_path=ctx.scratch / "bi.mp4")
    per_chunk = {c: statistics.median(v) for c, v in figures["_by_chunk"].items()}
    passes_per_chunk = {c: len(v) for c, v in figures["_by_chunk"].items()}  # steps x CFG branches
    dit_30 = sum(per_chunk[c] * passes_per_chunk[c] * 30 / steps for c in per_chunk)
    rest = figures["generate_seconds"] - figures["dit_seconds"]
    out = _public(figures)
    out.update(_floor(ctx, figures["_trace"]))
    out.update({"measured_steps": steps, "scaled_to_steps": 30, "dit_seconds_30_steps": round(dit_30, 2),
                "generate_seconds_30_steps": round(dit_30 + rest, 2),
                "scaling": "DiT at 30 steps = sum over chunks of (median pass x passes x 30 / measured steps); "
                           "generate = that + the measured non-DiT time (encoders, decode, hand-over)",
                "swap_seconds": round(swap_s, 2), "peak_gpu_memory_gb": ctx.peak_gb()})
    out["headline"] = (f"{steps} steps measured: generate {figures['generate_seconds']} s; scaled to 30 steps: "
                       f"DiT {round(dit_30, 1)} s, generate {round(dit_30 + rest, 1)} s")
    return out


def item_stage_720p(ctx: Ctx) -> dict:
    raise Skip("the 720p stage is not timed yet: gpu_check has no random-weight SR item (docs/PERFORMANCE.md, Next 10)")


def item_peak_memory(ctx: Ctx) -> dict:
    raise AssertionError("computed by the runner from the other items")  # placeholder, never called


@dataclass(frozen=True)
class Item:
    name: str
    title: str
    h100_seconds: float  # expected wall seconds on one H100 (docs/PERFORMANCE.md), incl. its own set-up
    tiny_seconds: float  # the same with --tiny on 2 CPU cores
    run: Callable[[Ctx], dict]
    needs_models: bool = True


# in the order they run: ar_125 first (its cadence and state feed preview and continuation), the DiT
# swap of `bidirectional` last
ITEMS: tuple[Item, ...] = (
    # H100 seconds (docs/PERFORMANCE.md): AR 125 frames generate 24-25 s; VAE decode 5.4 s for 32 latents;
    # AR chunks 0.7 / 1.0 / 1.5 / 2.0 / 2.7 / 3.4 s as the context grows; preview: 2 paced runs of 3
    # chunks at that cadence; continuation: 64 latents (~52 s) + 32 as a continuation (~29 s); cold
    # load: write 17.1 GB + read 10.8 s + load 13.7 s; bidirectional: DiT swap + 2 steps (chunk 0
    # 2.6 s, chunk 1 8.4 s a step) + decode 5.3 s
    Item("ar_125", "AR 125 frames: DiT, decode, total, first frames", 30, 2, item_ar_125),
    Item("vae_decode", "decode per chunk: full VAE and fast decoder (TAEHV)", 12, 2, item_vae_decode),
    Item("live_world", "live world: World.step cadence and first frame, fast decoder then full VAE", 22, 2,
         item_live_world),
    Item("preview", "preview: first playable segment at the measured cadence", 18, 2, item_preview,
         needs_models=False),
    Item("live_server", "live server in-process: key -> fragment, cadence", 18, 4, item_live_server),
    Item("continuation", "32-latent continuation vs the same latents in one job", 85, 3, item_continuation),
    Item("cold_load", "cold load vs plain read of a safetensors file", 50, 2, item_cold_load),
    Item("bidirectional", "bidirectional, reduced steps scaled to 30", 45, 4, item_bidirectional),
    Item("stage_720p", "720p stage", 0, 0, item_stage_720p, needs_models=False),
    Item("peak_memory", "peak GPU memory", 0, 0, item_peak_memory, needs_models=False),
)
SETUP_SECONDS = {"h100": 90.0, "tiny": 10.0}  # build (random weights on the GPU) + FA4 compile + warm-up
BY_NAME = {item.name: item for item in ITEMS}


# ------------------------------------------------------------------------------------ environment


def environment(ctx: Ctx) -> dict:
    import torch

    def version(*names: str) -> str | None:
        for name in names:
            try:
                return importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                continue
        return None

    env = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m tools.gpu_check " + " ".join(ctx.args.argv),
        "tiny": ctx.tiny,
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "diffusers": version("diffusers"),
        "transformers": version("transformers"),
        "flash_attn_4": version("flash-attn-4", "flash_attn_4"),
        "flash_attn_3": version("flash-attn-3", "flash_attn_3"),
        "flash_attn": version("flash-attn", "flash_attn"),
        "nvidia_cutlass_dsl": version("nvidia-cutlass-dsl"),
        "pyav": version("av"),
    }
    if torch.cuda.is_available() and not ctx.tiny:
        env["gpu"] = torch.cuda.get_device_name(0)
        env["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 1e9, 1)
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=20).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            env["driver"] = None
    else:
        env["gpu"] = None
        env["driver"] = None
        env["device"] = f"cpu ({platform.processor() or platform.machine()})"
    try:
        from pipeline.dit.attention import backend_name

        env["attention_kernel"] = backend_name(ctx.device) if ctx.device is not None else None
    except Exception as exc:  # noqa: BLE001
        env["attention_kernel"] = f"unknown ({type(exc).__name__})"
    try:
        env["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                           timeout=10, cwd=Path(__file__).resolve().parents[1]).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["git_commit"] = None
    return env


# ------------------------------------------------------------------------------------ runner


def _cost(item: Item, tiny: bool) -> float:
    return item.tiny_seconds if tiny else item.h100_seconds


def run(ctx: Ctx, selected: list[Item], budget: float | None) -> dict:
    started = time.perf_counter()
    results: dict[str, dict] = {}
    for item in ITEMS:
        if item not in selected:
            results[item.name] = {"status": "skipped", "reason": "not selected (--only / --skip)"}
    pending = [i for i in selected]
    setup_state = {"done": False}

    def plan(now: float) -> None:
        """Drop the costliest items left while the expected work exceeds what the budget leaves."""
        if budget is None:
            return
        left = budget - (now - started)
        while True:
            todo = [i for i in pending if i.name not in results]
            setup = SETUP_SECONDS["tiny" if ctx.tiny else "h100"] \
                if not setup_state["done"] and any(i.needs_models for i in todo) else 0.0
            expected = setup + sum(_cost(i, ctx.tiny) for i in todo)
            if expected <= left or not todo:
                return
            costly = max(todo, key=lambda i: _cost(i, ctx.tiny))
            if _cost(costly, ctx.tiny) <= 0:
                return
            results[costly.name] = {
                "status": "skipped", "expected_seconds": _cost(costly, ctx.tiny),
                "reason": (f"budget: {expected:.0f} s of expected work ({'tiny' if ctx.tiny else 'H100'} table"
                           f"{', set-up included' if setup else ''}) against {max(left, 0):.0f} s left of "
                           f"--budget {budget:.0f}; the costliest item left ({_cost(costly, ctx.tiny):.0f} s) "
                           f"dropped first")}

    setup_info: dict[str, Any] = {}
    for item in pending:
        plan(time.perf_counter())
        if item.name in results:
            continue
        if item.name == "peak_memory":
            continue  # after the others
        if item.needs_models and not setup_state["done"]:
            setup_state["done"] = True
            t0 = time.perf_counter()
            try:
                setup_info = setup(ctx)
            except Exception as exc:  # noqa: BLE001 - recorded; the items that need the models fail with it
                ctx.setup_error = f"{type(exc).__name__}: {exc}"[:500]
                setup_info = {"error": ctx.setup_error, "traceback": traceback.format_exc()[-2000:]}
            setup_info["seconds"] = round(time.perf_counter() - t0, 2)
            print(f"[gpu_check] setup: {json.dumps(setup_info)[:400]}", flush=True)
        t0 = time.perf_counter()
        print(f"[gpu_check] {item.name}: started (expected {_cost(item, ctx.tiny):.0f} s)", flush=True)
        try:
            figures = item.run(ctx)
            results[item.name] = {"status": "ok", **figures}
        except Skip as why:
            results[item.name] = {"status": "skipped", "reason": str(why)}
        except Exception as exc:  # noqa: BLE001 - one failure must not lose the rest
            results[item.name] = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"[:600],
                                  "traceback": traceback.format_exc()[-3000:]}
            _free(ctx)
        results[item.name]["seconds"] = round(time.perf_counter() - t0, 2)
        results[item.name]["expected_seconds"] = _cost(item, ctx.tiny)
        print(f"[gpu_check] {item.name}: {results[item.name]['status']} in {results[item.name]['seconds']} s "
              f"{results[item.name].get('headline') or results[item.name].get('reason', '')}", flush=True)
        _write_partial(ctx, setup_info, results, started, budget)
    if "peak_memory" not in results:
        results["peak_memory"] = _peak_summary(ctx, results)
    return {"setup": setup_info, "items": {i.name: results[i.name] for i in ITEMS},
            "wall_seconds": round(time.perf_counter() - started, 2)}


def _write_partial(ctx: Ctx, setup_info: dict, results: dict, started: float, budget: float | None) -> None:
    """The files so far, rewritten after every item: a run killed at its time limit still leaves them
    (items not reached yet read ``pending``)."""
    try:
        items = {i.name: results.get(i.name, {"status": "pending", "reason": "not reached yet (run stopped?)"})
                 for i in ITEMS}
        report = {"environment": ctx.shared.get("environment") or {}, "setup": setup_info, "items": items,
                  "wall_seconds": round(time.perf_counter() - started, 2), "budget_seconds": budget}
        write_report(ctx.out, report)
    except Exception:  # noqa: BLE001 - a partial write must never stop the run
        traceback.print_exc()


def write_report(out: Path, report: dict) -> None:
    (out / JSON_NAME).write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / MD_NAME).write_text(markdown(report))


def _free(ctx: Ctx) -> None:
    try:
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001
        pass


def _peak_summary(ctx: Ctx, results: dict) -> dict:
    if ctx.tiny or ctx.device is None or ctx.device.type != "cuda":
        return {"status": "skipped", "seconds": 0.0, "expected_seconds": 0.0,
                "reason": "no GPU: peak GPU memory is only measured on CUDA (--tiny runs on the CPU)"}
    peaks = {name: r["peak_gpu_memory_gb"] for name, r in results.items()
             if r.get("status") == "ok" and r.get("peak_gpu_memory_gb") is not None}
    if not peaks:
        return {"status": "skipped", "seconds": 0.0, "expected_seconds": 0.0,
                "reason": "no item that records GPU memory ran"}
    import torch

    card = torch.cuda.get_device_properties(ctx.device).total_memory / 1e9
    out = {"status": "ok", "seconds": 0.0, "expected_seconds": 0.0, "by_item_gb": peaks,
           "max_gb": max(peaks.values()), "card_gb": round(card, 1)}
    ar = peaks.get("ar_125")
    out["headline"] = (f"AR 125 frames {ar} GB (target <= 70 GB); max over items {out['max_gb']} GB" if ar is not None
                       else f"max over items {out['max_gb']} GB (ar_125 did not run)")
    return out


# ------------------------------------------------------------------------------------ output


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) + "}"
    return str(value)


HIDDEN = {"status", "reason", "headline", "seconds", "expected_seconds", "traceback", "frames_handed_over",
          "stage_seconds"}


def figure_cells(result: dict) -> str:
    """The figures of one item as the markdown table shows them (the test compares both files with it)."""
    if result.get("status") != "ok":
        return result.get("reason", "")
    parts = [f"{k} = {_fmt(v)}" for k, v in result.items() if k not in HIDDEN]
    return "; ".join(parts).replace("|", "\\|")


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# GPU check, {env['date']}", ""]
    device = env.get("gpu") or env.get("device")
    lines.append(f"- device: {device}" + (f", driver {env['driver']}" if env.get("driver") else "")
                 + (f", {env['gpu_memory_gb']} GB" if env.get("gpu_memory_gb") else ""))
    lines.append(f"- torch {env['torch']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}, Python {env['python']}, "
                 f"diffusers {env['diffusers']}, transformers {env['transformers']}")
    lines.append(f"- attention kernel: {env['attention_kernel']} (flash-attn-4 {env['flash_attn_4']}, "
                 f"flash-attn-3 {env['flash_attn_3']}, nvidia-cutlass-dsl {env['nvidia_cutlass_dsl']})")
    lines.append(f"- command: `{env['command']}`, commit {env['git_commit']}, wall {report['wall_seconds']} s"
                 + (f" of a {report['budget_seconds']:g} s budget" if report.get("budget_seconds") else ""))
    setup = report.get("setup") or {}
    if setup:
        lines.append("- setup: " + "; ".join(f"{k} = {_fmt(v)}" for k, v in setup.items() if k != "traceback"))
    lines += ["", "| item | status | headline | figures | seconds (expected) |", "|---|---|---|---|---|"]
    for name, result in report["items"].items():
        lines.append(f"| {name} | {result['status']} | {(result.get('headline') or '').replace('|', '/')} | "
                     f"{figure_cells(result)} | {_fmt(result.get('seconds', 0.0))} "
                     f"({_fmt(result.get('expected_seconds', 0.0))}) |")
    skipped = [(n, r) for n, r in report["items"].items() if r["status"] != "ok"]
    if skipped:
        lines += ["", "Not measured:", ""]
        lines += [f"- **{n}** ({r['status']}): {r.get('reason', '')}" for n, r in skipped]
    return "\n".join(lines) + "\n"


def parse_markdown_table(text: str) -> dict[str, dict]:
    """The item rows of ``gpu_check.md`` (for the test: the JSON and the markdown must agree)."""
    rows = {}
    for line in text.splitlines():
        if not line.startswith("| ") or line.startswith("| item ") or line.startswith("|---"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        rows[cells[0]] = {"status": cells[1], "headline": cells[2], "figures": cells[3], "seconds": cells[4]}
    return rows


# ------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m tools.gpu_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--tiny", action="store_true", help="tiny random models on the CPU (CI: under a minute)")
    parser.add_argument("--budget", type=float, default=None,
                        help=f"seconds of wall time for all items (default {DEFAULT_BUDGET:g} on a GPU, none with "
                             "--tiny): the costliest items are dropped first when time runs short")
    parser.add_argument("--only", nargs="+", choices=list(BY_NAME), default=None, help="run only these items")
    parser.add_argument("--skip", nargs="+", choices=list(BY_NAME), default=(), help="leave these items out")
    parser.add_argument("--bi-steps", type=int, default=2, help="bidirectional steps measured (scaled to 30)")
    parser.add_argument("--cold-repeats", type=int, default=1,
                        help="cold_load repetitions (each: page cache dropped, read, dropped, load; the best kept)")
    parser.add_argument("--scratch-disk", type=Path, default=None,
                        help="local-disk folder for cold_load's safetensors file (default: the temp folder)")
    args = parser.parse_args(argv)
    args.argv = argv
    import torch

    if not args.tiny and not torch.cuda.is_available():
        print("error: python -m tools.gpu_check builds the full-size models and needs a CUDA GPU, but none is "
              "visible. On this machine run: python -m tools.gpu_check --tiny --out DIR", file=sys.stderr)
        return 2
    budget = args.budget if args.budget is not None else (None if args.tiny else DEFAULT_BUDGET)
    selected = [i for i in ITEMS if (args.only is None or i.name in args.only) and i.name not in args.skip]
    args.out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    if args.tiny:  # tiny tensors on shared cores: one thread (several spin against each other, 5-10x slower)
        torch.set_num_threads(1)
    try:
        report = _run_all(args, selected, budget)
    finally:
        torch.set_num_threads(threads)
    write_report(args.out, report)
    print(markdown(report), flush=True)
    return 1 if any(r["status"] == "failed" for r in report["items"].values()) else 0


def _run_all(args, selected: list[Item], budget: float | None) -> dict:
    import torch

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        ctx = Ctx(tiny=args.tiny, out=args.out, scratch=Path(tmp), args=args,
                  device=torch.device("cpu" if args.tiny else "cuda"))
        ctx.shared["environment"] = environment(ctx)  # for the partial files; again at the end (kernel chosen)
        report = run(ctx, selected, budget)
        report["environment"] = environment(ctx)
        report["budget_seconds"] = budget
        report = {"environment": report.pop("environment"), **report}
        if ctx.pipe is not None and hasattr(ctx.pipe, "close"):
            ctx.pipe.close()
    return report


if __name__ == "__main__":
    raise SystemExit(main())
