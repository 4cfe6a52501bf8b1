"""YouTube3D reader: YouTube3D-style JSON built from the synthetic MANO-format hand."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from halo.core.skeleton import JOINT_NAMES, halo_to_mano
from halo.data.youtube3d import (
    YouTube3DError,
    convert_annotation,
    hand_name,
    is_proper_right_hand,
    iter_youtube3d_hands,
    load_youtube3d,
)
from halo.hands.mano import save_mano_model_npz
from halo.hands.synthetic_hand import sample_hand_poses

PX_PER_M = 1000.0
MIRROR = np.diag([-1.0, 1.0, 1.0])


def _regressed(model, vertices: np.ndarray) -> np.ndarray:
    """Reference keypoints written out independently of the reader: J_regressor @ V, tips, public order."""
    joints = model.J_regressor @ vertices
    return halo_to_mano(np.concatenate([joints, vertices[model.tip_vertex_ids]]), joint_axis=0)


def _signed_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    a, b, c = (vertices[faces[:, k]] for k in range(3))
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


def _triple(kp: np.ndarray) -> float:
    """Chirality of a skeleton: (index_mcp - wrist) x (pinky_mcp - wrist) . (thumb_cmc - wrist)."""
    w = kp[0]
    return float(np.dot(np.cross(kp[5] - w, kp[17] - w), kp[1] - w))


def _projection(seed: int, c: float = PX_PER_M):
    """A fake camera: pixels = c R p + t (a proper similarity; y down, z away from the camera)."""
    rng = np.random.default_rng(seed)
    rot = Rotation.random(random_state=seed).as_matrix()
    t = np.array([rng.uniform(100, 500), rng.uniform(100, 400), rng.uniform(-50, 50)])
    return c, rot, t


def _project(points: np.ndarray, c: float, rot: np.ndarray, t: np.ndarray) -> np.ndarray:
    return c * points @ rot.T + t


def _write(path: Path, images, annotations, **extra) -> Path:
    data = {"images": images, "annotations": annotations, **extra}
    path.write_text(json.dumps(data))
    return path


def _image(i: int) -> dict:
    return {"name": f"youtube/vid-{i:02d}_x/video/frames/{100 + i}.png", "width": 640, "height": 480, "id": i}


def _ann(vertices: np.ndarray, ann_id: int, image_id: int, is_left: bool) -> dict:
    return {
        "vertices": np.asarray(vertices).tolist(),
        "is_left": int(is_left),
        "image_id": image_id,
        "id": ann_id,
    }


@pytest.fixture(scope="module")
def posed(model, layer):
    """Six posed right hands in metres (the ground truth) and their fake-pixel annotations."""
    n = 6
    poses = torch.tensor(sample_hand_poses(n, seed=3))
    orient = torch.tensor(Rotation.random(n, random_state=4).as_rotvec())
    out = layer(poses, global_orient=orient)
    verts = out.vertices.numpy()
    cams, anns, lefts = [], [], []
    for i in range(n):
        is_left = i % 2 == 1
        cam = _projection(10 + i, c=PX_PER_M * (0.5 + 0.3 * i))
        world = verts[i] @ MIRROR if is_left else verts[i]  # a left hand: the mirror image of a right hand
        anns.append(_ann(_project(world, *cam), 100 + i, i // 2, is_left))
        cams.append(cam)
        lefts.append(is_left)
    images = [_image(i) for i in range(3)]
    return {
        "verts": verts,
        "kinematic": out.keypoints.numpy(),
        "cams": cams,
        "lefts": lefts,
        "json": (images, anns),
    }


@pytest.fixture(scope="module")
def posed_file(posed, tmp_path_factory):
    images, anns = posed["json"]
    return _write(tmp_path_factory.mktemp("yt3d") / "youtube_val.json", images, anns)


def test_posed_hands_come_back_as_metric_right_hands(model, posed, posed_file):
    hands = list(iter_youtube3d_hands(posed_file, model))
    assert len(hands) == 6
    template_sign = np.sign(_triple(_regressed(model, model.v_template)))
    assert _signed_volume(model.v_template, model.f) > 0
    for i, hand in enumerate(hands):
        c, rot, _ = posed["cams"][i]
        is_left = posed["lefts"][i]
        assert hand.is_left == is_left and hand.chirality_ok
        assert hand.vertices.shape == (model.num_vertices, 3) and hand.keypoints.shape == (21, 3)
        assert hand.vertices.dtype == np.float64 and hand.keypoints.dtype == np.float64
        # Expected: the true hand's regressed keypoints, wrist-centred, rotated into the camera frame
        # (for left hands the mirror, the camera rotation and the reader's mirror compose to M R M).
        cam_rot = MIRROR @ rot @ MIRROR if is_left else rot
        kp_true = _regressed(model, posed["verts"][i])
        expected = (kp_true - kp_true[0]) @ cam_rot.T
        ratio = hand.scale * c  # reader's metric scale / true metric scale
        assert abs(ratio - 1.0) < 0.02  # documented pose bias of the template-size scale (<= 1.5%)
        np.testing.assert_allclose(hand.keypoints / ratio, expected, atol=1e-9)
        v_true = (posed["verts"][i] - kp_true[0]) @ cam_rot.T
        np.testing.assert_allclose(hand.vertices / ratio, v_true, atol=1e-9)
        # Regressed vs kinematic joints (ManoLayer.keypoints): a few mm at bent joints.
        kin = (posed["kinematic"][i] - posed["kinematic"][i][0]) @ cam_rot.T
        assert np.abs(hand.keypoints - kin).max() < 0.008
        # Right-handed: same skeleton chirality as the template, outward faces (positive volume).
        assert np.sign(_triple(hand.keypoints)) == template_sign
        assert _signed_volume(hand.vertices, hand.faces) > 0
        assert is_proper_right_hand(model, hand.vertices)
        np.testing.assert_array_equal(hand.faces, model.f)


def test_template_pose_recovered_exactly(model, layer, tmp_path):
    """A hand of template size and pose (any rotation, translation, pixel scale) comes back exactly."""
    orient = torch.tensor(Rotation.random(2, random_state=7).as_rotvec())
    out = layer(batch_size=2, global_orient=orient, transl=torch.tensor([[0.1, -0.2, 0.5], [0.0, 0.3, 0.9]]))
    verts, kin = out.vertices.numpy(), out.keypoints.numpy()
    anns, cams = [], []
    for i in range(2):
        cams.append(_projection(20 + i, c=PX_PER_M * (1 + i)))
        world = verts[i] @ MIRROR if i == 1 else verts[i]
        anns.append(_ann(_project(world, *cams[i]), i, 0, i == 1))
    path = _write(tmp_path / "rest.json", [_image(0)], anns)
    for i, hand in enumerate(iter_youtube3d_hands(path, model)):
        c, rot, t = cams[i]
        cam_rot = MIRROR @ rot @ MIRROR if i == 1 else rot
        assert hand.scale == pytest.approx(1.0 / c, rel=1e-9)
        expected = (kin[i] - kin[i][0]) @ cam_rot.T  # ManoLayer's own keypoints
        np.testing.assert_allclose(hand.keypoints, expected, rtol=0, atol=1e-6 * 0.2)
        # to_input maps metres back onto the annotation's pixels.
        np.testing.assert_allclose(hand.to_input(hand.vertices), np.array(anns[i]["vertices"]), atol=1e-9)


def test_hand_of_other_size_is_scaled_to_template_size(model, layer, tmp_path):
    """Documented error: a hand 10% larger than the template comes back at template size."""
    verts = layer(torch.tensor(sample_hand_poses(1, seed=5, kind="open"))).vertices.numpy()[0]
    cam = _projection(30)
    big = 1.1 * verts  # the true hand, 10% larger
    path = _write(tmp_path / "big.json", [_image(0)], [_ann(_project(big, *cam), 1, 0, False)])
    (hand,) = iter_youtube3d_hands(path, model)
    reference = _regressed(model, verts)  # the same hand at template size
    ratio = hand.scale * cam[0] * 1.1
    assert abs(ratio - 1.0) < 0.002  # open hand: pose bias <= 0.15%
    np.testing.assert_allclose(hand.keypoints / ratio, (reference - reference[0]) @ cam[1].T, atol=1e-9)


def test_names_fields_limit_and_loaded_input(model, posed, posed_file, tmp_path):
    data = load_youtube3d(posed_file)
    assert len(data) == 6 and data.num_vertices == model.num_vertices
    assert data.annotations[1].is_left and not data.annotations[0].is_left
    hands = list(iter_youtube3d_hands(data, model, limit=4))
    assert len(hands) == 4
    assert [h.name for h in hands] == [
        "vid-00_x_100_100",
        "vid-00_x_100_101",
        "vid-01_x_101_102",
        "vid-01_x_101_103",
    ]
    assert hands[2].image_name == "youtube/vid-01_x/video/frames/101.png"
    assert hands[2].image_size == (640, 480) and hands[2].image_id == 1 and hands[2].annotation_id == 102
    assert list(iter_youtube3d_hands(posed_file, model, limit=0)) == []
    # Names are filesystem-safe for any image path.
    name = hand_name("odd dir/a b:c/fr?me 7.png", 3)
    assert re.fullmatch(r"[A-Za-z0-9._-]+", name) and name.endswith("_3")
    # The model can be given as a path (str or Path); gzip files are read too.
    npz = save_mano_model_npz(model, tmp_path / "model.npz")
    gz = tmp_path / "youtube_val.json.gz"
    gz.write_bytes(gzip.compress(posed_file.read_bytes()))
    via_path = next(iter_youtube3d_hands(gz, str(npz)))
    np.testing.assert_allclose(via_path.keypoints, hands[0].keypoints, atol=1e-12)
    assert len(JOINT_NAMES) == via_path.keypoints.shape[0]


def test_wrong_chirality_is_caught(model, posed, tmp_path):
    """A right hand in a left-handed frame (z towards the camera) flagged is_left=0 is not a right hand."""
    verts = posed["verts"][0] @ np.diag([1.0, 1.0, -1.0])
    path = _write(tmp_path / "flip.json", [_image(0)], [_ann(_project(verts, *_projection(1)), 5, 0, False)])
    with pytest.raises(YouTube3DError, match=r"flip\.json.*annotation 5.*not a right hand"):
        list(iter_youtube3d_hands(path, model))
    with pytest.warns(UserWarning, match="skipped"):
        assert list(iter_youtube3d_hands(path, model, on_wrong_chirality="skip")) == []
    (kept,) = iter_youtube3d_hands(path, model, on_wrong_chirality="keep")
    assert not kept.chirality_ok and _signed_volume(kept.vertices, kept.faces) < 0


def test_missing_mano_model_explains_what_to_pass(posed_file, tmp_path):
    for missing in (None, tmp_path / "MANO_RIGHT.pkl", str(tmp_path / "MANO_RIGHT.pkl")):
        with pytest.raises(YouTube3DError, match=r"MANO_RIGHT\.pkl.*MANO licence.*not shipped.*mano_model"):
            next(iter_youtube3d_hands(posed_file, missing))
    garbage = tmp_path / "MANO_RIGHT.pkl"
    garbage.write_bytes(b"not a pickle")
    with pytest.raises(YouTube3DError, match=r"MANO_RIGHT\.pkl: not a readable MANO model.*MANO licence"):
        next(iter_youtube3d_hands(posed_file, garbage))


def test_left_model_is_refused(model, posed_file, tmp_path):
    import dataclasses

    left = dataclasses.replace(model, side="left")
    with pytest.raises(YouTube3DError, match="left-hand MANO model.*MANO_RIGHT"):
        next(iter_youtube3d_hands(posed_file, left))
    # A left model file is recognised as such (not silently read as a right hand).
    path = save_mano_model_npz(left, tmp_path / "MANO_LEFT.npz")
    with pytest.raises(YouTube3DError, match="left-hand MANO model"):
        next(iter_youtube3d_hands(posed_file, path))


@pytest.fixture
def good(posed):
    images, anns = posed["json"]
    return json.loads(json.dumps({"images": images, "annotations": anns[:2]}))


def _dump(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_bad_files_name_file_and_problem(model, posed_file, good, tmp_path):
    with pytest.raises(YouTube3DError, match=r"nowhere\.json: YouTube3D annotation file not found"):
        load_youtube3d(tmp_path / "nowhere.json")

    text = posed_file.read_text()
    truncated = tmp_path / "truncated.json"
    truncated.write_text(text[: len(text) // 2])
    with pytest.raises(YouTube3DError, match=r"truncated\.json: not valid JSON \(the file ends early"):
        load_youtube3d(truncated)
    not_json = tmp_path / "not_json.json"
    not_json.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(YouTube3DError, match=r"not_json\.json: not (valid|a readable) JSON"):
        load_youtube3d(not_json)
    with pytest.raises(YouTube3DError, match=r"list\.json: expected a JSON object"):
        load_youtube3d(_dump(tmp_path / "list.json", [1, 2]))

    no_ann = dict(good)
    del no_ann["annotations"]
    with pytest.raises(YouTube3DError, match=r"no_ann\.json: missing key 'annotations'"):
        load_youtube3d(_dump(tmp_path / "no_ann.json", no_ann))

    no_verts = json.loads(json.dumps(good))
    del no_verts["annotations"][1]["vertices"]
    with pytest.raises(YouTube3DError, match=r"no_verts\.json: annotations\[1\]: missing key 'vertices'"):
        load_youtube3d(_dump(tmp_path / "no_verts.json", no_verts))

    nan = json.loads(json.dumps(good))
    nan["annotations"][1]["vertices"][7][2] = float("nan")  # json writes the NaN literal
    with pytest.raises(
        YouTube3DError, match=r"nan\.json: annotations\[1\] \(id 101\).*NaN or infinite.*vertex 7"
    ):
        load_youtube3d(_dump(tmp_path / "nan.json", nan))

    ragged = json.loads(json.dumps(good))
    ragged["annotations"][0]["vertices"][3] = [1.0, 2.0]
    with pytest.raises(YouTube3DError, match=r"ragged\.json: annotations\[0\] \(id 100\): key 'vertices'"):
        load_youtube3d(_dump(tmp_path / "ragged.json", ragged))

    unknown = json.loads(json.dumps(good))
    unknown["annotations"][1]["image_id"] = 42
    with pytest.raises(
        YouTube3DError, match=r"unknown\.json: annotations\[1\].*'image_id' = 42 is not an id"
    ):
        load_youtube3d(_dump(tmp_path / "unknown.json", unknown))

    flag = json.loads(json.dumps(good))
    flag["annotations"][0]["is_left"] = 2
    with pytest.raises(YouTube3DError, match=r"flag\.json: annotations\[0\].*'is_left' must be 0 or 1"):
        load_youtube3d(_dump(tmp_path / "flag.json", flag))

    dup = json.loads(json.dumps(good))
    dup["annotations"][1]["id"] = dup["annotations"][0]["id"]
    with pytest.raises(YouTube3DError, match=r"dup\.json: annotations\[1\].*duplicate annotation id"):
        load_youtube3d(_dump(tmp_path / "dup.json", dup))


def test_wrong_vertex_count_vs_model(model, good, tmp_path):
    short = json.loads(json.dumps(good))
    short["annotations"][1]["vertices"] = short["annotations"][1]["vertices"][:778]
    path = _dump(tmp_path / "short.json", short)
    # Without a model: hands must agree with each other.
    with pytest.raises(YouTube3DError, match=r"short\.json: annotations\[1\].*778 vertices.*1578"):
        load_youtube3d(path)
    # With the model: the count must be the model's.
    official = json.loads(json.dumps(good))
    for ann in official["annotations"]:
        ann["vertices"] = ann["vertices"][:778]
    path = _dump(tmp_path / "official.json", official)
    assert load_youtube3d(path).num_vertices == 778
    with pytest.raises(
        YouTube3DError, match=r"official\.json: annotations\[0\].*778 vertices but the MANO model"
    ):
        next(iter_youtube3d_hands(path, model))


def test_degenerate_hand(model, tmp_path):
    flat = np.zeros((model.num_vertices, 3))
    path = _write(tmp_path / "degenerate.json", [_image(0)], [_ann(flat, 9, 0, False)])
    with pytest.raises(YouTube3DError, match=r"degenerate\.json: annotation 9: degenerate hand"):
        next(iter_youtube3d_hands(path, model))
    ann = load_youtube3d(path).annotations[0]
    with pytest.raises(YouTube3DError, match="needs"):
        convert_annotation(type(ann)(id=1, image_id=0, is_left=False, vertices=flat[:10]), model)
