"""Reader for the YouTube 3D Hands annotations (Kulon et al., CVPR 2020; arielai/youtube_3d_hands).

The annotation files are read by :mod:`halo.data.youtube3d_file` (its names are
re-exported here); this module converts them into metric right hands.

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
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np

from halo.core.skeleton import bone_vectors
from halo.data.youtube3d_file import (
    YouTube3DAnnotation,
    YouTube3DAnnotations,
    YouTube3DError,
    YouTube3DHand,
    YouTube3DImage,
    load_youtube3d,
)
from halo.hands.mano import ManoModel, ManoModelError, regress_keypoints, right_hand_model

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


# ----------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------


def _bone_length_sum(keypoints: np.ndarray) -> np.ndarray:
    return np.linalg.norm(bone_vectors(np.asarray(keypoints, dtype=np.float64)), axis=-1).sum(-1)


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
    try:
        return right_hand_model(mano_model)
    except ManoModelError as exc:
        raise YouTube3DError(f"{exc}. {_MANO_HELP}") from exc


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
