"""Synthetic dataset build throughput (hands/s) and where the time goes.

Builds N synthetic hands with the default sampling (100k points, 100k IoU
points, 100k point cloud per hand) into a temporary folder, first profiling a
single process, then timing the parallel build.

    python bench/bench_build.py [--hands 60] [--workers 2]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hands", type=int, default=60)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--points", type=int, default=100_000)
    args = parser.parse_args()

    from halo.data.build import BuildConfig, SyntheticHandSource, build_split

    config = BuildConfig(n_points=args.points, n_iou_points=args.points, n_pointcloud=args.points)
    warm = SyntheticHandSource(1)
    warm.prepare(warm.names()[0])  # build the synthetic model and import open3d outside the timings
    import halo.geometry.inside

    halo.geometry.inside.inside_backend()
    with tempfile.TemporaryDirectory() as tmp:
        n_prof = max(5, args.hands // 4)
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        build_split(SyntheticHandSource(n_prof, split="prof"), Path(tmp) / "prof", config, progress=False)
        prof.disable()
        dt = time.perf_counter() - t0
        print(f"1 process: {n_prof / dt:.1f} hands/s ({1e3 * dt / n_prof:.0f} ms/hand); top functions:")
        stats = pstats.Stats(prof).sort_stats("tottime")
        rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:8]
        for (file, line, func), (_, _, tottime, _, _) in rows:
            print(f"  {1e3 * tottime / n_prof:7.1f} ms/hand  {func} ({Path(file).name}:{line})")
        t0 = time.perf_counter()
        report = build_split(
            SyntheticHandSource(args.hands), Path(tmp) / "train", config, workers=args.workers
        )
        dt = time.perf_counter() - t0
        print(f"{args.workers} workers: {args.hands / dt:.1f} hands/s; {report.summary()}")


if __name__ == "__main__":
    main()
