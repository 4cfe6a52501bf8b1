"""Benchmark of ``halo fit``: keypoint accuracy, wrong-finger rate, refit Chamfer, time per hand.

Two input modes, fitted and reported the same way (closed meshes, then the same meshes seen
from one camera: the single-view ``--partial`` case):

* default: meshes made by a HALO checkpoint from known keypoints (the original release by
  default): ``mesh_frame000_cm.ply`` (= ``dev_reference.npz`` keypoints[0], centimetres), the
  other dev_reference frames and poses of the synthetic hand's sampler, meshed here (cached in
  ``--cache``).
* ``--dataset SPLIT_DIR``: the first ``--hands`` samples of a built-in dataset split (the
  layout of :mod:`halo.data.layout`): the ground-truth meshes (``mesh_scaled/``) against their
  ground-truth keypoints (``points/`` ``hand_joints``), e.g. with the checkpoint of a default
  training run.

    python bench/bench_fit.py                       # 16 hands: full meshes + single views
    python bench/bench_fit.py --hands 4 --no-partial   # quicker
    python bench/bench_fit.py --dataset data/synthetic_hands/<id>/val \
        --checkpoint outputs/train/runs/<run>/checkpoints/halo_base_best.pt --hands 16 --chamfer 2

Prints one table per case and the figures the issue asks for.  CPU cost on the shared 2-core
machine: a few minutes (meshing the inputs once, then two batched fits).
"""

from __future__ import annotations

import argparse
import ast
import time
from pathlib import Path

import numpy as np
import torch
import trimesh

from halo.core.checkpoint import load_model
from halo.core.skeleton import FINGER_JOINTS
from halo.data.layout import read_datalist, read_mesh, read_points, sample_paths
from halo.eval.surface_metrics import chamfer_l1_mm
from halo.fit import FitConfig, fit_hands, hand_surface_from_mesh, load_hand_surface, single_view_cloud
from halo.meshing.hand_mesh import extract_hand_mesh

REF = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "halo_original"


def synthetic_keypoints(n: int, seed: int) -> np.ndarray:
    from halo.hands.mano import ManoLayer
    from halo.hands.synthetic_hand import get_synthetic_hand_model, sample_hand_poses

    layer = ManoLayer(get_synthetic_hand_model())
    rng = np.random.default_rng(seed)
    poses = sample_hand_poses(n, seed=rng)
    rot = torch.tensor(rng.normal(0, 0.6, (n, 3)), dtype=torch.float32)
    with torch.no_grad():
        out = layer(torch.tensor(poses, dtype=torch.float32), global_orient=rot)
    return out.keypoints.numpy().astype(np.float64)


def wrong_fingers(fit: np.ndarray, gt: np.ndarray) -> int:
    """Fingers whose fitted joints lie closer to another true finger than to their own (mean over joints)."""
    wrong = 0
    for f, joints in enumerate(FINGER_JOINTS):
        d = [np.linalg.norm(fit[list(joints)] - gt[list(g)], axis=1).mean() for g in FINGER_JOINTS]
        wrong += int(np.argmin(d) != f)
    return wrong


def summarize(name: str, fits, gts, elapsed: float, meshes=None, model=None, chamfer_count: int = 0):
    errs = np.stack([np.linalg.norm(r.keypoints - g, axis=1) * 1000 for r, g in zip(fits, gts, strict=True)])
    wrong = sum(wrong_fingers(r.keypoints, g) for r, g in zip(fits, gts, strict=True))
    print(
        f"\n== {name}: {len(fits)} hands, batch time {elapsed:.1f} s = {elapsed / len(fits):.2f} s per hand"
    )
    print(" hand  mean_mm  max_mm  worst_joint  surf_err_mm  converged  start")
    for i, (r, e) in enumerate(zip(fits, errs, strict=True)):
        print(
            f" {i:4d}  {e.mean():7.2f}  {e.max():6.2f}  {int(e.argmax()):11d}  {r.report.surface_error_mm:11.2f}"
            f"  {str(r.report.converged):9s}  {r.report.start}"
        )
    print(f" mean per-joint error: {errs.mean():.2f} mm  (median hand {np.median(errs.mean(1)):.2f})")
    print(
        f" max joint error: {errs.max():.2f} mm; hands with every joint <= 15 mm: {(errs.max(1) <= 15).sum()}/{len(errs)}"
    )
    per_joint = errs.mean(0)
    print(
        f" per-joint mean (mm, MANO order): {' '.join(f'{e:.1f}' for e in per_joint)}; worst on average: "
        f"joint {int(per_joint.argmax())} ({per_joint.max():.1f} mm)"
    )
    print(f" wrong-finger fits: {wrong}/{5 * len(fits)} fingers ({100 * wrong / (5 * len(fits)):.1f}%)")
    print(f" converged flags: {sum(r.report.converged for r in fits)}/{len(fits)}")
    if meshes is not None and chamfer_count:
        cds = []
        for r, mesh in list(zip(fits, meshes, strict=True))[:chamfer_count]:
            refit = extract_hand_mesh(model, r.keypoints, resolution_0=32, upsampling_steps=3).mesh
            cds.append(chamfer_l1_mm(refit, mesh, n=20000))
        print(
            f" refit mesh Chamfer-L1 vs input (first {len(cds)} hands, 256 grid): "
            + ", ".join(f"{c:.3f}" for c in cds)
            + f" mm; mean {np.mean(cds):.3f} mm"
        )


def reference_inputs(model, hands: int, cache: Path):
    """Default mode: (keypoints, meshes, surfaces) of meshes ``model`` makes from known keypoints."""
    ref = np.load(REF / "dev_reference.npz")
    cache.mkdir(parents=True, exist_ok=True)
    gts = [ref["keypoints"][i].astype(np.float64) for i in range(min(10, hands))]
    if hands > 10:
        gts += list(synthetic_keypoints(hands - 10, seed=7))
    surfaces, meshes = [], []
    for i, kp in enumerate(gts):
        if i == 0:
            path = REF / "mesh_frame000_cm.ply"
            surfaces.append(load_hand_surface(path, units="cm"))
            meshes.append(trimesh.load(path, process=False).apply_scale(0.01))
            continue
        path = cache / f"hand{i:02d}.ply"
        if not path.is_file():
            extract_hand_mesh(model, kp, resolution_0=32, upsampling_steps=3).mesh.export(path)
        mesh = trimesh.load(path, process=False)
        meshes.append(mesh)
        surfaces.append(hand_surface_from_mesh(mesh, seed=i, name=path.name))
    return gts, meshes, surfaces


def dataset_inputs(split_dir: Path, hands: int):
    """``--dataset`` mode: the first ``hands`` samples of a split, ground-truth meshes and keypoints (metres)."""
    names = read_datalist(split_dir)[:hands]
    gts, meshes, surfaces = [], [], []
    for i, name in enumerate(names):
        paths = sample_paths(split_dir, name)
        gts.append(read_points(paths["points"], with_surface=False).keypoints.astype(np.float64))
        mesh = read_mesh(paths["mesh"])
        meshes.append(mesh)
        surfaces.append(hand_surface_from_mesh(mesh, seed=i, name=name))
    return gts, meshes, surfaces


def single_views(gts, meshes) -> list:
    """Each mesh seen from one camera 45 cm away on the palm side or the back of the hand, jittered."""
    rng = np.random.default_rng(3)
    views = []
    for kp, mesh in zip(gts, meshes, strict=True):
        normal = np.cross(kp[9] - kp[0], kp[5] - kp[0])
        normal /= np.linalg.norm(normal)
        side = rng.choice([-1.0, 1.0])
        direction = side * normal + rng.normal(0, 0.3, 3)
        direction /= np.linalg.norm(direction)
        views.append(single_view_cloud(mesh, mesh.centroid + 0.45 * direction, seed=len(views)))
    return views


def _override(item: str) -> tuple[str, object]:
    """``FIELD=VALUE`` -> (field, value); the value is a Python literal (3, 0.5, ("open", "fist"))."""
    field, sep, value = item.partition("=")
    if not sep or field not in FitConfig.__dataclass_fields__:
        raise SystemExit(f"--set {item!r}: expected FIELD=VALUE with a FitConfig field")
    return field, ast.literal_eval(value)


def timed_fit(model, surfaces, config: FitConfig, device: str):
    """``fit_hands`` on the batch; returns (fits, wall seconds) after printing its CPU time."""
    t0, c0 = time.perf_counter(), time.process_time()
    fits = fit_hands(model, surfaces, config=config, device=device)
    cpu = time.process_time() - c0
    print(f"CPU time of the batched fit: {cpu:.1f} s = {cpu / len(fits):.2f} s per hand")
    return fits, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=str(REF / "model_best.pt"))
    ap.add_argument(
        "--dataset",
        default=None,
        help="a dataset split folder (datalist.txt, mesh_scaled/, points/): fit its first --hands "
        "ground-truth meshes instead of meshes made by the checkpoint",
    )
    ap.add_argument(
        "--hands",
        type=int,
        default=16,
        help="batch size (frame 0 file + 9 dev frames + synthetic; with --dataset: its first samples)",
    )
    ap.add_argument("--cache", default="/tmp/halo_fit_bench", help="folder for the generated input meshes")
    ap.add_argument("--no-partial", action="store_true")
    ap.add_argument("--no-closed", action="store_true", help="fit only the single views")
    ap.add_argument(
        "--chamfer", type=int, default=4, help="hands whose refit mesh is compared (costs meshing)"
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="FIELD=VALUE",
        help="FitConfig overrides (Python literals), e.g. --set finger_restart_rounds=0 keep_starts=3",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, _ = load_model(args.checkpoint)

    t_mesh = time.perf_counter()
    if args.dataset:
        gts, meshes, surfaces = dataset_inputs(Path(args.dataset), args.hands)
        source = f"dataset {args.dataset}"
    else:
        gts, meshes, surfaces = reference_inputs(model, args.hands, Path(args.cache))
        source = "meshes made by the checkpoint"
    print(f"inputs: {len(surfaces)} meshes ({source}) ready in {time.perf_counter() - t_mesh:.1f} s")

    config = FitConfig(**dict(_override(item) for item in args.set))
    print(f"FitConfig overrides: {args.set or 'none'}")
    if not args.no_closed:
        fits, elapsed = timed_fit(model, surfaces, config, args.device)
        summarize("closed meshes", fits, gts, elapsed, meshes, model, args.chamfer)

    if not args.no_partial:
        fits, elapsed = timed_fit(model, single_views(gts, meshes), config, args.device)
        summarize("single-view clouds (--partial)", fits, gts, elapsed)


if __name__ == "__main__":
    main()
