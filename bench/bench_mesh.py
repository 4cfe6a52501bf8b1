"""Benchmark: HALO hand-mesh extraction speed and fidelity on this machine.

Prints, for the original checkpoint (or --checkpoint) and a few hands:
  * dense 16-part occupancy throughput: batched over parts, and the per-part loop;
  * field throughput with part culling on 1M near-surface points, and its label
    agreement with the full 16-part evaluation;
  * MISE mesh time at effective 128 / 256 / 512, evaluated points, parts per point
    (calibration grid included), and against the dense-grid mesh at the same
    resolution: symmetric Chamfer-L1 and the largest vertex offset (0 = identical)
    (the 512 dense reference is slow: enable with --dense-512).

Usage:  python bench/bench_mesh.py [--checkpoint PATH] [--hands 3] [--repeats 3] [--dense-512]
The original code's timings on this CPU class (19-27 s at 64/3, 1.4-1.5 s at 32/3,
0.4 s at 32/2 per hand) are the baseline.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from pykdtree.kdtree import KDTree

from halo.cli.common import default_checkpoint
from halo.core.checkpoint import load_model
from halo.core.model import HaloModel
from halo.eval.surface_metrics import chamfer_l1_mm
from halo.hands.sequences import random_skeletons
from halo.meshing.hand_field import HandOccupancyField
from halo.meshing.hand_mesh import extract_hand_mesh


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=default_checkpoint())
    ap.add_argument("--hands", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dense-512", action="store_true", help="also build the (slow) dense 512 reference")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from halo.utils.allocator import tune_allocator

    print(f"allocator tuning applied: {tune_allocator()}")
    if args.checkpoint is None:
        raise SystemExit("no checkpoint: pass --checkpoint or set HALO_CHECKPOINT")
    model, _ = load_model(args.checkpoint)
    hands = random_skeletons(args.hands, seed=0, max_flexion=0.8)
    print(f"checkpoint {args.checkpoint}; {args.hands} hands; torch threads {args.threads}")

    # ---------------------------------------------------------------- raw network throughput
    kp = torch.tensor(hands[:1], dtype=torch.float32)
    pose = model.canonicalize(kp)
    mats, lengths = model.model_inputs(pose)
    pts = (torch.rand(1, 200_000, 3) - 0.5) * 1.1
    with torch.inference_mode():
        tb, _, _ = timed(lambda: model.network(pts, mats, lengths, chunk_size=4096), args.repeats)
        tl, _, _ = timed(lambda: model.network.per_part_logits(pts, mats, lengths), args.repeats)
    print("\n## dense 16-part evaluation (200k points, 1 hand)")
    print(f"batched over parts : {200_000 / tb / 1e6:6.3f} M points/s")
    print(f"per-part loop      : {200_000 / tl / 1e6:6.3f} M points/s")

    # ---------------------------------------------------------------- field throughput near the surface
    print("\n## field throughput on 1M near-surface points (culled vs full 16-part)")
    for i, hk in enumerate(hands):
        ref = extract_hand_mesh(model, hk, resolution_0=32, upsampling_steps=2)
        field0 = HandOccupancyField(model, hk, cull=False)
        verts = torch.tensor(ref.mesh.vertices, dtype=torch.float32)[None]
        v = HaloModel.points_to_model(field0.pose, verts)[0].numpy()  # model units, normalized frame
        rng = np.random.default_rng(i)
        near = v[rng.integers(0, len(v), 1_000_000)] + rng.normal(scale=0.01, size=(1_000_000, 3))
        near = torch.tensor(near, dtype=torch.float32)
        culled = HandOccupancyField(model, hk, cull="radius")  # includes the 33^3 calibration pass
        culled.stats.points = culled.stats.part_evaluations = 0
        t_full, _, full = timed(lambda f=field0, p=near: f(p), 1)
        t_cull, _, fast = timed(lambda f=culled, p=near: f(p), 1)
        agree = float(((full > 0.5) == (fast > 0.5)).mean())
        print(
            f"hand {i}: full {1e6 / t_full / 1e6:5.2f} M pts/s | culled {1e6 / t_cull / 1e6:5.2f} M pts/s "
            f"({culled.stats.parts_per_point:.2f} parts/pt) | label agreement {agree:.6f} "
            f"| max |occ diff| where occ>1e-4: {np.abs(full - fast)[full > 1e-4].max():.1e}"
        )

    # ---------------------------------------------------------------- meshes
    print("\n## mesh extraction per hand (min / median of repeats)")
    print(
        "| config | eff. res | cull | seconds | evaluated pts | parts/pt "
        "| Chamfer-L1 to dense (mm) | max vertex offset to dense (mm) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r0, steps in [(32, 2), (32, 3), (64, 3)]:
        res = r0 * 2**steps
        for i, hk in enumerate(hands):
            dense = None
            if res <= 256 or args.dense_512:
                dense = extract_hand_mesh(model, hk, resolution_0=res, upsampling_steps=0, cull=False).mesh
            for cull in (False, "radius"):
                tmin, tmed, hm = timed(
                    lambda c=cull, k=hk, r0=r0, steps=steps: extract_hand_mesh(
                        model, k, resolution_0=r0, upsampling_steps=steps, cull=c
                    ),
                    args.repeats,
                )
                cd = offset = "n/a"
                if dense is not None:
                    cd = f"{chamfer_l1_mm(hm.mesh, dense):.3f}"
                    # Same grid: identical meshes share every vertex, so this is exactly 0 for them
                    # (the sampled Chamfer bottoms out at its ~0.16 mm sampling floor).
                    offset = f"{KDTree(dense.vertices).query(hm.mesh.vertices)[0].max() * 1000:.3f}"
                print(
                    f"| {r0}/{steps} hand {i} | {res} | {cull or 'off'} | {tmin:.3f} / {tmed:.3f} | "
                    f"{hm.stats.n_evaluated:,} | {hm.field_stats.parts_per_point:.2f} | {cd} | {offset} |"
                )


if __name__ == "__main__":
    main()
