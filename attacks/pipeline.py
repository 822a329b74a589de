"""The smoothed pipeline as a differentiable model, and its expectation-over-noise loss.

Randomized smoothing predicts with ``f(D(x + eps))``, ``eps ~ N(0, sigma^2 I)``
(f: segmenter, D: denoiser or identity). An adaptive attacker differentiates
through all of it: Expectation over Transformation (Athalye et al., ICML 2018)
applied to the smoothing noise, as in SmoothAdv (Salman et al., NeurIPS 2019).
Because ``x + eps`` is linear in ``x`` the noise draws pass gradients unchanged
(the reparameterisation trick); the one-shot DDPM denoiser and the segmenter are
differentiated by autograd.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from certframe.core.smoothing import SmoothedSegmenter
from certframe.interfaces import Denoiser, Segmenter

OBJECTIVES = ("expected-loss", "smoothed-softmax")


class DenoisedSegmenter(nn.Module):
    """``f o D`` at noise level sigma: noisy images ``[B, C, H, W]`` -> logits ``[B, K, H, W]``.

    The module form of the smoothing pipeline itself: ``forward`` IS
    :meth:`certframe.core.smoothing.SmoothedSegmenter.base_logits`, so an attack differentiates
    exactly the function the certificate votes with (there is one pipeline, not a copy).
    segmenter: :class:`~certframe.interfaces.Segmenter`; denoiser: a
    :class:`~certframe.interfaces.Denoiser` or ``None`` (Gaussian-trained baseline).
    The input is ``x + eps`` (NOT clipped), as in :mod:`certframe.core.sampler`.
    """

    def __init__(self, segmenter: Segmenter, denoiser: Denoiser | None, sigma: float):
        super().__init__()
        smoothed = SmoothedSegmenter(segmenter, denoiser, sigma)
        self.segmenter = segmenter   # registered as sub-modules: .to(device) and parameters() follow
        self.denoiser = denoiser
        self.smoothed = smoothed
        self.sigma = smoothed.sigma
        self.num_classes = getattr(segmenter, "num_classes", None)
        self.in_channels = getattr(segmenter, "in_channels", None)

    @classmethod
    def of(cls, smoothed: SmoothedSegmenter) -> "DenoisedSegmenter":
        """The pipeline of an existing smoothed segmenter."""
        return cls(smoothed.segmenter, smoothed.denoiser, smoothed.sigma)

    def forward(self, noisy: torch.Tensor) -> torch.Tensor:
        return self.smoothed.base_logits(noisy)


def eot_gradient(pipeline: DenoisedSegmenter, adv: torch.Tensor, labels: torch.Tensor, *, num_draws: int,
                 draw_batch: int, generator: torch.Generator | None, objective: str = "expected-loss",
                 sign: float = 1.0) -> torch.Tensor:
    """Monte-Carlo gradient wrt ``adv [B, C, H, W]`` of the smoothed pipeline's loss.

    objective ``"expected-loss"``: ``E_eps[CE(f(D(x + eps)), y)]`` (mean per-pixel
    cross-entropy), estimated by the mean over ``num_draws`` draws; its gradient is the
    mean of the per-draw gradients, computed ``draw_batch`` draws at a time (memory).
    objective ``"smoothed-softmax"``: ``CE(log E_eps[softmax f(D(x + eps))], y)``, the
    loss of the smoothed soft classifier (Salman et al. 2019); all draws in one graph.
    ``sign=-1`` descends instead (targeted attacks). Fresh draws at every call.
    """
    B, item = adv.shape[0], tuple(adv.shape[1:])     # item: (C, H, W) or a volume's (C, D, H, W)
    spatial = item[1:]
    sigma = pipeline.sigma
    x = adv.detach().clone().requires_grad_(True)
    grad = torch.zeros_like(x)
    if objective == "expected-loss":
        done = 0
        while done < num_draws:
            m = min(draw_batch, num_draws - done)
            noise = torch.randn((m, B, *item), generator=generator, device=x.device, dtype=x.dtype) * sigma
            noisy = (x.unsqueeze(0) + noise).reshape(m * B, *item)
            logits = pipeline(noisy)
            target = labels.unsqueeze(0).expand(m, B, *spatial).reshape(m * B, *spatial)
            loss = F.cross_entropy(logits, target, reduction="mean") * (m / num_draws)
            grad += torch.autograd.grad(sign * loss, x)[0]
            done += m
        return grad
    if objective == "smoothed-softmax":
        noise = torch.randn((num_draws, B, *item), generator=generator, device=x.device, dtype=x.dtype) * sigma
        probs = torch.softmax(pipeline((x.unsqueeze(0) + noise).reshape(num_draws * B, *item)), dim=1)
        mean = probs.reshape(num_draws, B, *probs.shape[1:]).mean(dim=0)
        loss = F.nll_loss(torch.log(mean.clamp_min(1e-12)), labels)
        return torch.autograd.grad(sign * loss, x)[0]
    raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
