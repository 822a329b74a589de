"""The smoothed segmenter: the core object, in the notation of the papers.

Given a base segmenter f (optionally preceded by a denoiser D), the smoothed
segmenter is ``g(x)_i = argmax_c P_eps(f(D(x + eps))_i = c)``, eps ~ N(0, sigma^2 I),
x in [0, 1]^{C x H x W}. Certification (Fischer et al., ICML 2021) gives, with
probability at least 1 - alpha over the sampling, a class per pixel (or ABSTAIN)
that g keeps for every perturbation delta with ||delta||_2 < sigma * Phi^-1(tau).
Denoised smoothing: Salman et al. 2020; with a diffusion model: Carlini et al.
ICLR 2023; for medical segmentation: Laousy et al. MICCAI 2023.
"""
from __future__ import annotations

from typing import Sequence

import torch

from certframe.interfaces import Certifier, CertifyRequest, Denoiser, Segmenter, class_labels
from certframe.results import Certificate
from certframe.sampler import NoiseVoter
from certframe.statistics import check_alpha, check_count, check_tau
from certframe.validation import validate_image


class SmoothedSegmenter:
    """g = smoothing of ``segmenter o denoiser`` at noise level ``sigma``.

    segmenter: :class:`Segmenter` ([B, C, H, W] in [0, 1] -> logits [B, K, H, W]).
    denoiser:  :class:`Denoiser` or ``None`` (the Gaussian-trained baseline: the
               segmenter sees ``x + eps`` directly).
    sigma:     noise std in [0, 1] pixel units, > 0.
    """

    def __init__(self, segmenter: Segmenter, denoiser: Denoiser | None, sigma: float):
        sigma = float(sigma)
        if not sigma > 0:
            raise ValueError(f"sigma must be a positive noise level, got {sigma}")
        self.segmenter = segmenter
        self.denoiser = denoiser
        self.sigma = sigma
        self.num_classes = int(segmenter.num_classes)

    def base_logits(self, noisy: torch.Tensor) -> torch.Tensor:
        """``f(D(x + eps))``: ``[B, C, H, W]`` noisy images -> logits ``[B, K, H, W]``."""
        x = noisy if self.denoiser is None else self.denoiser(noisy, self.sigma)
        return self.segmenter(x)

    def base_labels(self, noisy: torch.Tensor) -> torch.Tensor:
        """Hard labels ``[B, H, W]`` of the base pipeline on noisy images."""
        logits = self.base_logits(noisy)
        if logits.dim() != 4 or logits.shape[1] != self.num_classes:
            raise ValueError(f"the segmenter returned shape {tuple(logits.shape)}, expected "
                             f"[B, {self.num_classes}, H, W] logits")
        return class_labels(logits)

    def voter(self, x: torch.Tensor, *, batch_size: int = 32, seed: int = 0,
              image_id: str = "0") -> NoiseVoter:
        """A :class:`NoiseVoter` for image ``x`` ``[C, H, W]`` in [0, 1]."""
        validate_image(x, in_channels=getattr(self.segmenter, "in_channels", None))
        return NoiseVoter(self.base_labels, x, sigma=self.sigma, num_classes=self.num_classes,
                          batch_size=batch_size, seed=seed, image_id=image_id)

    def certify(self, x: torch.Tensor, certifier: Certifier, *, n0: int, n: int, alpha: float,
                taus: Sequence[float] = (0.75,), batch_size: int = 32, seed: int = 0,
                image_id: str = "0") -> list[Certificate]:
        """Certify one image; one :class:`Certificate` per tau (same sampling pass)."""
        request = make_request(self.sigma, n0, n, alpha, taus)
        votes = self.voter(x, batch_size=batch_size, seed=seed, image_id=image_id)
        certs = certifier.certify(votes, request)
        for cert in certs:
            cert.info.setdefault("forward_passes", votes.forward_passes)
        return certs

    def predict(self, x: torch.Tensor, n: int, *, batch_size: int = 32, seed: int = 0,
                image_id: str = "0") -> torch.Tensor:
        """Monte-Carlo estimate of g(x) without a certificate: majority of n votes, [H, W]."""
        votes = self.voter(x, batch_size=batch_size, seed=seed, image_id=image_id)
        return votes.counts("prediction", n).argmax(dim=0)


def make_request(sigma: float, n0: int, n: int, alpha: float, taus: Sequence[float]) -> CertifyRequest:
    """Validate and bundle the certification parameters."""
    taus = tuple(check_tau(t) for t in (taus if isinstance(taus, (list, tuple)) else [taus]))
    if not taus:
        raise ValueError("at least one tau is needed")
    return CertifyRequest(sigma=float(sigma), n0=check_count("n0", n0), n=check_count("n", n),
                          alpha=check_alpha(alpha), taus=taus)
