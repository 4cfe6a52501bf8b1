"""HALO-VAE: object-conditioned grasp generation as 21 hand keypoints (torch only).

Pieces (spec 6.2; every tensor at the boundary is metres, object-centred frame, MANO joint order):

* object encoder: a ResNet-PointNet over the object's surface samples (``object_encoder="pointnet"``,
  the original) or a basis-point-set encoder (``"bps"``: a fixed, seeded basis of ``bps_points``
  points uniform in a ball of ``bps_radius_m`` around the object centre; feature = distance from
  each basis point to the nearest object point; an MLP);
* posterior encoder q(z | keypoints, object code), a diagonal Gaussian;
* decoder (z, object code) -> 21 keypoints;
* refinement net (keypoints, object code, per-joint distance to the object) -> keypoint offsets,
  applied ``steps`` times.

The networks work internally in the original's units (centimetres: ``units_per_metre`` = 100):
inputs are scaled up and the decoder's output is scaled back to metres, so the original's
architecture sees the same magnitudes it was designed for.

Loss terms (spec 6.3) are plain functions below.  Distances inside the losses are taken in
centimetres (metres x 100): the original computed its keypoint and bone-length MSEs on
centimetre keypoints, so its weights (2.0 keypoints, 2.0 bone lengths, ...) keep their meaning
here while every input and output stays in metres.  Angle terms are unit-free; the
interpenetration term is a mean occupancy (unit-free) evaluated on points in metres (the
original mixed cm and m there; spec 10.3).  The terms through the frozen HALO base
(interpenetration, contact, the points they evaluate) are :mod:`halo.grasp.halo_terms`, shared
with test-time refinement.

:func:`halo.grasp.vae_checkpoint.load_grasp_vae` reads a trained model from a ``HaloVaeModule`` Lightning checkpoint
without importing Lightning or Hydra.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from halo.core.canonicalization import canonicalize, signed_angle
from halo.core.skeleton import FINGER_JOINTS, NUM_JOINTS, bone_vectors
from halo.grasp.halo_terms import (
    CM_PER_M,
    GraspVaeError,
    check_keypoints,
    check_points,
    joint_object_distances,
    signed_joint_object_distances,
)
from halo.grasp.kinematics import (
    IDENTITY_6D,
    SkeletonTemplate,
    default_template,
    forward_kinematics,
    rotation_6d_to_matrix,
)

__all__ = [
    "LATENTS",
    "DECODERS",
    "KinematicDecoder",
    "OBJECT_ENCODERS",
    "BpsEncoder",
    "GraspVAE",
    "GraspVaeConfig",
    "PointNetEncoder",
    "RefineNet",
    "VaeOutput",
    "all_bone_angle_loss",
    "angle_difference",
    "bone_length_loss",
    "bps_basis",
    "keypoint_loss",
    "kl_divergence",
    "perturb_for_refinement",
    "root_bone_angle_loss",
    "root_bone_angles",
    "root_plane_angle_loss",
    "root_plane_angles",
    "GraspVaeError",
]

OBJECT_ENCODERS = ("pointnet", "bps")
DECODERS = ("keypoints", "kinematic")


# ----------------------------------------------------------------------------- config


@dataclass
class GraspVaeConfig:
    """Architecture of :class:`GraspVAE` (defaults = the original's GRAB config, spec 6.2 / 9)."""

    object_encoder: str = "pointnet"  # "pointnet" (the original) | "bps"
    object_dim: int = 256  # object code size
    object_hidden_dim: int = 256  # PointNet / BPS-MLP width
    z_dim: int = 32
    encoder_dim: int = 256  # posterior encoder width
    decoder_dim: int = 256
    refine_dim: int = 128
    bps_points: int = 4096
    bps_radius_m: float = 0.15
    bps_seed: int = 0
    units_per_metre: float = 100.0  # network-internal units: centimetres, as the original
    refine_signed_distance: bool = True  # RefineNet's distance feature signed (False: the original's)
    decoder: str = "keypoints"  # "keypoints" (63 free coordinates, the original) | "kinematic"
    kinematic_scale_range: float = 0.1  # kinematic decoder: per-hand size factor in exp(+-range)

    def __post_init__(self) -> None:
        if self.decoder not in DECODERS:
            raise GraspVaeError(f"decoder must be one of {', '.join(DECODERS)}, got {self.decoder!r}")
        if not 0.0 <= float(self.kinematic_scale_range) < 1.0:
            raise GraspVaeError(
                f"kinematic_scale_range must be in [0, 1), got {self.kinematic_scale_range!r}"
            )
        if self.object_encoder not in OBJECT_ENCODERS:
            raise GraspVaeError(
                f"object_encoder must be one of {', '.join(OBJECT_ENCODERS)}, got {self.object_encoder!r}"
            )
        for name in ("object_dim", "object_hidden_dim", "z_dim", "encoder_dim", "decoder_dim", "refine_dim"):
            if int(getattr(self, name)) < 1:
                raise GraspVaeError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.object_encoder == "bps" and (self.bps_points < 1 or self.bps_radius_m <= 0):
            raise GraspVaeError(
                f"bps_points must be >= 1 and bps_radius_m > 0, got {self.bps_points} / {self.bps_radius_m}"
            )
        if self.units_per_metre <= 0:
            raise GraspVaeError(f"units_per_metre must be > 0, got {self.units_per_metre}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping | None) -> GraspVaeConfig:
        d = dict(d or {})
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise GraspVaeError(
                f"unknown GraspVAE config keys {sorted(unknown)}; allowed: {sorted(cls.__dataclass_fields__)}"
            )
        return cls(**d)


# ----------------------------------------------------------------------------- building blocks


class ResnetBlockFC(nn.Module):
    """Pre-activation residual MLP block (ReLU), second layer zero-initialised, bias-free projection shortcut."""

    def __init__(self, size_in: int, size_out: int):
        super().__init__()
        size_h = min(size_in, size_out)
        self.fc_0 = nn.Linear(size_in, size_h)
        self.fc_1 = nn.Linear(size_h, size_out)
        nn.init.zeros_(self.fc_1.weight)  # the block starts as its shortcut
        self.shortcut = nn.Linear(size_in, size_out, bias=False) if size_in != size_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dx = self.fc_1(F.relu(self.fc_0(F.relu(x))))
        return (x if self.shortcut is None else self.shortcut(x)) + dx


class _ResidualMLP(nn.Module):
    """Linear(in, width) -> ``blocks`` x [h + act(Linear(h))] -> Linear(width, out), LeakyReLU."""

    def __init__(self, dim_in: int, width: int, dim_out: int, blocks: int, slope: float):
        super().__init__()
        self.fc_in = nn.Linear(dim_in, width)
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(blocks))
        self.fc_out = nn.Linear(width, dim_out)
        self.slope = slope

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.fc_in(x), self.slope)
        for fc in self.blocks:
            h = h + F.leaky_relu(fc(h), self.slope)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.features(x))


# ----------------------------------------------------------------------------- object encoders


class PointNetEncoder(nn.Module):
    """ResNet-PointNet (spec 6.2): object points (B,P,3) metres -> code (B,object_dim).

    Linear(3, 2h); five residual blocks 2h -> h, each followed (except the last) by
    max-pooling over points and concatenating the pooled feature to every point;
    max-pool, ReLU, Linear(h, object_dim).
    """

    def __init__(self, config: GraspVaeConfig):
        super().__init__()
        h = config.object_hidden_dim
        self.scale = config.units_per_metre
        self.fc_pos = nn.Linear(3, 2 * h)
        self.blocks = nn.ModuleList(ResnetBlockFC(2 * h, h) for _ in range(5))
        self.fc_c = nn.Linear(h, config.object_dim)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        check_points(points, "object_points")
        net = self.fc_pos(points * self.scale)
        for i, block in enumerate(self.blocks):
            if i > 0:
                pooled = net.max(dim=1, keepdim=True).values.expand_as(net)
                net = torch.cat([net, pooled], dim=-1)
            net = block(net)
        return self.fc_c(F.relu(net.max(dim=1).values))


def bps_basis(n: int, radius_m: float, seed: int) -> torch.Tensor:
    """(n,3) float32 basis points uniform in a ball of ``radius_m`` (metres), from a seeded numpy generator."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=(n, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True).clip(1e-12)
    radius = radius_m * rng.uniform(size=(n, 1)) ** (1.0 / 3.0)  # uniform in volume
    return torch.from_numpy((direction * radius).astype(np.float32))


class BpsEncoder(nn.Module):
    """Basis point set encoder: distance of each fixed basis point to the nearest object point -> MLP.

    The basis is a buffer (saved with the weights), so a checkpoint always encodes with
    the basis it was trained with.
    """

    def __init__(self, config: GraspVaeConfig):
        super().__init__()
        self.scale = config.units_per_metre
        self.register_buffer("basis", bps_basis(config.bps_points, config.bps_radius_m, config.bps_seed))
        h = config.object_hidden_dim
        self.mlp = nn.Sequential(
            nn.Linear(config.bps_points, h),
            nn.ReLU(),
            nn.Linear(h, h),
            nn.ReLU(),
            nn.Linear(h, config.object_dim),
        )

    def features(self, points: torch.Tensor) -> torch.Tensor:
        """(B, bps_points) nearest-object-point distances, network units."""
        check_points(points, "object_points")
        basis = self.basis.to(points)[None].expand(points.shape[0], -1, -1)
        return torch.cdist(basis, points).amin(dim=-1) * self.scale

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.features(points))


# ----------------------------------------------------------------------------- VAE


@dataclass
class VaeOutput:
    keypoints: torch.Tensor  # (B,21,3) metres, decoded
    mean: torch.Tensor  # (B,z) posterior mean
    logstd: torch.Tensor  # (B,z) posterior log standard deviation
    z: torch.Tensor  # (B,z) the latent that was decoded
    object_code: torch.Tensor  # (B,object_dim)


class RefineNet(nn.Module):
    """(keypoints, object code, per-joint object distance) -> keypoint offset (spec 6.2's RefineNet).

    Linear(63 + object_dim + 21, w), three residual layers, Linear(w, 63); LeakyReLU(0.1).
    The last layer starts at zero, so an untrained refinement is the identity.  With
    ``refine_signed_distance`` (default) the distance feature carries a sign (negative inside,
    :func:`signed_joint_object_distances`): the original's unsigned distance cannot tell a joint
    just outside the surface from one just inside it, which is exactly what refinement must fix.
    """

    def __init__(self, config: GraspVaeConfig):
        super().__init__()
        self.scale = config.units_per_metre
        self.signed = config.refine_signed_distance
        self.net = _ResidualMLP(63 + config.object_dim + NUM_JOINTS, config.refine_dim, 63, 3, 0.1)
        nn.init.zeros_(self.net.fc_out.weight)
        nn.init.zeros_(self.net.fc_out.bias)

    def forward(
        self, keypoints: torch.Tensor, object_code: torch.Tensor, object_points: torch.Tensor
    ) -> torch.Tensor:
        """One refinement step: (B,21,3) metres -> (B,21,3) metres."""
        features = signed_joint_object_distances if self.signed else joint_object_distances
        dist = features(keypoints, object_points) * self.scale
        x = torch.cat([keypoints.flatten(1) * self.scale, object_code, dist], dim=-1)
        return keypoints + self.net(x).view(-1, NUM_JOINTS, 3) / self.scale


class KinematicDecoder(nn.Module):
    """(z, object code) -> joint rotations -> 21 keypoints by forward kinematics (metres).

    Outputs per hand: a 6D global rotation, the wrist position (network units), 15 finger joint
    rotations (6D, each relative to its parent bone) and a per-hand size factor
    ``exp(range * tanh(s))``; :func:`halo.grasp.kinematics.forward_kinematics` turns them into
    keypoints with the template's palm and bone lengths, so every sample is a hand by
    construction (:mod:`halo.grasp.kinematics` says why).  The template is a buffer (saved with
    the weights); :meth:`set_template` replaces it, e.g. by the training grasps' mean skeleton.
    """

    N_OUT = 6 + 3 + 15 * 6 + 1

    def __init__(self, config: GraspVaeConfig):
        super().__init__()
        self.scale_units = config.units_per_metre
        self.scale_range = float(config.kinematic_scale_range)
        self.net = _ResidualMLP(config.z_dim + config.object_dim, config.decoder_dim, self.N_OUT, 2, 0.1)
        # Start at the template with straight fingers: small weights, identity rotations as bias.
        nn.init.normal_(self.net.fc_out.weight, std=1e-3)
        bias = torch.zeros(self.N_OUT)
        bias[:6] = torch.tensor(IDENTITY_6D)
        bias[9 : 9 + 90] = torch.tensor(IDENTITY_6D).repeat(15)
        with torch.no_grad():
            self.net.fc_out.bias.copy_(bias)
        template = default_template()
        self.register_buffer("template_palm", template.palm.clone())
        self.register_buffer("template_lengths", template.lengths.clone())
        # Whether set_template ran (a saved model keeps its fitted template; training fits it once).
        self.register_buffer("template_is_fitted", torch.tensor(False))

    @property
    def template(self) -> SkeletonTemplate:
        return SkeletonTemplate(self.template_palm, self.template_lengths)

    @property
    def template_fitted(self) -> bool:
        return bool(self.template_is_fitted)

    def set_template(self, template: SkeletonTemplate) -> None:
        with torch.no_grad():
            self.template_palm.copy_(template.palm.to(self.template_palm))
            self.template_lengths.copy_(template.lengths.to(self.template_lengths))
            self.template_is_fitted.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        bsz = out.shape[0]
        rot = rotation_6d_to_matrix(out[:, :6])
        wrist = out[:, 6:9] / self.scale_units
        joints = rotation_6d_to_matrix(out[:, 9:99].reshape(bsz, 5, 3, 6))
        size = torch.exp(self.scale_range * torch.tanh(out[:, 99]))
        return forward_kinematics(self.template, rot, wrist, joints, size)


class GraspVAE(nn.Module):
    """Object-conditioned VAE over 21 hand keypoints (metres, object-centred frame).

    ``config.decoder``: ``keypoints`` (the original: 63 free coordinates) or ``kinematic``
    (:class:`KinematicDecoder`: joint rotations + forward kinematics, bone lengths from a template).
    """

    def __init__(self, config: GraspVaeConfig | Mapping | None = None):
        super().__init__()
        if not isinstance(config, GraspVaeConfig):
            config = GraspVaeConfig.from_dict(config)
        self.config = config
        self.object_encoder = (
            PointNetEncoder(config) if config.object_encoder == "pointnet" else BpsEncoder(config)
        )
        self.posterior = _ResidualMLP(63 + config.object_dim, config.encoder_dim, 2 * config.z_dim, 3, 0.2)
        # The posterior starts at the prior (mean 0, std 1): with centimetre inputs a default-initialised
        # head starts with a KL in the thousands, which dominates the first hundreds of steps.
        nn.init.zeros_(self.posterior.fc_out.weight)
        nn.init.zeros_(self.posterior.fc_out.bias)
        if config.decoder == "kinematic":
            self.decoder = KinematicDecoder(config)
        else:
            self.decoder = _ResidualMLP(config.z_dim + config.object_dim, config.decoder_dim, 63, 2, 0.1)
        self.refine_net = RefineNet(config)
        # The aggregate posterior as one Gaussian (mean, covariance of the training grasps' z), kept
        # as running statistics while training (:meth:`update_latent_statistics`).  N(0, I) samples
        # miss where the posterior puts its mass, so they vary less than the training grasps
        # (README, HALO-VAE: cluster size 2.4 against 3.3 cm from this Gaussian, one seed).
        self.register_buffer("latent_mean", torch.zeros(config.z_dim))
        self.register_buffer("latent_cov", torch.eye(config.z_dim))
        self.register_buffer("latent_count", torch.tensor(0, dtype=torch.long))

    #: Buffers that checkpoints written before the latent statistics existed lack (loaded as their defaults).
    _LATENT_BUFFERS = ("latent_mean", "latent_cov", "latent_count")

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # Older checkpoints have no latent statistics: load them as "never fitted" instead of failing.
        for name in self._LATENT_BUFFERS:
            state_dict.setdefault(prefix + name, getattr(self, name).detach().clone())
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    @property
    def latent_fitted(self) -> bool:
        """Whether :meth:`update_latent_statistics` has seen any training grasps."""
        return bool(self.latent_count > 0)

    @torch.no_grad()
    def update_latent_statistics(self, z: torch.Tensor, momentum: float = 0.01) -> None:
        """Fold a batch of posterior samples (B,z_dim) into the running mean and covariance.

        An exponential moving average like BatchNorm's (``momentum`` = weight of the new batch);
        the first batch sets the statistics.  The covariance is the batch covariance around the
        batch mean plus the spread of the batch means the average sees.
        """
        z = z.detach().to(self.latent_mean)
        if z.dim() != 2 or z.shape[1] != self.config.z_dim or z.shape[0] < 2:
            raise GraspVaeError(
                f"latent batch must have shape (B>=2, {self.config.z_dim}), got {tuple(z.shape)}"
            )
        mean = z.mean(0)
        cov = torch.cov(z.T).reshape(self.config.z_dim, self.config.z_dim)
        if not self.latent_fitted:
            self.latent_mean.copy_(mean)
            self.latent_cov.copy_(cov)
        else:
            delta = mean - self.latent_mean
            self.latent_mean.add_(momentum * delta)
            self.latent_cov.mul_(1.0 - momentum).add_(
                momentum * (cov + (1.0 - momentum) * torch.outer(delta, delta))
            )
        self.latent_count.add_(z.shape[0])

    def draw_latent(
        self, n: int, latent: str, generator: torch.Generator | None, dtype, device
    ) -> torch.Tensor:
        """(n,z_dim) latents: ``"standard"`` N(0, I), or ``"fitted"``: the running Gaussian."""
        if latent not in LATENTS:
            raise GraspVaeError(f"latent must be one of {', '.join(LATENTS)}, got {latent!r}")
        eps = torch.randn(n, self.config.z_dim, generator=generator, device="cpu", dtype=dtype).to(device)
        if latent == "standard":
            return eps
        if not self.latent_fitted:
            raise GraspVaeError(
                "latent='fitted' needs the latent statistics of training, which this checkpoint does not "
                "have (trained before they existed); use latent='standard'"
            )
        jitter = 1e-5 * torch.eye(
            self.config.z_dim, device=self.latent_cov.device, dtype=self.latent_cov.dtype
        )
        chol = torch.linalg.cholesky(self.latent_cov + jitter)
        return (self.latent_mean + eps.to(chol) @ chol.T).to(device, dtype)

    @property
    def scale(self) -> float:
        return self.config.units_per_metre

    def set_skeleton_template(self, template: SkeletonTemplate) -> None:
        """Use ``template`` (e.g. :func:`halo.grasp.kinematics.fit_template` of the training grasps)
        for the kinematic decoder's bones; an error for the ``keypoints`` decoder."""
        if not isinstance(self.decoder, KinematicDecoder):
            raise GraspVaeError("set_skeleton_template needs config.decoder='kinematic'")
        self.decoder.set_template(template)

    def encode_object(self, object_points: torch.Tensor) -> torch.Tensor:
        """(B,P,3) metres -> (B,object_dim)."""
        return self.object_encoder(object_points)

    def encode(self, keypoints: torch.Tensor, object_code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior q(z | keypoints, object): mean and log-std, each (B,z_dim)."""
        check_keypoints(keypoints)
        out = self.posterior(torch.cat([keypoints.flatten(1) * self.scale, object_code], dim=-1))
        mean, logstd = out.chunk(2, dim=-1)
        return mean, logstd

    def decode(self, z: torch.Tensor, object_code: torch.Tensor) -> torch.Tensor:
        """(B,z_dim), (B,object_dim) -> keypoints (B,21,3) metres."""
        if isinstance(self.decoder, KinematicDecoder):
            return self.decoder(torch.cat([z, object_code], dim=-1))
        return self.decoder(torch.cat([z, object_code], dim=-1)).view(-1, NUM_JOINTS, 3) / self.scale

    def forward(self, keypoints: torch.Tensor, object_points: torch.Tensor, sample: bool = True) -> VaeOutput:
        """Reconstruct ``keypoints`` (B,21,3) given ``object_points`` (B,P,3).

        ``sample``: decode z ~ q (reparameterised, training) or the posterior mean (deterministic).
        """
        code = self.encode_object(object_points)
        mean, logstd = self.encode(keypoints, code)
        z = mean + torch.randn_like(mean) * logstd.exp() if sample else mean
        return VaeOutput(self.decode(z, code), mean, logstd, z, code)

    def refine(
        self,
        keypoints: torch.Tensor,
        object_points: torch.Tensor,
        steps: int = 3,
        object_code: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Apply the refinement net ``steps`` times to (B,21,3) keypoints (metres)."""
        check_keypoints(keypoints)
        code = self.encode_object(object_points) if object_code is None else object_code
        for _ in range(int(steps)):
            keypoints = self.refine_net(keypoints, code, object_points)
        return keypoints

    @torch.no_grad()
    def sample(
        self,
        object_points: torch.Tensor,
        n: int,
        *,
        generator: torch.Generator | None = None,
        refine_steps: int = 0,
        latent: str = "standard",
    ) -> torch.Tensor:
        """``n`` grasps per object: z -> keypoints (B,n,21,3) metres, optionally refined.

        ``object_points``: (P,3) or (B,P,3) object surface samples, metres, object-centred.
        ``latent``: ``"standard"`` z ~ N(0, I) (the original), ``"fitted"`` z from the training
        posterior's running Gaussian (:meth:`draw_latent`).  Returns (n,21,3) for a (P,3) input.
        """
        single = isinstance(object_points, torch.Tensor) and object_points.dim() == 2
        pts = object_points[None] if single else object_points
        check_points(pts, "object_points")
        if int(n) < 1:
            raise GraspVaeError(f"n (grasps per object) must be >= 1, got {n}")
        bsz = pts.shape[0]
        pts = pts.repeat_interleave(int(n), dim=0)  # (B*n,P,3)
        code = self.encode_object(pts)
        z = self.draw_latent(bsz * int(n), latent, generator, code.dtype, code.device)
        kp = self.decode(z, code)
        if refine_steps > 0:
            kp = self.refine(kp, pts, refine_steps, object_code=code)
        kp = kp.view(bsz, int(n), NUM_JOINTS, 3)
        return kp[0] if single else kp


# ----------------------------------------------------------------------------- loss terms


def keypoint_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE of keypoint coordinates in cm^2 (inputs (B,21,3) metres), mean over batch, joints, axes."""
    return F.mse_loss(pred * CM_PER_M, target * CM_PER_M)


def bone_length_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE of the 20 bone lengths in cm^2 (inputs (B,21,3) metres)."""
    return F.mse_loss(
        bone_vectors(pred).norm(dim=-1) * CM_PER_M, bone_vectors(target).norm(dim=-1) * CM_PER_M
    )


def angle_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """mean(|cos a - cos b| + |sin a - sin b|) over all elements (radians in, unit-free out).

    Periodic, and linear rather than quadratic near zero difference (the original's angle loss).
    """
    return ((torch.cos(a) - torch.cos(b)).abs() + (torch.sin(a) - torch.sin(b)).abs()).mean()


def _root_bones(keypoints: torch.Tensor) -> torch.Tensor:
    """(B,5,3) wrist -> thumb CMC / finger MCP, thumb..pinky."""
    roots = [f[0] for f in FINGER_JOINTS]
    return keypoints[:, roots] - keypoints[:, :1]


def root_bone_angles(keypoints: torch.Tensor) -> torch.Tensor:
    """(B,4) signed angles (rad) between consecutive root bones: thumb-index, index-middle, middle-ring,
    ring-pinky.  Sign reference: the palm normal (middle root bone x index root bone), as in the
    canonicalization's global frame."""
    b = _root_bones(keypoints)
    palm = torch.linalg.cross(b[:, 2], b[:, 1], dim=-1)[:, None].expand(-1, 4, -1)
    return signed_angle(b[:, :4], b[:, 1:], palm)


def root_plane_angles(keypoints: torch.Tensor) -> torch.Tensor:
    """(B,3) signed dihedral angles (rad) between consecutive root-bone planes.

    Plane normals n_k = b_{k+1} x b_k of neighbouring root bones (k = thumb|index .. ring|pinky);
    angle k rotates n_k onto n_{k+1} about their shared bone b_{k+1} (the quantities the
    canonicalization normalizes to 0.8 / 0.2 / 0.2 rad).
    """
    b = _root_bones(keypoints)
    n = torch.linalg.cross(b[:, 1:], b[:, :4], dim=-1)  # (B,4,3)
    return signed_angle(n[:, :3], n[:, 1:], b[:, 1:4])


def root_bone_angle_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """:func:`angle_difference` of :func:`root_bone_angles` (inputs (B,21,3) metres)."""
    return angle_difference(root_bone_angles(pred), root_bone_angles(target))


def root_plane_angle_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """:func:`angle_difference` of :func:`root_plane_angles` (inputs (B,21,3) metres)."""
    return angle_difference(root_plane_angles(pred), root_plane_angles(target))


def all_bone_angle_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """:func:`angle_difference` of the canonicalization's (B,15,2) flexion/abduction angles.

    As in the original, the global normalization and the local bone frames are detached
    (:func:`halo.core.canonicalization.canonicalize`), so the gradient flows through the bone
    directions only.  Inputs are not validated (a decoder in early training may output
    degenerate hands; their angles are finite garbage, not an exception).
    """
    pred_angles = canonicalize(pred, validate=False).bone_angles
    with torch.no_grad():
        target_angles = canonicalize(target, validate=False).bone_angles
    return angle_difference(pred_angles, target_angles)


def kl_divergence(mean: torch.Tensor, logstd: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logstd)^2) || N(0, I)), summed over latent dims, mean over the batch (B,z)->()."""
    return (0.5 * (mean.pow(2) + (2 * logstd).exp() - 1.0) - logstd).sum(-1).mean()


#: Where :meth:`GraspVAE.sample` draws z: the standard normal prior or the training posterior's Gaussian.
LATENTS = ("standard", "fitted")


REFINE_NOISE = ("isotropic", "original")


def perturb_for_refinement(
    keypoints: torch.Tensor,
    *,
    joint_noise_m: float = 0.005,
    shift_max_m: float = 0.02,
    mode: str = "isotropic",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Noisy copies (B,21,3) of ground-truth keypoints the refinement net learns to undo.

    ``"original"`` (spec 6.1): N(0, joint_noise) on joints 6..20 and one uniform scalar in
    [0, shift_max) added to every coordinate (a shift along (1,1,1) only).
    ``"isotropic"`` (default): N(0, joint_noise) on every joint and a rigid shift of uniform
    length in [0, shift_max) in a uniformly random direction, which also covers the
    hand-floats-off-the-object and hand-sinks-in errors a sampled grasp makes.
    """
    if mode not in REFINE_NOISE:
        raise GraspVaeError(f"refine noise mode must be one of {', '.join(REFINE_NOISE)}, got {mode!r}")
    bsz = keypoints.shape[0]

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(keypoints)

    def rand(*shape):
        return torch.rand(*shape, generator=generator).to(keypoints)

    noise = randn(bsz, NUM_JOINTS, 3) * joint_noise_m
    if mode == "original":
        noise[:, :6] = 0.0
        return keypoints + noise + rand(bsz, 1, 1) * shift_max_m
    direction = randn(bsz, 1, 3)
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return keypoints + noise + direction * rand(bsz, 1, 1) * shift_max_m
