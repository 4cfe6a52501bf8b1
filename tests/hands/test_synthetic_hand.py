"""Tests of halo.hands.synthetic_hand: mesh validity, proportions, skinning, shape space, pose sampler."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import trimesh
from scipy.spatial.transform import Rotation

from halo.core.skeleton import bone_lengths_from_keypoints
from halo.hands import pose_sampler
from halo.hands import synthetic_hand as sh
from halo.hands.mano import load_mano_model

# Bone lengths of real hands (metres), part order palm, index1-3, middle1-3, pinky1-3, ring1-3, thumb1-3.
REFERENCE_BONES = np.array(
    [0.0931, 0.0331, 0.0226, 0.0241, 0.0320, 0.0239, 0.0266, 0.0218, 0.0196, 0.0197]
    + [0.0289, 0.0258, 0.0248, 0.0313, 0.0277, 0.0335]
)


def _self_overlap_fraction(verts: np.ndarray, faces: np.ndarray) -> float:
    """Fraction of vertices whose point 0.5 mm outside the surface is inside the mesh (self-overlap)."""
    igl = pytest.importorskip("igl")
    normals = trimesh.Trimesh(verts, faces, process=False).vertex_normals
    wn = igl.fast_winding_number(verts, faces.astype(np.int64), verts + 0.0005 * normals)
    return float((wn > 0.5).mean())


def test_template_is_one_closed_manifold(model):
    mesh = trimesh.Trimesh(model.v_template, model.f, process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.body_count == 1 and mesh.euler_number == 2
    assert mesh.volume > 0
    assert 1500 <= len(model.f) <= 3300
    assert model.v_template.shape == (model.num_vertices, 3) and model.side == "right"
    # No self-intersection at rest, and the hand is not degenerate (~ 300 cm^3).
    assert _self_overlap_fraction(model.v_template, model.f) == 0.0
    assert 250e-6 < mesh.volume < 400e-6


def test_proportions_and_regressor(model, layer):
    kp = layer().keypoints
    length = torch.linalg.norm(kp[0, 12] - kp[0, 0]).item()
    assert 0.18 <= length <= 0.19
    bones = bone_lengths_from_keypoints(kp)[0].numpy()
    np.testing.assert_array_less(np.abs(bones / REFERENCE_BONES - 1.0), 0.25)
    # Wrist at the origin, fingers along -x, thumb on +z, back of the hand towards +y.
    np.testing.assert_allclose(kp[0, 0].numpy(), 0.0, atol=1e-9)
    assert kp[0, 12, 0] < -0.17 and kp[0, 4, 2] > 0.05
    # Convex regressor rows built from vertices near their joint.
    reg = model.J_regressor
    assert reg.min() >= 0.0
    np.testing.assert_allclose(reg.sum(1), 1.0, atol=1e-12)
    joints = reg @ model.v_template
    for j in range(16):
        used = model.v_template[reg[j] > 0]
        assert len(used) >= 4
        assert np.linalg.norm(used - joints[j], axis=1).max() < 0.035


def test_skinning_weights(model):
    w = model.weights
    assert w.min() >= 0.0
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-12)
    distal = (3, 6, 12, 9, 15)  # index, middle, ring, pinky, thumb distal joints; tips: thumb, index, ...
    for tip, joint in zip(model.tip_vertex_ids, (15, 3, 6, 12, 9), strict=True):
        assert w[tip].argmax() == joint
    assert set(distal) == {3, 6, 9, 12, 15}
    # Weights vary smoothly over the surface: across any edge by less than 0.5.
    e = np.concatenate([model.f[:, [0, 1]], model.f[:, [1, 2]], model.f[:, [2, 0]]])
    assert np.abs(w[e[:, 0]] - w[e[:, 1]]).max() < 0.5


@pytest.mark.parametrize("kind", sh.POSE_KINDS)
def test_posed_meshes_stay_clean(model, layer, kind):
    poses = sh.sample_hand_poses(6, seed=11, kind=kind)
    verts = layer(torch.from_numpy(poses)).vertices.numpy()
    rest_volume = trimesh.Trimesh(model.v_template, model.f).volume
    for v in verts:
        assert np.isfinite(v).all()
        mesh = trimesh.Trimesh(v, model.f, process=False)
        assert mesh.is_watertight
        assert abs(mesh.volume / rest_volume - 1.0) < 0.10
        assert _self_overlap_fraction(v, model.f) < 0.015


def test_sampled_poses_respect_limits_and_do_not_collide():
    lim = sh.POSE_LIMITS_DEG
    for kind in (*sh.POSE_KINDS, None):
        poses = sh.sample_hand_poses(300, seed=2, kind=kind)
        assert poses.shape == (300, 45) and np.isfinite(poses).all()
        ang = sh.pose_to_angles(poses)
        assert (ang >= lim[None, :, :, 0] - 1e-6).all() and (ang <= lim[None, :, :, 1] + 1e-6).all(), kind
        np.testing.assert_allclose(sh.angles_to_pose(ang), poses, atol=1e-9)
        for key, clearance in sh.finger_clearances(ang).items():
            assert clearance.min() >= -1e-9, (kind, key)
    # No hyperextension beyond 20 degrees anywhere.
    assert lim[:, 0, 0].min() >= -25


def test_pose_kinds_look_like_their_names(model, layer):
    def flex(kind):
        return sh.pose_to_angles(sh.sample_hand_poses(200, seed=4, kind=kind))[..., 0]

    long_rows = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    open_, fist, point = flex("open"), flex("fist"), flex("point")
    assert open_[:, long_rows].mean() < 20 and fist[:, long_rows].mean() > 70
    assert point[:, 0:3].mean() < 15 and point[:, 3:12].mean() > 70  # index straight, rest curled
    # Pinch: the thumb's distal pad reaches the index's (posed mesh, < 6 mm apart).
    poses = sh.sample_hand_poses(8, seed=4, kind="pinch")
    verts = layer(torch.from_numpy(poses)).vertices.numpy()
    label = model.weights.argmax(1)
    for v in verts:
        gap = np.linalg.norm(v[label == 15][:, None] - v[label == 3][None], axis=-1).min()
        assert gap < 0.006
    # Fist: fingertips come back close to the palm.
    fist_kp = layer(torch.from_numpy(sh.sample_hand_poses(8, seed=4, kind="fist"))).keypoints
    assert (fist_kp[:, [8, 12, 16], 0] > -0.12).all()


def test_pinch_table_brings_pads_together():
    for curl in np.linspace(pose_sampler._PINCH_CURLS[0], pose_sampler._PINCH_CURLS[-1], 11):
        thumb = np.array(
            [np.interp(curl, pose_sampler._PINCH_CURLS, pose_sampler._PINCH_THUMB[:, k]) for k in range(5)]
        )
        gap, clearance = pose_sampler._pinch_gap(curl, thumb)
        assert 0.0 <= gap < 0.003 and clearance > -0.0005


def test_betas_change_size_monotonically(model, layer):
    values = torch.linspace(-2.0, 2.0, 5, dtype=torch.float64)

    def measure(index):
        betas = torch.zeros(5, 10, dtype=torch.float64)
        betas[:, index] = values
        out = layer(betas=betas)
        volumes = np.array([trimesh.Trimesh(v, model.f).volume for v in out.vertices.numpy()])
        return out.keypoints, volumes

    kp, vol = measure(0)  # overall size
    length = torch.linalg.norm(kp[:, 12] - kp[:, 0], dim=-1).numpy()
    assert (np.diff(length) > 0).all() and (np.diff(vol) > 0).all()
    assert 0.85 < length[1] / length[2] < 0.97
    kp, _ = measure(1)  # palm width: index MCP - pinky MCP distance
    assert (np.diff(torch.linalg.norm(kp[:, 5] - kp[:, 17], dim=-1).numpy()) > 0).all()
    kp, _ = measure(2)  # finger length
    assert (np.diff(bone_lengths_from_keypoints(kp)[:, 4:7].sum(1).numpy()) > 0).all()
    _, vol = measure(3)  # finger thickness
    assert (np.diff(vol) > 0).all()
    for index in range(10):  # every direction does something
        assert np.abs(model.shapedirs[:, :, index]).max() > 1e-4


def test_pca_pose_space(model, layer):
    comps = model.hands_components
    np.testing.assert_allclose(comps @ comps.T, np.eye(45), atol=1e-10)
    pose = sh.sample_hand_poses(3, seed=9)
    coeffs = (pose - model.hands_mean) @ comps.T
    via_pca = layer(torch.from_numpy(coeffs), use_pca=True, flat_hand_mean=False).vertices
    direct = layer(torch.from_numpy(pose)).vertices
    torch.testing.assert_close(via_pca, direct, atol=1e-10, rtol=0)
    # The mean pose is a half-closed natural hand, inside the limits.
    ang = sh.pose_to_angles(model.hands_mean[None])[0]
    assert (ang >= sh.POSE_LIMITS_DEG[..., 0]).all() and (ang <= sh.POSE_LIMITS_DEG[..., 1]).all()


def test_interpolate_poses_is_per_joint_slerp():
    a, b = sh.sample_hand_poses(2, seed=5, kind=None)
    seq = sh.interpolate_poses(a, b, 7)
    assert seq.shape == (7, 45)
    np.testing.assert_allclose(seq[0], a, atol=1e-12)
    np.testing.assert_allclose(seq[-1], b, atol=1e-12)
    ra, rm, rb = (Rotation.from_rotvec(x.reshape(15, 3)) for x in (a, seq[3], b))
    np.testing.assert_allclose((ra.inv() * rm).magnitude(), (rm.inv() * rb).magnitude(), atol=1e-9)


def test_save_and_load_npz_and_official_pkl_layout(model, tmp_path):
    npz = sh.load_synthetic_hand_model(sh.save_synthetic_hand_model(model, tmp_path / "synthetic.npz"))
    pkl_path = sh.save_synthetic_hand_model(model, tmp_path / "SYNTH_RIGHT.pkl")
    pkl = load_mano_model(pkl_path)
    for other in (npz, pkl):
        for key, value in model.arrays().items():
            np.testing.assert_array_equal(getattr(other, key), value, err_msg=key)
    raw = pickle.loads(pkl_path.read_bytes())  # our own file: plain pickle is fine here
    assert sp.issparse(raw["J_regressor"]) and raw["J_regressor"].format == "csc"
    assert {"J", "bs_style", "bs_type", "hands_components", "hands_mean", "shapedirs"} <= set(raw)
    with pytest.raises(ValueError, match="suffix"):
        sh.save_synthetic_hand_model(model, tmp_path / "model.txt")
    # The shared in-process model is read-only; the cache file round-trips.
    assert not model.v_template.flags.writeable
    cached = sh.get_synthetic_hand_model(cache_path=tmp_path / "cache.npz")
    assert (tmp_path / "cache.npz").is_file()
    np.testing.assert_array_equal(sh.get_synthetic_hand_model(cache_path=tmp_path / "cache.npz").f, cached.f)


@pytest.mark.slow
def test_build_is_deterministic(model):
    again = sh.build_synthetic_hand_model(seed=0)
    for key, value in model.arrays().items():
        np.testing.assert_array_equal(getattr(again, key), value, err_msg=key)
