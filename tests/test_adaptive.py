"""The adaptive (group-sequential) certifier: exact decisions, early stopping, the guarantee."""
import numpy as np
import pytest
import torch
from conftest import ThresholdSegmenter
from scipy.stats import norm
from test_certifiers import ALPHA, SIGMA, TAU, TRIALS, within_alpha, worst_case_image, wrong_images

from certframe.core.smoothing import SmoothedSegmenter
from certframe.core.statistics import (
    binomial_pvalues,
    clopper_pearson_lower,
    clopper_pearson_upper_table,
    holm_reject,
)
from certframe.interfaces import ABSTAIN, CertifyRequest, NoiseKey
from certframe.plugins.certifiers.adaptive import (
    AdaptiveSegCertify,
    alpha_spending,
    certification_chance,
    check_looks,
    expected_dice_shortfall,
    first_useful_look,
    geometric_looks,
    min_certifiable_count,
)
from certframe.plugins.certifiers.segcertify import SegCertify
from certframe.registry import get_registry


def boundary_image(side=16):
    """Through the real sampler: p(class 1) = tau exactly, except a top block at Phi(2) = 0.977."""
    x = torch.full((1, side, side), 0.5 + SIGMA * norm.ppf(TAU))
    x[:, : side // 4] = 1.0
    return x


class LabelVotes:
    """A VoteSource over fixed label maps per phase (``[N, H, W]``): draw t is ``labels[t]``."""

    def __init__(self, num_classes, **phases):
        self.num_classes = num_classes
        self.phases = phases
        self.asked = []

    def counts(self, phase, n, start=0):
        self.asked.append((phase, n, start))
        labels = self.phases[phase][start:start + n]
        assert labels.shape[0] == n, f"asked draws {start}..{start + n - 1} of {phase}, have {len(labels)}"
        return torch.stack([(labels == c).sum(0) for c in range(self.num_classes)]).long()


def test_schedule_and_spending():
    assert geometric_looks(1000, 62) == [62, 93, 140, 210, 314, 471, 707, 1000]
    assert geometric_looks(100, 25, ratio=2) == [25, 50, 100]
    assert geometric_looks(10, 62) == [10] and geometric_looks(100, 10, max_looks=1) == [100]
    # too many looks at ratio 1.5: the ratio grows to (n / first)^(1 / 3)
    assert geometric_looks(1000, 8, max_looks=4) == [8, 40, 200, 1000]
    # 0.75^62 = 1.8e-8 <= 1e-3 / (12 * 4096) = 2.03e-8 < 0.75^61; at tau 0.9: 0.9^169
    assert first_useful_look(4096, 1e-3, (0.75,), 12) == 62
    assert first_useful_look(4096, 1e-3, (0.75, 0.9), 12) == 169
    req = CertifyRequest(sigma=0.25, n0=10, n=1000, alpha=1e-3, taus=(0.75,))
    assert AdaptiveSegCertify().schedule(req, 64 * 64) == [62, 93, 140, 210, 314, 471, 707, 1000]
    assert AdaptiveSegCertify(looks=[100, 1000]).schedule(req, 64 * 64) == [100, 1000]
    assert AdaptiveSegCertify(min_look=500).schedule(req, 64 * 64) == [500, 750, 1000]
    assert alpha_spending(0.01, 4) == [0.0025] * 4
    assert alpha_spending(0.01, 2, "weighted", [1, 3]) == pytest.approx([0.0025, 0.0075])
    assert alpha_spending(0.01, 3, "none") == [0.01] * 3
    with pytest.raises(ValueError, match="last look must equal the request's n=100"):
        check_looks([10, 50], 100)
    with pytest.raises(ValueError, match="strictly increasing"):
        check_looks([50, 50, 100], 100)
    with pytest.raises(ValueError, match="spending must be one of"):
        AdaptiveSegCertify(spending="pocock")
    with pytest.raises(ValueError, match="needs 2 non-negative weights"):
        alpha_spending(0.01, 2, "weighted", [1])
    with pytest.raises(ValueError, match="tolerance"):
        AdaptiveSegCertify(tolerance=1.0)
    with pytest.raises(ValueError, match="dice_tolerance must be a Dice difference in \\[0, 1\\), got -0.1"):
        AdaptiveSegCertify(dice_tolerance=-0.1)
    with pytest.raises(ValueError, match="ratio"):
        AdaptiveSegCertify(ratio=1.0)


def test_certification_chance_and_dice_shortfall_golden():
    # 8 of 10 votes; 10 draws to come at rate 0.8; 17 needed: P(Bin(10, .8) >= 9) = .8^10 + 10 * .8^9 * .2
    chance = certification_chance(np.array([8, 10, 0]), 10, 20, 17)
    assert chance == pytest.approx([0.8 ** 10 + 10 * 0.8 ** 9 * 0.2, 1.0, 0.0])
    labels = np.array([0, 0, 1, 1, 1])
    certified = np.array([True, True, True, False, False])
    # class 0: C = 2, G = 0; class 1: C = 1, G = 0.75 -> 0.75 / 2.75
    assert expected_dice_shortfall(np.array([0, 0, 0, 0.5, 0.25]), certified, labels, 2) == pytest.approx(3 / 11)
    assert expected_dice_shortfall(np.zeros(5), np.zeros(5, bool), labels, 3) == 0.0


def test_bounds_pinned():
    # upper CP bound is 1 - lower CP bound of the complementary count
    n, beta = 40, 0.01
    up = clopper_pearson_upper_table(n, beta)
    low = clopper_pearson_lower(np.arange(n + 1), n, beta)
    assert np.allclose(up, 1 - low[::-1])
    assert up[0] == pytest.approx(1 - beta ** (1 / n))
    # P(Bin(20, .75) >= 20) = .75^20 = 0.00317 <= 0.005 < P(>= 19)
    assert min_certifiable_count(20, 0.75, 0.005) == 20
    assert min_certifiable_count(20, 0.75, 0.001) == 21


def test_stops_at_first_look_when_everything_is_unanimous():
    # 1 x 3 image; class 1, 1, 0 in every draw
    draw = torch.tensor([[1, 1, 0]])
    votes = LabelVotes(2, selection=draw.expand(10, 1, 3), estimation=draw.expand(400, 1, 3))
    req = CertifyRequest(sigma=0.5, n0=10, n=400, alpha=0.01, taus=(0.75,))
    cert = AdaptiveSegCertify(looks=[50, 100, 200, 400]).certify(votes, req)[0]
    assert votes.asked == [("selection", 10, 0), ("estimation", 50, 0)]
    assert cert.labels.tolist() == [[1, 1, 0]]
    assert cert.num_samples == 60 and cert.info["stopped_at"] == 50
    assert cert.info["certified_per_look"] == [3]
    # P(Bin(50, .75) >= 50) = .75^50 = 5.7e-7 <= 0.01 / 4 / 3
    assert cert.pvalues[0, 0].item() == pytest.approx(0.75 ** 50)


def test_futile_pixels_stop_sampling_and_abstain():
    # pixel 0: always 1 (certifiable); pixel 1: class 1 in 60% of draws (provably below .75)
    n = 400
    sel = torch.tensor([[1, 1]]).expand(10, 1, 2)
    est = torch.ones(n, 1, 2, dtype=torch.long)
    est[:, 0, 1] = (torch.arange(n) % 5 < 3).long()        # 3 of every 5 draws
    votes = LabelVotes(2, selection=sel, estimation=est)
    req = CertifyRequest(sigma=0.5, n0=10, n=n, alpha=0.01, taus=(0.75,))
    cert = AdaptiveSegCertify(looks=[50, 100, 200, 400], futility_beta=0.01).certify(votes, req)[0]
    # at 50 draws: k = 30, upper 99% CP bound of 30/50 is 0.75 < ... check it decides futility there
    assert clopper_pearson_upper_table(50, 0.01)[30] <= 0.77
    assert cert.labels.tolist() == [[1, ABSTAIN]]
    assert cert.info["futile"] == 1
    assert cert.info["stopped_at"] < n
    assert votes.asked[-1][1] + votes.asked[-1][2] == cert.info["stopped_at"]


def test_stops_once_the_certificate_is_within_dice_tolerance():
    # 1 x 101 image of class 1: 100 unanimous pixels and one with 80% of the votes, which
    # is neither certifiable early nor futile; it moves the class-1 Dice by <= 1 / 201
    n, looks = 400, [50, 100, 200, 400]
    est = torch.ones(n, 1, 101, dtype=torch.long)
    est[:, 0, 100] = (torch.arange(n) % 5 < 4).long()
    req = CertifyRequest(sigma=0.5, n0=10, n=n, alpha=0.01, taus=(0.75,))

    def run(**kw):
        votes = LabelVotes(2, selection=torch.ones(10, 1, 101, dtype=torch.long), estimation=est)
        return AdaptiveSegCertify(looks=looks, **kw).certify(votes, req)[0]

    early = run()                                   # default dice_tolerance = 0.01
    assert early.info["stopped_at"] == 50 and early.num_samples == 60
    needed = min_certifiable_count(400, 0.75, 0.01 / 4 / 1)
    chance = certification_chance(np.array([40]), 50, 400, needed)[0]
    assert 0.05 < chance < 0.95
    assert early.info["expected_dice_shortfall"] == pytest.approx(chance / (200 + chance))
    full = run(dice_tolerance=0.0)                  # wait until every pixel is resolved
    assert full.info["stopped_at"] == 400 and full.info["looks"] == looks
    for cert in (early, full):
        assert cert.labels[0, :100].eq(1).all() and cert.labels[0, 100] == ABSTAIN


def test_the_draws_continue_where_the_last_look_ended():
    draw = torch.tensor([[1, 0]])
    est = draw.expand(100, 1, 2).clone()
    est[:, 0, 0] = (torch.arange(100) % 10 < 8).long()     # 80%: neither certified nor futile early
    votes = LabelVotes(2, selection=draw.expand(5, 1, 2), estimation=est)
    req = CertifyRequest(sigma=0.5, n0=5, n=100, alpha=0.05, taus=(0.75,))
    AdaptiveSegCertify(looks=[20, 40, 100], futility_beta=1e-6).certify(votes, req)
    assert votes.asked == [("selection", 5, 0), ("estimation", 20, 0), ("estimation", 20, 20),
                           ("estimation", 60, 40)]


def test_one_look_is_exactly_segcertify():
    """With one look at n the adaptive certifier makes SegCertify's decisions on the same draws."""
    x = boundary_image()
    smoothed = SmoothedSegmenter(ThresholdSegmenter(), None, SIGMA)
    for seed in range(3):
        kw = dict(n0=10, n=100, alpha=ALPHA, taus=(0.6, TAU, 0.9), key=NoiseKey(seed, "b"))
        ref = smoothed.certify(x, SegCertify(), **kw)
        ada = smoothed.certify(x, AdaptiveSegCertify(looks=[100]), **kw)
        for r, a in zip(ref, ada):
            assert torch.equal(r.labels, a.labels) and a.tau == r.tau and a.radius == r.radius
            assert torch.allclose(r.pvalues, a.pvalues) and a.num_samples == 110


def test_holm_with_earlier_rejections_set_to_zero():
    """Look 2 runs Holm with the look-1 certified pixels at p = 0 (exact decision check)."""
    # 1 x 4 image, class 1 selected everywhere; estimation votes for class 1 per pixel
    n1, n2, alpha, tau = 60, 120, 0.02, 0.75
    est = torch.zeros(n2, 1, 4, dtype=torch.long)
    ks1, ks2 = [60, 52, 52, 30], [60, 103, 103, 60]         # cumulative counts at each look
    for i, (a, b) in enumerate(zip(ks1, ks2)):
        est[:a, 0, i] = 1
        est[n1:n1 + b - a, 0, i] = 1
    votes = LabelVotes(2, selection=torch.ones(5, 1, 4, dtype=torch.long), estimation=est)
    req = CertifyRequest(sigma=0.25, n0=5, n=n2, alpha=alpha, taus=(tau,))
    cert = AdaptiveSegCertify(looks=[n1, n2], futility_beta=1e-9).certify(votes, req)[0]
    r1 = holm_reject(binomial_pvalues(np.array(ks1), n1, tau), alpha / 2)
    p2 = np.where(r1, 0.0, binomial_pvalues(np.array(ks2), n2, tau))
    r2 = holm_reject(p2, alpha / 2)
    assert r1.tolist() == [True, False, False, False]
    assert (r1 | r2).tolist() == [True, True, True, False]
    # without the substitution look 2 would certify nothing (pixel 0 has p ~ 1 there)
    assert not holm_reject(binomial_pvalues(np.array(ks2), n2, tau), alpha / 2).any()
    assert cert.labels.tolist() == [[1, 1, 1, ABSTAIN]]
    assert cert.info["certified_per_look"] == [1, 2]
    # p-values of the DECIDING look: pixel 0 was certified at look 1 (p = .75^60), pixels 1, 2 at
    # look 2; pixel 3 was never certified and keeps the last look's p-value
    p1, p2 = binomial_pvalues(np.array(ks1), n1, tau), binomial_pvalues(np.array(ks2), n2, tau)
    assert cert.pvalues[0].tolist() == [p1[0], p2[1], p2[2], p2[3]]
    assert cert.pvalues[0, 0].item() == pytest.approx(0.75 ** 60, rel=1e-12)
    assert p2[0] > 0.99                 # the last look's p-value of pixel 0, which is NOT reported
    assert cert.info["correction"] == "holm+bonferroni-spending"


def test_registered_as_adaptive():
    cert = get_registry().create("certifier", "adaptive", looks=[10, 20], spending="bonferroni")
    assert isinstance(cert, AdaptiveSegCertify) and cert.name == "adaptive"


# --- The guarantee, checked statistically (the set-up of test_certifiers) ------------------
#
# BinomialVotes in closed form, 1,000 trials at alpha 0.05, pass criterion: the 99.9%
# Clopper-Pearson lower bound of the share of wrong images <= alpha, at EACH tau of the
# request. The 8 x 8 image has 16 unanimous pixels, 24 pixels with p(class 1) = 0.75 and 24
# with p = 0.9: at tau 0.75 the 0.75-pixels are the worst-case nulls; at tau 0.9 the
# 0.9-pixels are (an image whose only nulls lie far below tau, as in an earlier version of
# this test, cannot show an error at tau 0.9 even without alpha spending). 10 looks
# (100, 200, ..., 1000); testing every look at the full alpha (no spending) fails at both taus.

LOOKS = list(range(100, 1001, 100))
TAUS = (TAU, 0.9)


def sequential_wrong_images(certifier, trials=TRIALS):
    return wrong_images(certifier, taus=TAUS, n0=100, n=LOOKS[-1], trials=trials,
                        p1=worst_case_image(taus=TAUS))


@pytest.mark.parametrize("options", [{"looks": LOOKS}, {"looks": LOOKS, "dice_tolerance": 0.0}, {}],
                         ids=["10-looks", "10-looks-no-early-stop", "default-schedule"])
def test_adaptive_family_wise_error_stays_within_alpha(options):
    wrong, used = sequential_wrong_images(AdaptiveSegCertify(**options))
    for tau in TAUS:
        assert within_alpha(wrong[tau]), f"tau {tau}: {wrong[tau]} / {TRIALS} images wrong"
    if "looks" in options:  # it did stop early on some images
        assert min(used) < 100 + LOOKS[-1]


def test_same_check_fails_without_alpha_spending():
    """The test has power at each tau: every look at full alpha (no spending over looks) is unsound."""
    broken = AdaptiveSegCertify(looks=LOOKS, spending="none", dice_tolerance=0.0)
    wrong, _ = sequential_wrong_images(broken)
    for tau in TAUS:
        assert not within_alpha(wrong[tau]), f"tau {tau}: {wrong[tau]} / {TRIALS}"


def test_certifiable_pixels_are_certified():
    x = boundary_image()
    cert = SmoothedSegmenter(ThresholdSegmenter(), None, SIGMA).certify(
        x, AdaptiveSegCertify(looks=[20, 40, 100, 200]), key=NoiseKey(0, "boundary"), n0=10, n=200,
        alpha=ALPHA, taus=(TAU,))[0]
    assert (cert.labels[:4] == 1).float().mean() > 0.9
    assert cert.info["forward_passes"] >= 2
