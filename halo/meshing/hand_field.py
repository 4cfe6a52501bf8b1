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
frame (see :meth:`halo.core.model.HaloModel.points_to_model`).  The evaluation
itself is :meth:`halo.core.model.PartOccupancyNetwork.max_logits` (the same code
as ``HaloModel.occupancy`` under ``no_grad``), on the model's device: numpy
points in, numpy values out; the work runs wherever the model's weights are.

``interpolate`` chooses what the field returns to marching cubes: the
probability (the original's field, iso 0.5) or the max part logit (iso 0).
Both have the same inside/outside, but the probability saturates within a
few millimetres of the surface, so linear interpolation along a grid edge
puts vertices near the edge's midpoint (terracing at low resolution); the
logit is close to linear across the surface.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from halo.core.model import HaloModel
from halo.core.skeleton import MODEL_BOX_HALF_SIDE

#: What a field can return to the isosurface extraction (see the module docstring).
INTERPOLATE_MODES = ("logit", "probability")


@dataclass
class FieldStats:
    points: int = 0  # query points evaluated
    part_evaluations: int = 0  # (point, part) MLP evaluations actually run
    num_parts: int = 16

    @property
    def parts_per_point(self) -> float:
        return self.part_evaluations / max(self.points, 1)


def check_interpolate(interpolate: str) -> str:
    if interpolate not in INTERPOLATE_MODES:
        raise ValueError(f"interpolate must be one of {INTERPOLATE_MODES}, got {interpolate!r}")
    return interpolate


class HandOccupancyField:
    """Occupancy of posed hands as a function of model-space points, with optional part culling.

    ``keypoints`` (21,3) for one hand or (T,21,3) for several (``is_left`` a bool or T bools);
    ``field(points)`` evaluates the one hand, :meth:`values_many` several hands in one network
    call.  ``interpolate="probability"``: occupancy probabilities (iso 0.5); ``"logit"``: the max
    part logit (iso 0, see :meth:`iso_level`).
    """

    def __init__(
        self,
        model: HaloModel,
        keypoints: torch.Tensor | np.ndarray,
        is_left: bool | np.ndarray | list[bool] = False,
        *,
        cull: bool | str = "radius",
        prob_floor: float = 1e-3,
        radius_margin: float = 0.02,
        calibration_resolution: int = 32,
        half_side: float = MODEL_BOX_HALF_SIDE,
        cull_cell_size: float = 0.0172,
        chunk_size: int = 4096,
        interpolate: str = "probability",
    ):
        self.model = model
        net = model.network
        self.device = net.weights[0].device
        self.dtype = net.weights[0].dtype
        kp = keypoints.detach() if torch.is_tensor(keypoints) else torch.as_tensor(np.asarray(keypoints))
        if kp.shape[-2:] != (21, 3) or kp.dim() not in (2, 3):
            raise ValueError(f"keypoints must have shape (21, 3) or (T, 21, 3), got {tuple(kp.shape)}")
        kp = kp.to(device=self.device, dtype=torch.float32).reshape(-1, 21, 3)
        self.num_hands = kp.shape[0]
        left = torch.as_tensor(np.array(is_left, dtype=bool), device=self.device).reshape(-1)
        left = left.expand(self.num_hands) if left.numel() == 1 else left
        if left.shape != (self.num_hands,):
            raise ValueError(f"is_left must be one bool or {self.num_hands}, got shape {tuple(left.shape)}")
        self.num_parts = net.config.num_parts
        self.interpolate = check_interpolate(interpolate)
        with torch.no_grad():
            self.pose = model.canonicalize(kp, left)
            mats, lengths = model.model_inputs(self.pose)
            segments = model.part_segments(self.pose, mats)
            self.posed = net.pose_parts(mats.to(self.dtype), lengths.to(self.dtype), segments.to(self.dtype))
        self.weights = [w.detach() for w in net.weights]
        self.biases = [b.detach() for b in net.biases]
        self.residual = set(net.config.residual_layers)
        self.slope = net.config.leaky_slope
        self.smooth_max = net.config.smooth_max
        self.chunk_size = chunk_size
        if cull is True:
            cull = "radius"
        if cull not in (False, "radius", "ibp"):
            raise ValueError(f"cull must be False, 'radius' or 'ibp', got {cull!r}")
        # Smooth max or a soft union without trained radii: every part counts everywhere, nothing to cull.
        self.cull = False if net.config.mixes_parts else cull
        trained_radii = net.config.part_radii
        if trained_radii is not None:
            # Culling is part of this model's definition (it was trained that way): always apply it.
            self.cull = "radius"
        self.radius_margin = radius_margin
        self.part_radius: torch.Tensor | None = None  # (T,P) canonical radius per part, model units
        self.prob_floor = prob_floor
        self.floor_logit = float(np.log(prob_floor / (1 - prob_floor)))
        self.hand_stats = [FieldStats(num_parts=self.num_parts) for _ in range(self.num_hands)]
        self.cull_cell_size = cull_cell_size
        self.bounded_cells = 0
        if trained_radii is not None:
            radii = torch.tensor(trained_radii, dtype=self.dtype, device=self.device)
            self.part_radius = radii.expand(self.num_hands, -1)
        elif self.cull == "radius":
            self.calibrate_radii(calibration_resolution, half_side)

    @property
    def stats(self) -> FieldStats:
        """Work of the (first) hand: points and (point, part) evaluations."""
        return self.hand_stats[0]

    @property
    def segments(self) -> torch.Tensor:
        """(P,2,3) canonical bones of the (first) hand, model units."""
        return self.posed.segments[0]

    def iso_level(self, threshold: float = 0.5) -> float:
        """The iso value of this field for an occupancy ``threshold`` (probability)."""
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be an occupancy probability in (0, 1), got {threshold}")
        return threshold if self.interpolate == "probability" else float(np.log(threshold / (1 - threshold)))

    # ------------------------------------------------------------------ interval bounds
    def part_logit_bounds(
        self, centres: torch.Tensor, half: float, hand: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Lower/upper bounds (P,C) of every part's logit over cubes (C,3) of half side ``half``."""
        a, c0 = self.posed.first_a[hand], self.posed.first_c[hand]
        mid = torch.einsum("phi,ci->pch", a, centres) + c0[:, None]
        rad = (a.abs().sum(-1) * half)[:, None].expand_as(mid)
        lo, hi = F.leaky_relu(mid - rad, self.slope), F.leaky_relu(mid + rad, self.slope)
        n = len(self.weights)
        for i in range(1, n):
            mid, rad = (hi + lo) / 2, (hi - lo) / 2
            w = self.weights[i]
            if i in self.residual:
                w = w + torch.eye(w.shape[-1], dtype=w.dtype, device=w.device)
            mid = mid @ w.transpose(-1, -2) + self.biases[i][:, None]
            rad = rad @ w.abs().transpose(-1, -2)
            lo, hi = mid - rad, mid + rad
            if i < n - 1:
                lo, hi = F.leaky_relu(lo, self.slope), F.leaky_relu(hi, self.slope)
        return lo.squeeze(-1), hi.squeeze(-1)

    def candidate_parts(self, points: torch.Tensor, hand: int = 0) -> torch.Tensor:
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
        centres = (cells.to(points.dtype) + 0.5) * cell
        self.bounded_cells += int(uniq.numel())
        lo, hi = self.part_logit_bounds(centres, cell / 2, hand)
        best_lo = lo.max(dim=0).values.clamp_min(self.floor_logit)  # (C,)
        return (hi >= best_lo).T[inverse]  # (N,P)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def logits_many(
        self, points: list[torch.Tensor], hands: list[int]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Max part logits and labels of several hands' model-space points, in one network call."""
        pts = [p.to(device=self.device, dtype=self.dtype) for p in points]
        counts = [p.shape[0] for p in pts]
        radii = self.part_radius[hands] if self.cull == "radius" else None
        candidates = None
        if self.cull == "ibp":

            def candidates(q: torch.Tensor, b: int) -> torch.Tensor:
                return self.candidate_parts(q, hands[b])  # b indexes the hands of this call

        packed = torch.cat(pts) if pts else torch.zeros(0, 3, dtype=self.dtype, device=self.device)
        best, label, evaluations = self.model.network.max_logits_packed(
            packed, counts, self.posed.take(hands), radii, self.chunk_size, candidates=candidates
        )
        for h, n, e in zip(hands, counts, evaluations, strict=True):
            self.hand_stats[h].points += n
            self.hand_stats[h].part_evaluations += e
        return list(best.split(counts)), list(label.split(counts))

    def logits(self, points: torch.Tensor, hand: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Max part logit (N,) and its part label (N,) at model-space points (N,3), on the model's device."""
        best, label = self.logits_many([points], [hand])
        return best[0], label[0]

    def segment_distances(self, points: torch.Tensor, hand: int = 0) -> torch.Tensor:
        """(N,P) distance of each point, mapped into canonical space by each part, to that part's bone."""
        return self.posed.segment_distances(points.to(device=self.device, dtype=self.dtype), hand)

    def calibrate_radii(self, resolution: int = 32, half_side: float = MODEL_BOX_HALF_SIDE) -> None:
        """Per hand and part, the radius around its canonical bone beyond which the part never wins.

        :meth:`halo.core.model.PartOccupancyNetwork.calibrate_radii` (the rule
        ``HaloModel.occupancy(cull="radius")`` uses too): all parts on a full
        (resolution+1)^3 grid over the query box; per part the farthest canonical
        distance from its bone at which it attains the max with occupancy >=
        ``prob_floor``, plus ``radius_margin`` and one grid cell.  Measured: identical
        labels on 3 hands x 1M near-surface points (bench/bench_mesh.py) and identical
        MISE meshes (tests), at 2.9-3.1 parts per point during a 64/3 extraction.
        """
        grid_points = (resolution + 1) ** 3
        for stats in self.hand_stats:
            stats.points += grid_points
            stats.part_evaluations += grid_points * self.num_parts
        self.part_radius = self.model.network.calibrate_radii(
            self.posed, resolution, half_side, self.prob_floor, self.radius_margin
        )

    def _tensor(self, points: np.ndarray | torch.Tensor) -> torch.Tensor:
        if torch.is_tensor(points):
            return points.to(device=self.device, dtype=self.dtype)
        return torch.as_tensor(np.asarray(points, dtype=np.float32), device=self.device).to(self.dtype)

    def values_many(self, points: list[np.ndarray | torch.Tensor], hands: list[int]) -> list[torch.Tensor]:
        """The field at several hands' model-space points (N_i,3), one network call, tensors on the device."""
        pts = [self._tensor(p) for p in points]
        if self.smooth_max:
            return [self._smooth_values(p, h) for p, h in zip(pts, hands, strict=True)]
        best, _ = self.logits_many(pts, hands)
        return [torch.sigmoid(b) if self.interpolate == "probability" else b for b in best]

    def _smooth_values(self, pts: torch.Tensor, hand: int) -> torch.Tensor:
        with torch.no_grad():
            mats, lengths = self.model.model_inputs(self.pose)
            sel = slice(hand, hand + 1)
            logits = self.model.network(pts[None], mats[sel].to(self.dtype), lengths[sel].to(self.dtype))[0]
            occ = self.model.network.combine(logits)
        self.hand_stats[hand].points += pts.shape[0]
        self.hand_stats[hand].part_evaluations += pts.shape[0] * self.num_parts
        return occ if self.interpolate == "probability" else torch.logit(occ, eps=1e-7)

    def values(self, points: np.ndarray | torch.Tensor, hand: int = 0) -> torch.Tensor:
        """The field (N,) at model-space points (N,3) as a tensor on the model's device."""
        return self.values_many([points], [hand])[0]

    def __call__(self, points: np.ndarray | torch.Tensor) -> np.ndarray:
        """The (first) hand's field (N,) float32 at model-space points (N,3): probability or logit."""
        return self.values(points).float().cpu().numpy()

    def numpy_many(self, points: list[np.ndarray], hands: list[int]) -> list[np.ndarray]:
        """:meth:`values_many` as float32 numpy arrays (what the isosurface extraction takes)."""
        return [v.float().cpu().numpy() for v in self.values_many(points, hands)]

    def part_labels(self, points: np.ndarray | torch.Tensor, hand: int = 0) -> np.ndarray:
        """Index (N,) of the part with the highest logit at model-space points (N,3)."""
        return self.logits(self._tensor(points), hand)[1].cpu().numpy()
