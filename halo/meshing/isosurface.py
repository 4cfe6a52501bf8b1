"""Isosurface extraction from an implicit field: dense reference and multiresolution (MISE-style).

Both functions take an ``evaluate`` callable mapping ``(N, 3)`` float32 points (in the
coordinates of the extraction box, e.g. metres) to ``(N,)`` values that are *inside-high*:
a point is inside the surface when its value is ``> threshold`` (occupancy probability with
``threshold=0.5``, or a logit with ``threshold=0``).  The grid has ``R + 1`` nodes per axis at
``bounds_min + (bounds_max - bounds_min) * i / R`` and the returned mesh is in those box
coordinates, oriented outward, and closed (the grid is padded with outside values, so a surface
cut by the box gets a cap just outside the box face, at 1/100 of a cell).

Multiresolution extraction
--------------------------
:func:`extract_isosurface` evaluates a coarse ``(R0 + 1)^3`` grid and then, ``upsampling_steps``
times, halves the cell size only where needed.  The value field ``F_l`` at level ``l`` is
defined on *every* node of that level's grid:

* ``F_0`` is the evaluated coarse grid;
* ``F_{l+1}`` is the trilinear 2x upsampling of ``F_l``, overwritten with the evaluated value at
  every node that was evaluated (the nodes of the children of the cells refined at level ``l``).

A cell is refined when its 8 corner values in ``F_l`` lie on both sides of the threshold, plus
(``dilate``, by default at all levels but the last) every cell in its 3x3x3 neighbourhood.
Because a trilinear interpolation of
corners that are all on one side stays on that side, only cells that touch evaluated nodes can
ever change side, so ``F_l`` never has to be built away from the refined region.  Cells next to
the refined region whose corners include freshly evaluated nodes may then straddle the threshold
(the surface leaving the refined region); they are caught and refined at the next level, so the
refined region follows the surface even without dilation.  Nodes evaluated once are never
evaluated again.

``F_l`` is stored as dense arrays on *blocks*: the coarse grid is tiled by cubes of ``c0`` coarse
cells (``c0 * 2**upsampling_steps`` ~ 32 final cells).  A block is kept to the next level only when a
refined cell comes within one cell of it (or it holds inside nodes on the box boundary, which need
a cap), so the
memory follows the surface area instead of the volume: at ``R = 512`` a dense float32 grid would
be 540 MB.  Nodes on block faces exist in several blocks; they are evaluated once and written to
every copy, so the field is single-valued.  Marching cubes (scikit-image, Lewiner) then runs per
block that contains a crossing, and vertices shared by neighbouring blocks are merged by their
exact grid-edge key, which keeps the mesh watertight.

Size: one cohesive module over 500 lines: the dense reference, MISE for one field and MISE for
many fields in lockstep share the grid, refinement and block-wise marching-cubes code.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass

import numpy as np
from skimage.measure import marching_cubes

__all__ = ["ExtractionStats", "extract_isosurface", "extract_isosurface_dense", "extract_isosurfaces"]

#: Aim for blocks of this many final-resolution cells per axis (33^3 nodes, ~140 kB of float32).
#: Smaller blocks follow the surface more tightly but cost more marching-cubes calls; measured on
#: a 2-core box at R=512, 32 was the fastest of 16 / 32 / 64.
_TARGET_BLOCK_CELLS = 32

#: Where the cap of a surface cut by the box lies, in cells outside the box face.  Not 0: vertices
#: of the cap at exactly the boundary node would coincide for different grid edges.
_PAD_FRACTION = 0.01

#: Node values are kept at least this fraction of max|value - threshold| away from the threshold,
#: so no marching-cubes vertex falls (in float32) onto a grid node, where it could no longer be
#: attributed to a unique grid edge.  Moves vertices by < 1e-4 of a cell.
_SANITIZE_REL = 1e-4

Evaluator = Callable[[np.ndarray], np.ndarray]


@dataclass
class ExtractionStats:
    """Cost of one extraction.

    Attributes:
        n_evaluated: points passed to the evaluator in total.
        n_dense_equivalent: ``(R + 1)**3``, the nodes a dense grid at the same resolution needs.
        resolution: effective resolution ``R`` (cells per axis).
        seconds: wall time of the whole extraction, evaluator included (s).
        seconds_eval: wall time spent inside the evaluator (s).
    """

    n_evaluated: int
    n_dense_equivalent: int
    resolution: int
    seconds: float
    seconds_eval: float

    @property
    def seconds_overhead(self) -> float:
        """Wall time not spent in the evaluator (s)."""
        return self.seconds - self.seconds_eval

    @property
    def evaluated_fraction(self) -> float:
        """``n_evaluated / n_dense_equivalent``."""
        return self.n_evaluated / self.n_dense_equivalent


# --------------------------------------------------------------------------------------------------
# argument checking and evaluation


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_bounds(bounds_min: Sequence[float], bounds_max: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    lo = np.asarray(bounds_min, dtype=np.float64)
    hi = np.asarray(bounds_max, dtype=np.float64)
    for name, b in (("bounds_min", lo), ("bounds_max", hi)):
        if b.shape != (3,) or not np.all(np.isfinite(b)):
            raise ValueError(f"{name} must be 3 finite numbers, got {b.tolist()!r}")
    if not np.all(hi > lo):
        raise ValueError(f"bounds_max must be > bounds_min on every axis, got {lo.tolist()} .. {hi.tolist()}")
    return lo, hi


def _check_threshold(threshold: float) -> float:
    try:
        thr = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a number, got {threshold!r}") from None
    if not np.isfinite(thr):
        raise ValueError(f"threshold must be finite, got {threshold!r}")
    return thr


class _CountingEvaluator:
    """Turns node requests into point batches for the evaluator, checks its output, counts points and time.

    ``grid_step`` (3,) is the box size per grid index at the final resolution, so callers pass
    integer node coordinates at final resolution and never rebuild float coordinates themselves
    (the same node then always gets bit-identical coordinates, whichever level evaluates it).
    :meth:`request` is a generator: it yields ``(n, 3)`` float32 point batches and receives their
    values, so one driver can serve several extractions with one evaluator call
    (:func:`extract_isosurfaces`).
    """

    def __init__(self, lo: np.ndarray, grid_step: np.ndarray, batch_size: int):
        # float32 arithmetic: every caller builds node coordinates here, so a node gets the
        # same coordinates whichever level (or the dense reference) evaluates it.
        self.lo = lo.astype(np.float32)
        self.grid_step = grid_step.astype(np.float32)
        self.batch_size = batch_size
        self.n_evaluated = 0
        self.seconds = 0.0
        self.max_abs_dev = 0.0  # max |value - threshold| seen; scales the sanitisation margin

    def request(self, nodes: np.ndarray, threshold: float) -> Generator[np.ndarray, np.ndarray, np.ndarray]:
        """Values (N,) float32 at final-resolution integer node coordinates ``nodes`` (N, 3)."""
        n = len(nodes)
        out = np.empty(n, dtype=np.float32)
        for start in range(0, n, self.batch_size):
            idx = nodes[start : start + self.batch_size]
            pts = idx.astype(np.float32) * self.grid_step + self.lo
            t0 = time.perf_counter()
            vals = yield pts
            self.seconds += time.perf_counter() - t0
            vals = np.asarray(vals)
            if vals.shape not in ((len(pts),), (len(pts), 1)):
                raise ValueError(
                    f"evaluate returned an array of shape {vals.shape} for {len(pts)} points, "
                    f"expected ({len(pts)},)"
                )
            vals = vals.reshape(-1).astype(np.float32)
            bad = ~np.isfinite(vals)
            if bad.any():
                raise ValueError(
                    f"evaluate returned {int(bad.sum())} non-finite (NaN/inf) values, "
                    f"e.g. at point {pts[np.argmax(bad)].tolist()}"
                )
            out[start : start + len(pts)] = vals
        self.n_evaluated += n
        if n:
            self.max_abs_dev = max(self.max_abs_dev, float(np.abs(out - np.float32(threshold)).max()))
        return out


def _evaluate_grid(ev: _CountingEvaluator, cells: int, stride: int, threshold: float):
    """Evaluate every node of a ``(cells + 1)^3`` grid whose node spacing is ``stride`` final cells.

    Node coordinates are built one batch at a time: at R = 256 the full (N, 3) index array
    alone would take 400 MB.  A generator (see :meth:`_CountingEvaluator.request`).

    Returns:
        (cells + 1, cells + 1, cells + 1) float32 values.
    """
    shape = (cells + 1,) * 3
    total = int(np.prod(shape))
    out = np.empty(total, dtype=np.float32)
    for start in range(0, total, ev.batch_size):
        lin = np.arange(start, min(total, start + ev.batch_size))
        nodes = np.stack(np.unravel_index(lin, shape), axis=1) * stride
        out[start : start + len(lin)] = yield from ev.request(nodes, threshold)
    return out.reshape(shape)


# --------------------------------------------------------------------------------------------------
# batched block operations; arrays are (n_blocks, nx, ny, nz) and "cells" are between nodes


def _pair_reduce(a: np.ndarray, op: np.ufunc) -> np.ndarray:
    """Reduce each cell's 8 corners: (B, m, m, m) node array -> (B, m-1, m-1, m-1) cell array."""
    a = op(a[:, :-1], a[:, 1:])
    a = op(a[:, :, :-1], a[:, :, 1:])
    return op(a[:, :, :, :-1], a[:, :, :, 1:])


def _spread_to_nodes(cells: np.ndarray) -> np.ndarray:
    """Nodes touched by any true cell: (B, m, m, m) bool -> (B, m+1, m+1, m+1) bool."""
    out = cells
    for ax in (1, 2, 3):
        shape = list(out.shape)
        shape[ax] += 1
        grown = np.zeros(shape, dtype=bool)
        lo = [slice(None)] * 4
        hi = [slice(None)] * 4
        lo[ax] = slice(0, -1)
        hi[ax] = slice(1, None)
        grown[tuple(lo)] = out
        grown[tuple(hi)] |= out
        out = grown
    return out


def _with_halo(cells: np.ndarray, coords: np.ndarray, block_map: np.ndarray) -> np.ndarray:
    """Surround each block's cell mask with the adjacent layer of its neighbours' cells.

    Args:
        cells: (B, n, n, n) bool per-block cell mask.
        coords: (B, 3) int block coordinates.
        block_map: (nb, nb, nb) int, index into the block arrays or -1 for blocks not stored.

    Returns:
        (B, n+2, n+2, n+2) bool; the ring is False where the neighbour is outside the grid or not
        stored (a block is only dropped when nothing near it is refined, so this loses nothing
        but dilation into it).
    """
    nblk, n = cells.shape[0], cells.shape[1]
    out = np.zeros((nblk, n + 2, n + 2, n + 2), dtype=bool)
    out[:, 1:-1, 1:-1, 1:-1] = cells
    nb = block_map.shape[0]
    src_of = {-1: slice(n - 1, n), 0: slice(0, n), 1: slice(0, 1)}
    dst_of = {-1: slice(0, 1), 0: slice(1, n + 1), 1: slice(n + 1, n + 2)}
    for d in itertools.product((-1, 0, 1), repeat=3):
        if d == (0, 0, 0):
            continue
        nc = coords + np.asarray(d)
        ok = np.all((nc >= 0) & (nc < nb), axis=1)
        nbr = np.full(nblk, -1, dtype=np.int64)
        nbr[ok] = block_map[nc[ok, 0], nc[ok, 1], nc[ok, 2]]
        has = np.nonzero(nbr >= 0)[0]
        if len(has) == 0:
            continue
        src = (nbr[has], src_of[d[0]], src_of[d[1]], src_of[d[2]])
        out[(has, dst_of[d[0]], dst_of[d[1]], dst_of[d[2]])] = cells[src]
    return out


def _box_dilate_halo(padded: np.ndarray) -> np.ndarray:
    """3x3x3 dilation of a haloed mask: (B, n+2, n+2, n+2) -> (B, n, n, n)."""
    a = padded[:, :-2] | padded[:, 1:-1] | padded[:, 2:]
    a = a[:, :, :-2] | a[:, :, 1:-1] | a[:, :, 2:]
    return a[:, :, :, :-2] | a[:, :, :, 1:-1] | a[:, :, :, 2:]


def _upsample(values: np.ndarray) -> np.ndarray:
    """Trilinear 2x upsampling on the nodes: (B, m, m, m) -> (B, 2m-1, 2m-1, 2m-1).

    At grid midpoints trilinear interpolation is separable, so it is three 1-D midpoint passes,
    done in place on strided views of the output (no temporaries of the output's size).
    """
    nblk, m = values.shape[0], values.shape[1]
    out = np.empty((nblk, 2 * m - 1, 2 * m - 1, 2 * m - 1), dtype=values.dtype)
    out[:, ::2, ::2, ::2] = values
    mid = out[:, 1::2, ::2, ::2]
    np.add(values[:, :-1], values[:, 1:], out=mid)
    mid *= 0.5
    mid = out[:, :, 1::2, ::2]
    np.add(out[:, :, 0:-1:2, ::2], out[:, :, 2::2, ::2], out=mid)
    mid *= 0.5
    mid = out[:, :, :, 1::2]
    np.add(out[:, :, :, 0:-1:2], out[:, :, :, 2::2], out=mid)
    mid *= 0.5
    return out


def _inside_on_box_face(inside: np.ndarray, coords: np.ndarray, nb: int) -> np.ndarray:
    """(B,) bool: the block has an inside node on the box boundary (which needs a cap).

    Args:
        inside: (B, m, m, m) bool node mask; coords: (B, 3) block coordinates; nb: blocks per axis.
    """
    out = np.zeros(len(coords), dtype=bool)
    for a in range(3):
        for side, c in ((0, 0), (-1, nb - 1)):
            out |= (coords[:, a] == c) & np.take(inside, side, axis=a + 1).any(axis=(1, 2))
    return out


def _block_cells_level0(resolution_0: int, upsampling_steps: int) -> int:
    """Coarse cells per block edge: the largest divisor of R0 giving <= ~32 final cells."""
    target = max(1, _TARGET_BLOCK_CELLS // 2**upsampling_steps)
    return max(d for d in range(1, min(target, resolution_0) + 1) if resolution_0 % d == 0)


# --------------------------------------------------------------------------------------------------
# marching cubes on one sub-grid


def _sanitize_margin(threshold: float, max_abs_dev: float) -> float:
    margin = _SANITIZE_REL * max_abs_dev
    # Must survive float32 rounding next to the threshold.
    return max(margin, 1e-6 * abs(threshold), 1e-30)


def _sanitize(values: np.ndarray, threshold: float, margin: float) -> np.ndarray:
    """Push values within ``margin`` of the threshold out to ``threshold +- margin`` (side kept)."""
    lo = np.float32(threshold - margin)
    hi = np.float32(threshold + margin)
    if lo >= threshold:
        lo = np.nextafter(np.float32(threshold), np.float32(-np.inf))
    if hi <= threshold:
        hi = np.nextafter(np.float32(threshold), np.float32(np.inf))
    out = values.copy()
    inside = values > threshold
    out[inside & (values < hi)] = hi
    out[~inside & (values > lo)] = lo
    return out


def _marching_cubes_padded(
    vol: np.ndarray,
    origin: np.ndarray,
    pad_lo: np.ndarray,
    pad_hi: np.ndarray,
    threshold: float,
    margin: float,
    padded_size: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Marching cubes on one sub-grid, padded with outside values on the given sides.

    Args:
        vol: (nx, ny, nz) float32 node values of a sub-grid.
        origin: (3,) int, global final-resolution index of ``vol[0, 0, 0]``.
        pad_lo, pad_hi: (3,) bool, add one outside layer before index 0 / after the last index.
        threshold: iso level (inside = value > threshold).
        margin: sanitisation margin, global for the whole extraction (shared nodes must agree).
        padded_size: ``R + 3``, nodes per axis of the globally padded grid (for the edge keys).

    Returns:
        verts (V, 3) float64 in global grid units (node i at i), faces (F, 3) int64 oriented
        outward, keys (V,) int64: the global grid edge each vertex lies on, or a negative
        placeholder for vertices inside a cell (Lewiner's extra vertex, never shared).
    """
    vol = _sanitize(vol, threshold, margin)
    widths = [(int(a), int(b)) for a, b in zip(pad_lo, pad_hi, strict=True)]
    if any(a or b for a, b in widths):
        padded = np.pad(vol, widths, mode="edge")
        ring = np.ones(padded.shape, dtype=bool)
        ring[tuple(slice(a, s - b) for (a, b), s in zip(widths, padded.shape, strict=True))] = False
        v = padded[ring].astype(np.float64)
        # Per-node pad value: an inside boundary node's crossing then lands _PAD_FRACTION of a
        # cell outside the box, whatever the scale of the field.
        k = (1.0 - _PAD_FRACTION) / _PAD_FRACTION
        padded[ring] = (threshold - k * np.maximum(v - threshold, 0.0) - margin).astype(np.float32)
        vol = padded
    # Lewiner's 'descent' assumes inside-low fields; ours are inside-high, so 'ascent' gives
    # outward-facing triangles (checked by the signed-volume tests).
    verts, faces, _, _ = marching_cubes(vol, level=threshold, gradient_direction="ascent")
    frac = np.abs(verts - np.round(verts))
    nonint = frac > 1e-5
    on_edge = nonint.sum(axis=1) == 1
    axis = np.argmax(frac, axis=1)
    low = np.round(verts).astype(np.int64)
    ii = np.arange(len(verts))
    low[ii, axis] = np.floor(verts[ii, axis]).astype(np.int64)
    shift = np.asarray(origin, dtype=np.int64) - pad_lo.astype(np.int64)
    g = low + shift + 1  # +1: index in the globally padded grid, which starts at node -1
    keys = ((g[:, 0] * padded_size + g[:, 1]) * padded_size + g[:, 2]) * 3 + axis
    keys[~on_edge] = -1
    return verts.astype(np.float64) + shift, faces.astype(np.int64), keys


def _to_box(verts_grid: np.ndarray, lo: np.ndarray, hi: np.ndarray, resolution: int) -> np.ndarray:
    return lo + verts_grid * ((hi - lo) / resolution)


def _empty_mesh() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 3), dtype=np.float64), np.zeros((0, 3), dtype=np.int64)


# --------------------------------------------------------------------------------------------------
# the two stages of the multiresolution extraction


def _evaluate_into_blocks(
    ev: _CountingEvaluator,
    need: np.ndarray,
    coords: np.ndarray,
    block_map: np.ndarray,
    values: np.ndarray,
    evaluated: np.ndarray,
    n: int,
    steps_left: int,
    threshold: float,
):
    """Evaluate the nodes flagged in ``need`` once each and write them into every block copy.

    Args:
        need: (B, n+1, n+1, n+1) bool, nodes to evaluate (per block; face nodes may repeat).
        coords: (B, 3) block coordinates; block_map: (nb, nb, nb) their indices or -1.
        values, evaluated: (B, n+1, n+1, n+1) float32 / bool, updated in place.
        n: cells per block edge at this level; steps_left: levels still below it (for the
            conversion to final-resolution node indices).

    A generator (see :meth:`_CountingEvaluator.request`).
    """
    m = n + 1
    flat = np.flatnonzero(need)
    blk, cell = np.divmod(flat, m**3)
    local = np.indices((m, m, m), dtype=np.int32).reshape(3, -1)  # (3, m^3) per-block lookup table
    on_face = np.any((local == 0) | (local == n), axis=0)[cell]
    # Global node index at this level, (3, N) int32 (R <= 2^31 - 1 is far beyond memory anyway).
    glob = (coords.T.astype(np.int32) * n)[:, blk] + local[:, cell]
    # Nodes strictly inside a block exist once; only face nodes can be requested twice.
    inner_flat = flat[~on_face]
    face_glob = glob[:, on_face]
    size = block_map.shape[0] * n + 1
    keys = np.ravel_multi_index(face_glob, (size, size, size))
    face_glob = face_glob[:, np.unique(keys, return_index=True)[1]]
    nodes = np.concatenate([glob[:, ~on_face], face_glob], axis=1).T
    vals = yield from ev.request(nodes * np.int32(2**steps_left), threshold)

    values.reshape(-1)[inner_flat] = vals[: len(inner_flat)]
    evaluated.reshape(-1)[inner_flat] = True

    # Every copy of a face node: along each axis the block below also holds it when the node is
    # on that block's upper face.  All 8 combinations at once, (8, 3, N_face).
    face_vals = vals[len(inner_flat) :]
    q, rem = np.divmod(face_glob, n)
    lower = np.array(list(itertools.product((0, 1), repeat=3)), dtype=np.int32)[:, :, None]
    bc = q[None] - lower
    nb = block_map.shape[0]
    ok = np.all(((lower == 0) | (rem[None] == 0)) & (bc >= 0) & (bc < nb), axis=1)  # (8, N_face)
    combo, node = np.nonzero(ok)
    bc = bc[combo, :, node]  # (K, 3)
    idx = block_map[bc[:, 0], bc[:, 1], bc[:, 2]]
    stored = idx >= 0
    loc = face_glob[:, node[stored]] - bc[stored].T * n
    dst = ((idx[stored] * m + loc[0]) * m + loc[1]) * m + loc[2]
    values.reshape(-1)[dst] = face_vals[node[stored]]
    evaluated.reshape(-1)[dst] = True


def _mesh_blocks(
    values: np.ndarray, coords: np.ndarray, n: int, nb: int, res: int, threshold: float, margin: float
) -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes per block with a crossing, merged into one mesh.

    Args:
        values: (B, n+1, n+1, n+1) float32 final-resolution node values per block.
        coords: (B, 3) block coordinates; n: cells per block edge; nb: blocks per axis.
        res: final resolution R; threshold, margin: iso level and sanitisation margin.

    Returns:
        verts (V, 3) float64 in final grid units, faces (F, 3) int64.
    """
    inside = values > threshold
    any_in = inside.any(axis=(1, 2, 3))
    boundary = np.any((coords == 0) | (coords == nb - 1), axis=1)
    crossing = any_in & (boundary | ~inside.all(axis=(1, 2, 3)))
    all_v, all_f, all_k = [], [], []
    n_verts = 0
    for i in np.nonzero(crossing)[0]:
        v, f, k = _marching_cubes_padded(
            values[i], coords[i] * n, coords[i] == 0, coords[i] == nb - 1, threshold, margin, res + 3
        )
        all_v.append(v)
        all_f.append(f + n_verts)
        all_k.append(k)
        n_verts += len(v)
    if not all_v:
        return _empty_mesh()
    verts = np.concatenate(all_v)
    faces = np.concatenate(all_f)
    keys = np.concatenate(all_k)
    # Vertices inside a cell belong to one block only: give them distinct keys so they survive.
    interior = keys < 0
    keys[interior] = -1 - np.arange(int(interior.sum()))
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return verts[first], inverse.reshape(-1)[faces]


# --------------------------------------------------------------------------------------------------
# public API


def _stats(ev: _CountingEvaluator, res: int, t_start: float) -> ExtractionStats:
    return ExtractionStats(
        n_evaluated=ev.n_evaluated,
        n_dense_equivalent=(res + 1) ** 3,
        resolution=res,
        seconds=time.perf_counter() - t_start,
        seconds_eval=ev.seconds,
    )


def extract_isosurface_dense(
    evaluate: Evaluator,
    bounds_min: Sequence[float],
    bounds_max: Sequence[float],
    resolution: int,
    threshold: float = 0.5,
    batch_size: int = 100_000,
) -> tuple[np.ndarray, np.ndarray, ExtractionStats]:
    """Reference extraction: evaluate all ``(R + 1)^3`` nodes, then one marching-cubes call.

    Memory is a few float32 copies of the full grid (~16 bytes per node), so keep ``resolution``
    <= ~300; that is what :func:`extract_isosurface` avoids.

    Args:
        evaluate: ``(N, 3)`` float32 points in box coordinates -> ``(N,)`` inside-high values.
        bounds_min, bounds_max: (3,) corners of the box; the grid spans it exactly.
        resolution: ``R``, cells per axis (>= 2).
        threshold: iso level; inside is ``value > threshold``.
        batch_size: points per ``evaluate`` call.

    Returns:
        vertices (V, 3) float64 in box coordinates, faces (F, 3) int64 oriented outward, stats.
        No crossing gives ``(0, 3)``-shaped arrays.
    """
    return _drive(_dense_steps(bounds_min, bounds_max, resolution, threshold, batch_size), evaluate)


def _dense_steps(bounds_min, bounds_max, resolution, threshold, batch_size):
    t_start = time.perf_counter()
    lo, hi = _check_bounds(bounds_min, bounds_max)
    res = _check_int("resolution", resolution, 2)
    thr = _check_threshold(threshold)
    batch = _check_int("batch_size", batch_size, 1)
    ev = _CountingEvaluator(lo, (hi - lo) / res, batch)

    values = yield from _evaluate_grid(ev, res, 1, thr)
    if (values > thr).any():
        # There is at least the cap against the padding, so marching cubes finds a surface.
        margin = _sanitize_margin(thr, ev.max_abs_dev)
        yes = np.ones(3, dtype=bool)
        verts, faces, _ = _marching_cubes_padded(
            values, np.zeros(3, np.int64), yes, yes, thr, margin, res + 3
        )
        verts = _to_box(verts, lo, hi, res)
    else:
        verts, faces = _empty_mesh()
    return verts, faces, _stats(ev, res, t_start)


def extract_isosurface(
    evaluate: Evaluator,
    bounds_min: Sequence[float],
    bounds_max: Sequence[float],
    resolution_0: int = 32,
    upsampling_steps: int = 2,
    threshold: float = 0.5,
    batch_size: int = 100_000,
    *,
    dilate: str = "coarse",
) -> tuple[np.ndarray, np.ndarray, ExtractionStats]:
    """Multiresolution isosurface extraction (see the module docstring for the algorithm).

    Args:
        evaluate: ``(N, 3)`` float32 points in box coordinates -> ``(N,)`` inside-high values.
        bounds_min, bounds_max: (3,) corners of the box; the grid spans it exactly.
        resolution_0: ``R0``, cells per axis of the coarse grid (>= 2); fully evaluated.
        upsampling_steps: number of 2x refinements; final resolution ``R = R0 * 2**steps``.
        threshold: iso level; inside is ``value > threshold``.
        batch_size: points per ``evaluate`` call.
        dilate: where to also refine the 26 neighbours of every cell the surface crosses, so
            that parts thinner than a cell that poke out of the refined region between nodes are
            followed: ``"coarse"`` (every refinement but the last), ``"all"`` or ``"none"``.
            Dilating the last refinement roughly doubles the evaluations (that level dominates
            the count) and recovers little, since features are then already a cell or two wide.

    Returns:
        vertices (V, 3) float64 in box coordinates, faces (F, 3) int64 oriented outward, stats.
        No crossing gives ``(0, 3)``-shaped arrays.
    """
    steps = _mise_steps(bounds_min, bounds_max, resolution_0, upsampling_steps, threshold, batch_size, dilate)
    return _drive(steps, evaluate)


def _mise_steps(bounds_min, bounds_max, resolution_0, upsampling_steps, threshold, batch_size, dilate):
    t_start = time.perf_counter()
    lo, hi = _check_bounds(bounds_min, bounds_max)
    r0 = _check_int("resolution_0", resolution_0, 2)
    steps = _check_int("upsampling_steps", upsampling_steps, 0)
    thr = _check_threshold(threshold)
    batch = _check_int("batch_size", batch_size, 1)
    if dilate not in ("none", "coarse", "all"):
        raise ValueError(f'dilate must be "none", "coarse" or "all", got {dilate!r}')
    res = r0 * 2**steps
    ev = _CountingEvaluator(lo, (hi - lo) / res, batch)

    # Level 0: the whole coarse grid.
    coarse = yield from _evaluate_grid(ev, r0, 2**steps, thr)

    n = _block_cells_level0(r0, steps)  # cells per block edge at the current level
    nb = r0 // n  # blocks per axis, the same at every level
    coords = np.stack(np.meshgrid(*(np.arange(nb),) * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    span = coords[:, :, None] * n + np.arange(n + 1)  # (B, 3, n+1) node indices per axis
    values = coarse[span[:, 0, :, None, None], span[:, 1, None, :, None], span[:, 2, None, None, :]]
    if steps:
        # Most coarse blocks are far from the surface: drop those that the first level cannot
        # keep (no crossing within 3 cells: dilation, margin and touching, see below) before
        # running the per-block machinery on them.  Cheap here because the coarse grid is dense.
        inside = coarse[None] > thr
        near = _pair_reduce(inside, np.logical_or) & ~_pair_reduce(inside, np.logical_and)
        for _ in range(3):
            near = _box_dilate_halo(np.pad(near, ((0, 0), (1, 1), (1, 1), (1, 1))))
        near = near[0].reshape(nb, n, nb, n, nb, n).any(axis=(1, 3, 5))
        keep = near[coords[:, 0], coords[:, 1], coords[:, 2]] | _inside_on_box_face(values > thr, coords, nb)
        coords, values = coords[keep], values[keep]
    evaluated = np.ones(values.shape, dtype=bool)
    del coarse, span

    for level in range(steps):
        block_map = np.full((nb, nb, nb), -1, dtype=np.int64)
        block_map[coords[:, 0], coords[:, 1], coords[:, 2]] = np.arange(len(coords))
        inside = values > thr
        refine = _pair_reduce(inside, np.logical_or) & ~_pair_reduce(inside, np.logical_and)
        if dilate == "all" or (dilate == "coarse" and level < steps - 1):
            refine = _box_dilate_halo(_with_halo(refine, coords, block_map))

        # Keep a block when a refined cell comes within one cell of it.  Refined cells of the next
        # level lie within one cell (of this level) of this level's refined cells: the surface
        # can leave the refined region through freshly evaluated nodes, and dilation adds one
        # more fine cell.  A block dropped now therefore never sees an evaluated node or a
        # crossing later; with a margin of 0 it could, and its missing half of the shared face
        # would leave a crack.  Also keep blocks with inside nodes on the box boundary (they
        # need the cap against the padding).
        reach = _box_dilate_halo(_with_halo(refine, coords, block_map))
        keep = _with_halo(reach, coords, block_map).any(axis=(1, 2, 3))
        keep |= _inside_on_box_face(inside, coords, nb)
        coords, values, evaluated, refine = coords[keep], values[keep], evaluated[keep], refine[keep]
        block_map = np.full((nb, nb, nb), -1, dtype=np.int64)
        block_map[coords[:, 0], coords[:, 1], coords[:, 2]] = np.arange(len(coords))

        values = _upsample(values)
        was_evaluated = evaluated
        evaluated = np.zeros(values.shape, dtype=bool)
        evaluated[:, ::2, ::2, ::2] = was_evaluated
        n *= 2
        children = refine.repeat(2, axis=1).repeat(2, axis=2).repeat(2, axis=3)
        need = _spread_to_nodes(children) & ~evaluated
        del children, was_evaluated, refine, inside
        yield from _evaluate_into_blocks(
            ev, need, coords, block_map, values, evaluated, n, steps - level - 1, thr
        )

    verts, faces = _mesh_blocks(values, coords, n, nb, res, thr, _sanitize_margin(thr, ev.max_abs_dev))
    verts = _to_box(verts, lo, hi, res)
    return verts, faces, _stats(ev, res, t_start)


def _drive(steps: Generator, evaluate: Evaluator):
    """Run an extraction generator, answering each point batch it yields with ``evaluate``."""
    if not callable(evaluate):
        raise ValueError(f"evaluate must be callable, got {type(evaluate).__name__}")
    try:
        pts = next(steps)
        while True:
            pts = steps.send(evaluate(pts))
    except StopIteration as done:
        return done.value


def extract_isosurfaces(
    evaluate_many: Callable[[list[np.ndarray], list[int]], list[np.ndarray]],
    count: int,
    bounds_min: Sequence[float],
    bounds_max: Sequence[float],
    resolution_0: int = 32,
    upsampling_steps: int = 2,
    threshold: float = 0.5,
    batch_size: int = 1_000_000,
    *,
    dense: bool = False,
    dilate: str = "coarse",
) -> list[tuple[np.ndarray, np.ndarray, ExtractionStats]]:
    """``count`` extractions in lockstep, one ``evaluate_many`` call per round for all of them.

    ``evaluate_many(points, which)`` gets the pending ``(N_i, 3)`` point batches of the
    extractions ``which`` (indices into ``range(count)``) and returns their values in the same
    order, e.g. several hands through one network call.  Each extraction is exactly
    :func:`extract_isosurface` (or :func:`extract_isosurface_dense` with ``dense``, at
    ``resolution_0 * 2**upsampling_steps``) of its own field, so the meshes are the same as one
    by one.  Per-extraction ``seconds`` are the shared wall times of the whole batch.
    """
    count = _check_int("count", count, 0)
    if dense:
        res = resolution_0 * 2**upsampling_steps
        gens = [_dense_steps(bounds_min, bounds_max, res, threshold, batch_size) for _ in range(count)]
    else:
        gens = [
            _mise_steps(bounds_min, bounds_max, resolution_0, upsampling_steps, threshold, batch_size, dilate)
            for _ in range(count)
        ]
    results: list = [None] * count
    pending: dict[int, np.ndarray] = {}
    for i, gen in enumerate(gens):
        try:
            pending[i] = next(gen)
        except StopIteration as done:
            results[i] = done.value
    while pending:
        which = sorted(pending)
        values = evaluate_many([pending[i] for i in which], which)
        if len(values) != len(which):
            raise ValueError(f"evaluate_many returned {len(values)} arrays for {len(which)} point batches")
        for i, vals in zip(which, values, strict=True):
            try:
                pending[i] = gens[i].send(vals)
            except StopIteration as done:
                results[i] = done.value
                del pending[i]
    return results
