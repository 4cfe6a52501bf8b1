"""Reader for the GRAB dataset layout (real downloads and this project's synthetic grasps).

Layout (paths inside the files are relative to ``ROOT``, the folder that holds
``grab/`` and ``tools/``)::

    ROOT/grab/s1..s10/<object>_<intent>_<k>.npz          one motion sequence (120 fps)
    ROOT/tools/object_meshes/contact_meshes/<object>.ply object templates (metres)
    ROOT/tools/subject_meshes/<gender>/<sbj>_rhand.ply   each subject's MANO hand template
    ROOT/tools/mano/SYNTHETIC_RIGHT.npz                  synthetic data only: its hand model

Every key of a sequence file is a 0-d object array holding a dict of arrays; they
are read through an allow-list unpickler (:func:`halo.utils.safe_pickle.load_npz_with_objects`),
so a file can hold arrays and plain containers but never run code.  The keys this reader uses:

=================  ==========================================================================
key                content
=================  ==========================================================================
``sbj_id``         subject (``"s1"``)
``obj_name``       object name (also the file-name prefix before the first ``_``)
``motion_intent``  ``lift`` / ``pass`` / ``offhand`` / a use verb
``framerate``      120
``n_frames``       T
``n_comps``        hand PCA size (24)
``rhand``          ``{"params": {"global_orient" (T,3), "hand_pose" (T,n_comps), "transl" (T,3),
                   "fullpose" (T,45)}, "vtemp": <subject hand mesh>}``
``object``         ``{"params": {"global_orient" (T,3), "transl" (T,3)}, "object_mesh": <ply>}``
``contact``        ``{"object": (T, n_object_vertices) int}``: 0 = no contact, else the GRAB
                   body-part id touching that vertex (right hand 22, right fingers 41..55)
=================  ==========================================================================

Conventions that are easy to get wrong, handled here once:

* **Object pose is row vectors times R**: world vertices are
  ``v_template @ R(global_orient) + transl`` (GRAB's ``tools/objectmodel.py``), so
  the rotation applied to column vectors is ``R.T``.  :func:`object_rotation`
  returns that column-vector matrix.
* **The right hand** is MANO with ``flat_hand_mean=True`` and the subject's
  template mesh as ``v_template``; ``fullpose`` (45 axis-angles) and the PCA
  coefficients ``hand_pose`` describe the same pose (``fullpose`` is exact and
  is the default).
* Units are metres throughout.

The standard object split (GRAB / GrabNet) is :data:`GRAB_TEST_OBJECTS`,
:data:`GRAB_VAL_OBJECTS`, and every other object found in the files for train.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import trimesh
from scipy.spatial.transform import Rotation

from halo.hands.mano import ManoLayer, ManoModel, ManoModelError, right_hand_model
from halo.utils.errors import InputError
from halo.utils.safe_pickle import load_npz_with_objects

__all__ = [
    "GRAB_TEST_OBJECTS",
    "GRAB_VAL_OBJECTS",
    "RIGHT_HAND_CONTACT_IDS",
    "FINGER_CONTACT_IDS",
    "SYNTHETIC_MANO_PATH",
    "GrabFileError",
    "GrabSequence",
    "GrabHandPoser",
    "find_sequences",
    "load_grab_sequence",
    "object_name_of",
    "object_rotation",
    "object_world_vertices",
    "object_split",
    "contact_frames",
    "select_frames",
    "load_object_mesh",
    "resolve_mano_model",
]

#: Standard GRAB / GrabNet test and validation objects; train = every other object.
GRAB_TEST_OBJECTS: tuple[str, ...] = ("mug", "wineglass", "camera", "binoculars", "fryingpan", "toothpaste")
GRAB_VAL_OBJECTS: tuple[str, ...] = ("apple", "toothbrush", "elephant", "hand")
#: Names in GRAB's object folders that are not graspable objects.
NON_OBJECTS: tuple[str, ...] = ("body", "table")

#: GRAB contact ids of the right hand (palm 22, finger segments 41..55).
RIGHT_HAND_CONTACT_IDS: tuple[int, ...] = (22, *range(41, 56))
#: GRAB contact ids of each right finger's three segments (SMPL-X joint order).
FINGER_CONTACT_IDS: dict[str, tuple[int, int, int]] = {
    "index": (41, 42, 43),
    "middle": (44, 45, 46),
    "pinky": (47, 48, 49),
    "ring": (50, 51, 52),
    "thumb": (53, 54, 55),
}

#: Where synthetic GRAB-layout roots keep their hand model (relative to ROOT).
SYNTHETIC_MANO_PATH = Path("tools/mano/SYNTHETIC_RIGHT.npz")
#: The known right-hand-MANO download, named in error messages.
MANO_HINT = "MANO_RIGHT.pkl from mano_v1_2 (https://mano.is.tue.mpg.de; not redistributable)"


class GrabFileError(InputError):
    """A GRAB file or folder is missing, unreadable or not in the expected layout."""


def object_name_of(path: str | Path) -> str:
    """``s4/mug_pass_1.npz`` -> ``mug`` (the file-name prefix before the first ``_``)."""
    return Path(path).name.split("_", 1)[0]


def _intent_of(path: Path) -> str:
    parts = path.stem.split("_")
    return parts[1] if len(parts) > 2 else "unknown"


# ----------------------------------------------------------------------------
# One sequence file
# ----------------------------------------------------------------------------


@dataclass
class GrabSequence:
    """One GRAB sequence file, parsed (arrays as float64 numpy, metres).

    ``contact_object`` is None when the file has no ``contact['object']``.
    """

    path: Path
    subject: str
    object_name: str
    intent: str
    framerate: float
    n_frames: int
    hand_global_orient: np.ndarray  # (T,3) axis-angle
    hand_transl: np.ndarray  # (T,3)
    hand_fullpose: np.ndarray | None  # (T,45)
    hand_pca: np.ndarray | None  # (T,n_comps)
    hand_vtemp: str  # relative path of the subject's hand template
    object_global_orient: np.ndarray  # (T,3) axis-angle, row-vector convention
    object_transl: np.ndarray  # (T,3)
    object_mesh: str  # relative path of the object template
    contact_object: np.ndarray | None  # (T, n_object_vertices) int

    @property
    def name(self) -> str:
        """``s4/mug_pass_1`` (subject folder / file stem): unique within a root."""
        return f"{self.path.parent.name}/{self.path.stem}"


def _item(data: dict, key: str, path: Path):
    if key not in data:
        raise GrabFileError(f"{path}: key '{key}' missing (keys: {', '.join(sorted(data))})")
    return data[key]


def _array(value, path: Path, key: str, shape: tuple) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise GrabFileError(f"{path}: {key} is not numeric ({err})") from err
    if arr.ndim != len(shape) or any(
        s is not None and a != s for a, s in zip(arr.shape, shape, strict=False)
    ):
        want = "(" + ", ".join("n" if s is None else str(s) for s in shape) + ")"
        raise GrabFileError(f"{path}: {key} has shape {arr.shape}, expected {want}")
    if not np.isfinite(arr).all():
        raise GrabFileError(f"{path}: {key} contains NaN or inf")
    return arr


def _dict(value, path: Path, key: str) -> dict:
    if not isinstance(value, dict):
        raise GrabFileError(f"{path}: {key} is a {type(value).__name__}, expected a dict (0-d object array)")
    return value


def load_grab_sequence(path: str | Path) -> GrabSequence:
    """Parse one ``grab/<sbj>/<object>_<intent>_<k>.npz`` file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise GrabFileError(f"{path}: no such GRAB sequence file")
    try:
        data = load_npz_with_objects(path)
    except Exception as err:  # zip / refused pickle / malformed member
        raise GrabFileError(f"{path}: not a readable GRAB .npz file ({type(err).__name__}: {err})") from err
    rhand = _dict(_item(data, "rhand", path), path, "rhand")
    obj = _dict(_item(data, "object", path), path, "object")
    hp = _dict(rhand.get("params"), path, "rhand['params']")
    op = _dict(obj.get("params"), path, "object['params']")
    t = int(data["n_frames"]) if "n_frames" in data else None
    orient = _array(hp.get("global_orient"), path, "rhand['params']['global_orient']", (t, 3))
    t = orient.shape[0]
    full = hp.get("fullpose")
    pca = hp.get("hand_pose")
    if full is None and pca is None:
        raise GrabFileError(f"{path}: rhand['params'] has neither 'fullpose' nor 'hand_pose'")
    contact = None
    c = data.get("contact")
    if isinstance(c, dict) and c.get("object") is not None:
        contact = np.asarray(c["object"])
        if contact.ndim != 2 or contact.shape[0] != t:
            raise GrabFileError(
                f"{path}: contact['object'] has shape {contact.shape}, expected ({t}, n_object_vertices)"
            )

    def text(key: str, default: str) -> str:
        return str(data[key]) if key in data else default

    seq = GrabSequence(
        path=path,
        subject=text("sbj_id", path.parent.name),
        object_name=text("obj_name", object_name_of(path)),
        intent=text("motion_intent", _intent_of(path)),
        framerate=float(data.get("framerate", 120.0)),
        n_frames=t,
        hand_global_orient=orient,
        hand_transl=_array(hp.get("transl"), path, "rhand['params']['transl']", (t, 3)),
        hand_fullpose=None if full is None else _array(full, path, "rhand['params']['fullpose']", (t, 45)),
        hand_pca=None if pca is None else _array(pca, path, "rhand['params']['hand_pose']", (t, None)),
        hand_vtemp=str(rhand.get("vtemp", "")),
        object_global_orient=_array(
            op.get("global_orient"), path, "object['params']['global_orient']", (t, 3)
        ),
        object_transl=_array(op.get("transl"), path, "object['params']['transl']", (t, 3)),
        object_mesh=str(obj.get("object_mesh", "")),
        contact_object=contact,
    )
    if not seq.hand_vtemp:
        raise GrabFileError(f"{path}: rhand['vtemp'] (the subject's hand template) is missing")
    if not seq.object_mesh:
        raise GrabFileError(f"{path}: object['object_mesh'] is missing")
    return seq


# ----------------------------------------------------------------------------
# Object pose
# ----------------------------------------------------------------------------


def object_rotation(global_orient: np.ndarray) -> np.ndarray:
    """(T,3) GRAB object axis-angles -> (T,3,3) rotations for COLUMN vectors.

    GRAB applies ``v @ R`` (row vectors); for column vectors that is ``R.T @ v``,
    and this returns ``R.T``.
    """
    r = Rotation.from_rotvec(np.asarray(global_orient, dtype=np.float64).reshape(-1, 3)).as_matrix()
    return np.swapaxes(r, -1, -2)


def object_world_vertices(
    v_template: np.ndarray, global_orient: np.ndarray, transl: np.ndarray
) -> np.ndarray:
    """(V,3) template + (T,3) pose -> (T,V,3) world vertices, ``v @ R(global_orient) + transl``."""
    rot = object_rotation(global_orient)  # column-vector form R.T
    v = np.asarray(v_template, dtype=np.float64)
    return np.einsum("tij,vj->tvi", rot, v) + np.asarray(transl, dtype=np.float64)[:, None, :]


# ----------------------------------------------------------------------------
# Folder level
# ----------------------------------------------------------------------------


def find_sequences(
    root: str | Path,
    *,
    subjects: Sequence[str] | None = None,
    objects: Iterable[str] | None = None,
    intents: Sequence[str] | None = None,
) -> list[Path]:
    """Sorted sequence files under ``root/grab/<sbj>/``, optionally filtered.

    ``intents`` follows GRAB's preprocessing: ``lift``, ``pass``, ``offhand``,
    ``use`` (= every other intent) or ``all``.
    """
    root = Path(root)
    grab = root / "grab"
    if not grab.is_dir():
        hint = " (pass the folder that holds grab/ and tools/)" if (root / "s1").is_dir() else ""
        raise GrabFileError(f"{root}: no grab/ folder; not a GRAB root{hint}")
    files = sorted(p for p in grab.glob("*/*.npz") if p.is_file())
    if not files:
        raise GrabFileError(f"{grab}: no sequence files (<subject>/<object>_<intent>_<k>.npz)")
    if subjects is not None:
        wanted = set(subjects)
        files = [p for p in files if p.parent.name in wanted]
    if objects is not None:
        names = set(objects)
        files = [p for p in files if object_name_of(p) in names]
    if intents is not None and "all" not in intents:
        named = {"lift", "pass", "offhand"}

        def keep(p: Path) -> bool:
            intent = _intent_of(p)
            return intent in intents or ("use" in intents and intent not in named)

        files = [p for p in files if keep(p)]
    return files


def object_split(
    object_names: Iterable[str],
    test: Sequence[str] = GRAB_TEST_OBJECTS,
    val: Sequence[str] = GRAB_VAL_OBJECTS,
) -> dict[str, list[str]]:
    """Split object names by the standard rule: named test / val objects, every other one for train."""
    names = sorted({n for n in object_names if n not in NON_OBJECTS})
    overlap = set(test) & set(val)
    if overlap:
        raise ValueError(f"object_split: objects in both test and val: {sorted(overlap)}")
    return {
        "train": [n for n in names if n not in test and n not in val],
        "val": [n for n in names if n in val],
        "test": [n for n in names if n in test],
    }


def load_object_mesh(root: str | Path, relative: str, name: str | None = None) -> trimesh.Trimesh:
    """An object template mesh (metres) from a path relative to the GRAB root."""
    path = Path(root) / relative
    label = name or str(path)
    if not path.is_file():
        raise GrabFileError(f"{path}: object mesh missing (named by a sequence file for '{label}')")
    try:
        mesh = trimesh.load(path, process=False, force="mesh")
    except Exception as err:
        raise GrabFileError(f"{path}: unreadable object mesh ({type(err).__name__}: {err})") from err
    if len(mesh.faces) == 0:
        raise GrabFileError(f"{path}: object mesh has no faces")
    return mesh


def resolve_mano_model(root: str | Path, mano_model: str | Path | ManoModel | None) -> ManoModel:
    """The right-hand MANO model for a GRAB root.

    ``mano_model`` may be a model, a path to ``MANO_RIGHT.pkl`` (or ``.npz``), or
    None, which is allowed only for synthetic roots (they ship their hand).
    """
    if mano_model is None:
        mano_model = Path(root) / SYNTHETIC_MANO_PATH
        if not mano_model.is_file():
            raise GrabFileError(
                f"{root}: GRAB needs the right-hand MANO model: pass mano_model= / data.mano_model=<path to "
                f"{MANO_HINT}>; only synthetic roots ship one ({SYNTHETIC_MANO_PATH})"
            )
    try:
        return right_hand_model(mano_model)
    except ManoModelError as exc:
        raise GrabFileError(f"{exc} (need {MANO_HINT})") from exc


# ----------------------------------------------------------------------------
# Frames
# ----------------------------------------------------------------------------


def contact_frames(
    seq: GrabSequence, *, require_thumb_and_finger: bool = False, min_finger_vertices: int = 1
) -> np.ndarray:
    """(T,) bool: frames in which the right hand touches the object.

    With ``require_thumb_and_finger`` a frame also needs the thumb and at least one
    other finger each touching at least ``min_finger_vertices`` object vertices
    (GrabNet's filter uses 50 for real GRAB).
    """
    if seq.contact_object is None:
        raise GrabFileError(f"{seq.path}: no contact['object'] array, so contact frames cannot be selected")
    c = seq.contact_object
    touching = np.isin(c, RIGHT_HAND_CONTACT_IDS).any(axis=1)
    if not require_thumb_and_finger:
        return touching
    counts = {f: np.isin(c, ids).sum(axis=1) for f, ids in FINGER_CONTACT_IDS.items()}
    thumb = counts["thumb"] >= min_finger_vertices
    other = np.zeros_like(thumb)
    for f in ("index", "middle", "ring", "pinky"):
        other |= counts[f] >= min_finger_vertices
    return touching & thumb & other


def select_frames(
    seq: GrabSequence,
    *,
    only_contact: bool = True,
    stride: int = 1,
    require_thumb_and_finger: bool = False,
    min_finger_vertices: int = 1,
) -> np.ndarray:
    """Indices of the frames to use: contact frames (optional), then every ``stride``-th of them.

    ``stride=4`` turns GRAB's 120 fps into 30 fps; neighbouring 120 fps frames are
    nearly identical grasps.
    """
    if stride < 1:
        raise ValueError(f"select_frames: stride must be >= 1, got {stride}")
    if only_contact or require_thumb_and_finger:
        mask = contact_frames(
            seq, require_thumb_and_finger=require_thumb_and_finger, min_finger_vertices=min_finger_vertices
        )
        idx = np.flatnonzero(mask)
    else:
        idx = np.arange(seq.n_frames)
    return idx[::stride]


# ----------------------------------------------------------------------------
# The hand
# ----------------------------------------------------------------------------


class GrabHandPoser:
    """Right-hand MANO meshes and keypoints for GRAB frames (one layer per subject template).

    Args:
        root: the GRAB root (subject templates are read relative to it).
        mano_model: see :func:`resolve_mano_model`.
        pose_source: ``"fullpose"`` (exact, default) or ``"pca"`` (``hand_pose``
            coefficients through the model's PCA basis).
    """

    def __init__(
        self,
        root: str | Path,
        mano_model: str | Path | ManoModel | None = None,
        pose_source: str = "fullpose",
    ):
        if pose_source not in ("fullpose", "pca"):
            raise ValueError(f"GrabHandPoser: pose_source must be 'fullpose' or 'pca', got {pose_source!r}")
        self.root = Path(root)
        self.model = resolve_mano_model(root, mano_model)
        self.pose_source = pose_source
        self._layers: dict[str, ManoLayer] = {}

    @property
    def faces(self) -> np.ndarray:
        return np.asarray(self.model.f, dtype=np.int64)

    def layer(self, vtemp: str) -> ManoLayer:
        """The MANO layer with the subject template at ``ROOT/vtemp`` (cached)."""
        if vtemp not in self._layers:
            path = self.root / vtemp
            if not path.is_file():
                raise GrabFileError(f"{path}: subject hand template missing (named by rhand['vtemp'])")
            try:
                mesh = trimesh.load(path, process=False, force="mesh")
            except Exception as err:
                raise GrabFileError(
                    f"{path}: unreadable hand template ({type(err).__name__}: {err})"
                ) from err
            verts = np.asarray(mesh.vertices, dtype=np.float64)
            if verts.shape != (self.model.num_vertices, 3):
                raise GrabFileError(
                    f"{path}: hand template has {len(verts)} vertices, the MANO model {self.model.source} has "
                    f"{self.model.num_vertices} (wrong MANO model for this GRAB root?)"
                )
            model = dataclasses.replace(self.model, v_template=verts)
            self._layers[vtemp] = ManoLayer(model, flat_hand_mean=True, dtype=torch.float64)
        return self._layers[vtemp]

    @torch.no_grad()
    def pose(self, seq: GrabSequence, frames: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(vertices (n,V,3), keypoints (n,21,3))`` in GRAB's world frame, metres."""
        idx = np.arange(seq.n_frames) if frames is None else np.asarray(frames, dtype=np.int64)
        layer = self.layer(seq.hand_vtemp)
        use_pca = self.pose_source == "pca"
        if use_pca:
            if seq.hand_pca is None:
                raise GrabFileError(f"{seq.path}: pose_source='pca' but rhand['params'] has no 'hand_pose'")
            pose = seq.hand_pca[idx]
        else:
            if seq.hand_fullpose is None:  # PCA is the only description: use it
                use_pca, pose = True, seq.hand_pca[idx]
            else:
                pose = seq.hand_fullpose[idx]
        if len(idx) == 0:
            nv = layer.num_vertices
            return np.zeros((0, nv, 3)), np.zeros((0, 21, 3))
        out = layer(
            torch.from_numpy(pose),
            global_orient=torch.from_numpy(seq.hand_global_orient[idx]),
            transl=torch.from_numpy(seq.hand_transl[idx]),
            use_pca=use_pca,
        )
        return out.vertices.numpy(), out.keypoints.numpy()
