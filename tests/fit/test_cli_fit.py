"""``halo fit`` end to end on a tiny case (a small HALO network with a fixed seed)."""

import json

import numpy as np
import pytest
import torch

from halo.cli.app import main
from halo.core.checkpoint import save_checkpoint
from halo.core.model import HaloModel, NetworkConfig
from halo.fit.priors import REST_KEYPOINTS
from tests.fit.capsule_hand import capsule_surface


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = HaloModel(NetworkConfig(hidden_dims=(16, 16), residual_layers=(1,)))
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(model, path)
    return path


# ~1 min under load (fit + meshing + offscreen render): not in the fast suite.
@pytest.mark.slow
def test_cli_writes_keypoints_report_and_render_and_flags_non_convergence(tmp_path, tiny_checkpoint, capsys):
    cloud = tmp_path / "hand_mm.npy"
    np.save(cloud, capsule_surface(REST_KEYPOINTS + [0.0, 0.0, 0.3], n=800).points * 1000)
    out = tmp_path / "fit" / "kp.npy"
    code = main(
        ["fit", "--checkpoint", str(tiny_checkpoint), "--points", str(cloud), "--out", str(out), "--units", "mm",
         "--iterations", "3", "--coarse-iterations", "3"]
    )  # fmt: skip
    err = capsys.readouterr().err
    # An untrained network cannot explain a hand: the run says so instead of failing silently.
    assert code == 3
    assert "did not converge" in err
    kp = np.load(out)
    assert kp.shape == (21, 3) and np.isfinite(kp).all()
    # Metres in the input's frame: the skeleton sits on the cloud (which is 30 cm from the origin).
    assert np.abs(kp.mean(0) - np.array([-0.09, -0.005, 0.3])).max() < 0.08
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["converged"] is False and report["reason"]
    assert report["units_factor"] == 0.001 and report["iterations"] > 0
    assert set(report["losses"]) == {"total", "surface_bce", "free_bce", "prior", "pose_prior"}
    png = out.with_suffix(".png")
    assert png.is_file() and png.stat().st_size > 1000


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        (np.zeros((0, 3)), [], "the point cloud is empty"),
        (np.full((200, 3), np.nan), [], "NaN"),
        ("hand_mm", ["--units", "m"], "looks like mm (pass --units mm)"),
    ],
)
def test_cli_bad_input_gets_one_line_and_exit_code_2(
    tmp_path, tiny_checkpoint, capsys, content, extra, message
):
    arr = capsule_surface(REST_KEYPOINTS, n=300).points * 1000 if isinstance(content, str) else content
    cloud = tmp_path / "in.npy"
    np.save(cloud, arr)
    out = tmp_path / "kp.npy"
    code = main(
        ["fit", "--checkpoint", str(tiny_checkpoint), "--points", str(cloud), "--out", str(out), *extra]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("halo fit: error:") and message in err and str(cloud) in err
    assert len(err.splitlines()) == 1
    assert not out.exists()


def test_cli_missing_points_file(tmp_path, tiny_checkpoint, capsys):
    code = main(
        [
            "fit",
            "--checkpoint",
            str(tiny_checkpoint),
            "--points",
            str(tmp_path / "none.ply"),
            "--out",
            str(tmp_path / "o.npy"),
        ]
    )
    assert code == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_cli_refuses_a_negative_pose_prior_weight_before_fitting(tmp_path, tiny_checkpoint, capsys):
    cloud = tmp_path / "in.npy"
    np.save(cloud, capsule_surface(REST_KEYPOINTS, n=300).points)
    out = tmp_path / "kp.npy"
    code = main(
        ["fit", "--checkpoint", str(tiny_checkpoint), "--points", str(cloud), "--out", str(out),
         "--pose-prior-weight", "-1"]
    )  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--pose-prior-weight must be a finite number >= 0, got -1.0" in err
    assert not out.exists()
