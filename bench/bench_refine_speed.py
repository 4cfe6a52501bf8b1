"""Seconds per grasp of test-time refinement through HALO (`halo refine grasps`), batched.

Held-out ground-truth grasps of the synthetic grasp records, shifted 1 cm palm-first into their
object, refined in one batch per object with :func:`halo.grasp.refine.refine_grasps` (its
defaults), the original release as the HALO base by default.  Prints seconds per grasp, the
penetration term before / after and the mean joint displacement per object; ``--profile`` adds
the functions that take the time.

    python bench/bench_refine_speed.py --records data/synthetic_grasps/records-<key>
    python bench/bench_refine_speed.py --records ... --threads 1 --objects 2 --profile
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_grasps import synthetic_objects, training_grasps  # noqa: E402

from halo.grasp.refine import RefineConfig, refine_grasps  # noqa: E402

REF = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "halo_original"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", required=True, help="synthetic grasp records folder (data=synthetic_grasps)")
    ap.add_argument("--halo-checkpoint", default=str(REF / "model_best.pt"))
    ap.add_argument("--grasps", type=int, default=20, help="grasps per object = the batch size")
    ap.add_argument("--objects", type=int, default=2, help="held-out objects to refine on")
    ap.add_argument("--shift-cm", type=float, default=1.0, help="palm-first push into the object")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()

    from lightning_modules.halo_vae import load_frozen_halo

    torch.set_num_threads(args.threads)
    halo, _ = load_frozen_halo(args.halo_checkpoint)
    grasps = training_grasps(args.records, args.grasps, seed=1)
    total, count = 0.0, 0
    for name, mesh, _note in synthetic_objects(args.records)[: args.objects]:
        kp = grasps[name]
        palm = kp[:, [0, 1, 5, 9, 13, 17]].mean(1)
        kp = kp - 0.01 * args.shift_cm * (palm / np.linalg.norm(palm, axis=1, keepdims=True))[:, None]
        profiler = cProfile.Profile() if args.profile else None
        if profiler:
            profiler.enable()
        t0 = time.perf_counter()
        out = refine_grasps(halo, torch.from_numpy(kp), mesh, config=RefineConfig())
        seconds = time.perf_counter() - t0
        if profiler:
            profiler.disable()
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(20)
        total, count = total + seconds, count + len(kp)
        print(
            f"{name}: {len(kp)} grasps, {seconds / len(kp):.3f} s per grasp; penetration term "
            f"{float(out.penetration_before.mean()):.3f} -> {float(out.penetration_after.mean()):.4f}; "
            f"mean joint displacement {100 * float(out.displacement_m.mean()):.2f} cm",
            flush=True,
        )
    print(f"all: {total / max(count, 1):.3f} s per grasp ({args.threads} threads, batches of {args.grasps})")


if __name__ == "__main__":
    main()
