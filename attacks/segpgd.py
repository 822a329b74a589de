"""SegPGD: an attack made for segmentation (Gu, Zhao, Tresp, Torr, ECCV 2022).

"SegPGD: An Effective and Efficient Adversarial Attack for Evaluating and Boosting
Segmentation Robustness". Plain PGD spends its budget on pixels that are already
wrong; SegPGD splits the per-pixel cross-entropy into correctly (T) and wrongly
(F) classified pixels and weights them with a schedule:

    L_t = (1 - lambda_t) / (H W) * sum_{i in T} CE_i + lambda_t / (H W) * sum_{i in F} CE_i,
    lambda_t = (t - 1) / (2 T),  t = 1 .. T (T = number of steps),

so early steps push correct pixels over the boundary and later steps (lambda
growing to (T-1)/(2T) < 1/2) keep the wrong ones wrong. The split is recomputed
at every step from the current prediction. Averaged over the batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchattacks.attack import Attack

from .base import SegmentationAttack, check_norm, check_positive, default_step_size, per_sample_ce, quiet_device_message


def segpgd_lambda(t: int, steps: int) -> float:
    """lambda_t = (t - 1) / (2 T) for step t in 1..T."""
    if not 1 <= t <= steps:
        raise ValueError(f"step t must lie in 1..{steps}, got {t}")
    return (t - 1) / (2 * steps)


def segpgd_loss(logits: torch.Tensor, labels: torch.Tensor, lam: float, reduction: str = "mean") -> torch.Tensor:
    """SegPGD loss of logits ``[B, K, H, W]`` against labels ``[B, H, W]``.

    ``reduction="mean"``: a scalar, the mean over B, H, W; ``"none"``: ``[B]``, the mean over H, W per image.
    """
    ce = F.cross_entropy(logits, labels, reduction="none")  # [B, H, W]
    correct = (logits.argmax(dim=1) == labels).to(ce.dtype)
    weighted = (1 - lam) * ce * correct + lam * ce * (1 - correct)
    return weighted.mean() if reduction == "mean" else weighted.flatten(1).mean(dim=1)


class SegPGD(SegmentationAttack):
    """SegPGD (Gu et al., ECCV 2022): PGD with the correct/wrong pixel weighting above.

    model: segmenter ``[B, C, H, W] in [0, 1] -> logits [B, K, H, W]``.
    norm:  "linf" (default, as in the paper) or "l2".
    eps:   budget (default 8/255 for linf as in the paper, 0.5 for l2).
    step_size: step size (default ``2.5 * eps / steps``).  steps: T (default 20).
    random_start: default True.  restarts: default 1 (the best iterate per image, by
    the plain mean cross-entropy, over all runs is returned).  seed: fixes the random starts (default 0).

    ``attack(images [B, C, H, W] in [0, 1], labels [B, H, W] int64 ground truth)
    -> [B, C, H, W]`` in the ball and in ``[0, 1]``.
    """

    threat = "base"
    norms = ("l2", "linf")

    def __init__(self, model, norm: str = "linf", eps: float | None = None, step_size: float | None = None,
                 steps: int = 20, random_start: bool = True, restarts: int = 1, seed: int | None = 0):
        with quiet_device_message():
            Attack.__init__(self, "SegPGD", model)
        norm = check_norm(norm)
        self._setup(eps=(8 / 255 if norm == "linf" else 0.5) if eps is None else eps, norm=norm, seed=seed)
        self.steps = check_positive("steps", steps, integer=True)
        self.step_size = (default_step_size(self.eps, self.steps) if step_size is None
                          else check_positive("step_size", step_size))
        self.random_start = bool(random_start)
        self.restarts = check_positive("restarts", restarts, integer=True)

    def perturb(self, images, labels):
        if labels is None:
            raise ValueError("SegPGD needs the ground-truth labels [B, H, W]")

        def loss(adv, t):
            logits = self.check_logits(self.get_logits(adv), adv)
            return segpgd_loss(logits, labels, segpgd_lambda(t, self.steps), reduction="none")

        def score(adv):  # the weights change with t: iterates are compared by the plain mean CE
            return per_sample_ce(self.check_logits(self.get_logits(adv), adv), labels)

        return self.ascend(images, objective=loss, score=score, step_size=self.step_size, steps=self.steps,
                           start_random=self.random_start, generator=self.generator(), restarts=self.restarts)
