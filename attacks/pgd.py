"""PGD (Linf) for segmentation, with torchattacks' PGD interface and certframe's checks and seeding.

Paper: Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards Deep Learning Models
Resistant to Adversarial Attacks", ICLR 2018. Steps
``x_{t+1} = clip(x + clamp(x_t + step_size * sign(grad L) - x, -eps, eps), 0, 1)``
with L the mean per-pixel cross-entropy (logits ``[B, K, H, W]``, labels ``[B, H, W]``;
in torchattacks' targeted modes, minus the cross-entropy toward the target labels).
The step scales with the budget (``step_size = 2.5 eps / steps`` by default, as PGD-L2;
a fixed 2/255 step is useless at eps 0.5 and overshoots at eps 1/255); the best
iterate per image (highest loss) over ``restarts`` runs is returned, not the last.
"""
from __future__ import annotations

import torchattacks

from .base import SegmentationAttack, check_eps, check_positive, default_step_size, per_sample_ce, quiet_device_message


class PGD(SegmentationAttack, torchattacks.PGD):
    """Projected gradient descent in the Linf ball (Madry et al. 2018).

    model: segmenter ``[B, C, H, W] in [0, 1] -> logits [B, K, H, W]``.
    eps:   Linf budget in [0, 1] pixel units (default 8/255).
    step_size: step size (default ``2.5 * eps / steps``).  steps: iterations (default 10).
    random_start: start at a uniform point of the Linf ball (default True).
    restarts: runs, each after the first from a random start; the best iterate wins (default 1).
    seed:  fixes the random starts (default 0; None uses torch's global RNG).

    ``attack(images [B, C, H, W] in [0, 1], labels [B, H, W] int64) -> [B, C, H, W]``
    with ``max |x' - x| <= eps`` and ``x'`` in ``[0, 1]``.
    """

    threat = "base"
    fixed_norm = "linf"

    def __init__(self, model, eps: float = 8 / 255, step_size: float | None = None, steps: int = 10,
                 random_start: bool = True, restarts: int = 1, seed: int | None = 0):
        steps = check_positive("steps", steps, integer=True)
        eps_value = check_eps(eps, "linf")
        step_size = default_step_size(eps_value, steps) if step_size is None else check_positive("step_size", step_size)
        with quiet_device_message():
            torchattacks.PGD.__init__(self, model, eps=eps_value, alpha=step_size, steps=steps,
                                      random_start=bool(random_start))
        self.step_size = step_size  # torchattacks calls it alpha; here alpha is the certificate's error level
        self._setup(eps=eps, norm="linf", seed=seed)
        self.restarts = check_positive("restarts", restarts, integer=True)

    def perturb(self, images, labels):
        if labels is None:
            raise ValueError("PGD needs labels [B, H, W] (ground truth, or the target mask in targeted mode)")
        return self.ascend(images, objective=ce_objective(self, images, labels), step_size=self.step_size,
                           steps=self.steps, start_random=self.random_start, restarts=self.restarts)


def ce_objective(attack: SegmentationAttack, images, labels):
    """Per-image loss to maximise: mean per-pixel CE, or minus the CE toward torchattacks' target labels."""
    if attack.targeted:
        target = attack.get_target_label(images, labels)
        return lambda adv, t: -per_sample_ce(attack.check_logits(attack.get_logits(adv), adv), target)
    return lambda adv, t: per_sample_ce(attack.check_logits(attack.get_logits(adv), adv), labels)
