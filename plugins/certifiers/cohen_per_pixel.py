"""The naive per-pixel baseline of Fischer et al. 2021 (Cohen's CERTIFY per pixel)."""
from __future__ import annotations

import numpy as np
import torch
from scipy.stats import norm

from certframe.core.certificate import Certificate
from certframe.core.statistics import certified_radius, clopper_pearson_lower
from certframe.interfaces import ABSTAIN, Certifier, CertifyRequest, VoteSource


class CohenPerPixel(Certifier):
    """Cohen et al.'s CERTIFY run independently on every pixel.

    Per pixel: select c_i from n0 draws; from n draws compute the one-sided
    Clopper-Pearson lower bound pA_i at level alpha / m (Bonferroni over the m
    pixels, so the image-level guarantee holds) and the per-pixel radius
    R_i = sigma * Phi^-1(pA_i) where pA_i > 1/2 (ABSTAIN otherwise). The
    certificate at tau keeps the pixels with pA_i >= tau, i.e. R_i >= sigma *
    Phi^-1(tau). Per-pixel radii are returned in ``Certificate.pixel_radius``.

    Compared with ``segcertify`` (Holm), this needs no threshold to produce radii
    but spends the whole alpha / m on every pixel, so it abstains more at a given
    tau. ``bonferroni=False`` is the truly naive, uncorrected version: only each
    pixel's error is bounded, not the image's (its family-wise error on an image with
    many pixels at tau is far above alpha, see tests/test_certifiers.py). It is named
    ``cohen-per-pixel-uncorrected`` with ``correction = "none"`` so that its results are
    never written under the corrected method's name.
    """

    name = "cohen-per-pixel"

    def __init__(self, bonferroni: bool = True):
        if not isinstance(bonferroni, bool):
            raise ValueError(f"bonferroni must be true or false, got {bonferroni!r}")
        self.bonferroni = bonferroni
        self.correction = "bonferroni" if bonferroni else "none"
        self.name = "cohen-per-pixel" if bonferroni else "cohen-per-pixel-uncorrected"

    def certify(self, votes: VoteSource, request: CertifyRequest) -> list[Certificate]:
        c_hat = votes.counts("selection", request.n0).argmax(dim=0)
        k = votes.counts("estimation", request.n).gather(0, c_hat.unsqueeze(0)).squeeze(0)
        m = c_hat.numel()
        level = request.alpha / m if self.bonferroni else request.alpha
        p_lower = clopper_pearson_lower(k, request.n, level)
        with np.errstate(divide="ignore"):
            radius = np.where(p_lower > 0.5, request.sigma * norm.ppf(np.clip(p_lower, 0.5, 1.0)), 0.0)
        radius_t = torch.from_numpy(radius)
        certs = []
        for tau in request.taus:
            ok = torch.from_numpy(p_lower >= tau).to(c_hat.device)
            labels = torch.where(ok, c_hat, torch.full_like(c_hat, ABSTAIN))
            certs.append(Certificate(labels=labels, radius=certified_radius(request.sigma, tau), tau=tau,
                                     sigma=request.sigma, alpha=request.alpha, method=self.name,
                                     num_samples=request.n0 + request.n, pixel_radius=radius_t,
                                     info={"correction": self.correction}))
        return certs
