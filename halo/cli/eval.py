"""``halo eval meshes`` and ``halo generate meshes``: a trained model's meshes on a dataset split.

Both rebuild the network from the checkpoint alone (a training ``.ckpt``, a ``halo-base``
``.pt`` or the original release; no Hydra config) and read the split from the original
dataset layout (:mod:`halo.data.layout`).  Without ``--data`` the dataset root recorded
in a training checkpoint is used (``datamodule_hyper_parameters["root"]``, which the
synthetic-hands datamodule stores), and the split names of that datamodule
(``val_split``/``test_split``) map ``--split val``/``test`` to its folders.

``eval meshes`` writes ``eval_meshes.csv`` (one row per hand, see
:mod:`halo.eval.mesh_evaluation`) and ``eval_meshes_summary.md`` (mean / median) and prints the
table.  ``--match-validation`` evaluates exactly the training run's validation subset
(first ``max_val_samples`` names, ``iou_points_per_sample`` IoU points), so the mean
``occupancy_iou`` equals the logged ``val/iou``.

``generate meshes`` writes one mesh per hand and ``comparison_grid.png`` (predicted |
ground truth per hand, one camera per hand).
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

from halo.cli.common import DEFAULT_EVAL_OUT, CliError, default_checkpoint, load_halo_model
from halo.cli.options import add_extraction_args, add_trust_checkpoint_arg, check_extraction_args
from halo.core.checkpoint import (
    DM_IOU_POINTS,
    DM_MAX_VAL_SAMPLES,
    DM_ROOT,
    DM_TEST_SPLIT,
    DM_VAL_SPLIT,
    LIGHTNING_DATAMODULE_HPARAMS,
)
from halo.utils.atomic import atomic_write_text

# ----------------------------------------------------------------------------- shared


def _load(args: argparse.Namespace):
    if args.checkpoint and not Path(args.checkpoint).is_file():
        raise CliError(f"{args.checkpoint}: checkpoint file not found")
    return load_halo_model(args.checkpoint, args.trust_checkpoint)


def _dataset(args: argparse.Namespace, meta: dict) -> tuple[Path, dict]:
    """(split folder, the datamodule hparams recorded in the checkpoint or {})."""
    dm = meta.get(LIGHTNING_DATAMODULE_HPARAMS) or {}
    if args.data is not None:
        root = Path(args.data)
        if not root.is_dir():
            raise CliError(f"--data {root}: no such folder")
        split = args.split
    else:
        recorded = dm.get(DM_ROOT)
        if not recorded:
            raise CliError(
                f"{args.checkpoint}: the checkpoint records no dataset root "
                "(only training checkpoints of a datamodule that stores one do): pass --data ROOT"
            )
        root = Path(recorded)
        if not root.is_dir():
            raise CliError(
                f"dataset root {root} recorded in {args.checkpoint} does not exist here: pass --data ROOT"
            )
        split = (
            dm.get({"val": DM_VAL_SPLIT, "test": DM_TEST_SPLIT}.get(args.split, "")) or args.split
        )  # the run's own split folder names
    split_dir = root / split
    if not (split_dir / "datalist.txt").is_file():
        have = sorted(p.name for p in root.iterdir() if (p / "datalist.txt").is_file())
        raise CliError(
            f"{split_dir}: no datalist.txt (splits under {root}: {', '.join(have) or 'none'}); "
            "pick one with --split"
        )
    return split_dir, dm


def _threshold(args: argparse.Namespace, meta: dict) -> float:
    if args.threshold is not None:
        return float(args.threshold)
    return float((meta.get("hyper_parameters") or {}).get("iou_threshold", 0.5))


def _check_positive(args: argparse.Namespace) -> None:
    if args.limit is not None and args.limit < 1:
        raise CliError(f"--limit must be >= 1, got {args.limit}")
    check_extraction_args(args)


# ----------------------------------------------------------------------------- halo eval meshes


def cmd_eval_meshes(args: argparse.Namespace) -> int:
    from halo.eval.mesh_evaluation import evaluate_split, write_rows_csv
    from halo.eval.surface_metrics import metrics_markdown_table, summarize_metrics

    _check_positive(args)
    if args.n_samples < 1:
        raise CliError(f"--n-samples must be >= 1, got {args.n_samples}")
    model, meta = _load(args)
    if args.match_validation:
        dm = meta.get(LIGHTNING_DATAMODULE_HPARAMS) or {}
        if not dm:
            raise CliError(
                f"{args.checkpoint}: --match-validation needs a training checkpoint that records its datamodule"
            )
        args.split = "val"
        if args.limit is None and dm.get(DM_MAX_VAL_SAMPLES) is not None:
            args.limit = int(dm[DM_MAX_VAL_SAMPLES])
        if args.iou_points is None:
            args.iou_points = dm.get(DM_IOU_POINTS)
    split_dir, _ = _dataset(args, meta)
    threshold = _threshold(args, meta)
    out = Path(args.out) if args.out else DEFAULT_EVAL_OUT / f"{Path(args.checkpoint).stem}-{split_dir.name}"
    out.mkdir(parents=True, exist_ok=True)
    rows = evaluate_split(
        model,
        split_dir,
        limit=args.limit,
        iou_points=args.iou_points,
        resolution_0=args.resolution_0,
        upsampling_steps=args.upsampling_steps,
        interpolate=args.interpolate,
        n_samples=args.n_samples,
        threshold=threshold,
        with_occupancy_iou=not args.no_occupancy_iou,
        mesh_dir=out / "meshes" if args.save_meshes else None,
        progress=not args.no_progress,
    )
    csv_path = write_rows_csv(rows, out / "eval_meshes.csv")
    table = metrics_markdown_table(summarize_metrics(rows))
    header = [
        "# Mesh evaluation",
        "",
        f"- checkpoint: `{args.checkpoint}`"
        + (f" (global step {meta['global_step']})" if meta.get("global_step", -1) >= 0 else ""),
        f"- split: `{split_dir}` ({len(rows)} hands)",
        f"- extraction: resolution_0 {args.resolution_0}, upsampling_steps {args.upsampling_steps} "
        f"(effective {args.resolution_0 * 2**args.upsampling_steps}), threshold {threshold}",
        f"- surface metrics: {args.n_samples} points sampled per predicted mesh; IoU points per hand: "
        f"{'all' if args.iou_points in (None, -1) else args.iou_points}",
        "- units: distances in mm, chamfer_l2 in mm^2; `iou` = mesh inside test, "
        "`occupancy_iou` = network occupancy (the training loop's val/iou); `seconds` = extraction time",
        f"- written: {datetime.datetime.now().isoformat(timespec='seconds')}",
        "",
    ]
    summary_path = out / "eval_meshes_summary.md"
    atomic_write_text(summary_path, "\n".join(header) + table)
    print(table, end="")
    print(f"wrote {csv_path} and {summary_path}")
    return 0


# ----------------------------------------------------------------------------- halo generate meshes


def cmd_generate_meshes(args: argparse.Namespace) -> int:
    from halo.eval.mesh_evaluation import comparison_grid, evaluate_split, format_label, render_comparison
    from halo.viz import render

    _check_positive(args)
    model, meta = _load(args)
    split_dir, _ = _dataset(args, meta)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pairs, labels = [], []

    def collect(row, hand, sample):
        if not args.no_render:
            pairs.append(
                render_comparison(hand.mesh, sample.gt_mesh(), sample.keypoints, size=args.render_size)
            )
            labels.append(format_label(row))

    rows = evaluate_split(
        model,
        split_dir,
        limit=args.limit,
        resolution_0=args.resolution_0,
        upsampling_steps=args.upsampling_steps,
        interpolate=args.interpolate,
        n_samples=20_000,  # captions only
        threshold=_threshold(args, meta),
        with_occupancy_iou=False,
        mesh_dir=out,
        mesh_format=args.format,
        progress=not args.no_progress,
        on_sample=collect,
    )
    grid = None
    if pairs:
        grid = render.save_png(comparison_grid(pairs, labels), out / "comparison_grid.png")
    seconds = sum(r["seconds"] for r in rows) / max(len(rows), 1)
    print(
        f"wrote {len(rows)} mesh(es) to {out}"
        + (f" and {grid}" if grid else "")
        + f" ({seconds:.2f} s per hand)"
    )
    return 0


# ----------------------------------------------------------------------------- parser


def _common(p: argparse.ArgumentParser, split: str, limit: int | None) -> None:
    p.add_argument(
        "--checkpoint",
        default=default_checkpoint(),
        help="training checkpoint (.ckpt), halo-base .pt, or the original model_best.pt",
    )
    add_trust_checkpoint_arg(p)
    p.add_argument(
        "--data",
        default=None,
        help="dataset root (original layout: <root>/<split>/datalist.txt); "
        "default: the root recorded in a training checkpoint",
    )
    p.add_argument("--split", default=split, help=f"split folder (default {split})")
    p.add_argument(
        "--limit",
        type=int,
        default=limit,
        help="first N hands of the split" + (f" (default {limit})" if limit else " (default: all)"),
    )
    add_extraction_args(p)
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="occupancy iso-level / IoU threshold (default: the checkpoint's iou_threshold, else 0.5)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_parser(commands) -> None:
    """Register ``halo eval meshes`` and ``halo generate meshes``."""
    p = commands.group("eval").add_parser(
        "meshes", help="surface metrics of extracted meshes -> CSV + markdown summary"
    )
    p.description = (
        "Extract a mesh for every hand of a split and score it against the ground truth "
        "(Chamfer-L1/L2, accuracy, completeness, normal consistency, F-score@1/2 mm, mesh IoU) "
        "plus the network's occupancy IoU. Writes <out>/eval_meshes.csv and <out>/eval_meshes_summary.md."
    )
    _common(p, "test", None)
    p.add_argument(
        "--out", default=None, help=f"output folder (default {DEFAULT_EVAL_OUT}/<checkpoint>-<split>)"
    )
    p.add_argument(
        "--n-samples", type=int, default=100_000, help="points sampled per predicted mesh (default 100000)"
    )
    p.add_argument("--iou-points", type=int, default=None, help="first K IoU points per hand (default: all)")
    p.add_argument(
        "--match-validation",
        action="store_true",
        help="the training run's validation subset: --split val, --limit max_val_samples, "
        "--iou-points iou_points_per_sample (mean occupancy_iou = the logged val/iou)",
    )
    p.add_argument("--save-meshes", action="store_true", help="also write <out>/meshes/<name>.ply")
    p.add_argument(
        "--no-occupancy-iou",
        action="store_true",
        help="skip the network occupancy IoU (a full forward at every IoU point; the slowest part "
        "with 100k IoU points)",
    )
    p.set_defaults(func=cmd_eval_meshes)

    p = commands.group("generate").add_parser(
        "meshes", help="one mesh per hand + a predicted | ground-truth render grid"
    )
    p.description = (
        "Extract meshes for the first hands of a split, write them to --out and render "
        "<out>/comparison_grid.png (predicted | ground truth per hand, captions with mesh IoU and Chamfer-L1)."
    )
    _common(p, "val", 8)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--format", default="ply", choices=["ply", "obj", "off", "glb"], help="mesh file format")
    p.add_argument("--render-size", type=int, default=320, help="pixels per render tile (default 320)")
    p.add_argument("--no-render", action="store_true", help="meshes only")
    p.set_defaults(func=cmd_generate_meshes)
