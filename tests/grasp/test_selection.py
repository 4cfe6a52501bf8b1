"""Choosing sampled grasps by contact balance (halo.grasp.selection)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from halo.core.checkpoint import load_model
from halo.grasp.selection import choose_grasps, contact_balance, static_hold_residual, surface_with_normals
from tests.helpers import random_hands


def _pinch_and_rest(halo_reference):
    """A hand pinching a small ball between its thumb and index tips, and the same hand with the
    ball moved under its index tip (touched from one side only)."""
    hand = random_hands(1, seed=6, curl=0.6).float()[0]  # thumb and index tips 4.1 cm apart
    thumb_tip, index_tip = hand[4], hand[8]
    gap = float((index_tip - thumb_tip).norm())
    centre = 0.5 * (thumb_tip + index_tip)
    radius = 0.5 * gap - 0.003  # both tips' skin reaches ~3 mm into it
    ball = trimesh.creation.icosphere(subdivisions=3, radius=radius)
    pinch = ball.copy()
    pinch.apply_translation(centre.numpy())
    away = torch.nn.functional.normalize(index_tip - thumb_tip, dim=0)
    rest = ball.copy()
    rest.apply_translation((index_tip + away * (radius - 0.003)).numpy())
    return hand, pinch, rest


def test_a_pinch_is_balanced_and_a_one_sided_touch_is_not(halo_reference):
    halo, _ = load_model(halo_reference / "model_best.pt")
    hand, pinch, rest = _pinch_and_rest(halo_reference)
    scores = {}
    for name, ball in (("pinch", pinch), ("rest", rest)):
        surface, normals = surface_with_normals(ball, 2000)
        assert np.allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-4)
        balance = contact_balance(
            halo.eval(), hand[None], torch.from_numpy(surface), torch.from_numpy(normals)
        )
        scores[name] = float(balance[0])
    # The pinch's contact patches face each other (not exactly: the thumb's pad is larger and
    # the ball also brushes the index's side); the rest's all face one way.
    assert scores["pinch"] < 0.6 and scores["rest"] > 0.9, scores
    # A hand far from the object touches nothing: the worst score, not a division by zero.
    far = hand[None] + torch.tensor([1.0, 0.0, 0.0])
    surface, normals = surface_with_normals(pinch, 500)
    assert float(contact_balance(halo, far, torch.from_numpy(surface), torch.from_numpy(normals))[0]) == 1.0


def test_choose_grasps_keeps_the_balanced_grasps_in_their_order(halo_reference):
    halo, _ = load_model(halo_reference / "model_best.pt")
    hand, pinch, _ = _pinch_and_rest(halo_reference)
    # Grasps 0 and 2 pinch the ball; grasp 1 is the same hand moved 1 cm from its thumb towards
    # its index tip (the index sinks in, the thumb lets go); grasp 3 floats away.
    away = torch.nn.functional.normalize(hand[8] - hand[4], dim=0)
    grasps = torch.stack([hand, hand - 0.01 * away, hand, hand + torch.tensor([0.5, 0.0, 0.0])])
    keep, balance, _ = choose_grasps(halo.eval(), grasps, pinch, 2)
    assert keep.tolist() == [0, 2]
    assert balance.shape == (4,) and float(balance[3]) == 1.0
    assert choose_grasps(halo, grasps, pinch, 10).keep.tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match=r"\(M, 21, 3\)"):
        choose_grasps(halo, grasps[:, :20], pinch, 2)


def _cube_contacts(*, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Contact points and the outward normals there on a 4 cm cube centred at the origin."""
    h = 0.02
    if where == "bottom corners":
        pts = np.array([[x, y, -h] for x in (-0.015, 0.015) for y in (-0.015, 0.015)])
        return pts, np.tile([0.0, 0.0, -1.0], (4, 1))
    if where == "one bottom edge":
        return np.array([[0.015, 0.0, -h]]), np.array([[0.0, 0.0, -1.0]])
    if where == "one side":
        return np.array([[h, 0.0, 0.0]]), np.array([[1.0, 0.0, 0.0]])
    if where == "opposing sides":
        return np.array([[h, 0.0, 0.0], [-h, 0.0, 0.0]]), np.array([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]])
    raise ValueError(where)


@pytest.mark.parametrize(
    ("where", "friction", "holds"),
    [
        ("bottom corners", 3.0, True),  # carried from below, around the centre of mass
        ("opposing sides", 3.0, True),  # squeezed: friction carries the weight
        ("opposing sides", 0.2, False),  # ... not with little friction within the force bound
        ("one side", 3.0, False),  # a side push cannot carry a weight
        ("one bottom edge", 3.0, False),  # carried off-centre: the object tips
    ],
)
def test_static_hold_residual_is_zero_only_where_the_contacts_can_carry_the_object(where, friction, holds):
    points, normals = _cube_contacts(where=where)
    residual = static_hold_residual(
        points, normals, np.zeros(3), np.array([0.0, 0.0, -1.0]), torque_length_m=0.035, friction=friction
    )
    assert (residual < 1e-6) == holds, residual
    if not holds:
        assert residual > 0.1
    # Gravity the other way: contacts from below hold nothing (they can only push).
    if where == "bottom corners":
        up = static_hold_residual(
            points, normals, np.zeros(3), np.array([0.0, 0.0, 1.0]), torque_length_m=0.035
        )
        assert up == pytest.approx(1.0, abs=1e-6)
    assert (
        static_hold_residual(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(3), [0, 0, -1], torque_length_m=1)
        == 1.0
    )


def test_hold_residuals_count_the_touched_points_that_press_as_the_object_falls():
    """A ball touched on its bottom cap is carried against -z gravity; touched on its top cap it
    is not, unless the skin overlaps those points: a squeeze presses whatever way they face, and
    with the simulation's friction (3) a squeezed cap carries the ball."""
    from halo.grasp.halo_terms import REFERENCE_SKIN_SLOPE
    from halo.grasp.selection import SIM_FRICTION, hold_residuals

    ball = trimesh.creation.icosphere(subdivisions=3, radius=0.04)
    surface, normals = surface_with_normals(ball, 1500)
    bottom, top = normals[:, 2] < -0.8, normals[:, 2] > 0.8
    just_touching = -0.001 * REFERENCE_SKIN_SLOPE  # the skin 1 mm outside the point
    logits = torch.full((3, len(surface)), -0.05 * REFERENCE_SKIN_SLOPE)  # 5 cm away: no touch
    logits[0, bottom] = just_touching
    logits[1, top] = just_touching
    logits[2, top] = 0.002 * REFERENCE_SKIN_SLOPE  # 2 mm deep
    res = hold_residuals(
        logits, surface, normals, np.zeros(3), np.array([0.0, 0.0, -1.0]), torque_length_m=0.04
    )
    assert res[0] < 1e-6 and res[1] == pytest.approx(1.0) and res[2] < 0.5, res
    assert SIM_FRICTION == 3.0


def test_choose_grasps_with_gravity_prefers_the_hand_that_carries_the_object(halo_reference):
    """The same pinch with gravity along the pinch axis (the ball pressed onto the index pad) and
    across it: the balance cannot tell them apart, the hold residual and the choice can."""
    halo, _ = load_model(halo_reference / "model_best.pt")
    hand, pinch, _ = _pinch_and_rest(halo_reference)
    far = hand + torch.tensor([0.5, 0.0, 0.0])
    grasps = torch.stack([far, hand])
    axis = torch.nn.functional.normalize(hand[8] - hand[4], dim=0).numpy()
    choice = choose_grasps(halo.eval(), grasps, pinch, 1, gravity=axis)
    assert choice.keep.tolist() == [1]
    assert choice.hold_residual.shape == (2,) and choice.hold_residual[0] == pytest.approx(1.0)
    assert choice.hold_residual[1] < choice.hold_residual[0]
    assert choose_grasps(halo, grasps, pinch, 1).hold_residual is None
