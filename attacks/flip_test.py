"""The sound test at an attacked image x': is p(certified class | x') below 1/2?

A certificate (Cohen et al. ICML 2019, Theorem 1; per pixel: Fischer et al. ICML
2021) that pixel i keeps class c_i within ``||x' - x||_2 < R`` implies, when it is
right, ``p_i(c_i | x') > 1/2`` for every such x' (the lower bound
``Phi(Phi^-1(p_A) - ||delta||_2 / sigma)`` stays above 1/2 inside the radius). So a
pixel i attacked inside its radius is a *violation* when, with fresh noise draws
independent of the certificate's (and of the attack's), we can reject

    H0_i: p_i(c_i | x'_i) >= 1/2    in favour of    H1_i: p_i(c_i | x'_i) < 1/2.

Per tested pixel: k_i = votes for c_i among ``n`` fresh draws at x'_i; the exact
one-sided binomial p-value is ``P(Binomial(n, 1/2) <= k_i)`` (largest under H0 at
p = 1/2 exactly, so the worst case of H0 is p = 1/2); Holm's step-down procedure
(Holm 1979) over the m tested pixels of one (image, certificate) keeps the
family-wise false-alarm rate at ``level``. The reported one-sided Clopper-Pearson
upper bound ``U_i`` (confidence ``1 - level / m``) is the same test read as an
interval: ``U_i < 1/2`` iff ``P(Binomial(n, 1/2) <= k_i) < level / m`` (the
Clopper-Pearson / exact binomial duality), i.e. Bonferroni's threshold, which is
Holm's first one.

:func:`default_n_test` sizes ``n`` so that a pixel whose true probability is
``p_alt`` (default 0.44) is rejected with probability ``>= power`` (default 0.9) at
the Bonferroni-corrected level ``level / m`` (Holm is never less powerful).

All functions are pure numpy / scipy and vectorised over pixels.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import binom

from certframe.core.statistics import check_alpha, check_count, check_counts, clopper_pearson_upper, holm_reject

DEFAULT_LEVEL = 0.001
DEFAULT_P_ALT = 0.44
DEFAULT_POWER = 0.9


def flip_pvalues(k, n: int) -> np.ndarray:
    """Exact one-sided p-values ``P(Binomial(n, 1/2) <= k)`` of H0: p >= 1/2, elementwise.

    Equals ``scipy.stats.binomtest(k, n, 0.5, alternative="less").pvalue``.
    """
    n = check_count("n", n)
    return binom.cdf(check_counts(k, n), n, 0.5)


def flip_test(k, n: int, level: float = DEFAULT_LEVEL,
              correction: str = "holm") -> tuple[np.ndarray, np.ndarray]:
    """Test H0_i: p_i >= 1/2 for m pixels with k_i of n fresh votes for their certified class.

    k: int ``[m]`` (or ``[..., m]``: independent families, e.g. simulated trials).
    Returns ``(rejected bool, upper float64)`` of k's shape: Holm (``correction="holm"``,
    the default) at family-wise level ``level`` over the m pixels of each family, and
    the one-sided Clopper-Pearson upper bounds at confidence ``1 - level / m``
    (:func:`certframe.core.statistics.holm_reject` along the last axis and
    :func:`certframe.core.statistics.clopper_pearson_upper`). m = 0
    gives empty arrays. ``correction="none"`` (each pixel at ``level``) exists only to
    show, in the tests, that the correction is needed.
    """
    level = check_alpha(level)
    k = np.asarray(k)
    if k.ndim == 0:
        k = k.reshape(1)
    if k.size == 0:
        return np.zeros(k.shape, dtype=bool), np.zeros(k.shape)
    p = flip_pvalues(k, n)
    if correction == "holm":
        rejected = holm_reject(p, level, axis=-1)
    elif correction == "none":
        rejected = p <= level
    else:
        raise ValueError(f"correction must be 'holm' or 'none', got {correction!r}")
    return rejected, clopper_pearson_upper(k, n, level / k.shape[-1])


def critical_count(n: int, level: float) -> int:
    """Largest k with ``P(Binomial(n, 1/2) <= k) <= level`` (-1 when even k = 0 is not rejected)."""
    n = check_count("n", n)
    k = int(binom.ppf(level, n, 0.5))
    while k >= 0 and binom.cdf(k, n, 0.5) > level:
        k -= 1
    while k + 1 <= n and binom.cdf(k + 1, n, 0.5) <= level:
        k += 1
    return k


def flip_test_power(n: int, level: float, p_alt: float = DEFAULT_P_ALT) -> float:
    """Chance that the exact test at ``level`` rejects H0: p >= 1/2 when p = ``p_alt``."""
    return float(binom.cdf(critical_count(n, level), n, p_alt))


def default_n_test(pixels: int, level: float = DEFAULT_LEVEL, p_alt: float = DEFAULT_P_ALT,
                   power: float = DEFAULT_POWER, max_n: int = 1_000_000) -> int:
    """Smallest n at which the exact test at ``level / pixels`` has ``power`` against ``p_alt``.

    pixels: m, the number of pixels tested together (Holm over them; the first Holm
    threshold, Bonferroni's ``level / m``, is used for the size). level, p_alt in
    (0, 1) with p_alt < 1/2; power in (0, 1). Example: ``default_n_test(8)`` (level
    0.001, p_alt 0.44, power 0.9) = 1696 draws per pixel (tests pin this value).
    """
    m = int(pixels)
    if m < 1:
        raise ValueError(f"pixels must be a number of tested pixels >= 1, got {pixels!r}")
    level, power = check_alpha(level), check_alpha(power)
    if not 0.0 < float(p_alt) < 0.5:
        raise ValueError(f"p_alt must be a probability below 1/2 (the violation to resolve), got {p_alt}")
    a = level / m
    hi = 1024
    while True:
        ns = np.arange(1, hi + 1)
        kcrit = binom.ppf(a, ns, 0.5).astype(np.int64)
        # binom.ppf gives the smallest k with cdf >= a: step back where cdf(k) > a
        kcrit = np.where(binom.cdf(kcrit, ns, 0.5) > a, kcrit - 1, kcrit)
        pw = np.where(kcrit >= 0, binom.cdf(kcrit, ns, p_alt), 0.0)
        ok = np.nonzero(pw >= power)[0]
        if ok.size:
            return int(ns[ok[0]])
        if hi >= max_n:
            raise ValueError(f"no n <= {max_n} reaches power {power} against p = {p_alt} at level {a:.3g}")
        hi = min(max_n, hi * 4)

