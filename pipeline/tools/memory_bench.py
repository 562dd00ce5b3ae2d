"""Cost of the memory (context-latent) selection per chunk, on the CPU.

    OMP_NUM_THREADS=1 python -m pipeline.tools.memory_bench            # ~1 minute with the reference
    OMP_NUM_THREADS=1 python -m pipeline.tools.memory_bench --latents 1024 --repeats 21 --no-reference

Times :func:`pipeline.generation.memory.select_context_latents` for the last AR chunk (4 latents) of
sessions of 128, 512 and 1024 latents on one CPU thread (``torch.set_num_threads(1)``) and reports
the median of ``--repeats`` calls. Two camera paths:

* ``walk``: the worker's default speed (0.08 units per latent) with a random heading drift, so the
  path wanders off and most earlier cameras end up far from the current one (a long session);
* ``loop``: a circle of 80 latents walked again and again, so every earlier camera is within 2 units
  of the current one and every block competes (the worst case for the selection's pruning).

When run from a checkout that has ``tests/memory_reference.py`` (the dense implementation the
selection had before it was vectorised, kept as the tests' oracle) it is timed too ("before"), and
the two selections are compared.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
import time
from pathlib import Path

import torch

import pipeline
from pipeline.generation.memory import sample_memory_points, select_context_latents

# the repository's tests/ (absent from the Docker image): the package's folder is <repo>/pipeline
REFERENCE = Path(pipeline.__file__).resolve().parent.with_name("tests") / "memory_reference.py"
PATHS = ("walk", "loop")


def camera_path(kind: str, num_latents: int, seed: int = 0) -> torch.Tensor:
    """w2c ``[num_latents, 4, 4]`` float64 (OpenCV axes) of one of the benchmark's camera paths."""
    rng = torch.Generator().manual_seed(seed)
    step = torch.tensor([0.0, 0.0, 0.08], dtype=torch.float64)
    c2w = torch.eye(4, dtype=torch.float64).repeat(num_latents, 1, 1)
    yaw, position = 0.0, torch.zeros(3, dtype=torch.float64)
    for i in range(num_latents):
        c, s = math.cos(yaw), math.sin(yaw)
        c2w[i, :3, :3] = torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]], dtype=torch.float64)
        c2w[i, :3, 3] = position
        position = position + c2w[i, :3, :3] @ step
        if kind == "loop":
            yaw += 2 * math.pi / 80
        elif kind == "walk":
            yaw += 0.1 * float(torch.randn(1, generator=rng))
        else:
            raise ValueError(f"unknown camera path {kind!r}")
    return torch.linalg.inv(c2w)


def _load_reference():
    if not REFERENCE.is_file():
        return None
    spec = importlib.util.spec_from_file_location("memory_reference", REFERENCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.select_context_latents


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def run(latents=(128, 512, 1024), paths=PATHS, repeats: int = 11, reference: bool = True) -> list[dict]:
    torch.set_num_threads(1)
    points = sample_memory_points(torch.Generator().manual_seed(0))
    oracle = _load_reference() if reference else None
    rows = []
    for kind in paths:
        for num_latents in latents:
            w2c = camera_path(kind, num_latents)
            start = num_latents - 4
            row = {"path": kind, "latents": num_latents, "blocks": max(0, (start - 12 - 4 + 3) // 4)}
            selection = select_context_latents(w2c, start, 4, points=points)
            row["after_s"] = _median_seconds(lambda: select_context_latents(w2c, start, 4, points=points), repeats)
            if oracle is not None:
                row["before_s"] = _median_seconds(lambda: oracle(w2c, start, 4, points=points), max(3, repeats // 4))
                row["identical"] = oracle(w2c, start, 4, points=points) == selection
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latents", type=int, nargs="+", default=[128, 512, 1024])
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    parser.add_argument("--repeats", type=int, default=11, help="calls per figure (median)")
    parser.add_argument("--no-reference", action="store_true", help="do not time the dense reference")
    args = parser.parse_args(argv)
    rows = run(args.latents, args.paths, args.repeats, reference=not args.no_reference)
    print("\n| path | latents | blocks | before (dense) | after | identical |\n|---|---|---|---|---|---|")
    for r in rows:
        before = f"{r['before_s'] * 1e3:.1f} ms" if "before_s" in r else "-"
        print(f"| {r['path']} | {r['latents']} | {r['blocks']} | {before} | {r['after_s'] * 1e3:.1f} ms "
              f"| {r.get('identical', '-')} |")
    return 0 if all(r.get("identical", True) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
