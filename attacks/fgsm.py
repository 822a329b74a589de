"""FGSM for segmentation: torchattacks' FGSM with certframe's checks.

Paper: Goodfellow, Shlens, Szegedy, "Explaining and Harnessing Adversarial
Examples", ICLR 2015. One step ``x' = clip(x + eps * sign(grad_x L(f(x), y)), 0, 1)``
with L the mean per-pixel cross-entropy of logits ``[B, K, H, W]`` against labels
``[B, H, W]``.
"""
from __future__ import annotations

import torchattacks

from .base import SegmentationAttack, quiet_device_message


class FGSM(SegmentationAttack, torchattacks.FGSM):
    """Fast gradient sign method (Goodfellow et al. 2015), Linf threat model.

    model: segmenter ``[B, C, H, W] in [0, 1] -> logits [B, K, H, W]``.
    eps:   Linf budget in [0, 1] pixel units (default 8/255).
    seed:  unused by FGSM (deterministic: one step, so no restarts and no best iterate);
           accepted for a uniform interface.

    ``attack(images [B, C, H, W] in [0, 1], labels [B, H, W] int64) -> [B, C, H, W]``
    with ``max |x' - x| <= eps`` and ``x'`` in ``[0, 1]``. torchattacks' targeted
    modes work (``set_mode_targeted_by_label``: labels are then the target mask).
    """

    threat = "base"
    fixed_norm = "linf"

    def __init__(self, model, eps: float = 8 / 255, seed: int | None = 0):
        with quiet_device_message():
            torchattacks.FGSM.__init__(self, model, eps=eps)
        self._setup(eps=eps, norm="linf", seed=seed)

    def perturb(self, images, labels):
        if labels is None:
            raise ValueError("FGSM needs labels [B, H, W] (ground truth, or the target mask in targeted mode)")
        return torchattacks.FGSM.forward(self, images, labels)
