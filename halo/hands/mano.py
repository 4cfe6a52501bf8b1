"""MANO hand model: a differentiable layer (model files: :mod:`halo.hands.mano_file`).

Own implementation of the MANO equations (Romero et al., 2017): shape blend
shapes, pose blend shapes on the flattened ``R - I`` of the 15 finger joints,
joints regressed from the shaped rest vertices, a 16-joint kinematic tree and
linear blend skinning.  Everything is in metres.

MANO's 16 joints use its internal order (0 wrist, 1-3 index, 4-6 middle,
7-9 pinky, 10-12 ring, 13-15 thumb).  Appending the five fingertip vertices
(thumb, index, middle, ring, pinky) gives the 21-joint internal order of
``halo.core.skeleton``; :class:`ManoLayer` returns keypoints reordered to the public
order (``halo.core.skeleton.JOINT_NAMES``).  The model container and file functions
are re-exported here, so ``halo.hands.mano`` stays the one import for MANO.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from halo.core.skeleton import halo_to_mano
from halo.hands.mano_file import (
    MANO_NUM_JOINTS,
    MANO_PARENTS,
    MANO_TIP_VERTEX_IDS,
    ManoModel,
    ManoModelError,
    load_mano_model,
    regress_keypoints,
    right_hand_model,
    save_mano_model_npz,
    save_mano_model_pkl,
)

__all__ = [
    "MANO_NUM_JOINTS",
    "MANO_PARENTS",
    "MANO_TIP_VERTEX_IDS",
    "ManoLayer",
    "ManoModel",
    "ManoModelError",
    "ManoOutput",
    "axis_angle_to_matrix",
    "load_mano_model",
    "regress_keypoints",
    "right_hand_model",
    "save_mano_model_npz",
    "save_mano_model_pkl",
]

#: Pose parameters of the 15 finger joints (axis-angle).
_NUM_POSE = 3 * (MANO_NUM_JOINTS - 1)

# ----------------------------------------------------------------------------
# The layer
# ----------------------------------------------------------------------------


def axis_angle_to_matrix(rotvec: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula, (...,3) axis-angle (radians) -> (...,3,3) rotation matrices.

    Exact and differentiable everywhere, including at the zero rotation (a
    Taylor expansion is used below 1e-3 rad, where it is exact to machine
    precision in float32 and float64).
    """
    theta2 = (rotvec * rotvec).sum(-1, keepdim=True)[..., None]  # (...,1,1)
    small = theta2 < 1e-6
    theta = torch.sqrt(torch.where(small, torch.ones_like(theta2), theta2))
    # a = sin(t)/t, b = (1-cos t)/t^2 = 2 sin^2(t/2)/t^2 (no cancellation).
    a = torch.where(small, 1.0 - theta2 / 6.0 + theta2 * theta2 / 120.0, torch.sin(theta) / theta)
    b = torch.where(
        small, 0.5 - theta2 / 24.0 + theta2 * theta2 / 720.0, 2.0 * (torch.sin(0.5 * theta) / theta) ** 2
    )
    x, y, z = rotvec.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*rotvec.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=rotvec.dtype, device=rotvec.device)
    return eye + a * k + b * (k @ k)


@dataclass
class ManoOutput:
    """Result of :meth:`ManoLayer.forward` (metres, batch size B).

    Attributes:
        vertices: (B,V,3) posed vertices.
        keypoints: (B,21,3) 16 regressed joints + 5 fingertip vertices, public
            joint order (``halo.core.skeleton.JOINT_NAMES``).
        joint_transforms: (B,16,4,4) global transform G_k of each MANO joint
            (internal order), global orientation and translation included;
            ``G_k[:, :3, 3]`` is the posed joint.  The skinning transform of
            joint k is ``G_k @ Translate(-rest_joints_k)``.
        rest_joints: (B,16,3) joints regressed from the shaped rest vertices.
        rest_vertices: (B,V,3) shaped rest vertices (no pose blend shapes).
        full_pose: (B,45) axis-angle pose of the 15 finger joints actually
            applied (PCA expanded, hands mean added when not flat).
    """

    vertices: torch.Tensor
    keypoints: torch.Tensor
    joint_transforms: torch.Tensor
    rest_joints: torch.Tensor
    rest_vertices: torch.Tensor
    full_pose: torch.Tensor

    def skinning_transforms(self) -> torch.Tensor:
        """(B,16,4,4) ``G_k @ Translate(-J_rest_k)``: rest-pose (shaped) points -> posed points."""
        g = self.joint_transforms
        out = g.clone()
        out[..., :3, 3] = g[..., :3, 3] - (g[..., :3, :3] @ self.rest_joints[..., None])[..., 0]
        return out


def _left_mm(mat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(M,K) @ (B,K,C) -> (B,M,C) as one 2-D matmul (CPU bmm with a broadcast operand is very slow)."""
    b, k, c = x.shape
    return (mat @ x.permute(1, 0, 2).reshape(k, b * c)).reshape(-1, b, c).permute(1, 0, 2)


class ManoLayer(nn.Module):
    """Differentiable MANO: pose, shape, orientation, translation -> mesh and 21 keypoints.

    Args:
        model: the model arrays (:func:`load_mano_model`, or the synthetic model
            of ``halo.hands.synthetic_hand``).
        use_pca: default of :meth:`forward`'s ``use_pca``.
        flat_hand_mean: if False, ``model.hands_mean`` is added to every pose
            (MANO's mean relaxed pose); if True a zero pose is the flat template.
        dtype: floating dtype of the buffers (``.to(dtype)`` also works).

    Buffers are registered, so ``.to(device)`` / ``.double()`` move them.
    """

    def __init__(
        self,
        model: ManoModel,
        *,
        use_pca: bool = False,
        flat_hand_mean: bool = True,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.model = model  # the arrays the buffers were built from (sizes, side, source)
        self.side = model.side
        self.use_pca = use_pca
        self.flat_hand_mean = flat_hand_mean
        self.parents = model.parents
        # Topological order (MANO's is already 0..15, but do not assume it).
        order: list[int] = []
        while len(order) < MANO_NUM_JOINTS:
            for j in range(MANO_NUM_JOINTS):
                if j not in order and (self.parents[j] == -1 or self.parents[j] in order):
                    order.append(j)
        self._order = tuple(order)

        def buf(name: str, arr: np.ndarray, float_: bool = True) -> None:
            t = torch.tensor(np.asarray(arr))  # a copy: the model's arrays may be read-only
            self.register_buffer(name, t.to(dtype) if float_ else t.long(), persistent=False)

        nv = model.num_vertices
        buf("v_template", model.v_template)
        buf("shapedirs", model.shapedirs)
        buf("posedirs", model.posedirs.reshape(nv * 3, -1).T)  # (135, V*3)
        buf("J_regressor", model.J_regressor)
        buf("weights", model.weights)
        buf("hands_components", model.hands_components)
        buf("hands_mean", model.hands_mean)
        buf("faces", model.f, float_=False)
        buf("tip_vertex_ids", model.tip_vertex_ids, float_=False)

    @classmethod
    def from_file(cls, path: str | Path, side: str | None = None, **kwargs: Any) -> ManoLayer:
        """Build the layer from a MANO ``.pkl`` / ``.npz`` file (see :func:`load_mano_model`)."""
        return cls(load_mano_model(path, side=side), **kwargs)

    @property
    def num_vertices(self) -> int:
        return self.model.num_vertices

    @property
    def num_betas(self) -> int:
        return self.model.num_betas

    @property
    def num_pca_comps(self) -> int:
        return int(self.hands_components.shape[0])

    def _batch(self, x: torch.Tensor | None, name: str, width: int | None, batch: int) -> torch.Tensor | None:
        if x is None:
            return None
        x = torch.as_tensor(x)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2 or (width is not None and x.shape[1] != width) or x.shape[0] != batch:
            want = f"({batch}, {width if width is not None else 'n'})"
            raise ValueError(f"ManoLayer: {name} has shape {tuple(x.shape)}, expected {want}")
        return x.to(dtype=self.v_template.dtype, device=self.v_template.device)

    def forward(
        self,
        pose: torch.Tensor | None = None,
        betas: torch.Tensor | None = None,
        global_orient: torch.Tensor | None = None,
        transl: torch.Tensor | None = None,
        *,
        use_pca: bool | None = None,
        flat_hand_mean: bool | None = None,
        batch_size: int | None = None,
    ) -> ManoOutput:
        """Pose the hand.

        Args:
            pose: (B,45) axis-angle of joints 1..15 in MANO order (also (B,15,3)),
                or with ``use_pca`` (B,n) PCA coefficients, 1 <= n <= K.
                ``None`` = zeros.
            betas: (B,n) shape coefficients, n <= the model's S (the rest are 0).
            global_orient: (B,3) axis-angle of the wrist (rotation about the
                rest wrist joint, as in MANO).
            transl: (B,3) translation, metres.
            use_pca / flat_hand_mean: override the constructor's defaults.
            batch_size: B when every input is ``None`` (default 1).

        Returns:
            :class:`ManoOutput`; inputs are cast to the layer's dtype and device.
        """
        use_pca = self.use_pca if use_pca is None else use_pca
        flat = self.flat_hand_mean if flat_hand_mean is None else flat_hand_mean
        given = [t for t in (pose, betas, global_orient, transl) if t is not None]
        if given:
            first = torch.as_tensor(given[0])
            batch = int(first.shape[0]) if first.ndim > 1 else 1
        else:
            batch = 1 if batch_size is None else int(batch_size)
        dtype, device = self.v_template.dtype, self.v_template.device

        if pose is not None and not use_pca and torch.as_tensor(pose).ndim == 3:
            pose = torch.as_tensor(pose).reshape(batch, -1)
        if use_pca:
            coeffs = self._batch(pose, "pose (PCA coefficients)", None, batch)
            if coeffs is None:
                full_pose = torch.zeros(batch, _NUM_POSE, dtype=dtype, device=device)
            else:
                n = coeffs.shape[1]
                if not 1 <= n <= self.num_pca_comps:
                    raise ValueError(
                        f"ManoLayer: {n} PCA coefficients given, the model has {self.num_pca_comps}"
                    )
                full_pose = coeffs @ self.hands_components[:n]
        else:
            full_pose = self._batch(pose, "pose (axis-angle)", _NUM_POSE, batch)
            if full_pose is None:
                full_pose = torch.zeros(batch, _NUM_POSE, dtype=dtype, device=device)
        if not flat:
            full_pose = full_pose + self.hands_mean

        b = self._batch(betas, "betas", None, batch)
        if b is not None and b.shape[1] > self.num_betas:
            raise ValueError(f"ManoLayer: {b.shape[1]} betas given, the model has {self.num_betas}")
        orient = self._batch(global_orient, "global_orient", 3, batch)
        if orient is None:
            orient = torch.zeros(batch, 3, dtype=dtype, device=device)
        t = self._batch(transl, "transl", 3, batch)

        # Shape: v_shaped = T + S beta; joints from the shaped rest mesh.
        v_shaped = self.v_template.expand(batch, -1, -1)
        if b is not None and b.shape[1] > 0:
            nb = b.shape[1]
            v_shaped = v_shaped + (b @ self.shapedirs[:, :, :nb].reshape(-1, nb).T).reshape(batch, -1, 3)
        rest_joints = _left_mm(self.J_regressor, v_shaped)

        # Rotations: wrist first, then the 15 finger joints.
        rots = axis_angle_to_matrix(torch.cat([orient, full_pose], dim=1).reshape(batch, MANO_NUM_JOINTS, 3))
        eye = torch.eye(3, dtype=dtype, device=device)
        pose_feature = (rots[:, 1:] - eye).reshape(batch, -1)  # (B,135)
        v_posed = v_shaped + (pose_feature @ self.posedirs).reshape(batch, -1, 3)

        # Kinematic chain: G_k = G_parent [R_k | J_k - J_parent].
        g: list[torch.Tensor | None] = [None] * MANO_NUM_JOINTS
        bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=dtype, device=device).expand(batch, 1, 4)
        for j in self._order:
            p = self.parents[j]
            offset = rest_joints[:, j] if p == -1 else rest_joints[:, j] - rest_joints[:, p]
            local = torch.cat([torch.cat([rots[:, j], offset[..., None]], dim=2), bottom], dim=1)
            g[j] = local if p == -1 else g[p] @ local
        transforms = torch.stack(g, dim=1)  # (B,16,4,4)
        if t is not None:
            shift = torch.zeros(batch, 1, 4, 4, dtype=dtype, device=device)
            shift[:, 0, :3, 3] = t
            transforms = transforms + shift

        # Skinning matrices A_k = G_k T(-J_k), blended per vertex.
        rot_part = transforms[:, :, :3, :3]
        trans_part = transforms[:, :, :3, 3] - (rot_part @ rest_joints[..., None])[..., 0]
        # 2-D matmuls: einsum / broadcast bmm of these shapes were 20-40x slower on CPU (float64).
        nv = self.weights.shape[0]
        blend_r = _left_mm(self.weights, rot_part.reshape(batch, MANO_NUM_JOINTS, 9)).reshape(batch, nv, 3, 3)
        blend_t = _left_mm(self.weights, trans_part)
        # Broadcast-multiply-sum: a (V) batch of 3x3 @ 3x1 bmm is very slow on CPU.
        vertices = (blend_r * v_posed[..., None, :]).sum(-1) + blend_t

        joints = transforms[:, :, :3, 3]
        tips = vertices[:, self.tip_vertex_ids]
        keypoints = halo_to_mano(torch.cat([joints, tips], dim=1), joint_axis=1)
        return ManoOutput(
            vertices=vertices,
            keypoints=keypoints,
            joint_transforms=transforms,
            rest_joints=rest_joints,
            rest_vertices=v_shaped,
            full_pose=full_pose,
        )
