"""The statistics of SegCertify, as small pure functions.

Fischer, Baader, Vechev, "Scalable Certified Segmentation via Randomized
Smoothing", ICML 2021. For every pixel i with selected class c_i and k_i of n
estimation votes for c_i, test H0: p_i(c_i) <= tau with the one-sided exact
binomial p-value ``P(Binomial(n, tau) >= k_i)``; correct over all pixels of the
image (Holm or Bonferroni) at family-wise level ``alpha``. A rejected H0 means
``p_i(c_i) > tau``, hence (Cohen et al. 2019) the pixel keeps c_i for every
perturbation of L2 norm < ``sigma * Phi^-1(tau)``.

All functions are vectorised: one scipy call builds the p-value of every possible
count ``0..n`` and pixels index into that table, so a 256x256 image costs one
table of n+1 values plus a sort.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
from scipy.special import ndtri
from scipy.stats import beta, binom

CORRECTIONS = ("holm", "bonferroni", "none")


def check_sigma(sigma: float) -> float:
    """A noise level: a finite float > 0 (inf or nan would give an infinite or undefined radius)."""
    try:
        value = float(sigma)
    except (TypeError, ValueError):
        raise ValueError(f"sigma must be a positive noise level (finite, > 0), got {sigma!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"sigma must be a positive noise level (finite, > 0), got {sigma!r}")
    return value


def check_tau(tau: float) -> float:
    try:
        tau = float(tau)
    except (TypeError, ValueError):
        raise ValueError(f"tau must lie in the open interval (0.5, 1), got {tau!r}") from None
    if not (0.5 < tau < 1.0) or math.isnan(tau):
        raise ValueError(f"tau must lie in the open interval (0.5, 1), got {tau}")
    return tau


def check_alpha(alpha: float) -> float:
    try:
        alpha = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"alpha must lie in the open interval (0, 1), got {alpha!r}") from None
    if not (0.0 < alpha < 1.0) or math.isnan(alpha):
        raise ValueError(f"alpha must lie in the open interval (0, 1), got {alpha}")
    return alpha


def check_count(name: str, n: int) -> int:
    try:
        ok = not isinstance(n, (bool, str)) and int(n) == n and int(n) >= 1
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be a positive integer number of samples, got {n!r}")
    return int(n)


def check_counts(k: torch.Tensor | np.ndarray, n: int) -> np.ndarray:
    """Vote counts out of n draws as int64 numpy (any shape); ValueError unless every one lies in ``0..n``."""
    k = k.detach().cpu().numpy() if isinstance(k, torch.Tensor) else np.asarray(k)
    if k.size and (k.min() < 0 or k.max() > n):
        raise ValueError(f"vote counts must lie in 0..n={n}, got range {k.min()}..{k.max()}")
    return k.astype(np.int64)


def smallest_certifying_n(tau: float, alpha: float) -> int:
    """The smallest n with ``tau**n <= alpha``: below it not even n votes of n certify a pixel.

    k = n is the best count a pixel can have, and its p-value ``P(Binomial(n, tau) >= n)`` is
    ``tau**n``. Necessary, not sufficient: with Holm or Bonferroni over m pixels the smallest
    p-value is compared with ``alpha / m``, so a whole image needs more.
    """
    tau, alpha = check_tau(tau), check_alpha(alpha)
    n = max(1, math.ceil(math.log(alpha) / math.log(tau)))
    while tau ** n > alpha:             # the logarithms may be off by one ulp either way
        n += 1
    while n > 1 and tau ** (n - 1) <= alpha:
        n -= 1
    return n


def certified_radius(sigma: float, tau: float) -> float:
    """``R = sigma * Phi^-1(tau)`` (Cohen et al. 2019, Theorem 1 with p_A = tau)."""
    return float(sigma) * float(ndtri(check_tau(tau)))      # ndtri = norm.ppf, without its overhead


def binomial_pvalues(k: torch.Tensor | np.ndarray, n: int, tau: float) -> np.ndarray:
    """One-sided exact binomial p-values ``P(Binomial(n, tau) >= k)``, elementwise.

    k: integer array of any shape with values in ``0..n``. Returns float64 of the
    same shape; equals ``scipy.stats.binomtest(k, n, tau, alternative='greater').pvalue``.
    """
    n = check_count("n", n)
    return upper_tail_table(n, float(tau))[check_counts(k, n)]


@functools.lru_cache(maxsize=64)
def upper_tail_table(n: int, tau: float) -> np.ndarray:
    """``P(Binomial(n, tau) >= j)`` for ``j = 0..n`` (float64 ``[n + 1]``, read-only, cached:
    every image of a run, and every look of the adaptive certifier, asks for the same few)."""
    table = binom.sf(np.arange(n + 1) - 1, n, tau)
    table.setflags(write=False)
    return table


def holm_reject(pvalues: np.ndarray, alpha: float, axis: int | None = None) -> np.ndarray:
    """Holm's step-down procedure (Holm 1979) at family-wise error ``alpha``.

    Sort the m p-values ascending; reject p_(1..j) where j is the largest index
    such that p_(i) <= alpha / (m - i + 1) for every i <= j. Returns bool of the
    input's shape: True where H0 is rejected (the pixel is certified).

    axis: None (default): all the p-values form one family. -1: each slice along the last
    axis is its own family (``[..., m]``, e.g. many simulated trials), vectorised over them.

    One family: only p-values <= alpha can pass (every threshold is at most alpha), and they
    are the smallest, so only they are sorted (values, not indices); the rejections are then
    the p-values <= the last one that passed (:func:`_holm_cutoff`).
    """
    p = np.asarray(pvalues, dtype=np.float64)
    if axis is None:
        flat = p.ravel()
        candidates = np.sort(flat[flat <= alpha])
        return p <= _holm_cutoff(candidates, np.arange(candidates.size), flat.size, alpha)
    if p.ndim == 0 or axis not in (-1, p.ndim - 1):
        raise ValueError(f"holm_reject: axis must be None (one family) or -1 (families along the last axis), "
                         f"got {axis!r} for p-values of shape {p.shape}")
    m = p.shape[-1]
    cutoff = _holm_cutoff(np.sort(p, axis=-1), np.arange(m), m, alpha)
    return p <= cutoff[..., None]


def holm_reject_counts(k: np.ndarray, table: np.ndarray, alpha: float) -> np.ndarray:
    """:func:`holm_reject` of the p-values ``table[k]``, from the histogram of the integer counts ``k``.

    k: integers in ``0..len(table)-1`` (any shape); table: the p-value of each count (e.g.
    :func:`upper_tail_table`). The same decisions as ``holm_reject(table[k], alpha)``, in
    O(m + n) instead of a sort of the m p-values: the sorted p-values are runs of equal
    values, one per count that occurs, taken in the table's ascending order.
    """
    k = np.asarray(k)
    table = np.asarray(table, dtype=np.float64)
    p = table[k]
    order = np.argsort(table, kind="stable")
    sizes = np.bincount(k.ravel(), minlength=table.size)[order]
    occurs = sizes > 0
    values, sizes = table[order][occurs], sizes[occurs]
    return p <= _holm_cutoff(values, np.cumsum(sizes) - sizes, k.size, alpha)


def _holm_cutoff(values: np.ndarray, ranks: np.ndarray, m: int, alpha: float) -> np.ndarray:
    """The largest p-value Holm rejects, from ascending p-values and their 0-based ranks (NaN: none).

    ``values[..., j]`` is the p-value at rank ``ranks[j]`` among all m of its family (the
    leading axes, if any, index independent families): every p-value of the family (ranks
    ``0..``), or the first of each run of equal ones. Holm passes rank i when
    ``p_(i) <= alpha / (m - i)`` and every smaller rank passed. Within a run of equal values
    the thresholds grow, so the run passes exactly when its first member does; and a value
    equal to the last one that passed passes too (its threshold is larger). So the
    rejections are exactly the p-values <= the returned cutoff (none for NaN: every
    comparison with NaN is False). Returns float64 of ``values.shape[:-1]``.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.shape[-1] == 0:
        return np.full(values.shape[:-1], np.nan)
    passed = values <= alpha / (m - ranks)
    j = np.where(passed.all(axis=-1), passed.shape[-1], np.argmin(passed, axis=-1))
    last = np.take_along_axis(values, np.maximum(j - 1, 0)[..., None], axis=-1)[..., 0]
    return np.where(j > 0, last, np.nan)


def bonferroni_reject(pvalues: np.ndarray, alpha: float) -> np.ndarray:
    """Reject where ``p <= alpha / m`` (m = number of tests)."""
    p = np.asarray(pvalues, dtype=np.float64)
    return p <= alpha / max(p.size, 1)


def uncorrected_reject(pvalues: np.ndarray, alpha: float) -> np.ndarray:
    """Reject where ``p <= alpha``: NO multiple-testing correction.

    Only the per-pixel error is bounded, not the image's; kept to show (and test)
    why a correction is needed.
    """
    return np.asarray(pvalues, dtype=np.float64) <= alpha


def reject(pvalues: np.ndarray, alpha: float, correction: str = "holm") -> np.ndarray:
    """Dispatch to the named multiple-testing correction."""
    alpha = check_alpha(alpha)
    if correction == "holm":
        return holm_reject(pvalues, alpha)
    if correction == "bonferroni":
        return bonferroni_reject(pvalues, alpha)
    if correction == "none":
        return uncorrected_reject(pvalues, alpha)
    raise ValueError(f"correction must be one of {CORRECTIONS}, got {correction!r}")


def clopper_pearson_lower(k: torch.Tensor | np.ndarray, n: int, alpha: float) -> np.ndarray:
    """One-sided ``(1 - alpha)`` Clopper-Pearson lower bound on a binomial proportion.

    ``Beta(alpha; k, n - k + 1)`` (0 where k = 0), as in Cohen et al.'s
    ``_lower_confidence_bound``. Vectorised through a table over ``k = 0..n``.
    """
    k = k.detach().cpu().numpy() if isinstance(k, torch.Tensor) else np.asarray(k)
    return clopper_pearson_lower_table(check_count("n", n), float(alpha))[k.astype(np.int64)]


@functools.lru_cache(maxsize=64)
def clopper_pearson_lower_table(n: int, alpha: float) -> np.ndarray:
    """:func:`clopper_pearson_lower` for ``k = 0..n`` (float64 ``[n + 1]``, read-only, cached)."""
    ks = np.arange(n + 1)
    with np.errstate(invalid="ignore"):
        table = np.where(ks == 0, 0.0, beta.ppf(alpha, np.maximum(ks, 1), n - ks + 1))
    table.setflags(write=False)
    return table


def clopper_pearson_upper(k: torch.Tensor | np.ndarray, n: int, alpha: float) -> np.ndarray:
    """One-sided ``(1 - alpha)`` Clopper-Pearson upper bound on a binomial proportion from k of n.

    ``Beta(1 - alpha; k + 1, n - k)`` (1 where k = n), elementwise over ``k`` (any shape, values
    in ``0..n``). The one copy for the falsification test (:mod:`certframe.attacks.flip_test`)
    and the adaptive certifier's futility bound (through :func:`clopper_pearson_upper_table`).
    """
    n = check_count("n", n)
    k = check_counts(k, n)
    alpha = check_alpha(alpha)
    with np.errstate(invalid="ignore"):
        return np.where(k >= n, 1.0, beta.ppf(1 - alpha, k + 1, np.maximum(n - k, 1)))


@functools.lru_cache(maxsize=256)
def clopper_pearson_upper_table(n: int, alpha: float) -> np.ndarray:
    """:func:`clopper_pearson_upper` for ``k = 0..n`` (float64 ``[n + 1]``, read-only, cached:
    every image of a run asks for the same few)."""
    table = clopper_pearson_upper(np.arange(n + 1), n, alpha)
    table.setflags(write=False)
    return table
