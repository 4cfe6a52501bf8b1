"""Choosing sampled grasps by contact balance (halo.grasp.selection)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from halo.core.checkpoint import load_model
from halo.grasp.selection import contact_balance, most_balanced, surface_with_normals
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


def test_most_balanced_keeps_the_balanced_grasps_in_their_order(halo_reference):
    halo, _ = load_model(halo_reference / "model_best.pt")
    hand, pinch, _ = _pinch_and_rest(halo_reference)
    # Grasps 0 and 2 pinch the ball; grasp 1 is the same hand moved 1 cm from its thumb towards
    # its index tip (the index sinks in, the thumb lets go); grasp 3 floats away.
    away = torch.nn.functional.normalize(hand[8] - hand[4], dim=0)
    grasps = torch.stack([hand, hand - 0.01 * away, hand, hand + torch.tensor([0.5, 0.0, 0.0])])
    keep, balance = most_balanced(halo.eval(), grasps, pinch, 2)
    assert keep.tolist() == [0, 2]
    assert balance.shape == (4,) and float(balance[3]) == 1.0
    assert most_balanced(halo, grasps, pinch, 10)[0].tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match=r"\(M, 21, 3\)"):
        most_balanced(halo, grasps[:, :20], pinch, 2)
