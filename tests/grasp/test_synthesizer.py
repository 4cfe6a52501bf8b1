"""Procedural grasp objects, the grasp synthesizer and the synthetic GRAB-layout writer."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial.transform import Rotation

from halo.geometry.inside import points_inside_mesh
from halo.grasp.objects import (
    OBJECT_KINDS,
    OBJECT_SPECS,
    OBJECT_SPLITS,
    check_object_name,
    make_object,
    select_objects,
)
from halo.grasp.synthesis import GRAB_PALM_ID, GraspSynthesizer, grab_part_ids, subject_model
from halo.grasp.synthetic_grab import (
    SyntheticGrabConfig,
    _jobs,
    contact_labels,
    synthetic_grab_key,
    synthetic_grab_root,
    write_synthetic_grab,
)
from halo.hands.mano import ManoLayer

THUMB_IDS = (53, 54, 55)
ALLOWED_IDS = {0, GRAB_PALM_ID, *range(41, 56)}
TINY = SyntheticGrabConfig(objects=2, grasps_per_object=4, subjects=2, grasp_frames=4, away_frames=2, seed=3)


def _surface_distance(mesh: trimesh.Trimesh, points: np.ndarray) -> np.ndarray:
    """Unsigned distance to the surface, computed by trimesh (independent of the open3d code under test)."""
    _, dist, _ = trimesh.proximity.closest_point(mesh, points)
    return dist


# ----------------------------------------------------------------------------
# Objects
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(OBJECT_SPECS))
def test_named_objects_are_closed_graspable_solids(name):
    mesh = OBJECT_SPECS[name].build()
    check_object_name(name)
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.volume > 0  # outward normals
    np.testing.assert_allclose(mesh.bounds.mean(axis=0), 0.0, atol=1e-9)  # centred at the bbox centre
    assert 0.03 <= mesh.extents.max() <= 0.22, mesh.extents  # graspable sizes, metres
    assert mesh.extents.min() >= 0.01
    assert 500 <= len(mesh.vertices) <= 6000
    # Outward: a point just outside along each vertex normal is outside, just inside is inside.
    idx = np.random.default_rng(0).choice(len(mesh.vertices), 200, replace=False)
    v, n = mesh.vertices[idx], mesh.vertex_normals[idx]
    assert not points_inside_mesh(mesh.vertices, mesh.faces, v + 5e-4 * n).mean() > 0.05
    assert points_inside_mesh(mesh.vertices, mesh.faces, v - 5e-4 * n).mean() > 0.9


def test_object_sizes_follow_their_parameters():
    np.testing.assert_allclose(make_object("sphere", {"radius": 0.03}).extents, [0.06] * 3, atol=1e-6)
    np.testing.assert_allclose(
        make_object("box", {"x": 0.05, "y": 0.04, "z": 0.03, "fillet": 0.004}).extents,
        [0.05, 0.04, 0.03],
        atol=1e-6,
    )
    cyl = make_object("cylinder", {"radius": 0.02, "height": 0.1})
    np.testing.assert_allclose(cyl.extents, [0.04, 0.04, 0.1], atol=2e-4)
    # A filleted cylinder's volume is a little below pi r^2 h.
    assert 0.9 * np.pi * 0.02**2 * 0.1 < cyl.volume < np.pi * 0.02**2 * 0.1
    torus = make_object("torus", {"major_radius": 0.04, "minor_radius": 0.01})
    assert torus.volume == pytest.approx(2 * np.pi**2 * 0.04 * 0.01**2, rel=0.02)
    mug = OBJECT_SPECS["mug"].build()
    assert mug.extents[0] > 2 * OBJECT_SPECS["mug"].params["radius"] + 0.015  # the handle sticks out


@pytest.mark.parametrize("kind", OBJECT_KINDS)
def test_sampled_objects_of_every_kind_are_closed(kind):
    mesh = make_object(kind, rng=np.random.default_rng(7))
    assert mesh.is_watertight and mesh.volume > 0
    assert 0.02 <= mesh.extents.max() <= 0.25


def test_object_split_mirrors_grab():
    from halo.grasp.grab import GRAB_TEST_OBJECTS, GRAB_VAL_OBJECTS
    from halo.grasp.grab import object_split as grab_split

    assert set(OBJECT_SPLITS["test"]) <= set(GRAB_TEST_OBJECTS)
    assert set(OBJECT_SPLITS["val"]) <= set(GRAB_VAL_OBJECTS)
    # GRAB's standard rule applied to our names gives our split.
    by_grab = grab_split(OBJECT_SPECS)
    assert {k: set(v) for k, v in by_grab.items()} == {k: set(v) for k, v in OBJECT_SPLITS.items()}
    assert grab_split(["mug", "apple", "cup"]) == {"train": ["cup"], "val": ["apple"], "test": ["mug"]}
    names = [s.name for s in select_objects(9)]
    assert names[-5:] == list(OBJECT_SPLITS["val"] + OBJECT_SPLITS["test"])
    extra = select_objects(30)
    assert len(extra) == 30 and len({s.name for s in extra}) == 30
    with pytest.raises(ValueError, match="lowercase"):
        check_object_name("Mug_1")
    with pytest.raises(ValueError, match="unknown object kind"):
        make_object("teapot")


# ----------------------------------------------------------------------------
# Synthesizer
# ----------------------------------------------------------------------------


def test_grab_part_ids_from_skinning_weights():
    weights = np.eye(16)[[0, 1, 3, 4, 7, 10, 13, 15]]
    np.testing.assert_array_equal(grab_part_ids(weights), [22, 41, 43, 44, 47, 50, 53, 55])


@pytest.fixture(scope="module")
def sphere_grasps(model):
    obj = OBJECT_SPECS["spheresmall"].build()
    synth = GraspSynthesizer(model, obj)
    grasps, stats = synth.sample(3, rng=11)
    return synth, obj, grasps, stats


def test_accepted_grasps_touch_with_thumb_and_a_finger_and_barely_penetrate(sphere_grasps):
    synth, obj, grasps, stats = sphere_grasps
    assert len(grasps) == 3 and stats.accepted == 3 and stats.candidates >= 3
    thumb = synth.finger_vertices[0]
    others = np.concatenate(synth.finger_vertices[1:])
    for g in grasps:
        # Thumb and another finger within 2 mm of the surface (distances by trimesh).
        tol = synth.config.contact_tol_m + 1e-6
        assert synth.config.contact_tol_m == 0.002
        assert _surface_distance(obj, g.vertices[thumb]).min() <= tol
        assert _surface_distance(obj, g.vertices[others]).min() <= tol
        # Hand vertices inside the object are at most 3 mm deep ...
        inside = points_inside_mesh(obj.vertices, obj.faces, g.vertices)
        if inside.any():
            assert _surface_distance(obj, g.vertices[inside]).max() <= 0.003
        # ... and so are object vertices inside the hand.
        hand = trimesh.Trimesh(g.vertices, synth.faces, process=False)
        obj_in = points_inside_mesh(hand.vertices, hand.faces, obj.vertices)
        if obj_in.any():
            assert _surface_distance(hand, obj.vertices[obj_in]).max() <= 0.003
        # The stored rigid map and pose give the stored vertices.
        local = synth._local_vertices(g.pose[None])[0]
        np.testing.assert_allclose(local @ g.rotation.T + g.translation, g.vertices, atol=1e-6)
        np.testing.assert_allclose(g.rotation @ g.rotation.T, np.eye(3), atol=1e-9)


def test_synthesizer_is_deterministic(sphere_grasps, model):
    synth, obj, grasps, _ = sphere_grasps
    again, _ = GraspSynthesizer(model, obj).sample(3, rng=11)
    for a, b in zip(grasps, again, strict=True):
        np.testing.assert_array_equal(a.pose, b.pose)
        np.testing.assert_array_equal(a.translation, b.translation)


def test_contact_labels_mark_near_vertices_with_the_nearest_part():
    # A unit-ish cube "hand" whose vertices are all labelled 41, and object points at known distances.
    box = trimesh.creation.box(extents=[0.02, 0.02, 0.02])
    ids = np.full(len(box.vertices), 41)
    ids[np.argmax(box.vertices[:, 0] + box.vertices[:, 1] + box.vertices[:, 2])] = 53
    # 1.5 mm outside, 3.5 mm outside, inside, 0.9 mm from the labelled corner.
    pts = np.array([[0.0115, -0.005, -0.005], [0.0135, -0.005, -0.005], [0.005, -0.005, -0.006],
                    [0.0105, 0.0105, 0.0105]])  # fmt: skip
    np.testing.assert_array_equal(contact_labels(box.vertices, box.faces, ids, pts), [41, 0, 41, 53])


# ----------------------------------------------------------------------------
# Writer
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic_grab")
    report = write_synthetic_grab(root, TINY, progress=False)
    assert not report.failed and report.grasps == 2 * 4
    return root


def _load(path: Path) -> dict:
    with np.load(path, allow_pickle=True) as data:
        raw = {k: data[k] for k in data.files}
    for key, arr in raw.items():
        assert arr.shape == () and arr.dtype == object, f"{path.name}[{key}] is not a 0-d object array"
    return {k: v.item() for k, v in raw.items()}


def test_written_files_follow_the_grab_layout(tiny_root):
    files = sorted((tiny_root / "grab").glob("s*/*.npz"))
    names = [s.name for s in select_objects(TINY.objects)]
    assert len(files) == 2 and {f.parent.name for f in files} == {"s1", "s2"}
    assert (tiny_root / "tools/mano/SYNTHETIC_RIGHT.npz").is_file()
    for f in files:
        d = _load(f)
        obj_name, intent, k = f.stem.split("_")
        assert obj_name in names and d["obj_name"] == obj_name and d["motion_intent"] == intent and k == "1"
        assert d["sbj_id"] == f.parent.name and d["gender"] in ("male", "female")
        assert d["framerate"] == 120.0 and d["n_comps"] == 24
        t = d["n_frames"]
        assert t == 4 + 2
        p = d["rhand"]["params"]
        assert {k: v.shape for k, v in p.items()} == {
            "global_orient": (t, 3), "hand_pose": (t, 24), "transl": (t, 3), "fullpose": (t, 45)
        }  # fmt: skip
        assert d["rhand"]["vtemp"] == f"tools/subject_meshes/{d['gender']}/{d['sbj_id']}_rhand.ply"
        assert d["object"]["object_mesh"] == f"tools/object_meshes/contact_meshes/{obj_name}.ply"
        assert {k: v.shape for k, v in d["object"]["params"].items()} == {
            "transl": (t, 3),
            "global_orient": (t, 3),
        }
        obj = trimesh.load(tiny_root / d["object"]["object_mesh"], process=False)
        vtemp = trimesh.load(tiny_root / d["rhand"]["vtemp"], process=False)
        assert obj.is_watertight and len(vtemp.vertices) > 1000
        contact = d["contact"]["object"]
        assert contact.shape == (t, len(obj.vertices)) and np.issubdtype(contact.dtype, np.integer)
        assert set(np.unique(contact)) <= ALLOWED_IDS
        # First and last frames: hand away, no contact; grasp frames: the thumb touches.
        assert not contact[0].any() and not contact[-1].any()
        assert all(np.isin(contact[i], THUMB_IDS).any() for i in range(1, t - 1))
        # Every frame puts the object somewhere else (the row-vector rotation is exercised).
        assert len(np.unique(d["object"]["params"]["global_orient"], axis=0)) == t


def _repose(
    root: Path, d: dict, model, use_pca: bool = False
) -> tuple[np.ndarray, np.ndarray, trimesh.Trimesh]:
    """Hand and object world vertices computed here from the contract (not with the writer's helpers)."""
    vtemp = trimesh.load(root / d["rhand"]["vtemp"], process=False).vertices
    layer = ManoLayer(subject_model(model, vtemp), flat_hand_mean=True, dtype=torch.float64)
    p = {k: torch.as_tensor(np.asarray(v, np.float64)) for k, v in d["rhand"]["params"].items()}
    with torch.no_grad():
        out = layer(
            p["hand_pose"] if use_pca else p["fullpose"], global_orient=p["global_orient"], transl=p["transl"],
            use_pca=use_pca,
        )  # fmt: skip
    obj = trimesh.load(root / d["object"]["object_mesh"], process=False)
    r = Rotation.from_rotvec(np.asarray(d["object"]["params"]["global_orient"], np.float64)).as_matrix()
    obj_world = (
        np.einsum("vj,tjk->tvk", obj.vertices, r) + np.asarray(d["object"]["params"]["transl"])[:, None]
    )
    return out.vertices.numpy(), obj_world, obj


def test_reposed_frames_reproduce_the_generated_grasps(tiny_root, model):
    """Repose hand (MANO, subject template, fullpose) and object (v @ R + t); compare with regenerated grasps."""
    jobs = _jobs(TINY, [s.name for s in select_objects(TINY.objects)])
    for job in jobs:
        d = _load(tiny_root / job.relpath)
        hand_w, obj_w, obj = _repose(tiny_root, d, model)
        # Back to the object's template frame with the row-vector convention: v = (w - t) @ R^T.
        r = Rotation.from_rotvec(np.asarray(d["object"]["params"]["global_orient"], np.float64)).as_matrix()
        t = np.asarray(d["object"]["params"]["transl"], np.float64)
        hand_obj = np.einsum("tvk,tjk->tvj", hand_w - t[:, None], r)
        np.testing.assert_allclose(
            np.einsum("tvk,tjk->tvj", obj_w - t[:, None], r),
            np.broadcast_to(obj.vertices, obj_w.shape),
            atol=1e-6,
        )
        # The same grasps, regenerated with the job's seed from the written subject and object meshes.
        vtemp = trimesh.load(tiny_root / d["rhand"]["vtemp"], process=False).vertices
        synth = GraspSynthesizer(subject_model(model, vtemp), obj, TINY.synth)
        grasps, _ = synth.sample(job.n_grasps, np.random.default_rng(list(job.seed)))
        for i, g in enumerate(grasps):
            np.testing.assert_allclose(hand_obj[1 + i], g.vertices, atol=2e-5)  # float32 parameters
        # The stored contact labels are those of the reposed hand.
        ids = grab_part_ids(model.weights)
        for i in range(1, 1 + len(grasps)):
            labels = contact_labels(hand_obj[i], synth.faces, ids, np.asarray(obj.vertices))
            assert (labels == d["contact"]["object"][i]).mean() > 0.999


def test_pca_hand_pose_approximates_fullpose(tiny_root, model):
    f = sorted((tiny_root / "grab").glob("s*/*.npz"))[0]
    d = _load(f)
    full, _, _ = _repose(tiny_root, d, model)
    pca, _, _ = _repose(tiny_root, d, model, use_pca=True)
    err = np.linalg.norm(full - pca, axis=-1)
    assert err.mean() < 0.002 and err.max() < 0.01  # 24 of 45 components: lossy but close
    # hand_pose is the projection of fullpose on the first 24 components (flat hand mean).
    comps = np.asarray(model.hands_components)[:24]
    np.testing.assert_allclose(
        d["rhand"]["params"]["hand_pose"], d["rhand"]["params"]["fullpose"] @ comps.T, atol=1e-5
    )


def test_project_reader_reads_the_synthetic_root(tiny_root, model):
    from halo.grasp.grab import GrabHandPoser, contact_frames, find_sequences, load_grab_sequence

    files = find_sequences(tiny_root)
    poser = GrabHandPoser(tiny_root)  # uses tools/mano/SYNTHETIC_RIGHT.npz
    seq = load_grab_sequence(files[0])
    verts, keypoints = poser.pose(seq)
    expected, _, _ = _repose(tiny_root, _load(files[0]), model)
    np.testing.assert_allclose(verts, expected, atol=1e-6)
    assert keypoints.shape == (seq.n_frames, 21, 3)
    np.testing.assert_array_equal(contact_frames(seq, require_thumb_and_finger=True), [0, 1, 1, 1, 1, 0])


def test_writer_resumes_and_is_deterministic(tiny_root, tmp_path):
    report = write_synthetic_grab(tiny_root, TINY, progress=False)
    assert report.written == [] and len(report.skipped_existing) == 2
    # A second root with one object gives byte-identical parameters for that object.
    one = SyntheticGrabConfig(**{**TINY.to_dict(), "objects": 1, "synth": TINY.synth})
    write_synthetic_grab(tmp_path, one, progress=False)
    rel = _jobs(one, [select_objects(1)[0].name])[0].relpath
    a, b = _load(tiny_root / rel), _load(tmp_path / rel)
    for key in ("fullpose", "global_orient", "transl"):
        np.testing.assert_array_equal(a["rhand"]["params"][key], b["rhand"]["params"][key])


# ----------------------------------------------------------------------------
# Cache
# ----------------------------------------------------------------------------


def test_cache_is_keyed_by_config_and_reused(tmp_path):
    cfg = SyntheticGrabConfig(objects=1, grasps_per_object=2, subjects=1, grasp_frames=2, away_frames=0)
    root = synthetic_grab_root(tmp_path, cfg, progress=False)
    assert root == tmp_path / synthetic_grab_key(cfg) and (root / ".synthetic_grab_complete").is_file()
    seq = next((root / "grab").glob("s1/*.npz"))
    stamp = seq.stat().st_mtime_ns
    # A finished root is returned without generating anything (its speed: bench/bench_grab_cache.py).
    import halo.grasp.synthetic_grab as gs

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished cache entry was generated again")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gs, "write_synthetic_grab", must_not_run)
        assert synthetic_grab_root(tmp_path, cfg, progress=False) == root
    assert seq.stat().st_mtime_ns == stamp
    other = SyntheticGrabConfig(objects=1, grasps_per_object=3, subjects=1, grasp_frames=2, away_frames=0)
    assert synthetic_grab_key(other) != synthetic_grab_key(cfg)
    # An interrupted generation (no marker, a file missing) is completed, not returned half-written.
    (root / ".synthetic_grab_complete").unlink()
    seq.unlink()
    assert synthetic_grab_root(tmp_path, cfg, progress=False) == root
    assert seq.is_file() and (root / ".synthetic_grab_complete").is_file()


def test_concurrent_cache_callers_generate_once(tmp_path, monkeypatch):
    import halo.grasp.synthetic_grab as gs

    calls = []

    def fake_write(root, config, **kwargs):
        calls.append(root)
        time.sleep(0.3)  # long enough for the other caller to reach the lock
        Path(root).mkdir(parents=True, exist_ok=True)
        return gs.SyntheticGrabReport(root=Path(root))

    monkeypatch.setattr(gs, "write_synthetic_grab", fake_write)
    cfg = SyntheticGrabConfig(objects=1, grasps_per_object=1)
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(synthetic_grab_root(tmp_path, cfg))) for _ in range(2)
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(calls) == 1 and len(results) == 2 and results[0] == results[1]


def test_config_validation():
    with pytest.raises(ValueError, match="subjects"):
        SyntheticGrabConfig(subjects=0)
    with pytest.raises(ValueError, match="n_comps"):
        SyntheticGrabConfig(n_comps=46)
    cfg = SyntheticGrabConfig(objects=3, seed=5)
    assert SyntheticGrabConfig.from_dict(cfg.to_dict()) == cfg


def test_cli_grasps_show_renders_the_root(tiny_root, tmp_path):
    from PIL import Image

    from halo.cli.app import main

    out = tmp_path / "grid.png"
    assert main(["data", "grasps-show", str(tiny_root), "--out", str(out), "--n", "4", "--size", "96"]) == 0
    assert Image.open(out).size == (4 * 96, 96)
    assert main(["data", "grasps-synth", "--out", str(tmp_path / "x"), "--grasps-per-object", "0"]) == 2
