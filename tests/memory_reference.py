"""Test-only oracle: the memory selection as it was before it was vectorised (issue 20, item 7).

A verbatim copy of ``select_context_latents`` and its helpers from ``pipeline/generation/memory.py`` at
commit 2aa7ba1 (dense: every query camera against every historical camera and every cone point). The
fast implementation must select exactly the same latents; ``tests/test_memory.py`` compares them and
``python -m pipeline.tools.memory_bench --reference`` times this copy as the "before" figure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

_BLOCK = 4
_REPRESENTATIVE_OFFSETS = (0, 2)
_FOV_DEG = (60.0, 35.0)
_MAX_DISTANCE = 8.0
_DEG_PER_RAD = 180.0 / math.pi
MEMORY_SIZE = 20
TEMPORAL_CONTEXT = 12


def select_context_latents(
    w2c: torch.Tensor,
    chunk_start: int,
    chunk_size: int,
    *,
    points: torch.Tensor,
    memory_size: int = MEMORY_SIZE,
    temporal_context: int = TEMPORAL_CONTEXT,
) -> list[int]:
    """Return the sorted latent indices (all ``< chunk_start``) to use as context for one chunk.

    Args:
        w2c: world-to-camera matrices of every latent of the request, ``[L, 4, 4]`` (the model's
            ``viewmats``, OpenCV axes), any device / float dtype. Poses after the chunk are not read.
        chunk_start: index of the chunk's first latent (a multiple of 4 in both rollouts).
        chunk_size: latents in the chunk: 4 for the AR rollout, 16 for the bidirectional one.
        points: Monte-Carlo points from :func:`sample_memory_points`, ``[N, 3]``; draw them once per
            request and reuse them for every chunk (as the reference does).
        memory_size: context latents per 4-latent query (20).
        temporal_context: most recent latents always kept (12).

    Returns:
        Sorted, unique indices in ``[0, chunk_start)``. Empty for the first chunk.
    """
    w2c = torch.as_tensor(w2c)
    if w2c.ndim != 3 or w2c.shape[1:] != (4, 4):
        raise ValueError(f"w2c must have shape [L, 4, 4], got {tuple(w2c.shape)}")
    num_latents = w2c.shape[0]
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if chunk_start < 0 or chunk_start + chunk_size > num_latents:
        raise ValueError(
            f"chunk [{chunk_start}, {chunk_start + chunk_size}) is outside the {num_latents} latents"
        )
    if memory_size < 0 or temporal_context < 0:
        raise ValueError("memory_size and temporal_context must be >= 0")
    points = torch.as_tensor(points)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must have shape [N, 3], got {tuple(points.shape)}")

    w2c64 = w2c.detach().to(device="cpu", dtype=torch.float64)
    cone_points: torch.Tensor | None = None  # computed on first need: points seen by a query camera

    selected: set[int] = set()
    for query_start in range(chunk_start, chunk_start + chunk_size, _BLOCK):
        if query_start <= memory_size:
            selected.update(range(query_start))
            continue
        recent_from = max(0, query_start - temporal_context)
        selected.update(range(recent_from, query_start))

        memory = list(range(_BLOCK))
        budget = memory_size - temporal_context
        block_starts = list(range(_BLOCK, query_start - temporal_context, _BLOCK))
        if block_starts and len(memory) < budget:
            if cone_points is None:
                cone_points = _points_in_query_cone(points)
            queries = list(range(query_start, min(query_start + _BLOCK, num_latents)))
            distances = _block_distances(w2c64, queries, block_starts, cone_points)
            # Stable sort: equal distances keep the earlier block first, as the reference does.
            for i in sorted(range(len(block_starts)), key=distances.__getitem__):
                if len(memory) >= budget:
                    break
                start = block_starts[i]
                if start not in memory:
                    memory.extend(range(start, start + _BLOCK))
        selected.update(memory)

    return sorted(i for i in selected if i < chunk_start)


def _points_in_query_cone(points: torch.Tensor) -> torch.Tensor:
    """The points (float64, query camera frame) inside a query camera's view cone.

    Every query camera sits at the origin of its own frame looking down +z, so the same points serve
    all queries; only they matter, because the overlap is normalised by their count.
    """
    pts = points.detach().to(device="cpu", dtype=torch.float64)
    x, y, z = pts.unbind(-1)
    azimuth = torch.atan2(x, z) * _DEG_PER_RAD
    elevation = torch.atan2(y, torch.sqrt(x**2 + z**2)) * _DEG_PER_RAD
    inside = (azimuth.abs() < _FOV_DEG[0] / 2.0) & (elevation.abs() < _FOV_DEG[1] / 2.0)
    return pts[inside]


def _block_distances(
    w2c64: torch.Tensor,
    queries: Sequence[int],
    block_starts: Sequence[int],
    cone_points: torch.Tensor,
) -> list[float]:
    """``1 - overlap`` per historical block, averaged over its representative latents and the queries."""
    num_blocks = len(block_starts)
    hist = torch.tensor([s + o for s in block_starts for o in _REPRESENTATIVE_OFFSETS])
    hist_c2w = torch.linalg.inv(w2c64[hist])  # [2B, 4, 4]
    # Historical cameras expressed in each query camera's frame: [Q, 2B, 4, 4].
    rel = w2c64[list(queries)][:, None] @ hist_c2w[None]
    seen = _count_seen(cone_points, rel[..., :3, 3], rel[..., :3, 2])
    num_cone = cone_points.shape[0]
    if num_cone == 0:
        overlap = torch.zeros(seen.shape, dtype=torch.float64)
    else:
        # The reference divides float32 counts; keep that rounding so ties and orderings agree.
        overlap = (seen.to(torch.float32) / torch.tensor(float(num_cone))).to(torch.float64)

    per_pose = (1.0 - overlap).reshape(len(queries), num_blocks, len(_REPRESENTATIVE_OFFSETS))
    per_query = (per_pose[..., 0] + per_pose[..., 1]) / 2.0
    total = torch.zeros(num_blocks, dtype=torch.float64)
    for q in range(len(queries)):  # sequential sum, same rounding as the reference's loop
        total = total + per_query[q]
    return (total / len(queries)).tolist()


def _count_seen(points: torch.Tensor, centres: torch.Tensor, forward: torch.Tensor) -> torch.Tensor:
    """How many ``points [M, 3]`` each camera (``centres``, ``forward`` ``[..., 3]``) sees; shape ``[...]``.

    A point is seen when it is closer than 8 units, its azimuth is within half the horizontal FOV of
    the camera's yaw and its elevation within half the vertical FOV of the camera's pitch, angles
    taken as ``atan2(x, z)`` and ``atan2(y, hypot(x, z))`` in the shared frame. The angle tests are
    done without per-point trigonometry: rotating the offset by the yaw gives its forward / lateral
    parts, and elevation bounds become slope bounds (elevation is monotonic in ``y / hypot(x, z)``).
    """
    fx, fy, fz = forward.unbind(-1)
    yaw = torch.atan2(fx, fz)
    pitch_deg = torch.atan2(fy, torch.sqrt(fx**2 + fz**2)) * _DEG_PER_RAD
    half_h, half_v = _FOV_DEG[0] / 2.0, _FOV_DEG[1] / 2.0

    px, py, pz = (points[:, i].contiguous() for i in range(3))
    cx, cy, cz = (centres[..., i].reshape(-1, 1) for i in range(3))
    vx, vy, vz = px - cx, py - cy, pz - cz  # [P, M] offsets from each camera (P cameras, M points)
    sin_yaw = torch.sin(yaw).reshape(-1, 1)
    cos_yaw = torch.cos(yaw).reshape(-1, 1)
    along = vx * sin_yaw + vz * cos_yaw  # |v_h| cos(azimuth - yaw)
    across = vx * cos_yaw - vz * sin_yaw  # |v_h| sin(azimuth - yaw)
    seen = along > 0
    seen &= across.abs_() < along.mul_(math.tan(math.radians(half_h)))

    horizontal_sq = vx.mul_(vx).add_(vz.mul_(vz))  # vx, vz are not needed any more
    seen &= (vy * vy).add_(horizontal_sq) < _MAX_DISTANCE**2
    horizontal = horizontal_sq.sqrt_()
    lower = (pitch_deg - half_v).reshape(-1, 1)
    upper = (pitch_deg + half_v).reshape(-1, 1)
    # Elevation lies in [-90, 90]: a bound beyond it is always met (its tangent is then unused).
    seen &= (lower <= -90) | (vy > horizontal * torch.tan(torch.deg2rad(lower)))
    seen &= (upper >= 90) | (vy < horizontal.mul_(torch.tan(torch.deg2rad(upper))))
    return seen.sum(-1).reshape(centres.shape[:-1])
