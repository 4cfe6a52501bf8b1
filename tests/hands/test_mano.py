"""Tests of halo.hands.mano: the LBS equations, the chumpy-free safe loader and file round trips.

No real MANO file is used: a small random MANO-like model is built here and
written the way the official pickle is (protocol 2, chumpy ``Ch`` objects,
scipy CSC ``J_regressor``).  A fake ``chumpy`` module exists only while
writing, so loading really happens without chumpy.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import scipy.sparse as sp
import torch

from halo.hands.mano import (
    ManoLayer,
    ManoModel,
    ManoModelError,
    axis_angle_to_matrix,
    load_mano_model,
    right_hand_model,
    save_mano_model_npz,
    save_mano_model_pkl,
)

NV = 240
NS = 10
PARENTS = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14)
TIPS = (5, 17, 29, 41, 53)
# Public order = internal order [0,13,14,15,16,1,2,3,17,4,5,6,18,10,11,12,19,7,8,9,20] (spec fact,
# restated here so the test does not depend on halo.core.skeleton).
INTERNAL_TO_PUBLIC = [0, 13, 14, 15, 16, 1, 2, 3, 17, 4, 5, 6, 18, 10, 11, 12, 19, 7, 8, 9, 20]


def make_arrays(seed: int = 0, nv: int = NV) -> dict[str, np.ndarray]:
    """A random MANO-like model: (nv,3) vertices, convex sparse J_regressor, normalized weights."""
    rng = np.random.default_rng(seed)
    weights = rng.random((nv, 16)) ** 4
    weights /= weights.sum(1, keepdims=True)
    jreg = np.zeros((16, nv))
    for j in range(16):
        idx = rng.choice(nv, size=12, replace=False)
        w = rng.random(12) + 0.1
        jreg[j, idx] = w / w.sum()
    q, _ = np.linalg.qr(rng.normal(size=(45, 45)))
    kintree = np.array([[2**32 - 1, *PARENTS[1:]], list(range(16))], dtype=np.int64)
    return {
        "v_template": rng.normal(scale=0.05, size=(nv, 3)),
        "f": rng.integers(0, nv, size=(2 * nv, 3)).astype(np.uint32),
        "weights": weights,
        "posedirs": rng.normal(scale=2e-3, size=(nv, 3, 135)),
        "shapedirs": rng.normal(scale=1e-2, size=(nv, 3, NS)),
        "J_regressor": jreg,
        "kintree_table": kintree,
        "hands_components": q,
        "hands_mean": rng.normal(scale=0.3, size=45),
        "tip_vertex_ids": np.array(TIPS),
    }


@contextlib.contextmanager
def fake_chumpy():
    """Install a minimal fake ``chumpy`` (Ch + Reshape) in sys.modules, removed on exit."""
    pkg, ch_mod, re_mod = (types.ModuleType(n) for n in ("chumpy", "chumpy.ch", "chumpy.reordering"))

    class Ch:
        # Mirrors chumpy's pickled state: __dict__ minus caches, value in ``x``.
        def __init__(self, x):
            self.x = x
            self._dirty_vars = {"x"}
            self._itr = None
            self._depends_on_deps = {}
            self._make_dense = False
            self._make_sparse = False

    class Reshape(Ch):
        def __init__(self, a, newshape):
            self.a = a
            self.newshape = newshape
            self._dirty_vars = set()

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    Reshape.__module__, Reshape.__qualname__ = "chumpy.reordering", "Reshape"
    ch_mod.Ch, re_mod.Reshape = Ch, Reshape
    pkg.ch, pkg.reordering = ch_mod, re_mod
    saved = {k: sys.modules.get(k) for k in ("chumpy", "chumpy.ch", "chumpy.reordering")}
    sys.modules.update({"chumpy": pkg, "chumpy.ch": ch_mod, "chumpy.reordering": re_mod})
    try:
        yield Ch, Reshape
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def write_official_style_pkl(arrays: dict, path: Path, drop: str | None = None, **override) -> Path:
    """Write arrays like MANO_RIGHT.pkl: protocol 2, chumpy shapedirs/posedirs, CSC J_regressor."""
    d = {k: v for k, v in arrays.items() if k != "tip_vertex_ids"}
    nv = d["v_template"].shape[0]
    with fake_chumpy() as (ch, reshape):
        d["shapedirs"] = ch(d["shapedirs"])
        d["posedirs"] = reshape(ch(d["posedirs"].reshape(-1)), (nv, 3, 135))
        d["J_regressor"] = sp.csc_matrix(d["J_regressor"])
        d["J"] = arrays["J_regressor"] @ arrays["v_template"]
        d["bs_style"], d["bs_type"] = "lbs", "lrotmin"
        d["tip_vertex_ids"] = arrays["tip_vertex_ids"]
        d.update(override)
        if drop:
            d.pop(drop)
        path.write_bytes(pickle.dumps(d, protocol=2))
    assert "chumpy" not in sys.modules
    return path


# ----------------------------------------------------------------------------
# Independent float64 reference of the MANO equations (per-vertex loop).
# ----------------------------------------------------------------------------


def _skew(r):
    return np.array([[0, -r[2], r[1]], [r[2], 0, -r[0]], [-r[1], r[0], 0]])


def reference_mano(a, pose45, betas, orient, transl):
    v_shaped = a["v_template"] + a["shapedirs"][:, :, : len(betas)] @ betas
    joints = a["J_regressor"] @ v_shaped
    rots = [scipy.linalg.expm(_skew(r)) for r in np.concatenate([orient, pose45]).reshape(16, 3)]
    feat = np.concatenate([(rots[j] - np.eye(3)).ravel() for j in range(1, 16)])
    v_posed = v_shaped + a["posedirs"] @ feat
    g = [None] * 16
    for j in range(16):
        local = np.eye(4)
        local[:3, :3] = rots[j]
        p = PARENTS[j]
        local[:3, 3] = joints[j] - (joints[p] if p >= 0 else 0.0)
        g[j] = local if p < 0 else g[p] @ local
    skin = []
    for k in range(16):
        back = np.eye(4)
        back[:3, 3] = -joints[k]
        skin.append(g[k] @ back)
    verts = np.zeros_like(v_posed)
    for i in range(len(v_posed)):
        m = sum(a["weights"][i, k] * skin[k] for k in range(16))
        verts[i] = m[:3, :3] @ v_posed[i] + m[:3, 3]
    verts += transl
    posed_joints = np.array([gk[:3, 3] for gk in g]) + transl
    internal = np.concatenate([posed_joints, verts[list(a["tip_vertex_ids"])]])
    return verts, internal[INTERNAL_TO_PUBLIC]


@pytest.fixture(scope="module")
def arrays():
    return make_arrays()


@pytest.fixture(scope="module")
def pkl_path(arrays, tmp_path_factory):
    return write_official_style_pkl(arrays, tmp_path_factory.mktemp("mano") / "MANO_RIGHT.pkl")


def test_loads_official_style_pickle_without_chumpy(arrays, pkl_path):
    assert "chumpy" not in sys.modules
    model = load_mano_model(pkl_path)
    assert "chumpy" not in sys.modules
    assert model.side == "right"
    for key in ("v_template", "weights", "shapedirs", "posedirs", "J_regressor", "hands_mean"):
        np.testing.assert_array_equal(getattr(model, key), arrays[key], err_msg=key)
    np.testing.assert_array_equal(model.kintree_table[1], np.arange(16))
    assert model.parents == PARENTS
    assert model.f.dtype == np.int64


@pytest.mark.parametrize("use_pca", [False, True])
@pytest.mark.parametrize("flat", [True, False])
def test_matches_independent_reference(arrays, pkl_path, use_pca, flat):
    model = load_mano_model(pkl_path)
    layer = ManoLayer(model, dtype=torch.float64, flat_hand_mean=flat)
    rng = np.random.default_rng(1 + 2 * use_pca + flat)
    batch, ncomps, nbetas = 3, 12, 7
    pose = rng.normal(scale=0.8, size=(batch, ncomps if use_pca else 45))
    betas = rng.normal(size=(batch, nbetas))
    orient = rng.normal(size=(batch, 3))
    transl = rng.normal(scale=0.1, size=(batch, 3))
    out = layer(
        torch.from_numpy(pose),
        torch.from_numpy(betas),
        torch.from_numpy(orient),
        torch.from_numpy(transl),
        use_pca=use_pca,
    )
    assert out.vertices.shape == (batch, NV, 3) and out.keypoints.shape == (batch, 21, 3)
    assert out.joint_transforms.shape == (batch, 16, 4, 4) and out.rest_joints.shape == (batch, 16, 3)
    for b in range(batch):
        full = pose[b] @ arrays["hands_components"][:ncomps] if use_pca else pose[b]
        if not flat:
            full = full + arrays["hands_mean"]
        verts, kps = reference_mano(arrays, full, betas[b], orient[b], transl[b])
        np.testing.assert_allclose(out.vertices[b].numpy(), verts, atol=1e-10, rtol=0)
        np.testing.assert_allclose(out.keypoints[b].numpy(), kps, atol=1e-10, rtol=0)
        np.testing.assert_allclose(out.full_pose[b].numpy(), full, atol=1e-12)
        shaped = arrays["v_template"] + arrays["shapedirs"][:, :, :nbetas] @ betas[b]
        np.testing.assert_allclose(out.rest_joints[b].numpy(), arrays["J_regressor"] @ shaped, atol=1e-12)

    # Skinning transforms map the rest joints onto the posed joints.
    skin = out.skinning_transforms()
    rest_h = torch.cat([out.rest_joints, torch.ones(batch, 16, 1, dtype=torch.float64)], -1)
    mapped = (skin @ rest_h[..., None])[..., :3, 0]
    torch.testing.assert_close(mapped, out.joint_transforms[..., :3, 3], atol=1e-12, rtol=0)


def test_zero_input_is_template(pkl_path, arrays):
    layer = ManoLayer(load_mano_model(pkl_path), dtype=torch.float64)
    out = layer(batch_size=2)
    np.testing.assert_allclose(out.vertices[1].numpy(), arrays["v_template"], atol=1e-14)


@pytest.mark.parametrize(
    "payload",
    [
        lambda marker: (os.system, (f"touch {marker}",)),
        lambda marker: (builtins.eval, (f"open({str(marker)!r}, 'w').write('x')",)),
        lambda marker: (subprocess.Popen, (["touch", str(marker)],)),
    ],
    ids=["os.system", "builtins.eval", "subprocess.Popen"],
)
def test_malicious_pickle_is_refused_without_side_effect(tmp_path, payload):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return payload(marker)

    path = tmp_path / "MANO_RIGHT.pkl"
    path.write_bytes(pickle.dumps({"v_template": np.zeros((3, 3)), "f": Evil()}, protocol=2))
    with pytest.raises(ManoModelError, match=r"refusing to load global '\w+\.(system|eval|Popen)'") as err:
        load_mano_model(path)
    assert str(path) in str(err.value)
    assert not marker.exists()


def test_malicious_object_inside_chumpy_state_is_refused(tmp_path, arrays):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = write_official_style_pkl(arrays, tmp_path / "MANO_RIGHT.pkl", hands_mean=Evil())
    with pytest.raises(ManoModelError, match="system"):
        load_mano_model(path)
    assert not marker.exists()


def test_npz_and_pkl_round_trip(pkl_path, tmp_path):
    model = load_mano_model(pkl_path)
    npz = load_mano_model(save_mano_model_npz(model, tmp_path / "model.npz"))
    pkl = load_mano_model(save_mano_model_pkl(model, tmp_path / "again.pkl"))
    for other in (npz, pkl):
        for key, value in model.arrays().items():
            np.testing.assert_array_equal(getattr(other, key), value, err_msg=key)
        assert other.side == "right"
    left = load_mano_model(save_mano_model_pkl(model, tmp_path / "MANO_LEFT.pkl"))
    assert left.side == "left"
    # The npz keeps the side it was saved with, whatever its name.
    left_npz = save_mano_model_npz(left, tmp_path / "renamed_right.npz")
    assert load_mano_model(left_npz).side == "left"

    pose = torch.randn(2, 45, dtype=torch.float64) * 0.5
    outs = [ManoLayer(m, dtype=torch.float64)(pose).vertices for m in (model, npz, pkl)]
    torch.testing.assert_close(outs[0], outs[1], atol=0, rtol=0)
    torch.testing.assert_close(outs[0], outs[2], atol=0, rtol=0)


def test_missing_key_and_wrong_shape_name_the_key(arrays, tmp_path):
    path = write_official_style_pkl(arrays, tmp_path / "MANO_RIGHT.pkl", drop="posedirs")
    with pytest.raises(ManoModelError, match=r"MANO_RIGHT\.pkl: missing key\(s\) 'posedirs'"):
        load_mano_model(path)

    path = write_official_style_pkl(arrays, tmp_path / "bad.pkl", weights=np.ones((NV, 15)) / 15)
    with pytest.raises(
        ManoModelError, match=r"bad\.pkl: key 'weights' has shape \(240, 15\), expected \(240, 16\)"
    ):
        load_mano_model(path)

    bad = dict(arrays, shapedirs=arrays["shapedirs"][:, :2])
    np.savez(tmp_path / "bad.npz", **bad)
    with pytest.raises(ManoModelError, match=r"bad\.npz: key 'shapedirs' has shape \(240, 2, 10\)"):
        load_mano_model(tmp_path / "bad.npz")

    no_tips = {k: v for k, v in arrays.items() if k != "tip_vertex_ids"}
    with pytest.raises(ManoModelError, match="'tip_vertex_ids' is required"):
        ManoModel(**no_tips)


def test_default_tip_ids_for_778_vertex_models():
    a = {k: v for k, v in make_arrays(nv=778).items() if k != "tip_vertex_ids"}
    assert ManoModel(**a).tip_vertex_ids.tolist() == [745, 317, 444, 556, 673]
    assert ManoModel(**a, side="left").tip_vertex_ids.tolist() == [745, 317, 445, 556, 673]


def test_not_a_model_file(tmp_path):
    text = tmp_path / "MANO_RIGHT.pkl"
    text.write_text("this is not a pickle\n")
    with pytest.raises(ManoModelError, match=r"MANO_RIGHT\.pkl: not a readable MANO model file"):
        load_mano_model(text)
    listed = tmp_path / "list.pkl"
    listed.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    with pytest.raises(ManoModelError, match="must hold a dict"):
        load_mano_model(listed)
    with pytest.raises(ManoModelError, match="not found"):
        load_mano_model(tmp_path / "missing.pkl")


def test_gradients_flow_to_pose_and_betas(pkl_path):
    layer = ManoLayer(load_mano_model(pkl_path), dtype=torch.float64)
    for scale in (0.0, 0.7):  # zero pose: Rodrigues must stay differentiable
        pose = (torch.randn(2, 45, dtype=torch.float64) * scale).requires_grad_()
        betas = torch.randn(2, NS, dtype=torch.float64).requires_grad_()
        orient = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
        out = layer(pose, betas, orient)
        (out.vertices.square().sum() + out.keypoints.sum()).backward()
        for g in (pose.grad, betas.grad, orient.grad):
            assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_float32_matches_float64(pkl_path):
    model = load_mano_model(pkl_path)
    l32, l64 = ManoLayer(model), ManoLayer(model).double()
    pose, betas = torch.randn(4, 45) * 0.6, torch.randn(4, NS)
    orient, transl = torch.randn(4, 3), torch.randn(4, 3) * 0.1
    o32, o64 = (
        l32(pose, betas, orient, transl),
        l64(pose.double(), betas.double(), orient.double(), transl.double()),
    )
    assert o32.vertices.dtype == torch.float32 and o64.vertices.dtype == torch.float64
    assert (o32.vertices.double() - o64.vertices).abs().max() < 2e-6
    assert (o32.keypoints.double() - o64.keypoints).abs().max() < 2e-6


def test_axis_angle_to_matrix_matches_expm():
    rng = np.random.default_rng(3)
    vecs = [rng.normal(size=3) * s for s in (0.0, 1e-9, 1e-5, 9.99e-4, 1.001e-3, 0.3, 2.0, 3.1)]
    got = axis_angle_to_matrix(torch.tensor(np.array(vecs)))
    for r, m in zip(vecs, got.numpy(), strict=True):
        np.testing.assert_allclose(m, scipy.linalg.expm(_skew(r)), atol=1e-13, rtol=0)


def test_input_validation(pkl_path):
    layer = ManoLayer(load_mano_model(pkl_path))
    with pytest.raises(ValueError, match="pose"):
        layer(torch.zeros(2, 44))
    with pytest.raises(ValueError, match="betas given"):
        layer(betas=torch.zeros(1, NS + 1))
    with pytest.raises(ValueError, match="PCA coefficients"):
        layer(torch.zeros(1, 46), use_pca=True)


def test_right_hand_model_from_path_or_model_refuses_left_hands(pkl_path, tmp_path):
    model = right_hand_model(pkl_path)  # a path: read, side from the file name (right)
    assert model.side == "right" and right_hand_model(model) is model
    left = save_mano_model_npz(load_mano_model(pkl_path, side="left"), tmp_path / "MANO_LEFT.npz")
    with pytest.raises(
        ManoModelError, match=r"MANO_LEFT.npz: a left-hand MANO model was given.*MANO_RIGHT.pkl"
    ):
        right_hand_model(left)
    with pytest.raises(ManoModelError, match="missing.pkl: MANO model file not found"):
        right_hand_model(tmp_path / "missing.pkl")
    with pytest.raises(ManoModelError, match="must be a ManoModel, str or Path, got int"):
        right_hand_model(3)
