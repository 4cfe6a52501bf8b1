"""``halo intersect`` (one hand/object pair) and ``halo eval grasps`` (a folder of grasps).

Metric definitions: :mod:`halo.grasp.metrics`.  Meshes are read with
:func:`halo.geometry.mesh_io.load_mesh_m` (metres; a mesh too large for metres gets a warning
with the guessed unit and the ``--scale`` to use).

Grasp folder layout read by ``halo eval grasps --grasps DIR``
=============================================================

Object names contain no underscore (GRAB's names: ``apple``, ``wineglass``, ...).  A
*grasp id* groups the files of one grasp; all files are in metres, in one frame per
object (the frame of the object mesh).

Flat layout (what ``halo generate grasps`` writes)::

    DIR/<object>_obj.ply          the object mesh (or DIR/<object>.ply)
    DIR/<object>_<i>.npy          grasp <object>_<i>: keypoints (21,3), metres, MANO joint order
    DIR/<object>_<i>_hand.ply     grasp <object>_<i>: its hand mesh (optional when the .npy exists)

- The object of a grasp is the file name's prefix before the first ``_``.
- A hand mesh is ``<id>_hand.<ext>`` or ``<id>.<ext>`` (ext: ply, obj, stl, off), so
  other tools' outputs named ``<object>_<anything>.ply`` are read as hand meshes too.
- Keypoints ``<id>.npy`` next to a hand mesh are used for the diversity (cluster)
  analysis; a grasp with keypoints but no hand mesh is meshed with HALO
  (``--checkpoint``; meshes written to ``OUT/hands/``).

Subfolder layout (equivalent)::

    DIR/<object>/<object>_obj.ply  (or <object>.ply; or found in --objects / DIR)
    DIR/<object>/<i>.npy, DIR/<object>/<i>_hand.ply   grasp id <object>/<i>

Object meshes are looked up as ``<object>_obj.<ext>`` then ``<object>.<ext>`` in
``--objects`` (when given), then the object's subfolder, then ``DIR``; so
``--objects GRAB/tools/object_meshes/contact_meshes`` works when the grasps are in
the objects' template frame.  Other files (.png, .csv, ...) are ignored.

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
import csv
import datetime
import json
import math
import sys
import textwrap
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from halo.cli.eval import DEFAULT_EVAL_OUT, EvalCliError
from halo.geometry.mesh_io import MESH_SUFFIXES

KEYPOINT_SUFFIX = ".npy"
CSV_COLUMNS = ("object", "grasp", "volume_cm3", "depth_cm", "min_distance_cm", "contact")
SIM_COLUMN = "sim_displacement_m"
_GRAVITY_AXES = {
    "-z": (0, 0, -1),
    "+z": (0, 0, 1),
    "-y": (0, -1, 0),
    "+y": (0, 1, 0),
    "-x": (-1, 0, 0),
    "+x": (1, 0, 0),
}
G_M_S2 = 9.8


class GraspCliError(EvalCliError):
    """Printed as one line by :func:`halo.cli.app.main` (exit code 2)."""


def _user_errors() -> tuple[type[Exception], ...]:
    """Exceptions caused by the user's files or environment (reported, never a traceback)."""
    from halo.data.keypoint_files import KeypointFileError
    from halo.geometry.inside import MeshNotWatertightError
    from halo.geometry.mesh_io import MeshFileError
    from halo.grasp.metrics import GridTooLargeError, OptionalDependencyError

    return (
        MeshFileError,
        MeshNotWatertightError,
        KeypointFileError,
        OptionalDependencyError,
        GridTooLargeError,
    )


def _load_mesh(path: Path, args: argparse.Namespace, *, require_watertight: bool = False):
    """load_mesh_m with the CLI's --scale / --rescale; unit warnings go to stderr as one line each."""
    from halo.geometry.mesh_io import load_mesh_m

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mesh = load_mesh_m(
            path, scale=args.scale, rescale=args.rescale, require_watertight=require_watertight
        )
    for w in caught:
        _note(f"warning: {w.message}")
    return mesh


def _note(message: str) -> None:
    """A line on stderr that does not break a running progress bar."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


def _gravity(args: argparse.Namespace) -> tuple[float, float, float]:
    return tuple(G_M_S2 * c for c in _GRAVITY_AXES[args.gravity_axis])


def _check_settings(args: argparse.Namespace) -> None:
    if not args.pitch_mm > 0:
        raise GraspCliError(f"--pitch-mm must be > 0, got {args.pitch_mm}")
    if args.contact_tol_mm < 0:
        raise GraspCliError(f"--contact-tol-mm must be >= 0, got {args.contact_tol_mm}")
    if not args.scale > 0:
        raise GraspCliError(f"--scale must be > 0, got {args.scale}")
    if args.simulate:
        from halo.grasp.metrics import OptionalDependencyError, require_pybullet

        try:
            require_pybullet()
        except OptionalDependencyError as exc:
            raise GraspCliError(f"--simulate: {exc}") from exc


# ----------------------------------------------------------------------------- halo intersect


def cmd_intersect(args: argparse.Namespace) -> int:
    """Metrics of one hand mesh against one object mesh."""
    from halo.grasp.metrics import grasp_metrics, simulation_displacement_m

    _check_settings(args)
    try:
        hand = _load_mesh(Path(args.hand), args)
        obj = _load_mesh(Path(args.object), args, require_watertight=not args.convex_hull)
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
            displacement = simulation_displacement_m(hand, obj, gravity_m_s2=_gravity(args))
    except _user_errors() as exc:
        raise GraspCliError(str(exc)) from exc
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


# ----------------------------------------------------------------------------- grasp folder discovery


@dataclass
class GraspFiles:
    """The files of one grasp (see the module docstring for the layout)."""

    object: str
    grasp: str  # grasp id: "<object>_<i>" (flat) or "<object>/<i>" (subfolder)
    folder: Path
    hand_mesh: Path | None = None
    keypoints: Path | None = None


@dataclass
class Discovery:
    grasps: list[GraspFiles] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"file", "reason"}


def discover_grasps(grasps_dir: Path) -> Discovery:
    """Group the grasp files of ``grasps_dir`` (flat and per-object subfolders) by grasp id."""
    found: dict[str, GraspFiles] = {}
    result = Discovery()

    def add(path: Path, folder_object: str | None) -> None:
        suffix = path.suffix.lower()
        is_mesh = suffix in MESH_SUFFIXES
        if not is_mesh and suffix != KEYPOINT_SUFFIX:
            return  # renders, CSVs, ...: not ours
        stem = path.stem
        if folder_object is None:
            obj = stem.split("_", 1)[0]
            if stem in (obj, f"{obj}_obj"):  # an object mesh (looked up per object later)
                if not is_mesh:
                    result.skipped.append(
                        {
                            "file": str(path),
                            "reason": "keypoint file name has no '_<i>' after the object name",
                        }
                    )
                return
            prefix = ""
        else:
            obj = folder_object
            if stem in (obj, f"{obj}_obj"):
                if not is_mesh:
                    result.skipped.append(
                        {
                            "file": str(path),
                            "reason": "keypoints named like the object mesh; expected <i>.npy",
                        }
                    )
                return
            prefix = f"{obj}/"
        grasp_stem = stem[: -len("_hand")] if is_mesh and stem.endswith("_hand") else stem
        gid = prefix + grasp_stem
        entry = found.setdefault(gid, GraspFiles(object=obj, grasp=gid, folder=path.parent))
        slot = "hand_mesh" if is_mesh else "keypoints"
        other = getattr(entry, slot)
        if other is not None:
            keep, drop = sorted([other, path])
            setattr(entry, slot, keep)
            what = "hand meshes" if is_mesh else "keypoint files"
            result.skipped.append(
                {"file": str(drop), "reason": f"grasp {gid} has two {what}; using {keep.name}"}
            )
            return
        setattr(entry, slot, path)

    for path in sorted(grasps_dir.iterdir()):
        if path.is_file():
            add(path, None)
        elif path.is_dir() and not path.name.startswith("."):
            for sub in sorted(path.iterdir()):
                if sub.is_file():
                    add(sub, path.name)
    result.grasps = [found[g] for g in sorted(found)]
    return result


def find_object_mesh(obj: str, grasp_folder: Path, grasps_dir: Path, objects_dir: Path | None) -> Path | None:
    """``<obj>_obj.<ext>`` or ``<obj>.<ext>`` in --objects, the grasp's folder, then the grasps folder."""
    folders = [d for d in (objects_dir, grasp_folder, grasps_dir) if d is not None]
    for folder in dict.fromkeys(folders):  # ordered, without repeats
        for base in (f"{obj}_obj", obj):
            for suffix in MESH_SUFFIXES:
                candidate = folder / f"{base}{suffix}"
                if candidate.is_file():
                    return candidate
    return None


# ----------------------------------------------------------------------------- halo eval grasps


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
    lines += ["", f"## Diversity (k-means over canonicalized keypoints, k = {cluster['k']})", ""]
    if "skipped" in cluster:
        lines.append(f"skipped: {cluster['skipped']}")
    else:
        lines.append(
            f"| grasps | entropy | max entropy (ln k) | cluster size (cm) |\n|---|---|---|---|\n"
            f"| {cluster['n_samples']} | {cluster['entropy']:.3f} | {cluster['max_entropy']:.3f} | "
            f"{cluster['cluster_size_cm']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def _json_safe(value):
    """NaN / inf -> None (JSON has no NaN), recursively."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class _HaloMesher:
    """Meshes keypoints with the HALO checkpoint, loaded on first use (only keypoint-only grasps need it)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.model = None
        self.error: str | None = None

    def __call__(self, keypoints: np.ndarray):
        if self.error is not None:
            raise GraspCliError(self.error)
        if self.model is None:
            from halo.cli.app import CliError, _load_model
            from halo.core.checkpoint import CheckpointError

            ckpt = self.args.checkpoint
            try:
                if ckpt is not None and not Path(ckpt).is_file():
                    raise CliError(f"{ckpt}: checkpoint file not found")
                self.model, _ = _load_model(ckpt, self.args.trust_checkpoint)
            except (CliError, CheckpointError) as exc:
                self.error = f"cannot mesh keypoints with HALO: {exc}"
                raise GraspCliError(self.error) from exc
        from halo.meshing.hand_mesh import extract_hand_mesh

        hand = extract_hand_mesh(
            self.model,
            keypoints,
            resolution_0=self.args.resolution_0,
            upsampling_steps=self.args.upsampling_steps,
        )
        return hand.mesh


def _load_grasp_keypoints(path: Path) -> np.ndarray:
    from halo.data.keypoint_files import KeypointFileError, load_keypoints

    seq = load_keypoints(path)
    if len(seq.keypoints) != 1:
        raise KeypointFileError(f"{path}: a grasp file must hold one hand (21, 3), got {seq.keypoints.shape}")
    return seq.keypoints[0].astype(np.float64)


def cmd_eval_grasps(args: argparse.Namespace) -> int:
    """Score every grasp of a folder; see the module docstring for the layout and outputs."""
    from tqdm import tqdm

    from halo.grasp.metrics import (
        cluster_analysis,
        grasp_metrics,
        prepare_object_mesh,
        simulation_displacement_m,
    )

    _check_settings(args)
    if args.k < 1:
        raise GraspCliError(f"--k must be >= 1, got {args.k}")
    grasps_dir = Path(args.grasps)
    if not grasps_dir.is_dir():
        raise GraspCliError(f"--grasps {grasps_dir}: no such folder")
    objects_dir = Path(args.objects) if args.objects else None
    if objects_dir is not None and not objects_dir.is_dir():
        raise GraspCliError(f"--objects {objects_dir}: no such folder")
    out = Path(args.out) if args.out else DEFAULT_EVAL_OUT / f"grasps-{grasps_dir.resolve().name}"

    discovery = discover_grasps(grasps_dir)
    skipped = list(discovery.skipped)
    for s in skipped:
        _note(f"skipped {s['file']}: {s['reason']}")
    if not discovery.grasps:
        raise GraspCliError(
            f"{grasps_dir}: no grasp files found (expected <object>_<i>.npy and/or <object>_<i>_hand.ply; "
            "see 'halo eval grasps --help')"
        )
    user_errors = (*_user_errors(), GraspCliError, ValueError)
    mesher = _HaloMesher(args)
    objects: dict[Path, object] = {}  # object file -> prepared mesh, or the error text
    rows: list[dict] = []
    keypoints_of: dict[str, np.ndarray] = {}
    n_halo = 0

    def skip(file: Path | str, reason: str) -> None:
        reason = reason.removeprefix(f"{file}: ")  # most messages already start with the file name
        skipped.append({"file": str(file), "reason": reason})
        _note(f"skipped {file}: {reason}")

    bar = tqdm(
        discovery.grasps, desc="grasps", unit="grasp", file=sys.stderr,
        disable=args.no_progress or len(discovery.grasps) < 2,
    )  # fmt: skip
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
                raw = _load_mesh(obj_path, args, require_watertight=not args.convex_hull)
                objects[obj_path] = prepare_object_mesh(raw, convex_hull=args.convex_hull, name=str(obj_path))
            except user_errors as exc:
                objects[obj_path] = str(exc)
        if isinstance(objects[obj_path], str):
            skip(g.hand_mesh or g.keypoints, f"object mesh unusable: {objects[obj_path]}")
            continue
        obj_mesh = objects[obj_path]

        keypoints = None
        if g.keypoints is not None:
            try:
                keypoints = _load_grasp_keypoints(g.keypoints)
            except user_errors as exc:
                if g.hand_mesh is None:
                    skip(g.keypoints, str(exc))
                    continue
                skip(g.keypoints, f"{exc} (grasp scored from its mesh, left out of the diversity)")
        try:
            if g.hand_mesh is not None:
                hand = _load_mesh(g.hand_mesh, args)
                hand_name = str(g.hand_mesh)
            else:
                hand = mesher(keypoints)
                hand_name = f"HALO mesh of {g.keypoints}"
                if len(hand.faces) == 0:
                    raise GraspCliError(f"{g.keypoints}: HALO produced an empty hand mesh")
                dst = out / "hands" / f"{g.grasp}_hand.ply"
                dst.parent.mkdir(parents=True, exist_ok=True)
                hand.export(dst)
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
                row[SIM_COLUMN] = simulation_displacement_m(hand, obj_mesh, gravity_m_s2=_gravity(args))
            except Exception as exc:  # a physics failure for one grasp must not end the batch  # noqa: BLE001
                _note(
                    f"warning: simulation failed for {g.grasp} ({type(exc).__name__}: {exc}); recorded as nan"
                )
                row[SIM_COLUMN] = float("nan")
        rows.append(row)
        if keypoints is not None:
            keypoints_of[g.grasp] = keypoints
    bar.close()

    if not rows:
        raise GraspCliError(f"no grasp could be scored ({len(skipped)} skipped; reasons above)")

    # Diversity over the grasps that have keypoints.
    k_info: dict = {"k": args.k}
    n_kp = len(keypoints_of)
    if n_kp == 0:
        k_info["skipped"] = (
            "no grasp has keypoints (hand meshes only): put <grasp id>.npy (21,3 metres) next to each mesh"
        )
    elif n_kp < args.k:
        k_info["skipped"] = (
            f"only {n_kp} grasp(s) have keypoints; k-means with k={args.k} needs at least {args.k}"
        )
    else:
        try:
            stats = cluster_analysis(
                np.stack(list(keypoints_of.values())), k=args.k, seed=args.seed, init=args.kmeans_init
            )
            k_info.update(stats.as_dict(), init=args.kmeans_init, seed=args.seed)
        except ValueError as exc:  # e.g. degenerate keypoints the canonical frame cannot handle
            k_info["skipped"] = str(exc)

    out.mkdir(parents=True, exist_ok=True)
    columns = [*CSV_COLUMNS, *([SIM_COLUMN] if args.simulate else [])]
    csv_path = out / "grasp_metrics.csv"
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: (f"{row[c]:.6g}" if isinstance(row[c], float) else row[c]) for c in columns})
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
        f"{args.contact_tol_mm:g} mm of the object; object convex hull: {'yes' if args.convex_hull else 'no'}",
        "- units: volume cm^3, depth cm (max penetration of hand vertices), simulation displacement m",
        f"- written: {datetime.datetime.now().isoformat(timespec='seconds')}",
        "",
    ]
    md_path = out / "grasp_summary.md"
    table = _markdown(summary, k_info, header, args.simulate)
    md_path.write_text(table)
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
            "scale": args.scale,
            "simulate": args.simulate,
        },
        "overall": summary["all"],
        "per_object": {k: v for k, v in summary.items() if k != "all"},
        "cluster": k_info,
    }
    json_path = out / "summary.json"
    json_path.write_text(json.dumps(_json_safe(record), indent=2, allow_nan=False))
    print(table[table.index("| object") :], end="")
    print(f"scored {len(rows)} grasp(s), skipped {len(skipped)}; wrote {csv_path}, {md_path} and {json_path}")
    return 0


# ----------------------------------------------------------------------------- parsers


def _metric_args(p: argparse.ArgumentParser) -> None:
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
        choices=sorted(_GRAVITY_AXES),
        help="direction of gravity in the meshes' frame for --simulate (default -z, GRAB's world frame)",
    )


def add_intersect_parser(sub) -> None:
    """Register ``halo intersect`` on the main parser's subparsers."""
    p = sub.add_parser(
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
    _metric_args(p)
    p.set_defaults(func=cmd_intersect)


def add_eval_grasps_parser(eval_sub) -> None:
    """Register ``halo eval grasps`` on the ``halo eval`` subparsers."""
    from halo.cli.app import _default_checkpoint

    p = eval_sub.add_parser(
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
        default=_default_checkpoint(),
        help="HALO base checkpoint for grasps given as keypoints only (default: as 'halo mesh')",
    )
    p.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow full unpickling of the checkpoint (can run code from the file: only for files you trust)",
    )
    p.add_argument("--resolution-0", type=int, default=32, help="HALO meshing: MISE coarse grid (default 32)")
    p.add_argument(
        "--upsampling-steps", type=int, default=3, help="HALO meshing: MISE refinements (default 3)"
    )
    p.add_argument("--k", type=int, default=20, help="k-means clusters for the diversity (default 20, HALO)")
    p.add_argument(
        "--kmeans-init",
        default="random",
        choices=["random", "k-means++"],
        help="random = scipy kmeans as in HALO (default; can merge tight clusters), k-means++ = more reliable",
    )
    p.add_argument("--seed", type=int, default=0, help="k-means seed (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _metric_args(p)
    p.set_defaults(func=cmd_eval_grasps)
