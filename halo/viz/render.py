"""Offscreen CPU rendering of hand meshes, keypoint skeletons and scenes.

Everything here renders without a display: pyrender draws through EGL, which on a
machine without a GPU is Mesa's llvmpipe software rasteriser (tens of milliseconds
for a 600x600 image of a 100k-face hand mesh).  ``import halo.viz.render`` is cheap:
OpenGL and pyrender are imported the first time something is drawn.

Cameras and views are :mod:`halo.viz.camera`; grids, PNGs and animations
:mod:`halo.viz.images`.  Both are re-exported here, so ``from halo.viz import render``
gives the whole rendering API.

Colours given to the public functions are display (sRGB) values in [0, 1]; they are
converted to linear albedo because pyrender's shader gamma-encodes its output.

Size: one cohesive module just over 500 lines: the lazily started offscreen renderer and
the drawing functions that share it (meshes, skeleton tubes, point clouds, scenes).
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import trimesh

from halo.core.skeleton import BONES, FINGER_JOINTS, FINGER_NAMES, NUM_JOINTS, PART_NAMES
from halo.viz.camera import Camera, camera_for, check_points, look_at, palm_view
from halo.viz.images import render_grid, save_png, write_animation

# Must be set before anything imports OpenGL: PyOpenGL picks its platform once,
# at import time.  setdefault so that a user who chose osmesa keeps it.
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

__all__ = [
    "Camera",
    "DEFAULT_HAND_COLOR",
    "FINGER_COLORS",
    "PART_COLORS",
    "WRIST_COLOR",
    "close_renderers",
    "look_at",
    "palm_view",
    "points_mesh",
    "render_grid",
    "render_hand_and_skeleton",
    "render_mesh",
    "render_scene",
    "render_skeleton",
    "save_png",
    "skeleton_mesh",
    "write_animation",
]

RGB = tuple[float, float, float]

#: Light blue albedo of the original demo (display sRGB, [0, 1]).
DEFAULT_HAND_COLOR: RGB = (0.6, 0.75, 0.95)
#: Skeleton colours per finger (thumb, index, middle, ring, pinky), display sRGB.
FINGER_COLORS: tuple[RGB, ...] = (
    (0.89, 0.29, 0.27),
    (0.96, 0.62, 0.18),
    (0.36, 0.72, 0.33),
    (0.25, 0.52, 0.88),
    (0.66, 0.40, 0.84),
)
#: Colour of the wrist joint sphere.
WRIST_COLOR: RGB = (0.55, 0.55, 0.58)


def _part_colors() -> np.ndarray:
    """(16,3) uint8: each finger's skeleton colour, lighter towards the tip; palm = wrist grey."""
    colors = [np.array(WRIST_COLOR)]
    for name in PART_NAMES[1:]:
        base = np.array(FINGER_COLORS[FINGER_NAMES.index(name.rstrip("123"))])
        colors.append(base + (1.0 - base) * 0.25 * (int(name[-1]) - 1))  # blend towards white
    return np.round(np.stack(colors) * 255).astype(np.uint8)


#: One colour per HALO part (RGB 0-255) for part-labelled hand meshes
#: (``extract_hand_mesh(..., part_labels=True, part_colors=PART_COLORS)``), matching the skeletons.
PART_COLORS = _part_colors()
# Colours used by render_scene for meshes after the first (objects).
_SCENE_PALETTE: tuple[RGB, ...] = (
    DEFAULT_HAND_COLOR,
    (0.93, 0.78, 0.55),
    (0.60, 0.85, 0.60),
    (0.95, 0.60, 0.60),
    (0.80, 0.70, 0.95),
)

# Lighting, all fixed to the camera so every view is lit the same way.  Each light
# is (direction towards the light in OpenCV camera coordinates, intensity).  A key
# light above-left of the camera, a weaker fill from the right, and a rim light from
# behind-above that separates the silhouette from a white background.  Directional
# rather than point lights: point lights fall off as 1/d^2, which would make the
# brightness depend on the scene's scale and camera distance.
_LIGHTS: tuple[tuple[tuple[float, float, float], float], ...] = (
    ((-0.6, -0.8, -0.8), 3.0),
    ((0.9, 0.2, -0.6), 0.9),
    ((0.2, -0.8, 0.8), 0.7),
)
_AMBIENT = 0.15
_ROUGHNESS = 0.75

_EGL_HELP = (
    "could not create an offscreen OpenGL (EGL) context for rendering. On Debian/Ubuntu install the "
    "Mesa EGL libraries: `apt-get install -y libegl1 libegl-mesa0 libgl1-mesa-dri` (a GPU is not needed; "
    "Mesa's llvmpipe renders on the CPU). PYOPENGL_PLATFORM is {platform!r}; it must be set before OpenGL "
    "is first imported."
)


# ----------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------
def _check_keypoints(keypoints: Any) -> np.ndarray:
    """Return keypoints as a finite float64 (21, 3) array (metres), else raise ValueError."""
    arr = np.asarray(keypoints, dtype=np.float64)
    if arr.shape != (NUM_JOINTS, 3):
        raise ValueError(f"keypoints must have shape ({NUM_JOINTS}, 3) (metres, MANO order), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("keypoints contain NaN or inf values")
    return arr


def _check_mesh(mesh: Any, name: str = "mesh") -> trimesh.Trimesh:
    """Raise ValueError unless ``mesh`` is a non-empty trimesh with finite vertices."""
    if not isinstance(mesh, trimesh.Trimesh):
        raise ValueError(f"{name} must be a trimesh.Trimesh, got {type(mesh).__name__}")
    if len(mesh.vertices) == 0 or len(mesh.faces) == 0:
        raise ValueError(
            f"{name} is empty ({len(mesh.vertices)} vertices, {len(mesh.faces)} faces); nothing to render"
        )
    if not np.isfinite(mesh.vertices).all():
        raise ValueError(f"{name} vertices contain NaN or inf values")
    return mesh


def _check_rgb(color: Any, name: str = "color") -> np.ndarray:
    """Return an RGB colour as a float (3,) array in [0, 1] (display / sRGB values)."""
    arr = np.asarray(color, dtype=np.float64).reshape(-1)
    if arr.shape not in ((3,), (4,)) or not np.isfinite(arr).all():
        raise ValueError(f"{name} must be an RGB triple in [0, 1], got {color!r}")
    if arr.max() > 1.0 + 1e-9 or arr.min() < 0.0:
        raise ValueError(f"{name} must be in [0, 1] (floats, not 0-255), got {color!r}")
    return arr[:3]


def _vertex_colors_01(colors: Any, n_vertices: int) -> np.ndarray:
    """Per-vertex colours as float (V, 3) in [0, 1]; accepts uint8 0-255 or floats in [0, 1]."""
    arr = np.asarray(colors)
    if arr.ndim != 2 or arr.shape[0] != n_vertices or arr.shape[1] not in (3, 4):
        raise ValueError(f"vertex_colors must have shape ({n_vertices}, 3 or 4), got {arr.shape}")
    if arr.dtype == np.uint8:
        out = arr[:, :3].astype(np.float64) / 255.0
    else:
        out = arr[:, :3].astype(np.float64)
        if not np.isfinite(out).all() or out.min() < 0.0 or out.max() > 1.0 + 1e-9:
            raise ValueError("float vertex_colors must be finite and in [0, 1] (use uint8 for 0-255)")
    return out


def _srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """Display sRGB in [0, 1] -> linear; the shader re-encodes with gamma 2.2, so use the same power."""
    return np.clip(c, 0.0, 1.0) ** 2.2


# ----------------------------------------------------------------------------
# pyrender plumbing (lazy)
# ----------------------------------------------------------------------------
_LOCK = threading.RLock()
# One OffscreenRenderer for the whole process, its framebuffer resized per image.
# Not one per size: pyrender's EGL platform calls eglTerminate on the shared display
# when a renderer is deleted, which invalidates every other live context.
_RENDERER: Any = None


def _pyrender() -> Any:
    """Import pyrender on first use (it imports OpenGL, which binds the EGL platform)."""
    if not hasattr(np, "infty"):
        # pyrender 0.1.45 still uses np.infty, removed in NumPy 2.
        np.infty = np.inf  # noqa: NPY201
    try:
        import pyrender
    except Exception as exc:  # missing libEGL shows up as an ImportError/OSError here
        raise RuntimeError(_EGL_HELP.format(platform=os.environ.get("PYOPENGL_PLATFORM"))) from exc
    return pyrender


def _get_renderer(width: int, height: int) -> Any:
    """The shared pyrender.OffscreenRenderer, sized width x height (creating one costs 0.05-0.4 s)."""
    global _RENDERER
    if _RENDERER is None:
        pyrender = _pyrender()
        try:
            _RENDERER = pyrender.OffscreenRenderer(viewport_width=width, viewport_height=height)
        except Exception as exc:
            raise RuntimeError(_EGL_HELP.format(platform=os.environ.get("PYOPENGL_PLATFORM"))) from exc
    _RENDERER.viewport_width = width
    _RENDERER.viewport_height = height
    return _RENDERER


def close_renderers() -> None:
    """Release the shared OpenGL context (also done at exit); the next render creates a new one."""
    global _RENDERER
    with _LOCK:
        renderer, _RENDERER = _RENDERER, None
        if renderer is not None:
            try:
                renderer.delete()
            except Exception:  # best effort: the context may already be gone at interpreter exit
                pass


atexit.register(close_renderers)


def _light_pose(direction_to_light_cv: Sequence[float], camera: Camera) -> np.ndarray:
    """(4, 4) pose of a pyrender directional light (it shines along its local -z)."""
    d = np.asarray(direction_to_light_cv, dtype=np.float64)
    d = d / np.linalg.norm(d)
    z_world = camera.R.T @ d  # local +z points towards the light, in world coordinates
    helper = np.array([0.0, 1.0, 0.0]) if abs(z_world[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
    x_world = np.cross(helper, z_world)
    x_world /= np.linalg.norm(x_world)
    y_world = np.cross(z_world, x_world)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([x_world, y_world, z_world], axis=1)
    return pose


@dataclass
class _Item:
    """One mesh to draw: vertices (V,3) m, faces (F,3), normals (V,3), display colours (V,3) or (3,)."""

    vertices: np.ndarray
    faces: np.ndarray
    normals: np.ndarray
    colors: np.ndarray


def _item(mesh: trimesh.Trimesh, colors: np.ndarray) -> _Item:
    # Area-weighted vertex normals give smooth (Gouraud/Phong-like) shading.
    return _Item(
        vertices=np.asarray(mesh.vertices, dtype=np.float64),
        faces=np.asarray(mesh.faces, dtype=np.int64),
        normals=np.asarray(mesh.vertex_normals, dtype=np.float64),
        colors=colors,
    )


def _render_items(items: list[_Item], camera: Camera, background: Any) -> np.ndarray:
    """Draw the items with the camera; returns (H, W, 3) uint8."""
    bg = _check_rgb(background, "background")
    all_vertices = np.concatenate([it.vertices for it in items])
    depth = (all_vertices @ camera.R.T + camera.t)[:, 2]
    # Clip planes from the geometry so both a hand 2.5 m away and a 1 mm part render
    # with good depth precision; fall back to a tiny near plane if it straddles the camera.
    zmax = float(depth.max())
    if zmax <= 0:
        raise ValueError("all geometry is behind the camera (camera-space z <= 0)")
    zmin = float(depth.min())
    znear = 0.5 * zmin if zmin > 0 else 1e-3 * zmax
    zfar = 2.0 * zmax + 1e-3

    with _LOCK:
        pyrender = _pyrender()
        scene = pyrender.Scene(bg_color=[*bg.tolist(), 1.0], ambient_light=[_AMBIENT] * 3)
        for it in items:
            if it.colors.ndim == 1:
                base = [*_srgb_to_linear(it.colors).tolist(), 1.0]
                color_0 = None
            else:
                # Vertex colours multiply the (white) base colour, before the shader's gamma.
                base = [1.0, 1.0, 1.0, 1.0]
                lin = _srgb_to_linear(it.colors)
                color_0 = np.concatenate([lin, np.ones((len(lin), 1))], axis=1).astype(np.float32)
            material = pyrender.MetallicRoughnessMaterial(
                baseColorFactor=base,
                metallicFactor=0.0,
                roughnessFactor=_ROUGHNESS,
                alphaMode="OPAQUE",
                # no culling: open meshes (e.g. MANO without the wrist cap) show no holes
                doubleSided=True,
            )
            prim = pyrender.Primitive(
                positions=it.vertices.astype(np.float32),
                normals=it.normals.astype(np.float32),
                indices=it.faces.astype(np.uint32),
                color_0=color_0,
                material=material,
            )
            scene.add(pyrender.Mesh([prim]))
        cx, cy = camera.principal_point
        # pyrender's intrinsics live in OpenGL window coordinates (pixel centres at +0.5).
        cam = pyrender.IntrinsicsCamera(
            fx=camera.focal, fy=camera.focal, cx=cx + 0.5, cy=cy + 0.5, znear=znear, zfar=zfar
        )
        scene.add(cam, pose=camera._gl_pose())
        for direction, intensity in _LIGHTS:
            light = pyrender.DirectionalLight(color=np.ones(3), intensity=intensity)
            scene.add(light, pose=_light_pose(direction, camera))
        renderer = _get_renderer(camera.width, camera.height)
        color, _ = renderer.render(scene)
    return np.ascontiguousarray(color[..., :3], dtype=np.uint8)


# ----------------------------------------------------------------------------
# Public rendering API
# ----------------------------------------------------------------------------
def render_mesh(
    mesh: trimesh.Trimesh,
    camera: Camera | None = None,
    color: Sequence[float] | None = None,
    vertex_colors: np.ndarray | None = None,
    background: Sequence[float] = (1.0, 1.0, 1.0),
) -> np.ndarray:
    """Render one mesh (vertices in metres) with smooth shading.

    Args:
        mesh: non-empty triangle mesh, metres.
        camera: ``Camera``; None frames the mesh automatically (front view).
        color: uniform albedo, display RGB in [0, 1].  None: the mesh's own vertex
            colours if it has any (e.g. part labels), else the demo's light blue.
        vertex_colors: optional (V, 3|4) per-vertex colours (uint8 0-255 or floats in
            [0, 1]); they replace ``color``.
        background: display RGB in [0, 1].

    Returns:
        (H, W, 3) uint8 image.
    """
    _check_mesh(mesh)
    cam = camera_for(mesh.vertices, camera)
    if vertex_colors is None and color is None:
        vertex_colors = _mesh_vertex_colors(mesh)
    if vertex_colors is not None:
        colors = _vertex_colors_01(vertex_colors, len(mesh.vertices))
    else:
        colors = _check_rgb(DEFAULT_HAND_COLOR if color is None else color)
    return _render_items([_item(mesh, colors)], cam, background)


def _ring(n: int) -> tuple[np.ndarray, np.ndarray]:
    angles = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return np.cos(angles), np.sin(angles)


def _tube(p0: np.ndarray, p1: np.ndarray, radius: float, sections: int) -> tuple[np.ndarray, ...]:
    """Open cylinder from p0 to p1: vertices (2S,3), faces (2S,3), radial normals (2S,3).

    No caps: the ends sit inside the joint spheres, and capped trimesh cylinders share
    rim vertices between cap and side, which would bend the smooth normals.
    """
    axis = p1 - p0
    axis = axis / np.linalg.norm(axis)
    helper = np.array([1.0, 0.0, 0.0]) if abs(axis[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = np.cross(axis, helper)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(axis, e1)
    c, s = _ring(sections)
    radial = c[:, None] * e1 + s[:, None] * e2  # (S, 3)
    vertices = np.concatenate([p0 + radius * radial, p1 + radius * radial])
    normals = np.concatenate([radial, radial])
    i = np.arange(sections)
    j = (i + 1) % sections
    # Counter-clockwise seen from outside, so face normals agree with the radial normals.
    faces = np.concatenate([np.stack([i, j, j + sections], 1), np.stack([i, j + sections, i + sections], 1)])
    return vertices, faces, normals


def skeleton_mesh(
    keypoints: np.ndarray,
    joint_radius: float = 0.005,
    bone_radius: float = 0.003,
    color: Sequence[float] | None = None,
) -> trimesh.Trimesh:
    """Balls-and-sticks mesh of a hand skeleton.

    Args:
        keypoints: (21, 3) joints in metres, MANO order.
        joint_radius: sphere radius at each joint, metres (demo: 5 mm).
        bone_radius: cylinder radius along each bone of ``halo.core.skeleton.BONES``, metres (demo: 3 mm).
        color: None for per-finger colours (``FINGER_COLORS``, wrist ``WRIST_COLOR``; a bone
            takes its child joint's finger), or one display RGB in [0, 1] for everything.

    Returns:
        A trimesh with smooth vertex normals and per-vertex colours (``mesh.visual.vertex_colors``,
        uint8 RGBA).  Zero-length bones are skipped.
    """
    kp = _check_keypoints(keypoints)
    if not (joint_radius > 0 and bone_radius > 0):
        raise ValueError(f"joint_radius and bone_radius must be positive, got {joint_radius}, {bone_radius}")
    joint_rgb = np.tile(np.asarray(WRIST_COLOR), (NUM_JOINTS, 1))
    for finger, joints in enumerate(FINGER_JOINTS):
        joint_rgb[list(joints)] = FINGER_COLORS[finger]
    if color is not None:
        joint_rgb[:] = _check_rgb(color)

    sphere = trimesh.creation.icosphere(subdivisions=2, radius=1.0)
    unit_v = np.asarray(sphere.vertices)
    unit_f = np.asarray(sphere.faces)
    verts, faces, normals, colors = [], [], [], []
    offset = 0
    for j in range(NUM_JOINTS):
        verts.append(kp[j] + joint_radius * unit_v)
        normals.append(unit_v)
        faces.append(unit_f + offset)
        colors.append(np.tile(joint_rgb[j], (len(unit_v), 1)))
        offset += len(unit_v)
    for parent, child in BONES:
        if np.linalg.norm(kp[child] - kp[parent]) < 1e-9:
            continue
        v, f, n = _tube(kp[parent], kp[child], bone_radius, sections=20)
        verts.append(v)
        normals.append(n)
        faces.append(f + offset)
        colors.append(np.tile(joint_rgb[child], (len(v), 1)))
        offset += len(v)
    rgba = np.concatenate([np.concatenate(colors), np.ones((offset, 1))], axis=1)
    return trimesh.Trimesh(
        vertices=np.concatenate(verts),
        faces=np.concatenate(faces),
        vertex_normals=np.concatenate(normals),
        vertex_colors=np.round(rgba * 255).astype(np.uint8),
        process=False,
    )


def points_mesh(points: np.ndarray, radius: float = 0.0015) -> trimesh.Trimesh:
    """Small octahedra at ``points`` (N,3, metres): a point cloud that :func:`render_scene` can draw."""
    pts = check_points(points, "points") if len(points) else np.zeros((0, 3))
    if len(pts) == 0:
        raise ValueError("points_mesh needs at least one point")
    corners = radius * np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], float)
    tri = np.array([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    verts = (pts[:, None, :] + corners[None]).reshape(-1, 3)
    faces = (tri[None] + 6 * np.arange(len(pts))[:, None, None]).reshape(-1, 3)
    return trimesh.Trimesh(verts, faces, process=False)


def _mesh_vertex_colors(mesh: trimesh.Trimesh) -> np.ndarray | None:
    """The mesh's own per-vertex colours as (V, 3) floats in [0, 1], or None if it has none."""
    if getattr(mesh.visual, "kind", None) != "vertex":
        return None
    return np.asarray(mesh.visual.vertex_colors)[:, :3].astype(np.float64) / 255.0


def render_skeleton(
    keypoints: np.ndarray,
    camera: Camera | None = None,
    color: Sequence[float] | None = None,
    joint_radius: float = 0.005,
    bone_radius: float = 0.003,
    background: Sequence[float] = (1.0, 1.0, 1.0),
) -> np.ndarray:
    """Render a (21, 3) keypoint skeleton (metres, MANO order) as spheres and cylinders.

    ``color`` None gives per-finger colours; pass e.g. ``DEFAULT_HAND_COLOR`` for the
    original demo's uniform light blue.  ``camera`` None frames the skeleton.
    Returns a (H, W, 3) uint8 image.
    """
    skel = skeleton_mesh(keypoints, joint_radius=joint_radius, bone_radius=bone_radius, color=color)
    cam = camera_for(skel.vertices, camera)
    return _render_items([_item(skel, _mesh_vertex_colors(skel))], cam, background)


def render_hand_and_skeleton(
    mesh: trimesh.Trimesh,
    keypoints: np.ndarray,
    camera: Camera | None = None,
    color: Sequence[float] | None = None,
    skeleton_color: Sequence[float] | None = None,
    background: Sequence[float] = (1.0, 1.0, 1.0),
) -> np.ndarray:
    """[skeleton | hand mesh] side by side, both with the same camera, like the original demo.

    Args:
        mesh: hand mesh, metres.
        keypoints: (21, 3) joints, metres, MANO order.
        camera: camera of each half; None frames the mesh and keypoints together.
        color: mesh albedo (None: the mesh's vertex colours, else light blue);
            skeleton_color: None for per-finger colours.

    Returns:
        (H, 2 W, 3) uint8 image.
    """
    _check_mesh(mesh)
    kp = _check_keypoints(keypoints)
    cam = camera_for(np.concatenate([np.asarray(mesh.vertices), kp]), camera)
    left = render_skeleton(kp, cam, color=skeleton_color, background=background)
    right = render_mesh(mesh, cam, color=color, background=background)
    return np.concatenate([left, right], axis=1)


def render_scene(
    meshes: Sequence[trimesh.Trimesh],
    colors: Sequence[Any] | None = None,
    camera: Camera | None = None,
    background: Sequence[float] = (1.0, 1.0, 1.0),
) -> np.ndarray:
    """Render several meshes (e.g. hand + object) in one image with correct occlusion.

    Args:
        meshes: non-empty list of non-empty meshes, metres.
        colors: None, or one entry per mesh: an RGB triple in [0, 1], a (V, 3|4) vertex
            colour array, or None.  A None entry uses the mesh's own vertex colours if it
            has any, else a default palette (light blue for the first mesh, sand for the second...).
        camera: None frames all meshes together.

    Returns:
        (H, W, 3) uint8 image.
    """
    meshes = list(meshes)
    if not meshes:
        raise ValueError("render_scene needs at least one mesh")
    for i, m in enumerate(meshes):
        _check_mesh(m, f"meshes[{i}]")
    if colors is not None and len(colors) != len(meshes):
        raise ValueError(f"colors has {len(colors)} entries for {len(meshes)} meshes")
    items = []
    for i, m in enumerate(meshes):
        c = None if colors is None else colors[i]
        if c is None:
            own = _mesh_vertex_colors(m)
            col = own if own is not None else _check_rgb(_SCENE_PALETTE[i % len(_SCENE_PALETTE)])
        elif np.ndim(c) == 2:
            col = _vertex_colors_01(c, len(m.vertices))
        else:
            col = _check_rgb(c, f"colors[{i}]")
        items.append(_item(m, col))
    cam = camera_for(np.concatenate([it.vertices for it in items]), camera)
    return _render_items(items, cam, background)
