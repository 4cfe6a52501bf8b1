"""Benchmark: every speed and smoothness figure of the user-facing surface, side by side, in one run.

Prints, for the original checkpoint (or --checkpoint) and optionally a trained model (--trained):

1. machine reference: a fixed (4096x64)@(64x64) GEMM in GFLOP/s, by wall time and by CPU time.
   On a shared machine the wall rate drops with the load while the CPU-time rate does not, so
   with one torch thread ``points / CPU seconds`` is the idle-equivalent throughput.
2. ``HaloModel.occupancy`` throughput on one hand at 4k / 20k / 100k points (uniform in the
   hand's box +-2 cm): the previous path (``forward`` under no_grad: all parts batched, one
   chunk of 16k points), the full 16-part inference path, the culled path (calibration
   included, and without it), and the mesh field (``HandOccupancyField``) on the same points.
3. mesh time per hand at effective 128 / 256 / 512 (MISE 32/2, 32/3, 64/3, logit field).
4. a sequence of hands at 256: hand by hand (``extract_hand_mesh``) vs batched
   (``extract_hand_meshes``), hands/s.
5. smoothness: Chamfer-L1 (mm) and normal consistency of the 128 / 256 meshes against the 512
   mesh of the same network and field, for ``interpolate="probability"`` (the original's meshes)
   and ``"logit"`` (the default), on --smooth-hands hands.

Usage:  python bench/bench_speed.py [--checkpoint PATH] [--trained PATH] [--threads 1]
        [--seq-hands 100] [--seq-single 10] [--smooth-hands 2] [--tune-allocator]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import trimesh

from halo.core.checkpoint import load_model
from halo.core.model import HaloModel
from halo.eval.surface_metrics import mesh_metrics
from halo.hands.sequences import random_skeletons, synthetic_hand_sequence
from halo.meshing.hand_field import HandOccupancyField
from halo.meshing.hand_mesh import extract_hand_mesh, extract_hand_meshes


class Clock:
    """Wall and CPU seconds of a block (CPU time of this process, all threads)."""

    def __enter__(self):
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.w0
        self.cpu = time.process_time() - self.c0


def best_of(fn, repeats: int) -> Clock:
    best = None
    for _ in range(repeats):
        with Clock() as c:
            fn()
        if best is None or c.wall < best.wall:
            best = c
    return best


def gemm_reference() -> tuple[float, float]:
    x, w, b = torch.randn(4096, 64), torch.randn(64, 64), torch.randn(64)
    out = torch.empty(4096, 64)
    for _ in range(20):
        torch.addmm(b, x, w.T, out=out)
    with Clock() as c:
        for _ in range(300):
            torch.addmm(b, x, w.T, out=out)
    flop = 300 * 2 * 4096 * 64 * 64
    return flop / c.wall / 1e9, flop / c.cpu / 1e9


def rate(n: int, c: Clock) -> str:
    return f"{n / c.wall / 1e6:6.3f} / {n / c.cpu / 1e6:6.3f}"


def api_throughput(model: HaloModel, repeats: int) -> None:
    print("\n## 2. HaloModel.occupancy, 1 hand (M points/s, wall / CPU time)")
    kp = torch.tensor(random_skeletons(1, seed=0, max_flexion=0.8), dtype=torch.float32)
    lo, hi = kp[0].min(0).values - 0.02, kp[0].max(0).values + 0.02
    print(
        "| points | previous path | full 16 parts | culled (calibration incl.) | culled (excl.) "
        "| mesh field (excl. calibration) | full: us/point vs 4k |"
    )
    print("|---|---|---|---|---|---|---|")
    per_point_4k = None
    for n in (4096, 20_000, 100_000):
        g = torch.Generator().manual_seed(n)
        pts = (lo + (hi - lo) * torch.rand(1, n, 3, generator=g))[None][0]
        with torch.no_grad():
            old = best_of(lambda p=pts: model.forward(p, kp), repeats)
            full = best_of(lambda p=pts: model.occupancy(p, kp), repeats)
            culled = best_of(lambda p=pts: model.occupancy(p, kp, cull="radius"), repeats)
            pose = model.canonicalize(kp)
            mats, lengths = model.model_inputs(pose)
            posed = model.network.pose_parts(mats, lengths, model.part_segments(pose, mats))
            radii = model.network.calibrate_radii(posed)
            pm = model.points_to_model(pose, pts)
            excl = best_of(lambda p=pm, q=posed, r=radii: model.network.max_logits(p, q, r), repeats)
        field = HandOccupancyField(model, kp[0], cull="radius")
        fpts = pm[0].numpy()
        fld = best_of(lambda p=fpts, f=field: f(p), repeats)
        us = full.cpu / n * 1e6
        per_point_4k = per_point_4k or us
        print(
            f"| {n:,} | {rate(n, old)} | {rate(n, full)} | {rate(n, culled)} | {rate(n, excl)} "
            f"| {rate(n, fld)} | {us:.2f} us ({us / per_point_4k:.2f}x) |"
        )


def mesh_times(model: HaloModel, repeats: int) -> None:
    print("\n## 3. mesh time per hand (logit field, s, best of repeats: wall / CPU)")
    print("| config | eff. res | hand 0 | hand 1 | evaluated pts (hand 0) |")
    print("|---|---|---|---|---|")
    hands = random_skeletons(2, seed=0, max_flexion=0.8)
    for r0, steps in ((32, 2), (32, 3), (64, 3)):
        cells, evaluated = [], 0
        for i, kp in enumerate(hands):
            out = {}
            c = best_of(
                lambda k=kp, r0=r0, s=steps, out=out: out.update(
                    h=extract_hand_mesh(model, k, resolution_0=r0, upsampling_steps=s)
                ),
                repeats,
            )
            cells.append(f"{c.wall:.3f} / {c.cpu:.3f}")
            if i == 0:
                evaluated = out["h"].stats.n_evaluated
        print(f"| {r0}/{steps} | {r0 * 2**steps} | {cells[0]} | {cells[1]} | {evaluated:,} |")


def sequence(model: HaloModel, n_hands: int, n_single: int, hands_per_call: int) -> None:
    print(f"\n## 4. a {n_hands}-hand sequence at 256 (32/3): hands/s (wall / CPU time)")
    kp = synthetic_hand_sequence(n_hands)
    with Clock() as one:
        for k in kp[:n_single]:
            extract_hand_mesh(model, k, resolution_0=32, upsampling_steps=3)
    with Clock() as few:
        extract_hand_meshes(
            model, kp[:n_single], resolution_0=32, upsampling_steps=3, hands_per_call=hands_per_call
        )
    with Clock() as many:
        extract_hand_meshes(model, kp, resolution_0=32, upsampling_steps=3, hands_per_call=hands_per_call)
    print("| mode | hands | hands/s |")
    print("|---|---|---|")
    print(
        f"| per hand (extract_hand_mesh) | first {n_single} | {n_single / one.wall:.3f} / {n_single / one.cpu:.3f} |"
    )
    print(
        f"| batched, {hands_per_call} per call | first {n_single} | {n_single / few.wall:.3f} / {n_single / few.cpu:.3f} |"
    )
    print(
        f"| batched, {hands_per_call} per call | all {n_hands} | {n_hands / many.wall:.3f} / {n_hands / many.cpu:.3f} |"
    )


def smoothness(models: dict[str, HaloModel], n_hands: int) -> None:
    print("\n## 5. smoothness: 128 / 256 meshes against the 512 mesh of the same network and field")
    print("| network | field | hand | CD-L1 128 (mm) | NC 128 | CD-L1 256 (mm) | NC 256 |")
    print("|---|---|---|---|---|---|---|")
    hands = random_skeletons(n_hands, seed=5, max_flexion=0.8)
    for name, model in models.items():
        for interpolate in ("probability", "logit"):
            for i, kp in enumerate(hands):
                ref = extract_hand_mesh(
                    model, kp, resolution_0=64, upsampling_steps=3, interpolate=interpolate
                ).mesh
                pts, face = trimesh.sample.sample_surface(ref, 100_000, seed=0)
                normals = ref.face_normals[face]
                cells = []
                for steps in (2, 3):
                    m = extract_hand_mesh(
                        model, kp, resolution_0=32, upsampling_steps=steps, interpolate=interpolate
                    ).mesh
                    s = mesh_metrics(m, pts, normals, n_samples=100_000)
                    cells += [f"{s.chamfer_l1_mm:.3f}", f"{s.normal_consistency:.4f}"]
                print(f"| {name} | {interpolate} | {i} | " + " | ".join(cells) + " |")


def render_before_after(model: HaloModel, path: str) -> None:
    """One hand at 128 (probability | logit) and at 512, same camera, as one PNG."""
    from halo.viz import render

    kp = random_skeletons(1, seed=5, max_flexion=0.8)[0]
    centre = kp.mean(0)
    camera = render.Camera.framing(kp - centre, fill=0.8)
    tiles, labels = [], []
    for label, r0, steps, interpolate in (
        ("128, probability (before)", 32, 2, "probability"),
        ("128, logit (after)", 32, 2, "logit"),
        ("512, logit", 64, 3, "logit"),
    ):
        mesh = extract_hand_mesh(
            model, kp - centre, resolution_0=r0, upsampling_steps=steps, interpolate=interpolate
        )
        tiles.append(render.render_mesh(mesh.mesh, camera=camera))
        labels.append(label)
    render.save_png(render.render_grid(tiles, ncols=3, labels=labels), path)
    print(f"\nwrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--checkpoint",
        default=os.environ.get("HALO_CHECKPOINT", "../shared/reference/halo_original/model_best.pt"),
    )
    ap.add_argument("--trained", default=None, help="a trained default model for the smoothness table")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seq-hands", type=int, default=100)
    ap.add_argument("--seq-single", type=int, default=10, help="hands timed one by one (of the sequence)")
    ap.add_argument("--hands-per-call", type=int, default=25)
    ap.add_argument("--smooth-hands", type=int, default=2)
    ap.add_argument("--skip", default="", help="comma-separated sections to skip (api,mesh,seq,smooth)")
    ap.add_argument("--render", default=None, help="write a before/after render (PNG) of one hand at 128")
    ap.add_argument(
        "--tune-allocator", action="store_true", help="halo.utils.allocator.tune_allocator() first"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.tune_allocator:
        from halo.utils.allocator import tune_allocator

        tune_allocator()
    if args.checkpoint is None:
        raise SystemExit("no checkpoint: pass --checkpoint or set HALO_CHECKPOINT")
    t0 = time.perf_counter()
    model, _ = load_model(args.checkpoint)
    model.eval()
    skip = set(filter(None, args.skip.split(",")))
    print(
        f"checkpoint {args.checkpoint}; torch threads {args.threads}; allocator tuned: {args.tune_allocator}"
    )
    wall, cpu = gemm_reference()
    print(
        f"\n## 1. machine reference: GEMM {wall:.1f} GFLOP/s wall, {cpu:.1f} GFLOP/s CPU time (load = ratio)"
    )
    if "api" not in skip:
        api_throughput(model, args.repeats)
    if "mesh" not in skip:
        mesh_times(model, args.repeats)
    if "seq" not in skip:
        sequence(model, args.seq_hands, args.seq_single, args.hands_per_call)
    if "smooth" not in skip:
        models = {"original": model}
        if args.trained:
            models["trained"] = load_model(args.trained)[0].eval()
        smoothness(models, args.smooth_hands)
    if args.render:
        render_before_after(model, args.render)
    wall, cpu = gemm_reference()
    print(f"\nmachine reference at the end: GEMM {wall:.1f} GFLOP/s wall, {cpu:.1f} GFLOP/s CPU time")
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
