"""The ``halo`` command line: meshes from keypoints, the demo, datasets, checkpoint conversion.

Every subcommand has ``--help``.  Problems with the user's files (missing,
wrong keys, wrong shapes, NaNs, wrong units) are reported as one line naming
the file and the problem, with exit code 2 and no traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_CHECKPOINT_ENV = "HALO_CHECKPOINT"


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def _default_checkpoint() -> str | None:
    env = os.environ.get(DEFAULT_CHECKPOINT_ENV)
    if env:
        return env
    # A checkout next to the shared reference material (the development setup).
    guess = Path(__file__).resolve().parents[2] / "shared" / "reference" / "halo_original" / "model_best.pt"
    return str(guess) if guess.is_file() else None


def _load_model(path: str | None):
    from halo.core.checkpoint import load_model

    if path is None:
        raise CliError(
            f"no checkpoint given: pass --checkpoint PATH (the original release's model_best.pt, a file "
            f"from 'halo convert-checkpoint', or a training checkpoint) or set ${DEFAULT_CHECKPOINT_ENV}"
        )
    model, meta = load_model(path)
    return model, meta


def _add_io_args(p: argparse.ArgumentParser, keypoints_help: str, keypoints_required: bool = False) -> None:
    p.add_argument(
        "--checkpoint", default=_default_checkpoint(), help="HALO base checkpoint (original or own)"
    )
    p.add_argument("--keypoints", required=keypoints_required, help=keypoints_help)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--units", default="m", choices=["m", "cm", "mm"], help="units of the keypoint file")


def _add_extraction_args(p: argparse.ArgumentParser, r0: int, steps: int) -> None:
    p.add_argument("--resolution-0", type=int, default=r0, help=f"MISE coarse grid (default {r0})")
    p.add_argument(
        "--upsampling-steps",
        type=int,
        default=steps,
        help=f"MISE refinements; effective resolution = resolution_0 * 2**steps (default {steps})",
    )
    p.add_argument("--threshold", type=float, default=0.5, help="occupancy iso-level (default 0.5)")


def _progress(iterable, total: int, desc: str):
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="hand", disable=total < 2, file=sys.stderr)


# ----------------------------------------------------------------------------- halo mesh


def cmd_mesh(args: argparse.Namespace) -> int:
    from halo.data.keypoint_files import load_keypoints
    from halo.meshing.hand_mesh import extract_hand_mesh
    from halo.viz import render

    seq = load_keypoints(args.keypoints, units=args.units)
    model, _ = _load_model(args.checkpoint)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n = len(seq.keypoints)
    times = []
    for i in _progress(range(n), n, "meshing"):
        left = bool(seq.is_left[i]) or args.left
        t0 = time.perf_counter()
        hand = extract_hand_mesh(
            model,
            seq.keypoints[i],
            is_left=left,
            resolution_0=args.resolution_0,
            upsampling_steps=args.upsampling_steps,
            threshold=args.threshold,
            part_labels=args.part_colors,
        )
        times.append(time.perf_counter() - t0)
        stem = out / f"hand_{i:03d}"
        hand.mesh.export(stem.with_suffix(f".{args.format}"))
        if not args.no_render:
            if len(hand.mesh.faces) == 0:
                print(f"warning: hand {i} produced an empty mesh; skipping its render", file=sys.stderr)
                continue
            img = render.render_hand_and_skeleton(hand.mesh, seq.keypoints[i])
            render.save_png(img, stem.with_suffix(".png"))
    print(
        f"wrote {n} mesh(es) to {out} (effective resolution "
        f"{args.resolution_0 * 2**args.upsampling_steps}, {np.mean(times):.2f} s per hand)"
    )
    return 0


# ----------------------------------------------------------------------------- halo demo


def cmd_demo(args: argparse.Namespace) -> int:
    from halo.data.keypoint_files import load_keypoints
    from halo.hands.sequences import synthetic_hand_sequence
    from halo.meshing.hand_mesh import extract_hand_mesh
    from halo.viz import render

    if args.keypoints:
        seq = load_keypoints(args.keypoints, units=args.units)
        keypoints, left = seq.keypoints, seq.is_left
    else:
        keypoints = synthetic_hand_sequence(max(args.frames, 6))
        left = np.zeros(len(keypoints), dtype=bool)
    if args.frames and len(keypoints) > args.frames:
        keep = np.linspace(0, len(keypoints) - 1, args.frames).round().astype(int)
        keypoints, left = keypoints[keep], left[keep]
    model, _ = _load_model(args.checkpoint)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # One camera for the whole sequence so the hand does not jump between frames,
    # looking at the palm with the fingers up.
    centre = keypoints.reshape(-1, 3).mean(0)
    camera = render.Camera.framing(keypoints.reshape(-1, 3) - centre, fill=0.7, view=_palm_view(keypoints))
    frames = []
    for i in _progress(range(len(keypoints)), len(keypoints), "demo"):
        hand = extract_hand_mesh(
            model,
            keypoints[i] - centre,
            is_left=bool(left[i]),
            resolution_0=args.resolution_0,
            upsampling_steps=args.upsampling_steps,
        )
        img = render.render_hand_and_skeleton(hand.mesh, keypoints[i] - centre, camera=camera)
        render.save_png(img, out / f"{i:03d}.png")
        frames.append(img)
    anim = render.write_animation(frames, out / "demo.gif", fps=args.fps)
    print(f"wrote {len(frames)} frames and {anim}")
    return 0


def _palm_view(keypoints: np.ndarray) -> np.ndarray:
    """Camera rotation (rows = camera x, y, z) looking at the palm, fingers pointing up in the image."""
    fingers = (keypoints[:, 9] - keypoints[:, 0]).mean(0)
    normal = np.cross(keypoints[:, 9] - keypoints[:, 0], keypoints[:, 5] - keypoints[:, 0]).mean(0)
    z = normal / np.linalg.norm(normal)
    y = -(fingers - fingers @ z * z)
    y /= np.linalg.norm(y)
    return np.stack([np.cross(y, z), y, z])


# ----------------------------------------------------------------------------- halo convert-checkpoint


def cmd_convert(args: argparse.Namespace) -> int:
    from halo.core.checkpoint import convert_original_checkpoint

    dst = convert_original_checkpoint(args.src, args.dst)
    print(f"wrote {dst}")
    return 0


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="halo",
        description="HALO: skeleton-driven neural occupancy for hands. Units: metres; joints: MANO order.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "mesh", help="hand meshes (+ renders) from a keypoint file", description=cmd_mesh.__doc__
    )
    p.description = (
        "Extract one mesh per hand from keypoints (.npy/.npz/.json/.pkl; (21,3) or (T,21,3), metres, "
        "MANO joint order) and render [skeleton | hand] PNGs."
    )
    _add_io_args(p, keypoints_help="keypoint file", keypoints_required=True)
    p.add_argument("--left", action="store_true", help="treat every hand as a left hand (mirrored)")
    p.add_argument("--format", default="ply", choices=["ply", "obj", "off", "glb"], help="mesh file format")
    p.add_argument("--part-colors", action="store_true", help="colour vertices by HALO part")
    p.add_argument("--no-render", action="store_true", help="skip the PNG renders")
    _add_extraction_args(p, 32, 3)
    p.set_defaults(func=cmd_mesh)

    p = sub.add_parser("demo", help="render a keypoint sequence to frames + GIF")
    p.description = (
        "Render a keypoint sequence as [skeleton | hand] frames and an animated GIF (the original demo). "
        "Without --keypoints a built-in sequence is used: the synthetic MANO-format hand moving through "
        "sampled poses (open -> fist -> pinch -> point -> grasp -> open)."
    )
    _add_io_args(p, keypoints_help="keypoint sequence file (default: built-in sequence)")
    p.add_argument("--frames", type=int, default=24, help="number of frames (subsamples longer files)")
    p.add_argument("--fps", type=float, default=12.0, help="GIF frame rate")
    _add_extraction_args(p, 32, 2)
    p.set_defaults(func=cmd_demo)

    from halo.cli.data import add_data_parser

    add_data_parser(sub)

    from halo.cli.eval import add_eval_parser

    add_eval_parser(sub)

    from halo.cli.grasps import add_intersect_parser

    add_intersect_parser(sub)

    from halo.cli.refine import add_parser as add_refine_parser

    add_refine_parser(sub)

    p = sub.add_parser("convert-checkpoint", help="original model_best.pt -> this project's format")
    p.description = "One-off converter from the original release's checkpoint to this project's format."
    p.add_argument("src", help="original checkpoint (model_best.pt)")
    p.add_argument("dst", help="output path")
    p.set_defaults(func=cmd_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    from halo.cli.data import DataCliError
    from halo.cli.eval import EvalCliError
    from halo.core.canonicalization import CanonicalizationError
    from halo.core.checkpoint import CheckpointError
    from halo.data.keypoint_files import KeypointFileError
    from halo.data.layout import DatasetFormatError
    from halo.utils.allocator import tune_allocator

    parser = build_parser()
    args = parser.parse_args(argv)
    tune_allocator()
    try:
        return args.func(args)
    except (
        CliError,
        DataCliError,
        EvalCliError,
        DatasetFormatError,
        KeypointFileError,
        CheckpointError,
        CanonicalizationError,
        FileNotFoundError,
    ) as exc:
        command = args.command + (f" {args.data_command}" if args.command == "data" else "")
        print(f"halo {command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"halo {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
