"""Per-hand preparation: a posed hand mesh -> everything a HALO training sample needs.

This is step 2 of the original pipeline (spec 3.1), done once per hand before
the occupancy sampling of :mod:`halo.data.build`:

* the 21 keypoints, and the hand brought into the *normalized frame* of the
  canonicalization layer (wrist at the origin, middle root bone along -x, palm
  normal along +y; the original's ``--normalize`` data), so the stored part
  transforms exclude the global normalization, as in the released data;
* the 16 part transforms and bone lengths of the canonicalization layer (the
  default, required by HALO-VAE), or the alternative "from MANO" transforms
  (inverse skinning transforms of the MANO joints; spec 1.6);
* the sealed, watertight hand mesh (MANO meshes are open at the wrist; the
  hole is closed by a fan around its centroid, which for MANO is the
  16-vertex wrist loop);
* labelled surface samples (area-uniform; a face's part is the majority vote
  of its three vertices' parts, ties going to the lowest part id), the
  original's ``verts`` / ``vert_labels``.

Everything here is in metres; :mod:`halo.data.layout` converts to the
original's on-disk model units (x2.5).  Part ids are MANO joint ids (HALO's
part order), so a vertex's part is the argmax of its skinning weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import trimesh

from halo.core.canonicalization import canonicalize
from halo.core.skeleton import NUM_PARTS
from halo.data.layout import DatasetFormatError, open_npz, read_key
from halo.geometry.sealing import seal_mesh
from halo.hands.mano import ManoLayer, ManoModel, regress_keypoints
from halo.utils.atomic import atomic_write_npz

__all__ = [
    "PreparedHand",
    "load_prepared",
    "prepare_from_mano",
    "prepare_from_vertices",
    "prepare_hand",
    "sample_labelled_surface",
    "save_prepared",
    "vertex_part_labels",
]


@dataclass
class PreparedHand:
    """One prepared hand, metres, in the normalized frame (see module docstring).

    Attributes:
        name: sample name (file stem in the dataset layout).
        vertices: (V,3) sealed mesh vertices.
        faces: (F,3) int64 faces, watertight, outward.
        keypoints: (21,3) public joint order.
        part_transforms: (16,4,4) normalized frame -> canonical space (metres).
        bone_lengths: (16,) metres, part order.
        surface_points: (S,3) area-uniform samples of the sealed surface.
        surface_labels: (S,) int64 part ids 0..15.
        normalization: (4,4) input frame -> normalized frame (the original's ``root_rot_mat``).
        betas: (10,) shape coefficients when known (zeros otherwise).
        transforms_source: "keypoints" (canonicalization layer) or "mano".
    """

    name: str
    vertices: np.ndarray
    faces: np.ndarray
    keypoints: np.ndarray
    part_transforms: np.ndarray
    bone_lengths: np.ndarray
    surface_points: np.ndarray
    surface_labels: np.ndarray
    normalization: np.ndarray
    betas: np.ndarray
    transforms_source: str = "keypoints"


def vertex_part_labels(weights: np.ndarray) -> np.ndarray:
    """(V,) part id of each vertex: the MANO joint with the largest skinning weight."""
    weights = np.asarray(weights)
    if weights.ndim != 2 or weights.shape[1] != NUM_PARTS:
        raise ValueError(f"skinning weights must have shape (V, {NUM_PARTS}), got {weights.shape}")
    return weights.argmax(axis=1).astype(np.int64)


def sample_labelled_surface(
    vertices: np.ndarray, faces: np.ndarray, vertex_labels: np.ndarray, n: int, seed: int | None = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Area-uniform surface samples (n,3) and their part labels (n,) (face majority vote)."""
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    points, face_idx = trimesh.sample.sample_surface(mesh, n, seed=seed)
    corner = np.asarray(vertex_labels)[np.asarray(faces)]  # (F,3)
    votes = np.zeros((len(faces), NUM_PARTS), dtype=np.int64)
    np.add.at(votes, (np.repeat(np.arange(len(faces)), 3), corner.ravel()), 1)
    face_labels = votes.argmax(axis=1)  # argmax picks the lowest id among ties
    return np.asarray(points), face_labels[face_idx].astype(np.int64)


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def prepare_hand(
    name: str,
    vertices: np.ndarray,
    faces: np.ndarray,
    keypoints: np.ndarray,
    vertex_labels: np.ndarray,
    *,
    betas: np.ndarray | None = None,
    mano_skinning: np.ndarray | None = None,
    n_surface_samples: int = 6000,
    seed: int | None = 0,
) -> PreparedHand:
    """Prepare one right hand given in any frame (metres).

    Args:
        vertices, faces: the posed mesh (sealed here if it has a wrist hole).
        keypoints: (21,3) public order, same frame.
        vertex_labels: (V,) part id per input vertex (:func:`vertex_part_labels`).
        betas: shape coefficients, stored for reference.
        mano_skinning: optional (16,4,4) skinning transforms ``G_k T(-J_k)``
            (rest -> posed, input frame); when given the stored part
            transforms are their inverses in the normalized frame ("from MANO").
        n_surface_samples: labelled surface samples (the original: 6000).
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    keypoints = np.asarray(keypoints, dtype=np.float64)
    if keypoints.shape != (21, 3):
        raise ValueError(f"{name}: keypoints must have shape (21, 3), got {keypoints.shape}")
    if vertices.ndim != 2 or vertices.shape[1] != 3 or not np.isfinite(vertices).all():
        raise ValueError(f"{name}: vertices must be a finite (V, 3) array, got shape {vertices.shape}")
    labels = np.asarray(vertex_labels, dtype=np.int64)
    if labels.shape != (len(vertices),):
        raise ValueError(f"{name}: vertex_labels must have shape ({len(vertices)},), got {labels.shape}")

    pose = canonicalize(torch.from_numpy(keypoints)[None])  # float64; raises on degenerate keypoints
    norm = pose.normalization[0].numpy()
    verts_n = _apply(norm, vertices)
    kp_n = pose.normalized_keypoints[0].numpy()

    sealed_v, sealed_f, new_ids = seal_mesh(verts_n, faces, name=name)
    # A fan vertex takes the label of the loop it closes; for MANO that is the wrist (part 0).
    sealed_labels = np.concatenate([labels, np.zeros(len(new_ids), dtype=np.int64)])
    mesh = trimesh.Trimesh(sealed_v, sealed_f, process=False)
    if not mesh.is_watertight:
        raise ValueError(f"{name}: hand mesh is not watertight after sealing the wrist")
    if mesh.volume < 0:  # inward faces: flip so inside tests and normals agree
        sealed_f = sealed_f[:, ::-1].copy()

    if mano_skinning is not None:
        sk = np.asarray(mano_skinning, dtype=np.float64)
        if sk.shape != (NUM_PARTS, 4, 4):
            raise ValueError(f"{name}: mano_skinning must have shape (16, 4, 4), got {sk.shape}")
        # posed (normalized frame) -> input frame -> rest pose.
        transforms = np.linalg.inv(sk) @ np.linalg.inv(norm)
        source = "mano"
    else:
        transforms = pose.part_transforms[0].numpy()
        source = "keypoints"

    surface, surface_labels = sample_labelled_surface(
        sealed_v, sealed_f, sealed_labels, n_surface_samples, seed
    )
    return PreparedHand(
        name=name,
        vertices=sealed_v,
        faces=np.ascontiguousarray(sealed_f, dtype=np.int64),
        keypoints=kp_n,
        part_transforms=transforms,
        bone_lengths=pose.bone_lengths[0].numpy(),
        surface_points=surface,
        surface_labels=surface_labels,
        normalization=norm,
        betas=np.zeros(10) if betas is None else np.asarray(betas, dtype=np.float64).ravel(),
        transforms_source=source,
    )


def prepare_from_mano(
    layer: ManoLayer,
    names: list[str],
    pose: np.ndarray | torch.Tensor,
    betas: np.ndarray | torch.Tensor | None = None,
    global_orient: np.ndarray | torch.Tensor | None = None,
    *,
    use_pca: bool | None = None,
    flat_hand_mean: bool | None = None,
    transforms: str = "keypoints",
    n_surface_samples: int = 6000,
    seed: int = 0,
) -> list[PreparedHand]:
    """Pose a batch of MANO hands and prepare each (see :func:`prepare_hand`).

    ``transforms``: "keypoints" (canonicalization layer, default) or "mano".
    """
    if transforms not in ("keypoints", "mano"):
        raise ValueError(f"transforms must be 'keypoints' or 'mano', got {transforms!r}")
    with torch.no_grad():
        out = layer(
            pose=torch.as_tensor(pose),
            betas=None if betas is None else torch.as_tensor(betas),
            global_orient=None if global_orient is None else torch.as_tensor(global_orient),
            use_pca=use_pca,
            flat_hand_mean=flat_hand_mean,
        )
    if len(names) != out.vertices.shape[0]:
        raise ValueError(f"{len(names)} names given for {out.vertices.shape[0]} hands")
    labels = vertex_part_labels(layer.weights.double().numpy())
    faces = layer.faces.numpy()
    skinning = out.skinning_transforms().double().numpy() if transforms == "mano" else None
    b = None if betas is None else np.asarray(torch.as_tensor(betas))
    return [
        prepare_hand(
            name,
            out.vertices[i].double().numpy(),
            faces,
            out.keypoints[i].double().numpy(),
            labels,
            betas=None if b is None else b[i] if b.ndim == 2 else b,
            mano_skinning=None if skinning is None else skinning[i],
            n_surface_samples=n_surface_samples,
            seed=seed + i,
        )
        for i, name in enumerate(names)
    ]


def prepare_from_vertices(
    model: ManoModel, name: str, vertices: np.ndarray, *, n_surface_samples: int = 6000, seed: int = 0
) -> PreparedHand:
    """Prepare a right hand given only its MANO-topology vertices (metres), e.g. YouTube3D.

    Keypoints are regressed with the model's joint regressor plus its fingertip
    vertices (:func:`halo.hands.mano.regress_keypoints`).
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    if vertices.shape != (model.num_vertices, 3):
        raise ValueError(
            f"{name}: {vertices.shape} vertices do not match the MANO model {model.source} "
            f"({model.num_vertices} vertices)"
        )
    return prepare_hand(
        name,
        vertices,
        model.f,
        regress_keypoints(model, vertices),
        vertex_part_labels(model.weights),
        n_surface_samples=n_surface_samples,
        seed=seed,
    )


_PREPARED_KEYS = {
    # key in file: (attribute, expected shape (None = any length) or None = unchecked)
    "mesh_vertices": ("vertices", (None, 3)),
    "mesh_faces": ("faces", (None, 3)),
    "hand_joints": ("keypoints", (21, 3)),
    "joints_trans": ("part_transforms", (NUM_PARTS, 4, 4)),
    "bone_lengths": ("bone_lengths", (NUM_PARTS,)),
    "verts": ("surface_points", (None, 3)),
    "vert_labels": ("surface_labels", (None,)),
    "root_rot_mat": ("normalization", (4, 4)),
    "shape": ("betas", None),
}


def save_prepared(hand: PreparedHand, path: str | Path) -> None:
    """Write a prepared hand as ``.npz`` (metres; the original's meta keys plus the sealed mesh)."""
    arrays = {key: np.asarray(getattr(hand, attr)) for key, (attr, _) in _PREPARED_KEYS.items()}
    arrays["transforms_source"] = np.asarray(hand.transforms_source)
    atomic_write_npz(Path(path), arrays)


def load_prepared(path: str | Path) -> PreparedHand:
    """Read a file written by :func:`save_prepared`; errors name the file and key."""
    path = Path(path)
    values = {}
    with open_npz(path) as npz:
        for key, (attr, shape) in _PREPARED_KEYS.items():
            values[attr] = read_key(npz, path, key, shape)
        source = str(npz["transforms_source"]) if "transforms_source" in npz.files else "keypoints"
    if len(values["surface_labels"]) != len(values["surface_points"]):
        raise DatasetFormatError(f"{path}: 'vert_labels' and 'verts' have different lengths")
    return PreparedHand(name=path.stem, transforms_source=source, **values)
