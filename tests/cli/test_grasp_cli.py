"""Mesh files (units, bad files) and the ``halo intersect`` / ``halo eval grasps`` commands."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from halo.cli.app import main
from halo.cli.grasps import CSV_COLUMNS
from halo.core.canonicalization import apply_transform, global_normalization
from halo.geometry.inside import MeshNotWatertightError
from halo.geometry.mesh_io import MeshFileError, MeshNotWatertightFileError, MeshUnitWarning, load_mesh_m
from halo.grasp.folder import discover_grasps
from halo.hands.synthetic_hand import sample_hand_poses


def _box(lo, hi) -> trimesh.Trimesh:
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    return trimesh.creation.box(
        extents=hi - lo, transform=trimesh.transformations.translation_matrix((lo + hi) / 2)
    )


# The object: a 4 cm cube at the origin.  The "hand" boxes (any closed mesh works) are placed so the
# numbers are known by hand: PRESSED overlaps it by 1 x 2 x 2 cm = 4 cm^3 and its inner corners are
# 1 cm deep; FAR is 9 cm away.
OBJECT = ([-0.02, -0.02, -0.02], [0.02, 0.02, 0.02])
PRESSED = ([0.01, -0.01, -0.01], [0.05, 0.01, 0.01])
FAR = ([0.11, -0.01, -0.01], [0.15, 0.01, 0.01])


@pytest.fixture(scope="module")
def rest_hand(layer) -> trimesh.Trimesh:
    with torch.no_grad():
        out = layer()
    return trimesh.Trimesh(out.vertices[0].numpy(), layer.faces.numpy(), process=False)


# ----------------------------------------------------------------------------- mesh files


def test_mm_and_cm_meshes_warn_with_the_rescale_hint(rest_hand, tmp_path):
    mm, cm = tmp_path / "hand_mm.ply", tmp_path / "hand_cm.obj"
    rest_hand.copy().apply_scale(1000).export(mm)
    rest_hand.copy().apply_scale(100).export(cm)
    with pytest.warns(MeshUnitWarning, match=r"hand_mm\.ply.*millimetres.*--scale 0\.001"):
        kept = load_mesh_m(mm)
    assert kept.extents == pytest.approx(rest_hand.extents * 1000)  # "warn" leaves the mesh alone
    with pytest.warns(MeshUnitWarning, match=r"hand_cm\.obj.*centimetres.*apply_scale\(0\.01\)"):
        load_mesh_m(cm)
    with pytest.warns(MeshUnitWarning, match="rescaled by 0.001"):
        auto = load_mesh_m(mm, rescale="auto")
    assert auto.extents == pytest.approx(rest_hand.extents, rel=1e-6)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_mesh_m(mm, scale=0.001).extents == pytest.approx(rest_hand.extents, rel=1e-6)
        load_mesh_m(mm, rescale="never")


def test_bad_mesh_files_are_named(tmp_path):
    garbage = tmp_path / "broken.ply"
    garbage.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 9\nend_header\n\x00\x01")
    with pytest.raises(MeshFileError, match="broken.ply"):
        load_mesh_m(garbage)
    empty = tmp_path / "empty.obj"
    empty.write_text("# nothing here\n")
    with pytest.raises(MeshFileError, match="empty.obj"):
        load_mesh_m(empty)
    with pytest.raises(MeshFileError, match=r"missing\.stl: no such file"):
        load_mesh_m(tmp_path / "missing.stl")
    with pytest.raises(MeshFileError, match="unsupported mesh type '.glb'"):
        (tmp_path / "x.glb").write_bytes(b"")
        load_mesh_m(tmp_path / "x.glb")


def test_watertight_check_and_stl_vertex_merging(tmp_path):
    cube = _box(*OBJECT)
    cube.export(tmp_path / "cube.stl")  # STL repeats every vertex per triangle
    assert load_mesh_m(tmp_path / "cube.stl", require_watertight=True).is_watertight
    trimesh.Trimesh(cube.vertices, cube.faces[:-1], process=False).export(tmp_path / "open.off")
    with pytest.raises(MeshNotWatertightFileError, match="open.off.*not watertight") as err:
        load_mesh_m(tmp_path / "open.off", require_watertight=True)
    assert isinstance(err.value, MeshNotWatertightError)


# ----------------------------------------------------------------------------- halo intersect


@pytest.fixture()
def box_files(tmp_path) -> dict[str, Path]:
    files = {}
    for name, box in (("object", OBJECT), ("pressed", PRESSED), ("far", FAR)):
        files[name] = tmp_path / f"{name}.ply"
        _box(*box).export(files[name])
    return files


def test_intersect_json(box_files, capsys):
    assert main(["intersect", str(box_files["pressed"]), str(box_files["object"]), "--json"]) == 0
    out = capsys.readouterr().out
    record = json.loads(out)  # exactly one JSON object, nothing else on stdout
    assert list(record)[:3] == ["volume_cm3", "depth_cm", "contact"]
    assert record["volume_cm3"] == pytest.approx(4.0, rel=1e-6)
    assert record["depth_cm"] == pytest.approx(1.0, abs=1e-5)
    assert record["min_distance_cm"] == pytest.approx(-1.0, abs=1e-5)
    assert record["contact"] is True

    assert main(["intersect", str(box_files["far"]), str(box_files["object"]), "--json"]) == 0
    far = json.loads(capsys.readouterr().out)
    assert far["volume_cm3"] == 0.0 and far["depth_cm"] == 0.0 and far["contact"] is False
    assert far["min_distance_cm"] == pytest.approx(9.0, abs=1e-5)
    assert (
        main(
            [
                "intersect",
                str(box_files["far"]),
                str(box_files["object"]),
                "--json",
                "--contact-tol-mm",
                "100",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["contact"] is True


def test_intersect_text_and_errors(box_files, tmp_path, capsys):
    assert main(["intersect", str(box_files["pressed"]), str(box_files["object"])]) == 0
    out = capsys.readouterr().out
    assert "intersection volume      4.000 cm^3" in out and "penetration depth        1.000 cm" in out
    assert "contact                    yes" in out
    bad = tmp_path / "scan.obj"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not a mesh")
    assert main(["intersect", str(box_files["pressed"]), str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"halo intersect: error: {bad}")  # one line, no traceback
    assert main(["intersect", str(tmp_path / "nope.ply"), str(box_files["object"])]) == 2
    assert "nope.ply: no such file" in capsys.readouterr().err


def test_intersect_mm_meshes_warn_and_scale(rest_hand, box_files, tmp_path, capsys):
    hand_mm = tmp_path / "hand_mm.ply"
    rest_hand.copy().apply_scale(1000).export(hand_mm)
    obj_mm = tmp_path / "obj_mm.ply"
    _box(*OBJECT).apply_scale(1000).export(obj_mm)  # 69 mm diagonal
    assert main(["intersect", str(hand_mm), str(obj_mm), "--json", "--scale", "0.001"]) == 0
    captured = capsys.readouterr()
    assert "warning" not in captured.err
    assert json.loads(captured.out)["contact"] is True  # the cube sits in the hand
    # Unscaled: a warning per file with the fix, then a clear refusal instead of a 1e13-point grid.
    assert main(["intersect", str(hand_mm), str(obj_mm), "--json"]) == 2
    err = capsys.readouterr().err
    assert f"warning: {hand_mm}" in err and "millimetres" in err and "--scale 0.001" in err
    assert "halo intersect: error:" in err and "are the meshes in mm or cm?" in err


def test_intersect_simulation_json_stays_clean(box_files, capfd):
    pytest.importorskip("pybullet")
    assert main(["intersect", str(box_files["far"]), str(box_files["object"]), "--json", "--simulate"]) == 0
    record = json.loads(capfd.readouterr().out)  # V-HACD's C-level progress output is silenced
    assert record["sim_displacement_m"] == pytest.approx(0.5 * 9.8 * (35 / 240) ** 2, rel=0.05)  # free fall


def test_simulate_without_pybullet_is_one_error_line(box_files, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pybullet", None)
    assert main(["intersect", str(box_files["far"]), str(box_files["object"]), "--simulate"]) == 2
    assert "pip install pybullet" in capsys.readouterr().err


# ----------------------------------------------------------------------------- halo eval grasps


@pytest.fixture()
def grasp_dir(tmp_path, layer) -> Path:
    """Flat + subfolder layout, two keypoint files, three bad grasps (see the comments)."""
    d = tmp_path / "grasps"
    (d / "pear").mkdir(parents=True)
    _box(*OBJECT).export(d / "apple_obj.ply")
    _box(*PRESSED).export(d / "apple_0_hand.ply")
    _box(*FAR).export(d / "apple_1_hand.ply")
    with torch.no_grad():
        kp = layer(pose=torch.from_numpy(sample_hand_poses(2, seed=5))).keypoints.numpy()
    np.save(d / "apple_0.npy", kp[0])
    np.save(d / "apple_1.npy", kp[1])
    # pear: subfolder layout; a 2 cm sphere and a box 1.4 mm from it (contact, no overlap).
    trimesh.creation.icosphere(subdivisions=3, radius=0.02).export(d / "pear" / "pear.ply")
    _box([0.021, -0.003, -0.003], [0.05, 0.003, 0.003]).export(d / "pear" / "0_hand.ply")
    (d / "apple_2_hand.ply").write_bytes(b"ply\nthis is not a mesh\n")  # bad: unreadable
    _box(*PRESSED).export(d / "kiwi_0_hand.ply")  # bad: no kiwi object anywhere
    cube = _box(*OBJECT)
    trimesh.Trimesh(cube.vertices, cube.faces[:-1], process=False).export(d / "plum_obj.ply")  # bad: open
    _box(*PRESSED).export(d / "plum_0_hand.ply")
    (d / "notes.txt").write_text("ignored")
    return d


def test_grasp_layout_discovery(grasp_dir):
    found = discover_grasps(grasp_dir)
    assert [g.grasp for g in found.grasps] == ["apple_0", "apple_1", "apple_2", "kiwi_0", "pear/0", "plum_0"]
    apple0 = found.grasps[0]
    assert apple0.object == "apple" and apple0.hand_mesh.name == "apple_0_hand.ply"
    assert apple0.keypoints.name == "apple_0.npy"
    assert found.grasps[4].object == "pear" and found.grasps[4].keypoints is None
    assert found.skipped == []


def test_eval_grasps_scores_the_folder_and_skips_bad_files(grasp_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", "grasps", "--grasps", str(grasp_dir), "--out", str(out), "--k", "2"]) == 0
    captured = capsys.readouterr()
    for bad in ("apple_2_hand.ply", "kiwi_0_hand.ply", "plum_obj.ply"):
        assert bad in captured.err
    assert "no object mesh for 'kiwi'" in captured.err
    assert "scored 3 grasp(s), skipped 3" in captured.out

    rows = list(csv.DictReader(open(out / "grasp_metrics.csv")))
    assert list(rows[0]) == list(CSV_COLUMNS)
    by_id = {r["grasp"]: r for r in rows}
    assert sorted(by_id) == ["apple_0", "apple_1", "pear/0"]
    a0, a1, p0 = by_id["apple_0"], by_id["apple_1"], by_id["pear/0"]
    assert (a0["object"], float(a0["volume_cm3"]), float(a0["depth_cm"]), a0["contact"]) == (
        "apple",
        4.0,
        1.0,
        "1",
    )
    assert (
        float(a1["volume_cm3"]) == 0
        and float(a1["min_distance_cm"]) == pytest.approx(9.0)
        and a1["contact"] == "0"
    )
    assert p0["object"] == "pear" and float(p0["volume_cm3"]) == 0 and p0["contact"] == "1"
    assert 0.14 < float(p0["min_distance_cm"]) < 0.2  # 1.42 mm to the true sphere, a bit more to the facets

    md = (out / "grasp_summary.md").read_text()
    assert "| apple | 2 | 2.000 | 0.500 | 0.500 |" in md
    assert "| pear | 1 | 0.000 | 0.000 | 1.000 |" in md
    assert "| **all** | 3 | 1.333 | 0.333 | 0.667 |" in md
    # Two hands with keypoints and --k 2: k is capped at N // 2 = 1 (the rule `halo generate grasps` and
    # the validation callback use), so entropy 0 and the cluster size is half the distance between
    # the two hands in the canonical frame.
    kp = torch.from_numpy(
        np.stack([np.load(grasp_dir / f"apple_{i}.npy") for i in (0, 1)]).astype(np.float64)
    )
    canon = apply_transform(global_normalization(kp), kp).numpy() * 100  # cm
    half_distance_cm = np.linalg.norm(canon[0] - canon[1]) / 2
    assert "k = 1, asked 2: capped at half the grasps" in md
    assert f"| 2 | 0.000 | 0.000 | {half_distance_cm:.3f} |" in md

    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_scored"] == 3 and summary["n_skipped"] == 3
    assert summary["overall"]["contact_ratio"] == pytest.approx(2 / 3)
    assert summary["per_object"]["apple"]["mean_volume_cm3"] == pytest.approx(2.0)
    assert (summary["cluster"]["k"], summary["cluster"]["k_requested"]) == (1, 2)
    assert summary["cluster"]["entropy"] == 0
    assert summary["cluster"]["cluster_size_cm"] == pytest.approx(half_distance_cm, rel=1e-6)
    assert {Path(s["file"]).name for s in summary["skipped"]} == {
        "apple_2_hand.ply",
        "kiwi_0_hand.ply",
        "plum_0_hand.ply",
    }


def test_hull_if_open_scores_open_objects_through_their_hull_and_the_others_as_they_are(
    grasp_dir, tmp_path, capsys
):
    # A concave watertight object (a torus) keeps its hole; the open cube (plum) is scored against its
    # hull instead of being skipped.
    (grasp_dir / "fig").mkdir()
    trimesh.creation.torus(major_radius=0.02, minor_radius=0.008).export(grasp_dir / "fig" / "fig.ply")
    _box([-0.005, -0.005, -0.003], [0.005, 0.005, 0.003]).export(
        grasp_dir / "fig" / "0_hand.ply"
    )  # in the hole
    out = tmp_path / "eval"
    assert (
        main(["eval", "grasps", "--grasps", str(grasp_dir), "--out", str(out), "--k", "2", "--hull-if-open"])
        == 0
    )
    captured = capsys.readouterr()
    assert "plum_obj.ply: not watertight, evaluated against its convex hull" in captured.out
    by_id = {r["grasp"]: r for r in csv.DictReader(open(out / "grasp_metrics.csv"))}
    assert float(by_id["plum_0"]["volume_cm3"]) == pytest.approx(4.0, abs=0.05)  # the cube's hull is the cube
    assert float(by_id["fig/0"]["volume_cm3"]) == pytest.approx(0.0, abs=0.05)  # the hole stays empty
    assert float(by_id["apple_0"]["volume_cm3"]) == pytest.approx(4.0, abs=0.05)
    settings = json.loads((out / "summary.json").read_text())["settings"]
    assert settings["object_convex_hull"] is False and settings["object_convex_hull_if_open"] is True
    # against every object's hull (--convex-hull) the box in the hole overlaps the torus' hull
    assert main(["eval", "grasps", "--grasps", str(grasp_dir), "--out", str(tmp_path / "all"), "--k", "2",
                 "--convex-hull"]) == 0  # fmt: skip
    by_id = {r["grasp"]: r for r in csv.DictReader(open(tmp_path / "all" / "grasp_metrics.csv"))}
    assert float(by_id["fig/0"]["volume_cm3"]) > 0.3


def test_eval_grasps_cluster_skip_reason_and_objects_folder(grasp_dir, tmp_path, capsys):
    (grasp_dir / "apple_1.npy").unlink()  # one hand with keypoints left: too few to cluster
    objects = tmp_path / "objects"
    objects.mkdir()
    _box(*OBJECT).export(objects / "kiwi.ply")  # now kiwi has an object (--objects)
    out = tmp_path / "eval"
    assert (
        main(["eval", "grasps", "--grasps", str(grasp_dir), "--objects", str(objects), "--out", str(out)])
        == 0
    )
    assert "scored 4 grasp(s), skipped 2" in capsys.readouterr().out
    md = (out / "grasp_summary.md").read_text()
    assert "| kiwi | 1 | 4.000 | 1.000 | 1.000 |" in md
    assert "skipped: 1 usable grasp(s), need at least 2" in md


def test_eval_grasps_fails_only_when_nothing_scores(tmp_path, capsys):
    d = tmp_path / "grasps"
    d.mkdir()
    _box(*PRESSED).export(d / "kiwi_0_hand.ply")
    assert main(["eval", "grasps", "--grasps", str(d), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "kiwi_0_hand.ply" in err and "no grasp could be scored (1 skipped" in err
    assert not (tmp_path / "o" / "grasp_metrics.csv").exists()


def test_keypoint_only_grasps_without_a_checkpoint_are_skipped(grasp_dir, tmp_path, capsys):
    np.save(grasp_dir / "apple_7.npy", np.load(grasp_dir / "apple_0.npy"))  # no mesh: needs HALO
    out = tmp_path / "eval"
    args = [
        "eval",
        "grasps",
        "--grasps",
        str(grasp_dir),
        "--out",
        str(out),
        "--checkpoint",
        str(tmp_path / "no.pt"),
    ]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "apple_7.npy: cannot mesh keypoints with HALO" in captured.err and "no.pt" in captured.err
    assert "scored 3 grasp(s), skipped 4" in captured.out


@pytest.mark.reference
def test_keypoint_only_grasp_is_meshed_with_halo(halo_reference, layer, tmp_path, capsys):
    d = tmp_path / "grasps"
    d.mkdir()
    with torch.no_grad():
        kp = layer(pose=torch.from_numpy(sample_hand_poses(1, seed=1, kind="grasp"))).keypoints[0].numpy()
    np.save(d / "mug_0.npy", kp)
    below = kp[:, 1].min() - 0.05  # a slab 5 cm below the lowest joint: no contact
    _box([-0.5, below - 0.1, -0.5], [0.5, below, 0.5]).export(d / "mug_obj.ply")
    out = tmp_path / "eval"
    args = [
        "eval",
        "grasps",
        "--grasps",
        str(d),
        "--out",
        str(out),
        "--checkpoint",
        str(halo_reference / "model_best.pt"),
    ]
    assert main([*args, "--resolution-0", "16", "--upsampling-steps", "1", "--no-progress"]) == 0
    assert "1 hands meshed with HALO" in (out / "grasp_summary.md").read_text()
    hand = trimesh.load(out / "hands" / "mug_0_hand.ply", force="mesh")
    row = next(csv.DictReader(open(out / "grasp_metrics.csv")))
    assert float(row["volume_cm3"]) == 0 and row["contact"] == "0"
    # The mesh's lowest point lies within ~1.5 cm (finger thickness) below the lowest joint.
    assert float(row["min_distance_cm"]) == pytest.approx((hand.bounds[0, 1] - below) * 100, abs=1e-3)
    assert 3.5 < float(row["min_distance_cm"]) < 5.0


def test_help_documents_the_layout(capsys):
    for argv in (["intersect", "--help"], ["eval", "grasps", "--help"]):
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 0
    out = capsys.readouterr().out
    assert "usage: halo intersect" in out and "--contact-tol-mm" in out
    assert (
        "DIR/<object>_<i>.npy" in out and "DIR/<object>_<i>_hand.ply" in out and "DIR/<object>_obj.ply" in out
    )
