"""``halo intersect``: interpenetration, depth and contact of one hand mesh and one object mesh.

Metric definitions: :mod:`halo.grasp.metrics`.  Meshes are read with
:func:`halo.geometry.mesh_io.load_mesh_m` (metres; a mesh too large for metres gets a warning
with the guessed unit and the ``--scale`` to use).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from halo.cli.options import (
    SIM_COLUMN,
    add_grasp_metric_args,
    check_grasp_metric_args,
    gravity,
    load_mesh_arg,
)


def cmd_intersect(args: argparse.Namespace) -> int:
    """Metrics of one hand mesh against one object mesh."""
    from halo.grasp.metrics import grasp_metrics, simulation_displacement_m

    check_grasp_metric_args(args)
    # Bad files raise the library's errors; `halo` main() prints them as one line (exit 2).
    hand = load_mesh_arg(Path(args.hand), args)
    obj = load_mesh_arg(Path(args.object), args, require_watertight=not args.convex_hull)
    metrics = grasp_metrics(
        hand,
        obj,
        pitch_m=args.pitch_mm / 1000,
        contact_tol_m=args.contact_tol_mm / 1000,
        object_convex_hull=args.convex_hull,
        hand_name=args.hand,
        object_name=args.object,
    )
    displacement = None
    if args.simulate:
        displacement = simulation_displacement_m(hand, obj, gravity_m_s2=gravity(args))
    if args.json:
        record = {  # the three documented keys first, in this order
            "volume_cm3": metrics.volume_cm3,
            "depth_cm": metrics.depth_cm,
            "contact": metrics.contact,
            "min_distance_cm": metrics.min_distance_cm,
            "hand": args.hand,
            "object": args.object,
            "pitch_mm": args.pitch_mm,
            "contact_tol_mm": args.contact_tol_mm,
            "object_convex_hull": args.convex_hull,
        }
        if displacement is not None:
            record[SIM_COLUMN] = displacement
        print(json.dumps(record))
        return 0
    print(f"hand:   {args.hand} ({len(hand.vertices)} vertices)")
    print(
        f"object: {args.object} ({len(obj.vertices)} vertices{', convex hull' if args.convex_hull else ''})"
    )
    print(f"intersection volume  {metrics.volume_cm3:9.3f} cm^3  (grid pitch {args.pitch_mm:g} mm)")
    print(f"penetration depth    {metrics.depth_cm:9.3f} cm")
    print(
        f"min signed distance  {metrics.min_distance_cm:9.3f} cm    (negative = a hand vertex inside the object)"
    )
    print(
        f"contact              {'yes' if metrics.contact else 'no':>9s}       "
        f"(a hand vertex inside or within {args.contact_tol_mm:g} mm of the object)"
    )
    if displacement is not None:
        print(
            f"simulation displacement {displacement:6.4f} m  (object under gravity {args.gravity_axis}, 35 steps)"
        )
    return 0


def add_parser(commands) -> None:
    """Register ``halo intersect``."""
    p = commands.add_parser(
        "intersect", help="interpenetration volume, depth and contact of a hand and an object mesh"
    )
    p.description = (
        "Interpenetration of a hand mesh and an object mesh (.ply/.obj/.stl/.off, metres): volume (cm^3) on a "
        "voxel grid, max penetration depth of hand vertices (cm), min signed distance (cm) and contact. "
        "An open MANO hand (wrist hole) is sealed first; the object must be watertight (or use --convex-hull)."
    )
    p.add_argument("hand", help="hand mesh file (metres)")
    p.add_argument("object", help="object mesh file (metres, watertight)")
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (keys volume_cm3, depth_cm, contact, min_distance_cm, ...) and nothing else",
    )
    add_grasp_metric_args(p)
    p.set_defaults(func=cmd_intersect)
