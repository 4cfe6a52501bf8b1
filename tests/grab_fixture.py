"""A tiny GRAB-layout root written by the tests (GRAB's encoding, the synthetic hand).

Written independently of :mod:`halo.grasp.synthesis` from GRAB's documented format:
every key a 0-d object array, object pose ``v @ R(global_orient) + transl``
(row vectors), the right hand as MANO with ``flat_hand_mean=True`` and the
subject's template mesh, contact ids 41..55 for right fingers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import trimesh
from scipy.spatial.transform import Rotation

from halo.hands.mano import ManoLayer, ManoModel
from halo.hands.synthetic_hand import sample_hand_poses

#: object name -> (mesh factory, split under GRAB's standard rule)
OBJECTS = {
    "cubesmall": (lambda: trimesh.creation.box((0.05, 0.04, 0.08)), "train"),
    "spheremedium": (lambda: trimesh.creation.icosphere(subdivisions=3, radius=0.035), "train"),
    "apple": (lambda: trimesh.creation.icosphere(subdivisions=3, radius=0.04), "val"),
    "mug": (lambda: trimesh.creation.cylinder(radius=0.04, height=0.09, sections=32), "test"),
}
CONTACT_FRAMES = (1, 2, 3, 4)  # frames 0 and 5 of every sequence have no contact
N_FRAMES = 6


@dataclass
class FixtureTruth:
    """What the fixture wrote, in world coordinates, per sequence name (``s1/cubesmall_lift_1``)."""

    hand_keypoints: dict[str, np.ndarray] = field(default_factory=dict)  # (T,21,3)
    hand_vertices: dict[str, np.ndarray] = field(default_factory=dict)  # (T,V,3)
    object_vertices: dict[str, np.ndarray] = field(default_factory=dict)  # (T,Vo,3)


def _obj_array(value) -> np.ndarray:
    out = np.empty((), dtype=object)
    out[()] = value
    return out


def write_grab_fixture(root: Path, model: ManoModel, seed: int = 0, n_comps: int = 24) -> FixtureTruth:
    """Write ``root/grab/s1,s2/...`` and ``root/tools/...``; return the ground truth."""
    rng = np.random.default_rng(seed)
    truth = FixtureTruth()
    mesh_dir = root / "tools" / "object_meshes" / "contact_meshes"
    mesh_dir.mkdir(parents=True, exist_ok=True)
    templates = {}
    for name, (factory, _) in OBJECTS.items():
        mesh = factory()
        mesh.apply_translation([0.01, -0.02, 0.005])  # template not centred at the origin
        mesh.export(mesh_dir / f"{name}.ply")
        templates[name] = np.asarray(mesh.vertices)

    for sbj, gender, beta0 in (("s1", "male", 1.0), ("s2", "female", -1.0)):
        betas = np.zeros((1, model.shapedirs.shape[2]))
        betas[0, 0] = beta0
        rest = ManoLayer(model, dtype=torch.float64)(betas=torch.from_numpy(betas)).rest_vertices[0].numpy()
        rel = f"tools/subject_meshes/{gender}/{sbj}_rhand.ply"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        trimesh.Trimesh(rest, model.f, process=False).export(root / rel)
        layer = ManoLayer(
            dataclasses.replace(model, v_template=rest), flat_hand_mean=True, dtype=torch.float64
        )

        for name in OBJECTS:
            seq = f"{sbj}/{name}_lift_1"
            poses = sample_hand_poses(N_FRAMES, seed=rng, kind="grasp")
            orient = Rotation.random(N_FRAMES, random_state=rng).as_rotvec()
            transl = rng.normal(0.0, 0.05, (N_FRAMES, 3)) + [0.0, 0.0, 0.8]
            out = layer(
                torch.from_numpy(poses),
                global_orient=torch.from_numpy(orient),
                transl=torch.from_numpy(transl),
            )
            obj_orient = Rotation.random(N_FRAMES, random_state=rng).as_rotvec()
            obj_transl = out.keypoints[:, 9].numpy() + rng.normal(0, 0.01, (N_FRAMES, 3))
            # GRAB convention: world = v_template @ R + transl (row vectors).
            r = Rotation.from_rotvec(obj_orient).as_matrix()
            obj_world = np.stack([templates[name] @ r[t] + obj_transl[t] for t in range(N_FRAMES)])
            contact = np.zeros((N_FRAMES, len(templates[name])), dtype=np.int32)
            for t in CONTACT_FRAMES:
                contact[t, :5] = 53  # thumb
                contact[t, 5:10] = 41  # index
            # PCA coefficients of the (flat-mean) full pose in the model's basis (lossy beyond n_comps).
            pca = poses @ np.linalg.pinv(np.asarray(model.hands_components))[:, :n_comps]
            data = {
                "gender": gender,
                "sbj_id": sbj,
                "obj_name": name,
                "motion_intent": "lift",
                "framerate": 120.0,
                "n_frames": N_FRAMES,
                "n_comps": n_comps,
                "rhand": {
                    "params": {
                        "global_orient": orient,
                        "hand_pose": pca,
                        "transl": transl,
                        "fullpose": poses,
                    },
                    "vtemp": rel,
                },
                "object": {
                    "params": {"global_orient": obj_orient, "transl": obj_transl},
                    "object_mesh": f"tools/object_meshes/contact_meshes/{name}.ply",
                },
                "contact": {"object": contact},
            }
            path = root / "grab" / f"{seq}.npz"
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(path, **{k: _obj_array(v) for k, v in data.items()})
            truth.hand_keypoints[seq] = out.keypoints.numpy()
            truth.hand_vertices[seq] = out.vertices.numpy()
            truth.object_vertices[seq] = obj_world
    return truth
