"""Reading the YouTube 3D Hands annotation files (Kulon et al., CVPR 2020; arielai/youtube_3d_hands).

The format
----------
One JSON object per split (``youtube_train.json``, ``youtube_val.json``,
``youtube_test.json``; a ``.gz`` copy is read too)::

    {"images":      [{"name": "youtube/<VIDEO_ID>/video/frames/<FRAME>.png",
                      "width": 640, "height": 480, "id": 7}, ...],
     "annotations": [{"vertices": [[x, y, z], ...],   # one per MANO vertex (778)
                      "is_left": 0, "image_id": 7, "id": 12}, ...]}

Several hands may share an image.  The vertices are MANO-topology meshes
(the official 778-vertex order); there are no MANO parameters and no faces
(the faces come from the user's MANO model).

Converting the (non-metric) annotations into metric right hands is :mod:`halo.data.youtube3d`.

Large files: the stdlib ``json`` parser reads the whole file at once (the
training split is ~800 MB of text); vertex lists are converted to numpy arrays
while parsing, so the Python float lists of only one hand are alive at a time.
"""

from __future__ import annotations

import gzip
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from halo.utils.errors import InputError

__all__ = [
    "YouTube3DAnnotation",
    "YouTube3DAnnotations",
    "YouTube3DError",
    "YouTube3DHand",
    "YouTube3DImage",
    "load_youtube3d",
]


class YouTube3DError(InputError):
    """An unusable YouTube3D annotation file or MANO model; the message names the file and the problem."""


# ----------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class YouTube3DImage:
    """One entry of ``images``: ``name`` is the frame's path relative to the dataset root."""

    id: int
    name: str
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True, eq=False)
class YouTube3DAnnotation:
    """One entry of ``annotations``, as stored (input units, not mirrored).

    Attributes:
        id: annotation id.
        image_id: id of its :class:`YouTube3DImage`.
        is_left: the file's ``is_left`` flag.
        vertices: (V,3) float64, x/y pixels, z depth times the projection scale.
    """

    id: int
    image_id: int
    is_left: bool
    vertices: np.ndarray


@dataclass(eq=False)
class YouTube3DAnnotations:
    """A parsed, validated annotation file (see :func:`load_youtube3d`).

    Attributes:
        path: the file read.
        images: image records by id.
        annotations: hand records in file order.
    """

    path: Path
    images: dict[int, YouTube3DImage]
    annotations: list[YouTube3DAnnotation]

    def __len__(self) -> int:
        return len(self.annotations)

    @property
    def num_vertices(self) -> int | None:
        """Vertices per hand (the same for every hand), ``None`` for an empty file."""
        return int(self.annotations[0].vertices.shape[0]) if self.annotations else None


@dataclass(eq=False)
class YouTube3DHand:
    """One hand converted to a metric right hand (see the module docstring for frame and scale).

    Attributes:
        name: ``"<video id>_<frame>_<annotation id>"``, unique per file and
            filesystem-safe (only ``A-Z a-z 0-9 . _ -``).
        vertices: (V,3) float64 metres, right hand, wrist at the origin.
        keypoints: (21,3) float64 metres, public joint order, wrist at the origin.
        faces: (F,3) int64, the MANO model's right-hand faces (outward for
            ``vertices``, left hands included); shared between hands, read-only.
        is_left: the file's original ``is_left`` flag.
        scale: metres per input unit (template-size assumption).
        image_name: the frame's path from the file's ``images``.
        image_id / annotation_id: the file's ids.
        image_size: (width, height) in pixels, ``None`` where the file gives none.
        wrist_input: (3,) the wrist keypoint in input units, original frame
            (not mirrored).
        chirality_ok: whether ``vertices`` are a right hand (always True unless
            ``on_wrong_chirality='keep'`` let a failing hand through).
    """

    name: str
    vertices: np.ndarray
    keypoints: np.ndarray
    faces: np.ndarray
    is_left: bool
    scale: float
    image_name: str
    image_id: int
    annotation_id: int
    image_size: tuple[int, int] | None = None
    wrist_input: np.ndarray = field(default_factory=lambda: np.zeros(3))
    chirality_ok: bool = True

    def to_input(self, points: np.ndarray) -> np.ndarray:
        """Map (...,3) points in this hand's metric frame back to the annotation's pixel frame."""
        p = np.asarray(points, dtype=np.float64) / self.scale
        if self.is_left:
            p = p * np.array([-1.0, 1.0, 1.0])
        return p + self.wrist_input


# ----------------------------------------------------------------------------
# Reading and validation
# ----------------------------------------------------------------------------


def _vertices_hook(obj: dict) -> dict:
    """``json`` object hook: turn a ``vertices`` list into an array while parsing (saves memory).

    Anything numpy cannot turn into a float array is left as is and reported
    by the validation, which knows the annotation's position.
    """
    verts = obj.get("vertices")
    if isinstance(verts, list):
        try:
            arr = np.asarray(verts, dtype=np.float64)
        except (TypeError, ValueError):
            return obj
        obj["vertices"] = arr
    return obj


def _read_json(path: Path) -> Any:
    source = str(path)
    if not path.is_file():
        raise YouTube3DError(f"{source}: YouTube3D annotation file not found")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            return json.load(fh, object_hook=_vertices_hook)
    except json.JSONDecodeError as exc:
        ends_early = exc.msg.startswith("Unterminated") or exc.pos >= len(exc.doc.rstrip())
        hint = " (the file ends early: truncated download or copy?)" if ends_early else ""
        raise YouTube3DError(
            f"{source}: not valid JSON{hint}: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    except (UnicodeDecodeError, OSError, EOFError, zlib.error) as exc:
        raise YouTube3DError(f"{source}: not a readable JSON file: {type(exc).__name__}: {exc}") from exc


def _as_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise YouTube3DError(f"{where} must be an integer, got {value!r}")
    return int(value)


def _parse_images(raw: Any, source: str) -> dict[int, YouTube3DImage]:
    if not isinstance(raw, list):
        raise YouTube3DError(f"{source}: key 'images' must be a list, got {type(raw).__name__}")
    images: dict[int, YouTube3DImage] = {}
    for i, entry in enumerate(raw):
        where = f"{source}: images[{i}]"
        if not isinstance(entry, dict):
            raise YouTube3DError(f"{where} must be an object, got {type(entry).__name__}")
        for key in ("id", "name"):
            if key not in entry:
                raise YouTube3DError(f"{where}: missing key '{key}'")
        image_id = _as_int(entry["id"], f"{where}: key 'id'")
        name = entry["name"]
        if not isinstance(name, str) or not name:
            raise YouTube3DError(f"{where}: key 'name' must be a non-empty string, got {name!r}")
        width, height = (
            None if entry.get(k) is None else _as_int(entry[k], f"{where}: key '{k}'")
            for k in ("width", "height")
        )
        if image_id in images:
            raise YouTube3DError(f"{where}: duplicate image id {image_id}")
        images[image_id] = YouTube3DImage(id=image_id, name=name, width=width, height=height)
    return images


def _parse_vertices(value: Any, where: str, num_vertices: int | None, model_source: str | None) -> np.ndarray:
    if isinstance(value, np.ndarray):
        verts = value
    else:
        try:
            verts = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise YouTube3DError(
                f"{where}: key 'vertices' must be a list of [x, y, z] numbers ({type(exc).__name__}: {exc})"
            ) from exc
    if verts.ndim != 2 or verts.shape[1] != 3:
        raise YouTube3DError(f"{where}: key 'vertices' has shape {verts.shape}, expected (V, 3)")
    if num_vertices is not None and verts.shape[0] != num_vertices:
        against = f"the MANO model {model_source}" if model_source else "the expected count"
        raise YouTube3DError(
            f"{where}: key 'vertices' has {verts.shape[0]} vertices but {against} has {num_vertices} "
            "(YouTube3D meshes have the 778 vertices of the official MANO model)"
        )
    bad = ~np.isfinite(verts).all(axis=1)
    if bad.any():
        raise YouTube3DError(
            f"{where}: key 'vertices' holds NaN or infinite values (vertex {int(np.argmax(bad))})"
        )
    return verts


def load_youtube3d(
    json_path: str | Path,
    *,
    num_vertices: int | None = None,
    model_source: str | None = None,
) -> YouTube3DAnnotations:
    """Read and validate a YouTube3D annotation file (``.json`` or ``.json.gz``).

    Args:
        json_path: the annotation file.
        num_vertices: required vertex count per hand (the MANO model's, 778 for
            the official model); ``None`` only requires every hand to have the
            same count.
        model_source: named in the vertex-count error (e.g. the model's file).

    Returns:
        :class:`YouTube3DAnnotations`, vertices as stored (input units).

    Raises:
        YouTube3DError: the message names the file and the problem: missing
            file, invalid or truncated JSON, missing key (``images``,
            ``annotations``, ``vertices``, ...), wrong vertex shape or count,
            NaN / infinite values, unknown ``image_id``, duplicate ids.
    """
    path = Path(json_path)
    source = str(path)
    data = _read_json(path)
    if not isinstance(data, dict):
        raise YouTube3DError(
            f"{source}: expected a JSON object with keys 'images' and 'annotations', got {type(data).__name__}"
        )
    for key in ("annotations", "images"):
        if key not in data:
            raise YouTube3DError(
                f"{source}: missing key '{key}' (a YouTube3D file holds 'images' and 'annotations')"
            )
    images = _parse_images(data.pop("images"), source)
    raw = data.pop("annotations")
    if not isinstance(raw, list):
        raise YouTube3DError(f"{source}: key 'annotations' must be a list, got {type(raw).__name__}")

    annotations: list[YouTube3DAnnotation] = []
    seen: set[int] = set()
    for i, entry in enumerate(raw):
        where = f"{source}: annotations[{i}]"
        if not isinstance(entry, dict):
            raise YouTube3DError(f"{where} must be an object, got {type(entry).__name__}")
        for key in ("vertices", "is_left", "image_id", "id"):
            if key not in entry:
                raise YouTube3DError(f"{where}: missing key '{key}'")
        ann_id = _as_int(entry["id"], f"{where}: key 'id'")
        where = f"{source}: annotations[{i}] (id {ann_id})"
        if ann_id in seen:
            raise YouTube3DError(f"{where}: duplicate annotation id {ann_id}")
        seen.add(ann_id)
        image_id = _as_int(entry["image_id"], f"{where}: key 'image_id'")
        if image_id not in images:
            raise YouTube3DError(f"{where}: key 'image_id' = {image_id} is not an id in 'images'")
        is_left = entry["is_left"]
        if is_left not in (0, 1) or isinstance(is_left, float):
            raise YouTube3DError(f"{where}: key 'is_left' must be 0 or 1, got {is_left!r}")
        expected = (
            num_vertices
            if num_vertices is not None
            else (annotations[0].vertices.shape[0] if annotations else None)
        )
        verts = _parse_vertices(entry["vertices"], where, expected, model_source if num_vertices else None)
        raw[i] = None  # drop the parsed entry as we go
        annotations.append(
            YouTube3DAnnotation(id=ann_id, image_id=image_id, is_left=bool(is_left), vertices=verts)
        )
    return YouTube3DAnnotations(path=path, images=images, annotations=annotations)
