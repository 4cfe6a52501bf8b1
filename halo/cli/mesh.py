"""``halo mesh``, ``halo demo`` and ``halo convert-checkpoint``: a HALO base model on keypoint files."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from halo.cli.common import default_checkpoint, load_halo_model
from halo.cli.options import add_extraction_args, add_trust_checkpoint_arg, check_extraction_args
from halo.geometry.mesh_io import save_mesh
from halo.utils.progress import progress_bar


def _add_io_args(p: argparse.ArgumentParser, keypoints_help: str, keypoints_required: bool = False) -> None:
    p.add_argument(
        "--checkpoint", default=default_checkpoint(), help="HALO base checkpoint (original or own)"
    )
    add_trust_checkpoint_arg(p)
    p.add_argument("--keypoints", required=keypoints_required, help=keypoints_help)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--units", default="m", choices=["m", "cm", "mm"], help="units of the keypoint file")
    add_extraction_args(p)
    p.add_argument("--threshold", type=float, default=0.5, help="occupancy iso-level (default 0.5)")


# ----------------------------------------------------------------------------- halo mesh


def cmd_mesh(args: argparse.Namespace) -> int:
    from halo.data.keypoint_files import load_keypoints
    from halo.meshing.hand_mesh import extract_hand_meshes
    from halo.viz import render

    check_extraction_args(args)
    seq = load_keypoints(args.keypoints, units=args.units)
    model, _ = load_halo_model(args.checkpoint, args.trust_checkpoint)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n = len(seq.keypoints)
    t0 = time.perf_counter()
    with progress_bar(total=n, desc="meshing", unit="hand") as bar:
        # Several hands per network call (the same meshes as one by one).
        hands = extract_hand_meshes(
            model,
            seq.keypoints,
            is_left=np.asarray(seq.is_left, bool) | bool(args.left),
            resolution_0=args.resolution_0,
            upsampling_steps=args.upsampling_steps,
            threshold=args.threshold,
            part_labels=args.part_colors,
            part_colors=render.PART_COLORS if args.part_colors else None,
            interpolate=args.interpolate,
            progress=lambda done: bar.update(done - bar.n),  # called with the hands done so far
        )
    seconds_per_hand = (time.perf_counter() - t0) / n
    for i, hand in enumerate(hands):
        stem = out / f"hand_{i:03d}"
        save_mesh(hand.mesh, stem.with_suffix(f".{args.format}"))
        if not args.no_render:
            if len(hand.mesh.faces) == 0:
                print(f"warning: hand {i} produced an empty mesh; skipping its render", file=sys.stderr)
                continue
            img = render.render_hand_and_skeleton(hand.mesh, seq.keypoints[i])
            render.save_png(img, stem.with_suffix(".png"))
    print(
        f"wrote {n} mesh(es) to {out} (effective resolution "
        f"{args.resolution_0 * 2**args.upsampling_steps}, {seconds_per_hand:.2f} s per hand)"
    )
    return 0


# ----------------------------------------------------------------------------- halo demo


def cmd_demo(args: argparse.Namespace) -> int:
    from halo.data.keypoint_files import load_keypoints
    from halo.hands.sequences import synthetic_hand_sequence
    from halo.meshing.hand_mesh import extract_hand_meshes
    from halo.viz import render
    from halo.viz.camera import palm_view

    check_extraction_args(args)
    if args.keypoints:
        seq = load_keypoints(args.keypoints, units=args.units)
        keypoints, left = seq.keypoints, seq.is_left
    else:
        keypoints = synthetic_hand_sequence(max(args.frames, 6))
        left = np.zeros(len(keypoints), dtype=bool)
    if args.frames and len(keypoints) > args.frames:
        keep = np.linspace(0, len(keypoints) - 1, args.frames).round().astype(int)
        keypoints, left = keypoints[keep], left[keep]
    model, _ = load_halo_model(args.checkpoint, args.trust_checkpoint)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # One camera for the whole sequence so the hand does not jump between frames,
    # looking at the palm with the fingers up.
    centre = keypoints.reshape(-1, 3).mean(0)
    camera = render.Camera.framing(
        keypoints.reshape(-1, 3) - centre, fill=0.7, view=palm_view(keypoints.mean(0))
    )
    frames = []
    with progress_bar(total=len(keypoints), desc="demo", unit="hand") as bar:
        hands = extract_hand_meshes(
            model,
            keypoints - centre,
            is_left=np.asarray(left, bool),
            resolution_0=args.resolution_0,
            upsampling_steps=args.upsampling_steps,
            threshold=args.threshold,
            interpolate=args.interpolate,
            progress=lambda done: bar.update(done - bar.n),  # called with the hands done so far
        )
    for i, hand in enumerate(hands):
        img = render.render_hand_and_skeleton(hand.mesh, keypoints[i] - centre, camera=camera)
        render.save_png(img, out / f"{i:03d}.png")
        frames.append(img)
    anim = render.write_animation(frames, out / "demo.gif", fps=args.fps)
    print(f"wrote {len(frames)} frames and {anim}")
    return 0


# ----------------------------------------------------------------------------- halo convert-checkpoint


def cmd_convert(args: argparse.Namespace) -> int:
    from halo.core.checkpoint import convert_original_checkpoint

    dst = convert_original_checkpoint(args.src, args.dst, trust_pickle=args.trust_checkpoint)
    print(f"wrote {dst}")
    return 0


# ----------------------------------------------------------------------------- parser


def add_parser(commands) -> None:
    """Register ``halo mesh``, ``halo demo`` and ``halo convert-checkpoint``."""
    p = commands.add_parser("mesh", help="hand meshes (+ renders) from a keypoint file")
    p.description = (
        "Extract one mesh per hand from keypoints (.npy/.npz/.json/.pkl; (21,3) or (T,21,3), metres, "
        "MANO joint order) and render [skeleton | hand] PNGs."
    )
    _add_io_args(p, keypoints_help="keypoint file", keypoints_required=True)
    p.add_argument("--left", action="store_true", help="treat every hand as a left hand (mirrored)")
    p.add_argument("--format", default="ply", choices=["ply", "obj", "off", "glb"], help="mesh file format")
    p.add_argument("--part-colors", action="store_true", help="colour vertices by HALO part")
    p.add_argument("--no-render", action="store_true", help="skip the PNG renders")
    p.set_defaults(func=cmd_mesh)

    p = commands.add_parser("demo", help="render a keypoint sequence to frames + GIF")
    p.description = (
        "Render a keypoint sequence as [skeleton | hand] frames and an animated GIF (the original demo). "
        "Without --keypoints a built-in sequence is used: the synthetic MANO-format hand moving through "
        "sampled poses (open -> fist -> pinch -> point -> grasp -> open)."
    )
    _add_io_args(p, keypoints_help="keypoint sequence file (default: built-in sequence)")
    p.add_argument("--frames", type=int, default=24, help="number of frames (subsamples longer files)")
    p.add_argument("--fps", type=float, default=12.0, help="GIF frame rate")
    p.set_defaults(func=cmd_demo)

    p = commands.add_parser("convert-checkpoint", help="original model_best.pt -> this project's format")
    p.description = "One-off converter from the original release's checkpoint to this project's format."
    p.add_argument("src", help="original checkpoint (model_best.pt)")
    p.add_argument("dst", help="output path")
    add_trust_checkpoint_arg(p)
    p.set_defaults(func=cmd_convert)
