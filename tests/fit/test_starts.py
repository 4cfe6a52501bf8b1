"""Single-view starts, the coarse stage's distances and its free-space term (no network)."""

import numpy as np
import torch

from halo.fit.fit import (
    FitConfig,
    _hand_samples,
    _view_starts,
    capsule_loss,
    capsule_radii,
    fresh_placements,
    nearest_capsule_distance,
    nearest_point_distance,
    point_segment_distance,
    point_segment_distance_by_dots,
    retry_rows,
    start_angles,
    suspect_fingers,
)
from halo.fit.inputs import single_view_cloud
from halo.fit.priors import HandParameters, KinematicHand
from tests.fit.capsule_hand import capsule_surface


def _relaxed_hand(rotation: np.ndarray) -> np.ndarray:
    params = HandParameters.initial(
        torch.tensor(rotation[None]),
        torch.zeros(1, 3, dtype=torch.float64),
        torch.ones(1, dtype=torch.float64),
        torch.tensor(start_angles("relaxed"))[None],
    )
    with torch.no_grad():
        return KinematicHand().double()(params)[0].numpy()


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(a.T @ b) - 1) / 2, -1, 1))))


def test_view_starts_cover_the_hand_seen_from_its_back_and_from_its_palm():
    import trimesh

    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    truth = q * np.sign(np.linalg.det(q))
    kp = _relaxed_hand(truth)
    back = truth @ np.array([0.0, 1.0, 0.0])  # the rest hand's back of the hand is +y
    hull = trimesh.convex.convex_hull(capsule_surface(kp, n=3000).points)  # a closed blob to look at
    samples = _hand_samples(_relaxed_hand(np.eye(3)), rng)
    rest = _relaxed_hand(np.eye(3))
    for side, sign in (("back", 1.0), ("palm", -1.0)):
        camera = hull.centroid + sign * 0.4 * back
        view = single_view_cloud(hull, camera, num_points=1500)
        centre = view.points.mean(0)
        starts = list(_view_starts(view.points - centre, centre - camera, samples, rest, FitConfig()))
        assert len(starts) == 2 * len(FitConfig().view_angles)
        for rot, _, _ in starts:
            np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-9)
            assert np.linalg.det(rot) > 0
        best_angle, best_label = min((_angle_deg(rot, truth), lab) for rot, _, lab in starts)
        assert best_angle < 30.0 and best_label.startswith(side), (best_angle, best_label)


def test_capsule_free_space_term_counts_only_free_samples_inside_the_capsules():
    kp = torch.tensor(_relaxed_hand(np.eye(3))[None])
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


def test_single_views_retry_placements_not_yet_tried_and_closed_surfaces_the_next_starts_by_loss():
    # rows 0-5 of input 0, 6-7 of input 1; by loss: 3, 1, 4, 0, 5, 2 (and 7, 6)
    order = np.array([3, 1, 6, 4, 0, 7, 5, 2])
    owner = np.array([0, 0, 0, 0, 0, 0, 1, 1])
    placement = ["back+0", "back+0", "palm+0", "back+0", "back+180", "palm+0", "flip0", "flip1"]
    # refined: row 3 (back+0) and row 2 (palm+0): the unseen placement back+180 (row 4) first,
    # although rows 1 and 0 have lower losses, then the next by loss
    assert retry_rows(order, owner, [3, 2], placement, 0, 2, new_placements=True) == [4, 1]
    assert retry_rows(order, owner, [3, 2], placement, 0, 1, new_placements=True) == [4]
    assert retry_rows(order, owner, [3, 2], placement, 0, 9, new_placements=True) == [4, 1, 0, 5]
    assert retry_rows(order, owner, [3, 2, 6], placement, 1, 2, new_placements=True) == [7]
    # closed surfaces: by loss only
    assert retry_rows(order, owner, [3, 2], placement, 0, 2, new_placements=False) == [1, 4]


def test_a_missed_single_view_gets_the_best_start_of_each_placement_the_coarse_stage_never_kept():
    # rigid rows 0-5 of input 0, 6-9 of input 1; lower score is better
    score = np.array([0.5, 0.1, 0.2, 0.3, 0.4, 0.05, 0.9, 0.8, 0.7, 0.6])
    owner = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
    placement = ["back+0", "back+0", "palm+30", "palm+30", "back+90", "palm+0", "a", "b", "b", "c"]
    tried = {(0, "back+0"), (0, "palm+0"), (1, "c")}
    # input 0: palm+30's best row (2) before back+90's (4); back+0 and palm+0 were tried already
    assert fresh_placements(score, owner, placement, [0], tried, 2) == [2, 4]
    assert fresh_placements(score, owner, placement, [0], tried, 1) == [2]
    # input 1: b's best row is 8 (0.7 < 0.8), then a; c was tried; only the inputs asked for
    assert fresh_placements(score, owner, placement, [1], tried, 5) == [8, 6]
    assert fresh_placements(score, owner, placement, [0, 1], tried, 1) == [2, 8]
    assert fresh_placements(score, owner, placement, [], tried, 3) == []


def test_suspect_fingers_are_the_ones_nearest_to_the_unexplained_points():
    kp = torch.tensor(_relaxed_hand(np.eye(3)))
    rng = np.random.default_rng(0)
    # 30 points around the middle finger's tip, 10 around the ring finger's middle joint.
    middle = kp[12] + torch.tensor(rng.normal(0, 0.002, (30, 3)))
    ring = kp[14] + torch.tensor(rng.normal(0, 0.002, (10, 3)))
    assert suspect_fingers(kp, torch.cat([middle, ring]), 2) == [2, 3]
    assert suspect_fingers(kp, ring, 2) == [3]  # only fingers some point is nearest to
    assert suspect_fingers(kp, ring[:0], 2) == []


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
    from halo.fit import fit as fit_module

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
    saved = fit_module.nearest_capsule_distance, fit_module.nearest_point_distance
    try:
        fit_module.nearest_capsule_distance = lambda p, a, b, r: (
            (_direct_point_segment_distance(p, a, b) - r[:, None]).min(-1).values
        )
        fit_module.nearest_point_distance = lambda q, x: torch.cdist(q, x).min(-1).values
        direct = loss_and_grad()
    finally:
        fit_module.nearest_capsule_distance, fit_module.nearest_point_distance = saved
    assert float(direct[0].min()) > 0
    for got, want in zip(fast, direct, strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-3, atol=1e-7)
