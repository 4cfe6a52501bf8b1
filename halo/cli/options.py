"""Options declared once for every ``halo`` command that takes them: MISE extraction settings and the grasp
metric settings (``halo intersect``, ``halo eval grasps``), with their checks."""

from __future__ import annotations

import argparse
import math
import warnings
from pathlib import Path

from halo.cli.common import CliError
from halo.utils.progress import note

__all__ = [
    "DEFAULT_RESOLUTION_0",
    "DEFAULT_UPSAMPLING_STEPS",
    "GRASP_UPSAMPLING_STEPS",
    "GRAVITY_AXES",
    "SIM_COLUMN",
    "add_extraction_args",
    "add_grasp_metric_args",
    "add_grip_depth_arg",
    "add_support_axis_arg",
    "check_extraction_args",
    "check_grasp_metric_args",
    "check_grip_depth",
    "gravity",
    "support_direction",
    "load_mesh_arg",
    "mesh_user_errors",
]

#: MISE defaults of every command that meshes hands (the original's generation config: 32 / 2,
#: effective 128).
DEFAULT_RESOLUTION_0 = 32
DEFAULT_UPSAMPLING_STEPS = 2
#: Grasp scoring meshes finer (effective 256): the interpenetration volume is counted on a 1 mm
#: grid, and a coarser hand surface moves it by whole voxel layers.  ``halo generate grasps`` and
#: ``halo eval grasps`` share it, so a grasp meshed by either scores the same.
GRASP_UPSAMPLING_STEPS = 3


# ----------------------------------------------------------------------------- MISE


def add_extraction_args(
    p: argparse.ArgumentParser,
    upsampling_steps: int = DEFAULT_UPSAMPLING_STEPS,
    what: str = "HALO meshing",
) -> None:
    """``--resolution-0`` / ``--upsampling-steps`` (MISE; effective resolution = resolution_0 * 2**steps)."""
    p.add_argument(
        "--resolution-0",
        type=int,
        default=DEFAULT_RESOLUTION_0,
        help=f"{what}: MISE coarse grid (default {DEFAULT_RESOLUTION_0})",
    )
    p.add_argument(
        "--upsampling-steps",
        type=int,
        default=upsampling_steps,
        help=f"{what}: MISE refinements; effective resolution = resolution_0 * 2**steps "
        f"(default {upsampling_steps}: {DEFAULT_RESOLUTION_0 * 2**upsampling_steps})",
    )
    p.add_argument(
        "--interpolate",
        choices=["logit", "probability"],
        default="logit",
        help=f"{what}: field marching cubes interpolates: logit (smooth at low resolution, default) or "
        "probability (the original's meshes)",
    )


def check_extraction_args(args: argparse.Namespace) -> None:
    if args.resolution_0 < 2 or args.upsampling_steps < 0:
        raise CliError(
            f"--resolution-0 must be >= 2 and --upsampling-steps >= 0, got {args.resolution_0} / "
            f"{args.upsampling_steps}"
        )


# ----------------------------------------------------------------------------- grasp metrics

SIM_COLUMN = "sim_displacement_m"
GRAVITY_AXES = {
    "-z": (0, 0, -1),
    "+z": (0, 0, 1),
    "-y": (0, -1, 0),
    "+y": (0, 1, 0),
    "-x": (-1, 0, 0),
    "+x": (1, 0, 0),
}
G_M_S2 = 9.8  # m/s^2


def mesh_user_errors() -> tuple[type[Exception], ...]:
    """Exceptions caused by the user's files or environment (reported, never a traceback)."""
    from halo.grasp.simulation import OptionalDependencyError
    from halo.utils.errors import InputError

    return (InputError, OptionalDependencyError)


def load_mesh_arg(path: Path, args: argparse.Namespace, *, require_watertight: bool = False):
    """load_mesh_m with the CLI's --scale / --rescale; unit warnings go to stderr as one line each."""
    from halo.geometry.mesh_io import load_mesh_m

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mesh = load_mesh_m(
            path, scale=args.scale, rescale=args.rescale, require_watertight=require_watertight
        )
    for w in caught:
        note(f"warning: {w.message}")
    return mesh


def gravity(args: argparse.Namespace) -> tuple[float, float, float]:
    """Gravity (m/s^2) along --gravity-axis."""
    return tuple(G_M_S2 * c for c in GRAVITY_AXES[args.gravity_axis])


def check_grasp_metric_args(args: argparse.Namespace) -> None:
    if not args.pitch_mm > 0:
        raise CliError(f"--pitch-mm must be > 0, got {args.pitch_mm}")
    if args.contact_tol_mm < 0:
        raise CliError(f"--contact-tol-mm must be >= 0, got {args.contact_tol_mm}")
    if not args.scale > 0:
        raise CliError(f"--scale must be > 0, got {args.scale}")
    if args.simulate:
        from halo.grasp.metrics import OptionalDependencyError, require_pybullet

        try:
            require_pybullet()
        except OptionalDependencyError as exc:
            raise CliError(f"--simulate: {exc}") from exc


def add_grasp_metric_args(p: argparse.ArgumentParser) -> None:
    """--pitch-mm, --contact-tol-mm, --convex-hull, --scale, --rescale, --simulate, --gravity-axis."""
    p.add_argument(
        "--pitch-mm", type=float, default=1.0, help="interpenetration grid spacing in mm (default 1)"
    )
    p.add_argument(
        "--contact-tol-mm",
        type=float,
        default=5.0,
        help="contact = a hand vertex inside or within this distance of the object (default 5 = GraspTTA; "
        "0 = HALO's contact ratio)",
    )
    p.add_argument(
        "--convex-hull", action="store_true", help="evaluate against the object's convex hull (HALO on ObMan)"
    )
    p.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply every mesh's vertices by this first (0.01 for cm files, 0.001 for mm; default 1)",
    )
    p.add_argument(
        "--rescale",
        default="warn",
        choices=["warn", "auto", "never"],
        help="a mesh too large to be in metres: warn (default), auto (rescale by the guessed unit), never",
    )
    p.add_argument(
        "--simulate",
        action="store_true",
        help="also the simulation displacement (GraspTTA protocol; needs pybullet: pip install pybullet)",
    )
    p.add_argument(
        "--gravity-axis",
        default="-z",
        choices=sorted(GRAVITY_AXES),
        help="direction of gravity in the meshes' frame for --simulate (default -z, GRAB's world frame)",
    )


def add_trust_checkpoint_arg(p: argparse.ArgumentParser) -> None:
    """``--trust-checkpoint``: the explicit opt-in to full unpickling (every command that reads a checkpoint)."""
    p.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow full unpickling of the checkpoint (can run code from the file: only for files you trust)",
    )


def add_grip_depth_arg(p: argparse.ArgumentParser) -> None:
    """``--grip-depth-mm``: test-time refinement's grip (:attr:`halo.grasp.refine.RefineConfig.grip_depth_m`)."""
    p.add_argument(
        "--grip-depth-mm",
        type=float,
        default=0.0,
        help="refinement through HALO: fingers that touch the object close onto it until their skin is this "
        "deep in it, and that overlap is not penetration (default 0: off; 1: README, HALO-VAE)",
    )


def add_support_axis_arg(p: argparse.ArgumentParser) -> None:
    """``--support-axis``: refinement's support term (:attr:`halo.grasp.refine.RefineConfig.support_direction`)."""
    p.add_argument(
        "--support-axis",
        choices=sorted(GRAVITY_AXES),
        default=None,
        help="refinement through HALO: gravity's direction in the object's frame; the hand's skin must reach "
        "the object's underside, so a static hand can carry it (default: off; write it with '=', e.g. "
        "--support-axis=-z, --simulate's gravity; README, HALO-VAE)",
    )


def support_direction(args: argparse.Namespace) -> tuple[float, float, float] | None:
    """The unit gravity direction of ``--support-axis`` (None when off)."""
    return None if args.support_axis is None else tuple(float(c) for c in GRAVITY_AXES[args.support_axis])


def check_grip_depth(value: float) -> None:
    """One line for a grip depth that is not a finite number of millimetres >= 0."""
    if not math.isfinite(value) or value < 0:
        raise CliError(f"--grip-depth-mm must be a finite number of millimetres >= 0, got {value}")
