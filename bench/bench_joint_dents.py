"""How deep are the notches where a predicted hand's phalanges meet?

For the first ``--hands`` hands of a dataset split, mesh each with one or more HALO checkpoints
(MISE ``--resolution-0`` x 2^``--upsampling-steps``, default 256) and take the ground-truth surface
samples within 12 mm of a finger joint (MCP, PIP, DIP).  Their signed distance to the predicted mesh
says how far the prediction is dented there (positive: the true surface lies outside the predicted
one).  Prints, per checkpoint, the mean dent, its 95th / 99th percentiles and the mean |distance|,
so two recipes (e.g. ``model.net.union_temperature`` 0 against 1) compare on the same hands.

    python bench/bench_joint_dents.py --split data/synthetic_hands/<id>/val \
        --checkpoint runA/checkpoints/halo_base_best.pt runB/checkpoints/halo_base_best.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import trimesh

from halo.core.checkpoint import load_model
from halo.data.layout import read_datalist, read_mesh, read_points, sample_paths
from halo.meshing.hand_mesh import extract_hand_mesh

#: MCP, PIP and DIP joints of the four fingers and the thumb's two distal joints (MANO order).
FINGER_JOINTS = (2, 3, 5, 6, 7, 9, 10, 11, 13, 14, 15, 17, 18, 19)
NEAR_JOINT_M = 0.012


def joint_region_dents_mm(model, split: Path, hands: int, resolution_0: int, steps: int) -> np.ndarray:
    """Signed dent depth (mm, > 0: the prediction lies inside the truth) at the joint-region samples."""
    dents = []
    for name in read_datalist(split)[:hands]:
        paths = sample_paths(split, name)
        keypoints = read_points(paths["points"], with_surface=False).keypoints
        pred = extract_hand_mesh(model, keypoints, resolution_0=resolution_0, upsampling_steps=steps).mesh
        truth, _ = trimesh.sample.sample_surface(read_mesh(paths["mesh"]), 20000, seed=0)
        gap = np.linalg.norm(truth[:, None] - keypoints[None, list(FINGER_JOINTS)], axis=2).min(axis=1)
        near = truth[gap < NEAR_JOINT_M]
        dents.append(-1000.0 * trimesh.proximity.signed_distance(pred, near))  # > 0 inside pred
    return np.concatenate(dents)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--split", required=True, help="a dataset split folder (datalist.txt, mesh_scaled/, points/)"
    )
    ap.add_argument("--checkpoint", nargs="+", required=True)
    ap.add_argument("--hands", type=int, default=16)
    ap.add_argument("--resolution-0", type=int, default=32)
    ap.add_argument("--upsampling-steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.hands} hands of {args.split}, {args.resolution_0 * 2**args.upsampling_steps} grid")
    print(" dent mean / p95 / p99 (mm) | mean |d| (mm) | samples | checkpoint (union_temperature)")
    for path in args.checkpoint:
        model, _ = load_model(path)
        d = joint_region_dents_mm(
            model, Path(args.split), args.hands, args.resolution_0, args.upsampling_steps
        )
        print(
            f" {np.clip(d, 0, None).mean():.3f} / {np.percentile(d, 95):.2f} / {np.percentile(d, 99):.2f}"
            f" | {np.abs(d).mean():.3f} | {len(d)} | {path} ({model.config.union_temperature:g})"
        )


if __name__ == "__main__":
    main()
