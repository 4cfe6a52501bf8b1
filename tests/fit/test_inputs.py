import numpy as np
import pytest
import trimesh

from halo.fit.inputs import (
    FitInputError,
    HandSurface,
    free_space_samples,
    hand_surface_from_mesh,
    load_hand_surface,
    single_view_cloud,
)
from halo.fit.priors import REST_KEYPOINTS
from tests.fit.capsule_hand import capsule_surface


@pytest.fixture
def hand_points() -> np.ndarray:
    return capsule_surface(REST_KEYPOINTS, n=2000).points


def test_point_cloud_in_centimetres_is_read_in_metres(tmp_path, hand_points):
    path = tmp_path / "hand.npy"
    np.save(path, hand_points * 100)
    explicit = load_hand_surface(path, units="cm")
    guessed = load_hand_surface(path)  # a 20 cm hand read as 20 m is impossible: cm guessed
    np.testing.assert_allclose(explicit.points, hand_points, atol=1e-12)
    np.testing.assert_allclose(guessed.points, hand_points, atol=1e-12)
    assert explicit.units_factor == 0.01


def test_npz_with_normals_and_mesh_files(tmp_path, hand_points):
    surf = capsule_surface(REST_KEYPOINTS, n=500)
    np.savez(tmp_path / "c.npz", points=surf.points, normals=surf.normals)
    loaded = load_hand_surface(tmp_path / "c.npz")
    np.testing.assert_allclose(loaded.normals, surf.normals, atol=1e-9)
    box = trimesh.creation.box(extents=(0.18, 0.09, 0.03))
    box.export(tmp_path / "box.off")
    mesh_surface = load_hand_surface(tmp_path / "box.off", num_samples=3000)
    assert mesh_surface.closed and len(mesh_surface.points) == 3000
    # Outward face normals: moving along them leaves the box.
    moved = mesh_surface.points + 0.005 * mesh_surface.normals
    assert not box.contains(moved).any()


@pytest.mark.parametrize(
    ("content", "units", "message"),
    [
        (np.zeros((0, 3)), None, "the point cloud is empty"),
        (np.full((100, 3), np.nan), None, "contain NaN"),
        (np.ones((100, 2)), None, "shape (N,3)"),
        ("mm", "m", "looks like mm (pass --units mm)"),
        ("m", "mm", "looks like m (pass --units m)"),
    ],
)
def test_bad_clouds_get_one_line_naming_the_file(tmp_path, hand_points, content, units, message):
    arr = {"mm": hand_points * 1000, "m": hand_points}.get(content) if isinstance(content, str) else content
    path = tmp_path / "bad.npy"
    np.save(path, arr)
    with pytest.raises(FitInputError) as err:
        load_hand_surface(path, units=units)
    text = str(err.value)
    assert message in text and str(path) in text and "\n" not in text


def test_missing_unsupported_and_keyless_files(tmp_path):
    with pytest.raises(FitInputError, match="no such file"):
        load_hand_surface(tmp_path / "nope.ply")
    (tmp_path / "x.txt").write_text("1 2 3")
    with pytest.raises(FitInputError, match="unsupported file type '.txt'"):
        load_hand_surface(tmp_path / "x.txt")
    np.savez(tmp_path / "k.npz", pts=np.zeros((10, 3)))
    with pytest.raises(FitInputError, match="no key 'points'"):
        load_hand_surface(tmp_path / "k.npz")


def test_free_space_samples_are_outside_and_inside_samples_inside():
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.05)
    surface = hand_surface_from_mesh(sphere, num_samples=4000)
    assert surface.closed
    q, labels = free_space_samples(surface, 2000)
    r = np.linalg.norm(q, axis=1)
    assert (labels == 1).sum() > 200 and (labels == 0).sum() > 1000
    assert (r[labels == 0] > 0.0525).all()  # >= 3 mm out (the icosphere's facets are < 0.3 mm off)
    assert (r[labels == 1] < 0.0495).all()


def test_partial_free_space_is_seen_through_and_inside_samples_lie_behind_the_points():
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.05)
    camera = np.array([0.0, 0.0, 0.4])
    view = single_view_cloud(sphere, camera, num_points=1500)
    assert view.partial and not view.closed
    assert (view.points[:, 2] > -0.005).all()  # only the camera's side is visible
    q, labels = free_space_samples(view, 1000)
    free, inside = q[labels == 0], q[labels == 1]
    assert len(inside) > 150 and len(free) > 600
    # Free: the segment from the camera to the sample misses the sphere (the camera sees past it),
    # whether the sample is in front of the visible side or beside the silhouette.
    d = free - camera
    t = np.clip(-(camera @ d.T) / (d * d).sum(1), 0, 1)
    closest = np.linalg.norm(camera + t[:, None] * d, axis=1)
    assert (closest > 0.0495).all()
    assert (free[:, 2] < 0).sum() > 50  # silhouette samples also lie beside and behind the sphere
    # Inside: 1-3 mm behind the visible points.
    r = np.linalg.norm(inside, axis=1)
    assert (r < 0.0499).all() and (r > 0.046).all() and (inside[:, 2] > 0).all()


def test_hand_surface_rejects_bad_normals(hand_points):
    with pytest.raises(FitInputError, match="zero length"):
        HandSurface(hand_points, np.zeros_like(hand_points))
