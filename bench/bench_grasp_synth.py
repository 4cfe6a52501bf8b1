"""Speed and acceptance of the grasp synthesizer and the synthetic GRAB writer.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_grasp_synth.py            # per object, 16 grasps each
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_grasp_synth.py --write    # + the default dataset, timed

Prints, per named object: accepted grasps, candidates, acceptance rate, seconds per
accepted grasp and the main rejection reasons; with ``--write`` also the wall time of
``write_synthetic_grab`` for the default configuration (``data=synthetic_grasps``).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grasps", type=int, default=16, help="grasps per object (default 16)")
    parser.add_argument("--objects", nargs="*", help="object names (default: every named object)")
    parser.add_argument("--write", action="store_true", help="also time the default dataset")
    parser.add_argument("--workers", type=int, default=2, help="workers for --write (default 2)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from halo.grasp.objects import OBJECT_SPECS
    from halo.grasp.synthesis import GraspSynthesizer, SynthStats
    from halo.grasp.synthetic_grab import SyntheticGrabConfig, write_synthetic_grab
    from halo.hands.synthetic_hand import get_synthetic_hand_model

    model = get_synthetic_hand_model()
    names = args.objects or list(OBJECT_SPECS)
    GraspSynthesizer(model, OBJECT_SPECS[names[0]].build()).sample(1, rng=0)  # warm-up (imports, allocator)
    total = SynthStats()
    print(f"{'object':15s} {'grasps':>6s} {'cand':>5s} {'accept':>7s} {'s/grasp':>8s}  top rejections")
    for name in names:
        synth = GraspSynthesizer(model, OBJECT_SPECS[name].build())
        grasps, st = synth.sample(args.grasps, rng=1)
        total.merge(st)
        top = ", ".join(f"{k} {v}" for k, v in sorted(st.rejected.items(), key=lambda kv: -kv[1])[:3])
        per = st.seconds / max(len(grasps), 1)
        print(f"{name:15s} {len(grasps):6d} {st.candidates:5d} {st.acceptance_rate:7.0%} {per:8.3f}  {top}")
    per = total.seconds / max(total.accepted, 1)
    print(
        f"{'all':15s} {total.accepted:6d} {total.candidates:5d} {total.acceptance_rate:7.0%} {per:8.3f}"
        f"  (synthesis only, one process, {total.seconds:.1f} s)"
    )
    if args.write:
        config = SyntheticGrabConfig()
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            report = write_synthetic_grab(tmp, config, workers=args.workers, progress=False)
            wall = time.perf_counter() - t0
        print(
            f"default dataset ({len(report.written)} sequences, {report.grasps} grasps, {report.frames} frames, "
            f"{args.workers} workers): {wall:.1f} s wall, acceptance {report.acceptance_rate:.0%}, "
            f"shortfall {report.shortfall}"
        )


if __name__ == "__main__":
    main()
