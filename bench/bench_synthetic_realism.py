"""How realistic is the synthetic MANO-format hand?  IoU against the original HALO model.

The released HALO checkpoint turns any 21 keypoints into a realistic hand
surface (it was trained on real YouTube3D hands).  For sampled poses of the
synthetic hand, this script meshes the synthetic hand's own keypoints with the
original checkpoint and reports the volumetric IoU between the two surfaces
(uniform points in the joint bounding box, inside tests by libigl's fast
winding number), per pose kind and overall, and writes a render grid
[synthetic | HALO] for a visual check.

Usage: python bench/bench_synthetic_realism.py [--checkpoint PATH] [--per-kind 4] [--out outputs/realism.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import trimesh

from halo.cli.common import default_checkpoint
from halo.core.checkpoint import load_model
from halo.hands.mano import ManoLayer
from halo.hands.synthetic_hand import get_synthetic_hand_model, sample_hand_poses
from halo.meshing.hand_mesh import extract_hand_mesh
from halo.viz import render


def volumetric_iou(a: trimesh.Trimesh, b: trimesh.Trimesh, n: int = 200_000, seed: int = 0) -> float:
    import igl

    lo = np.minimum(a.bounds[0], b.bounds[0])
    hi = np.maximum(a.bounds[1], b.bounds[1])
    pts = np.random.default_rng(seed).uniform(lo, hi, size=(n, 3))

    def inside(m: trimesh.Trimesh) -> np.ndarray:
        v = np.asarray(m.vertices, dtype=np.float64)
        f = np.asarray(m.faces, dtype=np.int64)
        return igl.fast_winding_number(v, f, pts) > 0.5

    ia, ib = inside(a), inside(b)
    return float((ia & ib).sum() / max((ia | ib).sum(), 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=default_checkpoint())
    ap.add_argument("--per-kind", type=int, default=4)
    ap.add_argument("--out", default="outputs/realism.png")
    args = ap.parse_args()
    if args.checkpoint is None:
        raise SystemExit("no checkpoint: pass --checkpoint or set HALO_CHECKPOINT")
    halo_model, _ = load_model(args.checkpoint)
    model = get_synthetic_hand_model()
    layer = ManoLayer(model)
    faces = np.asarray(model.f, dtype=np.int64)
    ious: dict[str, list[float]] = {}
    tiles, labels = [], []
    for kind in ("open", "fist", "pinch", "point", "grasp"):
        poses = sample_hand_poses(args.per_kind, seed=7, kind=kind)
        with torch.no_grad():
            out = layer(torch.tensor(poses, dtype=torch.float32))
        for i in range(args.per_kind):
            synth = trimesh.Trimesh(out.vertices[i].numpy(), faces, process=False)
            kp = out.keypoints[i].numpy()
            halo_mesh = extract_hand_mesh(halo_model, kp, resolution_0=32, upsampling_steps=2).mesh
            iou = volumetric_iou(synth, halo_mesh)
            ious.setdefault(kind, []).append(iou)
            if i == 0:
                cam = render.Camera.framing(
                    np.concatenate([synth.vertices, halo_mesh.vertices]), width=300, height=300
                )
                tiles += [render.render_mesh(synth, camera=cam), render.render_mesh(halo_mesh, camera=cam)]
                labels += [f"synthetic {kind}", f"HALO, IoU {iou:.2f}"]
    print("| pose kind | mean IoU | min | max |")
    print("|---|---|---|---|")
    for kind, vals in ious.items():
        print(f"| {kind} | {np.mean(vals):.3f} | {np.min(vals):.3f} | {np.max(vals):.3f} |")
    allv = [v for vals in ious.values() for v in vals]
    print(f"| all ({len(allv)} poses) | {np.mean(allv):.3f} | {np.min(allv):.3f} | {np.max(allv):.3f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    render.save_png(render.render_grid(tiles, 4, labels), args.out)
    print(f"render grid: {args.out}")


if __name__ == "__main__":
    main()
