"""halo.utils.cache: one key per configuration, one builder per entry across processes."""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from pathlib import Path

from halo.utils.cache import KEY_LENGTH, build_once, cache_key, cache_lock, keyed_dir


def test_cache_key_is_stable_and_order_free():
    a = cache_key({"num": {"train": 2, "val": 1}, "seed": 0})
    assert a == cache_key({"seed": 0, "num": {"val": 1, "train": 2}})
    assert a != cache_key({"num": {"train": 2, "val": 1}, "seed": 1})
    assert len(a) == KEY_LENGTH and int(a, 16) >= 0
    # The documented recipe, checked against coreutils: printf '{"a": [1, 2], "b": 1}' | sha256sum
    assert cache_key({"b": 1, "a": [1, 2]}) == "3813f9409eb0"
    assert cache_key({"p": Path("/x")}) == cache_key({"p": "/x"})


def test_entry_and_lock_names(tmp_path):
    entry = keyed_dir(tmp_path, "synthetic_hands", "abc123")
    assert entry == tmp_path / "synthetic_hands-abc123"
    assert Path(cache_lock(entry).lock_file) == tmp_path / "synthetic_hands-abc123.lock"


def _builder(entry: str, log: str) -> None:
    entry_p = Path(entry)
    marker = entry_p / "done"

    def build() -> None:
        with open(log, "a") as f:
            f.write(f"start {time.monotonic()}\n")
        time.sleep(0.5)  # long enough for the other process to reach the lock
        entry_p.mkdir(parents=True, exist_ok=True)
        marker.write_text("ok")
        with open(log, "a") as f:
            f.write(f"end {time.monotonic()}\n")

    built = build_once(entry_p, marker.is_file, build)
    with open(log, "a") as f:
        f.write(json.dumps({"built": built}) + "\n")


def test_lock_serialises_two_processes_building_the_same_key(tmp_path):
    entry, log = tmp_path / "thing-0123456789ab", tmp_path / "log.txt"
    ctx = mp.get_context("spawn")  # a separate interpreter: a real second process, no shared state
    procs = [ctx.Process(target=_builder, args=(str(entry), str(log))) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    lines = log.read_text().splitlines()
    starts = [line for line in lines if line.startswith("start")]
    results = sorted(json.loads(line)["built"] for line in lines if line.startswith("{"))
    assert len(starts) == 1 and results == [False, True]  # one built it, the other waited and reused it
    assert (entry / "done").read_text() == "ok"


def test_build_once_skips_a_built_entry_without_locking(tmp_path):
    calls = []
    assert build_once(tmp_path / "e", lambda: True, lambda: calls.append(1)) is False
    assert calls == [] and not (tmp_path / "e.lock").exists()


def test_default_dataset_keys_did_not_change():
    """The keys of the default synthetic datasets, as computed before halo.utils.cache existed.

    A change here silently rebuilds every user's cache: change the pinned value only on purpose.
    """
    from halo.data.build import BuildConfig, synthetic_dataset_key
    from halo.grasp.synthetic_grab import SyntheticGrabConfig, synthetic_grab_key

    assert synthetic_dataset_key({"train": 2000, "val": 200, "test": 200}, 0, BuildConfig()) == "bac75c6ff973"
    assert synthetic_grab_key(SyntheticGrabConfig()) == "77d96527bb3f"
