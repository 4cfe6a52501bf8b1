"""Looking at a GRAB-layout root: a grid of rendered grasp frames (hand + object, contacts in red)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh
from scipy.spatial.transform import Rotation

from halo.hands.mano import ManoModel

__all__ = ["render_grab_grid"]


def render_grab_grid(
    root: str | Path,
    n: int = 16,
    *,
    size: int = 320,
    ncols: int = 4,
    mano_model: ManoModel | str | Path | None = None,
    contact_only: bool = True,
    seed: int = 0,
) -> tuple[np.ndarray, list[str]]:
    """Render ``n`` grasp frames (hand + object) of a GRAB-layout root into one image.

    Frames are drawn from different sequences (chosen with ``seed``); with
    ``contact_only`` only frames whose ``contact.object`` has a non-zero entry.
    Each tile looks at the hand from its thumb side and slightly from the fingertips,
    with the object's contact vertices in red.

    Returns:
        (H,W,3) uint8 image and the tile labels.
    """
    from halo.grasp.grab import (
        GrabHandPoser,
        contact_frames,
        find_sequences,
        load_grab_sequence,
        load_object_mesh,
        object_world_vertices,
    )
    from halo.viz.render import Camera, look_at, render_grid, render_scene

    root = Path(root)
    files = find_sequences(root)
    poser = GrabHandPoser(root, mano_model)
    rng = np.random.default_rng(seed)
    files = [files[i] for i in rng.permutation(len(files))]
    tiles, labels = [], []
    used: dict[Path, set[int]] = {}
    meshes: dict[str, trimesh.Trimesh] = {}
    k = 0
    while len(tiles) < n and k < len(files) * 4:
        f = files[k % len(files)]
        k += 1
        seq = load_grab_sequence(f)
        if contact_only and seq.contact_object is not None:
            frames = np.flatnonzero(contact_frames(seq))
        else:
            frames = np.arange(seq.n_frames)
        frames = np.setdiff1d(frames, sorted(used.setdefault(f, set())))
        if len(frames) == 0:
            continue
        t = int(frames[rng.integers(len(frames))])
        used[f].add(t)
        verts, _ = poser.pose(seq, np.array([t]))
        if seq.object_mesh not in meshes:
            meshes[seq.object_mesh] = load_object_mesh(root, seq.object_mesh, seq.object_name)
        template = meshes[seq.object_mesh]
        obj_v = object_world_vertices(
            template.vertices, seq.object_global_orient[t : t + 1], seq.object_transl[t : t + 1]
        )[0]
        hand = trimesh.Trimesh(verts[0], poser.faces, process=False)
        obj = trimesh.Trimesh(obj_v, template.faces, process=False)
        colors = np.tile([0.93, 0.78, 0.55], (len(obj.vertices), 1))
        if seq.contact_object is not None and seq.contact_object.shape[1] == len(obj.vertices):
            colors[seq.contact_object[t] > 0] = [0.85, 0.2, 0.15]
        # View from the thumb side, a little from the fingertips (hand axes from its orientation).
        rot = Rotation.from_rotvec(seq.hand_global_orient[t]).as_matrix()
        thumb_side, fingers, approach = rot[:, 2], -rot[:, 0], -rot[:, 1]
        view = look_at(thumb_side + 0.5 * fingers - 0.4 * approach, approach)
        cam = Camera.framing(
            np.concatenate([hand.vertices, obj.vertices]), width=size, height=size, view=view
        )
        tiles.append(render_scene([hand, obj], [(0.6, 0.75, 0.95), colors], cam))
        labels.append(f"{seq.name} #{t}")
    if not tiles:
        raise ValueError(f"{root}: no frame with contact found")
    return render_grid(tiles, ncols=min(ncols, len(tiles)), labels=labels), labels
