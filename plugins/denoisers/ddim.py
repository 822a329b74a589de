"""The ``ddim`` denoiser: k deterministic DDIM steps from the one-shot starting point."""
from __future__ import annotations

from pathlib import Path

from .ddpm import DDPMDenoiser


class DDIMDenoiser(DDPMDenoiser):
    """Multi-step diffusion denoising: start at ``t*`` like ``ddpm``, then ``steps`` DDIM steps to 0.

    Papers: DDIM, Song, Meng, Ermon, ICLR 2021 (eta = 0, deterministic, so the
    smoothed model's randomness is the input noise alone); the starting point
    of Carlini et al., ICLR 2023. Timesteps ``round(t* (k - i) / k)``, i = 0..k-1,
    then ``abar = 1``; ``steps=1`` is exactly the ``ddpm`` one-shot denoiser.
    Input ``[B, C, H, W]`` = ``x + eps`` in ``[0, 1]`` space (unclipped) and
    ``sigma``; output ``[B, C, H, W]`` in ``[0, 1]``; cost ``steps`` network calls.

    Trained range: as ``ddpm`` (every DDIM timestep is ``<= t*``, so the check of
    ``t*`` covers them all; :meth:`check_sigma`, ``max_sigma``).

    Options: model (bundled name ``"ddpm-synthetic-lung"`` or a local diffusers
    folder), steps (k, default 4), device (cpu), clip (True), allow_untrained_sigma (False).
    """

    def __init__(self, model: str | Path = "ddpm-synthetic-lung", steps: int = 4, device: str = "cpu",
                 clip: bool = True, allow_untrained_sigma: bool = False):
        if isinstance(steps, bool) or int(steps) != steps or int(steps) < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        super().__init__(model=model, device=device, clip=clip, allow_untrained_sigma=allow_untrained_sigma)
        self.steps = int(steps)
