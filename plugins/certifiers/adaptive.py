"""Adaptive SegCertify: a group-sequential test that stops sampling an image early.

SegCertify (Fischer, Baader, Vechev, ICML 2021) always draws n estimation samples.
Most pixels of an easy image are decided long before that: they are unanimously
one class (certifiable with far fewer draws) or clearly too uncertain to ever pass
the test. :class:`AdaptiveSegCertify` looks at the votes at a pre-declared schedule
of sample sizes ``n_1 < n_2 < ... < n_L = n`` and stops drawing for the image as soon
as every pixel is *resolved* at every tau asked (certified, or futile: it provably
cannot be certified), or as soon as the rest can change the certificate by less than
``dice_tolerance`` in expected Dice (step 4). It is a group-sequential test (Jennison & Turnbull, "Group
Sequential Methods", 2000) with Bonferroni alpha spending over the looks and Holm
(1979) over the pixels at each look; sequential certification in the spirit of
anytime-valid randomized smoothing (Voracek, NeurIPS 2024), here in its simplest
sound form.

Algorithm (one image, one tau; every tau of a request runs the same rule on the
same draws):

1. Selection: ``n0`` draws of phase ``"selection"``; ``c_i`` = most frequent class of
   pixel i (ties to the lowest class).
2. For look j = 1..L: draw estimation samples ``n_{j-1} .. n_j - 1`` (phase
   ``"estimation"``, so draw t is the same draw SegCertify's draw t would be);
   ``k_i`` = votes for ``c_i`` among the first ``n_j``; ``p_i = P(Binomial(n_j, tau) >= k_i)``.
   Set ``p_i = 0`` for pixels certified at an earlier look and run Holm's step-down
   over all m = H*W pixels at level ``alpha_j`` (``sum_j alpha_j = alpha``; default
   ``alpha_j = alpha / L``). Rejected pixels not yet futile are certified as ``c_i``.
3. Futility (power only, never soundness): a pixel whose one-sided ``1 - beta``
   Clopper-Pearson upper bound ``U_i`` on ``p_i(c_i)`` is ``<= tau`` (it is provably not
   above tau), or for which even ``k_i + U_i (n_L - n_j)`` votes at the last look would
   stay below the count that look needs at Holm's threshold for the first pixel not yet
   certified (``alpha_L / (m - r)``, r = pixels certified so far), is marked futile: it
   abstains and is never certified later.
4. Stop after look j (before the last) when, at every tau, the certificate is good
   enough: every pixel is certified or futile, or at most ``tolerance`` of the pixels
   are still open, or its *expected Dice shortfall* is at most ``dice_tolerance``.
   The shortfall compares the certificate now with the one all ``n_L`` draws would
   give: each open pixel would be certified with the plug-in chance
   ``P(k_i + Binomial(n_L - n_j, k_i / n_j) >= needed)`` (needed = the count of step 3),
   so for class c with C certified pixels and expected gain G (the sum of those chances
   over its open pixels) the Dice between the two certificates is about ``2C/(2C + G)``;
   the shortfall is the largest ``G / (2C + G)`` over classes. Pixels not certified when
   sampling stops abstain.

Why a Dice criterion: on real images the pixels along a segmentation boundary have
probabilities close to what n draws can certify. They stay open until the last look,
so "stop when every pixel is resolved" (``dice_tolerance=0``) saves nothing there,
and a budget in pixels (``tolerance``) treats a thin boundary of a large organ like a
small polyp. The shortfall asks the question a user of certified Dice asks: how much
would the certificate still change? ``benchmarks/adaptive_vs_fixed.py`` measures the
trade-off (draws saved vs certified Dice lost against ground truth).

Guarantee (per tau, as SegCertify): with probability ``>= 1 - alpha`` over the draws
every certified pixel i satisfies ``p_i(c_i) > tau``, hence keeps ``c_i`` for every L2
perturbation of norm ``< sigma * Phi^-1(tau)``.

Proof sketch. Condition on the selection draws (independent of the estimation
draws), so ``c_i`` and the set ``I0 = {i : p_i(c_i) <= tau}`` of true null pixels
(``m0 = |I0|``) are fixed. Imagine all ``n_L`` estimation draws made; the rule's
decisions at look j use only the first ``n_j``, so stopping early only removes
looks, and futility only removes certifications: the certified set is a subset of
the certified set of the full, L-look run without futility. Let F be the first look
at which that run certifies a true null. Before F every certified pixel is a false
null, so the ``p = 0`` substitution at look F changes only false-null p-values, and
Holm (whatever the false-null p-values are) rejects a true null only if
``min_{i in I0} p_i^(F) <= alpha_F / m0`` (the first true null rejected faces a
threshold ``alpha_F / (m - r + 1)`` with at most ``r - 1 <= m - m0`` rejections before it).
So ``{some true null certified} ⊆ ∪_j A_j`` with
``A_j = {min_{i in I0} p_i^(j) <= alpha_j / m0}``, an event about the fixed sample
size ``n_j``, where each exact binomial p-value is super-uniform under ``p_i <= tau``:
``P(A_j) <= m0 * alpha_j / m0 = alpha_j``. Summing, ``P(error) <= sum_j alpha_j = alpha``.
Nothing in the argument depends on the stopping rule, the futility rule, or the other
taus of the request, so those can use any information (they only cost power).
Testing every look at the full alpha (``spending="none"``) breaks the union bound:
the error rate grows with the number of looks (tests show it).

Options:
    looks: the cumulative estimation sample sizes ``[n_1, ..., n_L]`` (increasing,
        ``n_L`` = the request's ``n``; a list whose last element is not n is an error),
        or None (default) for a geometric schedule ``n_1, n_1 r, n_1 r^2, ..., n``
        (:func:`geometric_looks`) from the first useful look ``n_1``
        (:func:`first_useful_look`: the fewest draws at which a unanimous pixel passes
        Holm's first threshold ``alpha / (max_looks m)``, never below ``min_look``),
        ``r = ratio`` (default 1.5), at most ``max_looks`` (default 12) looks. The
        schedule depends only on the request and the image size, never on the votes.
    spending: ``"bonferroni"`` (alpha_j = alpha / L, default), ``"weighted"`` (alpha_j
        proportional to ``weights``) or ``"none"`` (full alpha at every look: NOT sound,
        kept to demonstrate why spending is needed).
    futility_beta: level of the futility bound (default 0.001). Affects only how many
        pixels end up certified and when sampling stops, never the guarantee.
    dice_tolerance: stop once the expected Dice shortfall (step 4) is at most this,
        in [0, 1); default 0.01 (the certificate is expected within 1 Dice point of
        the one all n draws would give); 0 = off.
    tolerance: fraction of pixels in [0, 1) that may still be undecided when sampling
        stops (they abstain); default 0 = off. With both off the certifier stops only
        when every pixel is resolved.

Votes: int64 ``[K, H, W]`` counts from a :class:`~certframe.interfaces.VoteSource`;
returns one :class:`~certframe.core.certificate.Certificate` per tau with labels int64
``[H, W]`` (class or ABSTAIN), ``num_samples = n0 + estimation draws used``,
``pvalues`` float64 ``[H, W]``: for a certified pixel the raw p-value at the DECIDING
look (the look that certified it, ``P(Binomial(n_j, tau) >= k_i)``), for any other pixel
the p-value at the last look made; ``correction`` ``"holm+<spending>-spending"``; and in
``info``: ``looks`` (the looks made), ``schedule`` (all looks), ``alpha_per_look``,
``stopped_at`` (estimation draws used), ``certified_per_look``, ``futile`` (pixel
count) and ``expected_dice_shortfall`` (at the look where sampling stopped; 0 after
the last look, where nothing is left to draw).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from scipy.special import bdtrc

from certframe.core.certificate import Certificate
from certframe.core.statistics import (
    binomial_pvalues,
    certified_radius,
    check_alpha,
    clopper_pearson_upper_table,
    holm_reject,
    upper_tail_table,
)
from certframe.interfaces import ABSTAIN, Certifier, CertifyRequest, VoteSource

SPENDINGS = ("bonferroni", "weighted", "none")


def geometric_looks(n: int, first: int, ratio: float = 1.5, max_looks: int = 12) -> list[int]:
    """``[first, first*r, first*r^2, ..., n]`` (rounded up, strictly increasing), at most ``max_looks``.

    ``r = ratio``, raised to ``(n / first)^(1 / (max_looks - 1))`` when ``ratio`` would
    need more looks. Looks are cheap in alpha: Bonferroni spending over L looks tests
    each at ``alpha / L``, and with Holm over m pixels the per-pixel level
    ``alpha / (L m)`` moves the count a pixel needs by about ``sqrt(log L)`` standard
    deviations; a finer grid lets an image stop closer to where it is resolved.
    """
    n, first = int(n), int(first)
    if ratio <= 1:
        raise ValueError(f"ratio must be > 1, got {ratio}")
    if first >= n or max_looks <= 1:
        return [n]
    r = max(float(ratio), (n / first) ** (1.0 / (max_looks - 1)))
    looks, v = [], float(first)
    while math.ceil(v) < n and len(looks) < max_looks - 1:
        step = math.ceil(v)
        if not looks or step > looks[-1]:
            looks.append(step)
        v *= r
    return looks + [n]


def check_looks(looks: Sequence[int], n: int) -> list[int]:
    """Validate a look schedule: positive, strictly increasing integers ending at ``n``."""
    looks = [int(v) for v in looks]
    if not looks or any(v < 1 for v in looks) or any(b <= a for a, b in zip(looks, looks[1:])):
        raise ValueError(f"looks must be strictly increasing positive sample sizes, got {looks}")
    if looks[-1] != n:
        raise ValueError(f"the last look must equal the request's n={n} (the most draws the certifier "
                         f"may use), got looks {looks}")
    return looks


def alpha_spending(alpha: float, num_looks: int, spending: str = "bonferroni",
                   weights: Sequence[float] | None = None) -> list[float]:
    """The error level ``alpha_j`` of each look; they sum to ``alpha`` (except ``"none"``)."""
    alpha = check_alpha(alpha)
    if spending == "bonferroni":
        return [alpha / num_looks] * num_looks
    if spending == "weighted":
        if weights is None or len(weights) != num_looks or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"spending='weighted' needs {num_looks} non-negative weights (one per look), "
                             f"got {weights}")
        total = float(sum(weights))
        return [alpha * float(w) / total for w in weights]
    if spending == "none":
        return [alpha] * num_looks
    raise ValueError(f"spending must be one of {SPENDINGS}, got {spending!r}")


def min_certifiable_count(n: int, tau: float, level: float) -> int:
    """Smallest k in 0..n with ``P(Binomial(n, tau) >= k) <= level`` (n + 1 if none)."""
    table = upper_tail_table(int(n), float(tau))        # decreasing in k
    ok = np.nonzero(table <= level)[0]
    return int(ok[0]) if ok.size else n + 1


def first_useful_look(m: int, alpha: float, taus: Sequence[float], num_looks: int) -> int:
    """Smallest n at which a unanimous pixel passes Holm's first threshold at every tau.

    ``tau^n <= alpha / (num_looks * m)`` for the largest tau: fewer draws cannot certify
    any pixel at a look tested at ``alpha / num_looks``, so a look there only spends alpha.
    Depends on the request, never on the votes (the schedule stays pre-declared).
    """
    level = float(alpha) / (int(num_looks) * max(int(m), 1))
    return max(1, math.ceil(math.log(level) / math.log(max(taus))))


def certification_chance(k: np.ndarray, n_j: int, n_last: int, needed: int) -> np.ndarray:
    """Plug-in chance that a pixel with ``k`` of ``n_j`` votes reaches ``needed`` votes at ``n_last``.

    ``P(k + X >= needed)`` with ``X ~ Binomial(n_last - n_j, k / n_j)``: the votes still
    to come, at the pixel's observed rate. A stopping heuristic (it never enters a test).
    """
    k = np.asarray(k, dtype=np.int64)
    x, rest = needed - k - 1, n_last - n_j
    # bdtrc(x, N, p) = P(X > x) = scipy.stats.binom.sf without its argument checks (3x faster); nan for x > N
    return np.where(x >= rest, 0.0, bdtrc(np.minimum(x, rest), rest, k / n_j))


def expected_dice_shortfall(chance: np.ndarray, certified: np.ndarray, labels: np.ndarray,
                            num_classes: int) -> float:
    """How far (in Dice) the certificate now is expected to be from the one all draws would give.

    For each class c: C = pixels certified as c, G = sum of ``chance`` over the
    undecided pixels of class c (``chance`` is 0 elsewhere); the certified set all
    draws would give is about C + G pixels, containing the C of now, so their Dice is
    ``2C / (2C + G)``. Returns the largest ``G / (2C + G)`` over classes (0 where
    ``C + G = 0``). All arrays are flat over the m pixels.
    """
    worst = 0.0
    for c in range(int(num_classes)):
        of_c = labels == c
        got, gain = float((certified & of_c).sum()), float(chance[of_c].sum())
        if got + gain > 0:
            worst = max(worst, gain / (2 * got + gain))
    return worst


class AdaptiveSegCertify(Certifier):
    """SegCertify with early stopping: group-sequential looks, alpha spending, Holm per look.

    See the module docstring for the algorithm, its guarantee and the proof sketch.
    """

    def __init__(self, looks: Sequence[int] | None = None, spending: str = "bonferroni",
                 weights: Sequence[float] | None = None, futility_beta: float = 0.001,
                 dice_tolerance: float = 0.01, tolerance: float = 0.0, ratio: float = 1.5,
                 min_look: int = 16, max_looks: int = 12):
        if spending not in SPENDINGS:
            raise ValueError(f"spending must be one of {SPENDINGS}, got {spending!r}")
        if not 0.0 <= float(tolerance) < 1.0:
            raise ValueError(f"tolerance must be a fraction of pixels in [0, 1), got {tolerance}")
        if not 0.0 <= float(dice_tolerance) < 1.0:
            raise ValueError(f"dice_tolerance must be a Dice difference in [0, 1), got {dice_tolerance}")
        if float(ratio) <= 1.0:
            raise ValueError(f"ratio (between consecutive looks) must be > 1, got {ratio}")
        self.looks = None if looks is None else [int(v) for v in looks]
        self.spending = spending
        self.weights = None if weights is None else [float(w) for w in weights]
        self.futility_beta = check_alpha(futility_beta)
        self.dice_tolerance = float(dice_tolerance)
        self.tolerance = float(tolerance)
        self.ratio = float(ratio)
        self.min_look, self.max_looks = int(min_look), int(max_looks)
        if self.min_look < 1 or self.max_looks < 1:
            raise ValueError(f"min_look and max_looks must be >= 1, got {min_look}, {max_looks}")
        self.name = "adaptive" if spending != "none" else "adaptive-unspent"
        # Holm over the pixels at each look, alpha spent over the looks (none: NOT sound)
        self.correction = f"holm+{spending}-spending" if spending != "none" else "holm+no-spending"

    def schedule(self, request: CertifyRequest, m: int) -> list[int]:
        """The looks for ``request`` on an image of ``m`` pixels (fixed before any draw)."""
        if self.looks is not None:
            return check_looks(self.looks, request.n)
        first = max(self.min_look, first_useful_look(m, request.alpha, request.taus, self.max_looks))
        return geometric_looks(request.n, first, self.ratio, self.max_looks)

    def certify(self, votes: VoteSource, request: CertifyRequest) -> list[Certificate]:
        selection = votes.counts("selection", request.n0)
        c_hat = selection.argmax(dim=0)                                     # [H, W]
        shape = tuple(c_hat.shape)
        labels = c_hat.reshape(-1).cpu().numpy()
        num_classes = selection.shape[0]
        m = c_hat.numel()
        looks = self.schedule(request, m)
        alphas = alpha_spending(request.alpha, len(looks), self.spending, self.weights)
        taus = list(request.taus)
        certified = {t: np.zeros(m, dtype=bool) for t in taus}
        futile = {t: np.zeros(m, dtype=bool) for t in taus}
        per_look = {t: [] for t in taus}
        last_p = {t: np.ones(m) for t in taus}
        deciding_p = {t: np.ones(m) for t in taus}     # p of each pixel at the look that certified it
        shortfall = {t: 0.0 for t in taus}
        k = None
        used = 0
        for j, (n_j, alpha_j) in enumerate(zip(looks, alphas)):
            counts = votes.counts("estimation", n_j - used, start=used)
            new = counts.gather(0, c_hat.unsqueeze(0)).squeeze(0).reshape(-1).cpu().numpy()
            k = new if k is None else k + new
            used = n_j
            if j == len(looks) - 1:
                upper = None
            else:
                upper = clopper_pearson_upper_table(n_j, self.futility_beta)[k]
            resolved = True
            for tau in taus:
                p = binomial_pvalues(k, n_j, tau)
                last_p[tau] = p
                rejected = holm_reject(np.where(certified[tau], 0.0, p), alpha_j)
                fresh = rejected & ~certified[tau] & ~futile[tau]
                certified[tau] |= fresh
                deciding_p[tau][fresh] = p[fresh]
                per_look[tau].append(int(fresh.sum()))
                if upper is None:           # the last look: nothing left to draw
                    shortfall[tau] = 0.0
                    continue
                open_ = ~certified[tau] & ~futile[tau]
                if not open_.any():
                    shortfall[tau] = 0.0
                    continue
                needed = min_certifiable_count(looks[-1], tau, alphas[-1] / (m - int(certified[tau].sum())))
                hopeless = (upper <= tau) | (k + upper * (looks[-1] - n_j) < needed)
                futile[tau] |= open_ & hopeless
                open_ &= ~hopeless
                chance = np.zeros(m)
                chance[open_] = certification_chance(k[open_], n_j, looks[-1], needed)
                shortfall[tau] = expected_dice_shortfall(chance, certified[tau], labels, num_classes)
                enough = (int(open_.sum()) <= self.tolerance * m
                          or (self.dice_tolerance > 0 and shortfall[tau] <= self.dice_tolerance))
                resolved = resolved and enough
            if upper is not None and resolved:
                break
        certs = []
        for tau in taus:
            mask = torch.from_numpy(certified[tau].reshape(shape)).to(c_hat.device)
            out = torch.where(mask, c_hat, torch.full_like(c_hat, ABSTAIN))
            certs.append(Certificate(
                labels=out, radius=certified_radius(request.sigma, tau), tau=tau, sigma=request.sigma,
                alpha=request.alpha, method=self.name, num_samples=request.n0 + used,
                pvalues=torch.from_numpy(np.where(certified[tau], deciding_p[tau], last_p[tau]).reshape(shape)),
                info={"correction": self.correction, "spending": self.spending, "looks": looks[: len(per_look[tau])],
                      "schedule": looks, "alpha_per_look": alphas, "stopped_at": used,
                      "certified_per_look": per_look[tau], "futile": int(futile[tau].sum()),
                      "expected_dice_shortfall": shortfall[tau]}))
        return certs
