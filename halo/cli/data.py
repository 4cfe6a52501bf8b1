"""``halo data ...``: prepare, build, synthesize and look at hand datasets (original layout).

Sources (for ``prepare`` and ``build``), all in metres:

* ``--synthetic N``            N hands of the built-in synthetic model;
* ``--mano-params PATH...``    per-sample MANO parameter files (.npz/.pkl with pose, shape, rot);
* ``--meshes PATH...``         MANO-topology posed meshes (.ply/.obj/.off or (V,3) .npy);
* ``--youtube3d FILE.json``    YouTube3D annotations;
* ``--prepared DIR``           (build only) hands written by ``halo data prepare``.

Real sources need the user's MANO model (``--mano-model MANO_RIGHT.pkl``;
not shipped, MANO licence).  A directory argument means every matching file in it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from halo.cli.common import CliError

_MESH_EXTS = (".ply", ".obj", ".off", ".npy", ".stl")
_PARAM_EXTS = (".npz", ".pkl", ".pickle")


def _expand(paths: list[str], exts: tuple[str, ...], what: str) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in exts)
            if not found:
                raise CliError(f"{p}: no {what} files ({', '.join(exts)}) in this folder")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise CliError(f"{p}: no such file or folder")
    return out


def _need_mano(args: argparse.Namespace, what: str) -> str:
    if not args.mano_model:
        raise CliError(
            f"{what} needs your MANO right-hand model: pass --mano-model /path/to/MANO_RIGHT.pkl "
            "(download it from mano.is.tue.mpg.de; it cannot be shipped with this project)"
        )
    if not Path(args.mano_model).is_file():
        raise CliError(f"{args.mano_model}: MANO model file not found")
    return args.mano_model


def _source(args: argparse.Namespace):
    from halo.data import build as hb

    given = [
        k for k in ("synthetic", "mano_params", "meshes", "youtube3d", "prepared") if getattr(args, k, None)
    ]
    if len(given) != 1:
        raise CliError(
            "give exactly one source: --synthetic N, --mano-params, --meshes, --youtube3d"
            + (" or --prepared" if hasattr(args, "prepared") else "")
            + (f" (got {', '.join('--' + g.replace('_', '-') for g in given)})" if given else "")
        )
    kind = given[0]
    if kind == "synthetic":
        return hb.SyntheticHandSource(args.synthetic, split=args.split, seed=args.seed)
    if kind == "mano_params":
        files = _expand(args.mano_params, _PARAM_EXTS, "MANO parameter")
        return hb.ManoParamsSource(files, _need_mano(args, "--mano-params"), transforms=args.transforms)
    if kind == "meshes":
        return hb.VertexFilesSource(_expand(args.meshes, _MESH_EXTS, "mesh"), _need_mano(args, "--meshes"))
    if kind == "youtube3d":
        return hb.YouTube3DSource(args.youtube3d, _need_mano(args, "YouTube3D"), limit=args.limit)
    return hb.PreparedFilesSource(_expand([args.prepared], (".npz",), "prepared hand"))


def _add_source_args(p: argparse.ArgumentParser, with_prepared: bool) -> None:
    g = p.add_argument_group("source (exactly one)")
    g.add_argument("--synthetic", type=int, metavar="N", help="N hands of the built-in synthetic model")
    g.add_argument("--mano-params", nargs="+", metavar="PATH", help="MANO parameter files or folders")
    g.add_argument("--meshes", nargs="+", metavar="PATH", help="MANO-topology meshes or folders")
    g.add_argument("--youtube3d", metavar="JSON", help="YouTube3D annotation file")
    if with_prepared:
        g.add_argument("--prepared", metavar="DIR", help="output folder of 'halo data prepare'")
    p.add_argument("--mano-model", metavar="PKL", help="your MANO_RIGHT.pkl (or .npz) for real sources")
    p.add_argument("--transforms", default="keypoints", choices=["keypoints", "mano"],
                   help="part transforms from the canonicalization layer (default) or from MANO")  # fmt: skip
    p.add_argument("--limit", type=int, help="YouTube3D: use only the first N hands")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def _build_config(args: argparse.Namespace):
    from halo.core.skeleton import metres_to_model_units
    from halo.data.build import BuildConfig

    for name in ("points", "iou_points", "pointcloud", "near_surface_std_mm"):
        if getattr(args, name) <= 0:
            raise CliError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    return BuildConfig(
        n_points=args.points, n_iou_points=args.iou_points, n_pointcloud=args.pointcloud,
        noise_std=float(metres_to_model_units(args.near_surface_std_mm / 1000.0)),
    )  # fmt: skip


def _add_build_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=2, help="parallel processes (default 2)")
    p.add_argument("--points", type=int, default=100_000, help="points/ samples per hand (default 100k)")
    p.add_argument(
        "--iou-points", type=int, default=100_000, help="points_iou/ samples per hand (default 100k)"
    )
    p.add_argument(
        "--pointcloud", type=int, default=100_000, help="pointcloud/ samples per hand (default 100k)"
    )
    p.add_argument(
        "--near-surface-std-mm", type=float, default=4.0,
        help="std of the near-surface samples' offsets per axis, mm (default 4: the original's; "
        "the default training run's data uses 1.6)",
    )  # fmt: skip
    p.add_argument("--no-resume", action="store_true", help="rebuild samples that already exist")


def _print_report(report) -> int:
    print(report.summary())
    if report.failed:
        print(
            f"{len(report.failed)} sample(s) skipped; first: {next(iter(report.failed.items()))}",
            file=sys.stderr,
        )
    return 0 if report.num_ok > 0 else 1


def cmd_prepare(args: argparse.Namespace) -> int:
    from halo.data.prepare import save_prepared

    source = _source(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = source.names()
    failed = 0
    from halo.utils.progress import progress_bar

    for name in progress_bar(names, desc="preparing", unit="hand"):
        try:
            save_prepared(source.prepare(name), out / f"{name}.npz")
        except Exception as exc:  # one bad hand is reported and skipped
            failed += 1
            print(f"[halo data] skipped {name}: {exc}", file=sys.stderr)
    print(f"{out}: {len(names) - failed} prepared, {failed} failed")
    return 0 if failed < len(names) else 1


def cmd_build(args: argparse.Namespace) -> int:
    from halo.data.build import build_split

    source = _source(args)
    report = build_split(
        source, Path(args.out) / args.split, _build_config(args), seed=args.seed, workers=args.workers,
        resume=not args.no_resume,
    )  # fmt: skip
    return _print_report(report)


def cmd_synth(args: argparse.Namespace) -> int:
    from halo.data.build import build_synthetic_dataset

    num = {"train": args.train, "val": args.val, "test": args.test}
    if any(n < 0 for n in num.values()):
        raise CliError(f"split sizes must be >= 0, got {num}")
    reports = build_synthetic_dataset(
        args.out, num={k: v for k, v in num.items() if v > 0}, seed=args.seed, config=_build_config(args),
        workers=args.workers,
    )  # fmt: skip
    codes = [_print_report(r) for r in reports.values()]
    return max(codes) if codes else 0


def cmd_show(args: argparse.Namespace) -> int:
    import numpy as np

    from halo.data.layout import read_datalist, read_mesh, read_points, sample_paths
    from halo.viz.render import Camera, points_mesh, render_grid, render_scene, save_png

    split_dir = Path(args.root) / args.split
    names = read_datalist(split_dir)[: args.num]
    rng = np.random.default_rng(0)
    tiles, labels = [], []
    for name in names:
        paths = sample_paths(split_dir, name)
        mesh = read_mesh(paths["mesh"])
        data = read_points(paths["points"])
        inside = data.points[data.occupancies]
        outside = data.points[~data.occupancies]
        inside = inside[rng.permutation(len(inside))[: args.max_points]]
        # The uniform half fills the whole box: show only outside points near the hand.
        near = outside[np.linalg.norm(outside - mesh.vertices.mean(0), axis=1) < 0.12]
        near = near[rng.permutation(len(near))[: args.max_points // 2]]
        camera = Camera.framing(mesh.vertices, width=args.size, height=args.size, view="top")
        meshes, colors = [mesh], [(0.85, 0.75, 0.65)]
        for pts, col in ((inside, (0.85, 0.15, 0.1)), (near, (0.2, 0.35, 0.9))):
            if len(pts):
                meshes.append(points_mesh(pts, 0.0012))
                colors.append(col)
        shown = render_scene(meshes[:1], colors[:1], camera)
        with_points = render_scene(meshes[1:] or meshes[:1], colors[1:] or colors[:1], camera)
        tiles += [shown, with_points]
        labels += [name, f"occupancy: {data.occupancies.mean():.2f} inside"]
    out = Path(args.out)
    save_png(render_grid(tiles, ncols=4, labels=labels), out)
    print(f"wrote {out} ({len(names)} samples: mesh | inside points red, outside points near the hand blue)")
    return 0


def cmd_grasps_synth(args: argparse.Namespace) -> int:
    from halo.grasp.synthetic_grab import SyntheticGrabConfig, write_synthetic_grab

    try:
        config = SyntheticGrabConfig(
            objects=args.objects, grasps_per_object=args.grasps_per_object, subjects=args.subjects,
            grasp_frames=args.frames_per_sequence, seed=args.seed,
        )  # fmt: skip
    except ValueError as exc:
        raise CliError(str(exc).replace("SyntheticGrabConfig.", "--").replace("_", "-")) from exc
    if args.workers < 1:
        raise CliError(f"--workers must be >= 1, got {args.workers}")
    report = write_synthetic_grab(args.out, config, workers=args.workers, resume=not args.no_resume)
    print(report.summary())
    if report.stats.rejected:
        reasons = ", ".join(
            f"{k} {v}" for k, v in sorted(report.stats.rejected.items(), key=lambda kv: -kv[1])
        )
        print(f"rejected candidates: {reasons}")
    if report.failed:
        print(
            f"{len(report.failed)} sequence(s) failed; first: {next(iter(report.failed.items()))}",
            file=sys.stderr,
        )
    return 0 if not report.failed else 1


def cmd_grasps_show(args: argparse.Namespace) -> int:
    from halo.grasp.grab import GrabFileError
    from halo.grasp.grab_preview import render_grab_grid
    from halo.viz.render import save_png

    if args.n < 1:
        raise CliError(f"--n must be >= 1, got {args.n}")
    try:
        image, labels = render_grab_grid(
            args.root, args.n, size=args.size, mano_model=args.mano_model, seed=args.seed,
            contact_only=not args.all_frames,
        )  # fmt: skip
    except (GrabFileError, ValueError) as exc:
        raise CliError(str(exc)) from exc
    out = save_png(image, args.out)
    print(f"wrote {out} ({len(labels)} frames: hand blue, object sand, object contact vertices red)")
    return 0


def add_parser(commands) -> None:
    """Register ``halo data ...``."""
    p = commands.add_parser("data", help="prepare / build / synthesize / show hand datasets")
    p.description = __doc__.split("\n\n")[0]
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")

    q = dsub.add_parser(
        "prepare", help="hands -> prepared per-hand files (keypoints, transforms, sealed mesh)"
    )
    q.description = "Prepare hands (spec 3.1 step 2): one .npz per hand with the original's meta keys + mesh."
    _add_source_args(q, with_prepared=False)
    q.add_argument("--split", default="train", help="split name used in synthetic hand names")
    q.add_argument("--out", required=True, help="output folder")
    q.set_defaults(func=cmd_prepare)

    q = dsub.add_parser("build", help="hands -> one split in the original layout (points, IoU points, ...)")
    q.description = (
        "Build one split: writes OUT/SPLIT/{points,points_iou,pointcloud,mesh_scaled}/ + datalist.txt."
    )
    _add_source_args(q, with_prepared=True)
    q.add_argument("--out", required=True, help="dataset root")
    q.add_argument("--split", required=True, help="split folder name (train / val / test / ...)")
    _add_build_args(q)
    q.set_defaults(func=cmd_build)

    q = dsub.add_parser("synth", help="a synthetic dataset in the original layout under OUT/<split>/")
    q.description = "Write a synthetic hand dataset (train/val/test) in the original HALO layout."
    q.add_argument("--out", required=True, help="dataset root")
    q.add_argument("--train", type=int, default=2000, help="training hands (default 2000)")
    q.add_argument("--val", type=int, default=200, help="validation hands (default 200)")
    q.add_argument("--test", type=int, default=200, help="test hands (default 200)")
    q.add_argument("--seed", type=int, default=0, help="generation seed (default 0)")
    _add_build_args(q)
    q.set_defaults(func=cmd_synth)

    q = dsub.add_parser("show", help="render samples with their occupancy points to a PNG")
    q.add_argument("root", help="dataset root")
    q.add_argument("--split", default="train")
    q.add_argument("-n", "--num", type=int, default=8, help="samples to show (default 8)")
    q.add_argument("--out", default="data_samples.png", help="output PNG")
    q.add_argument("--max-points", type=int, default=3000, help="points drawn per sample")
    q.add_argument("--size", type=int, default=320, help="tile size in pixels")
    q.set_defaults(func=cmd_show)

    q = dsub.add_parser("grasps-synth", help="synthetic hand-object grasps in the GRAB layout")
    q.description = (
        "Synthesize grasps of procedural objects with the synthetic hand and write them like GRAB: "
        "OUT/grab/s<i>/<object>_<intent>_<k>.npz + OUT/tools/{subject_meshes,object_meshes,mano}."
    )
    q.add_argument("--out", required=True, help="root folder (will hold grab/ and tools/)")
    q.add_argument("--objects", type=int, default=None,
                   help="number of objects (default: all 23 named ones; 18 train, 2 val, 3 test)")  # fmt: skip
    q.add_argument(
        "--grasps-per-object", type=int, default=32, help="accepted grasps per object (default 32)"
    )
    q.add_argument(
        "--subjects", type=int, default=4, help="subjects s1..sN with their own hand shape (default 4)"
    )
    q.add_argument("--frames-per-sequence", type=int, default=8,
                   help="grasp frames per sequence file, plus 2 frames with the hand away (default 8)")  # fmt: skip
    q.add_argument("--seed", type=int, default=0, help="generation seed (default 0)")
    q.add_argument("--workers", type=int, default=2, help="parallel processes (default 2)")
    q.add_argument("--no-resume", action="store_true", help="rewrite sequence files that already exist")
    q.set_defaults(func=cmd_grasps_synth)

    q = dsub.add_parser("grasps-show", help="render grasp frames of a GRAB-layout root to a PNG")
    q.add_argument("root", help="folder that holds grab/ and tools/")
    q.add_argument("--out", default="grasps.png", help="output PNG (default grasps.png)")
    q.add_argument("-n", "--n", type=int, default=16, help="frames to show (default 16)")
    q.add_argument("--size", type=int, default=320, help="tile size in pixels")
    q.add_argument("--seed", type=int, default=0, help="which sequences and frames (default 0)")
    q.add_argument("--all-frames", action="store_true", help="also frames without contact")
    q.add_argument("--mano-model", metavar="PKL",
                   help="MANO_RIGHT.pkl for real GRAB (synthetic roots ship their hand model)")  # fmt: skip
    q.set_defaults(func=cmd_grasps_show)
