"""Procedural objects of grasping size for synthetic grasp data (metres).

Every object is built from a small set of parameters by a generator of one
*kind* (``sphere``, ``box``, ``mug``, ...) and returned as a closed
(watertight), consistently wound :class:`trimesh.Trimesh` with outward
normals, centred at the centre of its axis-aligned bounding box, with
about 1-5 thousand vertices of roughly even spacing (~3 mm), so that
per-vertex contact labels, as in GRAB's ``contact.object``, are meaningful.

Construction:

* surfaces of revolution (sphere caps, cylinders, bottles, cups, glasses, bowls,
  bulbs, disks, tori) revolve a resampled 2-D profile whose ends lie on the axis
  (:func:`trimesh.creation.revolve`), so they are closed by construction;
* boxes and pyramids are refined ``manifold3d`` solids (boxes get rounded edges);
* the banana is a tube with a tapering radius along an arc, closed by two poles;
* the mug is the union (``manifold3d`` boolean) of a hollow body and a handle tube.

Named instances (:data:`OBJECT_SPECS`) use GRAB-style names (lowercase letters
and digits, no ``_``) and the split mirrors GRAB's object split by name: ``mug``,
``wineglass`` and ``toothpaste`` are test objects and ``apple`` and ``toothbrush``
validation objects, as in GRAB's standard split, so a reader that applies GRAB's
split to synthetic data gets the same sets as :func:`object_split`.

Size: one cohesive module over 500 lines: a table of object kinds and their generators,
which only make sense together (each generator is a few lines).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import trimesh

from halo.grasp.grab import GRAB_TEST_OBJECTS, GRAB_VAL_OBJECTS

__all__ = [
    "OBJECT_KINDS",
    "OBJECT_SPECS",
    "OBJECT_SPLITS",
    "ObjectSpec",
    "make_object",
    "sample_object_params",
    "select_objects",
]

#: Target edge length of the object meshes (metres).
EDGE_M = 0.003
_NAME_RE = re.compile(r"^[a-z0-9]+$")


# ----------------------------------------------------------------------------
# Mesh helpers
# ----------------------------------------------------------------------------


def _finish(mesh: trimesh.Trimesh, what: str, centre: bool = True) -> trimesh.Trimesh:
    """Merge, orient outwards, centre at the bounding-box centre (optional) and check closedness."""
    mesh = trimesh.Trimesh(np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces), process=True)
    mesh.remove_unreferenced_vertices()
    if not mesh.is_winding_consistent:
        trimesh.repair.fix_winding(mesh)
    if mesh.volume < 0:
        mesh.invert()
    if centre:
        mesh.apply_translation(-mesh.bounds.mean(axis=0))
    if not mesh.is_watertight or mesh.volume <= 0:
        raise RuntimeError(
            f"grasp object {what}: generated mesh is not a closed solid "
            f"(watertight={mesh.is_watertight}, volume={mesh.volume:.3g})"
        )
    return mesh


def _resample(points: np.ndarray, step: float = EDGE_M) -> np.ndarray:
    """Resample a 2-D polyline to about ``step`` spacing, keeping every input vertex (corners)."""
    out = [points[0]]
    for a, b in zip(points[:-1], points[1:], strict=True):
        n = max(1, int(np.ceil(np.linalg.norm(b - a) / step)))
        t = np.linspace(0.0, 1.0, n + 1)[1:, None]
        out.extend(a + t * (b - a))
    return np.asarray(out)


def _arc(center, radius, deg0: float, deg1: float, n: int = 12) -> np.ndarray:
    """(n+1,2) points of a circular arc in the (r, z) plane, angles in degrees from +r towards +z."""
    a = np.radians(np.linspace(deg0, deg1, n + 1))
    return np.asarray(center, np.float64) + radius * np.stack([np.cos(a), np.sin(a)], axis=1)


def _revolve(profile: list[np.ndarray] | np.ndarray, what: str) -> trimesh.Trimesh:
    """Revolve an (r, z) profile about z; the first and last points must lie on the axis (r = 0)."""
    pts = np.concatenate([np.atleast_2d(p) for p in profile]) if isinstance(profile, list) else profile
    # Drop consecutive duplicates (arcs share their end points with the next piece).
    keep = np.ones(len(pts), bool)
    keep[1:] = np.linalg.norm(np.diff(pts, axis=0), axis=1) > 1e-9
    pts = pts[keep]
    # Edge length: EDGE_M, or longer where that would exceed ~4,500 vertices (big hollow shapes).
    length = float(np.linalg.norm(np.diff(pts, axis=0), axis=1).sum())
    step = max(EDGE_M, float(np.sqrt(2 * np.pi * pts[:, 0].max() * length / 3500)))
    pts = _resample(pts, step)
    pts[0, 0] = pts[-1, 0] = 0.0
    sections = int(np.clip(np.ceil(2 * np.pi * pts[:, 0].max() / step), 24, 120))
    return _finish(trimesh.creation.revolve(pts, sections=sections), what)


def _from_manifold(solid: Any, what: str) -> trimesh.Trimesh:
    mesh = solid.to_mesh()
    return _finish(trimesh.Trimesh(np.asarray(mesh.vert_properties)[:, :3], np.asarray(mesh.tri_verts)), what)


def _tube(
    centre: np.ndarray, radii: np.ndarray, binormal: np.ndarray, what: str, recentre: bool = True
) -> trimesh.Trimesh:
    """A closed tube around a planar centreline; ``radii`` is 0 at both ends (the poles).

    Args:
        centre: (n,3) centreline points.
        radii: (n,) tube radius per point, ``radii[0] == radii[-1] == 0``.
        binormal: (3,) unit normal of the centreline's plane.
    """
    n = len(centre)
    tangent = np.gradient(centre, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    normal = np.cross(binormal, tangent)
    sections = int(np.clip(np.ceil(2 * np.pi * radii.max() / EDGE_M), 12, 64))
    theta = np.linspace(0.0, 2 * np.pi, sections, endpoint=False)
    ring = np.cos(theta)[None, :, None] * normal[:, None] + np.sin(theta)[None, :, None] * binormal
    rings = centre[1:-1, None] + radii[1:-1, None, None] * ring[1:-1]  # (n-2, S, 3)
    verts = np.concatenate([centre[:1], rings.reshape(-1, 3), centre[-1:]])
    faces = []
    idx = 1 + np.arange((n - 2) * sections).reshape(n - 2, sections)
    nxt = np.roll(np.arange(sections), -1)
    faces += [np.stack([np.zeros(sections, int), idx[0, nxt], idx[0]], axis=1)]
    for i in range(n - 3):
        a, b = idx[i], idx[i + 1]
        faces += [np.stack([a, a[nxt], b[nxt]], axis=1), np.stack([a, b[nxt], b], axis=1)]
    last = len(verts) - 1
    faces += [np.stack([np.full(sections, last), idx[-1], idx[-1, nxt]], axis=1)]
    return _finish(trimesh.Trimesh(verts, np.concatenate(faces), process=False), what, centre=recentre)


def _even_samples(length: float, step: float = EDGE_M) -> np.ndarray:
    return np.linspace(0.0, 1.0, max(8, int(np.ceil(length / step)) + 1))


# ----------------------------------------------------------------------------
# Generators, one per kind.  Every size is in metres.
# ----------------------------------------------------------------------------


def _sphere(p: Mapping[str, float]) -> trimesh.Trimesh:
    return _finish(trimesh.creation.icosphere(subdivisions=4, radius=p["radius"]), "sphere")


def _ellipsoid(p: Mapping[str, float]) -> trimesh.Trimesh:
    mesh = trimesh.creation.icosphere(subdivisions=4, radius=1.0)
    mesh.apply_scale([p["a"], p["b"], p["c"]])
    return _finish(mesh, "ellipsoid")


def _box(p: Mapping[str, float]) -> trimesh.Trimesh:
    """Box with rounded edges: a refined cube whose vertices are pushed onto the rounded surface."""
    import manifold3d

    half = np.array([p["x"], p["y"], p["z"]]) / 2.0
    fillet = min(p["fillet"], 0.9 * half.min())
    solid = manifold3d.Manifold.cube(tuple(2 * half), center=True).refine_to_length(EDGE_M)
    mesh = solid.to_mesh()
    q = np.asarray(mesh.vert_properties, np.float64)[:, :3]
    inner = np.clip(q, -(half - fillet), half - fillet)
    offset = q - inner
    norm = np.linalg.norm(offset, axis=1, keepdims=True)
    verts = inner + fillet * offset / np.maximum(norm, 1e-12)
    return _finish(trimesh.Trimesh(verts, np.asarray(mesh.tri_verts), process=False), "box")


def _pyramid(p: Mapping[str, float]) -> trimesh.Trimesh:
    import manifold3d

    radius = p["base"] / np.sqrt(2.0)  # circumradius of the square base
    solid = manifold3d.Manifold.cylinder(p["height"], radius, 0.0, 4, center=True)
    return _from_manifold(solid.rotate((0.0, 0.0, 45.0)).refine_to_length(EDGE_M), "pyramid")


def _cylinder(p: Mapping[str, float]) -> trimesh.Trimesh:
    r, h = p["radius"], p["height"]
    f = min(p.get("fillet", 0.003), 0.45 * min(r, h))
    return _revolve(
        [[0, -h / 2], _arc([r - f, -h / 2 + f], f, -90, 0), _arc([r - f, h / 2 - f], f, 0, 90), [0, h / 2]],
        "cylinder",
    )


def _disk(p: Mapping[str, float]) -> trimesh.Trimesh:
    return _cylinder({"radius": p["radius"], "height": p["thickness"], "fillet": 0.4 * p["thickness"]})


def _capsule(p: Mapping[str, float]) -> trimesh.Trimesh:
    r, h = p["radius"], p["length"] - 2 * p["radius"]
    return _revolve([_arc([0, -h / 2], r, -90, 0, 16), _arc([0, h / 2], r, 0, 90, 16)], "capsule")


def _cone(p: Mapping[str, float]) -> trimesh.Trimesh:
    r, h, f = p["radius"], p["height"], 0.003
    tip = 0.004  # rounded tip
    return _revolve(
        [[0, -h / 2], _arc([r - f, -h / 2 + f], f, -90, 20, 6), _arc([0, h / 2 - tip], tip, 20, 90, 6)],
        "cone",
    )


def _bottle(p: Mapping[str, float]) -> trimesh.Trimesh:
    r, h, rn = p["radius"], p["height"], p["neck_radius"]
    hn = p["neck_height"]
    f = 0.006
    shoulder_z = h - hn - (r - rn)
    return _revolve(
        [
            [0, 0],
            _arc([r - f, f], f, -90, 0),
            [r, shoulder_z],
            _arc([rn, shoulder_z], r - rn, 0, 90, 16),
            [rn, h - 0.002],
            _arc([rn - 0.002, h - 0.002], 0.002, 0, 90, 4),
            [0, h],
        ],
        "bottle",
    )


def _cup_profile(r_bottom: float, r_top: float, h: float, wall: float, z0: float = 0.0) -> list:
    """Hollow cup (open top): outer wall up, rounded rim, inner wall down to the inner bottom."""
    f = 0.004
    rim = wall / 2
    return [
        [0, z0],
        _arc([r_bottom - f, z0 + f], f, -90, 0, 6),
        [r_top - rim, z0 + h - rim] + np.array([rim, 0.0]),
        _arc([r_top - rim, z0 + h - rim], rim, 0, 180, 8),
        [r_bottom - wall, z0 + wall + 0.003],
        [0, z0 + wall],
    ]


def _cup(p: Mapping[str, float]) -> trimesh.Trimesh:
    return _revolve(_cup_profile(p["r_bottom"], p["r_top"], p["height"], p["wall"]), "cup")


def _bowl(p: Mapping[str, float]) -> trimesh.Trimesh:
    r, h, w = p["radius"], p["height"], p["wall"]
    foot = 0.45 * r
    a = np.radians(np.linspace(-90, 0, 24))
    outer = np.stack([foot + (r - foot) * np.cos(a), h + h * np.sin(a)], axis=1)  # quarter ellipse
    inner = np.stack([foot + (r - w - foot) * np.cos(a), h + (h - w) * np.sin(a)], axis=1)[::-1]
    rim = _arc([r - w / 2, h], w / 2, 0, 180, 6)
    return _revolve([[0, 0], outer, rim, inner, [0, w]], "bowl")


def _wineglass(p: Mapping[str, float]) -> trimesh.Trimesh:
    rf, rs, hs = p["foot_radius"], p["stem_radius"], p["stem_height"]
    rb, hb, w = p["bowl_radius"], p["bowl_height"], 0.0025
    t = 0.004  # foot thickness
    z0 = t + hs  # bottom of the bowl
    a = np.radians(np.linspace(-90, 0, 20))
    # Bowl: a quarter ellipse from the stem top to the widest point, then slightly inwards to the rim.
    outer = np.stack([rs + (rb - rs) * np.cos(a), z0 + 0.6 * hb * (1 + np.sin(a))], axis=1)
    top = np.array([[rb * 0.97, z0 + 0.8 * hb], [rb * 0.9, z0 + hb]])
    inner_a = np.radians(np.linspace(0, -90, 16))
    inner = np.stack(
        [(rb - w) * np.cos(inner_a), z0 + w + 0.003 + (0.6 * hb - w) * (1 + np.sin(inner_a))], axis=1
    )
    return _revolve(
        [
            [0, 0],
            [rf - t / 2, 0],
            _arc([rf - t / 2, t / 2], t / 2, -90, 90, 6),
            [rs + 0.006, t],
            _arc([rs + 0.006, t + 0.006], 0.006, -90, -180, 6),
            [rs, z0 - 0.004],
            outer,
            top,
            _arc([rb * 0.9 - w / 2, z0 + hb], w / 2, 0, 180, 6),
            [rb * 0.97 - w, z0 + 0.8 * hb],
            inner,
            [0, inner[-1, 1]],
        ],
        "wineglass",
    )


def _lightbulb(p: Mapping[str, float]) -> trimesh.Trimesh:
    r, rn, hn = p["radius"], p["neck_radius"], p["neck_height"]
    c = hn + np.sqrt(max(r**2 - rn**2, 0.0))  # bulb centre: its sphere meets the neck radius at z = hn
    start = np.degrees(np.arcsin(-np.sqrt(max(r**2 - rn**2, 0.0)) / r))
    return _revolve(
        [[0, 0], _arc([rn - 0.003, 0.003], 0.003, -90, 0, 4), [rn, hn], _arc([0, c], r, start, 90, 24)],
        "lightbulb",
    )


def _torus(p: Mapping[str, float]) -> trimesh.Trimesh:
    big, small = p["major_radius"], p["minor_radius"]
    major = int(np.clip(np.ceil(2 * np.pi * (big + small) / EDGE_M), 32, 128))
    minor = int(np.clip(np.ceil(2 * np.pi * small / EDGE_M), 12, 48))
    return _finish(trimesh.creation.torus(big, small, major_sections=major, minor_sections=minor), "torus")


def _banana(p: Mapping[str, float]) -> trimesh.Trimesh:
    length, r, bend = p["length"], p["radius"], np.radians(p["bend_deg"])
    radius_of_curvature = length / bend
    s = _even_samples(length * 1.1)
    ang = (s - 0.5) * bend
    centre = np.stack(
        [radius_of_curvature * np.sin(ang), np.zeros_like(s), radius_of_curvature * (1 - np.cos(ang))], axis=1
    )
    # Radius: full in the middle, rounding off to a pole at both ends (a superellipse in s).
    u = np.abs(2 * s - 1)
    radii = r * (1 - u**3) ** (1 / 3)
    radii[0] = radii[-1] = 0.0
    return _tube(centre, radii, np.array([0.0, 1.0, 0.0]), "banana")


def _mug(p: Mapping[str, float]) -> trimesh.Trimesh:
    r, h, w = p["radius"], p["height"], p["wall"]
    body = _revolve(_cup_profile(r, r, h, w), "mug body")
    # Handle: a C-shaped tube in the x-z plane whose ends sit inside the body wall.
    hr, tr = p["handle_radius"], p["handle_thickness"]
    span = 0.5 * h * 0.75  # vertical half span of the C
    z_mid = body.bounds.mean(axis=0)[2]
    a = np.radians(np.linspace(-95.0, 95.0, 60))
    centre = np.stack([r - w / 2 + hr * np.cos(a), np.zeros_like(a), z_mid + span * np.sin(a)], axis=1)
    radii = np.full(len(a), tr)
    radii[[1, -2]] = 0.8 * tr
    radii[0] = radii[-1] = 0.0
    handle = _tube(centre, radii, np.array([0.0, -1.0, 0.0]), "mug handle", recentre=False)
    union = trimesh.boolean.union([body, handle], engine="manifold")
    return _finish(union, "mug")


# ----------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Kind:
    build: Callable[[Mapping[str, float]], trimesh.Trimesh]
    ranges: dict[str, tuple[float, float]]  # parameter -> (low, high) of the sampler, metres / degrees


_KINDS: dict[str, _Kind] = {
    "sphere": _Kind(_sphere, {"radius": (0.022, 0.045)}),
    "ellipsoid": _Kind(_ellipsoid, {"a": (0.025, 0.05), "b": (0.022, 0.04), "c": (0.02, 0.035)}),
    "box": _Kind(_box, {"x": (0.035, 0.09), "y": (0.03, 0.07), "z": (0.025, 0.06), "fillet": (0.002, 0.006)}),
    "pyramid": _Kind(_pyramid, {"base": (0.05, 0.09), "height": (0.04, 0.08)}),
    "cylinder": _Kind(_cylinder, {"radius": (0.015, 0.04), "height": (0.06, 0.16), "fillet": (0.002, 0.005)}),
    "disk": _Kind(_disk, {"radius": (0.035, 0.055), "thickness": (0.012, 0.025)}),
    "capsule": _Kind(_capsule, {"radius": (0.012, 0.025), "length": (0.08, 0.15)}),
    "cone": _Kind(_cone, {"radius": (0.025, 0.045), "height": (0.06, 0.12)}),
    "bottle": _Kind(
        _bottle,
        {
            "radius": (0.025, 0.038),
            "height": (0.15, 0.22),
            "neck_radius": (0.012, 0.016),
            "neck_height": (0.025, 0.04),
        },
    ),  # fmt: skip
    "cup": _Kind(
        _cup,
        {"r_bottom": (0.025, 0.035), "r_top": (0.035, 0.045), "height": (0.08, 0.12), "wall": (0.003, 0.005)},
    ),
    "mug": _Kind(
        _mug,
        {
            "radius": (0.035, 0.045),
            "height": (0.08, 0.11),
            "wall": (0.004, 0.006),
            "handle_radius": (0.022, 0.03),
            "handle_thickness": (0.005, 0.007),
        },
    ),  # fmt: skip
    "bowl": _Kind(_bowl, {"radius": (0.055, 0.075), "height": (0.04, 0.06), "wall": (0.004, 0.006)}),
    "wineglass": _Kind(
        _wineglass,
        {
            "foot_radius": (0.03, 0.04),
            "stem_radius": (0.004, 0.006),
            "stem_height": (0.06, 0.09),
            "bowl_radius": (0.035, 0.045),
            "bowl_height": (0.08, 0.1),
        },
    ),  # fmt: skip
    "lightbulb": _Kind(
        _lightbulb, {"radius": (0.028, 0.035), "neck_radius": (0.012, 0.015), "neck_height": (0.025, 0.035)}
    ),
    "torus": _Kind(_torus, {"major_radius": (0.03, 0.05), "minor_radius": (0.008, 0.015)}),
    "banana": _Kind(_banana, {"length": (0.15, 0.2), "radius": (0.016, 0.02), "bend_deg": (40.0, 70.0)}),
}

#: Kinds :func:`make_object` can build.
OBJECT_KINDS: tuple[str, ...] = tuple(_KINDS)


def sample_object_params(kind: str, rng: np.random.Generator) -> dict[str, float]:
    """Uniformly sampled size parameters of ``kind`` (metres; ``bend_deg`` in degrees)."""
    spec = _kind(kind)
    return {k: float(rng.uniform(lo, hi)) for k, (lo, hi) in spec.ranges.items()}


def _kind(kind: str) -> _Kind:
    if kind not in _KINDS:
        raise ValueError(f"unknown object kind {kind!r}; expected one of {', '.join(_KINDS)}")
    return _KINDS[kind]


def make_object(
    kind: str, params: Mapping[str, float] | None = None, rng: np.random.Generator | int | None = None
) -> trimesh.Trimesh:
    """Build one object.

    Args:
        kind: one of :data:`OBJECT_KINDS`.
        params: size parameters (metres); missing ones are sampled from ``rng``
            (or take the middle of their range when ``rng`` is None).
        rng: numpy Generator or seed for the missing parameters.

    Returns:
        Watertight mesh with outward normals, centred at its bounding-box centre.
    """
    spec = _kind(kind)
    params = dict(params or {})
    unknown = set(params) - set(spec.ranges) - {"fillet"}
    if unknown:
        raise ValueError(
            f"make_object({kind!r}): unknown parameter(s) {sorted(unknown)}; known: {sorted(spec.ranges)}"
        )
    if rng is not None and not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    for key, (lo, hi) in spec.ranges.items():
        if key not in params:
            params[key] = float(rng.uniform(lo, hi)) if rng is not None else 0.5 * (lo + hi)
    for key, value in params.items():
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"make_object({kind!r}): parameter {key}={value} must be a positive number")
    return spec.build(params)


@dataclass(frozen=True)
class ObjectSpec:
    """A named object instance: its kind and fixed size parameters (metres)."""

    name: str
    kind: str
    params: dict[str, float] = field(default_factory=dict)

    def build(self) -> trimesh.Trimesh:
        return make_object(self.kind, self.params)


def _spec(name: str, kind: str, **params: float) -> ObjectSpec:
    return ObjectSpec(name, kind, params)


#: The default named objects (GRAB-style names), training objects first.
OBJECT_SPECS: dict[str, ObjectSpec] = {
    s.name: s
    for s in (
        _spec("spheresmall", "sphere", radius=0.025),
        _spec("cubesmall", "box", x=0.045, y=0.045, z=0.045, fillet=0.003),
        _spec("cylindermedium", "cylinder", radius=0.025, height=0.12, fillet=0.003),
        _spec("torusmedium", "torus", major_radius=0.04, minor_radius=0.012),
        _spec("waterbottle", "bottle", radius=0.032, height=0.2, neck_radius=0.014, neck_height=0.03),
        _spec("banana", "banana", length=0.18, radius=0.018, bend_deg=55.0),
        _spec("cup", "cup", r_bottom=0.03, r_top=0.04, height=0.1, wall=0.004),
        _spec("pyramidmedium", "pyramid", base=0.07, height=0.06),
        _spec("spherelarge", "sphere", radius=0.04),
        _spec("cubelarge", "box", x=0.065, y=0.065, z=0.065, fillet=0.004),
        _spec("cylindersmall", "cylinder", radius=0.016, height=0.1, fillet=0.002),
        _spec("bowl", "bowl", radius=0.065, height=0.05, wall=0.005),
        _spec("lightbulb", "lightbulb", radius=0.03, neck_radius=0.013, neck_height=0.03),
        _spec("capsule", "capsule", radius=0.018, length=0.12),
        _spec("cone", "cone", radius=0.035, height=0.09),
        _spec("disk", "disk", radius=0.045, thickness=0.018),
        _spec("block", "box", x=0.09, y=0.055, z=0.035, fillet=0.005),
        _spec("egg", "ellipsoid", a=0.03, b=0.022, c=0.022),
        # validation (GRAB's val names)
        _spec("apple", "ellipsoid", a=0.04, b=0.04, c=0.036),
        _spec("toothbrush", "box", x=0.17, y=0.016, z=0.012, fillet=0.005),
        # test (GRAB's test names)
        _spec(
            "mug", "mug", radius=0.04, height=0.095, wall=0.005, handle_radius=0.026, handle_thickness=0.006
        ),
        _spec(
            "wineglass",
            "wineglass",
            foot_radius=0.035,
            stem_radius=0.005,
            stem_height=0.07,
            bowl_radius=0.04,
            bowl_height=0.09,
        ),  # fmt: skip
        _spec("toothpaste", "box", x=0.16, y=0.045, z=0.028, fillet=0.01),
    )
}

#: The named objects by split: GRAB's standard split (:func:`halo.grasp.grab.object_split`) applied
#: to them (test: mug, wineglass, toothpaste; val: apple, toothbrush).  The order is fixed: it decides
#: which subject grasps which object in the synthetic data.
OBJECT_SPLITS: dict[str, tuple[str, ...]] = {
    "val": tuple(n for n in GRAB_VAL_OBJECTS if n in OBJECT_SPECS),
    "test": tuple(n for n in GRAB_TEST_OBJECTS if n in OBJECT_SPECS),
}
OBJECT_SPLITS["train"] = tuple(
    n for n in OBJECT_SPECS if n not in OBJECT_SPLITS["val"] + OBJECT_SPLITS["test"]
)


def select_objects(n: int | None = None, seed: int = 0) -> list[ObjectSpec]:
    """``n`` object specs: the first ``n`` training objects plus every val and test object.

    ``n`` counts all objects (None = every named one).  When ``n`` exceeds the
    named ones, extra training objects of every kind are drawn from ``seed``
    and named ``<kind><k>`` (e.g. ``cylinder2``).  With ``n`` below the number of
    val + test objects, only training objects are returned (small test data).
    """
    held_out = [OBJECT_SPECS[m] for m in OBJECT_SPLITS["val"] + OBJECT_SPLITS["test"]]
    train = [OBJECT_SPECS[m] for m in OBJECT_SPLITS["train"]]
    if n is None:
        return train + held_out
    if n < 1:
        raise ValueError(f"select_objects: n must be >= 1, got {n}")
    if n <= len(held_out):
        return train[:n]
    n_train = n - len(held_out)
    rng = np.random.default_rng(seed)
    k = 0
    while len(train) < n_train:
        kind = OBJECT_KINDS[k % len(OBJECT_KINDS)]
        train.append(ObjectSpec(f"{kind}{k // len(OBJECT_KINDS) + 1}", kind, sample_object_params(kind, rng)))
        k += 1
    return train[:n_train] + held_out


def check_object_name(name: str) -> str:
    """GRAB object names are lowercase letters and digits (the file name splits at the first ``_``)."""
    if not _NAME_RE.match(name):
        raise ValueError(f"object name {name!r}: use lowercase letters and digits only (GRAB file names)")
    return name
