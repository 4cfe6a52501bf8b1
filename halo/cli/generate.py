"""``halo generate grasps``: grasps for arbitrary object meshes from a trained HALO-VAE checkpoint.

Reads the VAE from its Lightning checkpoint without Lightning or Hydra
(:func:`halo.grasp.vae_checkpoint.load_grasp_vae`) and the frozen HALO base from the path recorded in the
checkpoint's hyper-parameters (``--halo-checkpoint`` overrides it).  For every object mesh
(.ply/.obj/.stl/.off, metres; a mesh clearly in mm or cm is rescaled with a warning, see
:func:`halo.geometry.mesh_io.load_mesh_m`) it samples ``-n`` grasps (object centred at its bounding-box
centre as in training, z ~ N(0, I) seeded, refined when the checkpoint says so), meshes every hand
with HALO and scores it (:mod:`halo.grasp.metrics`).  Output folder::

    <object>_obj.ply        the object mesh (metres, the input file's frame after rescaling)
    <object>_<i>.npy        grasp i: (21,3) float32 keypoints, metres, MANO order, same frame
    <object>_<i>_hand.ply   its HALO hand mesh (metres, same frame)
    <object>_render.png     the object's grasps rendered (hand + object), one tile per grasp
    summary.csv             one row per grasp: volume_cm3, depth_cm, min_distance_cm, contact, ...
    summary.md              per-object means, the overall row and the cluster diversity
    generation.json         checkpoint, HALO base, seed, refinement, objects and scales used

This is the layout ``halo eval grasps`` reads.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import warnings
from pathlib import Path

from halo.cli.eval import EvalCliError

DEFAULT_OUT = Path("outputs") / "generate"


class GraspCliError(EvalCliError):
    """A user-facing problem (printed as one line by :func:`halo.cli.app.main`, exit code 2)."""


def _object_files(specs: list[str]) -> list[Path]:
    from halo.geometry.mesh_io import MESH_SUFFIXES

    files: list[Path] = []
    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in MESH_SUFFIXES)
            if not found:
                raise GraspCliError(f"--objects {p}: no {'/'.join(MESH_SUFFIXES)} files in this folder")
            files += found
        elif p.is_file():
            if p.suffix.lower() not in MESH_SUFFIXES:
                raise GraspCliError(f"--objects {p}: unsupported mesh type (use {', '.join(MESH_SUFFIXES)})")
            files.append(p)
        else:
            raise GraspCliError(f"--objects {p}: no such file or folder")
    return files


def _object_names(files: list[Path]) -> list[str]:
    """File stems made safe for file names; duplicates get a numeric suffix."""
    names, seen = [], {}
    for f in files:
        base = (
            re.sub(r"[^A-Za-z0-9-]+", "-", f.stem).strip("-") or "object"
        )  # no "_": it separates object and grasp id
        count = seen.get(base, 0)
        seen[base] = count + 1
        names.append(base if count == 0 else f"{base}-{count + 1}")
    return names


def _load_models(args: argparse.Namespace):

    from halo.core.checkpoint import load_model
    from halo.grasp.vae import GraspVaeError
    from halo.grasp.vae_checkpoint import halo_fingerprint, load_grasp_vae

    try:
        vae, meta = load_grasp_vae(args.checkpoint, trust_pickle=args.trust_checkpoint)
    except GraspVaeError as exc:
        raise GraspCliError(str(exc)) from exc
    hp = meta["hyper_parameters"]
    halo_path = args.halo_checkpoint or hp.get("halo_checkpoint")
    if not halo_path:
        raise GraspCliError(
            f"{args.checkpoint}: records no HALO base checkpoint; pass --halo-checkpoint PATH (the HALO base "
            "the VAE was trained with)"
        )
    if not Path(halo_path).is_file():
        raise GraspCliError(
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
    import torch

    from halo.geometry.mesh_io import MeshFileError, load_mesh_m
    from halo.grasp.pipeline import (
        GRASP_TABLE_COLUMNS,
        OBJECT_TABLE_COLUMNS,
        diversity,
        evaluate_grasp,
        format_markdown_table,
        object_rows,
        progress,
        render_grasp,
        sample_surface_points,
        write_csv,
    )
    from halo.viz import render

    if args.num_grasps < 1:
        raise GraspCliError(f"-n must be >= 1, got {args.num_grasps}")
    if args.resolution_0 < 2 or args.upsampling_steps < 0:
        raise GraspCliError("--resolution-0 must be >= 2 and --upsampling-steps >= 0")
    files = _object_files(args.objects)
    names = _object_names(files)
    vae, halo, meta, halo_path = _load_models(args)
    hp = meta["hyper_parameters"]
    refine = hp.get("refine_at_generation", False) if args.refine is None else args.refine
    steps = int(hp.get("refine_steps", 3)) if refine else 0
    n_points = int(args.object_points or hp.get("object_points", 600))
    out = Path(args.out) if args.out else DEFAULT_OUT / f"grasps-{Path(args.checkpoint).stem}"
    out.mkdir(parents=True, exist_ok=True)

    results, objects_info = [], []
    for k, (path, name) in enumerate(zip(files, names, strict=True)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                mesh = load_mesh_m(path, name=f"object {path}", scale=args.scale, rescale=args.rescale)
            except MeshFileError as exc:
                raise GraspCliError(str(exc)) from exc
        for w in caught:  # unit warnings: say them once, on stderr, in the CLI's voice
            print(f"halo generate grasps: warning: {w.message}", file=sys.stderr)
        mesh.vertices = np.asarray(mesh.vertices, dtype=np.float32).astype(
            np.float64
        )  # as the .ply stores it
        if not mesh.is_watertight:
            print(
                f"halo generate grasps: warning: {path} is not watertight; interpenetration metrics use its "
                "convex hull",
                file=sys.stderr,
            )
        center = np.asarray(mesh.bounds, dtype=np.float64).mean(axis=0)
        points = sample_surface_points(mesh, n_points, seed=args.seed + k) - center.astype(np.float32)
        generator = torch.Generator().manual_seed(args.seed * 1000 + k)
        kps = vae.sample(torch.from_numpy(points), args.num_grasps, generator=generator, refine_steps=steps)
        kps = kps.numpy().astype(np.float64) + center  # back to the file's frame
        mesh.export(out / f"{name}_obj.ply")
        eval_obj = mesh if mesh.is_watertight else mesh.convex_hull
        tiles, labels = [], []
        for i, kp in progress(enumerate(kps), len(kps), f"{name}", enabled=not args.no_progress):
            r = evaluate_grasp(
                halo,
                eval_obj,
                kp,
                object_name=name,
                index=i,
                resolution_0=args.resolution_0,
                upsampling_steps=args.upsampling_steps,
                contact_tol_m=args.contact_tol,
            )
            np.save(out / f"{name}_{i}.npy", r.keypoints.astype(np.float32))
            if r.hand is not None and len(r.hand.faces):
                r.hand.export(out / f"{name}_{i}_hand.ply")
            if r.error:
                print(f"halo generate grasps: warning: {name} grasp {i}: {r.error}", file=sys.stderr)
            results.append(r)
            if not args.no_render:
                tiles.append(render_grasp(r.hand, mesh, r.keypoints, size=args.render_size))
                m = r.metrics
                labels.append(
                    f"{i}: {m.volume_cm3:.1f} cm3, {'contact' if m.contact else 'no contact'}"
                    if m
                    else f"{i}: failed"
                )
        if tiles:
            grid = render.render_grid(tiles, ncols=min(5, len(tiles)), labels=labels, pad=2)
            render.save_png(grid, out / f"{name}_render.png")
        objects_info.append(
            {
                "name": name,
                "file": str(path),
                "center_m": center.tolist(),
                "watertight": bool(mesh.is_watertight),
            }
        )

    per_object = object_rows(results)
    div = diversity(np.stack([r.keypoints for r in results]), k=args.cluster_k, seed=args.seed)
    write_csv([r.row() for r in results], out / "summary.csv", GRASP_TABLE_COLUMNS)
    table = format_markdown_table(per_object, OBJECT_TABLE_COLUMNS)
    diversity_line = (
        f"diversity over all {len(results)} grasps: entropy {div['entropy']:.3f} nats (k={div['k']}), "
        f"cluster size {div['cluster_size_cm']:.3f} cm"
    )
    (out / "summary.md").write_text(f"# Generated grasps ({args.checkpoint})\n\n{table}\n{diversity_line}\n")
    (out / "generation.json").write_text(
        json.dumps(
            {
                "checkpoint": str(args.checkpoint),
                "halo_checkpoint": halo_path,
                "global_step": meta.get("global_step"),
                "grasps_per_object": args.num_grasps,
                "seed": args.seed,
                "refine_steps": steps,
                "object_points": n_points,
                "resolution": [args.resolution_0, args.upsampling_steps],
                "contact_tol_m": args.contact_tol,
                "objects": objects_info,
                "units": "metres",
            },
            indent=2,
        )
    )
    print(table, end="")
    print(diversity_line)
    print(f"wrote {len(results)} grasp(s) of {len(files)} object(s) to {out}")
    return 0


def add_generate_grasps_parser(gen_sub) -> None:
    """Register ``halo generate grasps`` on the ``halo generate`` subparsers."""
    p = gen_sub.add_parser("grasps", help="grasps for object meshes from a HALO-VAE checkpoint")
    p.description = (
        "Sample grasps (21 keypoints) for object meshes with a trained HALO-VAE, mesh each hand with the frozen "
        "HALO base, score it (interpenetration volume, penetration depth, contact, diversity) and write "
        "keypoints (.npy), hand and object meshes (.ply), renders and summary tables (the layout `halo eval "
        "grasps` reads). Meshes are expected in metres."
    )
    p.add_argument("--checkpoint", required=True, help="HALO-VAE Lightning checkpoint (.ckpt from train.py)")
    p.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow full unpickling of the checkpoint (can run code from the file: only for files you trust)",
    )
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
    refine = p.add_mutually_exclusive_group()
    refine.add_argument(
        "--refine", dest="refine", action="store_true", default=None, help="apply the refinement net"
    )
    refine.add_argument("--no-refine", dest="refine", action="store_false", help="raw decoder output")
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
    p.add_argument("--resolution-0", type=int, default=32, help="HALO mesh coarse grid (default 32)")
    p.add_argument(
        "--upsampling-steps", type=int, default=3, help="MISE refinements (default 3: effective 256)"
    )
    p.add_argument(
        "--contact-tol",
        type=float,
        default=0.005,
        help="contact tolerance in metres (default 0.005; 0 = HALO's)",
    )
    p.add_argument("--cluster-k", type=int, default=20, help="k-means clusters of the diversity (default 20)")
    p.add_argument("--render-size", type=int, default=256, help="pixels per render tile (default 256)")
    p.add_argument("--no-render", action="store_true", help="no renders")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_generate_grasps)
