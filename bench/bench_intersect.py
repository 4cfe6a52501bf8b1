"""Grasp metrics for one hand/object pair: time per stage and volume convergence with the grid pitch.

The synthetic hand in a power-grasp pose closes around objects of ~8 cm (a sphere and
a cube centred between the palm and the fingertips, so they interpenetrate the hand)
and a 4 cm sphere.  Prints min/median milliseconds over repeats for the whole
``grasp_metrics`` call and its stages, the number of grid points, and the volume at
1 mm against a 0.25 mm reference.  Target: < 500 ms per pair at 1 mm.

    python bench/bench_intersect.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import trimesh


def _timed(fn, repeats: int) -> tuple[float, float, object]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return min(times), float(np.median(times)), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from halo.geometry.inside import inside_backend
    from halo.grasp.metrics import (
        grasp_metrics,
        intersection_volume_cm3,
        prepare_hand_mesh,
        prepare_object_mesh,
        signed_distance_m,
    )
    from halo.hands.mano import ManoLayer
    from halo.hands.synthetic_hand import get_synthetic_hand_model, sample_hand_poses

    model = get_synthetic_hand_model()
    layer = ManoLayer(model, dtype=torch.float64)
    with torch.no_grad():
        out = layer(pose=torch.from_numpy(sample_hand_poses(1, seed=0, kind="grasp")))
    hand = trimesh.Trimesh(out.vertices[0].numpy(), layer.faces.numpy(), process=False)
    kp = out.keypoints[0].numpy()
    centre = (kp[[0, 5, 9, 13, 17]].mean(0) + kp[[4, 8, 12, 16, 20]].mean(0)) / 2

    def at_centre(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
        return mesh.apply_translation(centre)

    objects = {
        "sphere d=8 cm (1280 faces)": at_centre(trimesh.creation.icosphere(subdivisions=3, radius=0.04)),
        "sphere d=8 cm (20480 faces)": at_centre(trimesh.creation.icosphere(subdivisions=5, radius=0.04)),
        "cube 8 cm (12 faces)": at_centre(trimesh.creation.box((0.08, 0.08, 0.08))),
        "sphere d=4 cm (5120 faces)": at_centre(trimesh.creation.icosphere(subdivisions=4, radius=0.02)),
    }
    grasp_metrics(hand, objects["cube 8 cm (12 faces)"])  # warm-up: open3d import
    print(
        f"hand: {len(hand.faces)} faces, extents {np.round(hand.extents * 100, 1)} cm; "
        f"inside backend: {inside_backend()}; {args.repeats} repeats, times min/median ms"
    )
    for name, obj in objects.items():
        print(f"\n== {name}")
        hand_m = prepare_hand_mesh(hand)
        obj_m = prepare_object_mesh(obj)
        lo = np.maximum(hand_m.bounds[0], obj_m.bounds[0])
        hi = np.minimum(hand_m.bounds[1], obj_m.bounds[1])
        for pitch in (0.001, 0.0005):
            n_grid = int(np.prod(np.maximum(np.ceil((hi - lo) / pitch), 1)))
            t_min, t_med, metrics = _timed(
                lambda p=pitch, o=obj: grasp_metrics(hand, o, pitch_m=p), args.repeats
            )
            print(
                f"  pitch {pitch * 1000:g} mm: grasp_metrics {t_min:7.1f} / {t_med:7.1f} ms "
                f"({n_grid / 1e3:.0f}k grid points)  volume {metrics.volume_cm3:.3f} cm^3, "
                f"depth {metrics.depth_cm:.3f} cm, contact {metrics.contact}"
            )
        stages = {
            "prepare hand (seal check)": lambda: prepare_hand_mesh(hand),
            "prepare object (fix_normals)": lambda o=obj: prepare_object_mesh(o),
            "signed distance of hand vertices": lambda o=obj_m, h=hand_m: signed_distance_m(o, h.vertices),
            "intersection volume @1 mm": lambda o=obj_m, h=hand_m: intersection_volume_cm3(h, o, 0.001),
            "  ... without block culling": lambda o=obj_m, h=hand_m: intersection_volume_cm3(
                h, o, 0.001, block_culling=False
            ),
        }
        for stage, fn in stages.items():
            t_min, t_med, _ = _timed(fn, args.repeats)
            print(f"    {stage:34s} {t_min:7.1f} / {t_med:7.1f} ms")
        ref = intersection_volume_cm3(hand_m, obj_m, 0.00025)
        vol = intersection_volume_cm3(hand_m, obj_m, 0.001)
        apart = f"{abs(vol - ref) / ref * 100:.2f}% apart" if ref > 0 else "no overlap"
        print(f"    volume @1 mm {vol:.3f} vs @0.25 mm {ref:.3f} cm^3 ({apart})")


if __name__ == "__main__":
    main()
