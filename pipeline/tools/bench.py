"""End-to-end benchmark of the production generation path.

    python -m pipeline.bench --tiny                       # CPU, seconds: tiny random models (CI)
    python -m pipeline.bench --modes ar bidirectional     # GPU: FULL-SIZE architecture, random weights

The full-size run needs no download: the DiT (8.56e9 parameters), Qwen2.5-VL-7B text model (its first
26 layers, as used), byT5, SigLIP and the HunyuanVideo-1.5 VAE are built at their real sizes with
random weights directly on the GPU; only the tokenizers come from the tiny fixture. It then calls
``WorldPlayPipeline.generate`` — the code the worker runs — and reports per stage: encoders, every
AR chunk (context pass and steps) or bidirectional chunk, VAE decode, H.264 encode, time to the first
decoded frames, peak GPU memory, and the DiT time against the analytic bf16 floor of the device.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.checkpoints import MODE_ALIASES
from pipeline.dit.attention import FLASH_KERNELS, backend_name, flash_attention, flash_kernel
from pipeline.dit.config import WorldPlayConfig
from pipeline.dit.transformer import WorldPlayTransformer
from pipeline.encoders import components as comp
from pipeline.generation.camera import parse_pose
from pipeline.generation.engine import GenerationRequest, WorldPlayPipeline, default_dtype, should_offload_encoders
from pipeline.generation.rollout import Trace

PEAK_BF16_TFLOPS = {"H100": 790.0, "H200": 790.0, "A100": 312.0, "L40S": 362.0, "RTX 4090": 165.0}
#: the bench's sampling per rollout, kept at the configurations docs/PERFORMANCE.md measured (AR distilled 4
#: steps; bidirectional 30 steps + CFG 6, below the model's published 50 so the figures stay comparable)
BENCH_DEFAULTS = {"ar": {"steps": 4, "guidance": 1.0}, "bidirectional": {"steps": 30, "guidance": 6.0}}

PROMPT = (
    "A paved pathway leads towards a stone arch bridge over calm water, lush trees on both banks, "
    "a pavilion with a tiered reddish-brown roof on the far shore, soft natural light."
)


# ------------------------------------------------------------------------------------ FLOPs


def pass_flops(config: WorldPlayConfig, kind: str, query_tokens: int, key_tokens: int) -> float:
    """Matmul FLOPs of one transformer pass (all layers) over `query_tokens` image tokens.

    step/context (AR): image tokens attend to `key_tokens` keys in both branches (a context pass's
    last layer computes only the keys and values it leaves in the cache).
    joint (bidirectional): `key_tokens` = image + text tokens; the RoPE branch's queries include the
    text tokens, whose linear layers are counted too.
    """
    c, m, layers = config.hidden_size, config.mlp_hidden_size, config.num_layers
    n = query_tokens
    linear = n * (5 * 2 * c * c + 2 * 2 * c * m)
    if kind == "context":  # the last layer only computes the K/V the cache keeps
        return float((layers - 1) * (linear + 2 * 4 * n * key_tokens * c) + n * 2 * 2 * c * c)
    if kind == "step":
        attn = 2 * 4 * n * key_tokens * c
    elif kind == "joint":
        text = key_tokens - n
        linear += text * (4 * 2 * c * c + 2 * 2 * c * m)
        attn = 4 * key_tokens * key_tokens * c + 4 * n * key_tokens * c
    else:
        return 0.0
    return float(layers * (linear + attn))


def all_to_all_bytes(config: WorldPlayConfig, kind: str, query_tokens: int, key_tokens: int, world: int,
                     element_bytes: int = 2) -> float:
    """Bytes that cross between GPUs in one pass split over `world` ranks (:mod:`pipeline.dit.parallel`),
    summed over the ranks; each rank sends 1/world of it.

    Every all-to-all moves the (world-1)/world of a [tokens, hidden] tensor that does not stay on its
    rank. Per layer: q, k, v into the head-sharded layout and the RoPE and PRoPE attention outputs back
    (image tokens); q, k, v and the output for text tokens (joint passes, the AR text pass); a context
    pass's last layer sends only k and v. The final all-gather of the output (32 channels) is added.
    `kind`: "text" (query_tokens = text tokens), "context", "step" or "joint" (key_tokens = image +
    text tokens), as in :func:`pass_flops`.
    """
    if world <= 1:
        return 0.0
    c, layers = config.hidden_size, config.num_layers
    share = (world - 1) / world
    row = c * element_bytes * share  # one token's hidden vector, the part that moves
    n = query_tokens
    if kind == "text":
        per_layer, last = 4 * n * row, 2 * n * row
    elif kind == "context":
        per_layer, last = 5 * n * row, 2 * n * row
    elif kind == "step":
        per_layer = last = 5 * n * row
    elif kind == "joint":
        per_layer = last = 5 * n * row + 4 * (key_tokens - n) * row
    else:
        return 0.0
    gather = 0 if kind in ("text", "context") else n * config.out_channels * element_bytes * share
    return float((layers - 1) * per_layer + last + gather)


def rollout_passes(mode: str, frames: int = 125, width: int = 832, height: int = 480, steps: int | None = None,
                   text_tokens: int = 1000, guidance: float | None = None) -> list[dict]:
    """Every DiT pass of one generation (kind, query and key tokens), without running it: the chunking
    and memory selection of :mod:`pipeline.generation.rollout` on the straight camera path of `frames` frames."""
    from pipeline.generation.memory import sample_memory_points, select_context_latents
    from pipeline.generation.rollout import AR_CHUNK_LATENTS, BIDIRECTIONAL_CHUNK_LATENTS, _context_indices

    latents = (frames - 1) // 4 + 1
    per_latent = (height // 16) * (width // 16)
    w2c = parse_pose(pose_for(mode, frames)).w2c
    points = sample_memory_points(torch.Generator("cpu").manual_seed(42))
    steps = steps or BENCH_DEFAULTS[mode]["steps"]
    guidance = BENCH_DEFAULTS[mode]["guidance"] if guidance is None else guidance
    branches = 2 if guidance > 1.0 else 1

    def select(start: int, size: int):
        return select_context_latents(w2c, start, size, points=points)

    size = AR_CHUNK_LATENTS if mode == "ar" else BIDIRECTIONAL_CHUNK_LATENTS
    passes = [{"kind": "text", "query_tokens": text_tokens, "key_tokens": text_tokens, "count": branches}] \
        if mode == "ar" else []
    for chunk in range(latents // size):
        start = chunk * size
        context = len(_context_indices(select, start, size)) if chunk else 0
        ctx, own = context * per_latent, size * per_latent
        if mode == "ar":
            if ctx:
                passes.append({"kind": "context", "query_tokens": ctx, "key_tokens": text_tokens + ctx,
                               "count": branches})
            passes.append({"kind": "step", "query_tokens": own, "key_tokens": text_tokens + ctx + own,
                           "count": steps * branches})
        else:
            passes.append({"kind": "joint", "query_tokens": ctx + own, "key_tokens": ctx + own + text_tokens,
                           "count": steps * branches})
    return passes


def sequence_parallel_model(mode: str, worlds: tuple[int, ...], *, measured_dit_seconds: float,
                            rest_seconds: float, link_gb_s: float = 300.0, latency_us: float = 25.0,
                            frames: int = 125, steps: int | None = None) -> list[dict]:
    """Expected DiT seconds of one generation split over N GPUs: the one-GPU measured DiT time divided
    by N (the FLOPs split evenly; kernel efficiency at the smaller per-GPU shapes is not modelled), plus
    the all-to-all traffic at `link_gb_s` per GPU and `latency_us` per collective, not overlapped with
    compute (the implementation does not overlap them). `rest_seconds` (VAE decode, encoders: on rank 0
    alone, not split) is added unchanged."""
    config = WorldPlayConfig.full()
    passes = rollout_passes(mode, frames, steps=steps)
    flops = sum(p["count"] * pass_flops(config, p["kind"], p["query_tokens"], p["key_tokens"]) for p in passes)
    rows = []
    for world in worlds:
        sent = sum(p["count"] * all_to_all_bytes(config, p["kind"], p["query_tokens"], p["key_tokens"], world)
                   for p in passes) / world  # per GPU
        # per layer: into and out of the head-sharded layout, twice in joint passes (image, text)
        collectives = sum(p["count"] * (4 if p["kind"] == "joint" else 2) for p in passes) \
            * config.num_layers if world > 1 else 0
        comm = sent / (link_gb_s * 1e9) + collectives * latency_us * 1e-6
        dit = measured_dit_seconds / world + comm
        rows.append({
            "mode": mode, "gpus": world, "dit_pflop_per_gpu": round(flops / world / 1e15, 2),
            "all_to_all_gb_per_gpu": round(sent / 1e9, 1), "collectives": collectives,
            "communication_seconds": round(comm, 2), "dit_seconds": round(dit, 1),
            "generate_seconds": round(dit + rest_seconds, 1),
        })
    return rows


def device_peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name:
            return value
    return None


# ------------------------------------------------------------------------------- full size


def _random_init_(module: torch.nn.Module, std: float = 0.02) -> None:
    """Small random weights, unit norm scales, zero biases (values only need to be finite)."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.ndim >= 2:
                param.normal_(0, std)
            elif "norm" in name.lower() and name.endswith("weight"):
                param.fill_(1.0)
            else:
                param.zero_()


def build_full_size(modes: tuple[str, ...], device: torch.device, dtype: torch.dtype, scratch: Path,
                    tiny_root: Path | None = None, dit_only: bool = False) -> WorldPlayPipeline:
    """Every component at its real size with random weights, on `device` (the tokenizers from `tiny_root`,
    written under `scratch` when not given). `dit_only`: the transformers alone, as a sequence-parallel
    follower rank holds them."""
    from diffusers import AutoencoderKLHunyuanVideo15
    from transformers import (
        ByT5Tokenizer,
        Qwen2_5_VLTextConfig,
        Qwen2_5_VLTextModel,
        Qwen2Tokenizer,
        SiglipImageProcessorPil,
        SiglipVisionConfig,
        SiglipVisionModel,
        T5Config,
        T5EncoderModel,
    )

    from pipeline.tools.tiny import COMPONENTS_DIR, random_fast_decoder, write_tiny_models

    tiny_root = tiny_root or write_tiny_models(scratch / "tiny", models=())
    tiny_components = tiny_root / COMPONENTS_DIR
    started = time.perf_counter()
    transformers = {}
    for mode in modes:
        with torch.device("meta"):
            model = WorldPlayTransformer(WorldPlayConfig.full())
        model = model.to_empty(device=device).to(dtype)
        _random_init_(model)
        transformers[MODE_ALIASES[mode]] = model.eval().requires_grad_(False)
    if dit_only:
        return WorldPlayPipeline(
            transformers=transformers, encoders=None, vae=None, scheduler=comp.load_scheduler(tiny_components),
            device=device, dtype=dtype, offload_encoders=False,
            load_info={"build_seconds": round(time.perf_counter() - started, 2), "weights": "random, full size"},
        )
    qwen_config = Qwen2_5_VLTextConfig(
        hidden_size=3584, intermediate_size=18944, num_hidden_layers=28 - comp.TEXT_SKIP_LAYERS,
        num_attention_heads=28, num_key_value_heads=4, vocab_size=152064, rms_norm_eps=1e-6,
        max_position_embeddings=128000,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
    )
    with torch.device(device):
        text_encoder = Qwen2_5_VLTextModel(qwen_config).to(dtype)
        text_encoder.norm = torch.nn.Identity()
        byt5 = T5EncoderModel(
            T5Config(d_model=1472, d_ff=3584, num_layers=12, num_heads=6, d_kv=64, vocab_size=384,
                     feed_forward_proj="gated-gelu", is_encoder_decoder=False)
        )
        siglip = SiglipVisionModel(
            SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                               num_attention_heads=16, image_size=384, patch_size=14)
        ).to(dtype)
        vae = AutoencoderKLHunyuanVideo15().to(dtype)
    for module in (text_encoder, byt5, siglip, vae):
        _random_init_(module)
        module.eval().requires_grad_(False)
    encoders = comp.ConditionEncoders(
        text_encoder=text_encoder,
        tokenizer=Qwen2Tokenizer.from_pretrained(tiny_components / "tokenizer", padding_side="right"),
        byt5_encoder=byt5,
        byt5_tokenizer=ByT5Tokenizer.from_pretrained(tiny_components / "tokenizer_2"),
        image_encoder=siglip,
        image_processor=SiglipImageProcessorPil(size={"height": 384, "width": 384}),
        dtype=dtype,
    )
    offload = should_offload_encoders(device)
    pipe = WorldPlayPipeline(
        transformers=transformers,
        encoders=encoders,
        vae=vae,
        scheduler=comp.load_scheduler(tiny_components),
        device=device,
        dtype=dtype,
        offload_encoders=offload,
        load_info={"build_seconds": round(time.perf_counter() - started, 2), "weights": "random, full size"},
        # the published base size (taehv1_5): live worlds stream with it, as on a worker that has its weights
        fast_decoder=random_fast_decoder().to(device, dtype),
        fast_decoder_info={"file": {"path": None, "source": "random, full size", "variant": "base"}},
    )
    return pipe


def build_for_rank(tiny: bool, modes: tuple[str, ...], tiny_root: str, device: str | None,
                   dit_only: bool = False) -> WorldPlayPipeline:
    """The bench's pipeline on one rank (:func:`pipeline.generation.ranks.load_ranked`), from tiny models written
    once beforehand (by the caller: model saving is skipped off rank 0 once torch.distributed is up);
    full size: the same seeded random weights on every rank (the transformers are built first). `dit_only`:
    a follower rank's pipeline (no encoders, no VAE)."""
    from pipeline.model_files.resolve import layout_paths

    torch.manual_seed(0)
    if tiny:
        return WorldPlayPipeline.from_paths(layout_paths(Path(tiny_root), [MODE_ALIASES[m] for m in modes]), device="cpu", dtype=torch.float32,
                                            dit_only=dit_only)
    device = torch.device(device or "cuda")
    return build_full_size(modes, device, default_dtype(device), Path(tiny_root).parent, Path(tiny_root),
                           dit_only=dit_only)


@dataclass(frozen=True)
class RankBuilder:
    """:func:`build_for_rank` as a loader for :func:`pipeline.generation.ranks.load_ranked` (picklable, and
    with ``for_follower()``)."""

    tiny: bool
    modes: tuple
    tiny_root: str
    dit_only: bool = False

    def __call__(self, device: str | None) -> WorldPlayPipeline:
        return build_for_rank(self.tiny, self.modes, self.tiny_root, device, dit_only=self.dit_only)

    def for_follower(self) -> "RankBuilder":
        return replace(self, dit_only=True)


# ------------------------------------------------------------------------------------ runs


def demo_image(width: int, height: int) -> Image.Image:
    """A smooth, structured picture (not noise), deterministic."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 0.5 + 0.5 * np.sin(x / 37.0) * np.cos(y / 53.0)
    g = np.clip(y / height, 0, 1)
    b = 0.5 + 0.5 * np.sin((x + y) / 71.0)
    return Image.fromarray((np.stack([r, g, b], -1) * 255).astype(np.uint8))


def pose_for(mode: str, frames: int) -> str:
    latents = (frames - 1) // 4 + 1
    return f"w-{latents - 1}"


@dataclass
class TimedRun:
    """One timed ``pipe.generate`` (:func:`timed_generate`)."""

    result: object  # GenerationResult
    trace: Trace  # the DiT passes
    handed: list[tuple[float, int]]  # (seconds since start, frames) per chunk handed over
    generate_seconds: float
    tail_seconds: float | None  # what the H.264 writer still took after generate returned (None: no writer)
    encode_seconds: float | None  # the writer's whole encoding time (beside generation)


def timed_generate(pipe: WorldPlayPipeline, request: GenerationRequest, writer_path: Path | None = None) -> TimedRun:
    """``pipe.generate`` with a pass trace, each chunk handed to a background H.264 writer as the worker does
    (when `writer_path` is given and PyAV is installed; a bare GPU box times the model only)."""
    import importlib.util

    Mp4Writer = None
    if writer_path is not None and importlib.util.find_spec("av") is not None:
        from pipeline.video import Mp4Writer

    device = pipe.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    trace = Trace(device)
    handed: list[tuple[float, int]] = []
    writer = Mp4Writer(writer_path, fps=24, background=True) if Mp4Writer else None
    started = time.perf_counter()

    def on_frames(frames_np: np.ndarray) -> None:
        handed.append((time.perf_counter() - started, int(frames_np.shape[0])))
        if writer is not None:
            writer.write(frames_np)  # H.264 on a background thread while the next chunk denoises

    with writer if writer is not None else nullcontext():  # a failed run aborts the writer
        result = pipe.generate(request, on_frames=on_frames, trace=trace)
        generate_s = time.perf_counter() - started
        t0 = time.perf_counter()
        if writer is not None:
            writer.close()
        tail_s = time.perf_counter() - t0 if writer is not None else None
    return TimedRun(result, trace, handed, generate_s, tail_s, writer.encode_seconds if writer is not None else None)


def run_one(pipe: WorldPlayPipeline, mode: str, frames: int, width: int, height: int, steps: int | None,
            guidance: float | None, out_dir: Path, prompt: str = PROMPT, ranks: int = 1) -> dict:
    device = pipe.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    request = GenerationRequest(
        prompt=prompt, image=demo_image(width, height), camera=parse_pose(pose_for(mode, frames)), mode=mode,
        num_inference_steps=steps or BENCH_DEFAULTS[mode]["steps"], guidance_scale=guidance, seed=42,
    )
    run = timed_generate(pipe, request, out_dir / f"bench_{mode}.mp4")
    result, trace, handed, generate_s, tail_s = run.result, run.trace, run.handed, run.generate_seconds, run.tail_seconds

    config = next(iter(pipe.transformers.values())).config
    per_kind: dict[str, float] = defaultdict(float)
    per_chunk: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    flops = 0.0
    for event in trace.events:
        per_kind[event["kind"]] += event["seconds"]
        per_chunk[event["chunk"]][event["kind"]] += event["seconds"]
        flops += pass_flops(config, event["kind"], event["query_tokens"], event["key_tokens"])
    dit_s = sum(per_kind.values())
    peak = device_peak_tflops(device)
    floor_s = flops / (peak * 1e12 * ranks) if peak else None  # the passes are split over `ranks` GPUs
    report = {
        "mode": mode,
        "frames": result.num_frames,
        "size": f"{result.width}x{result.height}",
        "steps": result.num_inference_steps,
        "guidance": result.guidance_scale,
        "stage_seconds": result.timings,
        "dit_seconds_by_kind": {k: round(v, 3) for k, v in per_kind.items()},
        "chunks": {str(k): {kk: round(vv, 3) for kk, vv in v.items()} for k, v in sorted(per_chunk.items())},
        "dit_seconds": round(dit_s, 3),
        "dit_pflop": round(flops / 1e15, 3),
        "dit_floor_seconds": round(floor_s, 2) if floor_s else None,
        "dit_vs_floor": round(dit_s / floor_s, 2) if floor_s else None,
        "achieved_tflops": round(flops / dit_s / 1e12, 1) if dit_s else None,  # all ranks together
        "sequence_parallel": ranks,
        "generate_seconds": round(generate_s, 3),
        # H.264 runs beside generation; what the job still waits for after the last frame is the tail
        "h264_encode_seconds": round(run.encode_seconds, 3) if run.encode_seconds is not None else None,
        "h264_tail_seconds": round(tail_s, 3) if tail_s is not None else None,
        "total_seconds": round(generate_s + (tail_s or 0.0), 3),
        "time_to_first_frames_seconds": round(handed[0][0], 3) if handed else None,
        "frames_handed_over": [{"at_seconds": round(at, 3), "frames": n} for at, n in handed],
        "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated(device) / 1e9, 2) if device.type == "cuda" else None,
    }
    return report


def attention_kernels(device: torch.device) -> list[dict]:
    """Time each SDPA backend on the DiT's attention shapes (K/V as strided cache slices)."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def timed(fn, repeat: int = 10) -> float:
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(repeat):
            fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - started) / repeat

    heads, dim = 16, 128
    shapes = {"ar_step": (2, 6240, 38000), "ar_context": (2, 31200, 32000), "bidirectional": (1, 26000, 26000)}
    rows = []
    for name, (b, lq, lk) in shapes.items():
        q = torch.randn(b, heads, lq, dim, device=device, dtype=torch.bfloat16)
        cache = torch.randn(b, heads, lk + 1, dim, device=device, dtype=torch.bfloat16)
        k, v = cache[:, :, :lk], cache[:, :, 1:]
        flops = 4 * b * heads * lq * lk * dim
        backends = {"flash": [SDPBackend.FLASH_ATTENTION], "cudnn": [SDPBackend.CUDNN_ATTENTION],
                    "efficient": [SDPBackend.EFFICIENT_ATTENTION], "default": None}
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION]):
            reference = F.scaled_dot_product_attention(q, k, v).float()
        for label, chosen in backends.items():
            try:
                if chosen is None:
                    seconds = timed(lambda: F.scaled_dot_product_attention(q, k, v))
                else:
                    with sdpa_kernel(chosen):
                        seconds = timed(lambda: F.scaled_dot_product_attention(q, k, v))
                rows.append({"shape": name, "backend": label, "ms": round(seconds * 1e3, 2),
                             "tflops": round(flops / seconds / 1e12)})
            except RuntimeError as exc:
                rows.append({"shape": name, "backend": label, "error": str(exc)[:120]})
        for label in FLASH_KERNELS:  # FlashAttention-3/4 when installed, with their distance to SDPA
            kernel = flash_kernel(label)
            if kernel is None:
                rows.append({"shape": name, "backend": label, "error": "not installed"})
                continue
            try:
                compile_started = time.perf_counter()
                out = flash_attention(kernel, q, k, v)
                torch.cuda.synchronize()
                first_call_s = time.perf_counter() - compile_started
                seconds = timed(lambda: flash_attention(kernel, q, k, v))
                rows.append({"shape": name, "backend": label, "ms": round(seconds * 1e3, 2),
                             "tflops": round(flops / seconds / 1e12), "first_call_s": round(first_call_s, 2),
                             "max_abs_diff_vs_sdpa": float((out.float() - reference).abs().max())})
            except Exception as exc:  # noqa: BLE001 - report any failure of an optional kernel
                rows.append({"shape": name, "backend": label, "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
        del q, cache, k, v, reference
        torch.cuda.empty_cache()
    return rows


def vae_decode_comparison(device: torch.device, dtype: torch.dtype, frames: int, width: int, height: int,
                          steps: tuple[int, ...] = (1, 2, 4), tiled: bool = True, untiled: bool = True,
                          tiny: bool = False) -> list[dict]:
    """Time the decode of one video with the full-size VAE (random weights; ``tiny``: the fixture's
    widths): diffusers untiled (one pass, dense causal mask), diffusers with 256-px tiles (the earlier
    production path), the chunked decoder with whole-video attention at several latents per pass
    (equal to the first), and the worker's default (upstream's per-frame attention, expected to
    differ). Each output is compared with the first one's, before the [0, 1] clamp."""
    from diffusers import AutoencoderKLHunyuanVideo15

    from pipeline.encoders.causal_decode import CausalVAEDecoder
    from pipeline.tools.tiny import TINY_VAE

    with torch.device(device):
        vae = AutoencoderKLHunyuanVideo15(**(TINY_VAE if tiny else {})).to(dtype)
    _random_init_(vae)
    vae.eval().requires_grad_(False)
    generator = torch.Generator("cpu").manual_seed(0)
    latents = torch.randn(1, 32, (frames - 1) // 4 + 1, height // 16, width // 16, generator=generator)
    latents = latents.to(device)

    def diffusers_decode(use_tiling: bool):
        def run() -> torch.Tensor:
            vae.use_tiling = use_tiling
            if use_tiling:
                vae.enable_tiling(tile_sample_min_height=256, tile_sample_min_width=256, tile_overlap_factor=0.25)
            with torch.inference_mode():
                video = vae.decode(latents.to(dtype) / vae.config.scaling_factor, return_dict=False)[0]
            return video.float()
        return run

    variants: list[tuple[str, object]] = []
    if untiled:
        variants.append(("diffusers, untiled", diffusers_decode(False)))
    if tiled:
        variants.append(("diffusers, 256-px tiles", diffusers_decode(True)))
    for n in steps:
        variants.append((f"causal, {n} latent(s) per pass",
                         lambda n=n: CausalVAEDecoder(vae, latents_per_step=n, attention="causal")
                         .decode_raw(latents).float()))
    # what the worker runs: upstream HY-WorldPlay's semantics (the mid-block attention within each latent
    # frame), so it is not expected to equal the whole-video decode
    variants.append(("frame attention (worker default), 1 latent per pass",
                     lambda: CausalVAEDecoder(vae, latents_per_step=1).decode_raw(latents).float()))
    rows, reference = [], None
    for label, run in variants:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        try:
            video = run()
            if device.type == "cuda":
                torch.cuda.synchronize()
        except torch.OutOfMemoryError:
            rows.append({"variant": label, "error": "out of memory"})
            continue
        row = {"variant": label, "seconds": round(time.perf_counter() - started, 3), "frames": video.shape[2]}
        if device.type == "cuda":
            row["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        if reference is None:  # raw decoder output (before the [0, 1] clamp), so differences show
            reference, row["output_std"] = video, round(float(video.std()), 5)
        else:
            row["max_abs_diff_vs_first"] = round(float((video - reference).abs().max()), 5)
        rows.append(row)
        del video
    return rows


def _decode_chunk_child(kind: str, device: str, dtype: str, width: int, height: int, repeat: int, queue,
                        timed_latents: int = 4) -> None:
    """In a fresh process (so its peak memory is its own): build one decoder at its real size with random
    weights, decode the start of a video (untimed), then time a mid-video chunk (4 latents, 16 frames). ``timed_latents`` < 4 times only that many
    latents of the chunk and scales the time to the chunk (the full VAE decodes one latent per pass, so
    its chunk is 4 equal passes: on a CPU one 16-frame chunk takes tens of minutes)."""
    import resource

    import psutil

    torch.manual_seed(0)
    dev, dt = torch.device(device), getattr(torch, dtype)
    if kind == "full":
        from diffusers import AutoencoderKLHunyuanVideo15

        from pipeline.encoders.causal_decode import CausalVAEDecoder

        with torch.device(dev):
            vae = AutoencoderKLHunyuanVideo15().to(dt)
        _random_init_(vae)
        vae.eval().requires_grad_(False)
        make = lambda: CausalVAEDecoder(vae)  # noqa: E731 - the worker's default: 1 latent per pass
    else:
        from pipeline.encoders.fast_decode import FastVideoDecoder, TAEHVDecoderConfig
        from pipeline.tools.tiny import random_fast_decoder

        config = TAEHVDecoderConfig.super_() if kind == "fast-super" else TAEHVDecoderConfig()
        model = random_fast_decoder(config).to(dev, dt)
        make = lambda: FastVideoDecoder(model)  # noqa: E731
    latents = torch.randn(1, 32, 8, height // 16, width // 16, generator=torch.Generator().manual_seed(0)).to(dev)
    rss_before = psutil.Process().memory_info().rss
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    seconds = []
    for _ in range(repeat):
        decoder = make()
        # the video's first latent (one frame; for the full VAE that is all the priming its causal caches
        # need: every later latent pass costs the same), or the fast decoder's whole first chunk
        first = 1 if kind == "full" else 4
        decoder.decode(latents[:, :, :first])
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        started = time.perf_counter()
        frames = decoder.decode(latents[:, :, first:first + timed_latents])
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        seconds.append((time.perf_counter() - started) * 4 / timed_latents)
    row = {"decoder": kind, "frames_timed": int(frames.shape[2]), "timed_latents": timed_latents,
           "seconds": round(min(seconds), 3), "seconds_all": [round(x, 3) for x in seconds],
           "params_m": round(sum(p.numel() for p in (vae if kind == "full" else model).parameters()) / 1e6, 2)}
    if dev.type == "cuda":
        row["peak_gib"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
    else:  # the process's peak resident memory, and what decoding added to the model built before it
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        row["peak_rss_gib"] = round(peak / 2**30, 2)
        row["decode_peak_gib"] = round((peak - rss_before) / 2**30, 2)
    queue.put(row)


def fast_decode_comparison(device: torch.device, dtype: torch.dtype, width: int, height: int, repeat: int = 1,
                           kinds: tuple[str, ...] = ("fast", "fast-super", "full"), full_latents: int = 4):
    """One mid-video 16-frame chunk (4 latents after a first chunk) decoded by the fast decoder (TAEHV,
    base and super widths) and by the full VAE (the worker's causal decoder, one latent per pass; timed over
    `full_latents` of them), each at its real size with random weights, each in its own process. Yields a
    row per decoder as it finishes, then the ratios."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    rows = []
    for kind in kinds:
        queue = context.Queue()
        child = context.Process(target=_decode_chunk_child, args=(
            kind, str(device), str(dtype).replace("torch.", ""), width, height, repeat, queue,
            full_latents if kind == "full" else 4))
        child.start()
        child.join()
        rows.append(queue.get() if child.exitcode == 0 else {"decoder": kind, "error": f"exit {child.exitcode}"})
        yield rows[-1]
    full = next((r for r in rows if r["decoder"] == "full" and "seconds" in r), None)
    if full is not None:
        yield {"ratio_full_over": {r["decoder"]: round(full["seconds"] / r["seconds"], 1)
                                   for r in rows if r["decoder"] != "full" and "seconds" in r}}


def decoder_jobs(frames: int = 125, width: int = 256, height: int = 144, steps: int = 1) -> list[dict]:
    """A whole AR job on the tiny pipeline (CPU) with each decoder: the tiny VAE and a tiny TAEHV."""
    from pipeline.model_files.resolve import layout_paths
    from pipeline.tools.tiny import write_tiny_models

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = write_tiny_models(Path(tmp), models=("ar_distilled",), fast_decoder=True)
        pipe = WorldPlayPipeline.from_paths(layout_paths(root, ("ar_distilled",)), device="cpu", dtype=torch.float32,
                                            models=("ar_distilled",))
        for decoder in ("full", "fast", "full", "fast"):  # twice each, alternating: the second pair is reported
            request = GenerationRequest(prompt="bench", image=demo_image(width, height),
                                        camera=parse_pose(pose_for("ar", frames)), mode="ar",
                                        num_inference_steps=steps, decoder=decoder)
            started = time.perf_counter()
            result = pipe.generate(request)
            rows.append({"decoder": decoder, "frames": result.num_frames, "size": f"{result.width}x{result.height}",
                         "seconds": round(time.perf_counter() - started, 2),
                         "decode_seconds": result.timings.get("decode"),
                         "denoise_seconds": result.timings.get("denoise")})
    return rows[2:]


@contextmanager
def attention_choice(choice: str):
    """``WORLDPLAY_ATTENTION=choice`` (read on every attention call) for a block, restored after."""
    before = os.environ.get("WORLDPLAY_ATTENTION")
    os.environ["WORLDPLAY_ATTENTION"] = choice
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("WORLDPLAY_ATTENTION", None)
        else:
            os.environ["WORLDPLAY_ATTENTION"] = before


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny random models on the CPU (seconds)")
    parser.add_argument("--modes", nargs="+", default=["ar"], choices=["ar", "bidirectional"])
    parser.add_argument("--frames", type=int, default=None, help="video frames (default 125; tiny: 29 AR / 61 bi)")
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the mode's)")
    parser.add_argument("--warmup", action="store_true",
                        help="run the worker's warm-up first (WorldPlayPipeline.warm_up: kernels, torch.compile)")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    parser.add_argument("--attention-kernels", action="store_true",
                        help="only time the attention kernels (SDPA backends, FlashAttention-3/4 when "
                             "installed) on the DiT's attention shapes (GPU)")
    parser.add_argument("--attention", nargs="+", default=None, choices=["auto", "sdpa", "fa3", "fa4", "math"],
                        help="run every mode once per WORLDPLAY_ATTENTION choice, one build (default: the "
                             "environment's)")
    parser.add_argument("--vae-decode", action="store_true",
                        help="only compare VAE decode paths with the full-size VAE (tiled, untiled, causal)")
    parser.add_argument("--vae-steps", type=int, nargs="+", default=[1, 2, 4],
                        help="latents per pass to try with --vae-decode")
    parser.add_argument("--no-untiled", action="store_true", help="with --vae-decode: skip the untiled decode")
    parser.add_argument("--fast-decode", action="store_true",
                        help="only compare the fast decoder (TAEHV) with the full VAE: one 16-frame chunk at "
                             "--width x --height (real sizes, random weights), then a whole 125-frame job with "
                             "each decoder on the tiny pipeline")
    parser.add_argument("--repeat", type=int, default=1, help="with --fast-decode: timed chunks per decoder (best kept)")
    parser.add_argument("--decoders", nargs="+", default=["fast", "fast-super", "full"],
                        choices=["fast", "fast-super", "full"], help="with --fast-decode: which decoders")
    parser.add_argument("--no-jobs", action="store_true", help="with --fast-decode: skip the tiny-pipeline jobs")
    parser.add_argument("--full-latents", type=int, default=4, choices=[1, 2, 3, 4],
                        help="with --fast-decode: latents of the chunk the full VAE is timed on (the time is scaled "
                             "to the chunk's 4; on a CPU 1 saves most of an hour)")
    parser.add_argument("--sp", default=None,
                        help="sequence-parallel ranks: N or 'auto' (default: WORLDPLAY_SEQUENCE_PARALLEL, else 1); "
                             "with --tiny, N gloo ranks on the CPU")
    parser.add_argument("--sp-model", action="store_true",
                        help="only print the sequence-parallel model for 1/2/4/8 H100s over NVLink (no run)")
    args = parser.parse_args(argv)

    if args.sp_model:
        # the one-H100 figures measured on 2026-11-23 (docs/PERFORMANCE.md): AR DiT 18.28 s with decode,
        # encode and hand-over 5.78 s besides; bidirectional 30 steps DiT 331.70 s with 7.02 s besides
        measured = {"ar": (18.28, 24.06 - 18.28), "bidirectional": (331.70, 338.72 - 331.70)}
        for mode in args.modes:
            dit, rest = measured[mode]
            for row in sequence_parallel_model(mode, (1, 2, 4, 8), measured_dit_seconds=dit, rest_seconds=rest,
                                               frames=args.frames or 125, steps=args.steps):
                print(json.dumps(row), flush=True)
        return 0

    if args.vae_decode:
        device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
        dtype = default_dtype(device)
        frames = args.frames or 125
        for row in vae_decode_comparison(device, dtype, frames, args.width, args.height, tuple(args.vae_steps),
                                         untiled=not args.no_untiled, tiny=args.tiny):
            print(json.dumps({"device": str(device), "dtype": str(dtype).replace("torch.", ""),
                              "size": f"{args.width}x{args.height}", **row}), flush=True)
        return 0

    if args.fast_decode:
        device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{os.cpu_count()}"
        for row in fast_decode_comparison(device, dtype, args.width, args.height, args.repeat,
                                          kinds=tuple(args.decoders), full_latents=args.full_latents):
            print(json.dumps({"device": where, "dtype": str(dtype).replace("torch.", ""),
                              "size": f"{args.width}x{args.height}", **row}), flush=True)
        if device.type == "cpu" and not args.no_jobs:
            for row in decoder_jobs(frames=args.frames or 125):
                print(json.dumps({"tiny_pipeline_job": True, **row}), flush=True)
        return 0

    if args.attention_kernels:
        if not torch.cuda.is_available():
            parser.error("--attention-kernels needs a GPU")
        for row in attention_kernels(torch.device("cuda")):
            print(json.dumps(row), flush=True)
        return 0

    if not args.tiny and not torch.cuda.is_available():
        # the full-size build is 8.6e9 parameters: on a CPU it would fill the RAM for nothing
        print("error: python -m pipeline.bench without --tiny builds the full-size models (8.6e9 "
              "parameters, ~40 GB in bf16) and needs a CUDA GPU, but none is visible "
              "(torch.cuda.is_available() is False). On this machine run: python -m pipeline.bench "
              "--tiny", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.tiny else "cuda")
    modes = tuple(args.modes)
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        t0 = time.perf_counter()
        from pipeline.generation.ranks import load_ranked
        from pipeline.tools.tiny import write_tiny_models

        tiny_root = write_tiny_models(scratch / "tiny", models=tuple(MODE_ALIASES[m] for m in modes) if args.tiny else ())
        pipe = load_ranked(RankBuilder(args.tiny, modes, str(tiny_root)), str(device), args.sp)
        ranks = getattr(pipe, "world_size", 1)
        build_s = time.perf_counter() - t0
        reports, warm_ups = [], {}
        for choice in args.attention or [os.environ.get("WORLDPLAY_ATTENTION", "auto")]:
            with attention_choice(choice):
                # the worker's own warm-up (a different prompt, so the measured runs still miss the
                # prompt cache); once per kernel family, whose first calls may compile
                warm_up_s = pipe.warm_up() if args.warmup else None
                warm_ups[choice] = warm_up_s
                kernel = backend_name(device)  # after the warm-up, which drops a kernel that fails
                for mode in modes:
                    frames = args.frames or (125 if not args.tiny else (29 if mode == "ar" else 61))
                    width, height = (args.width, args.height) if not args.tiny else (256, 144)
                    report = run_one(pipe, mode, frames, width, height, args.steps, None, scratch, ranks=ranks)
                    report.update(attention=choice, attention_kernel=kernel, warm_up_seconds=warm_up_s)
                    reports.append(report)
                    print(json.dumps(report, indent=2), flush=True)
        summary = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__,
            "python": platform.python_version(),
            "command": "python -m pipeline.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
            "build_seconds": round(build_s, 2),
            "compiled": pipe.compiled,
            "warm_up_seconds": next(iter(warm_ups.values())),  # the first --attention choice's
            "warm_up_seconds_per_attention": warm_ups,
            "attention_at_start": pipe.load_info.get("attention"),  # pipeline.dit.attention.prepare
            "attention_prepare_seconds": pipe.load_info.get("load_seconds", {}).get("attention_kernel"),
            "sequence_parallel": ranks,
            "runs": reports,
        }
        if args.json:
            args.json.write_text(json.dumps(summary, indent=2) + "\n")
        if hasattr(pipe, "close"):
            pipe.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
