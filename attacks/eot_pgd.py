"""EOT PGD (Linf): the Linf counterpart of :mod:`certframe.attacks.eot_pgdl2`.

Same objective (expectation over smoothing-noise draws of the loss of
``segmenter(denoiser(x' + eps))``, Athalye et al. ICML 2018; Salman et al. 2019),
with Linf sign steps and projection (Madry et al. 2018). torchattacks' own EOTPGD
averages gradients of a stochastic classifier; this one draws the smoothing noise
itself (seeded, batched) and handles segmentation labels.
"""
from __future__ import annotations

from .eot_pgdl2 import EOTPGDL2


class EOTPGD(EOTPGDL2):
    """EOT PGD in the Linf ball against the smoothed pipeline.

    Options as :class:`~certframe.attacks.eot_pgdl2.EOTPGDL2`, except eps: an Linf
    budget in [0, 1] pixel units (default 2/255). The L2 norm of an Linf-eps
    perturbation can reach ``eps * sqrt(C H W)``; certificates apply to that L2 norm.

    ``attack(images [B, C, H, W] in [0, 1], labels [B, H, W] int64) -> [B, C, H, W]``
    with ``max |x' - x| <= eps`` and ``x'`` in ``[0, 1]``.
    """

    fixed_norm = "linf"

    def __init__(self, model, sigma: float | None = None, denoiser=None, eps: float = 2 / 255,
                 step_size: float | None = None, steps: int = 10, num_draws: int = 8, draw_batch: int = 8,
                 objective: str = "expected-loss", random_start: bool = False, seed: int | None = 0):
        super().__init__(model, sigma=sigma, denoiser=denoiser, eps=eps, step_size=step_size, steps=steps,
                         num_draws=num_draws, draw_batch=draw_batch, objective=objective,
                         random_start=random_start, seed=seed)
