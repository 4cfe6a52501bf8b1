"""HALO base occupancy network and the end-to-end keypoints -> occupancy model.

``PartOccupancyNetwork`` is the original's piecewise-deformable decoder: 16
independent part MLPs, each seeing the query point projected into the shared
canonical hand space by its part transform, its own bone length, a shared
bone-length code and a per-part projection of the global pose.  The 16 MLPs
are stored as stacked weight tensors so one batched matmul evaluates every
part (``torch.matmul`` broadcasting over the part axis); ``per_part_logits``
is the literal one-MLP-per-part formulation kept as the reference.

``HaloModel`` wraps it with the canonicalization layer: metres and the public
joint order in, occupancy probabilities out, differentiable w.r.t. keypoints.

Units inside the network are the original's model units (metres x 2.5) for
points and transforms; bone lengths enter in metres (as in the release).

Size: one cohesive module over 500 lines: the network's stacked part MLPs, their culled and
chunked inference kernels and :class:`HaloModel`'s one forward pass share the same tensors and
layout; splitting them would expose the network's internals across modules.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from halo.core.canonicalization import CanonicalPose, apply_transform, canonicalize
from halo.core.skeleton import MODEL_BOX_HALF_SIDE, MODEL_UNITS_PER_METRE, NUM_PARTS, PART_BONES

#: Points per network call of the inference path: its buffers ((chunk, width) per layer, ~1 MB each
#: at 4096) are allocated once per call and reused, so the cost per point does not depend on N
#: and memory stays bounded for any N (measured fastest of 2048-16384 in bench/bench_speed.py).
INFERENCE_CHUNK = 4096
#: Below this many points per hand, :meth:`HaloModel.max_logit` finds the winning parts with one
#: batched all-parts call instead of the per-hand inference loop (measured, release network, 20
#: hands: 64 points 28 vs 43 ms, 256 points 93 vs 74 ms).
SMALL_POINT_SETS = 256


def _affine(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """h @ w^T + b; one part's 2-D case uses the fused addmm (measured ~10% faster on CPU)."""
    if h.dim() == 2 and w.dim() == 2:
        return torch.addmm(b, h, w.T)
    return h @ w.transpose(-1, -2) + b


#: Default ``NetworkConfig.part_radii`` (model units; palm, index1-3, middle1-3,
#: pinky1-3, ring1-3, thumb1-3): the largest canonical distance from each part's
#: bone of (a) the synthetic hands' labelled surface (300 training hands) and
#: (b) where the original checkpoint's part wins on the 10 real HO3D reference
#: hands, plus 0.02 (8 mm) of room for the surface's outside.
DEFAULT_PART_RADII: tuple[float, ...] = (
    0.17,
    0.065, 0.05, 0.05,
    0.095, 0.05, 0.05,
    0.07, 0.05, 0.05,
    0.075, 0.05, 0.05,
    0.11, 0.075, 0.055,
)  # fmt: skip


@dataclass
class PosedParts:
    """The network specialised to posed hands (inference): every part's first layer folded with its
    part transform, so a posed model point ``p`` enters part k as ``first_a[b,k] @ p + first_c[b,k]``.

    All (B,P,...) tensors in model units: ``rot``/``trans`` map the normalized posed frame to
    canonical space, ``segments`` are the parts' bones in canonical space (for culling).
    """

    first_a: torch.Tensor  # (B,P,H,3)
    first_c: torch.Tensor  # (B,P,H)
    rot: torch.Tensor  # (B,P,3,3)
    trans: torch.Tensor  # (B,P,3)
    segments: torch.Tensor  # (B,P,2,3)

    def hand(self, b: int) -> PosedParts:
        """Hand ``b`` alone (batch of one)."""
        return self.take([b])

    def take(self, hands: list[int]) -> PosedParts:
        """The given hands, in that order."""
        idx = torch.as_tensor(hands, dtype=torch.long, device=self.first_a.device)
        return PosedParts(
            *(t[idx] for t in (self.first_a, self.first_c, self.rot, self.trans, self.segments))
        )

    def segment_distances(self, points: torch.Tensor, b: int = 0) -> torch.Tensor:
        """(N,P) distance of model points (N,3), mapped into canonical space by each part, to its bone."""
        x = torch.einsum("pij,nj->npi", self.rot[b], points) + self.trans[b]  # (N,P,3)
        a, ab = self.segments[b, :, 0], self.segments[b, :, 1] - self.segments[b, :, 0]
        t = (((x - a) * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-12)).clamp(0, 1)
        return (x - a - t[..., None] * ab).norm(dim=-1)


@dataclass
class NetworkConfig:
    """Architecture hyper-parameters (defaults = the released HALO base model)."""

    num_parts: int = NUM_PARTS
    hidden_dims: tuple[int, ...] = (64, 64, 64, 64)
    bone_latent_size: int = 16
    bone_hidden_size: int = 40
    global_projection_size: int = 8
    leaky_slope: float = 0.1
    smooth_max: bool = False
    smooth_max_beta: float = 5.0
    residual_layers: tuple[int, ...] = field(default=(1, 2, 3))
    #: Part culling as part of the model (this project's option; None = the original).
    #: Per part, the largest distance (model units) from the part's canonical bone
    #: segment at which the part is evaluated; beyond it the part's logit is
    #: ``culled_logit``.  Training then only pays for parts that can be occupied near
    #: a point (the max over parts passes gradient to one part anyway), and the
    #: same rule applies at inference, so the trained function is what is meshed.
    part_radii: tuple[float, ...] | None = None
    culled_logit: float = -12.0
    #: How the part logits make the hand's logit (this project's option; 0 = the original's max).
    #: ``t > 0``: the soft union ``t * logsumexp(part_logits / t)`` over all parts (a culled pair
    #: counts as ``culled_logit``, as in the max).  Where two parts meet, both only just outside,
    #: the max leaves a crease (the notches between phalanges of a bent finger); the soft union
    #: adds up to ``t * log 2`` there, and every part near a point gets gradient in training.
    union_temperature: float = 0.0

    @property
    def mixes_parts(self) -> bool:
        """Every part contributes at every point, so no part can be skipped (culled) by the rule of
        where it wins: smooth max, or a soft union without trained ``part_radii``."""
        return self.smooth_max or (self.union_temperature > 0 and self.part_radii is None)

    def __post_init__(self) -> None:
        if isinstance(self.part_radii, str):
            if self.part_radii != "default":
                raise ValueError(
                    f"part_radii must be null, 'default' or 16 distances, got {self.part_radii!r}"
                )
            self.part_radii = DEFAULT_PART_RADII
        if self.union_temperature < 0 or not math.isfinite(self.union_temperature):
            raise ValueError(f"union_temperature must be >= 0 (0: the max), got {self.union_temperature}")
        if self.union_temperature > 0 and self.smooth_max:
            raise ValueError("union_temperature (soft union of logits) cannot be combined with smooth_max")
        if self.part_radii is not None:
            if self.smooth_max:
                raise ValueError(
                    "part_radii (culling) cannot be combined with smooth_max (it mixes all parts)"
                )
            self.part_radii = tuple(float(r) for r in self.part_radii)
            if len(self.part_radii) != self.num_parts or min(self.part_radii) <= 0:
                raise ValueError(
                    f"part_radii must be {self.num_parts} positive distances (model units), got {self.part_radii}"
                )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden_dims"] = list(self.hidden_dims)
        d["residual_layers"] = list(self.residual_layers)
        d["part_radii"] = None if self.part_radii is None else list(self.part_radii)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> NetworkConfig:
        d = dict(d)
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown network config keys: {sorted(unknown)}")
        for key in ("hidden_dims", "residual_layers"):
            if key in d:
                d[key] = tuple(d[key])
        if d.get("part_radii") is not None and not isinstance(d["part_radii"], str):
            d["part_radii"] = tuple(d["part_radii"])
        return cls(**d)


class PartOccupancyNetwork(nn.Module):
    """16 part MLPs evaluated together.

    Inputs (model units): points (B,N,3), part transforms (B,P,4,4) mapping the
    normalized posed frame to canonical space, bone lengths (B,P) in metres.
    Output: per-part logits (B,N,P).
    """

    def __init__(self, config: NetworkConfig | None = None):
        super().__init__()
        self.config = config = config or NetworkConfig()
        p = config.num_parts
        self.bone_encoder = nn.Sequential(
            nn.Linear(p, config.bone_hidden_size),
            nn.ReLU(),
            nn.Linear(config.bone_hidden_size, config.bone_latent_size),
        )
        self.global_proj_weight = nn.Parameter(torch.empty(p, config.global_projection_size, 3 * p))
        self.global_proj_bias = nn.Parameter(torch.empty(p, config.global_projection_size))
        in_dim = 3 + 1 + config.bone_latent_size + config.global_projection_size
        dims = (in_dim, *config.hidden_dims, 1)
        self.weights = nn.ParameterList(
            [nn.Parameter(torch.empty(p, dims[i + 1], dims[i])) for i in range(len(dims) - 1)]
        )
        self.biases = nn.ParameterList(
            [nn.Parameter(torch.empty(p, dims[i + 1])) for i in range(len(dims) - 1)]
        )
        for i in config.residual_layers:
            if dims[i] != dims[i + 1]:
                raise ValueError(f"residual layer {i} needs equal widths, got {dims[i]} -> {dims[i + 1]}")
        self.reset_parameters()

    @property
    def num_layers(self) -> int:
        return len(self.weights)

    def reset_parameters(self) -> None:
        # Same init as one nn.Linear per part (kaiming-uniform(a=sqrt 5), fan-in bias bound).
        for w, b in [
            (self.global_proj_weight, self.global_proj_bias),
            *zip(self.weights, self.biases, strict=True),
        ]:
            bound = 1.0 / w.shape[-1] ** 0.5
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)

    # ------------------------------------------------------------------ per-part conditioning
    def part_codes(self, part_transforms: torch.Tensor, bone_lengths: torch.Tensor) -> torch.Tensor:
        """Per-part constant input features (B,P,1+L+G): own length, bone code, global-pose code."""
        bsz, p = bone_lengths.shape
        latent = self.bone_encoder(bone_lengths)  # (B,L)
        pose = part_transforms[:, :, :3, 3].reshape(bsz, 3 * p)  # translations of all parts
        glob = torch.einsum("pgi,bi->bpg", self.global_proj_weight, pose) + self.global_proj_bias
        return torch.cat([bone_lengths[..., None], latent[:, None].expand(bsz, p, -1), glob], dim=-1)

    def first_layer_bias(self, codes: torch.Tensor) -> torch.Tensor:
        """Fold the per-part constant features into the first layer's bias: (B,P,H)."""
        w_code = self.weights[0][:, :, 3:]  # (P,H,C)
        return torch.einsum("phc,bpc->bph", w_code, codes) + self.biases[0]

    # ------------------------------------------------------------------ evaluation
    def hidden_and_output(
        self, pre0: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor]
    ) -> torch.Tensor:
        """Run a part MLP from its first layer's pre-activation to the logit.

        ``weights``/``biases`` are the per-layer tensors already selected (all
        parts, stacked: (P,out,in) with biases shaped to broadcast; or one
        part's (out,in) and (out,)).  Shared by the batched evaluation and
        :class:`halo.meshing.hand_field.HandOccupancyField`'s per-part GEMMs.
        """
        slope = self.config.leaky_slope
        h = F.leaky_relu(pre0, slope)
        for i in range(1, len(weights) - 1):
            z = _affine(h, weights[i], biases[i])
            if i in self.config.residual_layers:
                z = z + h
            h = F.leaky_relu(z, slope)
        return _affine(h, weights[-1], biases[-1]).squeeze(-1)

    def _mlp(self, x: torch.Tensor, bias0: torch.Tensor) -> torch.Tensor:
        """x: (B,P,N,3) canonical points -> logits (B,P,N), all parts in one batched matmul per layer."""
        pre0 = x @ self.weights[0][:, :, :3].transpose(-1, -2) + bias0[:, :, None, :]
        return self.hidden_and_output(pre0, list(self.weights), [b[:, None, :] for b in self.biases])

    def forward(
        self,
        points: torch.Tensor,
        part_transforms: torch.Tensor,
        bone_lengths: torch.Tensor,
        chunk_size: int = 16384,
    ) -> torch.Tensor:
        """Per-part logits (B,N,P) for points (B,N,3) in model units."""
        bias0 = self.first_layer_bias(self.part_codes(part_transforms, bone_lengths))
        outs = []
        for start in range(0, points.shape[1], chunk_size):
            pts = points[:, start : start + chunk_size]
            x = apply_transform(part_transforms, pts[:, None])  # (B,P,n,3)
            outs.append(self._mlp(x, bias0))
        return torch.cat(outs, dim=-1).transpose(1, 2)

    def forward_culled(
        self,
        points: torch.Tensor,
        part_transforms: torch.Tensor,
        bone_lengths: torch.Tensor,
        segments: torch.Tensor,
        radii: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-part logits (B,N,P) evaluating only (point, part) pairs within the part radii.

        ``segments`` (B,P,2,3): each part's bone in canonical space (model units).  ``radii``:
        (B,P) per-hand distances (e.g. :meth:`calibrate_radii`), default ``config.part_radii``.
        Other pairs get ``config.culled_logit`` (no gradient).  The active pairs are found for
        all parts at once and gathered once; cost follows their number, not N*P.
        """
        if radii is None:
            if self.config.part_radii is None:
                raise ValueError("forward_culled needs config.part_radii or radii")
            radii = torch.tensor(self.config.part_radii, device=points.device)
        num_parts = self.config.num_parts
        radii = torch.as_tensor(radii, device=points.device).expand(points.shape[0], num_parts)
        bsz, n, _ = points.shape
        bias0 = self.first_layer_bias(self.part_codes(part_transforms, bone_lengths))  # (B,P,H)
        rot, trans = part_transforms[..., :3, :3], part_transforms[..., :3, 3]
        with torch.autocast(device_type=points.device.type, enabled=False):
            # Full precision: under autocast a bf16 matmul would move points across the culling radius.
            # (B,P,3,N): coordinates on a middle axis, so the reductions over them below run along N
            # (a norm over a trailing axis of 3 was measured 10x slower).
            x = rot @ points.transpose(1, 2)[:, None] + trans[..., None]
        with torch.no_grad():
            a, ab = (
                segments[:, :, 0, :, None],
                (segments[:, :, 1] - segments[:, :, 0])[..., None],
            )  # (B,P,3,1)
            d = x - a
            t = ((d * ab).sum(2) / (ab * ab).sum(2).clamp_min(1e-12)).clamp(0, 1)  # (B,P,N)
            e = d - t[:, :, None] * ab
            near = (e * e).sum(2).sqrt() <= radii[..., None]  # (B,P,N)
            # All active pairs at once, ordered by part: each part's rows are one contiguous block.
            pi, bi, ni = near.transpose(0, 1).nonzero(as_tuple=True)
            counts = torch.bincount(pi, minlength=num_parts).tolist()
        if not pi.numel():
            return points.new_full((bsz, n, num_parts), self.config.culled_logit)
        vals = self._pair_logits(x.transpose(2, 3)[bi, pi, ni], bias0[bi, pi], counts)
        # Under autocast the MLP outputs are bf16/fp16 while the points are float32.
        out = vals.new_full((bsz, n, num_parts), self.config.culled_logit)
        return out.index_put((bi, ni, pi), vals)

    def _pair_logits(self, x: torch.Tensor, bias0: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """Logits (M,) of (point, part) pairs ordered by part: canonical points ``x`` (M,3), their
        parts' first-layer biases (M,H), ``counts[k]`` pairs of part k.

        One block per part. split/unbind rather than indexing: their backward is one cat/stack,
        not one zero-filled copy per part and layer (~2x faster than a gather/scatter per part).
        """
        xs, b0 = x.split(counts), bias0.split(counts)
        w0 = self.weights[0][:, :, :3].unbind(0)
        weights = list(zip(*(w.unbind(0) for w in self.weights), strict=True))
        biases = list(zip(*(b.unbind(0) for b in self.biases), strict=True))
        values = [
            self.hidden_and_output(torch.addmm(b0[k], xs[k], w0[k].T), weights[k], biases[k])
            for k in range(self.config.num_parts)
            if counts[k]
        ]
        return torch.cat(values)

    def winner_logits(
        self,
        points: torch.Tensor,
        part_transforms: torch.Tensor,
        bone_lengths: torch.Tensor,
        labels: torch.Tensor,
    ) -> torch.Tensor:
        """Each point's logit (B,N) of the one part ``labels`` (B,N) names, with autograd.

        The gradient of a max over parts flows through the winning part alone.  A caller that found
        the winners without autograd (:meth:`max_logits`) gets the max logit's value and exact
        gradient from one part per point here, instead of a graph and a backward through every
        part (:meth:`HaloModel.max_logit`).
        """
        bsz, n, _ = points.shape
        flat = labels.reshape(-1)
        order = torch.argsort(flat, stable=True)  # pairs ordered by part: one block per part
        counts = torch.bincount(flat, minlength=self.config.num_parts).tolist()
        bi, ni, pi = order // n, order % n, flat[order]
        bias0 = self.first_layer_bias(self.part_codes(part_transforms, bone_lengths))  # (B,P,H)
        with torch.autocast(device_type=points.device.type, enabled=False):
            rot, trans = part_transforms[bi, pi, :3, :3], part_transforms[bi, pi, :3, 3]
            x = (rot @ points[bi, ni, :, None]).squeeze(-1) + trans  # (M,3) canonical
        vals = self._pair_logits(x, bias0[bi, pi], counts)
        return vals.new_empty(bsz * n).index_put((order,), vals).reshape(bsz, n)

    # ------------------------------------------------------------------ inference (no autograd)
    def pose_parts(
        self, part_transforms: torch.Tensor, bone_lengths: torch.Tensor, segments: torch.Tensor
    ) -> PosedParts:
        """Fold each hand's part transforms and codes into the first layer (see :class:`PosedParts`)."""
        bias0 = self.first_layer_bias(self.part_codes(part_transforms, bone_lengths))  # (B,P,H)
        rot, trans = part_transforms[..., :3, :3], part_transforms[..., :3, 3]
        w0x = self.weights[0][:, :, :3]  # (P,H,3)
        # W0x (R p + t) + bias0 = (W0x R) p + (W0x t + bias0)
        first_a = w0x @ rot
        first_c = (w0x @ trans[..., None]).squeeze(-1) + bias0
        return PosedParts(first_a, first_c, rot, trans, segments)

    def _part_logit_into(
        self, buffers: list[torch.Tensor], k: int, a: torch.Tensor, c: torch.Tensor, pts: torch.Tensor
    ) -> torch.Tensor:
        """Part k's logits (m,) at posed model points (m,3), written into preallocated buffers.

        Reusing the buffers is what keeps the cost per point flat in N: fresh activations of a
        large call are served by mmap and page-faulted on every chunk (glibc's default).
        """
        m, slope, last = pts.shape[0], self.config.leaky_slope, self.num_layers - 1
        h = torch.addmm(c, pts, a.T, out=buffers[0][:m])
        F.leaky_relu_(h, slope)
        for i in range(1, self.num_layers):
            z = torch.addmm(self.biases[i][k], h, self.weights[i][k].T, out=buffers[i][:m])
            if i < last:
                if i in self.config.residual_layers:
                    z.add_(h)
                F.leaky_relu_(z, slope)
            h = z
        return h[:, 0]

    @torch.no_grad()
    def max_logits(
        self,
        points: torch.Tensor,
        posed: PosedParts,
        radii: torch.Tensor | None = None,
        chunk_size: int = INFERENCE_CHUNK,
        candidates: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Inference path: the max part logit (B,N), its part (B,N) and the (point, part) evaluations run.

        ``points`` (B,N,3) in model units (normalized posed frame); see :meth:`max_logits_packed`.
        """
        bsz, n, _ = points.shape
        counts = [n] * bsz
        best, label, evaluations = self.max_logits_packed(
            points.reshape(bsz * n, 3), counts, posed, radii, chunk_size, candidates
        )
        return best.reshape(bsz, n), label.reshape(bsz, n), sum(evaluations)

    @torch.no_grad()
    def max_logits_packed(
        self,
        points: torch.Tensor,
        counts: list[int],
        posed: PosedParts,
        radii: torch.Tensor | None = None,
        chunk_size: int = INFERENCE_CHUNK,
        candidates: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Several hands in one call: the hand logit (M,) (the max part logit, or the soft union of
        ``config.union_temperature``), the max's part (M,) and evaluations per hand.

        ``points`` (M,3) in model units (normalized posed frame) holds ``counts[b]`` points of hand
        b after each other (hands of ``posed``, in order; counts may differ, e.g. the requests of
        several mesh extractions).  ``radii`` None evaluates every part at every point (the
        network's exact max); (P,) or (B,P) canonical distances evaluate part k only within
        ``radii[k]`` of its bone (:meth:`PosedParts.segment_distances`), the other pairs counting
        as ``config.culled_logit`` (as :meth:`forward_culled` does).
        ``candidates(points (m,3), b) -> (m,P) bool`` replaces the radius rule by any other
        (e.g. the mesh field's interval bounds).  Work and memory are bounded by ``chunk_size``
        points at a time, on the points' device.
        """
        num_parts = self.config.num_parts
        dtype, device = self.weights[0].dtype, points.device
        points = points.to(dtype)
        total = points.shape[0]
        if len(counts) != posed.first_a.shape[0] or sum(counts) != total:
            raise ValueError(
                f"counts {list(counts)} must give one count per posed hand ({posed.first_a.shape[0]}) "
                f"summing to the number of points ({total})"
            )
        temperature = self.config.union_temperature
        soft = temperature > 0
        cs = max(1, min(int(chunk_size), max(counts, default=1)))
        buffers = [torch.empty(cs, w.shape[1], dtype=dtype, device=device) for w in self.weights]
        best = torch.full((total,), -torch.inf, dtype=dtype, device=device)
        label = torch.zeros((total,), dtype=torch.long, device=device)
        if radii is not None:
            radii = torch.as_tensor(radii, dtype=dtype, device=device).expand(len(counts), num_parts)
        evaluations = [0] * len(counts)
        offset = 0
        for b, count in enumerate(counts):
            a_b, c_b = posed.first_a[b].to(dtype), posed.first_c[b].to(dtype)
            for start in range(offset, offset + count, cs):
                stop = min(start + cs, offset + count)
                q, bst, lab = points[start:stop], best[start:stop], label[start:stop]
                # Soft union: a running logsumexp of logits / t beside the running max (the label).
                acc = torch.full_like(bst, -torch.inf) if soft else None
                if radii is None and candidates is None:
                    for k in range(num_parts):
                        out = self._part_logit_into(buffers, k, a_b[k], c_b[k], q)
                        if soft:
                            acc = torch.logaddexp(acc, out / temperature)
                        lab.masked_fill_(out > bst, k)
                        torch.maximum(bst, out, out=bst)
                    evaluations[b] += q.shape[0] * num_parts
                    if soft:
                        bst.copy_(temperature * acc)
                    continue
                near = (
                    candidates(q, b) if candidates is not None else posed.segment_distances(q, b) <= radii[b]
                )
                for k in range(num_parts):
                    idx = near[:, k].nonzero().squeeze(1)
                    if idx.numel() == 0:
                        continue
                    out = self._part_logit_into(buffers, k, a_b[k], c_b[k], q[idx])
                    if soft:
                        acc[idx] = torch.logaddexp(acc[idx], out / temperature)
                    better = out > bst[idx]
                    sel = idx[better]
                    bst[sel] = out[better]
                    lab[sel] = k
                    evaluations[b] += idx.numel()
                # A culled pair counts as culled_logit (forward_culled's value), unless none was culled.
                if soft:
                    n_culled = (num_parts - near.sum(dim=1)).to(dtype)
                    culled_term = n_culled.log() + self.config.culled_logit / temperature  # -inf if none
                    bst.copy_(temperature * torch.logaddexp(acc, culled_term))
                else:
                    culled = ~near.all(dim=1)
                    bst.copy_(torch.where(culled, bst.clamp_min(self.config.culled_logit), bst))
            offset += count
        return best, label, evaluations

    @torch.no_grad()
    def calibrate_radii(
        self,
        posed: PosedParts,
        resolution: int = 32,
        half_side: float = MODEL_BOX_HALF_SIDE,
        prob_floor: float = 1e-3,
        margin: float = 0.02,
    ) -> torch.Tensor:
        """Per hand and part (B,P): the canonical distance from the part's bone beyond which it never wins.

        Evaluates every part on a (resolution+1)^3 grid over the query box and records, per part,
        the farthest canonical distance from its bone at which it attains the max with occupancy
        >= ``prob_floor``; adds ``margin`` (model units) plus one grid cell for what the grid
        cannot see between its nodes.  Parts that never win get the largest radius seen.
        Measured: identical labels on near-surface points and identical MISE meshes
        (tests/meshing, bench/bench_mesh.py), ~3 parts per point during a 64/3 extraction.
        """
        dtype, device = self.weights[0].dtype, posed.first_a.device
        axis = torch.linspace(-half_side, half_side, resolution + 1, dtype=dtype, device=device)
        grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
        floor = float(torch.logit(torch.tensor(prob_floor, dtype=torch.float64)))
        out = []
        for b in range(posed.first_a.shape[0]):
            best, label, _ = self.max_logits(grid[None], posed.hand(b))
            win = best[0] >= floor
            dist = posed.segment_distances(grid, b)[win].gather(1, label[0, win, None]).squeeze(1)
            radius = torch.full((self.config.num_parts,), -1.0, dtype=dtype, device=device)
            radius = radius.scatter_reduce(0, label[0, win], dist, reduce="amax")
            radius = torch.where(radius < 0, radius.max().clamp_min(0), radius)
            out.append(radius + margin + 2 * half_side / resolution)
        return torch.stack(out)

    def per_part_logits(
        self, points: torch.Tensor, part_transforms: torch.Tensor, bone_lengths: torch.Tensor
    ) -> torch.Tensor:
        """Reference formulation: a Python loop over parts, one plain MLP each, full input vector."""
        codes = self.part_codes(part_transforms, bone_lengths)
        slope = self.config.leaky_slope
        out = []
        for k in range(self.config.num_parts):
            x = apply_transform(part_transforms[:, k], points)  # (B,N,3)
            h = torch.cat([x, codes[:, None, k].expand(-1, points.shape[1], -1)], dim=-1)
            for i in range(self.num_layers):
                z = F.linear(h, self.weights[i][k], self.biases[i][k])
                if i in self.config.residual_layers:
                    z = z + h
                h = F.leaky_relu(z, slope) if i < self.num_layers - 1 else z
            out.append(h.squeeze(-1))
        return torch.stack(out, dim=-1)

    def union_logit(self, part_logits: torch.Tensor) -> torch.Tensor:
        """Per-part logits (...,P) -> the hand's logit (...): their max, or the soft union
        ``t * logsumexp(logits / t)`` (``config.union_temperature`` t > 0)."""
        t = self.config.union_temperature
        if t > 0:
            return t * torch.logsumexp(part_logits / t, dim=-1)
        return part_logits.max(dim=-1).values

    def all_culled_logit(self) -> float:
        """The hand logit of a point at which every part is culled (the max: ``culled_logit``)."""
        return float(self.union_logit(torch.full((self.config.num_parts,), self.config.culled_logit)))

    def combine(self, part_logits: torch.Tensor) -> torch.Tensor:
        """Per-part logits (...,P) -> occupancy probability (...): sigmoid of :meth:`union_logit`
        (for the max: the max of the sigmoids), or the smooth max of sigmoids."""
        if self.config.smooth_max:
            probs = torch.sigmoid(part_logits)
            w = torch.softmax(self.config.smooth_max_beta * probs, dim=-1)
            return (w * probs).sum(-1)
        return torch.sigmoid(self.union_logit(part_logits))


@dataclass
class OccupancyOutput:
    occupancy: torch.Tensor  # (B,N) probability in [0,1]
    part_labels: torch.Tensor | None  # (B,N) index of the part attaining the max
    part_logits: torch.Tensor | None  # (B,N,P)
    pose: CanonicalPose


class HaloModel(nn.Module):
    """Keypoints (metres, MANO order) + query points (metres, same frame) -> occupancy.

    Example::

        model, meta = halo.core.checkpoint.load_model("model_best.pt")
        occ = model.occupancy(points_m, keypoints_m)  # (B,N), differentiable w.r.t. keypoints
    """

    def __init__(self, config: NetworkConfig | None = None):
        super().__init__()
        self.network = PartOccupancyNetwork(config)

    @property
    def config(self) -> NetworkConfig:
        return self.network.config

    @staticmethod
    def model_inputs(pose: CanonicalPose) -> tuple[torch.Tensor, torch.Tensor]:
        """Part transforms in model units on both sides (B,P,4,4) and bone lengths (B,P) metres."""
        mats = pose.part_transforms.clone()
        # M_model = S(2.5) M S(0.4): rotation unchanged, translation scaled.
        mats[..., :3, 3] = mats[..., :3, 3] * MODEL_UNITS_PER_METRE
        return mats, pose.bone_lengths

    @staticmethod
    def part_segments(pose: CanonicalPose, mats_model: torch.Tensor) -> torch.Tensor:
        """(B,P,2,3) each part's bone (parent joint, child joint) in canonical space, model units."""
        kp = pose.normalized_keypoints.detach() * MODEL_UNITS_PER_METRE
        parents = [a for a, _ in PART_BONES]
        children = [b for _, b in PART_BONES]
        ends = torch.stack([kp[:, parents], kp[:, children]], dim=2)  # (B,P,2,3)
        rot, trans = mats_model[..., :3, :3].detach(), mats_model[..., :3, 3].detach()
        return (ends @ rot.transpose(-1, -2)) + trans[:, :, None]

    @staticmethod
    def points_to_model(pose: CanonicalPose, points_m: torch.Tensor) -> torch.Tensor:
        """Query points (B,N,3) in the keypoints' frame (metres) -> model units in the normalized frame."""
        return apply_transform(pose.normalization, points_m) * MODEL_UNITS_PER_METRE

    @staticmethod
    def points_from_model(pose: CanonicalPose, points_model: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`points_to_model`."""
        inv = torch.linalg.inv(pose.normalization)
        return apply_transform(inv, points_model / MODEL_UNITS_PER_METRE)

    def canonicalize(self, keypoints: torch.Tensor, is_left: torch.Tensor | None = None) -> CanonicalPose:
        return canonicalize(keypoints, is_left)

    def culling_radii(self, keypoints_m: torch.Tensor, is_left: torch.Tensor | None = None) -> torch.Tensor:
        """Per-hand part radii (B,P), calibrated as ``cull="radius"`` does, to pass as ``cull=`` later.

        For callers that evaluate the same hands many times (test-time grasp refinement): the
        calibration (a 33^3 grid per hand) is paid once instead of at every call.  A part's radius is
        a distance from its own bone, so it stays valid while the bones keep their lengths.  Models
        trained with ``part_radii`` return those.
        """
        with torch.no_grad(), torch.autocast(device_type=keypoints_m.device.type, enabled=False):
            pose = canonicalize(keypoints_m, is_left)
            radii = self._culling_radii(pose, None, "radius")
        if radii is None:  # smooth max / soft union: every part everywhere
            raise ValueError(
                "culling_radii: this model mixes all parts (smooth max, or a soft union without "
                "trained part_radii); it cannot be culled"
            )
        return radii.expand(keypoints_m.shape[0], -1).clone()

    def _culling_radii(self, pose: CanonicalPose, posed: PosedParts | None, cull) -> torch.Tensor | None:
        """Per-hand part radii (B,P) for ``cull``, or None for the full evaluation."""
        if torch.is_tensor(cull):
            if cull.shape != (pose.bone_lengths.shape[0], self.config.num_parts):
                raise ValueError(
                    f"cull radii must have shape (B, {self.config.num_parts}) = "
                    f"({pose.bone_lengths.shape[0]}, {self.config.num_parts}), got {tuple(cull.shape)}"
                )
            return cull.to(pose.bone_lengths)
        if cull not in (None, False, True, "radius"):
            raise ValueError(f"cull must be None, False, True, 'radius' or (B,P) radii, got {cull!r}")
        trained = self.config.part_radii
        if trained is not None:  # culling is part of this model's definition: always applied
            return torch.tensor(trained, dtype=pose.bone_lengths.dtype, device=pose.bone_lengths.device)[None]
        if not cull or self.config.mixes_parts:  # every part counts everywhere: nothing to cull
            return None
        with torch.no_grad():
            if posed is None:
                mats, lengths = self.model_inputs(pose)
                dtype = self.network.weights[0].dtype
                posed = self.network.pose_parts(
                    mats.to(dtype), lengths.to(dtype), self.part_segments(pose, mats).to(dtype)
                )
            return self.network.calibrate_radii(posed)

    def _needs_autograd(self, *inputs: torch.Tensor) -> bool:
        if not torch.is_grad_enabled():
            return False
        return any(t.requires_grad for t in inputs) or any(p.requires_grad for p in self.parameters())

    def forward(
        self,
        points_m: torch.Tensor,
        keypoints_m: torch.Tensor,
        is_left: torch.Tensor | None = None,
        return_parts: bool = False,
        validate: bool = True,
        cull: bool | str | None = None,
        exact_gradient: bool = False,
    ) -> OccupancyOutput:
        """The one HALO forward pass (every caller, the HALO-VAE's losses included, goes through it).

        ``exact_gradient``: canonicalize with the normalization and local frames attached
        (:func:`canonicalize`'s ``attached``): the same values, and the true derivative w.r.t. the
        keypoints, which keypoint fitting needs; False (the original's detached frames) for training.

        ``validate=False`` skips the keypoint checks of :func:`canonicalize` (callers that filter
        degenerate hands themselves, e.g. with ``halo.grasp.halo_terms.plausible_hands``, inside a training
        step); the float32 geometry guard under autocast applies either way.  ``cull``: see
        :meth:`occupancy`.  Differentiable w.r.t. keypoints and weights; for inference without
        part logits, :meth:`occupancy` under ``torch.no_grad()`` is the fast, bounded-memory path.
        """
        pose, (points_model, mats, lengths, segments), radii = self._network_inputs(
            points_m, keypoints_m, is_left, validate, cull, exact_gradient
        )
        if radii is not None:
            logits = self.network.forward_culled(points_model, mats, lengths, segments, radii)
        else:
            logits = self.network(points_model, mats, lengths)
        occ = self.network.combine(logits)
        labels = logits.argmax(dim=-1) if return_parts else None
        return OccupancyOutput(occ, labels, logits if return_parts else None, pose)

    def _network_inputs(self, points_m, keypoints_m, is_left, validate, cull, exact_gradient):
        """Checked, canonicalized inputs of the part MLPs: the pose, (points, part transforms, bone
        lengths, bone segments) in model units and the network's dtype, and the culling radii (or None)."""
        self._check_points(points_m, keypoints_m)
        # Geometry (frames, inverse transforms, angles) stays in the keypoints' precision even under
        # mixed-precision autocast: bf16 keypoint math would move the hand by millimetres.  Only the
        # part MLPs run in the autocast dtype.
        with torch.autocast(device_type=keypoints_m.device.type, enabled=False):
            pose = canonicalize(
                keypoints_m, is_left, validate=validate, attached=exact_gradient
            )  # in the keypoints' dtype (float64 stays precise)
            mats, lengths = self.model_inputs(pose)
            points_model = self.points_to_model(pose, points_m.to(keypoints_m.dtype))
            radii = self._culling_radii(pose, None, cull)
            segments = self.part_segments(pose, mats)
        dtype = self.network.global_proj_weight.dtype
        inputs = tuple(t.to(dtype) for t in (points_model, mats, lengths, segments))
        return pose, inputs, None if radii is None else radii.to(dtype)

    def max_logit(
        self,
        points_m: torch.Tensor,
        keypoints_m: torch.Tensor,
        is_left: torch.Tensor | None = None,
        *,
        validate: bool = True,
        cull: bool | str | torch.Tensor | None = None,
        exact_gradient: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The occupancy as a logit: each point's hand logit (B,N), and its largest part (B,N).

        The hand logit is the largest part logit (or the soft union of ``union_temperature``
        models: :meth:`PartOccupancyNetwork.union_logit`), with the values and gradients (w.r.t.
        keypoints, points and weights) of
        ``forward(..., return_parts=True).part_logits.max(-1)``.  Without culling, in two passes:
        every point's winning part without autograd (the chunked inference path), then that part's
        logit alone with autograd (:meth:`PartOccupancyNetwork.winner_logits`).  The gradient of a
        max flows through one part anyway; this pays for one part's graph and backward per point
        instead of all 16 (~9x faster forward + backward for the release's network).  Culled models
        evaluate a few parts per point: one pass (:meth:`PartOccupancyNetwork.forward_culled`).
        Arguments as in :meth:`forward`; smooth-max models have no single winning part (error).
        """
        if self.config.smooth_max:
            raise ValueError("max_logit: a smooth-max model mixes all parts; use forward(...).occupancy")
        _, (points_model, mats, lengths, segments), radii = self._network_inputs(
            points_m, keypoints_m, is_left, validate, cull, exact_gradient
        )
        if radii is not None:
            # Culled: ~1.5-3 parts per point are evaluated, so one pass with autograd costs no more
            # than the two passes below (measured: training steps, halo fit).
            logits = self.network.forward_culled(points_model, mats, lengths, segments, radii)
            return self.network.union_logit(logits), logits.argmax(dim=-1)
        if self.config.union_temperature > 0 and self._needs_autograd(points_m, keypoints_m):
            # A soft union takes gradient from every part: one pass through all of them.
            logits = self.network(points_model, mats, lengths)
            return self.network.union_logit(logits), logits.argmax(dim=-1)
        with torch.no_grad():
            if points_model.shape[1] < SMALL_POINT_SETS:
                # A few points per hand (grasp refinement's touch and grip terms): all parts of all
                # hands in one batched call beat the per-hand loop of the inference path.
                chunk = max(1, 2**15 // points_model.shape[0])
                logits = self.network(points_model, mats, lengths, chunk_size=chunk)
                best, labels = self.network.union_logit(logits), logits.argmax(dim=-1)
            else:
                posed = self.network.pose_parts(mats, lengths, segments)
                best, labels, _ = self.network.max_logits(points_model, posed)
        if not self._needs_autograd(points_m, keypoints_m):
            return best, labels
        logit = self.network.winner_logits(points_model, mats, lengths, labels)
        return logit, labels

    @staticmethod
    def _check_points(points_m: torch.Tensor, keypoints_m: torch.Tensor) -> None:
        if points_m.dim() != 3 or points_m.shape[-1] != 3 or points_m.shape[0] != keypoints_m.shape[0]:
            raise ValueError(
                f"points must have shape (B,N,3) with B = {keypoints_m.shape[0]} (keypoints' batch), "
                f"got {tuple(points_m.shape)}"
            )

    def occupancy(
        self,
        points_m,
        keypoints_m,
        is_left=None,
        return_parts: bool = False,
        validate: bool = True,
        *,
        cull: bool | str | None = None,
        chunk_size: int = INFERENCE_CHUNK,
    ):
        """Occupancy probabilities (B,N); with ``return_parts`` also the (B,N) part labels.

        With autograd on (anything requires grad) this is :meth:`max_logit`'s sigmoid: the values
        and gradients (w.r.t. keypoints, points and weights) of :meth:`forward`'s occupancy, with a
        graph through the winning part of each point only.  Under ``torch.no_grad()`` /
        ``inference_mode`` (or with nothing requiring grad) it runs
        :meth:`PartOccupancyNetwork.max_logits`: ``chunk_size`` points at a time through reused
        buffers, so the time per point and the memory do not grow with N.

        ``cull`` (models without trained ``part_radii``): ``"radius"``/``True`` evaluates a part
        only near its bone, with radii calibrated per hand exactly as the mesh path does
        (:class:`halo.meshing.hand_field.HandOccupancyField`; a 33^3 calibration grid per hand,
        worth it from ~100k points per hand); a (B,P) tensor uses those radii (from
        :meth:`culling_radii`, calibrated once); None/False evaluates all 16 parts.  Models
        trained with ``part_radii`` always cull with them (that is their definition).
        """
        if self.config.smooth_max:
            out = self.forward(points_m, keypoints_m, is_left, return_parts, validate=validate, cull=cull)
            return (out.occupancy, out.part_labels) if return_parts else out.occupancy
        if self._needs_autograd(points_m, keypoints_m):
            logit, labels = self.max_logit(points_m, keypoints_m, is_left, validate=validate, cull=cull)
            occ = torch.sigmoid(logit)
            return (occ, labels) if return_parts else occ
        self._check_points(points_m, keypoints_m)
        with torch.no_grad(), torch.autocast(device_type=keypoints_m.device.type, enabled=False):
            pose = canonicalize(keypoints_m, is_left, validate=validate)
            mats, lengths = self.model_inputs(pose)
            points_model = self.points_to_model(pose, points_m.to(keypoints_m.dtype))
            dtype = self.network.weights[0].dtype
            posed = self.network.pose_parts(
                mats.to(dtype), lengths.to(dtype), self.part_segments(pose, mats).to(dtype)
            )
            radii = self._culling_radii(pose, posed, cull)
            best, labels, _ = self.network.max_logits(points_model.to(dtype), posed, radii, chunk_size)
            occ = torch.sigmoid(best)
        return (occ, labels) if return_parts else occ
