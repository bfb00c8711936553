"""Client-side differential privacy: clip each site's update and add Gaussian noise.

Each round a site sends ``global + clip(update) + N(0, sigma^2 I)`` instead of its model. The
update's L2 norm is bounded by ``C = dp-clip``, so one site's whole contribution has
sensitivity C, and the Gaussian mechanism (Dwork & Roth, 2014, Thm. A.1) with
``sigma = C * sqrt(2 ln(1.25 / delta)) / epsilon`` makes each round (epsilon, delta)-DP for
that site (the bound holds for epsilon < 1). Over R rounds basic composition gives
(R * epsilon, R * delta); the run log records both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DpReport:
    """What one site's DP step did this round (goes into the run log)."""

    clip: float
    sigma: float
    epsilon: float
    delta: float
    norm_before: float
    norm_after_clip: float


def gaussian_sigma(clip: float, epsilon: float, delta: float) -> float:
    """Noise standard deviation of the Gaussian mechanism for L2 sensitivity ``clip``."""
    return clip * math.sqrt(2.0 * math.log(1.25 / delta)) / epsilon


def privatize_update(
    new: Sequence[np.ndarray],
    old: Sequence[np.ndarray],
    clip: float,
    epsilon: float,
    delta: float,
    rng: np.random.Generator,
    private: Sequence[bool] | None = None,
) -> tuple[list[np.ndarray], DpReport]:
    """Return ``old + clip(new - old) + noise`` for every floating-point array.

    Integer arrays (BatchNorm's batch counters) carry no gradient information and are sent as
    they are. ``private`` marks arrays that never leave the site at all (FedBN's local BN):
    they are left out of the norm and get no noise, since the server never sees them.
    """
    mask = [
        np.issubdtype(np.asarray(n).dtype, np.floating) and not (private and private[i])
        for i, n in enumerate(new)
    ]
    deltas = [
        np.asarray(n, dtype=np.float64) - np.asarray(o, dtype=np.float64) if m else None
        for n, o, m in zip(new, old, mask, strict=True)
    ]
    norm = math.sqrt(sum(float(np.sum(d * d)) for d in deltas if d is not None))
    scale = min(1.0, clip / norm) if norm > 0 else 1.0
    sigma = gaussian_sigma(clip, epsilon, delta)
    out: list[np.ndarray] = []
    for n, o, d in zip(new, old, deltas, strict=True):
        if d is None:
            out.append(np.asarray(n))
            continue
        noisy = np.asarray(o, dtype=np.float64) + d * scale + rng.normal(0.0, sigma, d.shape)
        out.append(noisy.astype(np.asarray(n).dtype))
    report = DpReport(
        clip=clip,
        sigma=sigma,
        epsilon=epsilon,
        delta=delta,
        norm_before=norm,
        norm_after_clip=norm * scale,
    )
    return out, report
