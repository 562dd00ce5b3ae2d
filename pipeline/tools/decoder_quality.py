"""How close the fast decoder's frames are to the full VAE's, on the same latents.

    python -m pipeline.tools.decoder_quality --model-dir /models --image in.png --pose "w-31" \\
        [--fast /models/TAEHV/taehv1_5_super.safetensors] [--json quality.json]
    python -m pipeline.tools.decoder_quality --tiny          # the code path, on tiny random models (CPU)

One AR job renders with the full VAE (``decoder: "full"``), then its world state's latents (the same ones a
``decoder: "fast"`` job makes: the decoder never touches the latents) are decoded by each fast decoder, the
one the models resolve to (``WORLDPLAY_FAST_DECODER``) and every ``--fast`` file. Per decoder: PSNR (dB, over
all frames) and SSIM (mean over frames, on luma, Gaussian window 11 / sigma 1.5) against the full VAE's frames,
and the decode time of each. Models are resolved like the worker does, unless ``--model-dir`` or ``--tiny``.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.checkpoints import DEFAULT_MODEL

PROMPT = "A quiet street at dawn, trees and shops under a pale sky."


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of uint8 frames [T, H, W, 3] (inf when equal)."""
    mse = float(np.mean((reference.astype(np.float64) - test.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def _luma(frames: np.ndarray) -> torch.Tensor:  # uint8 [T, H, W, 3] -> float64 [T, 1, H, W] in [0, 255]
    rgb = torch.from_numpy(frames).double()
    return (rgb @ torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)).unsqueeze(1)


def ssim(reference: np.ndarray, test: np.ndarray, window: int = 11, sigma: float = 1.5) -> float:
    """Mean structural similarity of uint8 frames [T, H, W, 3] on luma (Wang et al. 2004: Gaussian window,
    K1 = 0.01, K2 = 0.03, valid positions only); 1.0 when equal."""
    x, y = _luma(reference), _luma(test)
    size = min(window, x.shape[-1], x.shape[-2])
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :])[None, None]

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    value = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return float(value.mean())


def compare(pipe, image, pose: str, seed: int, fast_models: dict) -> list[dict]:
    """Render `pose` with the full VAE, decode its latents with every fast model ({name: TAEHVDecoder}), and
    compare. One row per decoder (the full VAE's first, with its own decode time)."""
    from pipeline.generation.camera import parse_pose
    from pipeline.generation.engine import GenerationRequest
    from pipeline.generation.engine import decode_state

    request = GenerationRequest(prompt=PROMPT, image=image, camera=parse_pose(pose, mode="ar"), model=DEFAULT_MODEL,
                                seed=seed)
    result = pipe.generate(request)
    full = result.frames
    rows = [{"decoder": "full", "frames": int(full.shape[0]), "size": f"{result.width}x{result.height}",
             "decode_seconds": result.timings.get("decode")}]
    for name, model in fast_models.items():
        started = time.perf_counter()
        frames = decode_state(result.state, pipe.vae, fast_model=model)
        seconds = time.perf_counter() - started
        if frames.shape != full.shape:
            raise RuntimeError(f"{name}: {frames.shape} frames against the full VAE's {full.shape}")
        rows.append({"decoder": name, "frames": int(frames.shape[0]), "decode_seconds": round(seconds, 3),
                     "psnr_db": round(psnr(full, frames), 2), "ssim": round(ssim(full, frames), 4)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.tools.decoder_quality", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny random models on the CPU (the code path only)")
    parser.add_argument("--model-dir", type=Path, default=None, help="local model folder (else: resolved)")
    parser.add_argument("--image", type=Path, default=None, help="input picture (default: a generated one)")
    parser.add_argument("--pose", default="w-31", help='pose string (default "w-31": 125 frames)')
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fast", type=Path, nargs="*", default=[], help="more fast-decoder files to compare")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)

    from PIL import Image

    from pipeline.encoders.fast_decode import load_fast_decoder
    from pipeline.generation.engine import WorldPlayPipeline
    from pipeline.tools.bench import demo_image

    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny:
            from pipeline.model_files.resolve import layout_paths
            from pipeline.tools.tiny import write_tiny_models

            paths = layout_paths(write_tiny_models(Path(tmp), models=(DEFAULT_MODEL,), fast_decoder=True),
                                 (DEFAULT_MODEL,))
            pipe = WorldPlayPipeline.from_paths(paths, device="cpu", dtype=torch.float32, models=(DEFAULT_MODEL,))
        else:
            from pipeline.model_files.resolve import layout_paths, resolve_models

            paths = (layout_paths(args.model_dir, (DEFAULT_MODEL,)) if args.model_dir
                     else resolve_models((DEFAULT_MODEL,)))
            pipe = WorldPlayPipeline.from_paths(paths, models=(DEFAULT_MODEL,))
        fast_models = {}
        if pipe.fast_decoder is not None:
            fast_models[Path(pipe.fast_decoder_info["file"]["path"]).stem] = pipe.fast_decoder
        for path in args.fast:
            fast_models[path.stem] = load_fast_decoder(path, device=pipe.device, dtype=pipe.dtype)
        if not fast_models:
            parser.error(f"no fast decoder to compare ({pipe.fast_decoder_info.get('reason')}); pass --fast FILE")
        image = Image.open(args.image).convert("RGB") if args.image else demo_image(832, 480)
        device = torch.cuda.get_device_name(pipe.device) if pipe.device.type == "cuda" else "cpu"
        rows = [{"device": device, **row} for row in compare(pipe, image, args.pose, args.seed, fast_models)]
    for row in rows:
        print(json.dumps(row), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
