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
original mixed cm and m there; spec 10.3).

:func:`halo.grasp.vae_checkpoint.load_grasp_vae` reads a trained model from a ``HaloVaeModule`` Lightning checkpoint
without importing Lightning or Hydra.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from halo.core.canonicalization import canonicalize, signed_angle
from halo.core.model import HaloModel
from halo.core.skeleton import BONES, FINGER_JOINTS, NUM_JOINTS, bone_vectors, plausible_skeletons
from halo.grasp.kinematics import (
    IDENTITY_6D,
    SkeletonTemplate,
    default_template,
    forward_kinematics,
    rotation_6d_to_matrix,
)
from halo.utils.errors import InputError

__all__ = [
    "LATENTS",
    "DECODERS",
    "KinematicDecoder",
    "OBJECT_ENCODERS",
    "BpsEncoder",
    "GraspVAE",
    "GraspVaeConfig",
    "GraspVaeError",
    "PointNetEncoder",
    "RefineNet",
    "VaeOutput",
    "all_bone_angle_loss",
    "angle_difference",
    "bone_length_loss",
    "bps_basis",
    "contact_loss",
    "halo_occupancy",
    "halo_occupancy_logit",
    "INTER_MODES",
    "gather_points",
    "most_occupied_indices",
    "most_occupied_indices_grouped",
    "most_occupied_points",
    "nearest_to_hand_indices",
    "points_near_hand",
    "interpenetration_loss",
    "joint_object_distances",
    "keypoint_loss",
    "kl_divergence",
    "perturb_for_refinement",
    "plausible_hands",
    "prior_contact_loss",
    "root_bone_angle_loss",
    "root_bone_angles",
    "root_plane_angle_loss",
    "root_plane_angles",
    "signed_joint_object_distances",
    "REFERENCE_SKIN_SLOPE",
    "skin_logit_slope",
    "halo_logit_scale",
]

OBJECT_ENCODERS = ("pointnet", "bps")
DECODERS = ("keypoints", "kinematic")
CM_PER_M = 100.0  # loss distances are centimetres so the original's loss weights keep their meaning


class GraspVaeError(InputError):
    """Bad configuration, input shapes or checkpoint (names the key / shape / file)."""


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


def _check_points(points: torch.Tensor, name: str) -> None:
    if not isinstance(points, torch.Tensor) or points.dim() != 3 or points.shape[-1] != 3:
        shape = tuple(points.shape) if isinstance(points, torch.Tensor) else type(points).__name__
        raise GraspVaeError(f"{name} must have shape (B, N, 3) in metres, got {shape}")
    if points.shape[1] == 0:
        raise GraspVaeError(f"{name} holds no points (shape {tuple(points.shape)})")


def _check_keypoints(keypoints: torch.Tensor, name: str = "keypoints") -> None:
    if not isinstance(keypoints, torch.Tensor) or keypoints.dim() != 3 or keypoints.shape[1:] != (21, 3):
        shape = tuple(keypoints.shape) if isinstance(keypoints, torch.Tensor) else type(keypoints).__name__
        raise GraspVaeError(f"{name} must have shape (B, 21, 3) in metres, got {shape}")


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
        _check_points(points, "object_points")
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
        _check_points(points, "object_points")
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
        _check_keypoints(keypoints)
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
        _check_keypoints(keypoints)
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
        _check_points(pts, "object_points")
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


def plausible_hands(keypoints: torch.Tensor) -> torch.Tensor:
    """(B,) bool: hands HALO can canonicalize (:func:`halo.core.skeleton.plausible_skeletons`).

    Losses through HALO skip the others, so an early, still degenerate decoder output cannot
    stop training.
    """
    return plausible_skeletons(keypoints)


def halo_occupancy(
    halo_model: HaloModel, points: torch.Tensor, keypoints: torch.Tensor, exact_gradient: bool = False
) -> torch.Tensor:
    """HALO occupancy (B,N) of ``points`` (B,N,3) for hands ``keypoints`` (B,21,3), metres.

    The sigmoid of :func:`halo_occupancy_logit` (``validate=False``: callers filter with
    :func:`plausible_hands`), so the VAE's terms use the same forward pass as everything else,
    float32 geometry guard under autocast included.  Differentiable w.r.t. ``keypoints`` and ``points``.
    """
    if halo_model.config.smooth_max:
        return halo_model(
            points.to(keypoints.dtype), keypoints, validate=False, exact_gradient=exact_gradient
        ).occupancy
    return torch.sigmoid(halo_occupancy_logit(halo_model, points, keypoints, exact_gradient=exact_gradient))


INTER_MODES = ("threshold", "soft")
#: Where :meth:`GraspVAE.sample` draws z: the standard normal prior or the training posterior's Gaussian.
LATENTS = ("standard", "fitted")


def halo_occupancy_logit(
    halo_model: HaloModel,
    points: torch.Tensor,
    keypoints: torch.Tensor,
    cull: torch.Tensor | str | None = None,
    exact_gradient: bool = False,
) -> torch.Tensor:
    """HALO's occupancy as a logit (B,N): the largest part logit (occupancy = its sigmoid).

    :meth:`HaloModel.max_logit` (autograd through each point's winning part only).  A logit does
    not saturate where the occupancy does: deep inside the hand the sigmoid is flat (occupancy 1.0
    in float32, zero gradient), which is exactly where a sunk hand sits.  With the smooth-max
    combination the logit of the (clamped) occupancy is returned instead.  ``cull``: as in
    :meth:`HaloModel.forward` (e.g. radii from :meth:`HaloModel.culling_radii`); culled parts read
    ``culled_logit``, so far from the hand the logit is that floor instead of the full value.
    ``exact_gradient``: :meth:`HaloModel.forward`'s (the true derivative w.r.t. the keypoints).
    """
    points = points.to(keypoints.dtype)
    if halo_model.config.smooth_max:
        out = halo_model(points, keypoints, validate=False, cull=cull, exact_gradient=exact_gradient)
        return torch.logit(out.occupancy.clamp(1e-6, 1.0 - 1e-6))
    return halo_model.max_logit(points, keypoints, validate=False, cull=cull, exact_gradient=exact_gradient)[
        0
    ]


#: How fast the original release's logit grows across its skin (median |d logit / d x| within ~2 mm
#: of its 0.5 level around a flat template hand, 1/m; :func:`skin_logit_slope` of model_best.pt,
#: checked by tests/grasp/test_halo_vae.py when the release is present).  The soft HALO terms are
#: written in the release's logit units; other bases are rescaled to them.
REFERENCE_SKIN_SLOPE = 6300.0


def skin_logit_slope(halo_model: HaloModel, n: int = 4000, seed: int = 0) -> float:
    """Median |d logit / d x| (1/m) of ``halo_model`` across its skin (points within ~2 mm of its 0.5
    level), measured on ``n`` points scattered (1 cm) around the bones of a flat template hand.

    Why: a logit is not a distance, and its scale is a property of the base.  The release (MSE on
    probabilities) reaches logits of +-100 within a centimetre; a base trained with BCE on the
    logit stays within about +-10.  Measured: slope 6300/m (release) against ~1700/m (the default
    run's base); ground-truth grasps pushed 1 cm into their objects score 3.1 with the release and
    0.23 with that base under the same soft term, 0.85 once rescaled.  Multiplying the logit by
    ``REFERENCE_SKIN_SLOPE / slope`` puts every base in the release's units near its skin.
    """
    dtype = next(halo_model.parameters()).dtype
    device = next(halo_model.parameters()).device
    eye = torch.eye(3, dtype=dtype, device=device)
    hand = forward_kinematics(
        default_template(),
        eye[None],
        torch.zeros(1, 3, dtype=dtype, device=device),
        eye.expand(1, 5, 3, 3, 3),
    )
    g = torch.Generator().manual_seed(seed)
    bones = bone_vectors(hand)[0]
    parents = hand[0, [p for p, _ in BONES]]
    t = torch.rand(n, generator=g, dtype=dtype).to(device)
    which = torch.randint(0, len(BONES), (n,), generator=g).to(device)
    pts = (
        parents[which]
        + t[:, None] * bones[which]
        + 0.01 * torch.randn(n, 3, generator=g, dtype=dtype).to(device)
    )
    pts = pts[None].requires_grad_(True)
    with torch.enable_grad():
        logit = halo_occupancy_logit(halo_model, pts, hand)
        (grad,) = torch.autograd.grad(logit.sum(), pts)
    slope = grad[0].norm(dim=-1)
    # Points within ~2 mm of the skin by the first-order distance |logit| / |grad logit|, which does
    # not change when a base's logits are scaled (a band in logit units would).
    skin = (logit[0].detach().abs() / slope.clamp_min(1e-12) < 0.002) & (slope > 0)
    if int(skin.sum()) < 10:
        raise GraspVaeError(
            f"the HALO base has no skin around a template hand ({int(skin.sum())} of {n} points within "
            "2 mm of its 0.5 level): is it trained?"
        )
    return float(slope[skin].median())


def halo_logit_scale(halo_model: HaloModel) -> float:
    """``REFERENCE_SKIN_SLOPE / skin_logit_slope(halo_model)``: the factor that puts this base's
    logits in the release's units; 1.0 with a warning for a base without a skin (an untrained one)."""
    try:
        return REFERENCE_SKIN_SLOPE / skin_logit_slope(halo_model)
    except GraspVaeError as exc:
        warnings.warn(f"{exc}; HALO logits are used unscaled", stacklevel=2)
        return 1.0


def nearest_to_hand_indices(keypoints: torch.Tensor, points: torch.Tensor, k: int) -> torch.Tensor:
    """(B,k) indices of the ``k`` points of ``points`` (B,M,3) nearest to any joint of ``keypoints``
    (B,21,3); all M indices when ``k >= M``.

    Distances are to points along every bone (joints and three points between), so the middle
    of the long palm bones counts as hand too.  Chosen on detached keypoints: where the hand is,
    the object's interior is sampled densely, so a hand that covers a few percent of a large
    object still sees a full set of interior points.
    """
    if k >= points.shape[1]:
        return torch.arange(points.shape[1], device=points.device).expand(points.shape[0], -1)
    kp = keypoints.detach().to(points)
    bones = bone_vectors(kp)  # (B,20,3)
    parents = kp[:, [p for p, _ in BONES]]
    t = torch.tensor([0.25, 0.5, 0.75], dtype=kp.dtype, device=kp.device)
    along = (parents[:, :, None] + t[None, None, :, None] * bones[:, :, None]).flatten(1, 2)  # (B,60,3)
    anchors = torch.cat([kp, along], dim=1)
    d = torch.cdist(points, anchors).amin(dim=-1)  # (B,M)
    return d.topk(int(k), dim=-1, largest=False).indices


def gather_points(points: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B,k,C) rows ``index`` (B,k) of ``points`` (B,M,C)."""
    return torch.gather(points, 1, index[..., None].expand(-1, -1, points.shape[-1]))


def points_near_hand(keypoints: torch.Tensor, points: torch.Tensor, k: int) -> torch.Tensor:
    """(B,k,3) the ``k`` points of ``points`` (B,M,3) nearest to the hand (:func:`nearest_to_hand_indices`)."""
    if k >= points.shape[1]:
        return points
    return gather_points(points, nearest_to_hand_indices(keypoints, points, k))


def most_occupied_indices(
    halo_model: HaloModel,
    keypoints: torch.Tensor,
    points: torch.Tensor,
    k: int,
    candidates: int,
    cull: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B,k) indices into ``points`` (B,M,3): of the ``candidates`` points nearest to each hand's
    skeleton (:func:`nearest_to_hand_indices`), the ``k`` with the largest HALO logit (no gradient).

    Where the hand penetrates, these are the penetrating points; where it does not, the points
    just outside its skin, which keep it from sinking back in.  With ``cull`` (radii), points
    beyond every part's radius read the culled floor: among those the nearest to the skeleton rank
    first, so a hand that floats off the points still gets its nearest ones.
    """
    return most_occupied_indices_grouped(halo_model, keypoints, [(points, k, candidates)], cull)[0]


def most_occupied_indices_grouped(
    halo_model: HaloModel,
    keypoints: torch.Tensor,
    groups: Sequence[tuple[torch.Tensor, int, int]],
    cull: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """:func:`most_occupied_indices` for several point sets of the same hands at once: ``groups``
    of (points (B,M_i,3), k_i, candidates_i) give one (B,k_i) index tensor each, ranked with one
    HALO call for all candidate pools (one canonicalization instead of one per set; test-time
    refinement ranks its interior, touch and support points together every other step)."""
    pools = [nearest_to_hand_indices(keypoints, points, int(c)) for points, _k, c in groups]  # nearest first
    ranked = [i for i, (_points, k, _c) in enumerate(groups) if int(k) < pools[i].shape[1]]
    out = list(pools)  # a pool no larger than its k is the answer as it is
    if not ranked:
        return out
    with torch.no_grad():
        pts = torch.cat([gather_points(groups[i][0], pools[i]) for i in ranked], dim=1)
        logit = halo_occupancy_logit(halo_model, pts, keypoints.detach(), cull=cull)
        culled = cull is not None and not halo_model.config.mixes_parts
        floor = halo_model.network.all_culled_logit() if culled else None
        for i, part in zip(ranked, logit.split([pools[i].shape[1] for i in ranked], dim=1), strict=True):
            if floor is not None:
                rank = torch.arange(part.shape[1], dtype=part.dtype, device=part.device)
                part = torch.where(part > floor + 1e-5 * abs(floor), part, floor - 1.0 - rank)
            out[i] = torch.gather(pools[i], 1, part.topk(int(groups[i][1]), dim=-1).indices)
    return out


def most_occupied_points(
    halo_model: HaloModel,
    keypoints: torch.Tensor,
    points: torch.Tensor,
    k: int,
    candidates: int,
    cull: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B,k,3) the points of :func:`most_occupied_indices`."""
    return gather_points(points, most_occupied_indices(halo_model, keypoints, points, k, candidates, cull))


def interpenetration_loss(
    halo_model: HaloModel,
    keypoints: torch.Tensor,
    inside_points: torch.Tensor,
    threshold: float = 0.5,
    valid: torch.Tensor | None = None,
    mode: str = "threshold",
    near_hand_points: int | None = None,
    logit_scale: float = 1.0,
    exact_gradient: bool = False,
    rank_candidates: int | None = None,
) -> torch.Tensor:
    """HALO's occupancy of the object's interior points under the hand (spec 6.3).

    Args:
        halo_model: the frozen HALO base (its parameters must not require grad; they get none).
        keypoints: (B,21,3) predicted hands, metres, object-centred.
        inside_points: (B,M,3) points inside the object, metres, same frame.
        threshold: ``mode="threshold"``: occupancies at or below it count as 0 (the original zeroed
            values <= 0.5).
        valid: optional (B,) bool mask of hands to score (default :func:`plausible_hands`).
        mode: ``"threshold"`` (the original): mean of the thresholded occupancy.  ``"soft"``: mean
            of ``softplus(logit)`` (:func:`halo_occupancy_logit`): no threshold that zeroes the
            gradient of points at the hand's surface, no sigmoid that flattens it inside the hand;
            the penalty grows linearly with how deep a point is inside the hand.
        near_hand_points: evaluate only the this many interior points nearest to the hand
            (:func:`points_near_hand`); None: all of them.
        logit_scale: ``mode="soft"``: the logit is multiplied by it first (``REFERENCE_SKIN_SLOPE /
            skin_logit_slope(base)`` puts any base in the release's units).
        exact_gradient: the true keypoint gradient (:meth:`HaloModel.forward`).
        rank_candidates: with ``near_hand_points``: of this many interior points nearest to the
            hand, the ``near_hand_points`` HALO finds most occupied (:func:`most_occupied_points`;
            a hand wrapped round a thin object covers few of the points nearest its bones).

    Returns:
        () mean over points and over the batch (invalid hands contribute 0); gradient flows to
        ``keypoints`` through HALO's canonicalization (global frame and bone frames detached unless
        ``exact_gradient``).
    """
    _check_keypoints(keypoints)
    _check_points(inside_points, "inside_points")
    if mode not in INTER_MODES:
        raise GraspVaeError(f"interpenetration mode must be one of {', '.join(INTER_MODES)}, got {mode!r}")
    valid = plausible_hands(keypoints) if valid is None else valid
    if not bool(valid.any()):
        return keypoints.sum() * 0.0
    points = inside_points[valid]
    if near_hand_points and rank_candidates:
        points = most_occupied_points(halo_model, keypoints[valid], points, near_hand_points, rank_candidates)
    elif near_hand_points:
        points = points_near_hand(keypoints[valid], points, near_hand_points)
    if mode == "soft":
        logit = halo_occupancy_logit(halo_model, points, keypoints[valid], exact_gradient=exact_gradient)
        per_point = F.softplus(logit_scale * logit)
    else:
        occ = halo_occupancy(halo_model, points, keypoints[valid], exact_gradient)  # (b,M)
        per_point = torch.where(occ > threshold, occ, torch.zeros_like(occ))
    return per_point.mean(dim=-1).sum() / keypoints.shape[0]


def joint_object_distances(keypoints: torch.Tensor, object_points: torch.Tensor) -> torch.Tensor:
    """(B,21) distance (metres) from every joint to its nearest object surface sample."""
    return torch.cdist(keypoints, object_points.to(keypoints)).amin(dim=-1)


def signed_joint_object_distances(keypoints: torch.Tensor, object_points: torch.Tensor) -> torch.Tensor:
    """(B,21) distance (metres) to the nearest object surface sample, negative for joints inside.

    Inside/outside from surface samples alone: a joint is outside when it lies beyond its nearest
    surface sample as seen from the object centre (the frame's origin, the bounding-box centre):
    ``(joint - p) . p > 0``.  Exact for star-shaped objects around their centre (spheres, boxes,
    cylinders, most graspable things); a cheap, differentiable-in-value feature, not a mesh test.
    """
    pts = object_points.to(keypoints)
    d = torch.cdist(keypoints, pts)  # (B,21,P)
    dist, idx = d.min(dim=-1)
    nearest = torch.gather(pts, 1, idx[..., None].expand(-1, -1, 3))  # (B,21,3)
    outside = ((keypoints - nearest) * nearest).sum(-1) >= 0
    return torch.where(outside, dist, -dist)


def contact_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    object_points: torch.Tensor,
    contact_threshold_m: float = 0.02,
) -> torch.Tensor:
    """One-sided joint-to-object distance matching on the ground truth's contact joints, cm^2.

    For every joint whose ground-truth distance to the object surface is below
    ``contact_threshold_m`` (a joint that touches: finger joints sit ~5-10 mm under the skin),
    penalise the predicted joint for being farther from the object than the ground-truth joint:
    ``mean(relu(d_pred - d_gt)^2)`` over those joints, distances in cm.

    Why this form: keypoints lie inside the fingers, so "the hand touches the object" means
    "the touching joints are as close as in real grasps", and the ground-truth distance already
    includes the finger's thickness (no hand-surface model needed, exact at any range, cheap).
    It only attracts: nothing pulls a joint into the object; the interpenetration term pushes
    out, so together they seek the contact surface.  (The original's unused surface loss was
    two-sided MSE on all joints, which mostly duplicates the keypoint loss.)

    Args:
        pred, target: (B,21,3) metres; object_points: (B,P,3) metres, same frame.
    Returns:
        () loss; 0 when no ground-truth joint is in contact.
    """
    _check_keypoints(pred, "pred")
    _check_keypoints(target, "target")
    _check_points(object_points, "object_points")
    d_pred = joint_object_distances(pred, object_points)
    with torch.no_grad():
        d_gt = joint_object_distances(target, object_points)
        touching = (d_gt < contact_threshold_m).to(pred.dtype)
    gap = F.relu(d_pred - d_gt) * CM_PER_M
    return (gap.pow(2) * touching).sum() / touching.sum().clamp_min(1.0)


def prior_contact_loss(
    keypoints: torch.Tensor, object_points: torch.Tensor, reach_m: float = 0.015, k: int = 3
) -> torch.Tensor:
    """Sampled hands must touch their object: the mean distance of each hand's ``k`` joints nearest
    to the object surface, beyond ``reach_m``, squared in cm^2, mean over the batch.

    For grasps decoded from the prior, which have no ground truth to match (:func:`contact_loss`
    needs one).  Without it the interpenetration term on prior samples is escaped by hands that
    float next to the object (measured: contact ratio 0.70 of sampled grasps).  ``reach_m``: in the
    synthetic training grasps this mean is 0.65 cm (median), 1.02 cm (95th percentile).

    Args:
        keypoints: (B,21,3) metres; object_points: (B,P,3) metres, same frame.
    """
    _check_keypoints(keypoints)
    _check_points(object_points, "object_points")
    nearest = joint_object_distances(keypoints, object_points).topk(int(k), dim=-1, largest=False).values
    return (F.relu(nearest.mean(-1) - reach_m) * CM_PER_M).pow(2).mean()


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
