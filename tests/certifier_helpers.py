"""Helpers shared by the certifier tests (test_certifiers.py, test_hierarchical.py, ...)."""
from __future__ import annotations

from scipy.stats import beta

DELTA = 1e-3
"""The chance a sound certifier fails a statistical check of its family-wise error."""


class FixedVotes:
    """A VoteSource returning given counts ``[K, *S]`` per phase, recording what was asked."""

    def __init__(self, selection, estimation):
        self.num_classes = selection.shape[0]
        self.data = {"selection": selection, "estimation": estimation}
        self.asked = []

    def counts(self, phase, n, start=0):
        self.asked.append((phase, n, start))
        assert self.data[phase].sum(0).eq(n).all()
        return self.data[phase]


def error_lower_bound(wrong: int, trials: int, delta: float = DELTA) -> float:
    """One-sided 1 - delta Clopper-Pearson lower bound on a proportion: Beta(delta; W, T - W + 1).

    The pass criterion of the checks of a certifier's guarantee: with W wrong images in T
    trials, the bound must not exceed the stated alpha.
    """
    return 0.0 if wrong == 0 else float(beta.ppf(delta, wrong, trials - wrong + 1))
