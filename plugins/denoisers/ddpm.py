"""The ``ddpm`` denoiser: one-shot diffusion denoising (Carlini et al., ICLR 2023)."""
from __future__ import annotations

from pathlib import Path

import torch

from certframe.interfaces import Denoiser

from .diffusion import ddim_denoise, load_diffusion_model, resized_noise_std, timestep_for_sigma


class DDPMDenoiser(Denoiser):
    """One-shot denoising with a DDPM: one network call at the timestep that matches sigma.

    Paper: Carlini et al., "(Certified!!) Adversarial Robustness for Free!", ICLR
    2023; in front of a medical segmenter: Laousy et al., MICCAI 2023. The noisy
    image ``x + eps`` (``[B, C, H, W]``, ``[0, 1]`` space, unclipped, eps of std
    ``sigma``) is mapped to ``[-1, 1]`` (noise std ``2 sigma``), scaled by
    ``sqrt(abar_t*)`` at the ``t*`` whose ``sqrt((1 - abar)/abar)`` is closest to
    ``2 sigma``, and the model's ``x_0`` prediction (epsilon, sample or v, as the
    model was trained) is clipped and mapped back: ``[B, C, H, W]`` in ``[0, 1]``.
    Images whose size differs from the model's are resized to it and back, with
    ``t*`` chosen for the noise std after resizing. See
    :mod:`certframe.plugins.denoisers.diffusion`. Differentiable in the input.

    Options: model (``"ddpm-synthetic-lung"``, the bundled 64x64 grey model, or a
    local diffusers folder; never downloaded), device (cpu), clip (True).
    """

    steps = 1

    def __init__(self, model: str | Path = "ddpm-synthetic-lung", device: str = "cpu", clip: bool = True):
        super().__init__()
        self.diffusion = load_diffusion_model(model, device=device)
        self.clip = bool(clip)

    @property
    def in_channels(self) -> int:
        return self.diffusion.in_channels

    def timestep(self, sigma: float, image_size: tuple[int, int] | None = None) -> int:
        """``t*`` used for noise std ``sigma`` on images of ``image_size`` (default: the model's)."""
        size = image_size or self.diffusion.sample_size
        return timestep_for_sigma(self.diffusion.alphas_cumprod,
                                  resized_noise_std(sigma, size, self.diffusion.sample_size))

    def forward(self, noisy: torch.Tensor, sigma: float) -> torch.Tensor:
        return ddim_denoise(self.diffusion, noisy, sigma, steps=self.steps, clip=self.clip)
