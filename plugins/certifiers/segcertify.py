"""SegCertify (Fischer, Baader, Vechev, ICML 2021), Algorithm 1."""
from __future__ import annotations

import numpy as np
import torch

from certframe.core.certificate import Certificate
from certframe.core.statistics import (
    CORRECTIONS,
    binomial_pvalues,
    certified_radius,
    holm_reject_counts,
    reject,
    upper_tail_table,
)
from certframe.interfaces import ABSTAIN, Certifier, CertifyRequest, VoteSource, class_labels


class SegCertify(Certifier):
    """Certify every pixel at threshold tau with a multiple-testing correction.

    1. Selection: n0 noisy draws; per pixel i take the most frequent class c_i.
    2. Estimation: n fresh draws; k_i = votes for c_i.
    3. p_i = P(Binomial(n, tau) >= k_i) (test of H0: p_i(c_i) <= tau).
    4. Correct over all H*W pixels at family-wise level alpha (``holm``, default,
       or ``bonferroni``); pixels whose H0 is not rejected get ABSTAIN.

    Guarantee: with probability >= 1 - alpha over the draws, every non-abstained
    pixel i satisfies p_i(c_i) > tau, so the smoothed segmenter keeps c_i for every
    L2 perturbation of norm < R = sigma * Phi^-1(tau). Each tau of one request
    reuses the same draws and carries this guarantee on its own (not jointly).

    ``correction="none"`` drops the correction: only each pixel's error is bounded,
    not the image's. It exists to demonstrate (and test) why correction matters.
    """

    def __init__(self, correction: str = "holm"):
        if correction not in CORRECTIONS:
            raise ValueError(f"correction must be one of {CORRECTIONS}, got {correction!r}")
        self.correction = correction
        self.name = "segcertify" if correction == "holm" else f"segcertify-{correction}"

    def certify(self, votes: VoteSource, request: CertifyRequest) -> list[Certificate]:
        selection = votes.counts("selection", request.n0)
        # [H, W]: argmax over the classes, ties to the lowest (as argmax(dim=0), which is 30x slower on CPU)
        c_hat = class_labels(selection.unsqueeze(0))[0]
        estimation = votes.counts("estimation", request.n)
        k = estimation.gather(0, c_hat.unsqueeze(0)).squeeze(0)
        return certificates_from_counts(c_hat, k, request, self.correction, self.name)


def certificates_from_counts(c_hat: torch.Tensor, k: torch.Tensor, request: CertifyRequest,
                             correction: str, method: str) -> list[Certificate]:
    """The SegCertify decisions for every tau, from the selected classes and their counts.

    The counts ``k`` are read to the host once (the image's one host synchronisation of the
    statistics); Holm is computed from their histogram (:func:`holm_reject_counts`, the
    decisions of :func:`holm_reject` without sorting the pixels' p-values).
    """
    k_host = k.detach().cpu().numpy() if isinstance(k, torch.Tensor) else np.asarray(k)
    certs = []
    for tau in request.taus:
        p = binomial_pvalues(k_host, request.n, tau)
        rejected = (holm_reject_counts(k_host, upper_tail_table(request.n, float(tau)), request.alpha)
                    if correction == "holm" else reject(p, request.alpha, correction))
        certified = torch.from_numpy(rejected).to(c_hat.device)
        labels = torch.where(certified, c_hat, torch.full_like(c_hat, ABSTAIN))
        certs.append(Certificate(labels=labels, radius=certified_radius(request.sigma, tau), tau=tau,
                                 sigma=request.sigma, alpha=request.alpha, method=method,
                                 num_samples=request.n0 + request.n,
                                 pvalues=torch.from_numpy(np.asarray(p, dtype=np.float64)),
                                 info={"correction": correction}))
    return certs
