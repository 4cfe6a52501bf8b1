"""Diversity of a set of grasps: k-means entropy and cluster size of canonicalized keypoints.

The one definition used by ``halo generate grasps``, ``halo eval grasps`` and the grasp-validation
callback (:func:`grasp_diversity`), built on HALO's measure (:func:`cluster_analysis`,
``evaluate_cluster.py`` in korrawe/halo; ``data_formats_and_metrics.md`` B4).

The k rule, decided once here (:func:`diversity_k`): k = min(k asked, N // 2), at least 1.
With k close to N nearly every hand gets its own cluster and the entropy is ~ln k whatever the
hands look like, so it measures the sample count, not the grasps.  At least two hands per
cluster on average keeps the number meaningful, and HALO's own protocol (k = 20 over 20 grasps
per object of several objects, N >= 40) is unaffected.  The k used is reported next to every
entropy (its maximum is ln k).

The result does not depend on the order of the hands: :func:`grasp_diversity` sorts them first, so a
folder read back in file-name order gives the numbers the generator printed.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from halo.core.canonicalization import apply_transform, global_normalization
from halo.core.skeleton import plausible_skeletons

__all__ = [
    "ClusterStats",
    "Diversity",
    "cluster_analysis",
    "diversity_k",
    "grasp_diversity",
]

M_TO_CM = 100.0
KMEANS_INITS = ("random", "k-means++")


@dataclass(frozen=True)
class ClusterStats:
    """k-means diversity of a set of hands (HALO's ``evaluate_cluster.diversity``)."""

    entropy: float  # nats, of the cluster-size histogram; max ln(k)
    cluster_size_cm: float  # mean distance of a hand's features to its cluster centre
    counts: np.ndarray  # (k,) hands per cluster (zeros for clusters k-means left empty or merged)
    k: int  # clusters asked for
    n_samples: int = 0

    @property
    def max_entropy(self) -> float:
        return math.log(self.k)

    def as_dict(self) -> dict:
        return {
            "entropy": self.entropy,
            "max_entropy": self.max_entropy,
            "cluster_size_cm": self.cluster_size_cm,
            "k": self.k,
            "n_samples": self.n_samples,
            "counts": [int(c) for c in self.counts],
        }


def canonical_features_cm(keypoints: np.ndarray, canonicalize: bool = True) -> np.ndarray:
    """(N,63) flattened keypoints in cm, optionally in the canonical hand frame (global pose removed)."""
    if not canonicalize:
        return keypoints.reshape(len(keypoints), -1) * M_TO_CM
    kp = torch.from_numpy(np.asarray(keypoints, dtype=np.float64))
    canon = apply_transform(global_normalization(kp), kp).numpy()
    return canon.reshape(len(canon), -1) * M_TO_CM


def _kmeans_centres(features: np.ndarray, k: int, rng: np.random.Generator, init: str, n_init: int):
    if init == "random":
        # HALO's protocol: scipy's kmeans, k random hands as initial centres, lowest distortion kept.
        from scipy.cluster.vq import kmeans  # noqa: PLC0415

        try:
            return kmeans(features, k, iter=n_init, rng=rng)[0]
        except TypeError:  # SciPy < 1.15 calls the generator argument ``seed``
            return kmeans(features, k, iter=n_init, seed=rng)[0]
    from sklearn.cluster import KMeans  # noqa: PLC0415
    from sklearn.exceptions import ConvergenceWarning  # noqa: PLC0415

    with warnings.catch_warnings():
        # Fewer distinct hands than k: duplicate centres, merged below.
        warnings.simplefilter("ignore", ConvergenceWarning)
        fit = KMeans(k, init="k-means++", n_init=n_init, random_state=int(rng.integers(2**31 - 1))).fit(
            features
        )
    return fit.cluster_centers_


def cluster_analysis(
    keypoints: np.ndarray,
    k: int = 20,
    seed: int | np.random.Generator | None = 0,
    canonicalize: bool = True,
    *,
    init: str = "random",
    n_init: int = 20,
    merge_tol_cm: float = 1e-3,
) -> ClusterStats:
    """Diversity of hands as the entropy of a k-means clustering of their keypoints (k as given).

    Each hand (21 keypoints, metres, MANO order) is moved to the canonical hand frame
    (:func:`halo.core.canonicalization.global_normalization`: wrist at the origin, palm frame
    fixed; this removes the global pose, so only the articulation counts), flattened to
    63 features in cm (no whitening) and clustered; hands are assigned to the nearest centre
    (``scipy.cluster.vq.vq``).  ``entropy`` = ``scipy.stats.entropy`` (natural log) of the
    hands-per-cluster histogram (max ln k ~ 3.00 for k=20), ``cluster_size_cm`` = mean distance
    of the hands to their assigned centre.

    Args:
        keypoints: (N,21,3) metres, N >= k.  With ``canonicalize=False`` any (N,...) array
            of features in metres is accepted (flattened, x100).
        k: clusters (HALO: 20).
        seed: seed or numpy Generator for the k-means initialisation.
        canonicalize: remove the global pose first (HALO does).
        init: "random" = ``scipy.cluster.vq.kmeans`` (k random hands as initial centres,
            ``n_init`` restarts, lowest distortion kept): HALO's protocol.  With many tight, equal
            clusters it often merges two clusters and leaves one split (a local minimum),
            so it underestimates the entropy of very clustered sets.  "k-means++" =
            scikit-learn's ``KMeans`` with k-means++ seeding and ``n_init`` restarts (finds
            well-separated clusters reliably).
        n_init: k-means restarts.
        merge_tol_cm: centres closer than this are merged before assigning.  Without it,
            hands that are identical up to rounding (the same articulation in several global
            poses) would be split across clusters by round-off and look diverse; with it they
            form one cluster (entropy 0).  Real clusters are centimetres apart, so the
            default 10 micrometres changes nothing else.
    """
    from scipy.cluster.vq import vq  # noqa: PLC0415
    from scipy.sparse.csgraph import connected_components  # noqa: PLC0415
    from scipy.spatial.distance import cdist  # noqa: PLC0415
    from scipy.stats import entropy  # noqa: PLC0415

    keypoints = np.asarray(keypoints, dtype=np.float64)
    if canonicalize and (keypoints.ndim != 3 or keypoints.shape[1:] != (21, 3)):
        raise ValueError(f"keypoints must have shape (N, 21, 3) in metres, got {keypoints.shape}")
    if keypoints.ndim < 2:
        raise ValueError(f"keypoints must have shape (N, ...) with one row per hand, got {keypoints.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n = len(keypoints)
    if n < k:
        raise ValueError(f"cluster analysis needs at least k={k} hands, got {n} (lower k or add hands)")
    if not np.isfinite(keypoints).all():
        raise ValueError("keypoints contain NaN or infinite values")
    if init not in KMEANS_INITS:
        raise ValueError(f"init must be 'random' or 'k-means++', got {init!r}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    features = canonical_features_cm(keypoints, canonicalize)
    centres = _kmeans_centres(features, k, rng, init, n_init)

    # Merge (near-)coincident centres, then recompute each merged centre from its hands.
    adjacency = cdist(centres, centres) <= merge_tol_cm
    n_groups, group = connected_components(adjacency, directed=False)
    if n_groups < len(centres):
        labels, _ = vq(features, centres)
        merged = group[labels]
        centres = np.stack([features[merged == g].mean(0) for g in range(n_groups) if (merged == g).any()])
    labels, dist = vq(features, centres)
    counts = np.bincount(labels, minlength=k)
    return ClusterStats(
        entropy=float(entropy(counts)),
        cluster_size_cm=float(dist.mean()),
        counts=counts,
        k=k,
        n_samples=n,
    )


def diversity_k(k: int, n_hands: int) -> int:
    """The k used for ``n_hands`` hands when ``k`` is asked: min(k, n_hands // 2), at least 1 (module docstring)."""
    return max(1, min(int(k), int(n_hands) // 2))


@dataclass(frozen=True)
class Diversity:
    """:func:`grasp_diversity`'s answer: the clustering of the usable hands, or why there is none."""

    k_requested: int
    n_hands: int  # hands given
    n_used: int  # hands with a defined canonical frame (see plausible_skeletons)
    init: str
    seed: int
    stats: ClusterStats | None = None
    skipped: str | None = None  # why there is no clustering (then entropy etc. are NaN)

    @property
    def k(self) -> int:
        return self.stats.k if self.stats is not None else 0

    @property
    def entropy(self) -> float:
        return self.stats.entropy if self.stats is not None else math.nan

    @property
    def cluster_size_cm(self) -> float:
        return self.stats.cluster_size_cm if self.stats is not None else math.nan

    @property
    def max_entropy(self) -> float:
        return self.stats.max_entropy if self.stats is not None else math.nan

    def line(self) -> str:
        """One sentence for reports and logs."""
        if self.stats is None:
            return f"diversity over {self.n_hands} grasps: skipped ({self.skipped})"
        return (
            f"diversity over {self.n_used} grasps: entropy {self.entropy:.3f} nats (k={self.k}, max "
            f"{self.max_entropy:.3f}), cluster size {self.cluster_size_cm:.3f} cm"
        )

    def as_dict(self) -> dict:
        out = {
            "k": self.k,
            "k_requested": self.k_requested,
            "n_hands": self.n_hands,
            "n_used": self.n_used,
            "init": self.init,
            "seed": self.seed,
        }
        if self.stats is None:
            out["skipped"] = self.skipped
        else:
            out.update(self.stats.as_dict())
        return out


def grasp_diversity(keypoints: np.ndarray, k: int = 20, seed: int = 0, init: str = "random") -> Diversity:
    """Diversity of grasps (N,21,3), metres: :func:`cluster_analysis` with k = :func:`diversity_k`.

    Hands without a canonical frame (non-finite, a bone under 1 mm, parallel root bones:
    :func:`halo.core.skeleton.plausible_skeletons`) are left out and counted in ``n_used``;
    fewer than 2 usable hands give no clustering (``skipped`` says why).  The hands are sorted
    first, so the result depends on the set of hands, not on their order.
    """
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if init not in KMEANS_INITS:
        raise ValueError(f"init must be 'random' or 'k-means++', got {init!r}")
    kp = np.asarray(keypoints, dtype=np.float64)
    if kp.size == 0:
        kp = kp.reshape(0, 21, 3)
    if kp.ndim != 3 or kp.shape[1:] != (21, 3):
        raise ValueError(f"keypoints must have shape (N, 21, 3) in metres, got {kp.shape}")
    n = len(kp)
    usable = plausible_skeletons(torch.from_numpy(kp)).numpy() if n else np.zeros(0, dtype=bool)
    kp = kp[usable]
    info = {"k_requested": int(k), "n_hands": n, "n_used": len(kp), "init": init, "seed": int(seed)}
    if len(kp) < 2:
        dropped = n - len(kp)
        reason = f"{len(kp)} usable grasp(s), need at least 2" + (
            f" ({dropped} left out: degenerate skeleton, no canonical frame)" if dropped else ""
        )
        return Diversity(**info, skipped=reason)
    order = np.lexsort(kp.reshape(len(kp), -1).T[::-1])  # order-independent: sort the hands themselves
    stats = cluster_analysis(kp[order], k=diversity_k(k, len(kp)), seed=seed, init=init)
    return Diversity(**info, stats=stats)
