"""How fast a finished synthetic-grasp cache entry is reused (the keyed cache + lock, halo.utils.cache).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_grab_cache.py [--repeats 20]

Generates a tiny synthetic GRAB root once (1 object, 2 grasps; a few seconds), then
prints the median and maximum wall time of ``synthetic_grab_root`` returning the
finished entry (marker check + lock; nothing is generated again).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed cache hits (default 20)")
    args = parser.parse_args()

    from halo.grasp.synthetic_grab import SyntheticGrabConfig, synthetic_grab_root

    cfg = SyntheticGrabConfig(objects=1, grasps_per_object=2, subjects=1, grasp_frames=2, away_frames=0)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        root = synthetic_grab_root(Path(tmp), cfg, progress=False)
        build_s = time.perf_counter() - t0
        hits = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            assert synthetic_grab_root(Path(tmp), cfg, progress=False) == root
            hits.append(time.perf_counter() - t0)
    print(f"first call (generates): {build_s:.2f} s")
    print(
        f"cache hit over {args.repeats} calls: median {1e3 * statistics.median(hits):.2f} ms, "
        f"max {1e3 * max(hits):.2f} ms"
    )


if __name__ == "__main__":
    main()
