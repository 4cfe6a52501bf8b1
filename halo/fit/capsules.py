"""The coarse stage's capsule model of a skeleton: a capsule per bone (plus palm segments and the
wrist stump), distances between points and capsules, and the capsule loss.

HALO's occupancy is flat far from the hand, so a start placed a few centimetres off gets no
useful gradient from it; point-to-capsule distances do.  The nearest capsule of each point is
found without autograd (dot products) and only that distance enters the graph: the same values
and gradients as the min over every capsule, at a fraction of the memory.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from halo.core.skeleton import BONES

#: Surrogate radius (metres, mean-hand size) of each of the 20 bones for the coarse capsule model:
#: wrist->finger-root bones are palm (thick), then proximal / middle / distal phalanges.
_CAPSULE_RADII = {
    "root": 0.0155,
    "thumb": (0.012, 0.0095, 0.0085),
    "finger": (0.0095, 0.0083, 0.0072),
}


#: Extra palm segments (index MCP - pinky MCP, thumb CMC - index MCP) and their radii.
_PALM_SEGMENTS = ((5, 17), (1, 5))


_PALM_RADII = (0.009, 0.0125)


#: Wrist stump (mean-hand metres): distance behind the wrist, half width, radius.
_STUMP = (0.008, 0.014, 0.016)
# (Radii: median distance of the original checkpoint's surface to each segment of the skeleton
# that made it, rounded; a mean HALO hand, not tuned per input.)


def capsule_radii() -> np.ndarray:
    radii = []
    for parent, child in BONES:
        finger, level = (child - 1) // 4, (child - 1) % 4
        if parent == 0:
            radii.append(_CAPSULE_RADII["root"] if finger else _CAPSULE_RADII["thumb"][0])
        else:
            radii.append((_CAPSULE_RADII["thumb"] if finger == 0 else _CAPSULE_RADII["finger"])[level - 1])
    return np.array(radii + list(_PALM_RADII) + [_STUMP[2]])


_SEGMENTS = tuple(BONES) + _PALM_SEGMENTS


def capsule_axes(kp: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Capsule axes (B,S,3) x2: the 20 bones, the palm segments and the wrist stump."""
    a = kp[:, [p for p, _ in _SEGMENTS]]
    b = kp[:, [c for _, c in _SEGMENTS]]
    # HALO's palm part reaches ~1.7 cm behind the wrist joint, ~5 cm wide: one segment across it.
    along = kp[:, 9] - kp[:, 0]
    along = along / along.norm(dim=-1, keepdim=True).clamp_min(1e-9)
    across = kp[:, 5] - kp[:, 17]
    across = across - (across * along).sum(-1, keepdim=True) * along
    across = across / across.norm(dim=-1, keepdim=True).clamp_min(1e-9)
    s = scale[:, None]
    back = kp[:, 0] - _STUMP[0] * s * along
    a = torch.cat([a, (back + _STUMP[1] * s * across)[:, None]], dim=1)
    b = torch.cat([b, (back - _STUMP[1] * s * across)[:, None]], dim=1)
    return a, b


def point_segment_distance(p: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """p (B,N,3), segments a,b (B,S,3) -> (B,N,S) distances."""
    ab = (b - a)[:, None]  # (B,1,S,3)
    ap = p[:, :, None] - a[:, None]  # (B,N,S,3)
    t = ((ap * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-10)).clamp(0, 1)
    return (ap - t[..., None] * ab).norm(dim=-1)


def point_segment_distance_by_dots(p: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """:func:`point_segment_distance` expanded into dot products: for choosing, not for values.

    ``|p-a|^2 = |p|^2 - 2 p.a + |a|^2`` and the like are batched matrix products, so no (B,N,S,3)
    tensor is formed (the coarse stage searches ~800 starts x 300 points x 24 capsules per
    iteration; the direct form took 2.4x as long).  The cancellation costs accuracy near an
    axis: in float32, up to ~40 um for centimetre-scale coordinates (the fit centres its inputs).
    """
    ab = b - a  # (B,S,3)
    ab2 = (ab * ab).sum(-1).clamp_min(1e-10)[:, None]  # (B,1,S)
    ap_ab = torch.bmm(p, ab.transpose(1, 2)) - (a * ab).sum(-1)[:, None]  # (B,N,S) = (p-a).(b-a)
    ap2 = (p * p).sum(-1, keepdim=True) - 2 * torch.bmm(p, a.transpose(1, 2)) + (a * a).sum(-1)[:, None]
    t = (ap_ab / ab2).clamp(0, 1)
    # |p - a - t ab|^2 = |ap|^2 - 2 t (ap.ab) + t^2 |ab|^2
    return (ap2 - t * (2 * ap_ab - t * ab2)).clamp_min(0.0).sqrt()


def nearest_capsule_distance(
    p: torch.Tensor, a: torch.Tensor, b: torch.Tensor, r: torch.Tensor
) -> torch.Tensor:
    """(B,N) signed distance of points p (B,N,3) to the nearest of the capsules a,b (B,S,3), radii r (B,S).

    ``(point_segment_distance(p, a, b) - r[:, None]).min(-1)``'s values and gradient (a min
    passes its gradient to the chosen capsule only), but the (B,N,S) search runs without autograd
    (:func:`point_segment_distance_by_dots`; two capsules within its rounding of each other may
    swap) and only each point's own capsule, measured directly, is in the graph: the coarse
    stage's backward handles (B,N) tensors instead of (B,N,S,3) ones (forward + backward of
    :func:`capsule_loss` for 768 starts x 300 points: 1.39 -> 0.23 s, one thread).
    """
    with torch.no_grad():  # .min().indices: argmin over a short last dim runs 2x slower on CPU
        nearest = (point_segment_distance_by_dots(p, a, b) - r[:, None]).min(dim=-1).indices  # (B,N)
    gather = nearest[..., None].expand(-1, -1, 3)
    a_n, b_n = torch.gather(a, 1, gather), torch.gather(b, 1, gather)  # (B,N,3)
    ab, ap = b_n - a_n, p - a_n
    t = ((ap * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-10)).clamp(0, 1)
    return (ap - t[..., None] * ab).norm(dim=-1) - torch.gather(r, 1, nearest)


def nearest_point_distance(q: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(B,M) distance of each q (B,M,3) to its nearest of ``points`` (B,N,3), differentiable in q.

    ``torch.cdist(q, points).min(-1)``'s value and gradient, without cdist's backward (which
    forms the full (B,M,N) gradient): the nearest point is found without autograd.
    """
    with torch.no_grad():
        nearest = torch.cdist(q, points).min(dim=-1).indices  # (B,M)
    return (q - torch.gather(points, 1, nearest[..., None].expand(-1, -1, 3))).norm(dim=-1)


def capsule_loss(
    kp: torch.Tensor,
    scale: torch.Tensor,
    points: torch.Tensor,
    radii: torch.Tensor,
    partial: torch.Tensor,
    free: torch.Tensor | None = None,
    free_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B,) surrogate surface loss of a skeleton as capsules: both ways, metres^2 (Huber).

    ``free`` (B,M,3) samples known to be outside the hand (``free_weight`` (B,M), 0 drops one)
    add the depth of each inside the capsules: for single views this is what keeps the
    skeleton behind the visible points and inside their silhouette.
    """
    a, b = capsule_axes(kp, scale)
    r = radii[None] * scale[:, None]  # (B,S)
    to_skeleton = F.huber_loss(
        nearest_capsule_distance(points, a, b, r),
        torch.zeros_like(points[..., 0]),
        delta=0.01,
        reduction="none",
    )
    # Coverage: points along every bone should have the surface about one radius away.
    t = torch.linspace(0.15, 0.85, 4, device=kp.device, dtype=kp.dtype)
    axis = a[:, :, None] + t[None, None, :, None] * (b - a)[:, :, None]  # (B,S,4,3)
    nn = nearest_point_distance(axis.flatten(1, 2), points).view(*axis.shape[:3])
    gap = torch.relu(nn - r[..., None])
    # Single views see about half of each bone's circumference: only penalise gaps beyond it.
    gap = torch.where(partial[:, None, None], torch.relu(nn - 1.6 * r[..., None]), gap)
    cover = F.huber_loss(gap, torch.zeros_like(gap), delta=0.01, reduction="none")
    loss = to_skeleton.mean(1) + 0.5 * cover.mean(dim=(1, 2))
    if free is not None:
        depth = torch.relu(-nearest_capsule_distance(free, a, b, r))
        inside = F.huber_loss(depth, torch.zeros_like(depth), delta=0.01, reduction="none")
        w = torch.ones_like(inside) if free_weight is None else free_weight
        loss = loss + (w * inside).sum(1) / w.sum(1).clamp_min(1.0)
    return loss
