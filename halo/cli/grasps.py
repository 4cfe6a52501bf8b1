"""``halo eval grasps``: physical plausibility and diversity of a folder of grasps.

Metric definitions: :mod:`halo.grasp.metrics`.  Meshes are read with
:func:`halo.geometry.mesh_io.load_mesh_m` (metres; a mesh too large for metres gets a warning
with the guessed unit and the ``--scale`` to use).

The grasp folder (flat ``DIR/<object>_<i>.npy`` + ``DIR/<object>_<i>_hand.ply`` + ``DIR/<object>_obj.ply``, or one
subfolder per object) is :mod:`halo.grasp.folder`.  A grasp with keypoints but no hand mesh is meshed with
HALO (``--checkpoint``; meshes written to ``OUT/hands/``); keypoints are used for the diversity
(:func:`halo.grasp.diversity.grasp_diversity`).

Outputs in ``--out``: ``grasp_metrics.csv`` (one row per scored grasp: ``object, grasp,
volume_cm3, depth_cm, min_distance_cm, contact`` (1/0) and with ``--simulate``
``sim_displacement_m``), ``grasp_summary.md`` (a table per object and over all grasps,
plus the diversity), ``summary.json`` (the same numbers, the settings and the skipped
files).  A bad file (unreadable, empty, non-watertight object, missing object mesh)
is reported with its name and skipped; the run fails (exit code 2) only when no
grasp could be scored.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import textwrap
from pathlib import Path

import numpy as np

from halo.cli.common import DEFAULT_EVAL_OUT, CliError, default_checkpoint, json_safe, load_halo_model
from halo.cli.options import (
    GRASP_UPSAMPLING_STEPS,
    SIM_COLUMN,
    add_extraction_args,
    add_grasp_metric_args,
    add_trust_checkpoint_arg,
    check_extraction_args,
    check_grasp_metric_args,
    gravity,
    load_mesh_arg,
    mesh_user_errors,
)
from halo.geometry.mesh_io import save_mesh
from halo.grasp.folder import discover_grasps, find_object_mesh, load_grasp_keypoints
from halo.utils.atomic import atomic_write_text
from halo.utils.progress import note, progress_bar
from halo.utils.tables import write_csv

CSV_COLUMNS = ("object", "grasp", "volume_cm3", "depth_cm", "min_distance_cm", "contact")


def _fmt(value: float, digits: int = 3) -> str:
    return (
        "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"
    )


def _summary_rows(rows: list[dict], simulate: bool) -> dict[str, dict]:
    """Per object and "all": :func:`summarize_grasp_metrics` (+ mean simulation displacement)."""
    from halo.grasp.metrics import GraspMetrics, summarize_grasp_metrics

    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["object"], []).append(row)
    out = {}
    for name, members in [*sorted(groups.items()), ("all", rows)]:
        entry = summarize_grasp_metrics(
            [
                GraspMetrics(r["volume_cm3"], r["depth_cm"], r["min_distance_cm"], bool(r["contact"]))
                for r in members
            ]
        )
        if simulate:
            disp = np.array([r[SIM_COLUMN] for r in members], dtype=np.float64)
            ok = np.isfinite(disp)
            entry["mean_sim_displacement_m"] = float(disp[ok].mean()) if ok.any() else float("nan")
            entry["sim_failures"] = int((~ok).sum())
        out[name] = entry
    return out


def _markdown(summary: dict[str, dict], cluster: dict, header: list[str], simulate: bool) -> str:
    cols = ["object", "grasps", "mean volume (cm^3)", "mean depth (cm)", "contact ratio"]
    if simulate:
        cols.append("mean sim. displacement (m)")
    lines = [*header, "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for name, s in summary.items():
        cells = [
            "**all**" if name == "all" else name,
            str(s["count"]),
            _fmt(s["mean_volume_cm3"]),
            _fmt(s["mean_depth_cm"]),
            _fmt(s["contact_ratio"]),
        ]
        if simulate:
            cells.append(_fmt(s["mean_sim_displacement_m"], 4))
        lines.append("| " + " | ".join(cells) + " |")
    capped = (
        f", asked {cluster['k_requested']}: capped at half the grasps"
        if 0 < cluster["k"] < cluster["k_requested"]
        else ""
    )
    lines += ["", f"## Diversity (k-means over canonicalized keypoints, k = {cluster['k']}{capped})", ""]
    if "skipped" in cluster:
        lines.append(f"skipped: {cluster['skipped']}")
    else:
        lines.append(
            f"| grasps | entropy | max entropy (ln k) | cluster size (cm) |\n|---|---|---|---|\n"
            f"| {cluster['n_samples']} | {cluster['entropy']:.3f} | {cluster['max_entropy']:.3f} | "
            f"{cluster['cluster_size_cm']:.3f} |"
        )
    return "\n".join(lines) + "\n"


class _HaloMesher:
    """Meshes keypoints with the HALO checkpoint, loaded on first use (only keypoint-only grasps need it)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.model = None
        self.error: str | None = None

    def __call__(self, keypoints: np.ndarray):
        if self.error is not None:
            raise CliError(self.error)
        if self.model is None:
            from halo.core.checkpoint import CheckpointError

            ckpt = self.args.checkpoint
            try:
                if ckpt is not None and not Path(ckpt).is_file():
                    raise CliError(f"{ckpt}: checkpoint file not found")
                self.model, _ = load_halo_model(ckpt, self.args.trust_checkpoint)
            except (CliError, CheckpointError) as exc:
                self.error = f"cannot mesh keypoints with HALO: {exc}"
                raise CliError(self.error) from exc
        from halo.meshing.hand_mesh import extract_hand_mesh

        hand = extract_hand_mesh(
            self.model,
            keypoints,
            resolution_0=self.args.resolution_0,
            upsampling_steps=self.args.upsampling_steps,
            interpolate=self.args.interpolate,
        )
        return hand.mesh


def cmd_eval_grasps(args: argparse.Namespace) -> int:
    """Score every grasp of a folder; see the module docstring for the layout and outputs."""
    from halo.grasp.diversity import grasp_diversity
    from halo.grasp.metrics import grasp_metrics, prepare_object_mesh, simulation_displacement_m

    check_grasp_metric_args(args)
    check_extraction_args(args)
    if args.k < 1:
        raise CliError(f"--k must be >= 1, got {args.k}")
    grasps_dir = Path(args.grasps)
    if not grasps_dir.is_dir():
        raise CliError(f"--grasps {grasps_dir}: no such folder")
    objects_dir = Path(args.objects) if args.objects else None
    if objects_dir is not None and not objects_dir.is_dir():
        raise CliError(f"--objects {objects_dir}: no such folder")
    out = Path(args.out) if args.out else DEFAULT_EVAL_OUT / f"grasps-{grasps_dir.resolve().name}"

    discovery = discover_grasps(grasps_dir)
    skipped = list(discovery.skipped)
    for s in skipped:
        note(f"skipped {s['file']}: {s['reason']}")
    if not discovery.grasps:
        raise CliError(
            f"{grasps_dir}: no grasp files found (expected <object>_<i>.npy and/or <object>_<i>_hand.ply; "
            "see 'halo eval grasps --help')"
        )
    user_errors = (*mesh_user_errors(), CliError, ValueError)
    mesher = _HaloMesher(args)
    objects: dict[Path, object] = {}  # object file -> prepared mesh, or the error text
    rows: list[dict] = []
    keypoints_of: dict[str, np.ndarray] = {}
    n_halo = 0

    def skip(file: Path | str, reason: str) -> None:
        reason = reason.removeprefix(f"{file}: ")  # most messages already start with the file name
        skipped.append({"file": str(file), "reason": reason})
        note(f"skipped {file}: {reason}")

    bar = progress_bar(discovery.grasps, desc="grasps", unit="grasp", enabled=not args.no_progress)
    for g in bar:
        obj_path = find_object_mesh(g.object, g.folder, grasps_dir, objects_dir)
        if obj_path is None:
            searched = ", ".join(
                str(d) for d in dict.fromkeys(x for x in (objects_dir, g.folder, grasps_dir) if x)
            )
            skip(
                g.hand_mesh or g.keypoints,
                f"no object mesh for '{g.object}' ({g.object}_obj.* or {g.object}.* in {searched})",
            )
            continue
        if obj_path not in objects:
            try:
                raw = load_mesh_arg(
                    obj_path, args, require_watertight=not (args.convex_hull or args.hull_if_open)
                )
                use_hull = args.convex_hull or (args.hull_if_open and not raw.is_watertight)
                if use_hull and not args.convex_hull:
                    print(
                        f"halo eval grasps: {obj_path.name}: not watertight, evaluated against its convex hull"
                    )
                objects[obj_path] = prepare_object_mesh(raw, convex_hull=use_hull, name=str(obj_path))
            except user_errors as exc:
                objects[obj_path] = str(exc)
        if isinstance(objects[obj_path], str):
            skip(g.hand_mesh or g.keypoints, f"object mesh unusable: {objects[obj_path]}")
            continue
        obj_mesh = objects[obj_path]

        keypoints = None
        if g.keypoints is not None:
            try:
                keypoints = load_grasp_keypoints(g.keypoints)
            except user_errors as exc:
                if g.hand_mesh is None:
                    skip(g.keypoints, str(exc))
                    continue
                skip(g.keypoints, f"{exc} (grasp scored from its mesh, left out of the diversity)")
        try:
            if g.hand_mesh is not None:
                hand = load_mesh_arg(g.hand_mesh, args)
                hand_name = str(g.hand_mesh)
            else:
                hand = mesher(keypoints)
                hand_name = f"HALO mesh of {g.keypoints}"
                if len(hand.faces) == 0:
                    raise CliError(f"{g.keypoints}: HALO produced an empty hand mesh")
                dst = out / "hands" / f"{g.grasp}_hand.ply"
                dst.parent.mkdir(parents=True, exist_ok=True)
                save_mesh(hand, dst)
                n_halo += 1
            metrics = grasp_metrics(
                hand,
                obj_mesh,
                pitch_m=args.pitch_mm / 1000,
                contact_tol_m=args.contact_tol_mm / 1000,
                hand_name=hand_name,
                object_name=str(obj_path),
            )
        except user_errors as exc:
            skip(g.hand_mesh or g.keypoints, str(exc))
            continue
        row = {"object": g.object, "grasp": g.grasp, **metrics.as_dict()}
        row["contact"] = int(metrics.contact)
        if args.simulate:
            try:
                row[SIM_COLUMN] = simulation_displacement_m(hand, obj_mesh, gravity_m_s2=gravity(args))
            except Exception as exc:  # a physics failure for one grasp must not end the batch  # noqa: BLE001
                note(
                    f"warning: simulation failed for {g.grasp} ({type(exc).__name__}: {exc}); recorded as nan"
                )
                row[SIM_COLUMN] = float("nan")
        rows.append(row)
        if keypoints is not None:
            keypoints_of[g.grasp] = keypoints
    bar.close()

    if not rows:
        raise CliError(f"no grasp could be scored ({len(skipped)} skipped; reasons above)")

    # Diversity over the grasps that have keypoints (the definition `halo generate grasps` reports).
    if not keypoints_of:
        k_info = {
            "k": 0,
            "k_requested": args.k,
            "skipped": "no grasp has keypoints (hand meshes only): put <grasp id>.npy (21,3 metres) next to "
            "each mesh",
        }
    else:
        try:
            diversity = grasp_diversity(
                np.stack(list(keypoints_of.values())), k=args.k, seed=args.seed, init=args.kmeans_init
            )
            k_info = diversity.as_dict()
        except ValueError as exc:  # e.g. keypoints the canonical frame cannot handle
            k_info = {"k": 0, "k_requested": args.k, "skipped": str(exc)}

    out.mkdir(parents=True, exist_ok=True)
    columns = [*CSV_COLUMNS, *([SIM_COLUMN] if args.simulate else [])]
    csv_path = out / "grasp_metrics.csv"
    write_csv(
        [{c: (f"{row[c]:.6g}" if isinstance(row[c], float) else row[c]) for c in columns} for row in rows],
        csv_path,
        columns,
    )
    summary = _summary_rows(rows, args.simulate)
    header = [
        "# Grasp evaluation",
        "",
        f"- grasps: `{grasps_dir}` ({len(rows)} scored, {len(skipped)} skipped"
        + (f", {n_halo} hands meshed with HALO from keypoints" if n_halo else "")
        + ")",
        f"- objects: `{objects_dir}` first, then the grasp folders"
        if objects_dir
        else "- objects: the grasp folders",
        f"- interpenetration grid pitch {args.pitch_mm:g} mm; contact = a hand vertex inside or within "
        f"{args.contact_tol_mm:g} mm of the object; object convex hull: "
        + ("yes" if args.convex_hull else "if not watertight" if args.hull_if_open else "no"),
        "- units: volume cm^3, depth cm (max penetration of hand vertices), simulation displacement m",
        f"- written: {datetime.datetime.now().isoformat(timespec='seconds')}",
        "",
    ]
    md_path = out / "grasp_summary.md"
    table = _markdown(summary, k_info, header, args.simulate)
    atomic_write_text(md_path, table)
    record = {
        "grasps_dir": str(grasps_dir),
        "objects_dir": str(objects_dir) if objects_dir else None,
        "n_scored": len(rows),
        "n_skipped": len(skipped),
        "skipped": skipped,
        "settings": {
            "pitch_mm": args.pitch_mm,
            "contact_tol_mm": args.contact_tol_mm,
            "object_convex_hull": args.convex_hull,
            "object_convex_hull_if_open": args.hull_if_open,
            "scale": args.scale,
            "simulate": args.simulate,
        },
        "overall": summary["all"],
        "per_object": {k: v for k, v in summary.items() if k != "all"},
        "cluster": k_info,
    }
    json_path = out / "summary.json"
    atomic_write_text(json_path, json.dumps(json_safe(record), indent=2, allow_nan=False))
    print(table[table.index("| object") :], end="")
    print(f"scored {len(rows)} grasp(s), skipped {len(skipped)}; wrote {csv_path}, {md_path} and {json_path}")
    return 0


# ----------------------------------------------------------------------------- parsers


def add_parser(commands) -> None:
    """Register ``halo eval grasps``."""
    p = commands.group("eval").add_parser(
        "grasps",
        help="physical plausibility + diversity of a folder of grasps -> CSV, markdown, summary.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.description = textwrap.fill(
        "Score every grasp in a folder: interpenetration volume, penetration depth, contact (and with --simulate "
        "the simulation displacement) per grasp; means and contact ratio per object and overall; k-means "
        "diversity (entropy, cluster size) over the grasps that have keypoints.",
        width=100,
    ) + (
        "\n\n"
        "Layout (metres; object names contain no '_'):\n"
        "  DIR/<object>_obj.ply        object mesh (or <object>.ply; also looked up in --objects)\n"
        "  DIR/<object>_<i>.npy        keypoints (21,3) of grasp <object>_<i>, MANO joint order\n"
        "  DIR/<object>_<i>_hand.ply   its hand mesh (also <object>_<i>.ply; .obj/.stl/.off)\n"
        "  or one subfolder per object: DIR/<object>/<i>.npy, DIR/<object>/<i>_hand.ply\n"
        "A grasp with keypoints but no mesh is meshed with HALO (--checkpoint).\n"
        "Bad files are reported and skipped; the exit code is 2 only when no grasp could be scored.\n"
        "Writes OUT/grasp_metrics.csv, OUT/grasp_summary.md and OUT/summary.json."
    )
    p.add_argument("--grasps", required=True, help="folder of grasps (layout above)")
    p.add_argument(
        "--objects", default=None, help="folder of object meshes <object>_obj.* / <object>.* (searched first)"
    )
    p.add_argument(
        "--out", default=None, help=f"output folder (default {DEFAULT_EVAL_OUT}/grasps-<DIR name>)"
    )
    p.add_argument(
        "--checkpoint",
        default=default_checkpoint(),
        help="HALO base checkpoint for grasps given as keypoints only (default: as 'halo mesh')",
    )
    add_trust_checkpoint_arg(p)
    add_extraction_args(p, GRASP_UPSAMPLING_STEPS)
    p.add_argument(
        "--k",
        type=int,
        default=20,
        help="k-means clusters for the diversity (default 20, HALO; capped at half the grasps with keypoints)",
    )
    p.add_argument(
        "--kmeans-init",
        default="random",
        choices=["random", "k-means++"],
        help="random = scipy kmeans as in HALO (default; can merge tight clusters), k-means++ = more reliable",
    )
    p.add_argument("--seed", type=int, default=0, help="k-means seed (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_grasp_metric_args(p)
    p.add_argument(
        "--hull-if-open",
        action="store_true",
        help="evaluate only the objects that are not watertight against their convex hull, the others as "
        "they are (what `halo generate grasps` and `halo refine grasps` do); --convex-hull: every object",
    )
    p.set_defaults(func=cmd_eval_grasps)
