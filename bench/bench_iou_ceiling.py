"""How high can val/iou go on the built-in synthetic hands for a model that sees only keypoints?

The synthetic hand's shape space has coefficients that change the surface but (almost) not the
joints: finger thickness (3), palm thickness (5) and fleshiness (9).  HALO sees only the 21
keypoints, so it cannot know them; the best it can do is a typical thickness.  This script draws
hands the way the dataset does (a sampled pose, shape coefficients from N(0, 1) clipped to ±2.5),
meshes each twice, with its coefficients and with those three set to 0 (the same pose), and
prints the volumetric IoU of the two (uniform points in their joint bounding box) and how far the
keypoints moved: a rough ceiling for val/iou, computed by the same function.

    python bench/bench_iou_ceiling.py              # 32 hands, ~10 s
    python bench/bench_iou_ceiling.py --zero 3     # finger thickness only
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from halo.data.prepare import prepare_from_mano
from halo.eval.mesh_evaluation import occupancy_iou
from halo.geometry.inside import points_inside_mesh
from halo.hands.mano import ManoLayer
from halo.hands.synthetic_hand import get_synthetic_hand_model, sample_hand_poses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hands", type=int, default=32)
    ap.add_argument("--points", type=int, default=200_000, help="uniform points per hand")
    ap.add_argument("--zero", type=int, nargs="+", default=[3, 5, 9], help="shape coefficients set to 0")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    layer = ManoLayer(get_synthetic_hand_model(), dtype=torch.float64)
    rng = np.random.default_rng(args.seed)
    ious, shifts = [], []
    for i in range(args.hands):
        pose = sample_hand_poses(1, rng)
        betas = np.clip(rng.normal(0.0, 1.0, (1, layer.num_betas)), -2.5, 2.5)
        typical = betas.copy()
        typical[0, args.zero] = 0.0
        orient = Rotation.random(random_state=rng).as_rotvec()[None]
        true, mean = (
            prepare_from_mano(layer, [f"hand{i}"], pose, b, orient, seed=i)[0] for b in (betas, typical)
        )
        lo = np.minimum(true.vertices.min(0), mean.vertices.min(0)) - 0.005
        hi = np.maximum(true.vertices.max(0), mean.vertices.max(0)) + 0.005
        pts = rng.uniform(lo, hi, (args.points, 3))
        a, b = (points_inside_mesh(h.vertices, h.faces, pts, check_watertight=False) for h in (true, mean))
        ious.append(
            float(occupancy_iou(torch.tensor(b[None]), torch.tensor(a[None], dtype=torch.float32))[0])
        )
        shifts.append(1000.0 * np.linalg.norm(true.keypoints - mean.keypoints, axis=1).mean())
    ious = np.array(ious)
    print(
        f"{args.hands} hands, coefficients {args.zero} set to 0: IoU with the true mesh mean {ious.mean():.4f} "
        f"(median {np.median(ious):.4f}, min {ious.min():.4f}); keypoints moved {np.mean(shifts):.2f} mm on average"
    )


if __name__ == "__main__":
    main()
