"""The grasp records build is atomic and resumable: kill -9 mid-build and a full disk leave no
partial file, and a rerun completes with what the interrupted build had finished."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from halo.grasp.records import PARTS, SPLITS, RecordsConfig, build_grasp_records
from halo.hands.mano import save_mano_model_npz
from halo.hands.synthetic_hand import get_synthetic_hand_model
from tests.conftest import REPO_ROOT
from tests.grab_fixture import write_grab_fixture

CONFIG = {"frame_stride": 1, "n_surface_points": 256, "n_inside_points": 256}

#: The build in a child process; each sequence read is slowed down (test-side wrapper) so the
#: test can kill it between sequences.
CHILD = textwrap.dedent(
    """
    import sys, time
    import halo.grasp.records as records
    from halo.grasp.records import RecordsConfig, RecordsWriteError, build_grasp_records

    root, out, mano, delay = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    read = records.load_grab_sequence
    def slow_read(path):
        time.sleep(delay)
        return read(path)
    records.load_grab_sequence = slow_read
    try:
        build_grasp_records(root, out, RecordsConfig(**CONFIG), mano_model=mano, progress=False)
    except RecordsWriteError as exc:
        print(exc, file=sys.stderr)
        sys.exit(3)
    """
).replace("**CONFIG", f"**{CONFIG!r}")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> tuple[Path, Path]:
    """A GRAB-layout root and the synthetic MANO model as a file (child processes read it)."""
    folder = tmp_path_factory.mktemp("records_src")
    model = get_synthetic_hand_model()
    write_grab_fixture(folder / "GRAB", model)
    return folder / "GRAB", save_mano_model_npz(model, folder / "MANO_RIGHT.npz")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, source) -> Path:
    """An uninterrupted build to compare against."""
    root, mano = source
    out = tmp_path_factory.mktemp("records_ref") / "rec"
    build_grasp_records(root, out, RecordsConfig(**CONFIG), mano_model=mano, progress=False)
    return out


def _child(root: Path, out: Path, mano: Path, delay: float, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(root), str(out), str(mano), str(delay)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def _assert_nothing_partial(out: Path) -> None:
    """No temporary leftovers, and every data file there reads completely."""
    assert not [p for p in out.rglob("*") if ".tmp" in p.name], sorted(out.rglob("*"))
    for path in out.rglob("*.npz"):
        with np.load(path, allow_pickle=False) as data:
            for key in data.files:
                data[key]  # noqa: B018 - reads (and CRC-checks) every member
    for path in out.rglob("*.npy"):
        np.load(path, allow_pickle=False)


def _assert_same_records(out: Path, reference: Path) -> None:
    for split in SPLITS:
        for path in sorted((reference / split).glob("*.npy")):
            np.testing.assert_array_equal(np.load(out / split / path.name), np.load(path), err_msg=str(path))
    with np.load(out / "objects.npz") as a, np.load(reference / "objects.npz") as b:
        assert a.files == b.files
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])


def test_kill_9_mid_build_loses_only_unfinished_sequences(source, reference, tmp_path):
    root, mano = source
    out = tmp_path / "rec"
    child = _child(root, out, mano, delay=0.4)
    deadline = time.monotonic() + 240
    while len(list((out / PARTS).glob("*.npz"))) < 2:
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline, "the build never got going"
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.communicate()
    assert child.returncode == -signal.SIGKILL
    assert not (out / "meta.json").exists()
    finished = len(list((out / PARTS).glob("*.npz")))
    total = len(list((root / "grab").rglob("*.npz")))
    assert 2 <= finished < total  # killed in the middle
    _assert_nothing_partial(out)

    report = build_grasp_records(root, out, RecordsConfig(**CONFIG), mano_model=mano, progress=False)
    assert report.resumed >= finished and not report.reused
    assert (out / "meta.json").is_file() and not (out / PARTS).exists()
    _assert_nothing_partial(out)
    _assert_same_records(out, reference)


def test_full_disk_leaves_no_partial_item_and_says_what_happened(source, reference, tmp_path):
    import resource

    root, mano = source
    out = tmp_path / "rec"
    limit = 200_000  # bytes per file: the sequences' parts fit, objects.npz (all object samples) does not

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    child = _child(root, out, mano, delay=0.0, preexec_fn=small_files)
    _, err = child.communicate(timeout=300)
    assert child.returncode == 3, err[-2000:]
    message = err.strip().splitlines()[-1]
    assert str(out) in message and "writing the grasp records failed" in message
    assert ("File too large" in message or "disk full or file size limit" in message) and "rerun" in message
    assert not (out / "meta.json").exists()
    _assert_nothing_partial(out)

    report = build_grasp_records(root, out, RecordsConfig(**CONFIG), mano_model=mano, progress=False)
    assert report.resumed == report.sequences > 0  # every sequence came from the parts
    _assert_same_records(out, reference)
