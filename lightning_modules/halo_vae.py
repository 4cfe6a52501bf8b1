"""HALO-VAE as a LightningModule: thin glue around :class:`halo.grasp.vae.GraspVAE` and a frozen HALO base.

Batch format (the grasp datamodules', :mod:`datamodules.grasp`; metres, object-centred frame):
``keypoints`` (B,21,3), ``object_points`` (B,P,3), ``inside_points`` (B,M,3), ``object_index`` (B,).

Loss (spec 6.3; distances in cm inside the terms, so the original's weights keep their meaning):

    L = w_keypoints * MSE(keypoints) + w_bone_length * MSE(20 bone lengths)
      + w_root_bone_angle * L_rootbone + w_root_plane_angle * L_rootplane + w_all_bone_angle * L_allbone
      + w_kl * KL + [use_inter_loss] w_inter * L_inter + [use_contact_loss] w_contact * L_contact
      + [use_prior_inter_loss] (w_prior_inter * L_inter + w_prior_anatomy * L_anatomy
                                + w_prior_contact * L_prior_contact)(decode(z ~ N(0, I)))
      + [train_refine_net] w_refine * (the same terms on the refinement of noisy ground truth)

``L_inter`` runs the FROZEN HALO base (``halo_checkpoint``, any file
:func:`halo.core.checkpoint.load_model` reads): its parameters never require grad, it is in eval
mode, it is not a registered submodule (so it is not in ``parameters()``, the optimizer,
``state_dict()`` or the Lightning checkpoint) and is loaded from ``halo_checkpoint`` whenever
the module is built, including by ``load_from_checkpoint``.  The checkpoint records the base's
path and a fingerprint of its weights (``checkpoint["halo_base"]``); loading it with a different
base warns.  So the original's loading-order problem (spec 10.9: the VAE state dict carried the
attached HALO weights) cannot happen.

Switches (``original_config=True`` sets the original's: no contact term, the refinement net
neither trained nor applied at generation):

* ``use_inter_loss``: the interpenetration term (the original: on);
* ``use_prior_inter_loss``: the interpenetration term also on grasps decoded from PRIOR samples
  z ~ N(0, I), i.e. on what generation produces (the original scored only reconstructions from
  z ~ q, which stay close to the ground truth; prior samples fall between the posterior's modes,
  where the decoder averages grasps from several sides of the object and sinks into it).  The
  term needs no ground truth; a pose-independent anatomy term (bone lengths, root-bone and
  root-plane angles of the batch's hand) keeps those samples hand-shaped, or the decoder escapes
  the term by emitting hands the frozen base reads as empty;
* ``inter_gradient``: ``all`` (the original) or ``rigid``: the interpenetration terms (and the prior
  contact term) may only move and turn the hand (:func:`halo.grasp.kinematics.rigid_gradient_only`);
  on every keypoint they flattened all grasps into one least-penetrating pose (measured: diversity
  cluster size 0.24 cm against 2.5 cm without the term);
* ``inter_exact_gradient``: the HALO terms differentiate HALO's canonicalization with its hand
  frame and bone frames attached (:meth:`halo.core.model.HaloModel.forward`'s ``exact_gradient``).
  The original detaches them; then moving the whole hand does not move HALO's palm in the
  gradient (the palm's canonical frame is the detached hand frame), so a sunk palm gets no push;
* ``inter_rank_candidates``: of this many interior points nearest to the hand, the term sees the
  ``inter_near_hand_points`` that HALO finds most occupied (no gradient in the ranking); nearest
  alone misses a penetrating palm when the fingers wrap a thin object
  (:func:`halo.grasp.halo_terms.most_occupied_points`, also what test-time refinement uses);
* ``inter_start_steps`` / ``inter_warmup_steps``: the HALO terms are off (not computed) before the
  start step, then ramp in linearly;
* ``use_contact_loss``: this project's contact term (:func:`halo.grasp.halo_terms.contact_loss`;
  the original had none active);
* ``train_refine_net``: train the refinement net on noisy ground truth (the original's config
  enabled it but its trainer never trained it);
* ``refine_at_generation``: apply ``refine_steps`` refinement steps in :meth:`sample`
  (the original only plotted the refined result);
* ``encoder_freeze_after_epochs``: stop updating the object encoder from that epoch on
  (the original: 80).

Metrics: ``train/loss`` and each term (unweighted, ``train/<term>_loss``),
``train/samples_per_s`` (forward + backward + optimizer step, data loading excluded),
``val/loss`` (the same objective with the posterior MEAN, deterministic; the datamodule's
validation subset is seeded), ``val/<term>_loss``, ``val/keypoint_error_cm`` (mean joint
position error of the reconstruction), and whenever a HALO base is loaded ``val/inter_loss`` (of
the reconstructions) and ``val/prior_inter_loss`` (of grasps decoded from seeded prior samples, i.e.
of generation), also when they are not trained on, so runs with and without them compare.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info

from halo.core.checkpoint import (
    LIGHTNING_HALO_BASE_RECORD,
    LIGHTNING_VAE_HALO_HPARAM,
    LIGHTNING_VAE_HPARAM,
    load_model,
)
from halo.core.model import HaloModel
from halo.grasp.halo_terms import (
    INTER_MODES,
    contact_loss,
    halo_logit_scale,
    interpenetration_loss,
    plausible_hands,
    prior_contact_loss,
)
from halo.grasp.kinematics import fit_template, rigid_gradient_only
from halo.grasp.vae import (
    REFINE_NOISE,
    GraspVAE,
    GraspVaeConfig,
    all_bone_angle_loss,
    bone_length_loss,
    keypoint_loss,
    kl_divergence,
    perturb_for_refinement,
    root_bone_angle_loss,
    root_plane_angle_loss,
)
from halo.grasp.vae_checkpoint import halo_fingerprint
from lightning_modules.train_logging import TrainStepLogging

#: Loss weights of the original's GRAB config (spec 6.3, no-BPS weights) + this project's terms.
DEFAULT_LOSS_WEIGHTS: dict[str, float] = {
    "keypoints": 2.0,
    "bone_length": 2.0,
    "root_bone_angle": 1.5,
    "root_plane_angle": 1.5,
    "all_bone_angle": 1.0,
    "kl": 0.5,
    "inter": 4.0,
    "contact": 1.0,  # new: cm^2 like the keypoint term
    "prior_inter": 4.0,  # new: the interpenetration term on prior samples (same scale as inter)
    "prior_anatomy": 1.0,  # new: keeps prior samples hand-shaped (already weighted bone/root-angle terms)
    "prior_contact": 0.0,  # new: prior samples touch their object (halo.grasp.halo_terms.prior_contact_loss), cm^2
    "refine": 1.0,  # new: weight of the whole refinement objective
}

#: What the interpenetration term's gradient may change: every keypoint (the original), or only the
#: hand's rigid pose (:func:`halo.grasp.kinematics.rigid_gradient_only`).
INTER_GRADIENTS = ("all", "rigid")

#: The switches ``original_config=True`` forces (what the released trainer effectively ran).
ORIGINAL_SWITCHES: dict[str, Any] = {
    "use_contact_loss": False,
    "use_prior_inter_loss": False,
    "train_refine_net": False,
    "refine_at_generation": False,
    "inter_mode": "threshold",
    "inter_near_hand_points": None,
    "inter_warmup_steps": 0,
    "inter_start_steps": 0,
    "inter_gradient": "all",
    "inter_exact_gradient": False,
    "inter_rank_candidates": None,
}
#: The architecture ``original_config=True`` forces (63 free coordinates out of the decoder).
ORIGINAL_VAE: dict[str, Any] = {"decoder": "keypoints"}

MAKE_BASE_COMMAND = "python train.py experiment=halo_base_small hydra.run.dir=outputs/halo_base_small"


class HaloBaseMissingError(FileNotFoundError):
    """The HALO base checkpoint the VAE needs is not there (names the config key and the fix)."""


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"model.{name} must be one of {', '.join(allowed)}, got {value!r}")


def _plain(value: Any) -> Any:
    """DictConfig/ListConfig (Hydra) -> plain containers, so hparams survive ``weights_only`` loading."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover
        return value
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def load_frozen_halo(path: str | Path, *, trust_pickle: bool = False) -> tuple[HaloModel, dict]:
    """A HALO base from ``path`` in eval mode with ``requires_grad=False`` (clear error when missing)."""
    path = Path(path)
    if not path.is_file():
        raise HaloBaseMissingError(
            f"model.halo_checkpoint: HALO base checkpoint {path} not found. HALO-VAE needs a trained HALO base: "
            f"make one with `{MAKE_BASE_COMMAND}` (writes outputs/halo_base_small/checkpoints/halo_base_best.pt), "
            "or set model.halo_checkpoint=PATH to an existing one (a halo_base_best.pt, a HALO base .ckpt, or "
            "the original release's model_best.pt)"
        )
    model, meta = load_model(path, trust_pickle=trust_pickle)
    model.requires_grad_(False)
    return model.eval(), meta


class HaloVaeModule(TrainStepLogging, L.LightningModule):
    """Object points -> grasp keypoints, trained with HALO's interpenetration term (see module docstring).

    Args:
        vae: :class:`halo.grasp.vae.GraspVaeConfig` fields (architecture; ``object_encoder``
            ``pointnet`` or ``bps``).
        halo_checkpoint: the frozen HALO base (needed by ``use_inter_loss``, validation meshes and
            generation); ``None`` only when neither the loss nor meshes are wanted.
        loss_weights: overrides of :data:`DEFAULT_LOSS_WEIGHTS`.
        use_inter_loss, use_contact_loss, use_prior_inter_loss, train_refine_net, refine_at_generation:
            see module docstring.
        refine_steps: refinement iterations (training unrolls them too; the original: 3).
        refine_noise: ``isotropic`` (default) or ``original`` (:func:`halo.grasp.vae.perturb_for_refinement`).
        refine_joint_noise_m, refine_shift_max_m: noise of the refinement training inputs.
        contact_threshold_m: ground-truth joints closer than this to the object count as touching.
        inter_threshold: occupancy at or below this does not count as interpenetration (original: 0.5).
        encoder_freeze_after_epochs: freeze the object encoder from this epoch on (None: never).
        original_config: force the original's switches (:data:`ORIGINAL_SWITCHES`).
        object_points: surface samples per object at generation (match the datamodule's).
        lr, weight_decay: Adam (the original: 1e-4, 0).
        trust_checkpoint: read ``halo_checkpoint`` with full unpickling (can run code: only for files
            you trust; train.py passes its ``trust_checkpoint`` key).  Not saved in the hparams.
    """

    def __init__(
        self,
        vae: dict | None = None,
        halo_checkpoint: str | None = None,
        loss_weights: dict | None = None,
        use_inter_loss: bool = True,
        use_contact_loss: bool = True,
        use_prior_inter_loss: bool = False,
        train_refine_net: bool = True,
        refine_at_generation: bool = True,
        refine_steps: int = 3,
        refine_noise: str = "isotropic",
        refine_joint_noise_m: float = 0.005,
        refine_shift_max_m: float = 0.03,
        contact_threshold_m: float = 0.02,
        inter_threshold: float = 0.5,
        inter_mode: str = "threshold",
        inter_near_hand_points: int | None = None,
        inter_warmup_steps: int = 0,
        inter_start_steps: int = 0,
        inter_gradient: str = "all",
        inter_exact_gradient: bool = False,
        inter_rank_candidates: int | None = None,
        encoder_freeze_after_epochs: int | None = None,
        original_config: bool = False,
        object_points: int = 600,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        trust_checkpoint: bool = False,
    ):
        super().__init__()
        vae = dict(_plain(vae) or {})
        if original_config and vae.get("decoder", "keypoints") != ORIGINAL_VAE["decoder"]:
            rank_zero_info(f"original_config: setting vae {ORIGINAL_VAE} (the original's decoder)")
            vae.update(ORIGINAL_VAE)
        config = GraspVaeConfig.from_dict(vae)
        _check_choice("inter_mode", inter_mode, INTER_MODES)
        _check_choice("inter_gradient", inter_gradient, INTER_GRADIENTS)
        _check_choice("refine_noise", refine_noise, REFINE_NOISE)
        if inter_near_hand_points is not None and int(inter_near_hand_points) < 1:
            raise ValueError(
                f"model.inter_near_hand_points must be >= 1 or null, got {inter_near_hand_points}"
            )
        if inter_rank_candidates is not None and (
            inter_near_hand_points is None or int(inter_rank_candidates) < int(inter_near_hand_points)
        ):
            raise ValueError(
                "model.inter_rank_candidates needs model.inter_near_hand_points and must be >= it, got "
                f"{inter_rank_candidates} (inter_near_hand_points {inter_near_hand_points})"
            )
        for name, value in (
            ("inter_warmup_steps", inter_warmup_steps),
            ("inter_start_steps", inter_start_steps),
            ("refine_steps", refine_steps),
        ):
            if int(value) < 0:
                raise ValueError(f"model.{name} must be >= 0, got {value}")
        weights = dict(DEFAULT_LOSS_WEIGHTS)
        unknown = set(_plain(loss_weights) or {}) - set(weights)
        if unknown:
            raise ValueError(
                f"model.loss_weights: unknown terms {sorted(unknown)}; allowed: {sorted(weights)}"
            )
        weights.update({k: float(v) for k, v in (_plain(loss_weights) or {}).items()})
        if original_config and weights["inter"] != DEFAULT_LOSS_WEIGHTS["inter"]:
            rank_zero_info(
                f"original_config: interpenetration weight {DEFAULT_LOSS_WEIGHTS['inter']} (the original's)"
            )
            weights["inter"] = DEFAULT_LOSS_WEIGHTS["inter"]
        if any(v < 0 for v in weights.values()):
            raise ValueError(f"model.loss_weights must be >= 0, got {weights}")
        switches = {
            "use_inter_loss": bool(use_inter_loss),
            "use_contact_loss": bool(use_contact_loss),
            "use_prior_inter_loss": bool(use_prior_inter_loss),
            "train_refine_net": bool(train_refine_net),
            "refine_at_generation": bool(refine_at_generation),
            "inter_mode": str(inter_mode),
            "inter_near_hand_points": None if inter_near_hand_points is None else int(inter_near_hand_points),
            "inter_warmup_steps": int(inter_warmup_steps),
            "inter_start_steps": int(inter_start_steps),
            "inter_gradient": str(inter_gradient),
            "inter_exact_gradient": bool(inter_exact_gradient),
            "inter_rank_candidates": None if inter_rank_candidates is None else int(inter_rank_candidates),
        }
        if original_config:
            changed = {k: v for k, v in ORIGINAL_SWITCHES.items() if switches[k] != v}
            if changed:
                rank_zero_info(f"original_config: setting {changed} (the original's behaviour)")
            switches.update(ORIGINAL_SWITCHES)
        if switches["use_inter_loss"] and not halo_checkpoint:
            raise ValueError(
                "model.halo_checkpoint is null but model.use_inter_loss is true: the interpenetration term needs "
                f"a HALO base (make one with `{MAKE_BASE_COMMAND}`) or set model.use_inter_loss=false"
            )
        self.save_hyperparameters(
            {
                LIGHTNING_VAE_HPARAM: config.to_dict(),
                LIGHTNING_VAE_HALO_HPARAM: None if not halo_checkpoint else str(halo_checkpoint),
                "loss_weights": weights,
                **switches,
                "refine_steps": int(refine_steps),
                "refine_noise": refine_noise,
                "refine_joint_noise_m": float(refine_joint_noise_m),
                "refine_shift_max_m": float(refine_shift_max_m),
                "contact_threshold_m": float(contact_threshold_m),
                "inter_threshold": float(inter_threshold),
                "encoder_freeze_after_epochs": (
                    None if encoder_freeze_after_epochs is None else int(encoder_freeze_after_epochs)
                ),
                "original_config": bool(original_config),
                "object_points": int(object_points),
                "lr": float(lr),
                "weight_decay": float(weight_decay),
            },
            logger=False,  # train.py logs the whole resolved config instead
        )
        self.vae = GraspVAE(config)
        self._halo: HaloModel | None = None
        self._halo_meta: dict = {}
        if halo_checkpoint:
            halo, meta = load_frozen_halo(halo_checkpoint, trust_pickle=bool(trust_checkpoint))
            # object.__setattr__: NOT a registered submodule (no parameters(), state_dict(), optimizer).
            object.__setattr__(self, "_halo", halo)
            self._halo_meta = meta
        #: The soft HALO terms in the release's logit units whatever the base (see skin_logit_slope).
        self.inter_logit_scale = 1.0
        if self._halo is not None and self.hparams.inter_mode == "soft":
            self.inter_logit_scale = halo_logit_scale(self._halo)
            rank_zero_info(
                f"HALO-VAE: soft HALO terms scaled by {self.inter_logit_scale:.3g} (this base's logit slope)"
            )
        self._encoder_frozen = False
        #: Step for :meth:`inter_schedule` when no Trainer drives the module (a hand-written loop).
        self.schedule_step: int | None = None

    # ------------------------------------------------------------------ the frozen HALO base
    @property
    def has_halo(self) -> bool:
        return self._halo is not None

    @property
    def halo_model(self) -> HaloModel:
        """The frozen HALO base on this module's device (raises when none was configured)."""
        if self._halo is None:
            raise RuntimeError(
                "no HALO base loaded: set model.halo_checkpoint (meshes, the interpenetration term and "
                f"generation need one; make one with `{MAKE_BASE_COMMAND}`)"
            )
        p = next(self._halo.parameters())
        if p.device != self.device:
            object.__setattr__(self, "_halo", self._halo.to(self.device))
        return self._halo

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self._halo is not None:
            checkpoint[LIGHTNING_HALO_BASE_RECORD] = {
                "path": self.hparams.halo_checkpoint,
                "fingerprint": halo_fingerprint(self._halo),
            }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        recorded = checkpoint.get(LIGHTNING_HALO_BASE_RECORD)
        if recorded and self._halo is not None:
            now = halo_fingerprint(self._halo)
            if recorded.get("fingerprint") not in (None, now):
                warnings.warn(
                    f"the HALO base loaded from {self.hparams.halo_checkpoint} differs from the one this VAE was "
                    f"trained with ({recorded.get('path')}; fingerprint {recorded.get('fingerprint')} vs {now})",
                    stacklevel=2,
                )

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def sample(
        self,
        object_points: torch.Tensor,
        n: int,
        *,
        generator: torch.Generator | None = None,
        refine: bool | None = None,
        latent: str = "standard",
    ) -> torch.Tensor:
        """``n`` grasps (n,21,3) metres for one object's surface samples (P,3) (object-centred, metres).

        ``refine`` None follows ``refine_at_generation``.  ``latent``: :meth:`GraspVAE.sample`'s.
        Batched input (B,P,3) gives (B,n,21,3).
        """
        was_training = self.vae.training
        self.vae.eval()
        try:
            do_refine = self.hparams.refine_at_generation if refine is None else refine
            steps = self.hparams.refine_steps if do_refine else 0
            pts = object_points.to(self.device, torch.float32)
            return self.vae.sample(pts, n, generator=generator, refine_steps=steps, latent=latent)
        finally:
            self.vae.train(was_training)

    # ------------------------------------------------------------------ losses
    def _terms(self, pred: torch.Tensor, batch: dict, halo_needed: bool) -> dict[str, torch.Tensor]:
        """Unweighted reconstruction terms of predicted keypoints against the batch's ground truth."""
        gt = batch["keypoints"]
        terms = {
            "keypoints": keypoint_loss(pred, gt),
            "bone_length": bone_length_loss(pred, gt),
            "root_bone_angle": root_bone_angle_loss(pred, gt),
            "root_plane_angle": root_plane_angle_loss(pred, gt),
            "all_bone_angle": all_bone_angle_loss(pred, gt),
        }
        if halo_needed and self.has_halo:
            terms["inter"] = self._inter(pred, batch)
        if self.hparams.use_contact_loss:
            terms["contact"] = contact_loss(
                pred, gt, batch["object_points"], self.hparams.contact_threshold_m
            )
        return terms

    def _placed(self, keypoints: torch.Tensor) -> torch.Tensor:
        """The keypoints the placement terms (interpenetration, prior contact) see: with
        ``inter_gradient=rigid`` their gradient only moves and turns the hand; the reconstruction and
        anatomy terms shape it."""
        if self.hparams.get("inter_gradient", "all") == "rigid":
            return rigid_gradient_only(keypoints)
        return keypoints

    def _inter(self, keypoints: torch.Tensor, batch: dict) -> torch.Tensor:
        hp = self.hparams
        keypoints = self._placed(keypoints)
        return interpenetration_loss(
            self.halo_model,
            keypoints,
            batch["inside_points"],
            hp.inter_threshold,
            plausible_hands(keypoints),
            mode=hp.get("inter_mode", "threshold"),
            near_hand_points=hp.get("inter_near_hand_points"),
            logit_scale=self.inter_logit_scale,
            exact_gradient=hp.get("inter_exact_gradient", False),
            rank_candidates=hp.get("inter_rank_candidates"),
        )

    def inter_schedule(self) -> float:
        """Factor [0..1] on the interpenetration weights: 0 for the first ``inter_start_steps``, then
        a linear ramp over ``inter_warmup_steps`` (the reconstruction finds hand-shaped, diverse
        grasps first; the term then moves them out).  Measured: switched on from step 0, the
        term's large gradients slow the reconstruction (keypoint loss 17-20 vs 6 at 1500 steps)."""
        warmup = int(self.hparams.get("inter_warmup_steps", 0) or 0)
        start = int(self.hparams.get("inter_start_steps", 0) or 0)
        if not self.training:
            return 1.0
        step = self.schedule_step if self.schedule_step is not None else self.global_step
        if step < start:
            return 0.0
        if warmup <= 0:
            return 1.0
        return min(1.0, (step - start + 1) / warmup)

    def _weighted(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        w = self.hparams.loss_weights
        ramp = self.inter_schedule()
        total = 0.0
        for name, value in terms.items():
            if (name == "inter" and not self.hparams.use_inter_loss) or (
                name.startswith("prior_") and not self.hparams.use_prior_inter_loss
            ):
                continue  # measured for comparison, not trained on
            total = total + w[name] * (ramp if name in ("inter", "prior_inter") else 1.0) * value
        return total

    def losses(self, batch: dict, sample: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor], Any]:
        """(total, unweighted terms, VaeOutput).  ``sample``: z ~ q (training) or the posterior mean."""
        out = self.vae(batch["keypoints"], batch["object_points"], sample=sample)
        if self.training and sample and out.z.shape[0] > 1:
            # The training posterior's running Gaussian: what `sample(latent="fitted")` draws from.
            self.vae.update_latent_statistics(out.z)
        # Before inter_start_steps the HALO terms weigh 0: not computed at all (HALO is the step's cost).
        halo_on = not self.training or self.inter_schedule() > 0.0
        want_inter = (self.hparams.use_inter_loss and halo_on) or not self.training
        terms = self._terms(out.keypoints, batch, want_inter)
        terms["kl"] = kl_divergence(out.mean, out.logstd)
        if self.has_halo and halo_on and (self.hparams.use_prior_inter_loss or not self.training):
            terms.update(self.prior_terms(batch, out.object_code))
        total = self._weighted(terms)
        if self.hparams.train_refine_net and self.hparams.refine_steps > 0:
            refine_terms = self.refine_losses(batch, out.object_code.detach())
            terms["refine"] = self._weighted(refine_terms)
            total = total + self.hparams.loss_weights["refine"] * terms["refine"]
        return total, terms, out

    def prior_terms(self, batch: dict, object_code: torch.Tensor) -> dict[str, torch.Tensor]:
        """Terms on grasps decoded from z ~ N(0, I), i.e. on what generation produces (seeded in
        validation, so ``val/prior_inter_loss`` compares across runs and configurations).

        ``prior_inter``: :func:`halo.grasp.halo_terms.interpenetration_loss`.  ``prior_anatomy``: the
        pose-independent hand-shape terms against the batch's ground-truth hand (bone lengths, root-bone
        angles, root-plane angles, with their reconstruction weights).  Without it the decoder learns to
        escape the interpenetration term on prior samples by producing hands the frozen HALO base
        cannot read (too short bones, broken palms: empty occupancy, so zero interpenetration).
        """
        generator = None if self.training else torch.Generator().manual_seed(4321)
        z = torch.randn(object_code.shape[0], self.vae.config.z_dim, generator=generator).to(object_code)
        keypoints = self.vae.decode(z, object_code)
        gt = batch["keypoints"]
        w = self.hparams.loss_weights
        return {
            "prior_inter": self._inter(keypoints, batch),
            "prior_contact": prior_contact_loss(self._placed(keypoints), batch["object_points"]),
            "prior_anatomy": w["bone_length"] * bone_length_loss(keypoints, gt)
            + w["root_bone_angle"] * root_bone_angle_loss(keypoints, gt)
            + w["root_plane_angle"] * root_plane_angle_loss(keypoints, gt),
        }

    def refine_losses(self, batch: dict, object_code: torch.Tensor) -> dict[str, torch.Tensor]:
        """Terms of the refinement net's output from noisy ground truth (object code detached: the
        refinement trains only itself, so the VAE is the same with and without it)."""
        hp = self.hparams
        generator = None
        if not self.training:  # the same noise at every validation
            generator = torch.Generator().manual_seed(1234)
        noisy = perturb_for_refinement(
            batch["keypoints"],
            joint_noise_m=hp.refine_joint_noise_m,
            shift_max_m=hp.refine_shift_max_m,
            mode=hp.refine_noise,
            generator=generator,
        )
        refined = self.vae.refine(noisy, batch["object_points"], hp.refine_steps, object_code=object_code)
        return self._terms(refined, batch, hp.use_inter_loss)

    # ------------------------------------------------------------------ fit
    def fit_skeleton_template(self, keypoints: torch.Tensor | np.ndarray) -> None:
        """Kinematic decoder: bones and palm = the mean skeleton of ``keypoints`` (N,21,3) metres
        (the training grasps); stored in the ``vae.decoder.template_*`` buffers of the checkpoint."""
        self.vae.set_skeleton_template(fit_template(torch.as_tensor(np.asarray(keypoints))))

    def on_train_start(self) -> None:
        if self.vae.config.decoder != "kinematic" or self.vae.decoder.template_fitted:
            return
        loader = self.trainer.train_dataloader
        keypoints = getattr(getattr(loader, "dataset", None), "keypoints", None)
        if keypoints is None:  # any other loader: its first batch
            keypoints = next(iter(loader))["keypoints"]
        self.fit_skeleton_template(keypoints)
        rank_zero_info(f"HALO-VAE: kinematic skeleton template fitted to {len(keypoints)} training hands")

    def on_train_epoch_start(self) -> None:
        n = self.hparams.encoder_freeze_after_epochs
        if n is not None and not self._encoder_frozen and self.current_epoch >= n:
            self.vae.object_encoder.requires_grad_(False)
            self._encoder_frozen = True
            rank_zero_info(
                f"HALO-VAE: object encoder frozen from epoch {self.current_epoch} (after {n} epochs)"
            )

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        total, terms, _ = self.losses(batch, sample=True)
        self.log_train_losses(total, terms, batch)
        return total

    def batch_counts(self, batch: dict) -> dict[str, int]:
        return {"samples": batch["keypoints"].shape[0]}

    # ------------------------------------------------------------------ validation / test
    def _evaluate(self, batch: dict, prefix: str) -> None:
        total, terms, out = self.losses(batch, sample=False)
        bsz = batch["keypoints"].shape[0]
        error_cm = (out.keypoints - batch["keypoints"]).norm(dim=-1).mean() * 100.0
        # Epoch values are batch-size-weighted means over the (seeded) validation set.
        log = dict(on_step=False, on_epoch=True, batch_size=bsz, sync_dist=True)
        self.log(f"{prefix}/loss", total, prog_bar=True, **log)
        self.log(f"{prefix}/keypoint_error_cm", error_cm, **log)
        for name, value in terms.items():
            self.log(f"{prefix}/{name}_loss", value, **log)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    # ------------------------------------------------------------------ optimization
    def configure_optimizers(self):
        # Only the VAE's parameters: the frozen HALO base is not a submodule at all.
        return torch.optim.Adam(
            self.vae.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
