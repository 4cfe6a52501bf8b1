"""One base class for input errors: every reader's error is one, and the CLI reports any of them as one line."""

from __future__ import annotations

import importlib

import pytest

from halo.utils.errors import InputError

READER_ERRORS = [
    ("halo.core.canonicalization", "CanonicalizationError"),
    ("halo.core.checkpoint", "CheckpointError"),
    ("halo.core.checkpoint", "UntrustedCheckpointError"),
    ("halo.data.keypoint_files", "KeypointFileError"),
    ("halo.data.layout", "DatasetFormatError"),
    ("halo.data.youtube3d_file", "YouTube3DError"),
    ("halo.fit.inputs", "FitInputError"),
    ("halo.geometry.inside", "MeshNotWatertightError"),
    ("halo.geometry.mesh_io", "MeshFileError"),
    ("halo.grasp.grab", "GrabFileError"),
    ("halo.grasp.kinematics", "KinematicsError"),
    ("halo.grasp.metrics", "GridTooLargeError"),
    ("halo.grasp.refine", "RefineError"),
    ("halo.grasp.vae", "GraspVaeError"),
    ("halo.hands.mano_file", "ManoModelError"),
]


@pytest.mark.parametrize("module, name", READER_ERRORS)
def test_every_input_error_class_shares_the_base(module, name):
    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, InputError) and issubclass(cls, ValueError)


def test_the_cli_reports_any_input_error_as_one_line(monkeypatch, capsys):
    from halo.cli import mesh
    from halo.cli.app import main
    from halo.hands.mano_file import ManoModelError

    def broken(args):
        raise ManoModelError("MANO_RIGHT.pkl: missing key 'weights'")

    monkeypatch.setattr(mesh, "cmd_convert", broken)
    assert main(["convert-checkpoint", "a", "b"]) == 2
    assert (
        capsys.readouterr().err == "halo convert-checkpoint: error: MANO_RIGHT.pkl: missing key 'weights'\n"
    )
