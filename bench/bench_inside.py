"""Inside/outside test: 100k points against the synthetic hand mesh, every available backend.

Prints min/median milliseconds over repeats and the number of points that
disagree with exact winding numbers (libigl).  Target: < 50 ms per 100k points.

    python bench/bench_inside.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import trimesh


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--points", type=int, default=100_000)
    args = parser.parse_args()

    from halo.hands.mano import ManoLayer
    from halo.hands.synthetic_hand import get_synthetic_hand_model, sample_hand_poses

    model = get_synthetic_hand_model()
    with torch.no_grad():
        out = ManoLayer(model, dtype=torch.float64)(
            pose=torch.tensor(sample_hand_poses(1, seed=3, kind="grasp"))
        )
    verts, faces = out.vertices[0].numpy(), np.asarray(model.f, dtype=np.int64)
    mesh = trimesh.Trimesh(verts, faces, process=False)
    rng = np.random.default_rng(0)
    half = args.points // 2
    pts = np.concatenate([rng.uniform(-0.22, 0.22, (half, 3)),
                          mesh.sample(args.points - half) + rng.normal(0, 0.004, (args.points - half, 3))])  # fmt: skip
    import igl

    exact = igl.winding_number(verts, faces, pts) > 0.5
    print(
        f"mesh: {len(faces)} faces, watertight={mesh.is_watertight}; {len(pts)} points (half near the surface)"
    )

    def o3d():
        import open3d as o3d

        scene = o3d.t.geometry.RaycastingScene()
        scene.add_triangles(
            o3d.core.Tensor(verts.astype(np.float32)), o3d.core.Tensor(faces.astype(np.uint32))
        )
        return scene.compute_occupancy(o3d.core.Tensor(pts.astype(np.float32))).numpy() > 0.5

    candidates = {
        "halo.geometry.inside.points_inside_mesh (default)": lambda: __import__("halo.geometry.inside").inside.points_inside_mesh(
            verts, faces, pts, check_watertight=False),
        "open3d RaycastingScene.compute_occupancy": o3d,
        "trimesh contains (embreex)": lambda: trimesh.Trimesh(verts, faces, process=False).contains(pts),
        "igl fast_winding_number > 0.5": lambda: igl.fast_winding_number(verts, faces, pts) > 0.5,
    }  # fmt: skip
    for name, fn in candidates.items():
        try:
            fn()
        except Exception as exc:  # an optional backend missing
            print(f"{name:45s} unavailable: {exc}")
            continue
        times, result = [], None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - t0)
        print(f"{name:45s} min {1e3 * min(times):7.1f} ms  median {1e3 * np.median(times):7.1f} ms  "
              f"mismatches {(result != exact).sum()}")  # fmt: skip


if __name__ == "__main__":
    main()
