"""``halo generate grasps``: grasps for arbitrary object meshes from a trained HALO-VAE checkpoint.

Reads the VAE from its Lightning checkpoint without Lightning or Hydra
(:func:`halo.grasp.vae_checkpoint.load_grasp_vae`) and the frozen HALO base from the path recorded in the
checkpoint's hyper-parameters (``--halo-checkpoint`` overrides it).  For every object mesh
(.ply/.obj/.stl/.off, metres; a mesh clearly in mm or cm is rescaled with a warning, see
:func:`halo.geometry.mesh_io.load_mesh_m`) it samples ``-n`` grasps (object centred at its bounding-box
centre as in training, z ~ N(0, I) seeded, refined when the checkpoint says so), meshes every hand
with HALO and scores it (:func:`halo.grasp.pipeline.generate_grasps`, the pipeline of the grasp-validation
callback).  Output folder::

    <object>_obj.ply        the object mesh (metres, the input file's frame after rescaling)
    <object>_<i>.npy        grasp i: (21,3) float32 keypoints, metres, MANO order, same frame
    <object>_<i>_hand.ply   its HALO hand mesh (metres, same frame)
    <object>_render.png     the object's grasps rendered (hand + object), one tile per grasp
    summary.csv             one row per grasp: volume_cm3, depth_cm, min_distance_cm, contact, ...
    summary.md              per-object means, the overall row and the cluster diversity
    generation.json         checkpoint, HALO base, seed, refinement, objects and scales used, and the
                            diversity (k, entropy, cluster size; :func:`halo.grasp.diversity.grasp_diversity`)

This is the layout ``halo eval grasps`` reads.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from halo.cli.common import CliError, json_safe
from halo.cli.options import (
    GRASP_UPSAMPLING_STEPS,
    add_extraction_args,
    add_grip_depth_arg,
    add_support_axis_arg,
    add_trust_checkpoint_arg,
    check_extraction_args,
    check_grip_depth,
    support_direction,
)
from halo.geometry.mesh_io import save_mesh
from halo.utils.atomic import atomic_write_npy, atomic_write_text

DEFAULT_OUT = Path("outputs") / "generate"


def _object_files(specs: list[str]) -> list[Path]:
    from halo.geometry.mesh_io import MESH_SUFFIXES

    files: list[Path] = []
    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in MESH_SUFFIXES)
            if not found:
                raise CliError(f"--objects {p}: no {'/'.join(MESH_SUFFIXES)} files in this folder")
            files += found
        elif p.is_file():
            if p.suffix.lower() not in MESH_SUFFIXES:
                raise CliError(f"--objects {p}: unsupported mesh type (use {', '.join(MESH_SUFFIXES)})")
            files.append(p)
        else:
            raise CliError(f"--objects {p}: no such file or folder")
    return files


def _load_models(args: argparse.Namespace):

    from halo.core.checkpoint import load_model
    from halo.grasp.vae import GraspVaeError
    from halo.grasp.vae_checkpoint import halo_fingerprint, load_grasp_vae

    try:
        vae, meta = load_grasp_vae(args.checkpoint, trust_pickle=args.trust_checkpoint)
    except GraspVaeError as exc:
        raise CliError(str(exc)) from exc
    if args.latent == "fitted" and not vae.latent_fitted:
        raise CliError(
            f"--latent fitted: {args.checkpoint} has no latent statistics (trained before they existed); "
            "use --latent standard or retrain"
        )
    hp = meta["hyper_parameters"]
    halo_path = args.halo_checkpoint or hp.get("halo_checkpoint")
    if not halo_path:
        raise CliError(
            f"{args.checkpoint}: records no HALO base checkpoint; pass --halo-checkpoint PATH (the HALO base "
            "the VAE was trained with)"
        )
    if not Path(halo_path).is_file():
        raise CliError(
            f"HALO base checkpoint {halo_path} (recorded in {args.checkpoint}) not found; pass --halo-checkpoint "
            "PATH to the HALO base the VAE was trained with"
        )
    halo, _ = load_model(halo_path, trust_pickle=args.trust_checkpoint)
    halo.requires_grad_(False)
    recorded = (meta.get("halo_base") or {}).get("fingerprint")
    if recorded and recorded != halo_fingerprint(halo):
        warnings.warn(
            f"{halo_path} is not the HALO base this VAE was trained with ({(meta.get('halo_base') or {}).get('path')})",
            stacklevel=2,
        )
    return vae, halo.eval(), meta, str(halo_path)


def cmd_generate_grasps(args: argparse.Namespace) -> int:
    import torch

    # Scoped, not torch.set_grad_enabled(False): callers in the same process (tests, notebooks) keep autograd.
    with torch.no_grad():
        return _generate_grasps(args)


def _generate_grasps(args: argparse.Namespace) -> int:
    import numpy as np

    from halo.geometry.mesh_io import MeshFileError, load_mesh_m
    from halo.grasp.folder import grasp_files, object_mesh_file, object_names
    from halo.grasp.pipeline import GraspObject, generate_grasps, sample_surface_points
    from halo.grasp.report import (
        GRASP_TABLE_COLUMNS,
        grasp_label,
        render_grasp,
        report_markdown,
        summarize_grasps,
        write_csv,
    )
    from halo.viz import render

    if args.num_grasps < 1:
        raise CliError(f"-n must be >= 1, got {args.num_grasps}")
    if args.cluster_k < 1:
        raise CliError(f"--cluster-k must be >= 1, got {args.cluster_k}")
    if args.oversample < 1:
        raise CliError(f"--oversample must be >= 1, got {args.oversample}")
    check_grip_depth(args.grip_depth_mm)
    if args.grip_depth_mm > 0 and not args.halo_refine:
        raise CliError("--grip-depth-mm is a setting of --halo-refine; add --halo-refine")
    if args.support_axis is not None and not args.halo_refine:
        raise CliError("--support-axis is a setting of --halo-refine; add --halo-refine")
    check_extraction_args(args)
    files = _object_files(args.objects)
    names = object_names(files)
    vae, halo, meta, halo_path = _load_models(args)
    hp = meta["hyper_parameters"]
    refine = hp.get("refine_at_generation", False) if args.refine is None else args.refine
    steps = int(hp.get("refine_steps", 3)) if refine else 0
    n_points = int(args.object_points or hp.get("object_points", 600))
    out = Path(args.out) if args.out else DEFAULT_OUT / f"grasps-{Path(args.checkpoint).stem}"
    out.mkdir(parents=True, exist_ok=True)

    meshes, targets, objects_info = {}, [], []
    for k, (path, name) in enumerate(zip(files, names, strict=True)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                mesh = load_mesh_m(path, name=f"object {path}", scale=args.scale, rescale=args.rescale)
            except MeshFileError as exc:
                raise CliError(str(exc)) from exc
        for w in caught:  # unit warnings: say them once, on stderr, in the CLI's voice
            print(f"halo generate grasps: warning: {w.message}", file=sys.stderr)
        # Scored as the written .ply stores it (float32), so `halo eval grasps` reproduces the numbers.
        mesh.vertices = np.asarray(mesh.vertices, dtype=np.float32).astype(np.float64)
        if not mesh.is_watertight:
            print(
                f"halo generate grasps: warning: {path} is not watertight; interpenetration metrics use its "
                "convex hull",
                file=sys.stderr,
            )
        center = np.asarray(mesh.bounds, dtype=np.float64).mean(axis=0)  # generation is object-centred
        points = sample_surface_points(mesh, n_points, seed=args.seed + k) - center.astype(np.float32)
        scored = mesh if mesh.is_watertight else mesh.convex_hull
        targets.append(GraspObject(name, scored, points, center))
        meshes[name] = mesh
        save_mesh(mesh, object_mesh_file(out, name))
        objects_info.append(
            {
                "name": name,
                "file": str(path),
                "center_m": center.tolist(),
                "watertight": bool(mesh.is_watertight),
            }
        )

    halo_refine = None
    refine_seconds: dict[str, float] = {}
    if args.halo_refine:
        from halo.grasp.refine import RefineConfig, refine_grasps

        refine_config = RefineConfig(
            steps=args.halo_refine_steps,
            grip_depth_m=args.grip_depth_mm / 1000.0,
            support_direction=support_direction(args),
        )

        def halo_refine(keypoints, obj):
            result = refine_grasps(halo, keypoints.astype(np.float32), obj.mesh, config=refine_config)
            refine_seconds[obj.name] = result.seconds
            note = "" if result.object_note == "watertight" else f" against its {result.object_note}"
            print(
                f"halo generate grasps: {obj.name}: {len(keypoints)} grasps refined through HALO{note} in "
                f"{result.seconds:.1f} s ({result.seconds / max(1, len(keypoints)):.2f} s per grasp)"
            )
            return result.keypoints.numpy()

    results = generate_grasps(
        lambda pts, n, generator: vae.sample(
            pts, n, generator=generator, refine_steps=steps, latent=args.latent
        ),
        halo,
        targets,
        args.num_grasps,
        seed=args.seed,
        resolution_0=args.resolution_0,
        upsampling_steps=args.upsampling_steps,
        interpolate=args.interpolate,
        contact_tol_m=args.contact_tol,
        show_progress=not args.no_progress,
        refine=halo_refine,
        oversample=args.oversample,
        gravity=support_direction(args),
    )
    for r in results:
        keypoints_file, hand_file = grasp_files(out, r.object_name, r.index)
        atomic_write_npy(keypoints_file, r.keypoints.astype(np.float32))
        if r.hand is not None and len(r.hand.faces):
            save_mesh(r.hand, hand_file)
        if r.error:
            print(
                f"halo generate grasps: warning: {r.object_name} grasp {r.index}: {r.error}", file=sys.stderr
            )
    if not args.no_render:
        for name, mesh in meshes.items():
            mine = [r for r in results if r.object_name == name]
            tiles = [render_grasp(r.hand, mesh, r.keypoints, size=args.render_size) for r in mine]
            grid = render.render_grid(
                tiles, ncols=min(5, len(tiles)), labels=[grasp_label(r) for r in mine], pad=2
            )
            render.save_png(grid, out / f"{name}_render.png")

    summary = summarize_grasps(results, k=args.cluster_k, seed=args.seed)
    write_csv([r.row() for r in results], out / "summary.csv", GRASP_TABLE_COLUMNS)
    report = report_markdown(f"Generated grasps ({args.checkpoint})", summary)
    atomic_write_text(out / "summary.md", report)
    atomic_write_text(
        out / "generation.json",
        json.dumps(
            {
                "checkpoint": str(args.checkpoint),
                "halo_checkpoint": halo_path,
                "global_step": meta.get("global_step"),
                "grasps_per_object": args.num_grasps,
                "seed": args.seed,
                "latent": args.latent,
                "refine_steps": steps,
                "halo_refine_steps": args.halo_refine_steps if args.halo_refine else 0,
                "grip_depth_mm": args.grip_depth_mm if args.halo_refine else 0.0,
                "support_axis": args.support_axis if args.halo_refine else None,
                "oversample": args.oversample,
                "halo_refine_seconds": refine_seconds,
                "object_points": n_points,
                "resolution": [args.resolution_0, args.upsampling_steps],
                "contact_tol_m": args.contact_tol,
                "objects": objects_info,
                "diversity": json_safe(summary.diversity.as_dict()),
                "units": "metres",
            },
            indent=2,
        ),
    )
    print(report[report.index("| object") :], end="")
    print(f"wrote {len(results)} grasp(s) of {len(files)} object(s) to {out}")
    return 0


def add_parser(commands) -> None:
    """Register ``halo generate grasps``."""
    p = commands.group("generate").add_parser(
        "grasps", help="grasps for object meshes from a HALO-VAE checkpoint"
    )
    p.description = (
        "Sample grasps (21 keypoints) for object meshes with a trained HALO-VAE, mesh each hand with the frozen "
        "HALO base, score it (interpenetration volume, penetration depth, contact, diversity) and write "
        "keypoints (.npy), hand and object meshes (.ply), renders and summary tables (the layout `halo eval "
        "grasps` reads). Meshes are expected in metres."
    )
    p.add_argument("--checkpoint", required=True, help="HALO-VAE Lightning checkpoint (.ckpt from train.py)")
    add_trust_checkpoint_arg(p)
    p.add_argument(
        "--objects",
        required=True,
        nargs="+",
        help="object mesh files (.ply/.obj/.stl/.off) and/or folders of them",
    )
    p.add_argument("-n", "--num-grasps", type=int, default=20, help="grasps per object (default 20)")
    p.add_argument("--out", default=None, help=f"output folder (default {DEFAULT_OUT}/grasps-<checkpoint>)")
    p.add_argument(
        "--halo-checkpoint",
        default=None,
        help="HALO base checkpoint (default: the path recorded in the VAE checkpoint)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the object samples and latent draws (default 0)"
    )
    p.add_argument(
        "--latent",
        choices=["standard", "fitted"],  # halo.grasp.vae.LATENTS (not imported here: torch at --help)
        default="standard",
        help="where z is drawn: standard = N(0, I) (the original); fitted = a Gaussian fitted to the "
        "training grasps' posterior during training (more varied grasps, more overlap before "
        "--halo-refine; README, HALO-VAE)",
    )
    refine = p.add_mutually_exclusive_group()
    refine.add_argument(
        "--refine", dest="refine", action="store_true", default=None, help="apply the refinement net"
    )
    refine.add_argument("--no-refine", dest="refine", action="store_false", help="raw decoder output")
    p.add_argument(
        "--halo-refine",
        action="store_true",
        help="test-time refinement through HALO's occupancy (halo.grasp.refine; as `halo refine grasps`)",
    )
    p.add_argument(
        "--halo-refine-steps",
        type=int,
        default=80,
        help="Adam steps of --halo-refine (default 80)",
    )
    add_grip_depth_arg(p)
    add_support_axis_arg(p)
    p.add_argument(
        "--oversample",
        type=int,
        default=1,
        metavar="K",
        help="draw K x n grasps per object (with --halo-refine: refine them all, K times the refinement time) "
        "and keep the n whose final hands touch it from the most opposing sides and, with --support-axis, whose "
        "contacts can best carry it against that gravity (halo.grasp.selection: hands touching one side only drop "
        "in simulation; README, HALO-VAE; default 1)",
    )
    p.add_argument(
        "--object-points", type=int, default=None, help="surface samples per object (default: as in training)"
    )
    p.add_argument(
        "--scale", type=float, default=1.0, help="multiply the mesh vertices by this first (e.g. 0.001)"
    )
    p.add_argument(
        "--rescale",
        default="auto",
        choices=["auto", "warn", "never"],
        help="a mesh clearly in cm/mm: rescale with a warning (auto, default), only warn, or do nothing",
    )
    add_extraction_args(p, GRASP_UPSAMPLING_STEPS)
    p.add_argument(
        "--contact-tol",
        type=float,
        default=0.005,
        help="contact tolerance in metres (default 0.005; 0 = HALO's)",
    )
    p.add_argument(
        "--cluster-k",
        type=int,
        default=20,
        help="k-means clusters of the diversity (default 20, HALO; capped at half the number of grasps)",
    )
    p.add_argument("--render-size", type=int, default=256, help="pixels per render tile (default 256)")
    p.add_argument("--no-render", action="store_true", help="no renders")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_generate_grasps)
