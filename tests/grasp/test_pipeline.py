"""The shared grasp pipeline (sample -> mesh -> score), its report, and the one diversity definition."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from halo.core.model import HaloModel, NetworkConfig
from halo.core.skeleton import plausible_skeletons
from halo.grasp.diversity import cluster_analysis, diversity_k, grasp_diversity
from halo.grasp.halo_terms import plausible_hands
from halo.grasp.pipeline import GraspObject, GraspResult, generate_grasps, sample_surface_points
from halo.grasp.report import grasp_label, object_rows, report_markdown, summarize_grasps
from halo.hands.sequences import random_skeletons

MESH = {"resolution_0": 8, "upsampling_steps": 1}


@pytest.fixture(scope="module")
def halo_model() -> HaloModel:
    torch.manual_seed(0)
    return HaloModel(NetworkConfig(hidden_dims=(16, 16, 16, 16), part_radii="default")).eval()


def random_hand_sampler(points: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """Realistic hands (metres), centred on the origin (the object's centred frame), seeded by ``generator``."""
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    hands = random_skeletons(n, seed=seed)
    return torch.from_numpy(hands - hands.mean(axis=(0, 1)))


def _ball(center, radius=0.03) -> trimesh.Trimesh:
    return trimesh.creation.icosphere(subdivisions=2, radius=radius).apply_translation(center)


def _target(name: str, mesh: trimesh.Trimesh) -> GraspObject:
    center = np.asarray(mesh.bounds).mean(0)
    return GraspObject(name, mesh, sample_surface_points(mesh, 64) - center.astype(np.float32), center)


# ----------------------------------------------------------------------------- the pipeline


def test_generate_grasps_samples_in_the_object_frame_and_is_seeded(halo_model):
    offset = np.array([0.5, 0.0, 0.0])  # the sampled hands sit 50 cm from the object centre: no contact

    def away(points, n, generator):
        return random_hand_sampler(points, n, generator) + torch.from_numpy(offset)

    a = _target("a", _ball([2.0, 0.0, 0.0]))
    b = _target("b", _ball([0.0, 0.5, 0.0]))
    results = generate_grasps(away, halo_model, [a, b], 2, seed=3, **MESH)
    assert [(r.object_name, r.index) for r in results] == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    for obj in (a, b):
        kps = np.stack([r.keypoints for r in results if r.object_name == obj.name])
        # Sampled in the centred frame; the pipeline moves them to the frame of the object mesh.
        np.testing.assert_allclose(kps.mean(axis=(0, 1)), obj.center + offset, atol=1e-6)
    assert torch.is_grad_enabled()  # sampling is under a scoped no_grad only

    again = generate_grasps(away, halo_model, [a, b], 2, seed=3, **MESH)
    other = generate_grasps(away, halo_model, [a], 2, seed=4, **MESH)
    assert all(np.array_equal(x.keypoints, y.keypoints) for x, y in zip(results, again, strict=True))
    assert not np.allclose(results[0].keypoints, other[0].keypoints)

    for r in results[:2]:  # scored against the mesh in its own frame
        assert r.error is None and r.hand is not None and len(r.hand.faces) > 0
        hand_to_ball_cm = (np.linalg.norm(r.hand.vertices - a.center, axis=1).min() - 0.03) * 100
        assert r.metrics.volume_cm3 == 0 and not r.metrics.contact
        assert r.metrics.min_distance_cm == pytest.approx(hand_to_ball_cm, abs=0.1)  # icosphere facets


def test_oversampling_refines_every_draw_and_keeps_the_most_balanced_refined_hands(halo_model):
    """--oversample K: K x n draws all go through ``refine``; the n kept are the most balanced
    *refined* hands (halo.grasp.selection.choose_grasps on what is meshed), in draw order."""
    from halo.grasp.selection import choose_grasps

    ball = _target("ball", _ball([0.0, 0.0, 0.0]))
    seen = []

    def refine(keypoints, obj):
        seen.append(keypoints.copy())
        # a refinement that reorders the balance: each hand moves by its own offset
        return keypoints + np.linspace(-0.02, 0.02, len(keypoints))[:, None, None] * np.array([1.0, 0.0, 0.0])

    results = generate_grasps(
        random_hand_sampler, halo_model, [ball], 2, seed=1, refine=refine, oversample=3, **MESH
    )
    assert len(seen) == 1 and seen[0].shape == (6, 21, 3)  # refine saw all 6 draws
    refined = refine(seen[0], ball)
    keep, balance, _ = choose_grasps(halo_model, refined, ball.mesh, 2)
    assert [r.index for r in results] == [0, 1]
    np.testing.assert_allclose(np.stack([r.keypoints for r in results]), refined[keep], atol=1e-9)
    assert balance[keep].max() <= np.delete(balance.numpy(), keep).min()
    with pytest.raises(ValueError, match="oversample must be >= 1"):
        generate_grasps(random_hand_sampler, halo_model, [ball], 2, oversample=0, **MESH)


def test_a_grasp_that_cannot_be_meshed_is_kept_failed(halo_model):
    def one_degenerate(points, n, generator):
        hands = random_hand_sampler(points, n, generator)
        hands[1] = 0.0  # every joint at the origin: no canonical frame
        return hands

    box = trimesh.creation.box(extents=[0.4, 0.4, 0.4])  # encloses every sampled hand
    results = generate_grasps(one_degenerate, halo_model, [_target("box", box)], 3, seed=0, **MESH)
    failed = results[1]
    assert failed.error.startswith("no hand mesh") and failed.metrics is None and failed.hand is None
    assert math.isnan(failed.row()["volume_cm3"]) and failed.row()["contact"] is False
    assert grasp_label(failed) == "box_1 failed"
    for ok in (results[0], results[2]):  # a hand inside the box: all of its volume interpenetrates
        assert ok.metrics.contact and ok.metrics.depth_cm > 0
        assert ok.metrics.volume_cm3 == pytest.approx(ok.hand.volume * 1e6, rel=0.1)

    (row, overall) = object_rows(results)
    assert row["object"] == "box" and overall["object"] == "all"
    assert row["failed"] == 1 and row["grasps"] == 3
    assert row["contact_ratio"] == pytest.approx(2 / 3)  # the failed grasp counts as no contact
    expected = np.mean([results[0].metrics.volume_cm3, results[2].metrics.volume_cm3])
    assert row["volume_cm3"] == pytest.approx(expected)  # ... and is left out of the means


def test_report_states_the_diversity_with_its_k():
    hands = random_skeletons(12, seed=5).astype(np.float32)
    results = [GraspResult("cup", i, kp) for i, kp in enumerate(hands)]
    summary = summarize_grasps(results, k=20, seed=0)
    assert summary.diversity.k == 6 and summary.diversity.k_requested == 20
    text = report_markdown("Generated grasps", summary)
    assert text.startswith("# Generated grasps\n\n| object | grasps |")
    assert "| cup | 12 |" in text and "| all | 12 |" in text
    assert f"entropy {summary.diversity.entropy:.3f} nats (k=6, max {math.log(6):.3f})" in text


# ----------------------------------------------------------------------------- diversity


@pytest.mark.parametrize(
    "k, n, used", [(20, 20, 10), (20, 40, 20), (20, 120, 20), (20, 3, 1), (2, 2, 1), (5, 11, 5)]
)
def test_k_rule_is_at_most_half_the_hands(k, n, used):
    assert diversity_k(k, n) == used


@pytest.mark.parametrize("init", ["random", "k-means++"])
def test_diversity_depends_on_the_set_of_hands_not_their_order(init):
    hands = random_skeletons(24, seed=2)
    a = grasp_diversity(hands, k=20, seed=0, init=init)
    b = grasp_diversity(hands[np.random.default_rng(0).permutation(24)], k=20, seed=0, init=init)
    assert a.k == b.k == 12 and a.n_used == 24
    assert a.entropy == b.entropy and a.cluster_size_cm == b.cluster_size_cm
    assert sorted(a.stats.counts) == sorted(b.stats.counts) and sum(a.stats.counts) == 24
    assert 0 < a.entropy <= math.log(12) + 1e-9


def test_diversity_leaves_out_hands_without_a_canonical_frame():
    hands = random_skeletons(10, seed=1)
    broken = hands.copy()
    broken[3] = broken[3, :1]  # all joints on the wrist
    broken[7, 5] = broken[7, 0] + (broken[7, 9] - broken[7, 0]) * 0.5  # index root parallel to middle
    broken[8, 2] = np.nan
    kept = np.delete(hands, [3, 7, 8], axis=0)
    div = grasp_diversity(broken, k=20)
    assert (div.n_hands, div.n_used, div.k) == (10, 7, 3)
    same = grasp_diversity(kept, k=20)
    assert div.entropy == same.entropy and div.cluster_size_cm == same.cluster_size_cm

    few = grasp_diversity(broken[[3, 7, 8, 0]], k=20)
    assert few.stats is None and math.isnan(few.entropy) and few.k == 0
    assert (
        few.skipped
        == "1 usable grasp(s), need at least 2 (3 left out: degenerate skeleton, no canonical frame)"
    )
    assert "skipped" in few.line() and few.as_dict()["skipped"] == few.skipped


def test_kmeans_plus_plus_is_seeded_and_finds_separated_clusters():
    rng = np.random.default_rng(3)
    centres = rng.normal(0, 0.1, (5, 1, 63))
    features = (centres + rng.normal(0, 1e-4, (5, 8, 63))).reshape(40, 63)
    first = cluster_analysis(features, k=5, canonicalize=False, init="k-means++", seed=7)
    again = cluster_analysis(features, k=5, canonicalize=False, init="k-means++", seed=7)
    assert sorted(first.counts) == [8] * 5 and first.entropy == pytest.approx(math.log(5))
    assert np.array_equal(first.counts, again.counts) and first.cluster_size_cm == again.cluster_size_cm
    with pytest.raises(ValueError, match="init must be 'random' or 'k-means\\+\\+', got 'kmeans'"):
        grasp_diversity(random_skeletons(4), init="kmeans")


def test_plausible_skeletons_is_the_vae_rule():
    hands = torch.from_numpy(random_skeletons(6, seed=4))
    hands[1, 8] = hands[1, 7] + 0.0005  # a 0.5 mm fingertip bone
    hands[2, 5] = hands[2, 0] + 2 * (hands[2, 9] - hands[2, 0])  # parallel index and middle roots
    hands[3, 0, 0] = float("inf")
    expected = [True, False, False, False, True, True]
    assert plausible_skeletons(hands).tolist() == expected
    assert plausible_hands(hands).tolist() == expected  # until the VAE switches to the core's function


def test_grasp_validation_callback_runs_the_same_pipeline(halo_model):
    """The callback's grasps are generate_grasps' grasps: same sampler, points and seed -> same numbers."""
    from types import SimpleNamespace

    from callbacks.grasp_validation import GraspValidation

    ball = _ball([0.0, 0.0, 0.0])
    surface = sample_surface_points(ball, 200, seed=1)
    obj = SimpleNamespace(name="ball", mesh=ball, surface_points=surface)
    module = SimpleNamespace(
        halo_model=halo_model,
        hparams={"object_points": 50},
        sample=lambda points, n, generator: random_hand_sampler(points, n, generator),
    )
    callback = GraspValidation(grasps_per_object=3, resolution_0=8, upsampling_steps=1, seed=2)
    from_callback = callback.generate(module, [obj])
    pick = np.random.default_rng([2, 0]).choice(200, size=50, replace=False)  # the callback's fixed points
    direct = generate_grasps(
        random_hand_sampler, halo_model, [GraspObject("ball", ball, surface[pick])], 3, seed=2, **MESH
    )
    assert [r.row() | {"mesh_seconds": 0} for r in from_callback] == [
        r.row() | {"mesh_seconds": 0} for r in direct
    ]
    assert all(np.array_equal(a.keypoints, b.keypoints) for a, b in zip(from_callback, direct, strict=True))
