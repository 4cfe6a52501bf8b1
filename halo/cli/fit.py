"""``halo fit``: 21 keypoints (metres, MANO order, the input's frame) from a hand mesh or point cloud.

    halo fit --checkpoint CKPT --points FILE_OR_DIR --out OUT.npy [--units m|cm|mm] [--left] [--partial]

FILE is a mesh (.ply/.obj/.off/.stl: its surface is sampled) or a point cloud (.npy (N,3) or
(N,6) with normals, .npz with ``points`` [+ ``normals``], .ply without faces).  A folder fits
every such file in it, in one batch.  Writes OUT.npy ((21,3), or (T,21,3) for a folder, files
in sorted order), OUT.json (one report per input: losses, iterations, time, surface error,
converged flag and reason) and OUT.png (input points over the fitted HALO mesh | skeleton).

Problems with the inputs print one line and exit with code 2; a fit that did not converge
prints a warning line per input, says so in the report, and exits with code 3.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from halo.cli.common import DEFAULT_CHECKPOINT_ENV, CliError, default_checkpoint, load_halo_model
from halo.cli.options import add_trust_checkpoint_arg
from halo.utils.atomic import atomic_write_json, atomic_write_npy


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``halo fit`` on the root parser's subparsers."""
    p = subparsers.add_parser(
        "fit", help="keypoints from a hand mesh / point cloud (inverse of 'halo mesh')", description=__doc__
    )
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument(
        "--checkpoint", default=default_checkpoint(), help="HALO base checkpoint (original or own)"
    )
    add_trust_checkpoint_arg(p)
    p.add_argument("--points", required=True, help="mesh / point cloud file, or a folder of them")
    p.add_argument(
        "--out", required=True, help="output keypoints .npy (report .json and render .png beside it)"
    )
    p.add_argument(
        "--units",
        choices=["m", "cm", "mm"],
        default=None,
        help="input units (default: guessed from the size)",
    )
    p.add_argument("--left", action="store_true", help="the input is a left hand")
    p.add_argument(
        "--partial", action="store_true", help="single-view cloud (free space only towards the camera)"
    )
    p.add_argument(
        "--camera", type=float, nargs=3, default=(0.0, 0.0, 0.0), metavar=("X", "Y", "Z"),
        help="camera centre of a --partial cloud, in the input's units (default: the origin)",
    )  # fmt: skip
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    p.add_argument(
        "--iterations", type=int, default=None, help="fine-stage iterations (default: FitConfig's)"
    )
    p.add_argument(
        "--coarse-iterations", type=int, default=None, help="coarse-stage iterations (default: FitConfig's)"
    )
    p.add_argument(
        "--pose-prior-weight", type=float, default=None,
        help="weight of the learned pose prior on single views (default: FitConfig's; 0: off, for poses unlike natural hands)",
    )  # fmt: skip
    p.add_argument("--no-render", action="store_true", help="skip the PNG")
    p.set_defaults(func=cmd_fit)
    return p


def _input_files(path: Path) -> list[Path]:
    from halo.fit.inputs import POINT_SUFFIXES
    from halo.geometry.mesh_io import MESH_SUFFIXES

    suffixes = set(MESH_SUFFIXES) | set(POINT_SUFFIXES)
    if path.is_dir():
        files = sorted(
            f for f in path.iterdir() if f.suffix.lower() in suffixes and not f.name.startswith(".")
        )
        if not files:
            raise CliError(f"{path}: no mesh or point files ({', '.join(sorted(suffixes))}) in this folder")
        return files
    if not path.exists():
        raise CliError(f"{path}: no such file or folder")
    return [path]


def render_fit(model, surfaces, results) -> np.ndarray:
    """One row per hand: input points | fitted HALO mesh over the points | fitted skeleton over them."""
    from halo.meshing.hand_mesh import extract_hand_mesh
    from halo.viz import render

    tiles, labels = [], []
    rng = np.random.default_rng(0)
    for surface, result in zip(surfaces, results, strict=True):
        mesh = extract_hand_mesh(
            model, result.keypoints, is_left=result.report.is_left, resolution_0=32, upsampling_steps=2
        ).mesh
        pts = surface.points[rng.choice(len(surface.points), min(3000, len(surface.points)), replace=False)]
        cloud = render.points_mesh(pts, radius=0.0012)
        skeleton = render.skeleton_mesh(result.keypoints)
        tiles.append(render.render_scene([cloud], colors=[(0.2, 0.2, 0.2)]))
        tiles.append(
            render.render_scene([mesh, cloud], colors=[None, (0.15, 0.15, 0.15)])
            if len(mesh.faces)
            else np.full_like(tiles[-1], 255)
        )
        tiles.append(render.render_scene([skeleton, cloud], colors=[None, (0.65, 0.65, 0.65)]))
        status = "" if result.report.converged else " (NOT converged)"
        labels += [f"{Path(surface.name).name}: input points", f"fitted HALO mesh{status}", "fitted skeleton"]
    return render.render_grid(tiles, ncols=3, labels=labels, pad=4)


def cmd_fit(args: argparse.Namespace) -> int:
    """Run ``halo fit``; returns the exit code (errors in the inputs print one line, code 2)."""
    from halo.core.checkpoint import CheckpointError
    from halo.fit import FitConfig, FitInputError, fit_hands, load_hand_surface

    try:
        out = Path(args.out)
        if out.suffix != ".npy":
            raise CliError(f"--out {out}: must end in .npy (keypoints); the report and render go beside it")
        if not args.checkpoint:
            raise CliError(f"no checkpoint given: pass --checkpoint PATH or set ${DEFAULT_CHECKPOINT_ENV}")
        files = _input_files(Path(args.points))
        surfaces = [
            load_hand_surface(f, units=args.units, partial=args.partial, camera=args.camera, seed=i)
            for i, f in enumerate(files)
        ]
        if args.pose_prior_weight is not None and not (
            np.isfinite(args.pose_prior_weight) and args.pose_prior_weight >= 0
        ):
            raise CliError(f"--pose-prior-weight must be a finite number >= 0, got {args.pose_prior_weight}")
        model, _ = load_halo_model(args.checkpoint, args.trust_checkpoint)
    except (CliError, FitInputError, CheckpointError) as exc:
        print(f"halo fit: error: {exc}", file=sys.stderr)
        return 2
    config = FitConfig()
    if args.iterations is not None:
        config.fine_iterations = args.iterations
    if args.pose_prior_weight is not None:
        config.pose_prior_weight = args.pose_prior_weight
    if args.coarse_iterations is not None:
        config.coarse_iterations = args.coarse_iterations
        config.coarse_rigid_iterations = min(config.coarse_rigid_iterations, args.coarse_iterations)
    model = model.to(args.device)
    results = fit_hands(model, surfaces, is_left=args.left, config=config, device=args.device)
    keypoints = np.stack([r.keypoints for r in results]).astype(np.float32)
    if Path(args.points).is_file():
        keypoints = keypoints[0]
    atomic_write_npy(out, keypoints)
    reports = [r.report.to_dict() for r in results]
    report_path = out.with_suffix(".json")
    atomic_write_json(report_path, reports if len(reports) > 1 else reports[0])
    if not args.no_render:
        from halo.viz.render import save_png

        image = render_fit(model.cpu(), surfaces, results)
        save_png(image, out.with_suffix(".png"))  # atomic
    bad = [r for r in results if not r.report.converged]
    for r in bad:
        print(f"halo fit: warning: {r.report.name}: did not converge: {r.report.reason}", file=sys.stderr)
    mean_t = np.mean([r.report.time_s for r in results])
    print(
        f"wrote {out} ({len(results)} hand(s), {mean_t:.1f} s per hand), {report_path}"
        + ("" if args.no_render else f", {out.with_suffix('.png')}")
        + f"; converged {len(results) - len(bad)}/{len(results)}"
    )
    return 3 if bad else 0
