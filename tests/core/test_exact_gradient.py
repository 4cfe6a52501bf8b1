"""HaloModel.forward(exact_gradient=True): the same logits as the original's forward, and the true keypoint gradient."""

import numpy as np
import torch

from halo.core.canonicalization import canonicalize
from halo.core.model import HaloModel, NetworkConfig
from halo.fit.priors import REST_KEYPOINTS


def _hand(seed: int = 0) -> torch.Tensor:
    """A bent, rotated, translated skeleton (float64)."""
    rng = np.random.default_rng(seed)
    kp = REST_KEYPOINTS + rng.normal(0, 0.004, REST_KEYPOINTS.shape)
    kp[0] = 0.0
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    return torch.tensor((kp @ q.T + [0.05, -0.02, 0.3])[None])


def _model() -> HaloModel:
    torch.manual_seed(0)
    return HaloModel(NetworkConfig(hidden_dims=(32, 32), residual_layers=(1,))).double().eval()


def test_attached_canonicalization_has_the_values_of_the_original():
    kp = _hand()
    for is_left in (None, torch.tensor([True])):
        ours, theirs = canonicalize(kp, is_left, attached=True), canonicalize(kp, is_left)
        for name in (
            "normalization",
            "part_transforms",
            "bone_lengths",
            "bone_angles",
            "normalized_keypoints",
        ):
            torch.testing.assert_close(getattr(ours, name), getattr(theirs, name), atol=1e-9, rtol=1e-9)


def test_exact_logits_equal_the_model_and_their_gradient_matches_finite_differences():
    model = _model()
    kp0 = _hand(1)
    pts = kp0[:, [0, 5, 9, 12, 16, 20]].repeat_interleave(20, dim=1)
    pts = pts + torch.tensor(np.random.default_rng(2).normal(0, 0.01, pts.shape))

    @torch.no_grad()
    def value(kp):
        return float(total(kp))

    def total(kp, exact=True):
        logits = model.forward(pts, kp, return_parts=True, exact_gradient=exact).part_logits
        return logits.max(dim=-1).values.sum()

    torch.testing.assert_close(total(kp0), total(kp0, exact=False))
    kp = kp0.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(total(kp), kp)
    (plain,) = torch.autograd.grad(total(kp, exact=False), kp)
    # Directions: the whole hand moved along x, and the index tip moved alone.
    moves = [torch.zeros_like(kp0), torch.zeros_like(kp0)]
    moves[0][..., 0] = 1.0
    moves[1][0, 8] = torch.tensor([0.3, -0.5, 0.8], dtype=kp0.dtype)
    eps = 1e-6
    for move in moves:
        fd = (value(kp0 + eps * move) - value(kp0 - eps * move)) / (2 * eps)
        assert abs(float((grad * move).sum()) - fd) <= 1e-4 * max(1.0, abs(fd))
    # HALO's own keypoint gradient (normalization detached) misses the hand's global motion.
    fd = (value(kp0 + eps * moves[0]) - value(kp0 - eps * moves[0])) / (2 * eps)
    assert abs(float((plain * moves[0]).sum()) - fd) > 1e-2 * abs(fd)
