import numpy as np
import pytest
from scipy.stats import binomtest

from certframe.core.statistics import (
    binomial_pvalues,
    bonferroni_reject,
    certified_radius,
    check_alpha,
    check_count,
    check_tau,
    clopper_pearson_lower,
    holm_reject,
    reject,
)


@pytest.mark.parametrize("n,tau", [(10, 0.75), (100, 0.75), (100, 0.9), (37, 0.6)])
def test_pvalues_equal_scipy_binomtest(n, tau):
    ks = np.arange(n + 1)
    got = binomial_pvalues(ks, n, tau)
    want = [binomtest(int(k), n, tau, alternative="greater").pvalue for k in ks]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)


def test_pvalue_golden():
    # P(Bin(100, 0.75) >= 100) = 0.75**100; P(Bin(10, 0.75) >= 9) = 10*.75**9*.25 + .75**10
    assert binomial_pvalues(np.array([100]), 100, 0.75)[0] == pytest.approx(0.75 ** 100, rel=1e-12)
    assert binomial_pvalues(np.array([9]), 10, 0.75)[0] == pytest.approx(
        10 * 0.75 ** 9 * 0.25 + 0.75 ** 10, rel=1e-12)
    assert binomial_pvalues(np.array([0]), 10, 0.75)[0] == 1.0


def test_pvalues_keep_shape_and_reject_bad_counts():
    k = np.array([[0, 5], [10, 7]])
    assert binomial_pvalues(k, 10, 0.75).shape == (2, 2)
    with pytest.raises(ValueError, match="0..n=10"):
        binomial_pvalues(np.array([11]), 10, 0.75)


def reference_holm(p, alpha):
    """Textbook step-down, one hypothesis at a time."""
    m = len(p)
    order = sorted(range(m), key=lambda i: (p[i], i))
    out = [False] * m
    for rank, i in enumerate(order):
        if p[i] <= alpha / (m - rank):
            out[i] = True
        else:
            break
    return out


def test_holm_golden():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    # sorted: 0.005 <= .05/4, 0.01 <= .05/3, 0.03 > .05/2 -> stop
    assert holm_reject(p, 0.05).tolist() == [True, False, False, True]
    assert bonferroni_reject(p, 0.05).tolist() == [True, False, False, True]
    p2 = np.array([0.012, 0.02, 0.04])
    # holm: .012 <= .0167, .02 <= .025, .04 <= .05 -> all; bonferroni: only p <= .0167
    assert holm_reject(p2, 0.05).tolist() == [True, True, True]
    assert bonferroni_reject(p2, 0.05).tolist() == [True, False, False]


def test_holm_matches_reference_on_random_cases():
    rng = np.random.default_rng(0)
    for _ in range(300):
        m = rng.integers(1, 30)
        p = rng.choice([rng.uniform(0, 0.1), 0.01, 0.02], size=m) * rng.uniform(0, 1, size=m) ** 2
        alpha = rng.uniform(0.01, 0.2)
        assert holm_reject(p, alpha).tolist() == reference_holm(list(p), alpha)
        assert bonferroni_reject(p, alpha).tolist() == [x <= alpha / m for x in p]


def test_holm_keeps_2d_shape():
    p = np.array([[0.001, 0.5], [0.002, 0.0001]])
    assert holm_reject(p, 0.01).tolist() == [[True, False], [True, True]]


def test_reject_dispatch_and_errors():
    p = np.array([0.02, 0.2])
    assert reject(p, 0.05, "none").tolist() == [True, False]
    with pytest.raises(ValueError, match="correction must be one of"):
        reject(p, 0.05, "sidak")


@pytest.mark.parametrize("sigma,expected", [(0.25, 0.1686), (0.5, 0.3372), (1.0, 0.6745)])
def test_radius_at_tau_075(sigma, expected):
    assert certified_radius(sigma, 0.75) == pytest.approx(expected, abs=5e-5)


def test_clopper_pearson_matches_scipy_exact_interval():
    n, alpha = 50, 0.01
    for k in range(n + 1):
        got = clopper_pearson_lower(np.array([k]), n, alpha)[0]
        # the lower end of the two-sided (1 - 2 alpha) exact interval is the one-sided bound
        want = binomtest(k, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact").low
        assert got == pytest.approx(want, abs=1e-10)


def test_clopper_pearson_agrees_with_binomial_test():
    """pA_lower >= tau  <=>  P(Bin(n, tau) >= k) <= alpha (duality of the exact test)."""
    n, alpha = 100, 0.01
    k = np.arange(n + 1)
    for tau in (0.6, 0.75, 0.9):
        assert ((clopper_pearson_lower(k, n, alpha) >= tau) == (binomial_pvalues(k, n, tau) <= alpha)).all()


@pytest.mark.parametrize("tau", [0.5, 1.0, 0.2, 1.5, float("nan")])
def test_tau_outside_open_interval(tau):
    with pytest.raises(ValueError, match=r"tau must lie in the open interval \(0.5, 1\)"):
        check_tau(tau)


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 2.0])
def test_alpha_outside_open_interval(alpha):
    with pytest.raises(ValueError, match=r"alpha must lie in the open interval \(0, 1\)"):
        check_alpha(alpha)


@pytest.mark.parametrize("n", [0, -3, 2.5, True])
def test_counts_must_be_positive_integers(n):
    with pytest.raises(ValueError, match="n0 must be a positive integer"):
        check_count("n0", n)


# --- CertifyRequest validates itself once ------------------------------------------------

def test_certify_request_normalises_valid_parameters():
    from certframe.interfaces import CertifyRequest

    req = CertifyRequest(sigma=np.float32(0.25), n0=np.int64(10), n=100.0, alpha="0.001", taus=[0.75, 0.9])
    assert (req.sigma, req.n0, req.n, req.alpha, req.taus) == (0.25, 10, 100, 0.001, (0.75, 0.9))
    assert type(req.n0) is int and type(req.sigma) is float
    assert CertifyRequest(0.5, 1, 1, 0.05, 0.6).taus == (0.6,)          # one number is one tau
    with pytest.raises(AttributeError):                                  # frozen: validated once, for good
        req.sigma = float("inf")


@pytest.mark.parametrize("kw,match", [
    ({"sigma": float("inf")}, r"sigma must be a positive noise level \(finite, > 0\), got inf"),
    ({"sigma": float("nan")}, r"sigma must be a positive noise level \(finite, > 0\), got nan"),
    ({"sigma": -0.25}, r"got -0.25"), ({"sigma": "abc"}, r"sigma must be .* got 'abc'"),
    ({"n0": 2.5}, r"n0 must be a positive integer number of samples, got 2.5"),
    ({"n": True}, r"n must be a positive integer number of samples, got True"),
    ({"n": "100"}, r"n must be a positive integer"),
    ({"alpha": float("nan")}, r"alpha must lie in the open interval \(0, 1\), got nan"),
    ({"alpha": 1.0}, r"alpha must lie in the open interval \(0, 1\), got 1.0"),
    ({"taus": ()}, r"taus must be a non-empty sequence of thresholds in \(0.5, 1\), got \(\)"),
    ({"taus": "0.75"}, r"taus must be a non-empty sequence"),
    ({"taus": (0.75, 0.5)}, r"tau must lie in the open interval \(0.5, 1\), got 0.5"),
    ({"taus": (float("nan"),)}, r"tau must lie in the open interval \(0.5, 1\), got nan"),
])
def test_certify_request_refuses_bad_parameters(kw, match):
    from certframe.interfaces import CertifyRequest

    args = dict(sigma=0.25, n0=10, n=100, alpha=0.001, taus=(0.75,))
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        CertifyRequest(**args)


def test_smoothed_segmenter_refuses_infinite_sigma():
    from conftest import ThresholdSegmenter

    from certframe.core.smoothing import SmoothedSegmenter

    for sigma in (float("inf"), float("nan"), 0.0):
        with pytest.raises(ValueError, match="sigma must be a positive noise level"):
            SmoothedSegmenter(ThresholdSegmenter(), None, sigma)


def test_holm_shortcuts_match_the_full_sort_with_ties():
    """holm_reject (sorts only the p-values <= alpha) and holm_reject_counts (Holm from the
    histogram of the counts, as SegCertify calls it) decide as the full stable sort does.
    P-values read from a table over counts tie a lot, underflow to 0.0 and round to 1.0 for
    several counts at once (n = 100000, tau = 0.99)."""
    from certframe.core.statistics import holm_reject_counts, upper_tail_table

    rng = np.random.default_rng(1)
    for _ in range(300):
        m = int(rng.integers(0, 120))
        n = int(rng.choice([1, 5, 100, 1000, 100000]))
        tau, alpha = float(rng.choice([0.51, 0.75, 0.99])), float(rng.choice([1e-3, 0.05, 0.5]))
        k = rng.binomial(n, rng.uniform(0.3, 1.0, size=m))
        if rng.random() < 0.3:
            k[rng.random(m) < 0.5] = n
        table = upper_tail_table(n, tau)
        expected = reference_holm(list(table[k]), alpha)
        assert holm_reject(table[k], alpha).tolist() == expected
        assert holm_reject_counts(k, table, alpha).tolist() == expected
    table = upper_tail_table(100000, 0.99)
    assert (table == 0.0).sum() > 1 and (table == 1.0).sum() > 1        # the ties the test is about
    k = np.array([[100000, 99999, 99990], [5, 0, 100000]])
    assert holm_reject_counts(k, table, 0.01).tolist() == [[True, True, True], [False, False, True]]


def _prefix_holm_last_axis(p, alpha):
    """Holm as attacks/flip_test.py computed it before the one copy: stable sort of each family,
    reject the prefix that passes ``alpha / (m - i)``, scatter back."""
    m = p.shape[-1]
    order = np.argsort(p, axis=-1, kind="stable")
    passed = np.logical_and.accumulate(np.take_along_axis(p, order, axis=-1) <= alpha / (m - np.arange(m)), axis=-1)
    rejected = np.zeros(p.shape, dtype=bool)
    np.put_along_axis(rejected, order, passed, axis=-1)
    return rejected


def test_holm_along_the_last_axis_decides_as_each_family_alone_and_as_the_prefix_rule():
    """holm_reject(axis=-1) (the falsification test's families) equals holm_reject on each
    family (the certifiers' one family) and the step-down prefix of a stable sort, also
    with ties, p-values exactly at a threshold, all or none rejected, and empty families."""
    from scipy.stats import binom

    rng = np.random.default_rng(2)
    alpha = 0.05
    for _ in range(200):
        m = int(rng.integers(1, 12))
        trials = int(rng.integers(1, 6))
        kind = rng.integers(3)
        if kind == 0:    # flip-test p-values: P(Bin(n, 1/2) <= k), many ties
            p = binom.cdf(rng.integers(20, 60, size=(trials, m)), 100, 0.5)
        elif kind == 1:  # exactly at Holm's thresholds, and ties of them
            p = (alpha / (m - np.arange(m)))[rng.integers(0, m, size=(trials, m))]
        else:
            p = rng.choice([0.0, 1e-4, 0.004, 0.01, 0.05, 1.0], size=(trials, m))
        got = holm_reject(p, alpha, axis=-1)
        assert got.tolist() == _prefix_holm_last_axis(p, alpha).tolist()
        assert got.tolist() == [holm_reject(row, alpha).tolist() for row in p]
        assert holm_reject(p[None], alpha, axis=2).tolist() == [got.tolist()]
    assert holm_reject(np.zeros((3, 0)), alpha, axis=-1).shape == (3, 0)
    assert holm_reject(np.array([[0.0, 1.0], [1.0, 1.0]]), alpha, axis=-1).tolist() == [[True, False], [False, False]]
    with pytest.raises(ValueError, match="axis must be None"):
        holm_reject(np.zeros((2, 3)), alpha, axis=0)


def test_clopper_pearson_upper_is_one_copy_for_both_callers():
    """The falsification test (elementwise, ``k >= n`` -> 1) and the adaptive certifier's
    futility bound (a cached table, ``k == n`` -> 1) used two copies of the upper bound; the
    one kept gives both the same values bit for bit, at k = 0 and k = n too."""
    from scipy.stats import beta as beta_dist

    from certframe.core.statistics import clopper_pearson_upper, clopper_pearson_upper_table

    for n in (1, 2, 40, 1696):
        ks = np.arange(n + 1)
        for a in (0.01, 0.001 / 8, 0.3):
            with np.errstate(invalid="ignore"):
                old_flip = np.where(ks >= n, 1.0, beta_dist.ppf(1 - a, ks + 1, np.maximum(n - ks, 1)))
                old_adaptive = np.where(ks == n, 1.0, beta_dist.ppf(1 - a, ks + 1, np.maximum(n - ks, 1)))
            table = clopper_pearson_upper_table(n, a)
            assert table.tolist() == old_flip.tolist() == old_adaptive.tolist()
            assert clopper_pearson_upper(ks, n, a).tolist() == table.tolist()
            assert clopper_pearson_upper(ks[::-1].reshape(1, -1), n, a).tolist() == [table[::-1].tolist()]
            assert table[n] == 1.0 and table[0] == pytest.approx(1 - a ** (1 / n), rel=1e-9)
            assert not table.flags.writeable
            # the upper bound is 1 - the lower bound of the complementary count
            assert np.allclose(table, 1 - clopper_pearson_lower(ks, n, a)[::-1])
    with pytest.raises(ValueError, match=r"vote counts must lie in 0..n=10, got range 0..11"):
        clopper_pearson_upper(np.array([0, 11]), 10, 0.01)
    with pytest.raises(ValueError, match="alpha must lie in the open interval"):
        clopper_pearson_upper(np.array([0]), 10, 1.5)
