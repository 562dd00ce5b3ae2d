"""Costs of world sessions: state size, save / load time, and a continuation's overhead.

    python -m pipeline.tools.session_bench            # CPU, a few minutes on 2 cores

1. State files at the full 832x480 size (random latents, the real shapes): bytes per latent, seconds
   to serialise + write and to read + check, for sessions of 32, 128 and 256 latents.
2. The tiny model on the CPU: one AR job of A + B latents against job A then a continuation of B
   latents (state serialised and parsed in between, as the worker does). The continuation's overhead is
   ``T(B as a continuation) / (T(A + B) - T(A)) - 1``: what the B latents cost as their own job against
   what they cost inside the long one (its fixed costs are already paid by A).
3. The decoder resume at full size, in decoded-latent equivalents (FLOPs of the trimmed resume over the
   FLOPs of decoding one latent), from the VAE's real configuration on the meta device.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def state_costs(lengths=(32, 128, 256), repeats: int = 3) -> list[dict]:
    from pipeline.generation.world_state import WorldState

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for length in lengths:
            c2w = torch.eye(4, dtype=torch.float64).repeat(length, 1, 1)
            c2w[:, 2, 3] = torch.arange(length) * 0.08
            state = WorldState(
                latents=torch.randn(length, 32, 30, 52), c2w=c2w,
                intrinsics=torch.eye(3).repeat(length, 1, 1), actions=torch.zeros(length, dtype=torch.int64),
                image_latent=torch.randn(32, 30, 52), vision=torch.randn(729, 1152), prompt="a street",
                negative_prompt="", seed=1, mode="ar", num_inference_steps=4, guidance_scale=1.0, width=832,
                height=480, checkpoint="sha256:" + "0" * 32,
            )
            path = Path(tmp) / "world.safetensors"
            size = state.save(path)
            save_s = _best(lambda: state.save(path), repeats)
            load_s = _best(lambda: WorldState.load(path), repeats)
            out.append({"latents": length, "bytes": size, "bytes_per_latent": round((size - _fixed_bytes()) / length),
                        "save_seconds": round(save_s, 4), "load_seconds": round(load_s, 4)})
    return out


def _fixed_bytes() -> int:
    return (32 * 30 * 52 + 729 * 1152) * 4  # image latent + vision embedding (+ a small header)


def continuation_overhead(a: str = "w-15", b: str = "right-16", steps: int = 4, repeats: int = 2) -> dict:
    from PIL import Image

    from pipeline.generation.camera import parse_pose
    from pipeline.generation.continuation import continuation_request
    from pipeline.generation.engine import GenerationRequest, WorldPlayPipeline
    from pipeline.generation.world_state import WorldState
    from pipeline.model_files.resolve import layout_paths
    from pipeline.tools.tiny import write_tiny_models

    with tempfile.TemporaryDirectory() as tmp:
        root = write_tiny_models(Path(tmp), models=("ar_distilled",))
        pipe = WorldPlayPipeline.from_paths(layout_paths(root, ("ar_distilled",)), device="cpu")
    y, x = np.mgrid[0:90, 0:160]
    image = Image.fromarray(np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8))

    def job(pose):
        return pipe.generate(GenerationRequest(prompt="a street", image=image, camera=parse_pose(pose), seed=1,
                                               num_inference_steps=steps))

    job("w-3")  # warm the prompt cache and the kernels
    first = job(a)
    data = first.state.to_bytes()
    timings = {}

    def cont():
        timings["b"] = pipe.generate(continuation_request(WorldState.from_bytes(data), b)).timings

    best = {"one": [], "a": [], "b": []}
    for _ in range(repeats):  # interleaved, best of each: a shared CPU slows runs at random
        best["one"].append(_best(lambda: job(f"{a}, {b}"), 1))
        best["a"].append(_best(lambda: job(a), 1))
        best["b"].append(_best(cont, 1))
    t_one, t_a, t_b = min(best["one"]), min(best["a"]), min(best["b"])
    inside = t_one - t_a
    return {"pose_a": a, "pose_b": b, "steps": steps, "one_job_seconds": round(t_one, 3),
            "job_a_seconds": round(t_a, 3), "continuation_seconds": round(t_b, 3),
            "b_inside_one_job_seconds": round(inside, 3), "overhead": round(t_b / inside - 1, 4),
            "decode_resume_seconds": timings["b"].get("decode_resume")}


def resume_latent_equivalents() -> dict:
    """FLOPs of a decoder resume over the FLOPs of decoding one latent, full-size VAE (meta device)."""
    from diffusers import AutoencoderKLHunyuanVideo15

    from pipeline.encoders.causal_decode import CausalVAEDecoder

    with torch.device("meta"):
        vae = AutoencoderKLHunyuanVideo15()
    decoder = CausalVAEDecoder(vae)
    plan = decoder._trim_plan()
    walk = decoder._walk()
    # spatial size doubles at every upsampler; FLOPs per frame of a block ~ its convolutions' weights x pixels
    pixels, resume, per_latent = 30 * 52, 0.0, 0.0
    for module, _, rate in walk:
        weights = sum(p.numel() for name, p in module.named_parameters() if p.ndim == 5)
        per_frame = weights * pixels
        resume += per_frame * min(plan[module], rate * decoder.history_latents())
        per_latent += per_frame * rate
        if type(module).__name__ == "HunyuanVideo15Upsample":
            pixels *= 4
    return {"history_latents": decoder.history_latents(), "resume_in_decoded_latents": round(resume / per_latent, 2)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.tools.session_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args(argv)
    report = {
        "state_files": state_costs(repeats=args.repeats + 1),
        "decoder_resume_full_size": resume_latent_equivalents(),
        "continuation_tiny_cpu": continuation_overhead(repeats=args.repeats),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
