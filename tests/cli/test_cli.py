"""The halo CLI and keypoint files: formats, clear one-line errors, outputs that are really written."""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
import trimesh

from halo.cli.app import build_parser, main
from halo.cli.common import CliError
from halo.core.checkpoint import save_checkpoint
from halo.core.model import HaloModel, NetworkConfig
from halo.data.keypoint_files import KeypointFileError, load_keypoints
from halo.hands.sequences import builtin_sequence, random_skeletons, synthetic_hand_sequence
from tests.helpers import random_hands

# ----------------------------------------------------------------------------- keypoint files


@pytest.fixture
def hands():
    return random_skeletons(3, seed=1).astype(np.float32)


@pytest.mark.parametrize("fmt", ["npy", "npz", "npz_bare", "json", "json_list", "pkl_list", "pkl_dict"])
def test_keypoint_formats_round_trip(tmp_path, hands, fmt):
    path = tmp_path / f"kp.{fmt.split('_')[0]}"
    if fmt == "npy":
        np.save(path, hands)
    elif fmt == "npz":
        np.savez(path, keypoints=hands, is_left=np.array([0, 1, 0]))
    elif fmt == "npz_bare":
        np.savez(path, anything=hands)
    elif fmt == "json":
        path.write_text(json.dumps({"keypoints": hands.tolist()}))
    elif fmt == "json_list":
        path.write_text(json.dumps(hands.tolist()))
    elif fmt == "pkl_list":  # the original demo's kps_seq.pkl layout
        path.write_bytes(pickle.dumps([h for h in hands], protocol=2))
    else:
        path.write_bytes(pickle.dumps({"keypoints": hands}))
    seq = load_keypoints(path)
    np.testing.assert_allclose(seq.keypoints, hands, atol=1e-6)
    assert seq.keypoints.dtype == np.float32 and seq.keypoints.shape == (3, 21, 3)
    if fmt == "npz":
        assert seq.is_left.tolist() == [False, True, False]


def test_single_hand_and_units(tmp_path, hands):
    np.save(tmp_path / "one.npy", hands[0] * 100)
    with pytest.raises(KeypointFileError, match=r"one.npy: keypoints look like centimetres"):
        load_keypoints(tmp_path / "one.npy")
    seq = load_keypoints(tmp_path / "one.npy", units="cm")
    assert seq.keypoints.shape == (1, 21, 3)
    np.testing.assert_allclose(seq.keypoints[0], hands[0], atol=1e-6)


@pytest.mark.parametrize(
    "writer, message",
    [
        (lambda p: np.save(p.with_suffix(".npy"), np.zeros((2, 20, 3))), r"shape \(21, 3\) or \(T, 21, 3\)"),
        (lambda p: np.savez(p.with_suffix(".npz"), a=np.zeros(3), b=np.zeros(3)), r"no 'keypoints' array"),
        (lambda p: p.with_suffix(".json").write_text("{not json"), r"cannot be read"),
        (lambda p: p.with_suffix(".json").write_text('{"points": []}'), r"no 'keypoints' key"),
        (lambda p: p.with_suffix(".npy").write_bytes(b"\x93NUMPY garbage"), r"cannot be read"),
        (lambda p: p.with_suffix(".txt").write_text("1 2 3"), r"unsupported keypoint file type"),
        (lambda p: np.save(p.with_suffix(".npy"), np.full((21, 3), 0.01 + 0.01j)), r"not real-valued"),
    ],
)
def test_bad_keypoint_files_name_file_and_problem(tmp_path, writer, message):
    writer(tmp_path / "bad")
    path = next(tmp_path.iterdir())
    with pytest.raises(KeypointFileError, match=message) as exc:
        load_keypoints(path)
    assert path.name in str(exc.value)


def test_nan_keypoints_are_reported_with_their_index(tmp_path, hands):
    hands[2, 4, 1] = np.nan
    np.save(tmp_path / "nan.npy", hands)
    with pytest.raises(KeypointFileError, match=r"nan.npy: hand 2 contains NaN"):
        load_keypoints(tmp_path / "nan.npy")


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_malicious_keypoint_pickle_is_refused_without_running_it(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"keypoints": _Evil()}))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(KeypointFileError, match=r"refusing to unpickle (posix|os)\.system"):
            load_keypoints(path)
    finally:
        os.chdir(cwd)
    assert not (tmp_path / "pwned").exists()


def test_builtin_sequences_are_valid_hands():
    for seq in (builtin_sequence(40), synthetic_hand_sequence(40)):
        assert seq.shape == (40, 21, 3) and np.isfinite(seq).all()
        palm = np.linalg.norm(seq[:, 9] - seq[:, 0], axis=-1)
        assert np.all((palm > 0.07) & (palm < 0.12))  # adult palm length, metres
        assert np.abs(np.diff(seq, axis=0)).max() < 0.03  # smooth: no joint jumps > 3 cm between frames


# ----------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def ball_checkpoint(tmp_path_factory):
    """A tiny own-format checkpoint whose palm part is a ball around the wrist (a non-empty mesh)."""
    torch.manual_seed(0)
    model = HaloModel()
    with torch.no_grad():
        net = model.network
        for w, b in zip(net.weights, net.biases, strict=True):
            w.zero_()
            b.zero_()
        # hidden units 0..2 carry x, y, z of the canonical point; the last layer
        # turns them into 8 * (0.3 - |x|_1): an octahedron of "radius" 0.3 model units.
        net.weights[0][:, 0:3, 0:3] = torch.eye(3)
        net.weights[0][:, 3:6, 0:3] = -torch.eye(3)
        net.weights[-1][:, 0, 0:6] = -8.0 / 1.1  # leaky: |x| ~ (relu(x) + relu(-x))
        net.biases[-1][:] = -100.0  # every part off ...
        net.biases[-1][0] = 8 * 0.3  # ... but the palm, whose canonical frame is centred on the wrist
        for i in (1, 2, 3):
            net.weights[i][:, :6, :6] = 0  # residual carries them through
    path = tmp_path_factory.mktemp("ckpt") / "ball.pt"
    return save_checkpoint(model, path)


def test_halo_mesh_writes_meshes_and_renders(tmp_path, ball_checkpoint, hands):
    np.save(tmp_path / "kp.npy", hands[:2])
    rc = main(
        ["mesh", "--checkpoint", str(ball_checkpoint), "--keypoints", str(tmp_path / "kp.npy"),
         "--out", str(tmp_path / "out"), "--resolution-0", "16", "--upsampling-steps", "1"]
    )  # fmt: skip
    assert rc == 0
    for i in range(2):
        mesh = trimesh.load(tmp_path / "out" / f"hand_{i:03d}.ply")
        assert len(mesh.faces) > 0 and mesh.is_watertight
        # the mesh surrounds this hand's wrist (the ball is centred there)
        assert np.linalg.norm(mesh.vertices.mean(0) - hands[i, 0]) < 0.03
        assert (tmp_path / "out" / f"hand_{i:03d}.png").stat().st_size > 1000


def test_halo_demo_writes_frames_and_gif(tmp_path, ball_checkpoint):
    rc = main(
        ["demo", "--checkpoint", str(ball_checkpoint), "--out", str(tmp_path / "demo"), "--frames", "6",
         "--resolution-0", "16", "--upsampling-steps", "1"]
    )  # fmt: skip
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "demo").glob("*.png")) == [f"{i:03d}.png" for i in range(6)]
    import imageio.v3 as iio

    assert iio.imread(tmp_path / "demo" / "demo.gif", index=None).shape[0] == 6


@pytest.mark.parametrize(
    "argv_tail, message",
    [
        (["--keypoints", "missing.npy"], "missing.npy: no such file"),
        (["--keypoints", "{kp}", "--checkpoint", "nope.pt"], "nope.pt: no such checkpoint file"),
        (["--keypoints", "{cm}"], "look like centimetres"),
    ],
)
def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, hands, argv_tail, message, ball_checkpoint):
    np.save(tmp_path / "kp.npy", hands)
    np.save(tmp_path / "cm.npy", hands * 100)
    argv = [a.format(kp=tmp_path / "kp.npy", cm=tmp_path / "cm.npy") for a in argv_tail]
    if "--checkpoint" not in argv:
        argv += ["--checkpoint", str(ball_checkpoint)]
    proc = subprocess.run(
        [sys.executable, "-m", "halo.cli", "mesh", "--out", str(tmp_path / "o"), *argv],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr


def _command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> dict[tuple, object]:
    """{("eval", "grasps"): its parser, ...} for every leaf command of the tree."""
    out = {}
    for action in parser._actions:  # argparse has no public walk of its subparsers
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.update(_command_paths(sub, (*prefix, name)) or {(*prefix, name): sub})
    return out


EVERY_COMMAND = {
    ("mesh",), ("demo",), ("convert-checkpoint",), ("intersect",), ("fit",),
    ("data", "prepare"), ("data", "build"), ("data", "synth"), ("data", "show"),
    ("data", "grasps-synth"), ("data", "grasps-show"),
    ("eval", "meshes"), ("eval", "grasps"), ("generate", "meshes"), ("generate", "grasps"),
    ("refine", "grasps"),
}  # fmt: skip


def test_every_command_and_subcommand_has_help(capsys):
    commands = _command_paths(build_parser())
    assert set(commands) == EVERY_COMMAND  # nothing lost (or added unnoticed) by the registration
    for path in sorted(commands):
        with pytest.raises(SystemExit) as done:
            main([*path, "--help"])
        out = capsys.readouterr().out
        assert done.value.code == 0 and out.startswith("usage: halo " + " ".join(path)), path
        assert "--help" in out
    # The groups list their subcommands; the installed entry point answers too.
    for group, subs in (("data", 6), ("eval", 2), ("generate", 2)):
        with pytest.raises(SystemExit):
            main([group, "--help"])
        out = capsys.readouterr().out
        assert all(p[1] in out for p in EVERY_COMMAND if p[0] == group) and subs > 1
    proc = subprocess.run([sys.executable, "-m", "halo.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and all(p[0] in proc.stdout for p in EVERY_COMMAND)


def test_every_command_that_reads_a_checkpoint_offers_the_explicit_trust_opt_in():
    readers = set()
    for path, parser in _command_paths(build_parser()).items():
        options = {o for a in parser._actions for o in a.option_strings}
        if "--checkpoint" in options or path == ("convert-checkpoint",):
            readers.add(path)
            assert "--trust-checkpoint" in options, path
    assert {
        ("mesh",),
        ("demo",),
        ("fit",),
        ("eval", "grasps"),
        ("generate", "grasps"),
        ("refine", "grasps"),
    } <= readers


def test_mise_options_have_one_default_per_use():
    """--resolution-0/--upsampling-steps: 32/2 everywhere, 32/3 where grasps are scored (1 mm voxels)."""
    from halo.cli.options import DEFAULT_UPSAMPLING_STEPS, GRASP_UPSAMPLING_STEPS

    assert (DEFAULT_UPSAMPLING_STEPS, GRASP_UPSAMPLING_STEPS) == (2, 3)
    defaults = {}
    for path, parser in _command_paths(build_parser()).items():
        values = {
            a.dest: a.default for a in parser._actions if a.dest in ("resolution_0", "upsampling_steps")
        }
        if values:
            defaults[path] = (values["resolution_0"], values["upsampling_steps"])
    grasps = {("eval", "grasps"), ("generate", "grasps")}
    assert set(defaults) == {("mesh",), ("demo",), ("eval", "meshes"), ("generate", "meshes"), *grasps}
    assert {defaults[p] for p in defaults if p not in grasps} == {(32, 2)}
    assert {defaults[p] for p in grasps} == {(32, 3)}


def test_command_modules_share_one_error_class_and_import_no_sibling():
    """One CliError; command modules import only halo.cli.common / options (no cycles, no private names)."""
    import ast
    import importlib
    import inspect

    from halo.cli import app

    for name in app.COMMAND_MODULES:
        module = importlib.import_module(name)
        own_errors = [
            obj.__name__
            for obj in vars(module).values()
            if inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__ == name
        ]
        assert own_errors == [], (name, own_errors)
        tree = ast.parse(inspect.getsource(module))
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert {m for m in imported if m.startswith("halo.cli")} <= {"halo.cli.common", "halo.cli.options"}, (
            name
        )
        assert getattr(module, "CliError", CliError) is CliError


@pytest.mark.parametrize(
    "argv, message",
    [
        (["data", "build", "--out", "{tmp}/d", "--split", "x"], "halo data build: error: give exactly one source"),
        (["eval", "meshes", "--checkpoint", "{tmp}/no.ckpt"], "halo eval meshes: error: {tmp}/no.ckpt: checkpoint"),
        (["eval", "grasps", "--grasps", "{tmp}/none"], "halo eval grasps: error: --grasps {tmp}/none: no such"),
        (["generate", "grasps", "--checkpoint", "x.ckpt", "--objects", "o.ply", "-n", "0"],
         "halo generate grasps: error: -n must be >= 1, got 0"),
        (["intersect", "{tmp}/h.ply", "{tmp}/o.ply", "--pitch-mm", "0"], "halo intersect: error: --pitch-mm must be > 0"),
        (["mesh", "--keypoints", "k.npy", "--out", "{tmp}/o", "--upsampling-steps", "-1"],
         "halo mesh: error: --resolution-0 must be >= 2 and --upsampling-steps >= 0"),
        (["refine", "grasps", "--grasps", "{tmp}/broken", "--checkpoint", "{tmp}/base.pt", "--out", "{tmp}/o"],
         "halo refine grasps: error: object ball: cannot be read"),
    ],
)  # fmt: skip
def test_every_command_group_reports_a_cli_error_as_one_line(tmp_path, capsys, argv, message):
    # refine: one grasp beside an unreadable object mesh (a library MeshFileError, not a CliError)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "ball_obj.ply").write_text("ply\nformat ascii 1.0\nelement vertex 1\n")
    np.save(tmp_path / "broken" / "ball_0.npy", random_hands(1, seed=0, dtype=torch.float32)[0].numpy())
    save_checkpoint(HaloModel(NetworkConfig(hidden_dims=(8, 8, 8, 8))), tmp_path / "base.pt")
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(message.format(tmp=tmp_path)), err


def test_main_prints_a_cli_error_raised_anywhere_as_one_line(monkeypatch, capsys):
    from halo.cli import mesh

    def broken(args):
        raise CliError("bad.npy: something the user can fix")

    monkeypatch.setattr(mesh, "cmd_convert", broken)
    assert main(["convert-checkpoint", "a", "b"]) == 2
    assert capsys.readouterr().err == "halo convert-checkpoint: error: bad.npy: something the user can fix\n"


@pytest.mark.reference
def test_convert_checkpoint_command(tmp_path, halo_reference):
    assert main(["convert-checkpoint", str(halo_reference / "model_best.pt"), str(tmp_path / "own.pt")]) == 0
    payload = torch.load(tmp_path / "own.pt", weights_only=True)
    assert payload["format"] == "halo-base" and payload["metadata"]["iteration"] == 1029000
