"""Render a video from the command line.

    python -m pipeline --tiny --image in.png --pose "w-3" --model ar_distilled --out demo.mp4
    python -m pipeline --model-dir /models --image in.png --prompt "..." --pose "w-31" --out out.mp4
    python -m pipeline --sp 4 --pose "w-31" --state-out world.safetensors   # 4 GPUs, sequence parallel

``--tiny`` writes tiny random-weight models (real architecture and on-disk layout) to a temporary
folder and renders on the CPU in seconds: the frames are noise-like, the code path is the real one.
Without ``--tiny`` the models are resolved like the worker does (WORLDPLAY_MODEL_DIR, RunPod cache,
Hugging Face cache, download when allowed).

The inputs (image, camera path, output folder) are checked before any model is built. Beside the
MP4 it saves the input image (``<out>_input.png``) and the camera path seen from above
(``<out>_path.png``, as ``python -m pipeline.camera --plot`` draws it).

The fast decoder (TAEHV; with ``--tiny`` a tiny random one is written too) instead of the VAE:

    python -m pipeline --tiny --pose "w-15" --decoder fast --out fast.mp4

A saved world state (a live world's, or a job's) decoded again with the full VAE, no generation
(:func:`pipeline.generation.engine.decode_state`; a queue job does the same with ``redecode_from``):

    python -m pipeline --redecode world.safetensors --out full.mp4

World sessions (the worker's continue_from, same code path; a continuation writes no side files):

    python -m pipeline --tiny --pose "w-15" --out part1.mp4 --state-out world.safetensors
    python -m pipeline --tiny --continue-from world.safetensors --pose "right-8" --out part2.mp4 \\
        --state-out world2.safetensors
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from pipeline.checkpoints import DEFAULT_MODEL, MODEL_NAMES, resolve_model, rollout_of
from pipeline.errors import ImageError, InvalidArgumentError, PipelineError, SequenceParallelConfigError
from pipeline.generation.camera import parse_pose

DEMO_PROMPT = "A quiet street at dawn, trees and shops under a pale sky."
DEFAULT_OUT = Path("out") / "demo.mp4"  # out/ is git-ignored: a demo leaves nothing in the checkout


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="use tiny random models on the CPU")
    parser.add_argument("--model-dir", type=Path, default=None, help="local model folder (else: resolved)")
    parser.add_argument("--image", type=Path, default=None, help="input image (default: a generated picture)")
    parser.add_argument("--prompt", default=None, help=f"default: {DEMO_PROMPT!r} (with --continue-from: the state's)")
    parser.add_argument("--negative-prompt", default=None)
    parser.add_argument("--pose", default="w-3", help='pose string ("w-31"), or a pose JSON / action list file')
    parser.add_argument("--model", choices=list(MODEL_NAMES), default=None,
                        help="the WorldPlay checkpoint; default: ar_distilled (or the state's)")
    parser.add_argument("--mode", choices=["ar", "bidirectional"], default=None,
                        help="older alias of --model: ar = ar_distilled, bidirectional = bidirectional")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--guidance", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None, help="default: 0 (or the state's)")
    parser.add_argument("--fps", type=int, default=24)
    parser.add_argument("--out", type=Path, default=None,
                        help=f"the MP4 (default: {DEFAULT_OUT}, created; the side files go beside it)")
    parser.add_argument("--sp", default=None,
                        help="sequence-parallel ranks: N or 'auto' (default: WORLDPLAY_SEQUENCE_PARALLEL, else 1); "
                             "with --tiny, N gloo ranks on the CPU")
    parser.add_argument("--state-out", type=Path, default=None,
                        help="write the world state (the whole session so far, tensor 'latents' included) to this "
                             ".safetensors file")
    parser.add_argument("--decoder", choices=["full", "fast"], default="full",
                        help="latents to frames: the VAE (full) or the TAEHV tiny decoder (fast)")
    parser.add_argument("--redecode", type=Path, default=None, metavar="STATE",
                        help="decode the latents of a saved world state with the full VAE into --out (no generation)")
    parser.add_argument("--continue-from", type=Path, default=None,
                        help="continue the world state in this file: --pose gives only the new latents")
    return parser


def _camera_spec(value: str):
    from pipeline.tools.camera_plot import load_spec

    return load_spec(value)


def _open_image(path: Path) -> Image.Image:
    """The --image file, fully decoded now, so a bad file fails before any model is built."""
    if not path.is_file():
        raise ImageError(f"--image {str(path)!r} does not exist or is not a file")
    try:
        image = Image.open(path)
        image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageError(f"--image {str(path)!r} could not be read as an image: "
                         f"{type(exc).__name__}: {exc}") from None
    return image


def side_files(out: Path) -> tuple[Path, Path]:
    """Where the input image and the path plot go beside the MP4 ``out``."""
    return out.with_name(f"{out.stem}_input.png"), out.with_name(f"{out.stem}_path.png")


def sp_flag_message(message: str, flag: str) -> str:
    """A WORLDPLAY_SEQUENCE_PARALLEL error, worded for the ``--sp`` flag the user typed."""
    from pipeline.dit.parallel import ENV

    message = message.replace(f"{ENV}={flag!r}", f"--sp {flag}").replace(f"{ENV}={flag}", f"--sp {flag}")
    message = message.replace("set 'GPUs per worker' on the endpoint to at least", "run it where at least")
    message = message.replace(f"at least {flag}, or lower {ENV}", f"at least {flag} GPUs are visible, or lower --sp")
    return message.replace(ENV, "--sp")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.out is None:
        args.out = DEFAULT_OUT
        args.out.parent.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from pipeline.generation.continuation import continuation_request
    from pipeline.generation.engine import GenerationRequest
    from pipeline.generation.ranks import PathsLoader, load_ranked
    from pipeline.generation.world_state import WorldState
    from pipeline.video import Mp4Writer, probe_mp4

    pipe = None
    try:
        if args.redecode is not None:
            return _redecode(args)
        # every input first: a typo must not cost a model build
        if args.sp is not None:  # the form of --sp now; heads and GPUs once the model is known
            from pipeline.dit.parallel import parse_size

            parse_size(args.sp, heads=None, gpus=0, device_type="cpu")
        spec = _camera_spec(args.pose)
        try:
            named = resolve_model(args.model, args.mode) if (args.model or args.mode) else None
        except ValueError as exc:
            raise PipelineError(str(exc)) from None
        if args.continue_from is not None:  # a world session: the worker's continue_from, same code path
            if args.image:
                raise ImageError("--continue-from takes no --image: the world state carries the image")
            request = continuation_request(
                WorldState.load(args.continue_from), spec, prompt=args.prompt, negative_prompt=args.negative_prompt,
                model=named, num_inference_steps=args.steps, guidance_scale=args.guidance, seed=args.seed,
            )
        else:
            request = GenerationRequest(
                prompt=args.prompt or DEMO_PROMPT, negative_prompt=args.negative_prompt or "",
                image=_open_image(args.image) if args.image else None,
                camera=parse_pose(spec, mode=rollout_of(named or DEFAULT_MODEL)), model=named or DEFAULT_MODEL,
                num_inference_steps=args.steps, guidance_scale=args.guidance, seed=args.seed or 0,
            )
        request.decoder = args.decoder
        mode = request.mode
        if not args.out.parent.is_dir():
            raise InvalidArgumentError(f"--out {str(args.out)!r}: folder {str(args.out.parent)!r} "
                                       "does not exist")
        with tempfile.TemporaryDirectory() as tmp:
            models = (request.model,)
            if args.tiny:
                from pipeline.model_files.resolve import layout_paths
                from pipeline.tools.tiny import write_tiny_models

                root = write_tiny_models(Path(tmp), models=models, fast_decoder=args.decoder == "fast")
                pipe = load_ranked(PathsLoader(layout_paths(root, models), models), "cpu", args.sp)
            else:
                from pipeline.model_files.resolve import resolve_models

                kwargs = {"model_dir": args.model_dir} if args.model_dir else {}
                pipe = load_ranked(PathsLoader(resolve_models(models, **kwargs), models), None, args.sp)
            if request.history is None and request.image is None:
                from pipeline.tools.bench import demo_image

                request.image = demo_image(832, 480)
            started = time.perf_counter()
            # each chunk's frames are encoded on a background thread while the next one denoises
            with Mp4Writer(args.out, fps=args.fps, background=True) as writer:
                result = pipe.generate(
                    request,
                    callback=lambda stage, step, total: print(f"{stage} {step}/{total}", file=sys.stderr),
                    on_frames=writer.write,
                )
        info = probe_mp4(args.out)
        report = {"out": str(args.out)}
        if request.history is None:  # side files of a new world (a continuation has no image of its own)
            input_png, path_png = side_files(args.out)
            request.image.convert("RGB").save(input_png)
            from pipeline.tools.camera_plot import plot_path

            plot_path(spec, path_png, mode=mode,
                      title=args.pose if isinstance(spec, str) else Path(args.pose).name)
            report.update(input_image=str(input_png), path_plot=str(path_png))
        report.update({
            "codec": info.codec, "width": info.width, "height": info.height,
            "num_frames": info.num_frames, "fps": float(info.fps), "seconds": round(time.perf_counter() - started, 2),
            "timings": result.timings, "session_latents": result.state.num_latents,
            "ranks": getattr(pipe, "world_size", 1),
        })
        if args.state_out is not None:
            report["state_out"] = str(args.state_out)
            report["state_bytes"] = result.state.save(args.state_out)
        print(json.dumps(report, indent=2))
        return 0
    except PipelineError as exc:
        message = exc.message
        if isinstance(exc, SequenceParallelConfigError) and args.sp is not None:
            message = sp_flag_message(message, args.sp)
        print(f"error: {exc.code}: {message}", file=sys.stderr)
        return 1
    finally:
        if hasattr(pipe, "close"):  # the followers of a sequence-parallel run
            pipe.close()


def _redecode(args) -> int:
    """``--redecode STATE``: the state's latents through the full VAE into ``--out``."""
    from pipeline.encoders import components as comp
    from pipeline.generation.engine import decode_state
    from pipeline.generation.world_state import WorldState
    from pipeline.video import Mp4Writer, probe_mp4

    state = WorldState.load(args.redecode)
    if not args.out.parent.is_dir():
        raise PipelineError(f"--out {str(args.out)!r}: folder {str(args.out.parent)!r} does not exist")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny:
            from pipeline.model_files.resolve import layout_paths
            from pipeline.tools.tiny import write_tiny_models

            components = layout_paths(write_tiny_models(Path(tmp), models=())).components
        elif args.model_dir:
            from pipeline.model_files.resolve import layout_paths

            components = layout_paths(args.model_dir).components
        else:
            from pipeline.model_files.resolve import resolve_models

            components = resolve_models((state.model,)).components
        import torch

        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        vae = comp.load_vae(components, device=device,
                            dtype=torch.bfloat16 if device.type == "cuda" else torch.float32)
        with Mp4Writer(args.out, fps=args.fps, background=True) as writer:
            frames = len(decode_state(state, vae, writer.write))
    info = probe_mp4(args.out)
    print(json.dumps({"out": str(args.out), "decoder": "full", "session_latents": state.num_latents,
                      "num_frames": info.num_frames, "width": info.width, "height": info.height,
                      "frames_decoded": frames, "seconds": round(time.perf_counter() - started, 2)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
