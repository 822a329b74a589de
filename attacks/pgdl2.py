"""PGD-L2 for segmentation, with torchattacks' PGDL2 interface and certframe's checks and seeding.

Paper: Madry et al., ICLR 2018, in the L2 ball, the threat model randomized
smoothing certifies (Cohen et al. 2019). Steps ``step_size * grad / ||grad||_2`` per
image, projection onto ``||x' - x||_2 <= eps`` over all C*H*W values, clipping to
``[0, 1]``; L is the mean per-pixel cross-entropy (minus the CE toward the target in
torchattacks' targeted modes). The best iterate per image (highest loss) over
``restarts`` runs is returned, not the last.
"""
from __future__ import annotations

import torchattacks

from .base import SegmentationAttack, check_eps, check_positive, default_step_size, quiet_device_message
from .pgd import ce_objective


class PGDL2(SegmentationAttack, torchattacks.PGDL2):
    """Projected gradient descent in the L2 ball (Madry et al. 2018).

    model: segmenter ``[B, C, H, W] in [0, 1] -> logits [B, K, H, W]``.
    eps:   L2 radius in [0, 1] pixel units over the whole image (default 0.5; compare
           with certified radii ``sigma * Phi^-1(tau)``).
    step_size: step size (default ``2.5 * eps / steps``).  steps: iterations (default 10).
    random_start: start at a random point of the ball (default True).
    restarts: runs, each after the first from a random start; the best iterate wins (default 1).
    seed:  fixes the random starts (default 0; None uses torch's global RNG).

    ``attack(images [B, C, H, W] in [0, 1], labels [B, H, W] int64) -> [B, C, H, W]``
    with ``||x' - x||_2 <= eps`` per image and ``x'`` in ``[0, 1]``.
    """

    threat = "base"
    fixed_norm = "l2"

    def __init__(self, model, eps: float = 0.5, step_size: float | None = None, steps: int = 10,
                 random_start: bool = True, restarts: int = 1, seed: int | None = 0):
        steps = check_positive("steps", steps, integer=True)
        eps_value = check_eps(eps, "l2")
        step_size = default_step_size(eps_value, steps) if step_size is None else check_positive("step_size", step_size)
        with quiet_device_message():
            torchattacks.PGDL2.__init__(self, model, eps=eps_value, alpha=step_size, steps=steps,
                                        random_start=bool(random_start))
        self.step_size = step_size  # torchattacks calls it alpha; here alpha is the certificate's error level
        self._setup(eps=eps, norm="l2", seed=seed)
        self.restarts = check_positive("restarts", restarts, integer=True)

    def perturb(self, images, labels):
        if labels is None:
            raise ValueError("PGDL2 needs labels [B, H, W] (ground truth, or the target mask in targeted mode)")
        return self.ascend(images, objective=ce_objective(self, images, labels), step_size=self.step_size,
                           steps=self.steps, start_random=self.random_start, restarts=self.restarts)
