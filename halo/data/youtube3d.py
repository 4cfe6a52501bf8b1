"""Reader for the YouTube 3D Hands annotations (Kulon et al., CVPR 2020; arielai/youtube_3d_hands).

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

Units: the coordinates are **not metric**.  ``x`` and ``y`` are image pixels
(x right, y down) and ``z`` is the fitted hand's depth multiplied by the same
projection scale, so an annotation is an unknown similarity transform of a
metric MANO hand.  The pixel frame (x right, y down, z away from the camera)
is right-handed, so a right hand is a *proper* similarity of the MANO right
hand and needs no axis flip; a left hand (``is_left = 1``) is mirrored here
(``x -> -x``) into a right hand.  Mirroring reverses the triangle winding of
a left-hand mesh, but the mirrored vertices *are* right-hand geometry in the
right model's vertex order, so the right model's faces are outward-oriented
for them.  Every hand's handedness is also checked geometrically (see
:func:`is_proper_right_hand`), which catches a wrong ``is_left`` flag or a
file whose z axis points towards the camera.

Metric scale
------------
The true size of a hand cannot be recovered from these files: a 10% larger
hand twice as far from the camera gives the same annotation.  The reader
therefore brings every hand to the size of the MANO template:

    scale = sum of the 20 bone lengths of the template's 21 keypoints
            / sum of the 20 bone lengths of the annotation's 21 keypoints

(``halo.core.skeleton.BONES``; keypoints as in :func:`halo.hands.mano.regress_keypoints`),
in metres per input unit.  Errors of this choice:

* a hand whose true size differs from the template's by k% is returned
  k% too small or too large (it is scaled to template size); its shape is
  otherwise kept (palm width, finger proportions are the annotation's);
* the joints regressed from a *posed* mesh sit slightly inside bent joints,
  which shortens the skeleton a little and makes ``scale`` slightly too large:
  measured on the project's synthetic MANO-format hand (1,578 vertices) over
  natural poses: <= 0.15% for open hands, 0.5-1% for grasps and pinches,
  up to 1.5% for tight fists.  A hand in the template's pose (any rotation)
  is recovered exactly.

Output frame
------------
Metres, origin at the wrist keypoint, axes of the annotation's pixel frame
(x right, y down, z away from the camera; x negated for left hands).  The hand
is not rotated into a canonical frame (``halo.core.canonicalization`` does that
from the keypoints).  :meth:`YouTube3DHand.to_input` maps metres back to the
annotation's pixel frame (e.g. to overlay keypoints on the video frame).

Keypoints
---------
21 keypoints in the public order (``halo.core.skeleton.JOINT_NAMES``) from
:func:`halo.hands.mano.regress_keypoints`: the 16 MANO joints regressed from the
annotation's vertices with the model's ``J_regressor`` plus the 5 fingertip
vertices ``ManoModel.tip_vertex_ids`` (for MANO_RIGHT.pkl the official
right-hand ids 745, 317, 444, 556, 673; mirrored left hands are right-hand
geometry in the right model's vertex order, so the right ids apply).
Note: :class:`halo.hands.mano.ManoLayer` returns the *kinematic* joints of a posed
hand; joints regressed from the posed vertices differ from those by a few
millimetres at bent joints (up to ~4 mm on the synthetic hand).  Only the
vertices are known here, so regression is the only choice.

What this module does not do
----------------------------
It only reads and converts annotations.  Sealing the open MANO wrist,
sampling occupancy points and writing the training dataset are done by other
modules (``halo.data.prepare``, e.g. its ``prepare_from_vertices(model,
hand.name, hand.vertices)``, and ``halo.data.build``); the Lightning
datamodule wires them together.
YouTube3D needs the user's own MANO model (``MANO_RIGHT.pkl``, MANO licence,
not shipped with this project); the dataset itself is not shipped either
(request it from the authors).

Large files: the stdlib ``json`` parser reads the whole file at once (the
training split is ~800 MB of text); vertex lists are converted to numpy arrays
while parsing, so the Python float lists of only one hand are alive at a time.
"""

from __future__ import annotations

import gzip
import json
import re
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from halo.core.skeleton import BONES
from halo.hands.mano import ManoModel, ManoModelError, load_mano_model, regress_keypoints

__all__ = [
    "CHIRALITY_POLICIES",
    "YouTube3DAnnotation",
    "YouTube3DAnnotations",
    "YouTube3DError",
    "YouTube3DHand",
    "YouTube3DImage",
    "convert_annotation",
    "estimate_metric_scale",
    "hand_name",
    "is_proper_right_hand",
    "iter_youtube3d_hands",
    "load_youtube3d",
    "resolve_mano_model",
]

#: What :func:`iter_youtube3d_hands` does with a hand that is not a right hand
#: after mirroring: raise, skip it (with a warning) or keep it (flagged).
CHIRALITY_POLICIES = ("raise", "skip", "keep")

_MANO_HELP = (
    "YouTube3D annotations are MANO meshes: they need your own MANO right-hand model "
    "(MANO_RIGHT.pkl from https://mano.is.tue.mpg.de, MANO licence; it is not shipped with this project). "
    "Pass its path (str or Path) or a halo.hands.mano.ManoModel as `mano_model`, e.g. "
    "iter_youtube3d_hands('youtube_val.json', 'models/MANO_RIGHT.pkl')"
)
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class YouTube3DError(ValueError):
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


# ----------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------


def _bone_length_sum(keypoints: np.ndarray) -> np.ndarray:
    kp = np.asarray(keypoints, dtype=np.float64)
    parents = kp[..., [p for p, _ in BONES], :]
    children = kp[..., [c for _, c in BONES], :]
    return np.linalg.norm(children - parents, axis=-1).sum(-1)


def estimate_metric_scale(keypoints: np.ndarray, template_keypoints: np.ndarray) -> float:
    """Metres per input unit that give ``keypoints`` the skeleton size of ``template_keypoints``.

    ``sum of the 20 bone lengths (template, metres) / sum of the 20 bone lengths
    (keypoints, input units)``, bones of ``halo.core.skeleton.BONES``.  See the module
    docstring for the error of this template-size assumption.

    Raises:
        YouTube3DError: the keypoints have no extent (all bones of zero length).
    """
    observed = float(_bone_length_sum(keypoints))
    if not np.isfinite(observed) or observed <= 1e-12:
        raise YouTube3DError(f"degenerate hand: the 20 bones have total length {observed}")
    return float(_bone_length_sum(template_keypoints)) / observed


def _chirality_support(model: ManoModel) -> np.ndarray:
    """Vertices that move (almost) rigidly with the wrist: MANO skinning weight of joint 0 >= 0.5."""
    palm = np.flatnonzero(model.weights[:, 0] >= 0.5)
    return palm if len(palm) >= 4 else np.arange(model.num_vertices)


def is_proper_right_hand(model: ManoModel, vertices: np.ndarray) -> bool:
    """Whether (V,3) ``vertices`` are a proper similarity (rotation, not reflection) of the right model.

    Uses the palm vertices (wrist skinning weight >= 0.5), which finger poses
    barely move: the sign of the determinant of their cross-covariance with
    the template's palm (Kabsch) is the sign of the transform's determinant.
    """
    idx = _chirality_support(model)
    a = model.v_template[idx] - model.v_template[idx].mean(0)
    v = np.asarray(vertices, dtype=np.float64)[idx]
    b = v - v.mean(0)
    return bool(np.linalg.det(a.T @ b) > 0.0)


def _video_and_frame(image_name: str) -> tuple[str, str]:
    p = PurePosixPath(image_name.replace("\\", "/"))
    parts = p.parts
    if "youtube" in parts[:-1]:
        k = parts.index("youtube")
        video = parts[k + 1] if k + 1 < len(parts) - 1 else "youtube"
    elif len(parts) >= 2:
        video = parts[-2]
    else:
        video = "image"
    return video, p.stem


def hand_name(image_name: str, annotation_id: int) -> str:
    """``"<video id>_<frame>_<annotation id>"``, filesystem-safe (runs of other characters become ``_``).

    ``youtube/<VIDEO_ID>/video/frames/<FRAME>.png`` gives the video id and
    frame; for other layouts the parent folder and the file stem are used.
    """
    video, frame = _video_and_frame(image_name)
    name = _SAFE_NAME.sub("_", f"{video}_{frame}_{int(annotation_id)}").strip("._")
    return name or f"hand_{int(annotation_id)}"


def resolve_mano_model(mano_model: ManoModel | str | Path | None) -> ManoModel:
    """A right-hand :class:`ManoModel` from a model or a file path, with a clear error when absent."""
    if mano_model is None:
        raise YouTube3DError(f"no MANO model given. {_MANO_HELP}")
    if isinstance(mano_model, (str, Path)):
        path = Path(mano_model)
        if not path.is_file():
            raise YouTube3DError(f"{path}: MANO model file not found. {_MANO_HELP}")
        try:
            mano_model = load_mano_model(path)  # side from the file (name); a left model is refused below
        except ManoModelError as exc:
            raise YouTube3DError(f"{exc}. {_MANO_HELP}") from exc
    if not isinstance(mano_model, ManoModel):
        raise YouTube3DError(
            f"mano_model must be a ManoModel, str or Path, got {type(mano_model).__name__}. {_MANO_HELP}"
        )
    if mano_model.side != "right":
        raise YouTube3DError(
            f"{mano_model.source}: a {mano_model.side}-hand MANO model was given; pass the right-hand "
            "model (MANO_RIGHT.pkl): left hands are mirrored into right hands"
        )
    return mano_model


def convert_annotation(
    annotation: YouTube3DAnnotation,
    model: ManoModel,
    *,
    image: YouTube3DImage | None = None,
    template_keypoints: np.ndarray | None = None,
) -> YouTube3DHand:
    """Convert one annotation to a metric, wrist-centred right hand (see the module docstring).

    ``p_metric = scale * M (p_input - wrist_input)`` with ``M = diag(-1, 1, 1)``
    for left hands, else the identity.

    Args:
        annotation: the hand (its vertex count must equal the model's).
        model: the right-hand MANO model (faces, ``J_regressor``, tips, template size).
        image: its image record (name and size); default: unknown.
        template_keypoints: the model's rest keypoints (computed when ``None``;
            pass them when converting many hands).

    Raises:
        YouTube3DError: wrong vertex count or a degenerate hand.
    """
    verts_in = annotation.vertices
    if verts_in.shape != (model.num_vertices, 3):
        raise YouTube3DError(
            f"annotation {annotation.id}: vertices have shape {verts_in.shape}, the MANO model "
            f"{model.source} needs ({model.num_vertices}, 3)"
        )
    if template_keypoints is None:
        template_keypoints = regress_keypoints(model, model.v_template)
    keypoints_in = regress_keypoints(model, verts_in)
    wrist = keypoints_in[0].copy()
    mirror = np.array([-1.0 if annotation.is_left else 1.0, 1.0, 1.0])
    try:
        scale = estimate_metric_scale(keypoints_in, template_keypoints)
    except YouTube3DError as exc:
        raise YouTube3DError(f"annotation {annotation.id}: {exc}") from exc
    vertices = (verts_in - wrist) * (mirror * scale)
    keypoints = (keypoints_in - wrist) * (mirror * scale)
    image_name = image.name if image is not None else ""
    known = image is not None and image.width is not None and image.height is not None
    size = (image.width, image.height) if known else None
    faces = model.f.view()
    faces.setflags(write=False)
    return YouTube3DHand(
        name=hand_name(image_name or "image", annotation.id),
        vertices=vertices,
        keypoints=keypoints,
        faces=faces,
        is_left=annotation.is_left,
        scale=scale,
        image_name=image_name,
        image_id=annotation.image_id,
        annotation_id=annotation.id,
        image_size=size,
        wrist_input=wrist,
        chirality_ok=is_proper_right_hand(model, vertices),
    )


def iter_youtube3d_hands(
    json_path: str | Path | YouTube3DAnnotations,
    mano_model: ManoModel | str | Path | None,
    *,
    limit: int | None = None,
    on_wrong_chirality: str = "raise",
) -> Iterator[YouTube3DHand]:
    """Yield the file's hands as metric right hands (:class:`YouTube3DHand`), in file order.

    Args:
        json_path: a YouTube3D annotation file, or one already read with
            :func:`load_youtube3d`.  The whole file is parsed and validated
            before the first hand is yielded.
        mano_model: the user's MANO right-hand model: a path (str / Path) to
            ``MANO_RIGHT.pkl`` (or an ``.npz`` of it), read with
            :func:`halo.hands.mano.load_mano_model`, or a :class:`halo.hands.mano.ManoModel`.
            Not shipped with this project (MANO licence).
        limit: stop after this many hands.
        on_wrong_chirality: a hand that is not a right hand after mirroring
            (wrong ``is_left`` flag, or a z axis towards the camera):
            ``"raise"`` (default), ``"skip"`` (with a warning) or ``"keep"``
            (yielded with ``chirality_ok=False``).

    Raises:
        YouTube3DError: no / unreadable / left MANO model (the message says how
            to pass one), any problem of the file (see :func:`load_youtube3d`),
            a vertex count other than the model's, or a wrongly handed hand.
    """
    if on_wrong_chirality not in CHIRALITY_POLICIES:
        raise ValueError(
            f"on_wrong_chirality must be one of {CHIRALITY_POLICIES}, got {on_wrong_chirality!r}"
        )
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    model = resolve_mano_model(mano_model)
    if isinstance(json_path, YouTube3DAnnotations):
        data = json_path
        if data.num_vertices is not None and data.num_vertices != model.num_vertices:
            raise YouTube3DError(
                f"{data.path}: hands have {data.num_vertices} vertices but the MANO model {model.source} "
                f"has {model.num_vertices}"
            )
    else:
        data = load_youtube3d(json_path, num_vertices=model.num_vertices, model_source=model.source)
    template = regress_keypoints(model, model.v_template)
    count = 0
    for ann in data.annotations:
        if limit is not None and count >= limit:
            return
        try:
            hand = convert_annotation(
                ann, model, image=data.images[ann.image_id], template_keypoints=template
            )
        except YouTube3DError as exc:
            raise YouTube3DError(f"{data.path}: {exc}") from exc
        if not hand.chirality_ok:
            message = (
                f"{data.path}: annotation {ann.id} (is_left={int(ann.is_left)}) is not a right hand after "
                f"{'mirroring' if ann.is_left else 'reading'}: its 'is_left' flag is wrong or the file's "
                "z axis points towards the camera (a left-handed frame)"
            )
            if on_wrong_chirality == "raise":
                raise YouTube3DError(f"{message}; pass on_wrong_chirality='skip' or 'keep' to go on")
            if on_wrong_chirality == "skip":
                warnings.warn(f"{message}; skipped", stacklevel=2)
                continue
        count += 1
        yield hand
