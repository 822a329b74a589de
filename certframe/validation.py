"""Input checks with errors that say what was expected and what came."""
from __future__ import annotations

from typing import Sequence

import torch

from certframe.interfaces import Sample


def validate_image(image: torch.Tensor, *, in_channels: int | None = None, name: str = "image") -> None:
    """An image is float ``[C, H, W]`` with finite values in ``[0, 1]``."""
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [C, H, W], got {type(image).__name__}")
    if image.dim() != 3:
        raise ValueError(f"{name} must have shape [C, H, W], got shape {tuple(image.shape)}")
    if not image.is_floating_point():
        raise ValueError(f"{name} must be a float tensor in [0, 1], got dtype {image.dtype}")
    if in_channels is not None and image.shape[0] != in_channels:
        raise ValueError(f"{name} has {image.shape[0]} channel(s), the model expects {in_channels}")
    finite = torch.isfinite(image)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise ValueError(f"{name} has {bad} NaN or infinite value(s); expected finite values in [0, 1]")
    lo, hi = float(image.min()), float(image.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"{name} values must lie in [0, 1] (noise is added in that space), "
                         f"got range [{lo:.4g}, {hi:.4g}]")


def validate_mask(mask: torch.Tensor, image_hw: Sequence[int], class_names: Sequence[str],
                  *, name: str = "mask") -> None:
    """A mask is integer ``[H, W]`` of the image's size with declared labels only."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [H, W], got {type(mask).__name__}")
    if mask.dim() != 2:
        raise ValueError(f"{name} must have shape [H, W], got shape {tuple(mask.shape)}")
    if mask.is_floating_point():
        raise ValueError(f"{name} must hold integer labels, got dtype {mask.dtype}")
    if tuple(mask.shape) != tuple(image_hw):
        raise ValueError(f"{name} size {tuple(mask.shape)} differs from the image size {tuple(image_hw)}")
    labels = set(torch.unique(mask).tolist())
    declared = set(range(len(class_names)))
    if not labels <= declared:
        raise ValueError(f"{name} has labels {sorted(labels)}, the dataset declares classes "
                         f"{sorted(declared)} ({', '.join(class_names)})")


def validate_sample(sample: Sample, class_names: Sequence[str], in_channels: int | None = None) -> None:
    """Check one :class:`Sample`; errors name the sample id."""
    try:
        validate_image(sample.image, in_channels=in_channels)
        validate_mask(sample.mask, sample.image.shape[-2:], class_names)
    except (ValueError, TypeError) as err:
        raise type(err)(f"sample {sample.id!r}: {err}") from None
