"""Offscreen CPU rendering of hand meshes and keypoint skeletons.

Everything here renders without a display: pyrender draws through EGL, which on a
machine without a GPU is Mesa's llvmpipe software rasteriser (tens of milliseconds
for a 600x600 image of a 100k-face hand mesh).  ``import halo.viz.render`` is cheap:
OpenGL and pyrender are imported the first time something is drawn.

Camera convention (``Camera``): OpenCV pinhole.  A world point ``p`` (metres) goes
to camera coordinates ``p_cam = R @ p + t`` (x right, y down, z forward, so visible
points have ``z > 0``) and to pixels ``u = f x / z + cx``, ``v = f y / z + cy``.
Pixel coordinates are OpenCV-style: the centre of column ``i`` / row ``j`` is at
``u = i`` / ``v = j`` (so ``np.round(uv)`` indexes the pixel a point lands on, and
matplotlib's ``imshow`` overlays match).  The image centre is therefore
``((W - 1) / 2, (H - 1) / 2)``, the default principal point; it is the same
optical axis as the original HALO demo's "principal point (300, 300)", which was
given in OpenGL window coordinates, where pixel centres sit at half-integers.

The default ``Camera()`` is the original demo camera for one 600x600 half:
focal 5000 px, translation (0, 0.05, 2.5) m, no rotation.  With it a hand whose
wrist is at the world origin appears in the middle of the image, fingers up
(world -y is image up).

Colours given to the public functions are display (sRGB) values in [0, 1]; they are
converted to linear albedo because pyrender's shader gamma-encodes its output.
"""

from __future__ import annotations

import atexit
import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import trimesh

from halo.core.skeleton import BONES, FINGER_JOINTS, FINGER_NAMES, NUM_JOINTS, PART_NAMES

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
def _check_points(points: Any, name: str) -> np.ndarray:
    """Return ``points`` as a finite float64 (N, 3) array with N >= 1, else raise ValueError."""
    arr = np.asarray(points, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 3 or arr.shape[0] == 0:
        raise ValueError(f"{name} must have shape (N, 3) with N >= 1, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contain NaN or inf values")
    return arr


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
# Camera
# ----------------------------------------------------------------------------
# Rows are the camera axes (x right, y down, z forward) in world coordinates.
# "front" is the demo view: looking along world +z, world +y down in the image.
_VIEWS: dict[str, np.ndarray] = {
    "front": np.eye(3),
    "back": np.array([[-1.0, 0, 0], [0, 1, 0], [0, 0, -1]]),
    # camera on the +x side looking along -x; world +z appears on the right
    "right": np.array([[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]]),
    "left": np.array([[0.0, 0, -1], [0, 1, 0], [1, 0, 0]]),
    # camera above (world -y is "up" in the front view) looking along +y;
    # world x stays right, the side facing the front camera (-z) is at the bottom
    "top": np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]]),
    "bottom": np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]]),
}
_VIEWS["side"] = _VIEWS["right"]


@dataclass
class Camera:
    """OpenCV-style pinhole camera: ``p_cam = R @ p_world + t``, pixels ``(f x/z + cx, f y/z + cy)``.

    Attributes:
        width, height: image size in pixels.
        focal: focal length in pixels (same for x and y).
        cx, cy: principal point in pixels, pixel centres at integers (OpenCV);
            ``None`` means the image centre ``((width - 1) / 2, (height - 1) / 2)``.
        translation: t in metres.  The default (0, 0.05, 2.5) is the original HALO demo's.
        rotation: R, a (3, 3) rotation (world -> camera); ``None`` means identity.
    """

    width: int = 600
    height: int = 600
    focal: float = 5000.0
    cx: float | None = None
    cy: float | None = None
    translation: tuple[float, float, float] = (0.0, 0.05, 2.5)
    rotation: np.ndarray | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if (
            int(self.width) != self.width
            or int(self.height) != self.height
            or self.width < 1
            or self.height < 1
        ):
            raise ValueError(f"camera width/height must be positive integers, got {self.width}x{self.height}")
        self.width, self.height = int(self.width), int(self.height)
        if not (math.isfinite(self.focal) and self.focal > 0):
            raise ValueError(f"camera focal must be a positive number of pixels, got {self.focal}")
        t = np.asarray(self.translation, dtype=np.float64)
        if t.shape != (3,) or not np.isfinite(t).all():
            raise ValueError(
                f"camera translation must be 3 finite numbers (metres), got {self.translation!r}"
            )
        self.translation = (float(t[0]), float(t[1]), float(t[2]))
        if self.rotation is not None:
            r = np.asarray(self.rotation, dtype=np.float64)
            if r.shape != (3, 3) or not np.allclose(r @ r.T, np.eye(3), atol=1e-5) or np.linalg.det(r) < 0:
                raise ValueError("camera rotation must be a (3, 3) proper rotation matrix")
            self.rotation = r

    # -- derived quantities -------------------------------------------------
    @property
    def R(self) -> np.ndarray:
        """(3, 3) world -> camera rotation."""
        return np.eye(3) if self.rotation is None else np.asarray(self.rotation, dtype=np.float64)

    @property
    def t(self) -> np.ndarray:
        """(3,) world -> camera translation, metres."""
        return np.asarray(self.translation, dtype=np.float64)

    @property
    def principal_point(self) -> tuple[float, float]:
        """(cx, cy) in pixels, OpenCV convention (pixel centres at integers)."""
        cx = (self.width - 1) / 2.0 if self.cx is None else float(self.cx)
        cy = (self.height - 1) / 2.0 if self.cy is None else float(self.cy)
        return cx, cy

    @property
    def K(self) -> np.ndarray:
        """(3, 3) OpenCV intrinsics matrix."""
        cx, cy = self.principal_point
        return np.array([[self.focal, 0.0, cx], [0.0, self.focal, cy], [0.0, 0.0, 1.0]])

    def world_to_camera(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) world metres -> (N, 3) OpenCV camera coordinates (metres, z forward)."""
        pts = _check_points(points, "points")
        return pts @ self.R.T + self.t

    def project(self, points: np.ndarray) -> np.ndarray:
        """Project (N, 3) world points (metres) to (N, 2) pixel coordinates (u right, v down).

        Pixel centres are at integer coordinates, so ``np.round(uv).astype(int)`` is the
        (column, row) a point is drawn on.  Points at or behind the camera (z <= 0) give NaN.
        """
        pc = self.world_to_camera(points)
        cx, cy = self.principal_point
        z = pc[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = np.stack([self.focal * pc[:, 0] / z + cx, self.focal * pc[:, 1] / z + cy], axis=1)
        uv[z <= 0] = np.nan
        return uv

    @classmethod
    def framing(
        cls,
        points: np.ndarray,
        width: int = 600,
        height: int = 600,
        fill: float = 0.8,
        view: str | np.ndarray = "front",
        focal: float | None = None,
    ) -> Camera:
        """A camera that looks at ``points`` (N, 3, metres) and frames them.

        Args:
            points: geometry to frame (e.g. mesh vertices, keypoints), metres.
            width, height: image size in pixels.
            fill: fraction of the image width/height the points' projection spans along
                its tighter axis (0 < fill <= 1).
            view: "front" (the demo's: looking along world +z, world +y down), "back",
                "side" (= "right": from +x), "left", "top" (from -y), "bottom", or a
                (3, 3) world -> camera rotation.
            focal: focal length in pixels; default ``4 * max(width, height)`` (about 14
                degrees field of view: mild perspective, close to the demo's look).

        Returns:
            A ``Camera`` with the principal point at the image centre and the points'
            projected bounding box centred in the image.
        """
        pts = _check_points(points, "points")
        if not 0.0 < fill <= 1.0:
            raise ValueError(f"fill must be in (0, 1], got {fill}")
        if isinstance(view, str):
            if view not in _VIEWS:
                raise ValueError(f"unknown view {view!r}; use one of {sorted(_VIEWS)} or a (3, 3) rotation")
            rot = _VIEWS[view].copy()
        else:
            rot = np.asarray(view, dtype=np.float64)
        f = float(focal) if focal is not None else 4.0 * max(width, height)
        q = pts @ rot.T  # points in camera-aligned axes, before translation
        extent = float(np.max(q.max(0) - q.min(0)))
        if extent < 1e-9:  # a single point: frame a 10 cm neighbourhood
            extent = 0.1
            q = np.concatenate([q, q[:1] + [[0.05, 0.05, 0.0]], q[:1] - [[0.05, 0.05, 0.0]]])
        half_w, half_h = fill * width / 2.0, fill * height / 2.0
        # t_xy: centre the bounding box; t_z: the smallest distance at which every point
        # projects inside the fill box (|x + tx| f / (z + tz) <= half_w, same for y).
        # Perspective shifts the projected box, so re-centre and refit a few times.
        t = np.array([-(q[:, 0].min() + q[:, 0].max()) / 2, -(q[:, 1].min() + q[:, 1].max()) / 2, 0.0])
        near = 0.05 * extent
        for _ in range(4):
            need = np.maximum(np.abs(q[:, 0] + t[0]) * f / half_w, np.abs(q[:, 1] + t[1]) * f / half_h)
            t[2] = max(float(np.max(need - q[:, 2])), float(near - q[:, 2].min()))
            z = q[:, 2] + t[2]
            u, v = f * (q[:, 0] + t[0]) / z, f * (q[:, 1] + t[1]) / z
            du, dv = (u.min() + u.max()) / 2, (v.min() + v.max()) / 2
            depth = float(np.median(z))
            t[0] -= du * depth / f
            t[1] -= dv * depth / f
        need = np.maximum(np.abs(q[:, 0] + t[0]) * f / half_w, np.abs(q[:, 1] + t[1]) * f / half_h)
        t[2] = max(float(np.max(need - q[:, 2])), float(near - q[:, 2].min()))
        return cls(
            width=width,
            height=height,
            focal=f,
            translation=(float(t[0]), float(t[1]), float(t[2])),
            rotation=None if isinstance(view, str) and view == "front" else rot,
        )

    def _gl_pose(self) -> np.ndarray:
        """(4, 4) camera-to-world pose in OpenGL convention (camera looks down -z, y up), for pyrender.

        OpenGL camera coordinates are OpenCV's with y and z negated: ``p_gl = F (R p + t)``,
        ``F = diag(1, -1, -1)``.  The pose is the inverse: ``[R^T F | -R^T t]``.
        """
        flip = np.diag([1.0, -1.0, -1.0])
        pose = np.eye(4)
        pose[:3, :3] = self.R.T @ flip
        pose[:3, 3] = -self.R.T @ self.t
        return pose


def _camera_for(points: np.ndarray, camera: Camera | None) -> Camera:
    """The given camera, or one framing ``points`` when it is None."""
    if camera is None:
        return Camera.framing(points)
    if not isinstance(camera, Camera):
        raise ValueError(f"camera must be a halo.viz.render.Camera or None, got {type(camera).__name__}")
    return camera


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
    cam = _camera_for(mesh.vertices, camera)
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
    pts = _check_points(points, "points") if len(points) else np.zeros((0, 3))
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
    cam = _camera_for(skel.vertices, camera)
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
    cam = _camera_for(np.concatenate([np.asarray(mesh.vertices), kp]), camera)
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
    cam = _camera_for(np.concatenate([it.vertices for it in items]), camera)
    return _render_items(items, cam, background)


# ----------------------------------------------------------------------------
# Images and animations
# ----------------------------------------------------------------------------
def _to_rgb_uint8(image: Any, name: str = "image") -> np.ndarray:
    """(H, W), (H, W, 3) or (H, W, 4), uint8 or float in [0, 1] -> (H, W, 3) uint8 (alpha dropped)."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} must have shape (H, W), (H, W, 3) or (H, W, 4), got {arr.shape}")
    arr = arr[..., :3]
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} contains NaN or inf values")
        return np.round(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)
    raise ValueError(f"{name} must be uint8 or float in [0, 1], got dtype {arr.dtype}")


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # scalable font, Pillow >= 10.1
    except TypeError:  # older Pillow: fixed-size bitmap font
        return ImageFont.load_default()


def render_grid(
    images: Sequence[np.ndarray],
    ncols: int,
    labels: Sequence[str] | None = None,
    pad: int = 0,
    background: Sequence[int] = (255, 255, 255),
    label_color: Sequence[int] = (0, 0, 0),
) -> np.ndarray:
    """Tile images into a grid, row-major, with optional text labels at each cell's top-left.

    Args:
        images: (H, W[, 3|4]) arrays, uint8 or floats in [0, 1]; cells take the largest size
            and smaller images sit at their cell's top-left.
        ncols: number of columns (>= 1); rows = ceil(len(images) / ncols).
        labels: optional, one string per image.
        pad: pixels between cells and around the border.
        background, label_color: RGB 0-255.

    Returns:
        (rows * Hc + (rows + 1) * pad, ncols * Wc + (ncols + 1) * pad, 3) uint8, where
        (Hc, Wc) is the largest image size.
    """
    if len(images) == 0:
        raise ValueError("render_grid needs at least one image")
    if int(ncols) != ncols or ncols < 1:
        raise ValueError(f"ncols must be a positive integer, got {ncols}")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"got {len(labels)} labels for {len(images)} images")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    ncols = int(ncols)
    tiles = [_to_rgb_uint8(im, f"images[{i}]") for i, im in enumerate(images)]
    ch = max(t.shape[0] for t in tiles)
    cw = max(t.shape[1] for t in tiles)
    nrows = math.ceil(len(tiles) / ncols)
    out = np.empty((nrows * ch + (nrows + 1) * pad, ncols * cw + (ncols + 1) * pad, 3), dtype=np.uint8)
    out[:] = np.asarray(background, dtype=np.uint8)
    origins = []
    for k, tile in enumerate(tiles):
        r, c = divmod(k, ncols)
        y0, x0 = pad + r * (ch + pad), pad + c * (cw + pad)
        out[y0 : y0 + tile.shape[0], x0 : x0 + tile.shape[1]] = tile
        origins.append((x0, y0))
    if labels is not None:
        from PIL import Image, ImageDraw

        pil = Image.fromarray(out)
        draw = ImageDraw.Draw(pil)
        font = _font(max(10, ch // 28))
        for (x0, y0), text in zip(origins, labels, strict=True):
            if text:
                # A light box behind the text keeps it readable over dark renders.
                box = draw.textbbox((x0 + 4, y0 + 3), str(text), font=font)
                draw.rectangle((box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1), fill=tuple(background))
                draw.text((x0 + 4, y0 + 3), str(text), fill=tuple(label_color), font=font)
        out = np.asarray(pil)
    return out


def save_png(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an (H, W[, 3|4]) uint8 or [0, 1]-float image as PNG (RGBA kept); creates parent folders."""
    from PIL import Image

    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 4:
        rgba = _to_rgb_uint8(arr)  # validates; then put the alpha back
        alpha = arr[..., 3] if arr.dtype == np.uint8 else np.round(np.clip(arr[..., 3], 0, 1) * 255)
        pil = Image.fromarray(np.dstack([rgba, alpha.astype(np.uint8)]), mode="RGBA")
    else:
        pil = Image.fromarray(_to_rgb_uint8(arr))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    pil.save(out, format="PNG")
    return out


def _mp4_writer_available() -> str | None:
    """Name of an importable mp4 backend for imageio ("ffmpeg" or "pyav"), or None."""
    import importlib.util

    if importlib.util.find_spec("imageio_ffmpeg") is not None:
        return "ffmpeg"
    if importlib.util.find_spec("av") is not None:
        return "pyav"
    return None


def write_animation(frames: Sequence[np.ndarray], path: str | os.PathLike, fps: float = 15) -> Path:
    """Write frames (each (H, W[, 3|4]), uint8 or [0, 1] floats, all the same size) as .gif or .mp4.

    GIF is written with Pillow (always available), looping forever.  MP4 needs
    ``imageio-ffmpeg`` or ``av`` installed; without one a RuntimeError says so and suggests .gif.
    """
    if len(frames) == 0:
        raise ValueError("write_animation needs at least one frame")
    if not (fps > 0 and math.isfinite(fps)):
        raise ValueError(f"fps must be positive, got {fps}")
    rgb = [_to_rgb_uint8(f, f"frames[{i}]") for i, f in enumerate(frames)]
    if any(f.shape != rgb[0].shape for f in rgb):
        raise ValueError(f"all frames must have the same size, got {sorted({f.shape for f in rgb})}")
    out = Path(path)
    suffix = out.suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise ValueError(f"animation path must end in .gif or .mp4, got {out.name!r}")
    if suffix == ".mp4":
        backend = _mp4_writer_available()
        if backend is None:
            raise RuntimeError(
                "writing .mp4 needs an mp4 encoder for imageio (`pip install imageio-ffmpeg` or "
                "`pip install av`); none is installed. Write a .gif instead."
            )
        out.parent.mkdir(parents=True, exist_ok=True)
        # H.264 with yuv420p needs even sizes: pad with the edge colour instead of resizing.
        h, w = rgb[0].shape[:2]
        padded = [np.pad(f, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge") for f in rgb]
        import imageio.v3 as iio

        if backend == "ffmpeg":
            iio.imwrite(out, np.stack(padded), plugin="FFMPEG", fps=fps, macro_block_size=1)
        else:
            iio.imwrite(out, np.stack(padded), plugin="pyav", codec="libx264", fps=fps)
        return out
    from PIL import Image

    out.parent.mkdir(parents=True, exist_ok=True)
    pil = [Image.fromarray(f) for f in rgb]
    pil[0].save(
        out,
        format="GIF",
        save_all=True,
        append_images=pil[1:],
        duration=max(20, round(1000.0 / fps)),  # ms per frame; browsers clamp below 20 ms
        loop=0,
    )
    return out
