"""Property-based fuzzing of every reader of user files (hypothesis).

Each reader gets a valid file, then damaged copies of it: truncated at a random point, a few
bytes flipped, and (for array formats) NaN/inf values, wrong dtypes and wrong shapes.  A reader
may accept a damaged file only when what it returns still satisfies its documented invariants
(shapes, finite values); otherwise it must raise its documented error class with the file
named.  Anything else (another exception type, a crash, a hang past ``HANG_SECONDS``) fails.

Examples per test are few (``FUZZ``) and derandomized, so the default suite stays fast and
reproducible; raise ``HALO_FUZZ_EXAMPLES`` for a longer local run.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import json
import os
import pickle
import signal
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from halo.core.checkpoint import CheckpointError, load_model, save_checkpoint
from halo.core.model import HaloModel, NetworkConfig
from halo.data.keypoint_files import KeypointFileError, load_keypoints
from halo.data.layout import DatasetFormatError, read_pointcloud, read_points
from halo.data.youtube3d import YouTube3DError, load_youtube3d
from halo.geometry.mesh_io import MeshFileError, load_mesh_m
from halo.grasp.grab import GrabFileError, load_grab_sequence
from halo.grasp.vae import GraspVaeError
from halo.grasp.vae_checkpoint import load_grasp_vae
from halo.hands.mano import ManoModelError, load_mano_model, save_mano_model_npz, save_mano_model_pkl

HANG_SECONDS = 30
FUZZ = settings(
    max_examples=int(os.environ.get("HALO_FUZZ_EXAMPLES", "30")),
    deadline=None,  # shared CI cores: a per-example deadline would be flaky; HANG_SECONDS catches hangs
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# ---------------------------------------------------------------------------- damage
#: (position in [0, 1), xor mask) pairs; or a truncation point.
flips = st.lists(st.tuples(st.floats(0, 0.999), st.integers(1, 255)), min_size=1, max_size=6)
damage = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 0.999)),
    st.tuples(st.just("flip"), flips),
)


def _damaged(data: bytes, how) -> bytes:
    kind, arg = how
    if kind == "truncate":
        return data[: int(len(data) * arg)]
    out = bytearray(data)
    for where, mask in arg:
        out[int(len(out) * where)] ^= mask
    return bytes(out)


@contextlib.contextmanager
def _no_hang(what: Path):
    def _alarm(*_):
        raise TimeoutError(f"reader hung on {what} for more than {HANG_SECONDS} s")

    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(HANG_SECONDS)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


_counter = iter(range(10**9))


def _write(folder: Path, suffix: str, data: bytes) -> Path:
    path = folder / f"fuzz{next(_counter)}{suffix}"
    path.write_bytes(data)
    return path


def _read_or_documented_error(read, path: Path, errors: tuple[type[BaseException], ...]):
    """``read(path)``, or None when it raised one of ``errors`` naming the file (the only other outcome allowed)."""
    with _no_hang(path):
        try:
            return read(path)
        except errors as exc:
            assert path.name in str(exc), f"error does not name the file: {exc}"
            assert "\n" not in str(exc).strip(), f"error is not one line: {exc!r}"
            return None


# ---------------------------------------------------------------------------- keypoint files
@functools.cache
def _sequence() -> np.ndarray:
    from halo.hands.sequences import synthetic_hand_sequence

    return np.asarray(synthetic_hand_sequence(6), np.float64)


def _hands(n: int = 2) -> np.ndarray:
    return _sequence()[:n].copy()


def _keypoint_bytes(fmt: str, keypoints) -> bytes:
    if fmt == "npy":
        import io

        buf = io.BytesIO()
        np.save(buf, keypoints)
        return buf.getvalue()
    if fmt == "npz":
        import io

        buf = io.BytesIO()
        np.savez(buf, keypoints=keypoints)
        return buf.getvalue()
    if fmt == "json":
        return json.dumps({"keypoints": np.asarray(keypoints).tolist()}).encode()
    return pickle.dumps({"keypoints": keypoints}, protocol=2)


def _check_keypoints(seq) -> None:
    kp = seq.keypoints
    assert kp.ndim == 3 and kp.shape[1:] == (21, 3) and len(kp) >= 1
    assert np.isfinite(kp).all() and len(seq.is_left) == len(kp)


KEYPOINT_FORMATS = ["npy", "npz", "json", "pkl"]


@pytest.mark.parametrize("fmt", KEYPOINT_FORMATS)
@FUZZ
@given(how=damage)
def test_keypoint_files_survive_damage(fmt, how, tmp_path):
    path = _write(tmp_path, f".{fmt}", _damaged(_keypoint_bytes(fmt, _hands()), how))
    seq = _read_or_documented_error(load_keypoints, path, (KeypointFileError,))
    if seq is not None:
        _check_keypoints(seq)


array_shapes = st.sampled_from(
    [(21, 3), (2, 21, 3), (21, 2), (2, 20, 3), (0, 21, 3), (3,), (), (1, 1, 21, 3)]
)
dtypes = st.sampled_from(["float64", "float32", "float16", "int64", "uint8", "bool", "complex64", "U3"])
specials = st.lists(st.sampled_from([np.nan, np.inf, -np.inf, 1e30]), max_size=3)


@pytest.mark.parametrize("fmt", KEYPOINT_FORMATS)
@FUZZ
@given(shape=array_shapes, dtype=dtypes, special=specials, seed=st.integers(0, 2**16))
def test_keypoint_files_with_wrong_values_dtypes_and_shapes(fmt, shape, dtype, special, seed, tmp_path):
    rng = np.random.default_rng(seed)
    base = _hands(2)
    values = (
        base.reshape(-1)[: int(np.prod(shape))] if int(np.prod(shape)) <= base.size else rng.random(shape)
    )
    values = np.resize(values, shape).astype(np.float64)
    for v in special:
        if values.size:
            values.reshape(-1)[rng.integers(values.size)] = v
    with np.errstate(invalid="ignore", over="ignore"):
        arr = values.astype(dtype) if dtype != "U3" else values.astype(str).astype("U3")
    if fmt == "json" and arr.dtype.kind == "c":
        arr = arr.real
    payload = arr if fmt != "json" else arr
    try:
        data = _keypoint_bytes(fmt, payload)
    except (TypeError, ValueError):  # json cannot hold NaN as a literal in strict readers: still written
        return
    path = _write(tmp_path, f".{fmt}", data)
    seq = _read_or_documented_error(load_keypoints, path, (KeypointFileError,))
    if seq is not None:
        _check_keypoints(seq)
        assert shape in ((21, 3), (2, 21, 3)), f"accepted shape {shape}"
        assert np.isfinite(arr.astype(np.complex128)).all() if arr.dtype.kind in "fc" else True


# ---------------------------------------------------------------------------- dataset npz items
def _points_item(n: int = 256, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "points": (rng.random((n, 3)) - 0.5).astype(np.float16),
        "occupancies": np.packbits(rng.random(n) < 0.3),
        "joints_trans": np.tile(np.eye(4, dtype=np.float32), (16, 1, 1)),
        "hand_joints": (rng.random((21, 3)) * 0.1).astype(np.float32),
        "bone_lengths": rng.random(16).astype(np.float32),
        "verts": rng.random((32, 3)).astype(np.float32),
        "vert_labels": rng.integers(0, 16, 32),
        "loc": np.zeros(3, np.float32),
        "scale": np.float32(1.0),
    }


def _npz_bytes(arrays: dict) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _check_points(hp) -> None:
    assert hp.points.ndim == 2 and hp.points.shape[1] == 3 and np.isfinite(hp.points).all()
    assert hp.occupancies.shape == (len(hp.points),) and hp.occupancies.dtype == bool
    assert hp.keypoints.shape == (21, 3) and np.isfinite(hp.keypoints).all()
    assert hp.part_transforms.shape == (16, 4, 4) and hp.bone_lengths.shape == (16,)


@FUZZ
@given(how=damage)
def test_dataset_points_items_survive_damage(how, tmp_path):
    path = _write(tmp_path, ".npz", _damaged(_npz_bytes(_points_item()), how))
    hp = _read_or_documented_error(read_points, path, (DatasetFormatError,))
    if hp is not None:
        _check_points(hp)


@FUZZ
@given(
    key=st.sampled_from(
        ["points", "occupancies", "joints_trans", "hand_joints", "bone_lengths", "verts", "loc"]
    ),
    shape=st.sampled_from([(0,), (5,), (7, 3), (16, 4), (21, 3), (256, 3), (256, 2), (1, 2, 3)]),
    dtype=dtypes,
    special=specials,
)
def test_dataset_points_items_with_wrong_arrays(key, shape, dtype, special, tmp_path):
    arrays = _points_item()
    values = np.resize(np.linspace(-0.4, 0.4, max(int(np.prod(shape)), 1)), shape)
    for i, v in enumerate(special):
        if values.size:
            values.reshape(-1)[i % values.size] = v
    with np.errstate(invalid="ignore", over="ignore"):
        arrays[key] = values.astype(dtype) if dtype != "U3" else values.astype("U3")
    path = _write(tmp_path, ".npz", _npz_bytes(arrays))
    hp = _read_or_documented_error(read_points, path, (DatasetFormatError,))
    if hp is not None:
        _check_points(hp)


@FUZZ
@given(how=damage)
def test_dataset_pointcloud_items_survive_damage(how, tmp_path):
    rng = np.random.default_rng(0)
    item = {
        "points": rng.random((64, 3)).astype(np.float32),
        "normals": rng.normal(size=(64, 3)).astype(np.float32),
    }
    path = _write(tmp_path, ".npz", _damaged(_npz_bytes(item), how))
    out = _read_or_documented_error(read_pointcloud, path, (DatasetFormatError,))
    if out is not None:
        points, normals = out
        assert points.shape == normals.shape and points.shape[1] == 3


# ---------------------------------------------------------------------------- meshes
def _mesh_bytes(fmt: str) -> bytes:
    import io

    mesh = trimesh.creation.icosphere(subdivisions=1, radius=0.05)
    buf = io.BytesIO()
    mesh.export(buf, file_type=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["ply", "obj", "off"])
@FUZZ
@given(how=damage)
def test_meshes_survive_damage(fmt, how, tmp_path):
    path = _write(tmp_path, f".{fmt}", _damaged(_mesh_bytes(fmt), how))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mesh = _read_or_documented_error(load_mesh_m, path, (MeshFileError,))
    if mesh is not None:
        assert len(mesh.faces) > 0 and np.isfinite(mesh.vertices).all()
        assert mesh.faces.min() >= 0 and mesh.faces.max() < len(mesh.vertices)


@pytest.mark.parametrize("fmt", ["obj", "off"])
@FUZZ
@given(
    special=st.lists(st.sampled_from(["nan", "inf", "-inf", "1e400"]), min_size=1, max_size=3),
    seed=st.integers(0, 99),
)
def test_meshes_with_non_finite_vertices_are_refused(fmt, special, seed, tmp_path):
    mesh = trimesh.creation.icosphere(subdivisions=1, radius=0.05)
    rng = np.random.default_rng(seed)
    vertices = [[f"{c:.6f}" for c in v] for v in mesh.vertices]
    for value in special:
        vertices[rng.integers(len(vertices))][rng.integers(3)] = value
    if fmt == "obj":
        text = "".join(f"v {' '.join(v)}\n" for v in vertices) + "".join(
            f"f {a + 1} {b + 1} {c + 1}\n" for a, b, c in mesh.faces
        )
    else:
        text = f"OFF\n{len(vertices)} {len(mesh.faces)} 0\n" + "".join(f"{' '.join(v)}\n" for v in vertices)
        text += "".join(f"3 {a} {b} {c}\n" for a, b, c in mesh.faces)
    path = _write(tmp_path, f".{fmt}", text.encode())
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = _read_or_documented_error(load_mesh_m, path, (MeshFileError,))
    assert loaded is None, "a mesh with NaN/inf vertices was accepted"


# ---------------------------------------------------------------------------- GRAB, MANO, YouTube3D
@pytest.fixture(scope="module")
def grab_sequence_bytes(tmp_path_factory) -> bytes:
    from halo.hands.synthetic_hand import get_synthetic_hand_model
    from tests.grab_fixture import write_grab_fixture

    root = tmp_path_factory.mktemp("grab")
    write_grab_fixture(root, get_synthetic_hand_model())
    return next((root / "grab").rglob("*.npz")).read_bytes()


@FUZZ
@given(how=damage)
def test_grab_sequences_survive_damage(grab_sequence_bytes, how, tmp_path):
    folder = tmp_path / "s1"
    folder.mkdir(exist_ok=True)
    path = _write(folder, ".npz", _damaged(grab_sequence_bytes, how))
    renamed = path.with_name(f"apple_lift_{path.stem[4:]}.npz")
    path.rename(renamed)
    _read_or_documented_error(load_grab_sequence, renamed, (GrabFileError,))


@pytest.fixture(scope="module")
def mano_bytes(tmp_path_factory) -> dict[str, bytes]:
    from halo.hands.synthetic_hand import get_synthetic_hand_model

    folder = tmp_path_factory.mktemp("mano")
    model = get_synthetic_hand_model()
    return {
        "pkl": save_mano_model_pkl(model, folder / "MANO_RIGHT.pkl").read_bytes(),
        "npz": save_mano_model_npz(model, folder / "MANO_RIGHT.npz").read_bytes(),
    }


@pytest.mark.parametrize("fmt", ["pkl", "npz"])
@FUZZ
@given(how=damage)
def test_mano_files_survive_damage(mano_bytes, fmt, how, tmp_path):
    path = _write(tmp_path, f".{fmt}", _damaged(mano_bytes[fmt], how))
    model = _read_or_documented_error(load_mano_model, path, (ManoModelError,))
    if model is not None:
        assert np.isfinite(model.v_template).all() and model.v_template.shape[1] == 3
        assert np.isfinite(model.weights).all() and model.weights.shape[0] == len(model.v_template)


def _youtube3d_bytes(gz: bool) -> bytes:
    rng = np.random.default_rng(0)
    data = {
        "images": [{"name": "youtube/vid-00_x/video/frames/100.png", "width": 640, "height": 480, "id": 0}],
        "annotations": [
            {"vertices": (rng.random((20, 3)) * 100).tolist(), "is_left": 0, "image_id": 0, "id": i}
            for i in range(2)
        ],
    }
    raw = json.dumps(data).encode()
    return gzip.compress(raw, mtime=0) if gz else raw


@pytest.mark.parametrize("suffix", [".json", ".json.gz"])
@FUZZ
@given(how=damage)
def test_youtube3d_annotations_survive_damage(suffix, how, tmp_path):
    path = _write(tmp_path, suffix, _damaged(_youtube3d_bytes(suffix.endswith("gz")), how))
    out = _read_or_documented_error(load_youtube3d, path, (YouTube3DError,))
    if out is not None:
        for ann in out.annotations:
            assert np.isfinite(np.asarray(ann.vertices)).all()


@FUZZ
@given(value=st.sampled_from(["NaN", "Infinity", "-Infinity", '"x"', "null", "[]", "[1,2]", "{}", "1e999"]))
def test_youtube3d_annotations_with_bad_vertex_values(value, tmp_path):
    text = _youtube3d_bytes(False).decode()
    first = text.index('"vertices": [[') + len('"vertices": [[')
    end = text.index(",", first)
    path = _write(tmp_path, ".json", (text[:first] + value + text[end:]).encode())
    out = _read_or_documented_error(load_youtube3d, path, (YouTube3DError,))
    if out is not None:
        for ann in out.annotations:
            v = np.asarray(ann.vertices)
            assert v.ndim == 2 and v.shape[1] == 3 and np.isfinite(v).all() and v.dtype.kind == "f"


# ---------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("ckpt")
    model = HaloModel(NetworkConfig.from_dict({"hidden_dims": [8, 8, 8, 8]}))
    lightning = {
        "epoch": 0,
        "global_step": 1,
        "pytorch-lightning_version": "2.6.0",
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "hyper_parameters": {"net": model.config.to_dict()},
    }
    torch.save(lightning, folder / "m.ckpt")
    return {
        "pt": save_checkpoint(model, folder / "m.pt").read_bytes(),
        "ckpt": (folder / "m.ckpt").read_bytes(),
    }


@pytest.mark.parametrize("fmt", ["pt", "ckpt"])
@FUZZ
@given(how=damage)
def test_checkpoints_survive_damage(checkpoint_bytes, fmt, how, tmp_path):
    path = _write(tmp_path, f".{fmt}", _damaged(checkpoint_bytes[fmt], how))
    out = _read_or_documented_error(load_model, path, (CheckpointError,))
    if out is not None:
        model, _ = out
        # a flipped byte inside a weight is a different valid number (no checksum to tell), but
        # never NaN/inf weights: those would only show up as NaN occupancy much later
        assert all(torch.isfinite(p).all() for p in model.parameters())
    _read_or_documented_error(load_grasp_vae, path, (GraspVaeError,))


def test_damage_helpers_really_damage():
    """Guards the fuzzers: the damaged copies differ from the original."""
    data = bytes(range(256))
    assert _damaged(data, ("truncate", 0.5)) == data[:128]
    flipped = _damaged(data, ("flip", [(0.0, 1)]))
    assert flipped[0] == 1 and flipped[1:] == data[1:]
    with zipfile.ZipFile(__import__("io").BytesIO(_npz_bytes(_points_item()))) as z:
        assert "points.npy" in z.namelist()
