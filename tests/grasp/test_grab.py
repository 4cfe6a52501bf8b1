"""GRAB reader, grasp records and the grasp datamodule on a GRAB-layout fixture written here."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial.transform import Rotation

from datamodules.grasp import GrabDataModule, GraspRecordsDataset
from halo.geometry.inside import points_inside_mesh
from halo.grasp import grab
from halo.grasp.records import RecordsConfig, build_grasp_records, load_objects
from halo.hands.synthetic_hand import get_synthetic_hand_model
from tests.grab_fixture import CONTACT_FRAMES, N_FRAMES, OBJECTS, write_grab_fixture


@pytest.fixture(scope="module")
def hand_model():
    return get_synthetic_hand_model()


@pytest.fixture(scope="module")
def grab_root(tmp_path_factory, hand_model):
    root = tmp_path_factory.mktemp("grab") / "GRAB"
    truth = write_grab_fixture(root, hand_model)
    return root, truth


@pytest.fixture(scope="module")
def records(tmp_path_factory, grab_root, hand_model):
    root, truth = grab_root
    out = tmp_path_factory.mktemp("records") / "rec"
    config = RecordsConfig(frame_stride=1, n_surface_points=512, n_inside_points=512)
    report = build_grasp_records(root, out, config, mano_model=hand_model, progress=False)
    return out, report, truth


def test_object_pose_is_row_vectors_times_r():
    # +90 degrees about z: as a column-vector rotation (1,0,0) -> (0,1,0); GRAB's row form v @ R
    # applies the transpose, so (1,0,0) -> (0,-1,0).
    orient = np.array([[0.0, 0.0, np.pi / 2]])
    world = grab.object_world_vertices(np.array([[1.0, 0.0, 0.0]]), orient, np.array([[0.0, 0.0, 1.0]]))
    np.testing.assert_allclose(world[0, 0], [0.0, -1.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(grab.object_rotation(orient)[0] @ [1, 0, 0], [0, -1, 0], atol=1e-12)


def test_sequence_parsing_reads_zero_d_object_arrays(grab_root):
    root, truth = grab_root
    path = root / "grab" / "s1" / "cubesmall_lift_1.npz"
    raw = np.load(path, allow_pickle=True)
    assert raw["rhand"].dtype == object and raw["rhand"].ndim == 0  # the fixture really uses GRAB's encoding
    seq = grab.load_grab_sequence(path)
    assert (seq.subject, seq.object_name, seq.intent, seq.n_frames) == ("s1", "cubesmall", "lift", N_FRAMES)
    assert seq.hand_fullpose.shape == (N_FRAMES, 45) and seq.hand_pca.shape == (N_FRAMES, 24)
    assert seq.contact_object.shape[0] == N_FRAMES
    assert seq.name == "s1/cubesmall_lift_1"
    # Object vertices posed with the reader's convention match the fixture's world vertices.
    template = trimesh.load(root / seq.object_mesh, process=False).vertices
    world = grab.object_world_vertices(template, seq.object_global_orient, seq.object_transl)
    np.testing.assert_allclose(world, truth.object_vertices[seq.name], atol=1e-9)
    # ... and the column-vector reading (R @ v) of the same numbers would not.
    r = Rotation.from_rotvec(seq.object_global_orient).as_matrix()
    wrong = np.einsum("tij,vj->tvi", r, template) + seq.object_transl[:, None]
    assert np.abs(wrong - truth.object_vertices[seq.name]).max() > 0.01


def test_hand_poser_reproduces_the_written_hands(grab_root, hand_model):
    root, truth = grab_root
    seq = grab.load_grab_sequence(root / "grab" / "s2" / "mug_lift_1.npz")
    poser = grab.GrabHandPoser(root, hand_model)
    verts, kps = poser.pose(seq)
    np.testing.assert_allclose(kps, truth.hand_keypoints[seq.name], atol=1e-6)
    np.testing.assert_allclose(verts, truth.hand_vertices[seq.name], atol=1e-6)
    # The PCA coefficients (24 of 45 components) describe the pose only approximately.
    _, kps_pca = grab.GrabHandPoser(root, hand_model, pose_source="pca").pose(seq)
    err = np.linalg.norm(kps_pca - truth.hand_keypoints[seq.name], axis=-1).max()
    assert 0 < err < 0.05


def test_frame_selection_and_split(grab_root):
    root, _ = grab_root
    seq = grab.load_grab_sequence(root / "grab" / "s1" / "apple_lift_1.npz")
    assert list(grab.select_frames(seq)) == list(CONTACT_FRAMES)
    assert list(grab.select_frames(seq, stride=2)) == list(CONTACT_FRAMES[::2])
    assert list(grab.select_frames(seq, only_contact=False)) == list(range(N_FRAMES))
    # thumb + index touch 5 vertices each: passes a 5-vertex rule, fails GrabNet's 50.
    assert grab.contact_frames(seq, require_thumb_and_finger=True, min_finger_vertices=5).sum() == 4
    assert grab.contact_frames(seq, require_thumb_and_finger=True, min_finger_vertices=50).sum() == 0
    files = grab.find_sequences(root)
    split = grab.object_split(grab.object_name_of(p) for p in files)
    assert split == {"train": ["cubesmall", "spheremedium"], "val": ["apple"], "test": ["mug"]}
    assert [p.name for p in grab.find_sequences(root, subjects=["s2"], objects=["mug"])] == ["mug_lift_1.npz"]
    assert grab.find_sequences(root, intents=["pass"]) == []
    assert len(grab.find_sequences(root, intents=["use", "lift"])) == 8


def test_records_are_object_centred_and_match_the_source(records, hand_model):
    out, report, truth = records
    assert not report.skipped and report.sequences == 8
    n_per_obj = 2 * len(CONTACT_FRAMES)
    assert report.frames == {"train": 2 * n_per_obj, "val": n_per_obj, "test": n_per_obj}
    names, objects = load_objects(out)
    assert names == sorted(OBJECTS)
    split = out / "train"
    kps = np.load(split / "keypoints.npy")
    rot = np.load(split / "object_rotation.npy")
    trans = np.load(split / "object_translation.npy")
    obj_idx = np.load(split / "object_index.npy")
    seqs = np.load(split / "sequence.npy")
    frames = np.load(split / "frame.npy")
    center = np.load(split / "center_world.npy")
    for i in range(len(kps)):
        verts = objects[names[obj_idx[i]]]["vertices"] @ rot[i].T.astype(np.float64) + trans[i]
        # origin = centre of the posed object's bounding box
        np.testing.assert_allclose(0.5 * (verts.min(0) + verts.max(0)), 0.0, atol=1e-5)
        np.testing.assert_allclose(
            verts + center[i], truth.object_vertices[str(seqs[i])][frames[i]], atol=1e-5
        )
        np.testing.assert_allclose(
            kps[i] + center[i], truth.hand_keypoints[str(seqs[i])][frames[i]], atol=1e-5
        )
    assert set(frames.tolist()) == set(CONTACT_FRAMES)
    hand_v = np.load(split / "hand_vertices.npy")
    assert hand_v.shape == (len(kps), hand_model.num_vertices, 3)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["objects"]["test"] == ["mug"] and meta["frames"] == report.frames
    # Inside samples really are inside each object, surface samples on it.
    for name in names:
        mesh = trimesh.Trimesh(objects[name]["vertices"], objects[name]["faces"])
        assert points_inside_mesh(mesh.vertices, mesh.faces, objects[name]["inside"]).all()
        assert np.abs(trimesh.proximity.signed_distance(mesh, objects[name]["surface"][:64])).max() < 1e-5


def test_records_build_is_reused(records, hand_model, grab_root):
    out, _, _ = records
    root, _ = grab_root
    again = build_grasp_records(
        root, out, RecordsConfig(frame_stride=1), mano_model=hand_model, progress=False
    )
    assert again.reused


def test_dataset_items_follow_the_batch_contract(records):
    out, _, _ = records
    ds = GraspRecordsDataset(out, "val", n_object_points=100, n_inside_points=50, deterministic=True)
    item = ds[0]
    assert item["keypoints"].shape == (21, 3) and item["object_points"].shape == (100, 3)
    assert item["inside_points"].shape == (50, 3) and item["object_index"].dtype == torch.long
    assert all(v.dtype == torch.float32 for k, v in item.items() if k != "object_index")
    again = ds[0]
    assert torch.equal(item["object_points"], again["object_points"])  # deterministic for validation
    # A random rotation about the object centre keeps every hand-object distance.
    aug = GraspRecordsDataset(
        out, "val", n_object_points=100, n_inside_points=50, augment_rotation=True, deterministic=True
    )
    rotated = aug[0]
    d0 = torch.cdist(item["keypoints"], item["object_points"]).min(dim=1).values
    d1 = torch.cdist(rotated["keypoints"], rotated["object_points"]).min(dim=1).values
    assert not torch.allclose(item["keypoints"], rotated["keypoints"], atol=1e-3)
    torch.testing.assert_close(d0, d1, atol=1e-5, rtol=0)


def test_inside_points_are_inside_the_posed_object(records):
    out, _, truth = records
    names, objects = load_objects(out)
    ds = GraspRecordsDataset(out, "test", n_inside_points=200, deterministic=True)
    item = ds[3]
    i = int(ds.indices[3])
    rot, t = ds.rotation[i].astype(np.float64), ds.translation[i].astype(np.float64)
    obj = objects[names[int(item["object_index"])]]
    posed = obj["vertices"] @ rot.T + t
    assert points_inside_mesh(posed, obj["faces"], item["inside_points"].double().numpy()).all()


def test_datamodule_builds_once_and_serves_batches(tmp_path, grab_root, hand_model):
    root, _ = grab_root
    dm = GrabDataModule(
        root, mano_model=hand_model, cache_dir=tmp_path / "cache", records={"frame_stride": 1, "n_surface_points": 256,
        "n_inside_points": 256}, batch_size=4, val_batch_size=3, n_object_points=64, n_inside_points=32,
    )  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["keypoints"].shape == (4, 21, 3) and batch["object_points"].shape == (4, 64, 3)
    assert batch["inside_points"].shape == (4, 32, 3)
    assert len(dm.dataset("train")) == 16 and len(dm.dataset("val")) == 8
    val = dm.grasp_objects("val")
    assert [o.name for o in val] == ["apple"]
    lo, hi = val[0].mesh.bounds
    np.testing.assert_allclose(lo + hi, 0.0, atol=1e-9)  # centred at its bounding-box centre
    assert dm.object_names == sorted(OBJECTS)
    # A second module with the same settings reuses the records.
    dm2 = GrabDataModule(
        root, mano_model=hand_model, cache_dir=tmp_path / "cache",
        records={"frame_stride": 1, "n_surface_points": 256, "n_inside_points": 256},
    )  # fmt: skip
    assert dm2._records() == dm._records()
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.suffix != ".lock"] == [dm._records().name]


# ----------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------


def test_missing_root_and_files_are_named(tmp_path, grab_root, hand_model):
    with pytest.raises(grab.GrabFileError, match="no grab/ folder"):
        grab.find_sequences(tmp_path)
    (tmp_path / "grab" / "s1").mkdir(parents=True)
    with pytest.raises(grab.GrabFileError, match="no sequence files"):
        grab.find_sequences(tmp_path)
    with pytest.raises(grab.GrabFileError, match="no such GRAB sequence file"):
        grab.load_grab_sequence(tmp_path / "grab" / "s1" / "mug_lift_1.npz")
    root, _ = grab_root
    with pytest.raises(grab.GrabFileError, match="MANO_RIGHT.pkl"):
        grab.GrabHandPoser(root, None)


def test_bad_sequence_files_are_skipped_and_counted(tmp_path, grab_root, hand_model):
    src, _ = grab_root
    root = tmp_path / "GRAB"
    shutil.copytree(src, root)
    (root / "grab" / "s1" / "cubesmall_lift_1.npz").write_bytes(b"not a zip")
    np.savez(root / "grab" / "s2" / "apple_lift_1.npz", rhand=np.array(1.0))  # wrong content
    report = build_grasp_records(
        root, tmp_path / "rec", RecordsConfig(frame_stride=1, n_surface_points=64, n_inside_points=64),
        mano_model=hand_model, progress=False,
    )  # fmt: skip
    assert report.sequences == 6 and len(report.skipped) == 2
    text = "\n".join(report.skipped)
    assert "cubesmall_lift_1.npz" in text and "apple_lift_1.npz" in text
    assert "2 file(s) skipped" in report.summary()


def test_code_in_a_sequence_file_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (shutil.rmtree, (str(tmp_path / "victim"),))

    (tmp_path / "victim").mkdir()
    path = tmp_path / "grab" / "s1" / "mug_lift_1.npz"
    path.parent.mkdir(parents=True)
    payload = np.empty((), dtype=object)
    payload[()] = Evil()
    np.savez(path, rhand=payload)
    with pytest.raises(grab.GrabFileError, match="refusing to unpickle"):
        grab.load_grab_sequence(path)
    assert (tmp_path / "victim").is_dir()


def test_wrong_template_and_shapes_are_named(tmp_path, grab_root, hand_model):
    src, _ = grab_root
    root = tmp_path / "GRAB"
    shutil.copytree(src, root)
    trimesh.creation.box().export(root / "tools" / "subject_meshes" / "male" / "s1_rhand.ply")
    seq = grab.load_grab_sequence(root / "grab" / "s1" / "mug_lift_1.npz")
    with pytest.raises(grab.GrabFileError, match=r"s1_rhand.ply: hand template has 8 vertices"):
        grab.GrabHandPoser(root, hand_model).pose(seq)
    data = dict(np.load(root / "grab" / "s2" / "mug_lift_1.npz", allow_pickle=True))
    rhand = data["rhand"].item()
    rhand["params"]["transl"] = np.zeros((N_FRAMES + 1, 3))
    data["rhand"] = np.array(rhand, dtype=object)
    np.savez(root / "grab" / "s2" / "mug_lift_1.npz", **data)
    with pytest.raises(grab.GrabFileError, match=r"transl'\] has shape \(7, 3\), expected \(6, 3\)"):
        grab.load_grab_sequence(root / "grab" / "s2" / "mug_lift_1.npz")


def test_synthetic_roots_carry_their_hand_model(tmp_path, grab_root, hand_model):
    from halo.hands.synthetic_hand import save_synthetic_hand_model

    src, truth = grab_root
    root = tmp_path / "GRAB"
    shutil.copytree(src, root)
    save_synthetic_hand_model(hand_model, root / grab.SYNTHETIC_MANO_PATH)
    seq = grab.load_grab_sequence(root / "grab" / "s1" / "mug_lift_1.npz")
    _, kps = grab.GrabHandPoser(root).pose(seq, np.array([2]))
    np.testing.assert_allclose(kps[0], truth.hand_keypoints[seq.name][2], atol=1e-6)


def test_object_pose_follows_grabs_row_vector_convention():
    # Hand-computed: GRAB moves a template vertex v to v @ R(global_orient) + transl (row vectors).
    # 90 deg about +z: R = [[0,-1,0],[1,0,0],[0,0,1]], so e_x @ R = (0,-1,0) and e_y @ R = (1,0,0).
    # 120 deg about (1,1,1): R cycles x->y->z for column vectors, so e_x @ R = (0,0,1).
    orient = np.array([[0.0, 0.0, np.pi / 2], np.full(3, 2 * np.pi / 3 / np.sqrt(3))])
    expected = np.array(
        [
            [[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]],  # column form: R^T
            [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]],
        ]
    )
    np.testing.assert_allclose(grab.object_rotation(orient), expected, atol=1e-12)
    template = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    world = grab.object_world_vertices(template, orient, np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]))
    np.testing.assert_allclose(world[0], [[0.0, -1.0, 1.0], [1.0, 0.0, 1.0]], atol=1e-12)
    np.testing.assert_allclose(world[1], [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], atol=1e-12)


def test_synthetic_grasps_datamodule_generates_once_and_reads_like_grab(tmp_path):
    from datamodules.grasp import SyntheticGraspsDataModule

    kwargs = dict(
        cache_dir=tmp_path / "syn", objects=6, grasps_per_object=2, subjects=1, grasp_frames=2, away_frames=1,
        generation_workers=1, records={"n_surface_points": 256, "n_inside_points": 256}, batch_size=2,
        n_object_points=32, n_inside_points=16,
    )  # fmt: skip
    dm = SyntheticGraspsDataModule(**kwargs)
    dm.prepare_data()
    dm.setup("fit")
    split = dm.split_objects()
    assert set(split["val"]) <= {"apple", "toothbrush"} and split["val"]
    assert set(split["test"]) <= {"mug", "wineglass", "toothpaste"} and split["test"]
    n_train = len(split["train"])
    # Only grasp frames (contact) are kept, not the frames with the hand away from the object.
    assert len(dm.dataset("train")) == 2 * n_train
    batch = next(iter(dm.train_dataloader()))
    assert batch["keypoints"].shape == (2, 21, 3) and batch["inside_points"].shape == (2, 16, 3)
    # Keypoints sit at grasping distance of the object: fingertips within 3 cm of its surface.
    tips = batch["keypoints"][:, [4, 8, 12, 16, 20]]
    d = torch.cdist(tips, batch["object_points"]).min(dim=-1).values
    assert (d.min(dim=-1).values < 0.03).all()
    records = dm._records()
    again = SyntheticGraspsDataModule(**kwargs)
    again.prepare_data()
    assert again._records() == records and len(list((tmp_path / "syn" / "grab").glob("*/grab"))) == 1
