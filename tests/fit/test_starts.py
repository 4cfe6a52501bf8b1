"""Where fits start and restart: single-view starts, retries, fresh placements, suspect fingers (no network)."""

import numpy as np
import pytest
import torch

from halo.fit.fit import FitConfig
from halo.fit.inputs import single_view_cloud
from halo.fit.starts import (
    fresh_placements,
    hand_volume_samples,
    retry_rows,
    suspect_fingers,
    tilted_starts,
    view_starts,
)
from tests.fit.capsule_hand import capsule_surface, relaxed_hand


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(a.T @ b) - 1) / 2, -1, 1))))


def test_view_starts_cover_the_hand_seen_from_its_back_and_from_its_palm():
    import trimesh

    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    truth = q * np.sign(np.linalg.det(q))
    kp = relaxed_hand(truth)
    back = truth @ np.array([0.0, 1.0, 0.0])  # the rest hand's back of the hand is +y
    hull = trimesh.convex.convex_hull(capsule_surface(kp, n=3000).points)  # a closed blob to look at
    samples = hand_volume_samples(relaxed_hand(np.eye(3)), rng)
    rest = relaxed_hand(np.eye(3))
    for side, sign in (("back", 1.0), ("palm", -1.0)):
        camera = hull.centroid + sign * 0.4 * back
        view = single_view_cloud(hull, camera, num_points=1500)
        centre = view.points.mean(0)
        starts = list(view_starts(view.points - centre, centre - camera, samples, rest, FitConfig()))
        assert len(starts) == 2 * len(FitConfig().view_angles)
        for rot, _, _ in starts:
            np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-9)
            assert np.linalg.det(rot) > 0
        best_angle, best_label = min((_angle_deg(rot, truth), lab) for rot, _, lab in starts)
        assert best_angle < 30.0 and best_label.startswith(side), (best_angle, best_label)


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
    kp = torch.tensor(relaxed_hand(np.eye(3)))
    rng = np.random.default_rng(0)
    # 30 points around the middle finger's tip, 10 around the ring finger's middle joint.
    middle = kp[12] + torch.tensor(rng.normal(0, 0.002, (30, 3)))
    ring = kp[14] + torch.tensor(rng.normal(0, 0.002, (10, 3)))
    assert suspect_fingers(kp, torch.cat([middle, ring]), 2) == [2, 3]
    assert suspect_fingers(kp, ring, 2) == [3]  # only fingers some point is nearest to
    assert suspect_fingers(kp, ring[:0], 2) == []


def test_tilted_starts_turn_the_start_about_the_second_and_third_principal_axes():
    from scipy.spatial.transform import Rotation

    axes = Rotation.random(random_state=1).as_matrix()
    base = Rotation.random(random_state=2).as_matrix()
    starts = tilted_starts(base, axes, "flip2", (40, -40))
    assert [lab for _, lab in starts] == ["flip2", "flip2t1+40", "flip2t2+40", "flip2t1-40", "flip2t2-40"]
    assert np.allclose(starts[0][0], base)
    for (rot, _), (ax, deg) in zip(starts[1:], [(1, 40), (2, 40), (1, -40), (2, -40)], strict=True):
        assert np.allclose(rot @ rot.T, np.eye(3), atol=1e-9) and np.linalg.det(rot) > 0
        turn = Rotation.from_matrix(rot @ base.T).as_rotvec()  # the turn applied to the start
        assert np.degrees(np.linalg.norm(turn)) == pytest.approx(40.0)
        assert np.allclose(turn / np.linalg.norm(turn) * np.sign(deg), axes[:, ax], atol=1e-9)
