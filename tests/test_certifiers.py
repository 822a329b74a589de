"""SegCertify and the per-pixel baseline: exact decisions and the statistical guarantee."""
import numpy as np
import pytest
import torch
from certifier_helpers import FixedVotes, error_lower_bound
from conftest import ThresholdSegmenter
from scipy.stats import binom, norm

from certframe.core.smoothing import SmoothedSegmenter
from certframe.core.statistics import binomial_pvalues, holm_reject
from certframe.interfaces import ABSTAIN, CertifyRequest, NoiseKey
from certframe.plugins.certifiers.cohen_per_pixel import CohenPerPixel
from certframe.plugins.certifiers.segcertify import SegCertify


def test_segcertify_exact_decisions():
    # 1 x 3 image, n0 = 10, n = 100; pixel votes for class 1: 100, 90, 70
    sel = torch.tensor([[[0, 1, 8]], [[10, 9, 2]]])            # selects 1, 1, 0
    est = torch.tensor([[[0, 10, 70]], [[100, 90, 30]]])       # k = 100, 90, 70
    votes = FixedVotes(sel, est)
    req = CertifyRequest(sigma=0.5, n0=10, n=100, alpha=0.001, taus=(0.75, 0.9))
    c75, c90 = SegCertify().certify(votes, req)
    assert votes.asked == [("selection", 10, 0), ("estimation", 100, 0)]
    p = binomial_pvalues(np.array([100, 90, 70]), 100, 0.75)
    assert torch.allclose(c75.pvalues[0], torch.tensor(p, dtype=torch.float64))
    expected = holm_reject(p, 0.001)                           # [True, True, False]
    assert expected.tolist() == [True, True, False]
    assert c75.labels.tolist() == [[1, 1, ABSTAIN]]
    assert c90.labels.tolist() == [[1, ABSTAIN, ABSTAIN]]      # P(Bin(100,.9) >= 90) > alpha
    assert c75.radius == pytest.approx(0.5 * norm.ppf(0.75))
    assert c90.radius == pytest.approx(0.5 * norm.ppf(0.9))
    assert c75.num_samples == 110 and c75.method == "segcertify"


def test_bonferroni_abstains_where_holm_certifies():
    # 4 pixels with p-values just around alpha/m: Holm gains from the step-down
    n, tau, alpha = 100, 0.75, 0.05
    ks = np.array([86, 86, 85, 85])
    p = binomial_pvalues(ks, n, tau)
    sel = torch.zeros(2, 1, 4, dtype=torch.long)
    sel[1] = 10
    est = torch.stack([torch.tensor(n - ks), torch.tensor(ks)]).view(2, 1, 4)
    req = CertifyRequest(sigma=0.25, n0=10, n=n, alpha=alpha, taus=(tau,))
    holm = SegCertify("holm").certify(FixedVotes(sel, est), req)[0]
    bonf = SegCertify("bonferroni").certify(FixedVotes(sel, est), req)[0]
    assert (holm.labels != ABSTAIN).sum() == holm_reject(p, alpha).sum()
    assert (bonf.labels != ABSTAIN).sum() == (p <= alpha / 4).sum()
    assert (holm.labels != ABSTAIN).sum() >= (bonf.labels != ABSTAIN).sum()


def test_cohen_per_pixel_radii():
    sel = torch.tensor([[[0, 10]], [[10, 0]]])
    est = torch.tensor([[[0, 100]], [[100, 0]]])
    req = CertifyRequest(sigma=0.5, n0=10, n=100, alpha=0.01, taus=(0.75,))
    cert = CohenPerPixel().certify(FixedVotes(sel, est), req)[0]
    assert cert.labels.tolist() == [[1, 0]]
    # k = n: pA_lower = (alpha/m)^(1/n), m = 2
    pa = (0.01 / 2) ** (1 / 100)
    assert cert.pixel_radius[0, 0].item() == pytest.approx(0.5 * norm.ppf(pa), rel=1e-9)


def test_unknown_correction_is_an_error():
    with pytest.raises(ValueError, match="correction must be one of"):
        SegCertify("fdr")


# --- The guarantee, checked statistically --------------------------------------------------
#
# What SegCertify promises, per image and tau: P(some certified pixel i has p_i(c_i) <= tau)
# <= alpha. The checks simulate the votes in closed form (BinomialVotes: K = 2, pixel i votes
# class 1 with known probability p1_i, counts are exact binomial draws), so 1,000 trials take
# a second. The image is the worst case for the test of H0: p <= tau: NULLS pixels with
# p1 exactly tau (true nulls: any certification of class 1 there is wrong) and a block of
# unanimous pixels (p1 = 1), which Holm certifies first, so that the nulls face Holm's
# largest thresholds (alpha / m0): the true family-wise error of Holm is then close to alpha.
#
# Pass criterion (certifier_helpers.error_lower_bound): with W wrong images in T trials, the
# one-sided 1 - DELTA Clopper-Pearson LOWER bound on the family-wise error must not exceed the
# stated alpha (a sound certifier fails with probability <= DELTA = 0.001; the seeds are
# fixed, so the tests are deterministic).
# Each check is shown to fail on a broken certifier: no correction, and Holm at 2 alpha.

SIGMA, TAU, ALPHA, TRIALS = 0.25, 0.75, 0.05, 1000


class BinomialVotes:
    """A VoteSource with K = 2 and known ``P(class 1)`` per pixel (``p1`` float64 ``[H, W]``).

    Each call draws fresh independent votes (exact binomials), as the sampler's disjoint draws are.
    """

    def __init__(self, p1, seed):
        self.num_classes = 2
        self.p1 = np.asarray(p1, dtype=np.float64)
        self.rng = np.random.Generator(np.random.Philox(key=seed))
        self.asked = []

    def counts(self, phase, n, start=0):
        self.asked.append((phase, n, start))
        k1 = self.rng.binomial(n, self.p1)
        return torch.from_numpy(np.stack([n - k1, k1])).long()


def worst_case_image(side=8, unanimous_rows=2, taus=(TAU,)):
    """``p1 [side, side]``: the first rows unanimous (1.0), the rest split evenly between the taus."""
    p1 = np.empty((side, side))
    p1[:unanimous_rows] = 1.0
    rest = np.arange((side - unanimous_rows) * side) % len(taus)
    p1[unanimous_rows:] = np.asarray(taus)[rest].reshape(side - unanimous_rows, side)
    return p1


def wrong_images(certifier, *, taus=(TAU,), n0=100, n=1000, trials=TRIALS, alpha=ALPHA, p1=None):
    """Per tau: the number of trials whose certificate has a wrongly certified pixel; and the draws used."""
    p1 = worst_case_image(taus=taus) if p1 is None else p1
    request = CertifyRequest(sigma=SIGMA, n0=n0, n=n, alpha=alpha, taus=taus)
    wrong = dict.fromkeys(taus, 0)
    used = []
    for trial in range(trials):
        certs = certifier.certify(BinomialVotes(p1, seed=trial), request)
        for cert in certs:
            p_of_label = np.where(cert.labels.numpy() == 1, p1, 1 - p1)
            wrong[cert.tau] += bool(((cert.labels.numpy() != ABSTAIN) & (p_of_label <= cert.tau)).any())
        used.append(certs[0].num_samples)
    return wrong, used


def within_alpha(wrong, trials=TRIALS, alpha=ALPHA):
    return error_lower_bound(wrong, trials) <= alpha


def test_pass_criterion_golden():
    # Beta(0.001; 65, 936) = 0.04337: 65 / 1000 wrong is consistent with alpha 0.05; the criterion
    # passes up to 73 / 1000 (lower bound 0.04999) and fails from 74 (0.05082)
    assert error_lower_bound(65, TRIALS) == pytest.approx(0.0433654, abs=1e-6)
    assert within_alpha(73) and not within_alpha(74) and within_alpha(0)
    # a certifier with true error 2 alpha = 0.1 passes with probability P(Bin(1000, 0.1) <= 73) < 0.003
    assert binom.cdf(73, 1000, 0.1) < 0.003


class HolmAtTwiceAlpha(SegCertify):
    """Broken on purpose: Holm at level 2 alpha (a modest overclaim, true error ~ 2 alpha)."""

    def certify(self, votes, request):
        certs = super().certify(votes, CertifyRequest(request.sigma, request.n0, request.n,
                                                      min(2 * request.alpha, 0.999), request.taus))
        return certs


SOUND = [SegCertify("holm"), SegCertify("bonferroni"), CohenPerPixel()]
BROKEN = [SegCertify("none"), CohenPerPixel(bonferroni=False), HolmAtTwiceAlpha()]


@pytest.mark.parametrize("certifier", SOUND, ids=["holm", "bonferroni", "cohen-per-pixel"])
def test_family_wise_error_stays_within_alpha(certifier):
    wrong, _ = wrong_images(certifier)
    assert within_alpha(wrong[TAU]), f"{wrong[TAU]} / {TRIALS} images wrong at alpha {ALPHA}"
    assert wrong[TAU] > 0 or certifier.correction == "bonferroni"    # the image does reach the nulls


@pytest.mark.parametrize("certifier", BROKEN, ids=["segcertify-uncorrected", "cohen-uncorrected", "holm-2alpha"])
def test_same_check_fails_on_a_broken_certifier(certifier):
    """The check has power: no correction, or Holm at twice alpha, fails it."""
    wrong, _ = wrong_images(certifier)
    assert not within_alpha(wrong[TAU]), f"{wrong[TAU]} / {TRIALS}"


def test_holm_error_is_close_to_alpha_on_this_image():
    """The image is a sharp test: Holm's exact family-wise error here (closed form) is near alpha,
    so a certifier overclaiming by 2x cannot hide in the slack."""
    m0, n, n0 = 48, 1000, 100
    select_1 = binom.sf(n0 // 2, n0, TAU)                  # class 1 selected (ties go to class 0)
    needed = np.nonzero(binomial_pvalues(np.arange(n + 1), n, TAU) <= ALPHA / m0)[0][0]
    q = binom.sf(needed - 1, n, TAU)                       # attained level of one null
    exact = 1 - (1 - select_1 * q) ** m0
    assert 0.8 * ALPHA < exact <= ALPHA


def test_certifiable_pixels_are_certified():
    """Not vacuous: through the real sampler, a sound certifier certifies the clearly-above-tau block."""
    x = torch.full((1, 16, 16), 0.5 + SIGMA * norm.ppf(TAU))        # p(class 1) = tau exactly
    x[:, :4] = 1.0                                                  # p(class 1) = Phi(2) = 0.977
    cert = SmoothedSegmenter(ThresholdSegmenter(), None, SIGMA).certify(
        x, SegCertify(), key=NoiseKey(0, "boundary"), n0=10, n=100, alpha=0.1, taus=(TAU,))[0]
    assert (cert.labels[:4] == 1).float().mean() > 0.5


def test_method_names_state_the_correction():
    assert (SegCertify().name, SegCertify().correction) == ("segcertify", "holm")
    assert (SegCertify("bonferroni").name, SegCertify("bonferroni").correction) == ("segcertify-bonferroni",
                                                                                   "bonferroni")
    assert (SegCertify("none").name, SegCertify("none").correction) == ("segcertify-none", "none")
    assert (CohenPerPixel().name, CohenPerPixel().correction) == ("cohen-per-pixel", "bonferroni")
    naive = CohenPerPixel(bonferroni=False)
    assert (naive.name, naive.correction) == ("cohen-per-pixel-uncorrected", "none")
    cert, = naive.certify(BinomialVotes(np.ones((2, 2)), 0), CertifyRequest(0.25, 10, 20, 0.05, (0.75,)))
    assert cert.method == "cohen-per-pixel-uncorrected" and cert.info["correction"] == "none"
    with pytest.raises(ValueError, match="bonferroni must be true or false, got 'no'"):
        CohenPerPixel(bonferroni="no")


def test_a_certifier_that_does_not_state_its_correction_reads_unstated():
    from certframe.interfaces import Certifier
    from certframe.plugins.certifiers.adaptive import AdaptiveSegCertify

    class Quiet(Certifier):
        def certify(self, votes, request):
            return []

    assert Quiet().correction == "unstated"
    assert AdaptiveSegCertify().correction == "holm+bonferroni-spending"
    unspent = AdaptiveSegCertify(spending="none")
    assert (unspent.name, unspent.correction) == ("adaptive-unspent", "holm+no-spending")


def test_segcertify_selection_ties_go_to_the_lowest_class():
    # selection counts per pixel (classes 0, 1, 2): (2, 4, 4) -> 1, (4, 2, 4) -> 0, (2, 2, 6) -> 2;
    # two classes: (5, 5) -> 0. The same as argmax over the classes.
    for selection, expected in ((torch.tensor([[2, 4, 2], [4, 2, 2], [4, 4, 6]]), [1, 0, 2]),
                                (torch.tensor([[5, 3, 7], [5, 7, 3]]), [0, 1, 0])):
        selection = selection.unsqueeze(1)                          # [K, 1, 3]
        labels = torch.tensor(expected).unsqueeze(0)
        estimation = torch.zeros_like(selection).scatter_(0, labels.unsqueeze(0), 100)
        certs = SegCertify().certify(FixedVotes(selection, estimation), CertifyRequest(0.25, 10, 100, 0.001))
        assert certs[0].labels.tolist() == [expected] == selection.argmax(0).tolist()
