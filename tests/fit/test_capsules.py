"""The coarse stage's capsule model: point-capsule distances, their fast forms, the capsule loss."""

import numpy as np
import torch

from halo.fit import capsules
from halo.fit.capsules import (
    capsule_loss,
    capsule_radii,
    nearest_capsule_distance,
    nearest_point_distance,
    point_segment_distance,
    point_segment_distance_by_dots,
)
from halo.fit.priors import HandParameters, KinematicHand
from halo.fit.starts import start_angles
from tests.fit.capsule_hand import capsule_surface, relaxed_hand


def test_capsule_free_space_term_counts_only_free_samples_inside_the_capsules():
    kp = torch.tensor(relaxed_hand(np.eye(3))[None])
    scale = torch.ones(1, dtype=torch.float64)
    radii = torch.tensor(capsule_radii())
    points = torch.tensor(capsule_surface(kp[0].numpy(), n=400).points[None])
    partial = torch.tensor([False])
    base = capsule_loss(kp, scale, points, radii, partial)
    inside = kp[:, [9, 10, 11]]  # on the middle finger's axis: inside its capsule
    outside = kp[:, [9, 10, 11]] + torch.tensor([0.0, 0.05, 0.0], dtype=torch.float64)  # 5 cm above it
    assert torch.allclose(capsule_loss(kp, scale, points, radii, partial, outside), base)
    assert (capsule_loss(kp, scale, points, radii, partial, inside) > base + 1e-5).all()
    dropped = torch.zeros(1, 3, dtype=torch.float64)  # zero weight: ignored
    assert torch.allclose(capsule_loss(kp, scale, points, radii, partial, inside, dropped), base)


def _direct_point_segment_distance(p, a, b):
    """The textbook form (B,N,S,3): what the fit's dot-product form must reproduce."""
    ab = (b - a)[:, None]
    ap = p[:, :, None] - a[:, None]
    t = ((ap * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-10)).clamp(0, 1)
    return (ap - t[..., None] * ab).norm(dim=-1)


def _segments_and_points(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    a = 0.05 * torch.randn(3, 7, 3, generator=g)
    b = a + 0.03 * torch.randn(3, 7, 3, generator=g)
    b[:, 0] = a[:, 0]  # a degenerate segment: a point
    p = 0.06 * torch.randn(3, 200, 3, generator=g)
    p[:, 0] = a[:, 1]  # on an end point
    p[:, 1] = 0.5 * (a[:, 2] + b[:, 2])  # on a segment
    p[:, 2] = a[:, 3] - 2.0 * (b[:, 3] - a[:, 3])  # beyond an end, along the axis
    return p, a, b


def test_point_segment_distances_by_dots_match_the_direct_form_within_tens_of_microns():
    p, a, b = _segments_and_points()
    direct = point_segment_distance(p, a, b)
    np.testing.assert_allclose(direct.numpy(), _direct_point_segment_distance(p, a, b).numpy())
    assert float(direct[:, 0, 1].max()) < 1e-7 and float(direct[:, 1, 2].max()) < 1e-7
    fast = point_segment_distance_by_dots(p, a, b)
    assert fast.shape == (3, 200, 7)
    # float32 dot products of centimetre-scale coordinates: worst next to an axis
    np.testing.assert_allclose(fast.numpy(), direct.numpy(), atol=4e-5)
    assert float((fast - direct).abs()[direct > 0.005].max()) < 2e-6


def test_nearest_capsule_and_nearest_point_distances_have_the_min_s_values_and_gradients():
    p, a, b = _segments_and_points(1)
    r = 0.005 + 0.01 * torch.rand(3, 7, generator=torch.Generator().manual_seed(2))
    leaves = [t.clone().double().requires_grad_(True) for t in (a, b, r)]
    fast = nearest_capsule_distance(p.double(), *leaves)
    (fast * torch.linspace(0, 1, 200, dtype=torch.float64)).sum().backward()
    ref_leaves = [t.clone().double().requires_grad_(True) for t in (a, b, r)]
    ref = (
        (_direct_point_segment_distance(p.double(), *ref_leaves[:2]) - ref_leaves[2][:, None]).min(-1).values
    )
    (ref * torch.linspace(0, 1, 200, dtype=torch.float64)).sum().backward()
    np.testing.assert_allclose(fast.detach().numpy(), ref.detach().numpy(), atol=1e-9)
    for got, want in zip(leaves, ref_leaves, strict=True):
        np.testing.assert_allclose(got.grad.numpy(), want.grad.numpy(), atol=1e-7)

    q = (0.05 * torch.randn(3, 40, 3, dtype=torch.float64)).requires_grad_(True)
    q_ref = q.detach().clone().requires_grad_(True)
    nearest_point_distance(q, p.double()).sum().backward()
    want = torch.cdist(q_ref, p.double()).min(-1).values
    want.sum().backward()
    np.testing.assert_allclose(
        nearest_point_distance(q, p.double()).detach().numpy(), want.detach().numpy(), atol=1e-12
    )
    np.testing.assert_allclose(q.grad.numpy(), q_ref.grad.numpy(), atol=1e-9)


def test_capsule_loss_matches_its_direct_form():
    """The coarse stage's loss with the direct distances and cdist, as before the fast forms."""
    hand = KinematicHand()
    params = HandParameters.initial(
        torch.eye(3)[None].repeat(2, 1, 1),
        torch.zeros(2, 3),
        torch.ones(2),
        torch.tensor(np.stack([start_angles("relaxed"), start_angles("fist")]), dtype=torch.float32),
    )
    with torch.no_grad():
        kp = hand(params)
    pts = torch.tensor(
        np.stack([capsule_surface(k.numpy(), n=1000).points[:300] for k in kp]), dtype=torch.float32
    )
    pts = pts + 0.004 * torch.randn_like(pts)
    free = pts + 0.02 * torch.randn_like(pts)
    radii = torch.tensor(capsule_radii(), dtype=torch.float32)
    partial = torch.tensor([False, True])

    def loss_and_grad():
        k = kp.clone().requires_grad_(True)
        scale = torch.ones(2, requires_grad=True)
        loss = capsule_loss(k, scale, pts, radii, partial, free)
        loss.sum().backward()
        return loss.detach(), k.grad, scale.grad

    fast = loss_and_grad()
    saved = capsules.nearest_capsule_distance, capsules.nearest_point_distance
    try:
        capsules.nearest_capsule_distance = lambda p, a, b, r: (
            (_direct_point_segment_distance(p, a, b) - r[:, None]).min(-1).values
        )
        capsules.nearest_point_distance = lambda q, x: torch.cdist(q, x).min(-1).values
        direct = loss_and_grad()
    finally:
        capsules.nearest_capsule_distance, capsules.nearest_point_distance = saved
    assert float(direct[0].min()) > 0
    for got, want in zip(fast, direct, strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-3, atol=1e-7)
