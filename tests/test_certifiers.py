"""SegCertify and the per-pixel baseline: exact decisions and the statistical guarantee."""
import numpy as np
import pytest
import torch
from scipy.stats import binom, norm

from certframe.interfaces import ABSTAIN, CertifyRequest
from certframe.plugins.certifiers.cohen_per_pixel import CohenPerPixel
from certframe.plugins.certifiers.segcertify import SegCertify
from certframe.smoothing import SmoothedSegmenter
from certframe.statistics import binomial_pvalues, holm_reject
from conftest import ThresholdSegmenter


class FixedVotes:
    """A VoteSource returning given counts, recording what was asked."""

    def __init__(self, selection, estimation):
        self.num_classes = selection.shape[0]
        self.data = {"selection": selection, "estimation": estimation}
        self.asked = []

    def counts(self, phase, n, start=0):
        self.asked.append((phase, n, start))
        assert self.data[phase].sum(0).eq(n).all()
        return self.data[phase]


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
    sel = torch.zeros(2, 1, 4, dtype=torch.long); sel[1] = 10
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
# ThresholdSegmenter + no denoiser: P(class 1 at pixel i) = Phi((x_i - 0.5) / sigma) exactly.
# An image has every pixel's top-class probability exactly at tau (the worst case for a
# test of H0: p <= tau) plus a block of clearly certifiable pixels. A pixel certified as c
# with p(c) <= tau is wrongly certified. SegCertify promises P(any wrong pixel) <= alpha.

SIGMA, TAU, ALPHA, TRIALS = 0.25, 0.75, 0.1, 200


def boundary_image(side=16):
    x = torch.full((1, side, side), 0.5 + SIGMA * norm.ppf(TAU))   # p(class 1) = tau exactly
    x[:, : side // 4] = 1.0                                         # p(class 1) = Phi(2) = 0.977
    true_p1 = torch.from_numpy(norm.cdf((x[0].double().numpy() - 0.5) / SIGMA))
    return x, true_p1


def count_wrong_images(certifier, trials=TRIALS, n0=10, n=100):
    x, p1 = boundary_image()
    smoothed = SmoothedSegmenter(ThresholdSegmenter(), None, SIGMA)
    wrong = 0
    for trial in range(trials):
        cert = smoothed.certify(x, certifier, n0=n0, n=n, alpha=ALPHA, taus=(TAU,), batch_size=110,
                                seed=trial, image_id="boundary")[0]
        p_of_label = torch.where(cert.labels == 1, p1, 1 - p1)
        bad = (cert.labels != ABSTAIN) & (p_of_label <= TAU + 1e-12)
        wrong += int(bad.any())
    return wrong


def soundness_bound(trials=TRIALS, alpha=ALPHA):
    """Largest count of failing images a sound certifier (FWER <= alpha) reaches with prob. 1 - 1e-4."""
    return int(binom.ppf(1 - 1e-4, trials, alpha))


@pytest.mark.parametrize("certifier", [SegCertify("holm"), SegCertify("bonferroni"), CohenPerPixel()],
                         ids=["holm", "bonferroni", "cohen-per-pixel"])
def test_family_wise_error_stays_within_alpha(certifier):
    assert count_wrong_images(certifier) <= soundness_bound()


@pytest.mark.parametrize("certifier", [SegCertify("none"), CohenPerPixel(bonferroni=False)],
                         ids=["segcertify-uncorrected", "cohen-uncorrected"])
def test_same_check_fails_without_multiple_testing_correction(certifier):
    """The soundness test has power: dropping the correction breaks it."""
    assert count_wrong_images(certifier) > soundness_bound()


def test_certifiable_pixels_are_certified():
    """Not vacuous: the sound certifier does certify the clearly-above-tau block."""
    x, _ = boundary_image()
    cert = SmoothedSegmenter(ThresholdSegmenter(), None, SIGMA).certify(
        x, SegCertify(), n0=10, n=100, alpha=ALPHA, taus=(TAU,), seed=0, image_id="boundary")[0]
    assert (cert.labels[:4] == 1).float().mean() > 0.5
