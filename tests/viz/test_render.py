"""Tests of the offscreen renderer (halo.viz.render): geometry, shading, conventions, I/O, input checks.

Rendering needs an EGL context (Mesa's llvmpipe on CPU machines); tests that draw skip with
the install hint when none can be created.  Everything is built here, no reference files.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import trimesh

from halo.core.skeleton import FINGER_JOINTS
from halo.viz import images, render
from halo.viz.render import (
    Camera,
    render_grid,
    render_hand_and_skeleton,
    render_mesh,
    render_scene,
    render_skeleton,
    save_png,
    skeleton_mesh,
    write_animation,
)


@pytest.fixture(scope="module")
def gl():
    """Skip drawing tests when no offscreen OpenGL context can be made on this machine."""
    try:
        render_mesh(trimesh.creation.icosphere(subdivisions=1, radius=0.1), Camera(width=16, height=16))
    except RuntimeError as exc:
        pytest.skip(f"no offscreen OpenGL: {exc}")


def synthetic_keypoints() -> np.ndarray:
    """(21, 3) metres, MANO order: an open hand in the z = 0 plane, wrist at the origin, fingers up (-y)."""
    kp = np.zeros((21, 3))
    angles = np.deg2rad([55.0, 20.0, 0.0, -18.0, -36.0])  # thumb ... pinky, from image-up, towards +x
    root_dist = [0.03, 0.08, 0.08, 0.075, 0.07]
    seg = [0.03, 0.03, 0.025, 0.022, 0.02]
    for f, joints in enumerate(FINGER_JOINTS):
        d = np.array([np.sin(angles[f]), -np.cos(angles[f]), 0.0])  # thumb towards +x
        for k, j in enumerate(joints):
            kp[j] = d * (root_dist[f] + k * seg[f])
            kp[j, 2] = 0.004 * k  # small depth variation
    return kp


def foreground(image: np.ndarray, background=(255, 255, 255), tol: int = 3) -> np.ndarray:
    """(H, W) bool mask of pixels that differ from the background colour."""
    return np.abs(image.astype(int) - np.asarray(background)).max(axis=-1) > tol


def centroid(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    return np.array([cols.mean(), rows.mean()])  # (u, v)


# ----------------------------------------------------------------------------
# Camera maths (no OpenGL)
# ----------------------------------------------------------------------------
def test_project_demo_camera_and_directions():
    cam = Camera()  # the original demo camera
    uv = cam.project(np.array([[0.0, 0.0, 0.0], [0.01, 0.0, 0.0], [0.0, 0.01, 0.0]]))
    # wrist at the origin: u = centre, v = centre + 5000 * 0.05 / 2.5 = centre + 100
    np.testing.assert_allclose(uv[0], [299.5, 399.5])
    assert uv[1, 0] > uv[0, 0] and uv[1, 1] == pytest.approx(uv[0, 1])  # +x -> right
    assert uv[2, 1] > uv[0, 1] and uv[2, 0] == pytest.approx(uv[0, 0])  # +y -> down
    assert np.isnan(cam.project(np.array([[0.0, 0.0, -3.0]]))).all()  # behind the camera


def test_framing_keeps_points_inside():
    pts = synthetic_keypoints() + [0.3, -0.2, 0.5]
    for view in ("front", "side", "top", "back", "left", "bottom"):
        cam = Camera.framing(pts, width=200, height=150, fill=0.8, view=view)
        uv = cam.project(pts)
        assert np.isfinite(uv).all()
        span = uv.max(0) - uv.min(0)
        assert (uv.min(0) >= [0.09 * 200 - 1, 0.09 * 150 - 1]).all(), view
        assert (uv.max(0) <= [0.91 * 200, 0.91 * 150]).all(), view
        # the tighter axis is filled to 80 %, and the box is centred
        assert max(span[0] / 200, span[1] / 150) == pytest.approx(0.8, abs=0.02), view
        np.testing.assert_allclose((uv.min(0) + uv.max(0)) / 2, [99.5, 74.5], atol=1.5)


def test_import_is_lazy():
    code = "import sys, halo.viz.render; assert 'OpenGL' not in sys.modules and 'pyrender' not in sys.modules"
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env=env)


# ----------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------
def test_sphere_disc_matches_projection(gl):
    radius, dist, f = 0.1, 1.0, 400.0
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=radius)
    bg = (0.2, 0.3, 0.4)
    bg_u8 = np.round(np.array(bg) * 255)
    # On the optical axis the silhouette is an exact circle of radius f r / sqrt(d^2 - r^2).
    cam = Camera(width=200, height=200, focal=f, translation=(0.0, 0.0, dist))
    img = render_mesh(sphere, cam, background=bg)
    assert img.shape == (200, 200, 3) and img.dtype == np.uint8
    mask = foreground(img, bg_u8)
    expected_r = f * radius / np.sqrt(dist**2 - radius**2)
    np.testing.assert_allclose(centroid(mask), [99.5, 99.5], atol=0.5)
    assert np.sqrt(mask.sum() / np.pi) == pytest.approx(expected_r, abs=1.5)
    yy, xx = np.mgrid[:200, :200]
    far = np.hypot(xx - 99.5, yy - 99.5) > expected_r + 2
    assert np.abs(img[far].astype(int) - bg_u8).max() <= 1  # background is exactly the background

    # Off-axis with a non-central principal point: the disc centre follows Camera.project.
    centre = np.array([[0.06, -0.04, 0.2]])
    cam2 = Camera(width=220, height=180, focal=500.0, cx=100.0, cy=80.0, translation=(0.0, 0.0, 1.5))
    img2 = render_mesh(sphere.copy().apply_translation(centre[0]), cam2, background=bg)
    np.testing.assert_allclose(centroid(foreground(img2, bg_u8)), cam2.project(centre)[0], atol=1.0)


def test_mesh_vertex_colours_are_used_unless_a_colour_is_given(gl):
    # part-labelled hand meshes carry vertex colours; halo mesh --part-colors renders them
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.1)
    sphere.visual.vertex_colors = np.tile([200, 30, 30, 255], (len(sphere.vertices), 1)).astype(np.uint8)
    cam = Camera(width=120, height=120, focal=300.0, translation=(0, 0, 1.0))
    own = render_mesh(sphere, cam)[60, 60].astype(int)
    assert own[0] > 2 * own[1] and own[0] > 2 * own[2]  # red
    given = render_mesh(sphere, cam, color=(0.6, 0.75, 0.95))[60, 60].astype(int)
    assert given[2] > given[0]  # the explicit colour wins


def test_shading_is_not_flat(gl):
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.1)
    img = render_mesh(sphere, Camera(width=160, height=160, focal=300.0, translation=(0, 0, 1.0)))
    mask = foreground(img)
    lum = img.astype(float).mean(-1)
    c = centroid(mask)
    yy, xx = np.mgrid[:160, :160]
    upper_left = mask & (xx < c[0]) & (yy < c[1])
    lower_right = mask & (xx > c[0]) & (yy > c[1])
    # The key light is above-left of the camera.
    assert lum[upper_left].mean() > lum[lower_right].mean() + 15
    assert np.percentile(lum[mask], 95) - np.percentile(lum[mask], 5) > 40
    # Smooth normals: neighbouring interior pixels change gradually (no facet steps).
    inner = mask & (np.hypot(xx - c[0], yy - c[1]) < 20)
    jumps = np.abs(np.diff(lum, axis=1))[inner[:, 1:] & inner[:, :-1]]
    assert jumps.max() < 8


def test_skeleton_projection_convention(gl):
    kp = synthetic_keypoints()
    cam = Camera(width=240, height=240, focal=1000.0, translation=(0.0, 0.06, 1.0))
    img = render_skeleton(kp, cam)
    mask = foreground(img)
    uv = np.round(cam.project(kp)).astype(int)
    assert ((uv >= 0) & (uv < 240)).all()
    assert mask[uv[:, 1], uv[:, 0]].all()  # every joint is drawn where Camera.project puts it

    # Moving the geometry +x moves it right, +y moves it down, by the projected amount.
    ball = trimesh.creation.icosphere(subdivisions=3, radius=0.01)
    base = centroid(foreground(render_mesh(ball, cam)))
    for shift, axis in (([0.02, 0, 0], 0), ([0, 0.02, 0], 1)):
        moved = centroid(foreground(render_mesh(ball.copy().apply_translation(shift), cam)))
        delta = cam.project(np.array([shift]))[0] - cam.project(np.zeros((1, 3)))[0]
        assert moved[axis] - base[axis] > 15
        np.testing.assert_allclose(moved - base, delta, atol=1.0)


def test_rotated_camera_matches_projection(gl):
    kp = synthetic_keypoints()
    cam = Camera.framing(kp, width=160, height=160, view="side")
    mask = foreground(render_skeleton(kp, cam, joint_radius=0.004))
    uv = np.round(cam.project(kp)).astype(int)
    assert mask[uv[:, 1], uv[:, 0]].all()


def test_side_by_side_and_scene(gl):
    kp = synthetic_keypoints()
    hand = trimesh.creation.capsule(height=0.08, radius=0.02).apply_translation([0, -0.05, 0])
    cam = Camera(width=120, height=100, focal=700.0, translation=(0, 0.05, 1.0))
    img = render_hand_and_skeleton(hand, kp, cam)
    assert img.shape == (100, 240, 3)
    assert foreground(img[:, :120]).any() and foreground(img[:, 120:]).any()
    assert render_hand_and_skeleton(hand, kp).shape == (600, 1200, 3)  # auto framing

    obj = trimesh.creation.icosphere(subdivisions=2, radius=0.03).apply_translation([0.05, 0, 0.05])
    scene = render_scene([hand, obj], colors=[(0.6, 0.75, 0.95), (0.9, 0.2, 0.2)])
    assert scene.shape == (600, 600, 3)
    reddish = (scene[..., 0].astype(int) - scene[..., 2]) > 40
    bluish = (scene[..., 2].astype(int) - scene[..., 0]) > 20
    assert reddish.any() and bluish.any()


def test_skeleton_mesh_colours():
    mesh = skeleton_mesh(synthetic_keypoints())
    assert mesh.visual.kind == "vertex"
    colours = np.unique(mesh.visual.vertex_colors[:, :3], axis=0)
    assert len(colours) == 6  # 5 fingers + wrist
    uniform = skeleton_mesh(synthetic_keypoints(), color=(0.5, 0.5, 0.5))
    assert len(np.unique(uniform.visual.vertex_colors, axis=0)) == 1


def test_egl_failure_is_a_clear_error(monkeypatch):
    pyrender = render._pyrender()

    def broken(*args, **kwargs):
        raise OSError("no EGL display")

    monkeypatch.setattr(pyrender, "OffscreenRenderer", broken)
    monkeypatch.setattr(render, "_RENDERER", None)  # restored after the test
    with pytest.raises(RuntimeError, match="libegl1 libegl-mesa0 libgl1-mesa-dri"):
        render_mesh(trimesh.creation.icosphere(subdivisions=1), Camera(width=31, height=17))


# ----------------------------------------------------------------------------
# Images and animations
# ----------------------------------------------------------------------------
def test_grid_shape_and_labels():
    imgs = [np.full((30, 40, 3), 40 * i, np.uint8) for i in range(5)]
    assert render_grid(imgs, ncols=2).shape == (90, 80, 3)
    grid = render_grid(imgs, ncols=3, labels=list("abcde"), pad=2)
    assert grid.shape == (2 * 30 + 3 * 2, 3 * 40 + 4 * 2, 3)
    assert not np.array_equal(grid, render_grid(imgs, ncols=3, pad=2))  # labels were drawn
    mixed = render_grid([np.zeros((10, 12)), np.ones((20, 8, 4))], ncols=2)  # grey + RGBA float
    assert mixed.shape == (20, 24, 3)
    with pytest.raises(ValueError, match="labels"):
        render_grid(imgs, ncols=2, labels=["x"])


def test_png_and_gif_round_trip(tmp_path):
    frames = [np.full((32, 48, 3), (20 * i, 255 - 20 * i, 128), np.uint8) for i in range(6)]
    png = save_png(frames[1], tmp_path / "sub" / "a.png")
    np.testing.assert_array_equal(iio.imread(png), frames[1])
    gif = write_animation(frames, tmp_path / "anim.gif", fps=10)
    back = iio.imread(gif, index=None)
    assert back.shape[:3] == (6, 32, 48)
    with pytest.raises(ValueError, match="same size"):
        write_animation([frames[0], np.zeros((10, 10, 3), np.uint8)], tmp_path / "bad.gif")


def test_mp4_without_writer_suggests_gif(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "_mp4_writer_available", lambda: None)
    with pytest.raises(RuntimeError, match=r"\.gif"):
        write_animation([np.zeros((8, 8, 3), np.uint8)], tmp_path / "a.mp4")


# ----------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------
def test_bad_input_raises_value_error():
    kp = synthetic_keypoints()
    with pytest.raises(ValueError, match="empty"):
        render_mesh(trimesh.Trimesh())
    with pytest.raises(ValueError, match=r"shape \(21, 3\)"):
        render_skeleton(kp[:20])
    with pytest.raises(ValueError, match=r"shape \(21, 3\)"):
        skeleton_mesh(kp[None])
    bad = kp.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        render_skeleton(bad)
    mesh = trimesh.creation.icosphere(subdivisions=1)
    mesh.vertices[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        render_mesh(mesh)
    with pytest.raises(ValueError, match="NaN"):
        Camera().project(np.array([[0.0, np.nan, 0.0]]))
    with pytest.raises(ValueError, match="empty"):
        render_scene([trimesh.creation.icosphere(), trimesh.Trimesh()])
    with pytest.raises(ValueError, match="rotation"):
        Camera(rotation=np.ones((3, 3)))
    with pytest.raises(ValueError, match="view"):
        Camera.framing(kp, view="diagonal")
