"""Hand meshes through the network: MISE == dense, culling == full, frame/units, the original's mesh."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh
from pykdtree.kdtree import KDTree

from halo.core.checkpoint import load_original_checkpoint
from halo.core.model import HaloModel
from halo.eval.surface_metrics import chamfer_l1_mm
from halo.hands.sequences import random_skeletons
from halo.meshing.hand_field import HandOccupancyField
from halo.meshing.hand_mesh import extract_hand_mesh
from halo.meshing.isosurface import extract_isosurface


def chamfer_l1(a: trimesh.Trimesh, b: trimesh.Trimesh) -> float:
    return chamfer_l1_mm(a, b, n=20_000) / 1000  # metres


@pytest.fixture(scope="module")
def original(halo_reference):
    model, _ = load_original_checkpoint(halo_reference / "model_best.pt")
    return model


@pytest.fixture(scope="module")
def blob_model() -> HaloModel:
    """A random network whose palm part is a sphere-ish blob: every test needs *some* surface."""
    torch.manual_seed(0)
    model = HaloModel().eval()
    with torch.no_grad():
        # palm part: logit = 20 * (0.15 - |x|) (a ball of radius 0.15 model units = 6 cm)
        for w in model.network.weights:
            w.zero_()
        for b in model.network.biases:
            b.fill_(-50.0)
    return model


def test_mesh_from_random_network_is_empty_not_an_error(blob_model):
    hm = extract_hand_mesh(blob_model, random_skeletons(1, seed=0)[0], resolution_0=16, upsampling_steps=1)
    assert len(hm.mesh.faces) == 0 and hm.stats.n_evaluated > 0


def test_bad_keypoint_shape_is_rejected(blob_model):
    with pytest.raises(ValueError, match=r"keypoints must have shape \(21, 3\)"):
        extract_hand_mesh(blob_model, np.zeros((20, 3)))


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
