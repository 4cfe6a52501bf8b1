"""Fast occupancy of one hand for mesh extraction: skipping parts that cannot win.

The max over 16 parts only ever takes its value from one part, and near any
point only a few parts (the phalanges there) can be occupied.
:class:`HandOccupancyField` evaluates a part at a point only if the part can
attain the max there.  Two ways of deciding that:

``cull="radius"`` (default): a per-part distance bound in canonical space.
Every part's bone is a segment in the shared canonical hand space; on
construction the field evaluates all parts on a 33^3 calibration grid and
records, per part, the farthest canonical distance from its bone at which it
wins with occupancy >= ``prob_floor``; queries then evaluate part k only
within that radius plus a margin (``radius_margin`` + one calibration cell).
The bound is calibrated per hand from data, not proven: bench/bench_mesh.py
and the tests measure identical thresholded labels against the full
evaluation on near-surface points and identical MISE meshes, at ~3 parts per
point during a 64/3 extraction.

``cull="ibp"``: interval bound propagation through each part MLP over small
cubes holding the query points gives guaranteed logit bounds; a part is kept
where ``ub >= max(max_j lb_j, floor_logit)``.  Exact (wherever occupancy >=
``prob_floor`` the value is the full maximum), but the released network is so
steep that near the surface ~8 of 16 parts survive, so it saves little.

Points are in the original network's model units, in the normalized hand
frame (see :meth:`halo.core.model.HaloModel.points_to_model`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from halo.core.model import HaloModel
from halo.core.skeleton import MODEL_BOX_HALF_SIDE
from halo.utils.allocator import tune_allocator


@dataclass
class FieldStats:
    points: int = 0  # query points evaluated
    part_evaluations: int = 0  # (point, part) MLP evaluations actually run
    num_parts: int = 16

    @property
    def parts_per_point(self) -> float:
        return self.part_evaluations / max(self.points, 1)


class HandOccupancyField:
    """Occupancy of one posed hand as a function of model-space points, with optional part culling."""

    def __init__(
        self,
        model: HaloModel,
        keypoints: torch.Tensor | np.ndarray,
        is_left: bool = False,
        *,
        cull: bool | str = "radius",
        prob_floor: float = 1e-3,
        radius_margin: float = 0.02,
        calibration_resolution: int = 32,
        half_side: float = MODEL_BOX_HALF_SIDE,
        cull_cell_size: float = 0.0172,
        chunk_size: int = 4096,
    ):
        tune_allocator()  # big evaluations: keep freed blocks instead of re-faulting pages (see halo.utils.allocator)
        kp = torch.as_tensor(keypoints, dtype=torch.float32).reshape(1, 21, 3)
        self.model = model
        net = model.network
        self.num_parts = net.config.num_parts
        with torch.no_grad():
            self.pose = model.canonicalize(kp, torch.tensor([is_left]))
            mats, lengths = model.model_inputs(self.pose)
            self.rot = mats[0, :, :3, :3].float()  # (P,3,3)
            self.trans = mats[0, :, :3, 3].float()  # (P,3)
            bias0 = net.first_layer_bias(net.part_codes(mats, lengths))[0].float()  # (P,H)
        self.weights = [w.detach().float() for w in net.weights]
        self.biases = [b.detach().float() for b in net.biases]
        w0x = self.weights[0][:, :, :3]  # (P,H,3)
        # posed model point -> first pre-activation: W0x (R p + t) + bias0 = A p + c
        self.first_a = w0x @ self.rot  # (P,H,3)
        self.first_c = (w0x @ self.trans[..., None]).squeeze(-1) + bias0  # (P,H)
        self.residual = set(net.config.residual_layers)
        self.slope = net.config.leaky_slope
        self.smooth_max = net.config.smooth_max
        self.chunk_size = chunk_size
        if cull is True:
            cull = "radius"
        if cull not in (False, "radius", "ibp"):
            raise ValueError(f"cull must be False, 'radius' or 'ibp', got {cull!r}")
        self.cull = False if self.smooth_max else cull  # smooth max mixes all parts: nothing to cull
        trained_radii = net.config.part_radii
        if trained_radii is not None:
            # Culling is part of this model's definition (it was trained that way): always apply it.
            self.cull = "radius"
        # Canonical bone segment of every part (model units): where the part's flesh is.
        with torch.no_grad():
            self.segments = model.part_segments(self.pose, mats)[0].float()  # (P,2,3)
        self.radius_margin = radius_margin
        self.part_radius: torch.Tensor | None = None  # (P,) canonical radius per part, model units
        self.floor_logit = float(np.log(prob_floor / (1 - prob_floor)))
        self.stats = FieldStats(num_parts=self.num_parts)
        self.cull_cell_size = cull_cell_size
        self.bounded_cells = 0
        if trained_radii is not None:
            self.part_radius = torch.tensor(trained_radii, dtype=torch.float32)
        elif self.cull == "radius":
            self.calibrate_radii(calibration_resolution, half_side)

    # ------------------------------------------------------------------ interval bounds
    def part_logit_bounds(self, centres: torch.Tensor, half: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Lower/upper bounds (P,C) of every part's logit over cubes (C,3) of half side ``half``."""
        a, c0 = self.first_a, self.first_c
        mid = torch.einsum("phi,ci->pch", a, centres) + c0[:, None]
        rad = (a.abs().sum(-1) * half)[:, None].expand_as(mid)
        lo, hi = F.leaky_relu(mid - rad, self.slope), F.leaky_relu(mid + rad, self.slope)
        n = len(self.weights)
        for i in range(1, n):
            mid, rad = (hi + lo) / 2, (hi - lo) / 2
            w = self.weights[i]
            if i in self.residual:
                w = w + torch.eye(w.shape[-1], dtype=w.dtype)
            mid = mid @ w.transpose(-1, -2) + self.biases[i][:, None]
            rad = rad @ w.abs().transpose(-1, -2)
            lo, hi = mid - rad, mid + rad
            if i < n - 1:
                lo, hi = F.leaky_relu(lo, self.slope), F.leaky_relu(hi, self.slope)
        return lo.squeeze(-1), hi.squeeze(-1)

    def _candidate_mask(self, centres: torch.Tensor, half: float) -> torch.Tensor:
        lo, hi = self.part_logit_bounds(centres, half)
        best_lo = lo.max(dim=0).values.clamp_min(self.floor_logit)  # (C,)
        return (hi >= best_lo).T  # (C,P)

    def candidate_parts(self, points: torch.Tensor) -> torch.Tensor:
        """(N,P) bool: parts that can attain the max at each point (exact, see module doc).

        Points are bucketed into cubes of side ``cull_cell_size``; bounds are
        computed once per occupied cube, so the cost follows the number of
        distinct cubes (a thin shell around the surface during MISE), not N.
        """
        cell = self.cull_cell_size
        ijk = torch.floor(points / cell).long() + (1 << 20)
        key = (ijk[:, 0] << 42) | (ijk[:, 1] << 21) | ijk[:, 2]
        uniq, inverse = torch.unique(key, return_inverse=True)
        mask21 = (1 << 21) - 1
        cells = torch.stack([(uniq >> 42) & mask21, (uniq >> 21) & mask21, uniq & mask21], -1) - (1 << 20)
        centres = (cells.float() + 0.5) * cell
        self.bounded_cells += int(uniq.numel())
        return self._candidate_mask(centres, cell / 2)[inverse]

    # ------------------------------------------------------------------ evaluation
    def _part_logits(self, k: int, pts: torch.Tensor) -> torch.Tensor:
        pre0 = torch.addmm(self.first_c[k], pts, self.first_a[k].T)
        return self.model.network.hidden_and_output(
            pre0, [w[k] for w in self.weights], [b[k] for b in self.biases]
        )

    @torch.inference_mode()
    def logits(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Max part logit (N,) and its part label (N,) at model-space points (N,3)."""
        n = points.shape[0]
        best = torch.full((n,), -torch.inf)
        label = torch.zeros(n, dtype=torch.long)
        self.stats.points += n
        mask = None
        if self.cull == "ibp":
            mask = self.candidate_parts(points)
        elif self.cull == "radius" and self.part_radius is not None:
            mask = self.segment_distances(points) <= self.part_radius
        for k in range(self.num_parts):
            idx = mask[:, k].nonzero().squeeze(-1) if mask is not None else None
            if idx is not None and idx.numel() == 0:
                continue
            pts = points if idx is None else points[idx]
            self.stats.part_evaluations += pts.shape[0]
            out = torch.cat(
                [
                    self._part_logits(k, pts[s : s + self.chunk_size])
                    for s in range(0, pts.shape[0], self.chunk_size)
                ]
            )
            if idx is None:
                better = out > best
                best = torch.where(better, out, best)
                label = torch.where(better, k, label)
            else:
                better = out > best[idx]
                sel = idx[better]
                best[sel] = out[better]
                label[sel] = k
        best = torch.where(torch.isinf(best), torch.full_like(best, self.floor_logit - 10.0), best)
        return best, label

    def segment_distances(self, points: torch.Tensor) -> torch.Tensor:
        """(N,P) distance of each point, mapped into canonical space by each part, to that part's bone."""
        x = torch.einsum("pij,nj->npi", self.rot, points) + self.trans  # (N,P,3)
        a, b = self.segments[:, 0], self.segments[:, 1]
        ab = b - a
        t = (((x - a) * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-12)).clamp(0, 1)
        return (x - a - t[..., None] * ab).norm(dim=-1)

    def calibrate_radii(self, resolution: int = 32, half_side: float = MODEL_BOX_HALF_SIDE) -> None:
        """Per-part radius around its canonical bone beyond which the part never wins.

        Evaluates every part on a full (resolution+1)^3 grid over the query box
        and records, per part, the farthest canonical distance from its bone at
        which it attains the max with occupancy >= ``prob_floor``; adds
        ``radius_margin`` (model units) plus one grid cell for what the grid
        cannot see between its nodes.  Parts that never win get the largest
        radius seen.  Measured: identical labels on 3 hands x 1M near-surface
        points (bench/bench_mesh.py) and identical MISE meshes (tests), at
        2.9-3.1 parts per point during a 64/3 extraction.
        """
        axis = torch.linspace(-half_side, half_side, resolution + 1)
        grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
        cull, self.cull = self.cull, False
        try:
            best, label = self.logits(grid)
        finally:
            self.cull = cull
        dist = self.segment_distances(grid)
        win = best >= self.floor_logit
        radius = torch.full((self.num_parts,), float("nan"))
        for k in range(self.num_parts):
            sel = win & (label == k)
            if bool(sel.any()):
                radius[k] = dist[sel, k].max()
        fallback = float(torch.nan_to_num(radius, nan=0.0).max())
        margin = self.radius_margin + 2 * half_side / resolution
        self.part_radius = torch.nan_to_num(radius, nan=fallback) + margin

    def __call__(self, points: np.ndarray | torch.Tensor) -> np.ndarray:
        """Occupancy probabilities (N,) float32 at model-space points (N,3)."""
        pts = torch.as_tensor(np.asarray(points, dtype=np.float32))
        if self.smooth_max:
            with torch.inference_mode():
                logits = self.model.network(pts[None], *self._inputs())[0]
                return self.model.network.combine(logits).numpy()
        best, _ = self.logits(pts)
        return torch.sigmoid(best).numpy()

    def part_labels(self, points: np.ndarray | torch.Tensor) -> np.ndarray:
        """Index (N,) of the part with the highest logit at model-space points (N,3)."""
        return self.logits(torch.as_tensor(np.asarray(points, dtype=np.float32)))[1].numpy()

    def _inputs(self):
        mats, lengths = self.model.model_inputs(self.pose)
        return mats.float(), lengths.float()
