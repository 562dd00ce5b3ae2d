"""Memory-frame (context latent) selection for the chunked rollouts.

When a rollout generates the chunk of latents that starts at ``chunk_start`` it conditions on a set of
earlier, already denoised latents (the "context"). This module decides which ones, reproducing the rule
of the reference implementation (``hyvideo/utils/retrieval_context.py`` in HY-WorldPlay):

* The chunk is split into 4-latent queries (one for an AR chunk of 4, four for a bidirectional chunk
  of 16). For a query starting at ``q``:

  - ``q <= memory_size``: every earlier latent ``0 .. q-1``;
  - otherwise the ``temporal_context`` most recent latents, the first block ``0..3``, and whole
    4-latent historical blocks ``[s, s+4)`` (``s = 4, 8, ...`` and ``s < q - temporal_context``),
    best first, while the non-recent part holds fewer than ``memory_size - temporal_context``
    latents. With the defaults (20, 12) that is exactly one block, 20 latents in all.

* A block is scored by how much of the query cameras' view it saw: for every query pose and for the
  block's latents ``s`` and ``s+2`` the overlap is the share of Monte-Carlo points inside the query
  camera's view cone (60° × 35°, within 8 units, the points fill a ball of radius 8 around the query
  camera) that also lie inside the historical camera's cone and within 8 units of it. Distance is
  ``1 - overlap`` averaged over the two block latents and then over the query latents; the smallest
  distance wins, ties go to the earlier block.

* The per-query selections of a chunk are merged, sorted, and the chunk's own latents removed. A
  bidirectional chunk can therefore get more than ``memory_size`` context latents (up to 32 with the
  defaults); an AR chunk of 4 gets at most ``memory_size``.

The view cones are the reference's, not a pinhole frustum: a point is inside when its azimuth
(``atan2(x, z)``) and elevation (``atan2(y, hypot(x, z))``) in the query camera's frame differ from the
camera's forward direction by less than half the field of view. Roll is ignored.

Randomness: the reference draws its 50 000 points once per generation from the *global* torch RNG
(three ``torch.rand(n)`` calls: radius, azimuth, polar) and reuses them for every chunk; it never seeds
that RNG, so its context choice is not reproducible. Here the points come from an explicit generator
(:func:`sample_memory_points`), drawn with the same calls in the same order, so
``sample_memory_points(torch.Generator().manual_seed(s))`` is bit-identical to what the reference gets
after ``torch.manual_seed(s)``. The engine draws a fresh set per chunk from (seed, chunk index)
(:mod:`pipeline.generation.seeding`), so that a world session continued later selects exactly what one long
generation would.

Everything is computed on the CPU in float64 (the reference works on float64 numpy poses); inputs may
live on any device.

Cost (one CPU thread, ``python -m pipeline.tools.memory_bench``, docs/PERFORMANCE.md): the block
scoring tests every query camera against two cameras per earlier block and every cone point (~2 500 of
the 50 000), 5 million camera-point pairs for an AR chunk at 1024 latents. Testing them all took 0.03 s
per AR chunk at 128 latents, 0.13 s at 512 and 0.36 s at 1024. The counts are now the same counts got
with less work (:func:`_count_seen`): the cone points are grouped in nested grid cells, a cell that lies
wholly inside or wholly outside a camera's view (with a margin far above rounding) is counted at once,
and only the points of the other cells are tested, with the reference's float operations. An AR chunk
at 1024 latents costs ~8 ms on a path that wanders off (most earlier cameras are far away and drop out
at the first level) and ~50–100 ms in the worst case, a session that circles within 2 units so that
every earlier camera sees part of the view.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "MEMORY_SIZE",
    "NUM_POINTS",
    "TEMPORAL_CONTEXT",
    "sample_memory_points",
    "select_context_latents",
]

MEMORY_SIZE = 20
"""Context latents per 4-latent query (reference ``memory_frames``)."""
TEMPORAL_CONTEXT = 12
"""Most recent latents always kept (reference ``temporal_context_size``)."""
NUM_POINTS = 50_000
"""Monte-Carlo points drawn once per generation."""
POINT_RADIUS = 8.0
"""Radius of the ball the points fill (scene units)."""

_BLOCK = 4  # latents per query / per historical block / size of the always-kept first block
_REPRESENTATIVE_OFFSETS = (0, 2)  # block latents whose poses stand for the block
_FOV_DEG = (60.0, 35.0)  # horizontal, vertical full field of view of the view cones
_MAX_DISTANCE = 8.0  # points farther than this from a historical camera are not seen by it
_DEG_PER_RAD = 180.0 / math.pi


def sample_memory_points(
    generator: torch.Generator,
    num_points: int = NUM_POINTS,
    radius: float = POINT_RADIUS,
) -> torch.Tensor:
    """Draw points uniformly inside a ball of ``radius`` around the origin: float32 ``[num_points, 3]``, CPU.

    Draws three ``torch.rand(num_points)`` tensors from ``generator`` (radius, azimuth, polar cosine, in
    that order), exactly as the reference draws them from the global RNG, so a CPU generator seeded
    with ``s`` reproduces the reference's points after ``torch.manual_seed(s)``. The global RNG is
    never touched.
    """
    if num_points < 0:
        raise ValueError(f"num_points must be >= 0, got {num_points}")
    device = generator.device
    u_radius = torch.rand(num_points, generator=generator, device=device)
    u_azimuth = torch.rand(num_points, generator=generator, device=device)
    u_polar = torch.rand(num_points, generator=generator, device=device)

    # Inverse-CDF sampling: radius ~ r^2 (cube root), azimuth uniform, cos(polar) uniform in [-1, 1].
    r = radius * torch.pow(u_radius, 1 / 3)
    azimuth = 2 * math.pi * u_azimuth
    polar = torch.acos(1 - 2 * u_polar)
    sin_polar = torch.sin(polar)
    points = torch.stack(
        (r * sin_polar * torch.cos(azimuth), r * sin_polar * torch.sin(azimuth), r * torch.cos(polar)),
        dim=1,
    )
    return points.cpu()


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


_TAN_HALF_H = math.tan(math.radians(_FOV_DEG[0] / 2.0))
_WEDGE_LIPSCHITZ = math.sqrt(1.0 + _TAN_HALF_H**2) * (1.0 + 1e-9)
# Slack of the cell classification (scene units): far above float64 rounding of these quantities
# (~1e-13 for coordinates up to 1e3), far below a cell's size.
_SLACK = 1e-6
# Edges of the nested grid cells the cone points are grouped in (scene units, coarse to fine, each half
# the one before so that the grids nest exactly), from measurements: finer cells decide more
# camera-point pairs at the cell level but cost more camera-cell tests.
_CELL_SIZES = (2.0, 1.0, 0.5)


class _Cameras:
    """Per-camera quantities of the seen test, computed once per camera with the reference's float ops."""

    _FIELDS = ("cx", "cy", "cz", "sin_yaw", "cos_yaw", "tan_lower", "tan_upper", "lower_open", "upper_open",
               "sec_lower", "sec_upper", "slack_lower", "slack_upper")

    def __init__(self, centres: torch.Tensor | None = None, forward: torch.Tensor | None = None) -> None:
        if centres is None:
            return
        fx, fy, fz = forward.unbind(-1)
        yaw = torch.atan2(fx, fz)
        pitch_deg = torch.atan2(fy, torch.sqrt(fx**2 + fz**2)) * _DEG_PER_RAD
        half_v = _FOV_DEG[1] / 2.0
        self.cx, self.cy, self.cz = (centres[..., i].contiguous() for i in range(3))
        self.sin_yaw = torch.sin(yaw)
        self.cos_yaw = torch.cos(yaw)
        lower = pitch_deg - half_v
        upper = pitch_deg + half_v
        # Elevation lies in [-90, 90]: a bound beyond it is always met (its tangent is then unused).
        self.lower_open = lower <= -90
        self.upper_open = upper >= 90
        self.tan_lower = torch.tan(torch.deg2rad(lower))
        self.tan_upper = torch.tan(torch.deg2rad(upper))
        # For the cell tests only: an elevation bound sign * (vy - tan * |v_h|) > 0 is Lipschitz in
        # the point with sqrt(1 + tan^2); its rounding grows with |tan|.
        self.sec_lower = torch.sqrt(1.0 + self.tan_lower**2) * (1.0 + 1e-9)
        self.sec_upper = torch.sqrt(1.0 + self.tan_upper**2) * (1.0 + 1e-9)
        self.slack_lower = _SLACK * (1.0 + self.tan_lower.abs())
        self.slack_upper = _SLACK * (1.0 + self.tan_upper.abs())

    def _map(self, fn) -> "_Cameras":
        out = _Cameras()
        for name in self._FIELDS:
            setattr(out, name, fn(getattr(self, name)))
        return out

    def take(self, index: torch.Tensor) -> "_Cameras":
        return self._map(lambda value: value[index])

    def column(self) -> "_Cameras":
        return self._map(lambda value: value[:, None])


def _seen(px, py, pz, cam: _Cameras) -> torch.Tensor:
    """The exact seen test, elementwise over broadcast point coordinates and camera quantities.

    The float operations, their order and precision are the reference's (``_count_seen`` before
    vectorisation), so every camera-point pair gets the same answer whatever the shapes.
    """
    vx, vy, vz = px - cam.cx, py - cam.cy, pz - cam.cz
    along = vx * cam.sin_yaw + vz * cam.cos_yaw  # |v_h| cos(azimuth - yaw)
    across = vx * cam.cos_yaw - vz * cam.sin_yaw  # |v_h| sin(azimuth - yaw)
    seen = along > 0
    seen &= across.abs_() < along.mul_(_TAN_HALF_H)
    horizontal_sq = vx.mul_(vx).add_(vz.mul_(vz))
    seen &= (vy * vy).add_(horizontal_sq) < _MAX_DISTANCE**2
    horizontal = horizontal_sq.sqrt_()
    seen &= cam.lower_open | (vy > horizontal * cam.tan_lower)
    seen &= cam.upper_open | (vy < horizontal.mul_(cam.tan_upper))
    return seen


class _CellLevel:
    """One level of cells: runs of the sorted points, with bounding balls and their child cells."""

    def __init__(self, points: torch.Tensor, key: torch.Tensor) -> None:
        _, counts = torch.unique_consecutive(key, return_counts=True)
        self.counts = counts
        self.offsets = torch.cumsum(counts, 0) - counts
        cell_of_point = torch.repeat_interleave(torch.arange(counts.shape[0]), counts)
        sums = torch.zeros(counts.shape[0], 3, dtype=points.dtype).index_add_(0, cell_of_point, points)
        centres = sums / counts[:, None]
        dist = (points - centres[cell_of_point]).norm(dim=1)
        radius = torch.zeros(counts.shape[0], dtype=points.dtype).scatter_reduce_(
            0, cell_of_point, dist, reduce="amax", include_self=True
        )
        self.x, self.y, self.z = (centres[:, i].contiguous() for i in range(3))
        self.radius = radius + _SLACK
        self.child_start = self.child_count = None  # set by _Cells for all but the finest level


class _Cells:
    """The cone points sorted into nested grid cells (coarse to fine); every cell's points are contiguous."""

    def __init__(self, points: torch.Tensor, sizes=_CELL_SIZES) -> None:
        keys = []
        for size in sizes:
            cell = torch.floor(points / size).to(torch.int64)
            cell -= cell.min(0).values
            extent = cell.max(0).values + 1
            keys.append((cell[:, 0] * extent[1] + cell[:, 1]) * extent[2] + cell[:, 2])
        order = torch.arange(points.shape[0])
        for key in reversed(keys):  # lexicographic: coarsest key first
            order = order[torch.argsort(key[order], stable=True)]
        self.points = points[order]
        self.px, self.py, self.pz = (self.points[:, i].contiguous() for i in range(3))
        self.levels = [_CellLevel(self.points, key[order]) for key in keys]
        for coarse, fine in zip(self.levels, self.levels[1:]):
            coarse.child_start = torch.searchsorted(fine.offsets, coarse.offsets)
            coarse.child_count = torch.searchsorted(fine.offsets, coarse.offsets + coarse.counts) - coarse.child_start


def _classify(cam: _Cameras, x, y, z, radius) -> tuple[torch.Tensor, torch.Tensor]:
    """Cameras against balls (broadcast): (all of the ball seen, none of it seen).

    Conservative: a ball is called inside (outside) only when every point in it is at least ``_SLACK``
    (scaled by the bound's slope) on the seen (unseen) side of every bound, so the exact test of any
    of its points gives that answer despite rounding. Everything else is decided point by point.
    """
    dx, dy, dz = x - cam.cx, y - cam.cy, z - cam.cz
    along = dx * cam.sin_yaw + dz * cam.cos_yaw
    across = dx * cam.cos_yaw - dz * cam.sin_yaw
    wedge_r = radius * _WEDGE_LIPSCHITZ + _SLACK
    along *= _TAN_HALF_H
    left = along - across  # the two vertical planes of the horizontal field of view
    right = along.add_(across)
    horizontal = torch.sqrt(dx * dx + dz * dz)
    dist = torch.sqrt(horizontal * horizontal + dy * dy)
    inside = (left > wedge_r) & (right > wedge_r) & (dist + radius < _MAX_DISTANCE - _SLACK)
    outside = (left < -wedge_r) | (right < -wedge_r) | (dist - radius > _MAX_DISTANCE + _SLACK)
    for tan, sec, slack, is_open, sign in (
        (cam.tan_lower, cam.sec_lower, cam.slack_lower, cam.lower_open, 1.0),
        (cam.tan_upper, cam.sec_upper, cam.slack_upper, cam.upper_open, -1.0),
    ):
        margin = (dy - tan * horizontal) * sign  # the bound is sign * (vy - tan * |v_h|) > 0
        slack = radius * sec + slack
        inside &= is_open | (margin > slack)
        outside |= ~is_open & (margin < -slack)
    return inside, outside


def _expand(pair_cam: torch.Tensor, first: torch.Tensor, count: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each pair (camera, range ``first .. first + count``) as pairs (camera, index in the range)."""
    pair_start = torch.cumsum(count, 0) - count
    cam = torch.repeat_interleave(pair_cam, count)
    index = torch.arange(cam.shape[0]) + torch.repeat_interleave(first - pair_start, count)
    return cam, index


def _count_seen(points: torch.Tensor, centres: torch.Tensor, forward: torch.Tensor) -> torch.Tensor:
    """How many ``points [M, 3]`` each camera (``centres``, ``forward`` ``[..., 3]``) sees; shape ``[...]``.

    A point is seen when it is closer than 8 units, its azimuth is within half the horizontal FOV of
    the camera's yaw and its elevation within half the vertical FOV of the camera's pitch, angles
    taken as ``atan2(x, z)`` and ``atan2(y, hypot(x, z))`` in the shared frame. The angle tests are
    done without per-point trigonometry: rotating the offset by the yaw gives its forward / lateral
    parts, and elevation bounds become slope bounds (elevation is monotonic in ``y / hypot(x, z)``).

    The counts are those of testing every camera-point pair (:func:`_seen`), computed with less work:
    the points are grouped in grid cells with bounding balls, a cell entirely inside (outside) a
    camera's seen region adds its whole count (nothing), and only the points of the remaining cells
    are tested one by one, with the exact float operations of the dense test.
    """
    shape = centres.shape[:-1]
    cam = _Cameras(centres.reshape(-1, 3), forward.reshape(-1, 3))
    counts = torch.zeros(cam.cx.shape[0], dtype=torch.int64)
    if counts.shape[0] == 0 or points.shape[0] == 0:
        return counts.reshape(shape)
    cells = _Cells(points)

    # Coarsest level: every camera against every cell.
    level = cells.levels[0]
    inside, outside = _classify(cam.column(), level.x, level.y, level.z, level.radius)
    counts += (inside.to(torch.int64) * level.counts).sum(1)
    pair_cam, pair_cell = torch.nonzero(~(inside | outside), as_tuple=True)
    # Finer levels: the children of the undecided cells, pair by pair.
    for coarse, level in zip(cells.levels, cells.levels[1:]):
        pair_cam, pair_cell = _expand(pair_cam, coarse.child_start[pair_cell], coarse.child_count[pair_cell])
        pair_cams = cam.take(pair_cam)
        inside, outside = _classify(
            pair_cams, level.x[pair_cell], level.y[pair_cell], level.z[pair_cell], level.radius[pair_cell]
        )
        counts.index_add_(0, pair_cam[inside], level.counts[pair_cell[inside]])
        undecided = ~(inside | outside)
        pair_cam, pair_cell = pair_cam[undecided], pair_cell[undecided]
    # The points of the cells still undecided, one by one.
    level = cells.levels[-1]
    pair_cam, point = _expand(pair_cam, level.offsets[pair_cell], level.counts[pair_cell])
    seen = _seen(cells.px[point], cells.py[point], cells.pz[point], cam.take(pair_cam))
    counts.index_add_(0, pair_cam[seen], torch.ones((), dtype=torch.int64).expand(int(seen.sum())))
    return counts.reshape(shape)
