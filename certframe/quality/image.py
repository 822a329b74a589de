"""Image-quality metrics for denoisers as pure functions: PSNR and SSIM per image.

Images are ``[B, C, H, W]`` float tensors on the scale ``data_range`` (1.0 for
certframe's ``[0, 1]`` pixel space); both return one float64 value per image
``[B]`` (the mean over channels for SSIM, the MSE over all channels and pixels for
PSNR).

* PSNR = ``10 log10(data_range^2 / MSE)`` in dB (``inf`` when the images are
  equal); the same number as ``monai.metrics.PSNRMetric(max_val=data_range)``
  (a test checks it), computed directly so that it is exact in float64.
* SSIM: Wang, Bovik, Sheikh, Simoncelli, "Image quality assessment: from error
  visibility to structural similarity", IEEE TIP 2004, with their constants
  (Gaussian window of std 1.5, ``K1 = 0.01``, ``K2 = 0.03``, window 11 pixels, or
  the largest odd size that fits a smaller image), via
  ``monai.metrics.SSIMMetric`` (valid convolution, mean over the SSIM map). For
  constant images ``a`` and ``b`` it is ``(2ab + C1) / (a^2 + b^2 + C1)``,
  ``C1 = (K1 data_range)^2``.

A noisy input ``x + eps`` lies outside ``[0, 1]``: clip it (``.clamp(0, 1)``)
before measuring it, as :func:`certframe.quality.denoiser.denoiser_quality` does.
"""
from __future__ import annotations

import torch


def _check(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.dim() != 4 or pred.shape != target.shape:
        raise ValueError(f"expected two image batches [B, C, H, W] of one shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image ``[B]`` (float64)."""
    _check(pred, target)
    return (pred.double() - target.double()).square().flatten(1).mean(1)


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image ``[B]`` in dB: ``10 log10(data_range^2 / MSE)``."""
    return 10 * torch.log10(torch.as_tensor(float(data_range) ** 2, dtype=torch.float64) / mse(pred, target))


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0, win_size: int = 11) -> torch.Tensor:
    """Structural similarity per image ``[B]`` (Wang et al. 2004; MONAI's SSIMMetric, Gaussian window).

    win_size: the window (odd); an image smaller than it uses the largest odd
    size that fits (at least 3 pixels are needed).
    """
    from monai.metrics import SSIMMetric

    _check(pred, target)
    fit = min(int(win_size), *pred.shape[-2:])
    fit -= 1 - fit % 2
    if fit < 3:
        raise ValueError(f"SSIM needs images of at least 3x3 pixels, got {tuple(pred.shape[-2:])}")
    metric = SSIMMetric(spatial_dims=2, data_range=float(data_range), win_size=fit, reduction="none")
    return metric(pred.double(), target.double()).double().reshape(pred.shape[0], -1).mean(1)
