"""The paired bootstrap confidence interval of a difference in mean score between two methods on the same images."""
from __future__ import annotations

import numpy as np


def paired_bootstrap_ci(a, b, *, n_boot: int = 10_000, level: float = 0.95,
                        seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``a - b`` over images and its percentile bootstrap CI, resampling IMAGES (pairs kept together).

    a, b: per-image scores of two methods on the same images, in the same order (equal length >= 1).
    n_boot resamples of the images with replacement, drawn from ``numpy.random.default_rng(seed)``, so
    the interval is reproducible; level: the two-sided coverage. The CI covers the variation over
    images only, not that between training runs of the models. Returns ``(mean difference, lower, upper)``.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"need two equal-length 1-D score lists, got shapes {a.shape} and {b.shape}")
    d = a - b
    idx = np.random.default_rng(seed).integers(0, len(d), size=(n_boot, len(d)))
    means = d[idx].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(d.mean()), float(lo), float(hi)
