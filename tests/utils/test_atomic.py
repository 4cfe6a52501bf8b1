"""halo.utils.atomic: files appear whole or not at all."""

from __future__ import annotations

import json

import numpy as np
import pytest

from halo.utils.atomic import (
    atomic_path,
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_npy,
    atomic_write_npz,
    atomic_write_text,
    temporary_path,
)


def test_writers_round_trip_and_leave_only_the_target(tmp_path):
    atomic_write_text(tmp_path / "a" / "t.txt", "héllo\n")  # parent folders are created
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    atomic_write_json(tmp_path / "c.json", {"k": [1, 2]})
    atomic_write_npz(tmp_path / "d.npz", {"x": np.arange(3)})
    atomic_write_npz(tmp_path / "e.npz", {"y": np.ones(2)}, compressed=True)
    atomic_write_npy(tmp_path / "f.npy", np.eye(2))
    assert (tmp_path / "a" / "t.txt").read_text(encoding="utf-8") == "héllo\n"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "c.json").read_text() == '{\n  "k": [\n    1,\n    2\n  ]\n}\n'
    assert json.loads((tmp_path / "c.json").read_text()) == {"k": [1, 2]}
    np.testing.assert_array_equal(np.load(tmp_path / "d.npz")["x"], [0, 1, 2])
    np.testing.assert_array_equal(np.load(tmp_path / "e.npz")["y"], [1.0, 1.0])
    np.testing.assert_array_equal(np.load(tmp_path / "f.npy"), np.eye(2))
    names = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert names == ["b.bin", "c.json", "d.npz", "e.npz", "f.npy", "t.txt"]


def test_a_failing_writer_leaves_no_partial_file_and_keeps_the_old_content(tmp_path):
    target = tmp_path / "data.bin"
    target.write_bytes(b"old")

    def half_then_fail(handle):
        handle.write(b"new but incomplete")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]  # no temporary left behind

    fresh = tmp_path / "fresh.npz"
    with pytest.raises(ValueError):
        atomic_write_npz(fresh, {"x": np.zeros(2), "bad": _Unsaveable()})
    assert not fresh.exists() and not temporary_path(fresh).exists()


class _Unsaveable:
    def __array__(self, *args, **kwargs):
        raise ValueError("cannot be saved")


def test_atomic_path_renames_only_on_success(tmp_path):
    target = tmp_path / "mesh.off"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".mesh.off.tmp")
        tmp.write_text("OFF\n")
        assert not target.exists()  # readers never see it before the rename
    assert target.read_text() == "OFF\n" and not tmp.exists()
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("garbage")
        raise RuntimeError("writer crashed")
    assert target.read_text() == "OFF\n" and not tmp.exists()
