"""Hand data pipeline: preparation, inside test, original layout, building, datamodule, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import igl
import numpy as np
import pytest
import torch
import trimesh

from halo.core.canonicalization import canonicalize
from halo.data.build import (
    BuildConfig,
    ManoParamsSource,
    PreparedListSource,
    SyntheticHandSource,
    VertexFilesSource,
    build_split,
    build_synthetic_dataset,
    sample_occupancy,
)
from halo.data.layout import (
    DatasetFormatError,
    finished_samples,
    read_datalist,
    read_mesh,
    read_pointcloud,
    read_points,
    sample_paths,
)
from halo.data.prepare import (
    load_prepared,
    prepare_from_mano,
    save_prepared,
    vertex_part_labels,
)
from halo.geometry.inside import MeshNotWatertightError, inside_backend, points_inside_mesh
from halo.hands.mano import save_mano_model_npz
from halo.hands.synthetic_hand import sample_hand_poses

SMALL = BuildConfig(n_points=3000, n_iou_points=2000, n_pointcloud=2000)


@pytest.fixture(scope="module")
def hands(layer):
    rng = np.random.default_rng(1)
    poses = sample_hand_poses(3, rng)
    betas = rng.normal(0, 1, (3, 10))
    orient = rng.normal(0, 1, (3, 3))
    return prepare_from_mano(layer, ["a", "b", "c"], poses, betas, orient, n_surface_samples=2000)


# ----------------------------------------------------------------------------- inside test


def test_inside_test_matches_exact_winding_numbers(hands):
    h = hands[0]
    rng = np.random.default_rng(0)
    mesh = trimesh.Trimesh(h.vertices, h.faces, process=False)
    pts = np.concatenate(
        [rng.uniform(-0.22, 0.22, (4000, 3)), mesh.sample(4000) + rng.normal(0, 0.003, (4000, 3))]
    )
    exact = igl.winding_number(h.vertices, h.faces, pts) > 0.5
    got = points_inside_mesh(h.vertices, h.faces, pts)
    assert inside_backend() in ("open3d", "embree")
    assert got.dtype == bool and got.shape == (8000,)
    assert (got != exact).sum() <= 2  # ray-casting vs exact winding number on grazing rays
    assert 500 < got.sum() < 6000


def test_inside_test_refuses_open_meshes(hands):
    h = hands[0]
    with pytest.raises(MeshNotWatertightError, match="my_hand.off: mesh is not watertight"):
        points_inside_mesh(h.vertices, h.faces[10:], np.zeros((3, 3)), name="my_hand.off")
    with pytest.raises(ValueError, match="points must have shape"):
        points_inside_mesh(h.vertices, h.faces, np.zeros((3, 2)))


# ----------------------------------------------------------------------------- preparation


def test_prepare_from_mano_frames_transforms_and_labels(layer, hands):
    for h in hands:
        assert np.allclose(h.keypoints[0], 0, atol=1e-9)  # wrist at the origin (normalized frame)
        assert h.keypoints[9, 0] < -0.05 and abs(h.keypoints[9, 1]) < 1e-9  # middle root along -x
        pose = canonicalize(torch.from_numpy(h.keypoints)[None])
        np.testing.assert_allclose(h.part_transforms, pose.part_transforms[0].numpy(), atol=1e-9)
        np.testing.assert_allclose(h.normalization[:3, :3] @ h.normalization[:3, :3].T, np.eye(3), atol=1e-9)
        mesh = trimesh.Trimesh(h.vertices, h.faces, process=False)
        assert mesh.is_watertight and mesh.volume > 0
        assert h.surface_points.shape == (2000, 3) and h.surface_labels.shape == (2000,)
        # Labels: every part is represented, and surface points of a finger tip part lie near that tip.
        assert set(np.unique(h.surface_labels)) == set(range(16))
        tip = h.surface_points[h.surface_labels == 6]  # middle3 -> near middle tip keypoint 12
        assert np.linalg.norm(tip.mean(0) - h.keypoints[11:13].mean(0)) < 0.015


def test_from_mano_transforms_unpose_rigid_vertices(layer):
    rng = np.random.default_rng(3)
    pose, betas = sample_hand_poses(1, rng), rng.normal(0, 1, (1, 10))
    (h,) = prepare_from_mano(layer, ["m"], pose, betas, rng.normal(0, 1, (1, 3)), transforms="mano")
    assert h.transforms_source == "mano"
    with torch.no_grad():
        out = layer(pose=torch.tensor(pose), betas=torch.tensor(betas), global_orient=torch.zeros(1, 3))
    rest = out.rest_vertices[0].numpy()
    weights = layer.weights.numpy()
    labels = vertex_part_labels(weights)
    for k in (0, 3, 6, 15):
        rigid = np.flatnonzero(weights[:, k] > 0.999)
        assert len(rigid) > 0
        posed = h.vertices[rigid]  # normalized frame (first V vertices are the model's)
        unposed = posed @ h.part_transforms[k, :3, :3].T + h.part_transforms[k, :3, 3]
        np.testing.assert_allclose(unposed, rest[rigid], atol=1e-4)  # weights 0.999+, not exactly 1
        assert (labels[rigid] == k).all()


def test_prepared_file_round_trip(tmp_path, hands):
    save_prepared(hands[1], tmp_path / "b.npz")
    back = load_prepared(tmp_path / "b.npz")
    for attr in ("vertices", "faces", "keypoints", "part_transforms", "bone_lengths", "surface_labels"):
        np.testing.assert_array_equal(getattr(back, attr), getattr(hands[1], attr))
    np.savez(tmp_path / "bad.npz", mesh_vertices=np.zeros((3, 3)))
    with pytest.raises(DatasetFormatError, match="bad.npz: missing key 'mesh_faces'"):
        load_prepared(tmp_path / "bad.npz")


# ----------------------------------------------------------------------------- layout


def test_layout_round_trip(tmp_path, hands):
    h = hands[0]
    report = build_split(PreparedListSource([h]), tmp_path / "train", SMALL, progress=False)
    assert report.written == ["a"] and not report.failed
    assert read_datalist(tmp_path / "train") == ["a"]
    paths = sample_paths(tmp_path / "train", "a")
    raw = np.load(paths["points"])
    # The original's keys, dtypes and units (model units = metres x 2.5).
    assert raw["points"].dtype == np.float16 and raw["points"].shape == (3000, 3)
    assert raw["occupancies"].dtype == np.uint8 and raw["occupancies"].shape == (375,)
    for key in (
        "loc",
        "scale",
        "shape",
        "joints_trans",
        "bone_lengths",
        "hand_joints",
        "verts",
        "vert_labels",
    ):
        assert key in raw.files
    np.testing.assert_allclose(raw["hand_joints"], h.keypoints * 2.5, atol=1e-6)
    assert np.abs(raw["points"][:1500]).max() <= 0.55 + 1e-3  # uniform half inside the padded cube

    data = read_points(paths["points"])
    np.testing.assert_allclose(data.keypoints, h.keypoints, atol=1e-6)
    np.testing.assert_allclose(data.part_transforms, h.part_transforms, atol=1e-6)
    np.testing.assert_allclose(data.bone_lengths, h.bone_lengths, atol=1e-6)
    np.testing.assert_array_equal(data.surface_labels, h.surface_labels)
    # Stored occupancies agree with a fresh inside test of the stored points (float16 rounding aside).
    fresh = points_inside_mesh(h.vertices, h.faces, data.points.astype(np.float64))
    assert (fresh != data.occupancies).mean() < 0.002
    assert 0.05 < data.occupancies.mean() < 0.5

    iou = read_points(paths["points_iou"], with_metadata=False)
    assert iou.points.shape == (2000, 3) and np.abs(iou.points).max() <= 0.22 + 1e-3
    cloud, normals = read_pointcloud(paths["pointcloud"])
    mesh = read_mesh(paths["mesh"])
    np.testing.assert_allclose(mesh.vertices, h.vertices, atol=1e-6)
    assert mesh.is_watertight
    _, dist, tri = trimesh.proximity.closest_point(mesh, cloud[:200])
    assert dist.max() < 2e-4  # float16 model units
    assert (np.abs((normals[:200] * mesh.face_normals[tri]).sum(1)) > 0.99).mean() > 0.95


def test_sampling_follows_the_original_scheme(hands):
    s = sample_occupancy(hands[2], BuildConfig(n_points=4000, n_iou_points=1000, n_pointcloud=500), seed=0)
    uniform, near = s.points[:2000], s.points[2000:]
    assert np.abs(uniform).max() <= 0.22 and np.abs(uniform).max() > 0.21
    mesh = trimesh.Trimesh(hands[2].vertices, hands[2].faces, process=False)
    _, dist, _ = trimesh.proximity.closest_point(mesh, near[:500])
    # N(0, 0.01 model units = 4 mm) per axis: distances to the surface are mostly within a few sigma.
    assert 0.001 < np.median(dist) < 0.004 and dist.max() < 0.025
    assert 0.2 < s.occupancies[2000:].mean() < 0.8  # near-surface points straddle the surface
    # A narrower band (data.noise_std) puts the near points closer; the uniform and IoU points stay.
    narrow = sample_occupancy(
        hands[2], BuildConfig(n_points=4000, n_iou_points=1000, n_pointcloud=500, noise_std=0.0025), seed=0
    )
    _, dist_narrow, _ = trimesh.proximity.closest_point(mesh, narrow.points[2000:2500])
    assert np.median(dist_narrow) < 0.5 * np.median(dist) and dist_narrow.max() < 0.01
    np.testing.assert_array_equal(narrow.points[:2000], uniform)
    np.testing.assert_array_equal(narrow.iou_points, s.iou_points)


def test_build_is_resumable_and_skips_bad_samples(tmp_path, hands):
    class Flaky(PreparedListSource):
        def prepare(self, name):
            if name == "b":
                raise ValueError("b.json: vertices contain NaN")
            return super().prepare(name)

    errors = []
    split = tmp_path / "train"
    report = build_split(
        Flaky(hands), split, SMALL, progress=False, on_error=lambda n, m: errors.append((n, m))
    )
    assert report.written == ["a", "c"] and list(report.failed) == ["b"]
    assert errors and "vertices contain NaN" in errors[0][1]
    assert read_datalist(split) == ["a", "c"]
    assert not any(p.exists() for p in sample_paths(split, "b").values())  # never written

    # An interrupted build: a partial temp file and a missing points file.
    mtime_c = sample_paths(split, "c")["points"].stat().st_mtime_ns
    sample_paths(split, "a")["points"].unlink()
    (split / "points" / ".a.npz.tmp999").write_bytes(b"truncated")
    assert finished_samples(split) == {"c"}
    report = build_split(PreparedListSource(hands), split, SMALL, progress=False)
    assert report.written == ["a", "b"] and report.skipped_existing == ["c"]
    assert sample_paths(split, "c")["points"].stat().st_mtime_ns == mtime_c
    assert read_datalist(split) == ["a", "b", "c"]


def test_bad_files_give_errors_naming_file_and_key(tmp_path, hands):
    build_split(PreparedListSource(hands[:1]), tmp_path / "s", SMALL, progress=False)
    p = sample_paths(tmp_path / "s", "a")["points"]
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetFormatError, match=r"a\.npz: (not a readable npz|key .* truncated)"):
        read_points(p)
    np.savez(p, points=np.zeros((10, 3), np.float16), occupancies=np.packbits(np.zeros(10, bool)))
    with pytest.raises(DatasetFormatError, match="a.npz: missing key 'joints_trans'"):
        read_points(p)
    np.savez(p, points=np.zeros((10, 2), np.float16), occupancies=np.zeros(2, np.uint8))
    with pytest.raises(DatasetFormatError, match=r"key 'points' has shape \(10, 2\)"):
        read_points(p)
    with pytest.raises(DatasetFormatError, match="missing split file"):
        read_datalist(tmp_path / "nope")
    with pytest.raises(DatasetFormatError, match="file not found"):
        read_mesh(tmp_path / "nope.off")


def test_real_mano_paths_with_a_mano_format_file(tmp_path, model, layer):
    """The user's MANO file path: params files (PCA, not flat) and vertex files through the same builder."""
    mano_file = save_mano_model_npz(model, tmp_path / "MANO_RIGHT.npz")
    rng = np.random.default_rng(5)
    files = []
    for i in range(2):
        f = tmp_path / f"fit_{i}.npz"
        np.savez(f, pose=rng.normal(0, 0.5, 45), shape=rng.normal(0, 1, 10), rot=rng.normal(0, 1, 3))
        files.append(f)
    report = build_split(ManoParamsSource(files, mano_file), tmp_path / "ds" / "train", SMALL, progress=False)
    assert report.written == ["fit_0", "fit_1"], report.failed
    data = read_points(sample_paths(tmp_path / "ds" / "train", "fit_0")["points"])
    with torch.no_grad():
        out = layer(pose=torch.tensor(np.load(files[0])["pose"])[None], use_pca=True, flat_hand_mean=False,
                    betas=torch.tensor(np.load(files[0])["shape"])[None])  # fmt: skip
    np.testing.assert_allclose(data.bone_lengths, canonicalize(out.keypoints).bone_lengths[0], atol=1e-5)

    verts = tmp_path / "hand_0.npy"
    np.save(verts, out.vertices[0].numpy())
    report = build_split(
        VertexFilesSource([verts], mano_file), tmp_path / "ds2" / "train", SMALL, progress=False
    )
    assert report.written == ["hand_0"], report.failed
    bad = tmp_path / "hand_1.npy"
    np.save(bad, np.zeros((10, 3)))
    report = build_split(VertexFilesSource([bad], mano_file), tmp_path / "ds3" / "x", SMALL, progress=False,
                         on_error=lambda n, m: None)  # fmt: skip
    assert "do not match the MANO model" in report.failed["hand_1"]


# ----------------------------------------------------------------------------- datamodule


def test_synthetic_datamodule_builds_once_and_batches(tmp_path):
    from datamodules.hand_occupancy import HandOccupancyDataModule, SyntheticHandsDataModule

    kw = dict(num_train=4, num_val=2, num_test=2, n_points=3000, n_iou_points=2000, n_pointcloud=1000,
              build_workers=1, batch_size=2, val_batch_size=2, points_per_sample=256)  # fmt: skip
    dm = SyntheticHandsDataModule(tmp_path / "cache", **kw)
    assert not dm.is_built()
    dm.prepare_data()
    assert dm.is_built()
    stamp = sample_paths(dm.root / "train", "synth_train_000000")["points"].stat().st_mtime_ns
    dm2 = SyntheticHandsDataModule(tmp_path / "cache", **kw)
    assert dm2.root == dm.root
    dm2.prepare_data()  # reuses the cache
    assert sample_paths(dm.root / "train", "synth_train_000000")["points"].stat().st_mtime_ns == stamp
    assert SyntheticHandsDataModule(tmp_path / "cache", **{**kw, "num_train": 5}).root != dm.root
    narrow = SyntheticHandsDataModule(tmp_path / "cache", **{**kw, "noise_std": 0.004})
    assert narrow.root != dm.root and narrow.build_config.noise_std == 0.004
    assert narrow.hparams["noise_std"] == 0.004  # recorded in checkpoints with the other parameters

    dm2.setup("fit")
    batch = next(iter(dm2.train_dataloader()))
    assert batch["points"].shape == (2, 256, 3) and batch["occupancies"].shape == (2, 256)
    assert batch["keypoints"].shape == (2, 21, 3) and batch["points"].dtype == torch.float32
    assert set(batch["occupancies"].unique().tolist()) <= {0.0, 1.0}
    val = next(iter(dm2.val_dataloader()))
    assert val["iou_points"].shape == (2, 2000, 3) and val["iou_occupancies"].shape == (2, 2000)
    again = next(iter(dm2.val_dataloader()))
    assert torch.equal(val["points"], again["points"])  # validation draws are fixed

    # The reader for real data reads the same root identically.
    real = HandOccupancyDataModule(dm.root, val_batch_size=2, points_per_sample=256)
    real.setup("validate")
    same = next(iter(real.val_dataloader()))
    assert torch.equal(same["iou_points"], val["iou_points"]) and torch.equal(
        same["keypoints"], val["keypoints"]
    )
    with pytest.raises(DatasetFormatError, match="missing split file"):
        HandOccupancyDataModule(tmp_path / "nothing").setup("fit")

    # The in-memory cache returns exactly what the files give, and reads each file once.
    cached = HandOccupancyDataModule(dm.root, val_batch_size=2, points_per_sample=256, cache_in_memory=True)
    cached.setup("fit")
    train_ds = cached.split_dataset("train")
    for _ in range(2):  # first epoch fills the cache, the second reads from it
        torch.manual_seed(7)
        from_cache = [train_ds[i] for i in range(len(train_ds))]
    torch.manual_seed(7)
    from_files = [dm2.split_dataset("train")[i] for i in range(len(train_ds))]
    assert len(train_ds._cache) == len(train_ds)
    for a, b in zip(from_cache, from_files, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    val_cached = next(iter(cached.val_dataloader()))
    assert all(torch.equal(val_cached[k], val[k]) for k in val)


# ----------------------------------------------------------------------------- CLI


def _halo(*args, cwd=None):
    env = {**os.environ, "PYOPENGL_PLATFORM": "egl"}
    return subprocess.run([sys.executable, "-m", "halo.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)  # fmt: skip


def test_cli_synth_prepare_build_show(tmp_path):
    small = ["--points", "2000", "--iou-points", "1000", "--pointcloud", "1000", "--workers", "1"]
    r = _halo(
        "data", "synth", "--out", tmp_path / "ds", "--train", 2, "--val", 1, "--test", 0, "--seed", 3, *small,
        "--near-surface-std-mm", 1.6,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert read_datalist(tmp_path / "ds" / "train") == ["synth_train_000000", "synth_train_000001"]
    assert read_datalist(tmp_path / "ds" / "val") == ["synth_val_000000"]
    manifest = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert manifest["config"]["noise_std"] == pytest.approx(0.004)  # 1.6 mm in model units (2.5 per metre)
    r = _halo("data", "synth", "--out", tmp_path / "bad", "--near-surface-std-mm", 0)
    assert r.returncode == 2 and "--near-surface-std-mm must be positive, got 0.0" in r.stderr

    r = _halo("data", "prepare", "--synthetic", 2, "--out", tmp_path / "prep")
    assert r.returncode == 0, r.stderr
    r = _halo(
        "data", "build", "--prepared", tmp_path / "prep", "--out", tmp_path / "ds2", "--split", "test", *small
    )
    assert r.returncode == 0, r.stderr
    assert len(read_datalist(tmp_path / "ds2" / "test")) == 2

    r = _halo("data", "show", tmp_path / "ds", "--split", "train", "-n", 2, "--out", tmp_path / "show.png",
              "--size", 160)  # fmt: skip
    assert r.returncode == 0, r.stderr
    from PIL import Image

    img = np.asarray(Image.open(tmp_path / "show.png").convert("RGB"))
    assert img.shape[1] == 4 * 160 and (img < 200).any(axis=2).mean() > 0.02  # something was drawn


def test_cli_errors_are_one_line(tmp_path):
    (tmp_path / "m.ply").write_text("ply\n")
    r = _halo("data", "build", "--meshes", tmp_path / "m.ply", "--out", tmp_path, "--split", "x")
    assert (
        r.returncode == 2 and "needs your MANO right-hand model" in r.stderr and "Traceback" not in r.stderr
    )
    r = _halo("data", "build", "--out", tmp_path, "--split", "x")
    assert r.returncode == 2 and "give exactly one source" in r.stderr
    r = _halo("data", "show", tmp_path / "missing")
    assert r.returncode == 2 and "missing split file" in r.stderr


def test_synthetic_dataset_manifest_and_distinct_splits(tmp_path):
    reports = build_synthetic_dataset(
        tmp_path, num={"train": 2, "val": 2}, seed=1, config=SMALL, progress=False
    )
    assert all(r.num_ok == 2 for r in reports.values())
    a = read_points(sample_paths(tmp_path / "train", "synth_train_000000")["points"]).keypoints
    b = read_points(sample_paths(tmp_path / "val", "synth_val_000000")["points"]).keypoints
    assert not np.allclose(a, b)
    assert (tmp_path / "dataset.json").is_file()
    # Same seed and name -> same hand.
    h1 = SyntheticHandSource(1, seed=1).prepare("synth_train_000000")
    np.testing.assert_allclose(h1.keypoints, a, atol=1e-6)
