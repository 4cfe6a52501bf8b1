"""Hand meshes through the network: MISE == dense, culling == full, frame/units, batching, the original's mesh.

The analytic network (:func:`analytic_model`) covers meshing without ../shared; the tests marked
``reference`` repeat the checks on the original checkpoint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from pykdtree.kdtree import KDTree

from halo.core.checkpoint import load_original_checkpoint
from halo.core.model import HaloModel, NetworkConfig
from halo.eval.surface_metrics import chamfer_l1_mm
from halo.hands.sequences import random_skeletons
from halo.meshing.hand_field import HandOccupancyField
from halo.meshing.hand_mesh import extract_hand_mesh, extract_hand_meshes
from halo.meshing.isosurface import extract_isosurface


def chamfer_l1(a: trimesh.Trimesh, b: trimesh.Trimesh) -> float:
    return chamfer_l1_mm(a, b, n=20_000) / 1000  # metres


@pytest.fixture(scope="module")
def original(halo_reference):
    model, _ = load_original_checkpoint(halo_reference / "model_best.pt")
    return model


def analytic_model(centre=(0.04, 0.08, 0.02), axes=(0.10, 0.16, 0.05), steepness=20.0) -> HaloModel:
    """A network whose palm part is an ellipsoid in canonical space; every other part is empty.

    Palm first layer: h_j = leaky(d_j . A (x - centre)) for 64 unit directions d_j, A = 1/axes;
    the hidden layers pass h through (zero weights, residual); the logit is
    ``steepness * (1 - 4/64 * sum_j h_j)``, which is ~linear in the (A-scaled) distance from
    ``centre`` on both sides of the surface, like a trained network's logit near its surface.
    Trained part radii (palm 0.4, others 0.01 model units) keep it cheap: no calibration grid.
    """
    model = HaloModel(NetworkConfig(part_radii=(0.4,) + (0.01,) * 15)).eval()
    net = model.network
    with torch.no_grad():
        for w in net.weights:
            w.zero_()
        for b in net.biases:
            b.zero_()
        net.biases[-1].fill_(-50.0)  # all parts but the palm: never occupied
        n = net.weights[0].shape[1]
        i = torch.arange(n, dtype=torch.float64) + 0.5
        phi, theta = torch.acos(1 - 2 * i / n), np.pi * (1 + 5**0.5) * i  # Fibonacci sphere
        d = torch.stack([phi.sin() * theta.cos(), phi.sin() * theta.sin(), phi.cos()], -1)
        a = d / torch.tensor(axes, dtype=torch.float64)
        net.weights[0][0, :, :3] = a.float()
        net.biases[0][0] = (-(a @ torch.tensor(centre, dtype=torch.float64))).float()
        net.weights[-1][0, 0] = -steepness * 4 / n
        net.biases[-1][0] = steepness
    return model


@pytest.fixture(scope="module")
def blob_model() -> HaloModel:
    return analytic_model()


@pytest.fixture(scope="module")
def empty_model() -> HaloModel:
    """Every part's logit is -50 everywhere: no surface at all."""
    model = HaloModel(NetworkConfig(part_radii=(0.05,) * 16)).eval()
    with torch.no_grad():
        for w in model.network.weights:
            w.zero_()
        for b in model.network.biases:
            b.fill_(-50.0)
    return model


def test_mesh_of_an_empty_field_is_empty_not_an_error(empty_model):
    hm = extract_hand_mesh(empty_model, random_skeletons(1, seed=0)[0], resolution_0=16, upsampling_steps=1)
    assert len(hm.mesh.faces) == 0 and hm.stats.n_evaluated > 0


def test_bad_keypoint_shape_is_rejected(blob_model):
    with pytest.raises(ValueError, match=r"keypoints must have shape \(21, 3\)"):
        extract_hand_mesh(blob_model, np.zeros((20, 3)))
    with pytest.raises(ValueError, match=r"keypoints must have shape \(T, 21, 3\)"):
        extract_hand_meshes(blob_model, np.zeros((21, 3)))
    with pytest.raises(ValueError, match="interpolate must be one of"):
        extract_hand_mesh(blob_model, random_skeletons(1, seed=0)[0], interpolate="linear")


def test_analytic_network_meshes_to_its_ellipsoid_and_mise_equals_dense(blob_model):
    kp = random_skeletons(1, seed=0)[0]
    for interpolate in ("logit", "probability"):
        mise = extract_hand_mesh(blob_model, kp, resolution_0=16, upsampling_steps=2, interpolate=interpolate)
        dense = extract_hand_mesh(
            blob_model, kp, resolution_0=64, upsampling_steps=0, interpolate=interpolate
        )
        assert mise.mesh.is_watertight and mise.mesh.volume > 0
        # The same grid and field: MISE finds the dense grid's vertices (all but a few where it
        # interpolates unevaluated nodes, and those within a fraction of a cell).
        offsets = KDTree(dense.mesh.vertices).query(mise.mesh.vertices)[0]
        assert np.mean(offsets < 1e-7) > 0.97 and offsets.max() < 1e-3
        assert mise.stats.n_evaluated < 0.5 * dense.stats.n_evaluated
        # 4/3 pi abc of the canonical ellipsoid (model units / 2.5 = metres): 214.5 cm^3
        assert mise.mesh.volume * 1e6 == pytest.approx(214.5, rel=0.05)
    labelled = extract_hand_mesh(blob_model, kp, resolution_0=16, upsampling_steps=1, part_labels=True)
    assert labelled.part_labels is not None and set(np.unique(labelled.part_labels)) == {0}  # the palm


def test_network_mesh_follows_translation_and_mirrors_for_left_hands(blob_model):
    kp = random_skeletons(1, seed=4)[0]
    base = extract_hand_mesh(blob_model, kp, resolution_0=16, upsampling_steps=2).mesh
    shift = np.array([0.3, -0.2, 1.0])
    moved = extract_hand_mesh(blob_model, kp + shift, resolution_0=16, upsampling_steps=2).mesh
    assert len(moved.vertices) == len(base.vertices)
    np.testing.assert_allclose(moved.vertices, base.vertices + shift, atol=1e-5)
    # The mirrored keypoints of a left hand give the mirror image of the right hand's mesh,
    # still closed and outward (positive volume: the mirror's flipped winding is undone).
    left = extract_hand_mesh(
        blob_model, kp * [1, -1, 1], is_left=True, resolution_0=16, upsampling_steps=2
    ).mesh
    assert left.is_watertight and left.volume > 0
    assert abs(left.volume - base.volume) / base.volume < 1e-4
    assert KDTree(base.vertices * [1, -1, 1]).query(left.vertices)[0].max() < 1e-5
    # ... which a right-hand reading of the same keypoints does not give
    wrong = extract_hand_mesh(blob_model, kp * [1, -1, 1], resolution_0=16, upsampling_steps=2).mesh
    assert KDTree(base.vertices * [1, -1, 1]).query(wrong.vertices)[0].max() > 1e-3


def test_logit_interpolation_removes_terracing_at_low_resolution():
    # A steep field (like a trained network's): the probability saturates within a cell, so its
    # 0.5 crossings snap towards edge midpoints; the logit's crossings stay on the surface.
    model = analytic_model(steepness=60.0)
    kp = random_skeletons(1, seed=1)[0]
    fine = extract_hand_mesh(model, kp, resolution_0=32, upsampling_steps=3).mesh
    errors = {}
    for interpolate in ("logit", "probability"):
        coarse = extract_hand_mesh(
            model, kp, resolution_0=16, upsampling_steps=2, interpolate=interpolate
        ).mesh
        errors[interpolate] = KDTree(fine.vertices).query(coarse.vertices)[0].mean()
    assert errors["logit"] < 0.6 * errors["probability"], errors


def test_batched_meshing_equals_one_by_one_with_several_hands_per_network_call(blob_model, monkeypatch):
    kp = random_skeletons(5, seed=7)
    left = np.array([False, True, False, True, False])
    kp[left] *= [1, -1, 1]
    single = [
        extract_hand_mesh(blob_model, k, is_left=bool(s), resolution_0=16, upsampling_steps=2)
        for k, s in zip(kp, left, strict=True)
    ]
    calls = []
    packed = blob_model.network.max_logits_packed

    def counting(points, counts, *args, **kwargs):
        calls.append(len(counts))
        return packed(points, counts, *args, **kwargs)

    monkeypatch.setattr(blob_model.network, "max_logits_packed", counting)
    done = []
    many = extract_hand_meshes(
        blob_model,
        kp,
        is_left=left,
        resolution_0=16,
        upsampling_steps=2,
        hands_per_call=3,
        progress=done.append,
    )
    assert done == [3, 5] and len(many) == 5
    for a, b in zip(single, many, strict=True):
        assert len(a.mesh.faces) == len(b.mesh.faces) > 0
        np.testing.assert_allclose(a.mesh.vertices, b.mesh.vertices, atol=1e-6)
        assert a.field_stats.points == b.field_stats.points
    assert max(calls) == 3  # a whole group of hands through the network at once
    assert len(calls) < sum(1 for _ in single) * 3  # far fewer network calls than one by one


def test_meshing_changes_no_process_state_and_imports_no_rendering():
    code = (
        "import sys, numpy as np\n"
        "from tests.meshing.test_hand_mesh import analytic_model\n"
        "from halo.hands.sequences import random_skeletons\n"
        "from halo.meshing.hand_mesh import extract_hand_mesh\n"
        "hm = extract_hand_mesh(analytic_model(), random_skeletons(1, seed=0)[0], resolution_0=8, upsampling_steps=1)\n"
        "assert len(hm.mesh.faces) > 0\n"
        "bad = [m for m in sys.modules if m.startswith(('halo.viz', 'halo.utils.allocator', 'pyrender'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


@pytest.mark.reference
def test_mise_matches_dense_and_is_watertight(original):
    kp = random_skeletons(1, seed=3)[0]
    mise = extract_hand_mesh(original, kp, resolution_0=16, upsampling_steps=2)
    dense = extract_hand_mesh(original, kp, resolution_0=64, upsampling_steps=0)
    assert mise.mesh.is_watertight and mise.mesh.volume > 0
    assert chamfer_l1(mise.mesh, dense.mesh) < 0.5e-3  # metres (the bound)
    assert mise.stats.n_evaluated < 0.3 * dense.stats.n_evaluated


@pytest.mark.reference
def test_culled_field_gives_the_same_labels_as_full_evaluation(original):
    for seed in range(2):
        kp = random_skeletons(1, seed=10 + seed, max_flexion=0.9)[0]
        culled = HandOccupancyField(original, kp, cull="radius")
        full = HandOccupancyField(original, kp, cull=False)
        v, f, _ = extract_isosurface(culled, [-0.55] * 3, [0.55] * 3, 16, 2, batch_size=1000)
        v2, f2, _ = extract_isosurface(full, [-0.55] * 3, [0.55] * 3, 16, 2)
        assert len(f) == len(f2)
        culled.stats.points = culled.stats.part_evaluations = 0
        rng = np.random.default_rng(seed)
        pts = v2[rng.integers(0, len(v2), 50_000)] + rng.normal(scale=0.01, size=(50_000, 3))
        a, b = culled(pts), full(pts)
        assert ((a > 0.5) == (b > 0.5)).all()
        assert culled.stats.parts_per_point < 6  # and it actually skips work
        ibp = HandOccupancyField(original, kp, cull="ibp")  # the exact (slower) bound
        c = ibp(pts[:5000])
        assert np.abs(c - b[:5000])[b[:5000] > 1e-4].max() == 0.0


@pytest.mark.reference
def test_mesh_sits_on_the_keypoints_in_metres_for_any_placement(original):
    kp = random_skeletons(1, seed=4)[0]
    base = extract_hand_mesh(original, kp, resolution_0=16, upsampling_steps=2).mesh
    shift = np.array([0.3, -0.2, 1.0])
    moved = extract_hand_mesh(original, kp + shift, resolution_0=16, upsampling_steps=2).mesh
    np.testing.assert_allclose(moved.vertices.mean(0), base.vertices.mean(0) + shift, atol=1e-5)
    # the hand encloses its joints (within a few mm) and is hand-sized
    d, _ = KDTree(base.vertices).query(kp)
    assert base.contains(kp[[0, 5, 9, 13, 17]]).sum() >= 4 or d.max() < 0.02
    assert 150e-6 < base.volume < 600e-6  # 150-600 cm^3
    # mirrored left hand gives the mirrored mesh
    left = extract_hand_mesh(
        original, kp * [1, -1, 1], is_left=True, resolution_0=16, upsampling_steps=2
    ).mesh
    assert abs(left.volume - base.volume) / base.volume < 1e-3


@pytest.mark.reference
def test_reproduces_the_original_generator_mesh(original, halo_reference):
    ref_npz = np.load(halo_reference / "dev_reference.npz")
    ref = trimesh.load(halo_reference / "mesh_frame000_cm.ply", process=False)
    ref.vertices = ref.vertices / 100.0
    hm = extract_hand_mesh(
        original, ref_npz["keypoints"][0], resolution_0=32, upsampling_steps=2, part_labels=True
    )
    assert hm.mesh.is_watertight
    assert chamfer_l1(hm.mesh, ref) < 1e-3  # within 1 mm at effective 128 already
    assert abs(hm.mesh.volume - ref.volume) / ref.volume < 0.02
    assert hm.part_labels is not None and len(np.unique(hm.part_labels)) == 16
