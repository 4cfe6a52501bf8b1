"""Cameras and standard views: an OpenCV pinhole :class:`Camera` that frames geometry,
named views, :func:`look_at` and the hand views (:func:`palm_view`).

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
(world -y is image up).  A view is a (3, 3) world -> camera rotation whose rows are
the camera axes (x right, y down, z forward) in world coordinates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["VIEW_NAMES", "Camera", "camera_for", "check_points", "look_at", "palm_view"]


def check_points(points: Any, name: str) -> np.ndarray:
    """Return ``points`` as a finite float64 (N, 3) array with N >= 1, else raise ValueError."""
    arr = np.asarray(points, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 3 or arr.shape[0] == 0:
        raise ValueError(f"{name} must have shape (N, 3) with N >= 1, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contain NaN or inf values")
    return arr


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
        pts = check_points(points, "points")
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
        pts = check_points(points, "points")
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


def camera_for(points: np.ndarray, camera: Camera | None) -> Camera:
    """The given camera, or one framing ``points`` when it is None."""
    if camera is None:
        return Camera.framing(points)
    if not isinstance(camera, Camera):
        raise ValueError(f"camera must be a halo.viz.render.Camera or None, got {type(camera).__name__}")
    return camera


#: The names :meth:`Camera.framing` accepts as ``view``.
VIEW_NAMES: tuple[str, ...] = tuple(sorted(_VIEWS))


def look_at(eye_direction: np.ndarray, up: np.ndarray) -> np.ndarray:
    """View (world -> camera rotation) looking along ``-eye_direction`` with ``up`` up in the image."""
    f = -np.asarray(eye_direction, np.float64)
    f = f / np.linalg.norm(f)
    r = np.cross(f, np.asarray(up, np.float64))
    r = r / np.linalg.norm(r)
    return np.stack([r, np.cross(f, r), f])


def palm_view(keypoints: np.ndarray) -> np.ndarray:
    """View facing the palm of one hand (21 keypoints, public order), fingers up in the image."""
    kp = np.asarray(keypoints, dtype=np.float64).reshape(21, 3)
    up = kp[9] - kp[0]  # wrist -> middle finger root
    normal = np.cross(kp[9] - kp[0], kp[5] - kp[0])
    if np.linalg.norm(normal) < 1e-9 or np.linalg.norm(up) < 1e-9:
        return np.eye(3)
    z = normal / np.linalg.norm(normal)
    y = -(up - up @ z * z)
    y /= np.linalg.norm(y)
    return np.stack([np.cross(y, z), y, z])
