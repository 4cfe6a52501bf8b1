"""Fits on surfaces made from known keypoints (analytic capsule hand; the reference checkpoint when present)."""

import dataclasses

import numpy as np
import pytest
import torch

from halo.fit import FitConfig, fit_hands
from halo.fit.inputs import HandSurface
from halo.fit.priors import HandParameters, KinematicHand, rotation_6d_to_matrix
from halo.fit.starts import start_angles
from tests.fit.capsule_hand import CapsuleHandModel, capsule_surface

FAST = FitConfig(num_surface=400, num_free=400, coarse_iterations=80, fine_iterations=100)
#: A few seconds per fit: enough to check what a report says, not to fit well.
TINY = FitConfig(
    num_surface=200,
    num_free=200,
    poses=("relaxed",),
    coarse_rigid_iterations=10,
    coarse_iterations=20,
    fine_iterations=20,
    finger_restart_rounds=0,  # these fits miss on purpose; test_finger_restarts covers the restarts
)


def _unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _posed_hand(seed: int) -> np.ndarray:
    """Known keypoints: the mean hand half-curled with jitter, a random rotation, 40 cm from the origin."""
    rng = np.random.default_rng(seed)
    angles = start_angles("relaxed") * rng.uniform(0.6, 1.3, (5, 3, 1)) * np.array([1, 0.3, 0])
    rot = rotation_6d_to_matrix(torch.tensor(rng.normal(size=(1, 6))))
    params = HandParameters.initial(
        rot,
        torch.tensor([[0.1, 0.05, 0.4]]),
        torch.tensor([rng.uniform(0.9, 1.1)]),
        torch.tensor(angles)[None],
    )
    with torch.no_grad():
        return KinematicHand().double()(params)[0].numpy()


# ~2 min on the shared 2-core machine under load (12 starts x 260 iterations): not in the fast suite.
@pytest.mark.slow
@pytest.mark.xfail(
    reason="known gap: hand 1 lands in a local minimum (wrist and index MCP within 1 mm, fingers 20-70 mm off)",
    strict=False,
)
def test_fit_recovers_the_keypoints_that_made_the_surface_batched_and_left():
    model = CapsuleHandModel()
    truths = [_posed_hand(1), _posed_hand(2)]
    surfaces = [capsule_surface(truths[0], n=3000), capsule_surface(truths[1], n=3000, seed=1)]
    # The second hand is given as a left hand: its mirror image.
    mirror = np.diag([-1.0, 1.0, 1.0])
    surfaces[1] = HandSurface(surfaces[1].points @ mirror, surfaces[1].normals @ mirror, closed=True)
    results = fit_hands(model, surfaces, is_left=[False, True], config=FAST)
    expected = [truths[0], truths[1] @ mirror]
    for result, truth in zip(results, expected, strict=True):
        err_mm = np.linalg.norm(result.keypoints - truth, axis=1) * 1000
        assert err_mm.mean() < 4.0, err_mm.round(1)
        assert err_mm.max() < 12.0, err_mm.round(1)
        assert result.report.converged, result.report.reason
        assert result.report.surface_error_mm < 1.5
    assert results[1].report.is_left


def test_a_non_hand_shape_is_reported_as_not_converged():
    normals = _unit_vectors(np.random.default_rng(0), 3000)
    ball = HandSurface(0.06 * normals + np.array([0.0, 0.0, 0.3]), normals, closed=True, name="ball")
    result = fit_hands(CapsuleHandModel(), [ball], config=dataclasses.replace(TINY, poses=("open",)))[0]
    assert not result.report.converged
    assert "surface error" in result.report.reason
    assert result.report.surface_error_mm > 3.0
    assert np.isfinite(result.keypoints).all()  # a skeleton is still returned, flagged


def test_a_joint_far_from_every_input_point_is_reported_as_not_converged():
    from scipy.spatial import cKDTree

    truth = _posed_hand(3)
    surface = capsule_surface(truth, n=1500)
    # The same fit twice: its joints lie a few mm from the points (the gap is reported), so only a
    # tolerance below that gap flags it, naming the joint.
    strict = dataclasses.replace(TINY, joint_gap_tolerance_mm=1.0)
    loose, flagged = (fit_hands(CapsuleHandModel(), [surface], config=c)[0] for c in (TINY, strict))
    gap = 1000 * cKDTree(surface.points).query(loose.keypoints)[0].max()
    assert loose.report.extra["joint_gap_mm"] == pytest.approx(gap, rel=1e-3)
    assert 1.0 < gap < TINY.joint_gap_tolerance_mm
    assert "from every input point" not in loose.report.reason
    assert not flagged.report.converged and "from every input point" in flagged.report.reason


def test_a_part_of_the_surface_the_fit_leaves_unexplained_is_reported_as_not_converged():
    truth = _posed_hand(1)
    clean = capsule_surface(truth, n=1500)
    # 8 % more points in a blob 2 cm beyond the middle fingertip: no hand explains them, yet they
    # raise the mean surface error by only ~1.5 mm (below its 3 mm tolerance).
    rng = np.random.default_rng(0)
    tip, dip = truth[12], truth[11]
    centre = tip + 0.02 * (tip - dip) / np.linalg.norm(tip - dip)
    blob = centre + rng.normal(0, 0.003, (120, 3))
    normals = _unit_vectors(rng, 120)
    odd = HandSurface(
        np.concatenate([clean.points, blob]),
        np.concatenate([clean.normals, normals]),
        closed=True,
        name="odd",
    )
    small = dataclasses.replace(
        TINY, num_surface=400, coarse_iterations=40, fine_iterations=60, retry_starts=0
    )
    clean_fit, odd_fit = fit_hands(CapsuleHandModel(), [clean, odd], config=small)
    # The blob's share shows up as unexplained points, over what the same fit leaves of the hand.
    gained = odd_fit.report.extra["unexplained_fraction"] - clean_fit.report.extra["unexplained_fraction"]
    assert 0.04 < gained < 0.12
    assert odd_fit.report.extra["unexplained_fraction"] > small.unexplained_fraction
    assert not odd_fit.report.converged and "from the fitted surface" in odd_fit.report.reason
    assert odd_fit.report.surface_error_mm < small.surface_tolerance_mm  # the mean alone would not see it


def test_the_share_of_the_cameras_empty_space_inside_the_fitted_hand_decides_a_single_views_convergence():
    from halo.fit.capsules import capsule_axes
    from halo.fit.fit import _filled_free, surface_misses

    truth = _posed_hand(2)
    kp = torch.tensor(truth[None], dtype=torch.float32)
    a, b = capsule_axes(kp, torch.ones(1))
    inside = ((a + b) / 2)[0, :20]  # bone midpoints: inside the hand
    far = torch.tensor(truth.mean(0) + 0.3 * _unit_vectors(np.random.default_rng(0), 60), dtype=torch.float32)
    free = torch.cat([inside, far, inside])[None]
    labels = torch.cat([torch.zeros(80), torch.ones(20)])[None]  # the last 20 are labelled inside
    assert _filled_free(CapsuleHandModel(), kp, free, labels).item() == pytest.approx(20 / 80)
    config = FitConfig()
    err = np.full(100, 1.0)  # a surface error that passes
    assert "empty space in front of the camera" in " ".join(surface_misses(err, True, config, 0.02))
    assert surface_misses(err, True, config, 0.5 * config.filled_free_fraction) == []
    assert surface_misses(err, False, config, 0.5) == []  # closed surfaces: the unexplained points instead


def test_a_single_view_fit_reports_the_empty_space_it_fills_and_is_retried_when_that_fails():
    truth = _posed_hand(4)
    full = capsule_surface(truth, n=3000)
    camera = truth.mean(0) + 0.4 * np.array([0.0, 0.0, -1.0])
    seen = ((camera - full.points) * full.normals).sum(1) > 0  # the side facing the camera
    view = HandSurface(full.points[seen], full.normals[seen], partial=True, camera=camera, name="view")
    # The same (short, rough) fit twice: the measured share is reported; a limit above it passes,
    # one below it fails the fit and makes it retry, naming the reason.
    limits = (dataclasses.replace(TINY, filled_free_fraction=f) for f in (1.0, -1.0))
    loose, flagged = (fit_hands(CapsuleHandModel(), [view], config=c)[0] for c in limits)
    assert 0.0 <= loose.report.extra["filled_free_fraction"] < 0.5
    assert "empty space" not in loose.report.reason
    assert not flagged.report.converged and "empty space in front of the camera" in flagged.report.reason
    assert flagged.report.extra["retried"]


def test_a_hands_fit_does_not_depend_on_the_other_inputs_of_its_batch():
    # Each input draws its own samples (seeded by its points): fitting it alone or behind another
    # input gives the same skeleton (a shared random stream used to move single-view fits by cm).
    surfaces = [capsule_surface(_posed_hand(5), n=1500), capsule_surface(_posed_hand(6), n=1500, seed=1)]
    alone = fit_hands(CapsuleHandModel(), [surfaces[1]], config=TINY)[0]
    second = fit_hands(CapsuleHandModel(), surfaces, config=TINY)[1]
    assert second.report.start == alone.report.start
    np.testing.assert_allclose(second.keypoints, alone.keypoints, atol=1e-4)


def test_finger_restarts_replace_a_fit_that_misses_by_one_that_explains_more_of_the_surface():
    angles = start_angles("open")
    angles[1] = start_angles("fist")[1]  # the index finger curled into the palm, the others open
    params = HandParameters.initial(
        torch.eye(3)[None].double(), torch.tensor([[0.0, 0.0, 0.4]]).double(), torch.ones(1).double(),
        torch.tensor(angles)[None],
    )  # fmt: skip
    with torch.no_grad():
        truth = KinematicHand().double()(params)[0].numpy()
    surface = capsule_surface(truth, n=2000)
    # Only open starts and short stages: the fit misses; the restarts reset one finger at a time.
    short = FitConfig(
        num_surface=300, num_free=300, poses=("open",), coarse_rigid_iterations=20, coarse_iterations=40,
        fine_iterations=60, finger_restart_iterations=60,
    )  # fmt: skip
    configs = (dataclasses.replace(short, finger_restart_rounds=n) for n in (0, 1))
    without, with_restarts = (fit_hands(CapsuleHandModel(), [surface], config=c)[0] for c in configs)
    assert not without.report.converged and "+" not in without.report.start
    # A restarted fit won: its label names the finger and the pose it restarted from, and its loss is
    # lower (the restarts only add candidates; the best final loss wins).
    finger, _, pose = with_restarts.report.start.split("+")[-1].partition(":")
    assert finger in ("thumb", "index", "middle", "ring", "pinky") and pose in short.finger_restart_poses
    assert with_restarts.report.losses["total"] < 0.75 * without.report.losses["total"]


@pytest.mark.reference
@pytest.mark.slow
def test_reference_mesh_frame0_is_fitted_within_5mm(halo_reference):
    from halo.core.checkpoint import load_model
    from halo.fit import load_hand_surface

    model, _ = load_model(halo_reference / "model_best.pt")
    truth = np.load(halo_reference / "dev_reference.npz")["keypoints"][0]
    surface = load_hand_surface(halo_reference / "mesh_frame000_cm.ply", units="cm")
    result = fit_hands(model, [surface])[0]
    err_mm = np.linalg.norm(result.keypoints - truth, axis=1) * 1000
    assert err_mm.mean() <= 5.0 and err_mm.max() <= 15.0, err_mm.round(1)
    assert result.report.converged, result.report.reason


def test_pruned_descent_continues_the_kept_rows_exactly_as_without_pruning():
    """_optimise(prune=...): the kept rows carry on with their Adam moments and the schedule, so a
    loss that is a sum over rows gives them the same end point as never dropping the others."""
    from halo.fit.fit import _optimise

    def start():
        g = torch.Generator().manual_seed(0)
        return HandParameters(*[torch.randn(s, generator=g, dtype=torch.float64) for s in _shapes(6)])

    target = start()
    for t in target.tensors():
        t.add_(0.3)

    def loss_for(rows):
        def loss(p, frac=1.0):
            sq = [(a - b[rows]) ** 2 * (1 + frac) for a, b in zip(p.tensors(), target.tensors(), strict=True)]
            return sum(x.reshape(len(x), -1).sum(1) for x in sq), None

        return loss

    full = start()
    full_history = _optimise(full, 30, 0.05, loss_for(torch.arange(6)))
    state = {"rows": torch.arange(6)}

    def loss(p, frac=1.0):
        return loss_for(state["rows"])(p, frac)

    def choose(step_loss):
        assert step_loss.shape == (6,)
        state["rows"] = torch.tensor([1, 4])
        return state["rows"]

    pruned = start()
    history = _optimise(pruned, 30, 0.05, loss, prune=(10, choose))
    assert pruned.rot6d.shape == (2, 6) and history.shape == (30, 2)
    for got, want in zip(pruned.tensors(), full.tensors(), strict=True):
        torch.testing.assert_close(got, want[[1, 4]])
    torch.testing.assert_close(history, full_history[:, [1, 4]])
    assert not pruned.angles.requires_grad


def _shapes(b):
    return [(b, 6), (b, 3), (b,), (b, 5, 3), (b, 15), (b, 5, 3, 3)]


def test_a_finger_restart_resets_that_fingers_angles_root_and_bone_lengths_only():
    from halo.fit.starts import finger_restarts

    g = torch.Generator().manual_seed(0)
    fitted = HandParameters(*[torch.randn(s, generator=g, dtype=torch.float64) for s in _shapes(3)])
    rows = torch.tensor([2, 0])
    starts = finger_restarts(fitted, rows, [(3, "fist"), (0, "open")])
    for n, (row, finger, pose) in enumerate([(2, 3, "fist"), (0, 0, "open")]):
        np.testing.assert_allclose(starts.angles[n, finger].numpy(), start_angles(pose)[finger])
        assert (starts.root_offsets[n, finger] == 0).all()
        assert (starts.bone_log_lengths[n, 3 * finger : 3 * finger + 3] == 0).all()
        # Every other finger and the rigid placement stay as fitted.
        others = [f for f in range(5) if f != finger]
        assert torch.equal(starts.angles[n, others], fitted.angles[row, others])
        assert torch.equal(starts.root_offsets[n, others], fitted.root_offsets[row, others])
        kept = [i for i in range(15) if i // 3 != finger]
        assert torch.equal(starts.bone_log_lengths[n, kept], fitted.bone_log_lengths[row, kept])
        for name in ("rot6d", "translation", "log_scale"):
            assert torch.equal(getattr(starts, name)[n], getattr(fitted, name)[row])
    # The fits themselves are not modified; without the reset only the angles change.
    assert not torch.equal(fitted.angles[2, 3], starts.angles[0, 3])
    angles_only = finger_restarts(fitted, rows, [(3, "fist"), (0, "open")], reset_root=False)
    assert torch.equal(angles_only.root_offsets, fitted.root_offsets[rows])
    assert torch.equal(angles_only.bone_log_lengths, fitted.bone_log_lengths[rows])


def test_tilted_single_view_starts_are_placed_only_for_misses_and_a_fit_that_passes_wins():
    truth = _posed_hand(4)
    full = capsule_surface(truth, n=3000)
    camera = truth.mean(0) + 0.4 * np.array([0.0, 0.0, -1.0])
    seen = ((camera - full.points) * full.normals).sum(1) > 0
    view = HandSurface(full.points[seen], full.normals[seen], partial=True, camera=camera, name="view")
    # Every start the coarse stage may keep is refined (no retries): the 16 untilted starts of the
    # one pose (12 view starts, 4 PCA flips). The 16 tilted ones are placed only for a miss that gets
    # fresh placements (none here), so the fit is the same with or without them.
    no_retries = dataclasses.replace(
        TINY, partial_retry_starts=0, partial_fresh_starts=0, coarse_keep=64, keep_starts=64
    )
    configs = [dataclasses.replace(no_retries, partial_tilt_angles=t) for t in ((), (40, -40))]
    plain, tilted = (fit_hands(CapsuleHandModel(), [view], config=c)[0] for c in configs)
    assert plain.report.extra["starts_refined"] == tilted.report.extra["starts_refined"] == 16
    assert plain.report.extra["starts_placed"] == tilted.report.extra["starts_placed"] == 16
    np.testing.assert_allclose(tilted.keypoints, plain.keypoints, atol=1e-6)
    assert tilted.report.start == plain.report.start
    # A fit that misses on purpose (no free-space share can pass) retries with fresh placements, the
    # 16 tilted ones (4 flips x 2 axes x 2 angles) placed now among the candidates; whatever wins, no
    # fit passes, so the lowest loss of all is reported.
    flagged = fit_hands(
        CapsuleHandModel(),
        [view],
        config=dataclasses.replace(TINY, filled_free_fraction=-1.0, partial_fresh_starts=8),
    )[0]
    assert flagged.report.extra["retried"] and not flagged.report.converged
    assert flagged.report.extra["starts_placed"] == 32
    assert flagged.report.extra["starts_refined"] > TINY.keep_starts + TINY.partial_retry_starts
