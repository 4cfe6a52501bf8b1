"""HALO's part logits with the exact gradient w.r.t. the keypoints (what a fit descends).

:func:`halo.core.canonicalization.canonicalize` treats two quantities as constants, as the
original does: the global normalization (the hand frame) and the twist-free local bone frames.
That is fine for training the network, but the resulting keypoint "gradient" is not the
derivative of the occupancy: measured on a trained model, d(sum of logits)/d(translation)
had the wrong sign on one axis, and finger-angle derivatives were off by 2-4x, so a fit's
loss rose while Adam followed it (worst at the sharp end of the temperature schedule).

Here the same canonical pose is computed with both quantities attached:

* points and keypoints are first moved into the hand frame (:func:`hand_frame`), differentiably;
  HALO's own normalization of that input is then the identity for every skeleton, so its
  detach loses nothing;
* the canonicalization steps are re-run from the layer's own helpers without detaching the
  local frames (values identical to :func:`canonicalize`, checked by tests/fit/test_exact.py).

Then the model's own network (:meth:`HaloModel.model_inputs`, :meth:`HaloModel.points_to_model`,
culling radii, part MLPs) runs unchanged.
"""

from __future__ import annotations

import torch

from halo.core import canonicalization as cz
from halo.core.canonicalization import CanonicalPose
from halo.core.model import HaloModel
from halo.core.skeleton import FINGER_JOINTS, bone_lengths_from_keypoints


def hand_frame(kp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,3,3) rotation rows and (B,3) origin of the hand frame HALO normalizes to, differentiable.

    Wrist at the origin, wrist -> middle MCP along -x, palm normal (middle x index root) along +y:
    the frame of :func:`halo.core.canonicalization.global_normalization` (right hands).
    """
    middle, index = kp[:, 9] - kp[:, 0], kp[:, 5] - kp[:, 0]
    ex = -middle / middle.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    normal = torch.linalg.cross(middle, index, dim=-1)
    ey = normal / normal.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    ez = torch.linalg.cross(ex, ey, dim=-1)
    return torch.stack([ex, ey, ez], dim=-2), kp[:, 0]


def attached_pose(keypoints: torch.Tensor) -> CanonicalPose:
    """:func:`canonicalize` of right-hand keypoints already in the hand frame, local frames attached."""
    eye = torch.eye(4, dtype=keypoints.dtype, device=keypoints.device).expand(keypoints.shape[0], 4, 4)
    kp_n, lengths, root_dirs, finger_dirs, root = cz._normalized_bones(keypoints, eye)
    frames = cz._local_frames(root_dirs, finger_dirs)  # not detached: the point of this module
    flex, abd = cz._flexion_abduction((frames @ finger_dirs.unsqueeze(-1)).squeeze(-1))
    r = cz._unposing_rotation(flex, abd)
    f1, f2, f3 = frames.unbind(2)
    r1, r2, r3 = r.unbind(2)
    ft = lambda f: f.transpose(-1, -2)  # noqa: E731
    unpose = torch.stack([ft(f1) @ r1 @ f1, ft(f2) @ (r1 @ r2) @ f2, ft(f3) @ (r2 @ r1) @ r3 @ f3], dim=2)
    unposed_dirs = (unpose @ finger_dirs.unsqueeze(-1)).squeeze(-1)
    steps = torch.cat([root_dirs[:, :, None], unposed_dirs], dim=2) * lengths[..., None]
    canon_joints = torch.cumsum(steps, dim=2)
    rot = unpose @ root[:, :, None]
    posed_parent = kp_n[:, torch.tensor(FINGER_JOINTS, device=keypoints.device)[:, :3]]
    trans = canon_joints[:, :, :3] - (rot @ posed_parent.unsqueeze(-1)).squeeze(-1)
    bsz = keypoints.shape[0]
    mats = torch.zeros(bsz, 5, 3, 4, 4, dtype=keypoints.dtype, device=keypoints.device)
    mats[..., :3, :3] = rot
    mats[..., :3, 3] = trans
    mats[..., 3, 3] = 1.0
    fingers = torch.tensor([f for f, _ in cz._PART_FINGER_LEVEL], device=keypoints.device)
    levels = torch.tensor([lv - 1 for _, lv in cz._PART_FINGER_LEVEL], device=keypoints.device)
    palm = torch.eye(4, dtype=keypoints.dtype, device=keypoints.device).expand(bsz, 1, 4, 4)
    return CanonicalPose(
        normalization=eye,
        part_transforms=torch.cat([palm, mats[:, fingers, levels]], dim=1),
        bone_lengths=bone_lengths_from_keypoints(keypoints),
        bone_angles=torch.stack([flex, abd], dim=-1).reshape(bsz, 15, 2),
        normalized_keypoints=kp_n,
    )


def exact_part_logits(model: HaloModel, points: torch.Tensor, keypoints: torch.Tensor) -> torch.Tensor:
    """(B,N,P) part logits of right hands (metres), differentiable exactly w.r.t. the keypoints.

    Models that are not a :class:`HaloModel` (e.g. the tests' analytic capsule hand) are called
    through their ``forward`` as they are.
    """
    rot, origin = hand_frame(keypoints)
    to_frame = lambda x: (x - origin[:, None]) @ rot.transpose(-1, -2)  # noqa: E731
    if not isinstance(model, HaloModel):
        return model.forward(points, keypoints, return_parts=True, validate=False).part_logits
    kp = to_frame(keypoints)
    pose = attached_pose(kp)
    with torch.autocast(device_type=kp.device.type, enabled=False):
        mats, lengths = model.model_inputs(pose)
        points_model = model.points_to_model(pose, to_frame(points).to(kp.dtype))
        radii = model._culling_radii(pose, None, None)
        segments = model.part_segments(pose, mats) if radii is not None else None
    net = model.network
    dtype = net.global_proj_weight.dtype
    if segments is not None:
        return net.forward_culled(
            points_model.to(dtype), mats.to(dtype), lengths.to(dtype), segments.to(dtype), radii.to(dtype)
        )
    return net(points_model.to(dtype), mats.to(dtype), lengths.to(dtype))
