"""EOT PGD-L2: an adaptive L2 attack on the smoothed pipeline itself.

Papers: Expectation over Transformation (Athalye, Engstrom, Ilyas, Kwok, ICML
2018) with the transformation being the smoothing noise, as in SmoothAdv
(Salman, Li, Razenshteyn, Zhang, Zhang, Bubeck, Yang, NeurIPS 2019); PGD in the
L2 ball (Madry et al., ICLR 2018). It maximises the expectation over noise draws
of the loss of ``segmenter(denoiser(x' + eps))``, eps ~ N(0, sigma^2 I), with
gradients through the noise draws, the denoiser (the one-shot DDPM denoiser is one
differentiable network call) and the segmenter. This is the attack a certificate
of radius R must withstand: the smoothed segmenter g may not change a certified
pixel for any ``||x' - x||_2 < R``, and EOT-PGD-L2 searches that ball for g's
weak spots directly rather than for the base model's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchattacks.attack import Attack

from .base import SegmentationAttack, check_positive, default_step_size, quiet_device_message
from .pipeline import OBJECTIVES, DenoisedSegmenter


class EOTPGDL2(SegmentationAttack):
    """PGD-L2 on ``E_eps[loss(f(D(x + eps)), y)]`` (SmoothAdv-style EOT attack).

    model:     the segmenter f ``[B, C, H, W] -> logits [B, K, H, W]`` (or a
               :class:`~certframe.attacks.pipeline.DenoisedSegmenter`, whose sigma is used).
    sigma:     smoothing noise std in [0, 1] pixel units (required unless model is a pipeline).
    denoiser:  a :class:`~certframe.interfaces.Denoiser` or None (Gaussian-trained baseline).
    eps:       L2 radius over the whole image (default 0.5).
    step_size:     step size (default ``2.5 * eps / steps``).  steps: default 10.
    num_draws: noise draws per step (default 8); draw_batch: draws per forward (default 8).
    objective: "expected-loss" (default: mean over draws of the per-pixel CE) or
               "smoothed-softmax" (CE of the mean softmax, Salman et al. 2019).
    random_start: default False.  restarts: default 1 (runs after the first start at random
               points of the ball).  seed: fixes the noise draws and the starts (default 0).
    The best iterate per image, by the Monte-Carlo estimate of the objective at it (the
    same draws that give its gradient), over all runs is returned.

    ``attack(images [B, C, H, W] in [0, 1], labels [B, H, W] int64) -> [B, C, H, W]``
    with ``||x' - x||_2 <= eps`` per image and ``x'`` in ``[0, 1]`` (the noise is
    only inside the loss; the returned image holds no noise).
    """

    threat = "smoothed"
    fixed_norm = "l2"

    def __init__(self, model, sigma: float | None = None, denoiser=None, eps: float = 0.5,
                 step_size: float | None = None, steps: int = 10, num_draws: int = 8, draw_batch: int = 8,
                 objective: str = "expected-loss", random_start: bool = False, restarts: int = 1,
                 seed: int | None = 0):
        pipeline = _pipeline(model, sigma, denoiser)
        with quiet_device_message():
            Attack.__init__(self, type(self).__name__, pipeline)
        self._setup(eps=eps, norm=self.fixed_norm, seed=seed)
        self.sigma = pipeline.sigma
        self.steps = check_positive("steps", steps, integer=True)
        self.step_size = (default_step_size(self.eps, self.steps) if step_size is None
                          else check_positive("step_size", step_size))
        self.num_draws = check_positive("num_draws", num_draws, integer=True)
        self.draw_batch = check_positive("draw_batch", draw_batch, integer=True)
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        self.objective = objective
        self.random_start = bool(random_start)
        self.restarts = check_positive("restarts", restarts, integer=True)
        self.supported_mode = ["default", "targeted"]

    def perturb(self, images, labels):
        if labels is None:
            raise ValueError(f"{type(self).__name__} needs labels [B, H, W] (ground truth, or the target "
                             f"mask in targeted mode)")
        target = self.get_target_label(images, labels) if self.targeted else labels
        sign = -1.0 if self.targeted else 1.0
        generator = self.generator()

        def value_gradient(adv, t):
            return eot_value_and_gradient(self.model, adv, target, num_draws=self.num_draws,
                                          draw_batch=self.draw_batch, generator=generator,
                                          objective=self.objective, sign=sign)

        return self.ascend(images, value_gradient=value_gradient, step_size=self.step_size, steps=self.steps,
                           start_random=self.random_start, generator=generator, restarts=self.restarts)


def eot_value_and_gradient(pipeline: DenoisedSegmenter, adv: torch.Tensor, labels: torch.Tensor, *,
                           num_draws: int, draw_batch: int, generator: torch.Generator | None,
                           objective: str = "expected-loss", sign: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image Monte-Carlo objective ``[B]`` and its gradient ``[B, C, H, W]`` (fresh draws at every call).

    The objectives of :func:`~certframe.attacks.pipeline.eot_gradient`, per image (mean over
    its pixels) instead of over the batch: the gradient is B times eot_gradient's on the
    same draws (the same direction, so the same normalised L2 and sign steps), the draws
    are taken from ``generator`` in the same order.
    """
    B, item = adv.shape[0], tuple(adv.shape[1:])     # item: (C, H, W) or a volume's (C, D, H, W)
    spatial = item[1:]
    x = adv.detach().clone().requires_grad_(True)
    if objective == "expected-loss":
        value = torch.zeros(B, dtype=adv.dtype, device=adv.device)
        grad = torch.zeros_like(x)
        done = 0
        while done < num_draws:
            m = min(draw_batch, num_draws - done)
            noise = torch.randn((m, B, *item), generator=generator, device=x.device, dtype=x.dtype) * pipeline.sigma
            logits = pipeline((x.unsqueeze(0) + noise).reshape(m * B, *item))
            target = labels.unsqueeze(0).expand(m, B, *spatial).reshape(m * B, *spatial)
            ce = F.cross_entropy(logits, target, reduction="none").reshape(m, B, -1).mean(dim=2)
            part = sign * ce.sum(dim=0) / num_draws
            grad += torch.autograd.grad(part.sum(), x)[0]
            value += part.detach()
            done += m
        return value, grad
    if objective == "smoothed-softmax":
        noise = torch.randn((num_draws, B, *item), generator=generator, device=x.device, dtype=x.dtype) * pipeline.sigma
        probs = torch.softmax(pipeline((x.unsqueeze(0) + noise).reshape(num_draws * B, *item)), dim=1)
        mean = probs.reshape(num_draws, B, *probs.shape[1:]).mean(dim=0)
        value = sign * F.nll_loss(torch.log(mean.clamp_min(1e-12)), labels, reduction="none").flatten(1).mean(dim=1)
        return value.detach(), torch.autograd.grad(value.sum(), x)[0]
    raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")


def _pipeline(model, sigma, denoiser) -> DenoisedSegmenter:
    if isinstance(model, DenoisedSegmenter):
        if denoiser is not None or (sigma is not None and float(sigma) != model.sigma):
            raise ValueError("model is already a DenoisedSegmenter: pass neither denoiser nor another sigma")
        return model
    if sigma is None:
        raise ValueError("an EOT attack on the smoothed pipeline needs the smoothing noise level sigma")
    return DenoisedSegmenter(model, denoiser, check_positive("sigma", sigma))
