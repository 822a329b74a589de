"""The ``none`` denoiser: the Gaussian-trained baseline (Cohen et al. 2019)."""
from __future__ import annotations

import torch

from certframe.interfaces import Denoiser


class NoDenoiser(Denoiser):
    """Identity: the segmenter sees ``x + eps`` as it is (not clipped).

    Use it with a segmenter trained under Gaussian noise augmentation at the same
    sigma (``certframe train segmenter --noise-sigma``), the baseline of Cohen et
    al. 2019 and of Laousy et al. 2023. ``[B, C, H, W] -> [B, C, H, W]``, and for
    volumes ``[B, C, D, H, W] -> [B, C, D, H, W]``.
    """

    spatial_dims = (2, 3)

    def forward(self, noisy: torch.Tensor, sigma: float) -> torch.Tensor:
        if noisy.dim() not in (4, 5):
            raise ValueError(f"expected noisy images [B, C, H, W] or volumes [B, C, D, H, W], "
                             f"got shape {tuple(noisy.shape)}")
        return noisy
