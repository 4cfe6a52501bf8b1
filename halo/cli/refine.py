"""``halo refine grasps``: move grasps (keypoints from any method) out of their objects through HALO.

Reads the ``halo eval grasps`` layout (:mod:`halo.grasp.folder`: ``<object>_obj.ply`` and
``<object>_<i>.npy`` keypoints, metres, MANO order, the object's frame; per-object subfolders
too), refines every object's grasps in one batch with :func:`halo.grasp.refine.refine_grasps`
and writes the same layout to ``--out``::

    <object>_obj.ply      the object mesh (as read)
    <object>_<i>.npy      the refined grasp (21,3) float32, metres, same frame
    refine.json           settings, per grasp: mean joint displacement (cm), HALO penetration
                          before / after, and per object whether its convex hull was used

so ``halo eval grasps --grasps OUT --checkpoint HALO_BASE`` scores the result.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from halo.cli.common import CliError, default_checkpoint, load_halo_model
from halo.cli.options import (
    add_grip_depth_arg,
    add_support_axis_arg,
    add_trust_checkpoint_arg,
    check_grip_depth,
    support_direction,
)

DEFAULT_STEPS = 60


def cmd_refine_grasps(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from halo.data.keypoint_files import load_keypoints
    from halo.geometry.mesh_io import load_mesh_m, save_mesh
    from halo.grasp.folder import discover_grasps, find_object_mesh
    from halo.grasp.refine import RefineConfig, refine_grasps
    from halo.utils.atomic import atomic_write_json, atomic_write_npy

    grasps_dir = Path(args.grasps)
    if not grasps_dir.is_dir():
        raise CliError(f"--grasps {grasps_dir}: no such folder")
    if args.steps < 0:
        raise CliError(f"--steps must be >= 0, got {args.steps}")
    if not math.isfinite(args.penetration_margin) or args.penetration_margin < 0:
        raise CliError(f"--penetration-margin must be a finite number >= 0, got {args.penetration_margin}")
    check_grip_depth(args.grip_depth_mm)
    found = discover_grasps(grasps_dir)
    by_object: dict[str, list] = {}
    for g in found.grasps:
        if g.keypoints is not None:
            by_object.setdefault(g.object, []).append(g)
    if not by_object:
        raise CliError(f"--grasps {grasps_dir}: no <object>_<i>.npy keypoint files")
    model, _ = load_halo_model(args.checkpoint, args.trust_checkpoint)
    model = model.to(torch.device(args.device)).eval()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = RefineConfig(
        steps=args.steps,
        penetration_margin=args.penetration_margin,
        grip_depth_m=args.grip_depth_mm / 1000.0,
        support_direction=support_direction(args),
        exact_gradient=not args.detached_gradient,
    )
    report: dict = {
        "checkpoint": str(args.checkpoint),
        "steps": args.steps,
        "penetration_margin": args.penetration_margin,
        "grip_depth_mm": args.grip_depth_mm,
        "support_axis": args.support_axis,
        "keypoint_gradient": "detached (the original's)" if args.detached_gradient else "exact",
        "objects": {},
        "skipped": [],
    }
    report["skipped"] += found.skipped
    for obj, grasps in sorted(by_object.items()):
        mesh_path = find_object_mesh(obj, grasps[0].folder, grasps_dir, None)
        if mesh_path is None:
            report["skipped"].append(
                {"file": obj, "reason": f"no {obj}_obj.<ext> or {obj}.<ext> object mesh"}
            )
            print(f"halo refine grasps: skipping {obj}: no object mesh found")
            continue
        mesh = load_mesh_m(mesh_path, name=f"object {obj}")
        keypoints, names = [], []
        for g in grasps:
            seq = load_keypoints(g.keypoints)
            if len(seq.keypoints) != 1:
                report["skipped"].append({"file": str(g.keypoints), "reason": "not one hand (21, 3)"})
                continue
            keypoints.append(seq.keypoints[0])
            names.append(g.grasp.split("/", 1)[1] if "/" in g.grasp else g.grasp.split("_", 1)[1])
        if not keypoints:
            continue
        result = refine_grasps(model, np.stack(keypoints).astype(np.float32), mesh, config=config)
        save_mesh(mesh, out / f"{obj}_obj.ply")
        for name, kp in zip(names, result.keypoints.numpy(), strict=True):
            atomic_write_npy(out / f"{obj}_{name}.npy", kp.astype(np.float32))
        disp_cm = (result.displacement_m * 100).tolist()
        report["objects"][obj] = {
            "object_mesh": str(mesh_path),
            "inside_test": result.object_note,
            "seconds": result.seconds,
            "grasps": {
                n: {"displacement_cm": d, "penetration_before": b, "penetration_after": a}
                for n, d, b, a in zip(
                    names,
                    disp_cm,
                    result.penetration_before.tolist(),
                    result.penetration_after.tolist(),
                    strict=True,
                )
            },
        }
        print(
            f"{obj}: {len(names)} grasps refined in {result.seconds:.1f} s, mean joint displacement "
            f"{np.mean(disp_cm):.2f} cm, HALO penetration {result.penetration_before.mean():.3f} -> "
            f"{result.penetration_after.mean():.3f}; inside test: {result.object_note}"
        )
    atomic_write_json(out / "refine.json", report, indent=1)
    if not report["objects"]:
        raise CliError(f"--grasps {grasps_dir}: no grasp could be refined (see {out / 'refine.json'})")
    print(f"refined grasps written to {out} (score them: halo eval grasps --grasps {out} --checkpoint ...)")
    return 0


def add_parser(subparsers) -> None:
    """Register ``halo refine grasps`` on the main parser's subparsers."""
    p_refine = subparsers.add_parser("refine", help="refine grasps through HALO's occupancy")
    refine_sub = p_refine.add_subparsers(dest="refine_command", required=True, metavar="WHAT")
    p = refine_sub.add_parser(
        "grasps",
        help="move grasps (keypoint files) out of their objects, keeping contact",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--grasps", required=True, help="folder in the `halo eval grasps` layout")
    p.add_argument(
        "--checkpoint",
        default=default_checkpoint(),
        help="HALO base checkpoint (halo_base_best.pt or model_best.pt; default: as 'halo mesh')",
    )
    add_trust_checkpoint_arg(p)
    p.add_argument("--out", required=True, help="output folder (same layout)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"Adam steps (default {DEFAULT_STEPS})")
    p.add_argument(
        "--penetration-margin",
        type=float,
        default=0.0,
        help="HALO logit tolerated at the object's interior points (default 0: pushed fully out; "
        "3-8 leave a skin-deep overlap: more volume, hands that hold the object in simulation; "
        "README, HALO-VAE)",
    )
    add_grip_depth_arg(p)
    add_support_axis_arg(p)
    p.add_argument(
        "--detached-gradient",
        action="store_true",
        help="descend HALO's original keypoint gradient (hand and bone frames detached) instead of "
        "the exact one (README, HALO-VAE: it leaves pushed grasps deeper in)",
    )
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    p.set_defaults(func=cmd_refine_grasps)
