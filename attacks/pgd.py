"""PGD (Linf) for segmentation: torchattacks' PGD with certframe's checks and seeding.

Paper: Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards Deep Learning Models
Resistant to Adversarial Attacks", ICLR 2018. Steps
``x_{t+1} = clip(x + clamp(x_t + alpha * sign(grad L) - x, -eps, eps), 0, 1)``
with L the mean per-pixel cross-entropy (logits ``[B, K, H, W]``, labels ``[B, H, W]``).
"""
from __future__ import annotations

import torchattacks

from .base import SegmentationAttack, check_positive


class PGD(SegmentationAttack, torchattacks.PGD):
    """Projected gradient descent in the Linf ball (Madry et al. 2018).

    model: segmenter ``[B, C, H, W] in [0, 1] -> logits [B, K, H, W]``.
    eps:   Linf budget in [0, 1] pixel units (default 8/255).
    alpha: step size (default 2/255).  steps: iterations (default 10).
    random_start: start at a uniform point of the Linf ball (default True).
    seed:  fixes the random start (default 0; None uses torch's global RNG).

    ``attack(images [B, C, H, W] in [0, 1], labels [B, H, W] int64) -> [B, C, H, W]``
    with ``max |x' - x| <= eps`` and ``x'`` in ``[0, 1]``.
    """

    threat = "base"
    fixed_norm = "linf"

    def __init__(self, model, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10,
                 random_start: bool = True, seed: int | None = 0):
        torchattacks.PGD.__init__(self, model, eps=eps, alpha=check_positive("alpha", alpha),
                                  steps=check_positive("steps", steps, integer=True),
                                  random_start=bool(random_start))
        self._setup(eps=eps, norm="linf", seed=seed)

    def perturb(self, images, labels):
        if labels is None:
            raise ValueError("PGD needs labels [B, H, W] (ground truth, or the target mask in targeted mode)")
        return torchattacks.PGD.forward(self, images, labels)
