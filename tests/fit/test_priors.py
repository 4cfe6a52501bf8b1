import numpy as np
import pytest
import torch

from halo.core.skeleton import BONES
from halo.fit.priors import (
    REST_KEYPOINTS,
    HandParameters,
    KinematicHand,
    PosePrior,
    fit_angles_from_mano_pose,
    rotation_6d_to_matrix,
)
from halo.fit.starts import start_angles


def _params(angles, rotation=None, scale=1.0, translation=(0.0, 0.0, 0.0)):
    angles = torch.as_tensor(np.asarray(angles), dtype=torch.float64)[None]
    rot = torch.eye(3, dtype=torch.float64)[None] if rotation is None else rotation
    return HandParameters.initial(
        rot,
        torch.tensor([translation], dtype=torch.float64),
        torch.tensor([scale], dtype=torch.float64),
        angles,
    )


def test_zero_pose_is_the_rest_hand_moved_rigidly_and_scaled():
    hand = KinematicHand().double()
    rot = rotation_6d_to_matrix(torch.tensor([[0.3, -1.0, 0.2, 0.5, 0.4, 1.0]], dtype=torch.float64))
    kp = hand(_params(np.zeros((5, 3, 3)), rot, scale=0.9, translation=(0.1, -0.2, 0.3)))[0].numpy()
    expected = 0.9 * REST_KEYPOINTS @ rot[0].numpy().T + np.array([0.1, -0.2, 0.3])
    np.testing.assert_allclose(kp, expected, atol=1e-6)  # float32 rest skeleton


def test_posing_keeps_every_bone_length_and_curls_towards_the_palm():
    hand = KinematicHand().double()
    kp = hand(_params(start_angles("fist")))[0].numpy()
    for p, c in BONES:
        assert np.linalg.norm(kp[c] - kp[p]) == pytest.approx(
            np.linalg.norm(REST_KEYPOINTS[c] - REST_KEYPOINTS[p])
        )
    # The palm faces -y in the rest frame: curled fingertips move towards -y and back towards the wrist.
    for tip in (8, 12, 16, 20):
        assert kp[tip, 1] < REST_KEYPOINTS[tip, 1] - 0.005
        assert np.linalg.norm(kp[tip]) < np.linalg.norm(REST_KEYPOINTS[tip]) - 0.04


def test_angle_limits_penalise_only_outside_the_limits():
    hand = KinematicHand().double()
    inside = _params(start_angles("relaxed"))
    assert hand.angle_limit_penalty(inside).item() == 0.0
    bent_back = start_angles("open")
    bent_back[2, 1, 0] = -np.deg2rad(60)  # middle PIP hyper-extended by 60 degrees
    assert hand.angle_limit_penalty(_params(bent_back)).item() > 0.5


def test_degenerate_penalty_grows_when_a_bone_collapses():
    hand = KinematicHand().double()
    p = _params(np.zeros((5, 3, 3)))
    assert hand.degenerate_penalty(p).item() == 0.0
    p.bone_log_lengths[0, 4] = np.log(0.1)
    assert hand.degenerate_penalty(p).item() > 100 * (np.log(10) - np.log(2)) ** 2 * 0.99


@pytest.mark.slow
def test_kinematics_match_the_synthetic_hand_and_its_mano_layer():
    from halo.hands.mano import ManoLayer
    from halo.hands.synthetic_hand import get_synthetic_hand_model, pose_to_angles, sample_hand_poses

    layer = ManoLayer(get_synthetic_hand_model(), dtype=torch.float64)
    pose = sample_hand_poses(6, seed=4)
    with torch.no_grad():
        target = layer(torch.tensor(pose)).keypoints.numpy()
    np.testing.assert_allclose(target[0] * 0 + layer(torch.zeros(1, 45, dtype=torch.float64)).keypoints[0].numpy(),
                               REST_KEYPOINTS, atol=5e-5)  # fmt: skip
    angles = pose_to_angles(pose)  # MANO internal joint rows
    rows = (12, 0, 3, 9, 6)
    ours = np.deg2rad(np.stack([angles[:, r : r + 3] for r in rows], axis=1))
    np.testing.assert_allclose(fit_angles_from_mano_pose(pose), ours)  # what the pose prior learns from
    hand = KinematicHand().double()
    params = HandParameters.initial(
        torch.eye(3, dtype=torch.float64).repeat(6, 1, 1),
        torch.zeros(6, 3, dtype=torch.float64),
        torch.ones(6, dtype=torch.float64),
        torch.tensor(ours),
    )
    np.testing.assert_allclose(hand(params).numpy(), target, atol=5e-5)


def _most_likely_pinky(prior: PosePrior, angles: np.ndarray) -> np.ndarray:
    """The pinky's (3,3) angles that minimise the prior with the other fingers held at ``angles``."""
    others = torch.tensor(angles[None], dtype=torch.float32)
    pinky = others[:, 4].clone().zero_().requires_grad_(True)
    opt = torch.optim.LBFGS([pinky], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        full = torch.cat([others[:, :4], pinky[:, None]], dim=1)
        loss = prior.penalty(full).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return pinky.detach()[0].numpy()


def test_the_learned_pose_prior_guesses_a_hidden_finger_from_the_visible_ones():
    from halo.hands.synthetic_hand import sample_hand_poses

    prior = PosePrior.synthetic()
    # Poses of the sampler it has not seen score like its own; the same poses with one finger
    # bent backwards (outside every pose family) score far worse.
    held_out = fit_angles_from_mano_pose(sample_hand_poses(200, seed=3))
    odd = held_out.copy()
    odd[:, 2, :, 0] = -np.deg2rad(40)  # middle finger hyper-extended at every joint
    score = lambda a: prior.penalty(torch.tensor(a, dtype=torch.float32)).numpy()  # noqa: E731
    assert np.median(score(held_out)) < 10  # measured 6.3
    assert np.median(score(odd)) > 5 * np.median(score(held_out))
    # The point of the prior: an unseen pinky follows the other fingers.  In a fist it curls, in an
    # open hand it stays straight (a pull towards one fixed pose would answer the same for both).
    fist = fit_angles_from_mano_pose(sample_hand_poses(1, seed=5, kind="fist"))[0]
    open_hand = fit_angles_from_mano_pose(sample_hand_poses(1, seed=5, kind="open"))[0]
    curled, straight = _most_likely_pinky(prior, fist), _most_likely_pinky(prior, open_hand)
    flexion = lambda a: np.rad2deg(a[:, 0].sum())  # noqa: E731  (MCP + PIP + DIP)
    assert flexion(curled) > 0.8 * flexion(fist[4])
    assert flexion(straight) < 60.0  # open hands: total flexion up to ~80 degrees
    assert flexion(curled) - flexion(straight) > 120.0


def test_a_pose_prior_with_the_wrong_shapes_or_values_is_refused():
    with pytest.raises(ValueError, match=r"\(45,\).*\(44,\)"):
        PosePrior(np.zeros(44), np.eye(45))
    with pytest.raises(ValueError, match="not finite"):
        PosePrior(np.full(45, np.nan), np.eye(45))
    with pytest.raises(ValueError, match="n>=2"):
        PosePrior.from_angles(np.zeros((1, 5, 3, 3)))
