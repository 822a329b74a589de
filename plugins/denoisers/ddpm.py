"""The ``ddpm`` denoiser: one-shot diffusion denoising (Carlini et al., ICLR 2023)."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from certframe.core.statistics import check_sigma
from certframe.interfaces import Denoiser

from .diffusion import (
    check_trained_range,
    ddim_denoise,
    largest_sigma,
    load_diffusion_model,
    resized_noise_std,
    timestep_for_sigma,
)


def train_ddpm(dataset, output, **options):
    """Train a model for this denoiser: :func:`certframe.plugins.denoisers.ddpm_training.train_diffusion`."""
    from .ddpm_training import train_diffusion

    return train_diffusion(dataset, output, **options)


def convert_guided_diffusion(checkpoint, output, **flags):
    """Convert an OpenAI guided-diffusion checkpoint.

    See :func:`certframe.plugins.denoisers.guided_diffusion.convert_guided_diffusion`.
    """
    from .guided_diffusion import convert_guided_diffusion as convert

    overwrite = flags.pop("overwrite", False)
    return convert(checkpoint, output, flags, overwrite=overwrite)


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

    Trained range: a sigma whose ``t*`` lies beyond the timesteps the model was
    trained on (``training.t_max`` in its ``certframe.json``) is a ValueError naming
    the largest sigma supported (:meth:`check_sigma`, also called by ``forward``).
    Folders without that record (third-party diffusers folders) are assumed to be
    trained on every timestep. ``max_sigma``: the largest sigma at the model's own
    resolution (``inf`` without a record).

    Options: model (``"ddpm-synthetic-lung"``, the bundled 64x64 grey model, or a
    local diffusers folder; never downloaded), device (cpu), clip (True),
    allow_untrained_sigma (False: refuse a sigma beyond the trained range; True:
    warn once per sigma and denoise anyway).
    """

    steps = 1
    spatial_dims = 2   # a 2-D diffusion model: the run refuses volumes [C, D, H, W] before sampling
    trainer = staticmethod(train_ddpm)  # found by `certframe train denoiser` through the registry
    converters = {"guided-diffusion": convert_guided_diffusion}  # found by `certframe convert`

    def __init__(self, model: str | Path = "ddpm-synthetic-lung", device: str = "cpu", clip: bool = True,
                 allow_untrained_sigma: bool = False):
        super().__init__()
        self.diffusion = load_diffusion_model(model, device=device)
        self.clip = bool(clip)
        self.allow_untrained_sigma = bool(allow_untrained_sigma)
        self._checked: dict[tuple, int] = {}

    @property
    def in_channels(self) -> int:
        return self.diffusion.in_channels

    @property
    def trained_t_max(self) -> int | None:
        """Largest timestep trained on (None: not recorded, all assumed)."""
        return self.diffusion.trained_t_max

    @property
    def max_sigma(self) -> float:
        """Largest sigma supported on images of the model's own size (``inf`` when not recorded)."""
        return self.max_sigma_at(self.diffusion.sample_size)

    def max_sigma_at(self, image_size: tuple[int, int]) -> float:
        """Largest sigma supported on images of ``image_size`` (H, W)."""
        return largest_sigma(self.diffusion.alphas_cumprod, self.trained_t_max, tuple(image_size),
                             self.diffusion.sample_size)

    def timestep(self, sigma: float, image_size: tuple[int, int] | None = None) -> int:
        """``t*`` used for noise std ``sigma`` on images of ``image_size`` (default: the model's)."""
        size = image_size or self.diffusion.sample_size
        return timestep_for_sigma(self.diffusion.alphas_cumprod,
                                  resized_noise_std(sigma, size, self.diffusion.sample_size))

    def sigma_in_range(self, sigma: float, image_size: tuple[int, int] | None = None) -> bool | None:
        """Whether ``t*`` lies in the trained range; None when the folder records no range."""
        if self.trained_t_max is None:
            return None
        return self.timestep(sigma, image_size) <= self.trained_t_max

    def check_sigma(self, sigma: float, image_size: tuple[int, int] | None = None) -> int:
        """``t*`` for ``sigma``; ValueError (folder, trained range, largest sigma) when beyond the trained range.

        The run layer calls it before certifying; ``forward`` calls it too (cached
        per sigma and size). With ``allow_untrained_sigma`` it warns instead.
        """
        size = tuple(image_size or self.diffusion.sample_size)
        key = (check_sigma(sigma), size)      # a bad sigma (not finite, <= 0) is never allowed
        if key not in self._checked:
            try:
                self._checked[key] = check_trained_range(self.diffusion, sigma, size)
            except ValueError as err:
                if not self.allow_untrained_sigma:
                    raise
                warnings.warn(f"allow_untrained_sigma: {err}", stacklevel=2)
                self._checked[key] = self.timestep(sigma, size)
        return self._checked[key]

    def forward(self, noisy: torch.Tensor, sigma: float) -> torch.Tensor:
        if noisy.dim() == 4:
            self.check_sigma(sigma, tuple(noisy.shape[-2:]))
        return ddim_denoise(self.diffusion, noisy, sigma, steps=self.steps, clip=self.clip)
