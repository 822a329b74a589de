"""How well a denoiser undoes the smoothing noise: PSNR / SSIM, t*, trained range, Dice behind it.

``denoiser_quality(denoiser, dataset, sigmas)`` draws, for each image ``x``
(``[C, H, W]`` in ``[0, 1]``) and each sigma, ``x + eps`` with ``eps = sigma z``,
``z ~ N(0, I)``, and measures against ``x``:

* ``psnr_noisy`` / ``ssim_noisy``: the noisy input clipped to ``[0, 1]`` (the
  trivial denoiser; clipping only helps it),
* ``psnr_denoised`` / ``ssim_denoised``: ``D(x + eps, sigma)``,
* ``dice_denoised`` (and ``dice_clean``, the same segmenter on ``x``) when a
  segmenter is given: mean foreground Dice of ``argmax`` of its logits against the
  mask (:func:`certframe.core.metrics.mean_dice` of the segmenter's class labels; one noise draw per image, so this is
  the base model's accuracy on denoised inputs, not a certificate),
* ``t_star``, ``trained_t_max``, ``max_sigma``, ``in_range``: what a diffusion
  denoiser reports through ``timestep(sigma, image_size)``, ``trained_t_max``,
  ``max_sigma_at(image_size)`` and ``sigma_in_range(sigma, image_size)`` (None for a
  denoiser without them, e.g. ``none``, or a model folder that records no range).
  A sigma the denoiser refuses (beyond its trained range) keeps its row, with
  NaN denoised metrics and the refusal in ``note``.

Reproducible: ``z`` of image ``i`` comes from a generator seeded with
``(seed * 1_000_003 + i) mod 2**64``, the same ``z`` for every sigma (paired comparisons
across sigma) and independent of ``limit`` and batching. PSNR / SSIM: see
:mod:`certframe.quality.image`.
"""
from __future__ import annotations

import math
from typing import Sequence

import pandas as pd
import torch

from certframe.core.metrics import mean_dice
from certframe.interfaces import class_labels
from certframe.quality.image import psnr, ssim
from certframe.validation import require_images

SUMMARY_COLUMNS = ["sigma", "images", "psnr_noisy", "psnr_denoised", "ssim_noisy", "ssim_denoised", "t_star",
                   "trained_t_max", "max_sigma", "in_range", "dice_clean", "dice_denoised", "note"]


def noise_for(index: int, shape: torch.Size, seed: int = 0) -> torch.Tensor:
    """The standard normal ``z`` ``[C, H, W]`` of image ``index`` (CPU, float32)."""
    g = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(index)) % 2 ** 64)  # any 64-bit seed
    return torch.randn(shape, generator=g)


def _device(module) -> torch.device:
    for t in list(module.parameters()) + list(module.buffers()):
        return t.device
    return torch.device("cpu")


def _call(obj, name: str, *args):
    fn = getattr(obj, name, None)
    return fn(*args) if callable(fn) else None


def _batches(dataset, count: int, batch_size: int):
    """Consecutive ``(indices, samples)`` of one image shape each."""
    batch: list = []
    for i in range(count):
        sample = dataset[i]
        if batch and (len(batch) == batch_size or batch[-1][1].image.shape != sample.image.shape):
            yield batch
            batch = []
        batch.append((i, sample))
    if batch:
        yield batch


def denoiser_quality(denoiser, dataset, sigmas: Sequence[float], *, segmenter=None, limit: int | None = None,
                     seed: int = 0, batch_size: int = 8, per_image: bool = False) -> pd.DataFrame:
    """Per-sigma table (columns :data:`SUMMARY_COLUMNS`; means over images) of the denoiser's quality.

    denoiser: a :class:`certframe.interfaces.Denoiser`; dataset: a
    :class:`certframe.interfaces.SegmentationDataset`; sigmas: noise stds in
    ``[0, 1]`` pixel units; segmenter: optional, adds ``dice_clean`` and
    ``dice_denoised``; limit: the first ``limit`` images (default all); seed: the
    noise (see the module docstring). per_image: one row per (sigma, image) with
    the image ``id`` instead of the means.
    """
    sigmas = [float(s) for s in sigmas]
    bad = [s for s in sigmas if not (math.isfinite(s) and s > 0)]
    if not sigmas or bad:
        raise ValueError(f"sigmas must be positive finite noise levels, got {sigmas}")
    require_images(dataset, "denoiser quality (PSNR / SSIM) is measured")
    count = len(dataset) if limit is None else min(int(limit), len(dataset))
    if count < 1:
        raise ValueError(f"nothing to evaluate: the data set has {len(dataset)} image(s), limit={limit}")
    dev = _device(denoiser)
    rows: list[dict] = []
    refused: dict[tuple, str] = {}
    with torch.inference_mode():
        for batch in _batches(dataset, count, batch_size):
            x = torch.stack([s.image for _, s in batch]).float().to(dev)
            z = torch.stack([noise_for(i, s.image.shape, seed) for i, s in batch]).to(dev)
            size = tuple(x.shape[-2:])
            clean_dice = None
            if segmenter is not None:
                masks = [s.mask for _, s in batch]
                clean_dice = _dice(segmenter, x, masks)
            for k, sigma in enumerate(sigmas):
                noisy = x + sigma * z
                facts = {"t_star": _call(denoiser, "timestep", sigma, size),
                         "trained_t_max": getattr(denoiser, "trained_t_max", None),
                         "max_sigma": _call(denoiser, "max_sigma_at", size),
                         "in_range": _call(denoiser, "sigma_in_range", sigma, size), "note": ""}
                try:
                    if callable(getattr(denoiser, "check_sigma", None)):
                        denoiser.check_sigma(sigma, size)
                    denoised = denoiser(noisy, sigma)
                except ValueError as err:
                    if facts["in_range"] is not False:
                        raise
                    refused[(sigma, size)] = str(err)
                    denoised = None
                if denoised is not None and not torch.isfinite(denoised).all():
                    raise ValueError(f"the denoiser returned non-finite values at sigma {sigma:g}")
                noisy_c = noisy.clamp(0, 1)
                p_noisy, s_noisy = psnr(noisy_c, x), ssim(noisy_c, x)
                p_den = psnr(denoised, x) if denoised is not None else None
                s_den = ssim(denoised, x) if denoised is not None else None
                d_den = (_dice(segmenter, denoised, [s.mask for _, s in batch])
                         if segmenter is not None and denoised is not None else None)
                for j, (i, sample) in enumerate(batch):
                    rows.append({"_order": (k, i), "sigma": sigma, "id": sample.id, "psnr_noisy": float(p_noisy[j]),
                                 "psnr_denoised": float(p_den[j]) if p_den is not None else math.nan,
                                 "ssim_noisy": float(s_noisy[j]),
                                 "ssim_denoised": float(s_den[j]) if s_den is not None else math.nan,
                                 "dice_clean": clean_dice[j] if clean_dice is not None else math.nan,
                                 "dice_denoised": d_den[j] if d_den is not None else math.nan,
                                 **facts, "note": refused.get((sigma, size), "")})
    rows.sort(key=lambda r: r.pop("_order"))  # sigma by sigma, images in index order, whatever the batching
    table = pd.DataFrame(rows)
    if segmenter is None:
        table = table.drop(columns=["dice_clean", "dice_denoised"])
    if per_image:
        return table
    metrics = [c for c in ("psnr_noisy", "psnr_denoised", "ssim_noisy", "ssim_denoised", "dice_clean",
                           "dice_denoised") if c in table]
    out = []
    for sigma, part in table.groupby("sigma", sort=False):
        first = part.iloc[0]
        out.append({"sigma": sigma, "images": len(part), **{m: float(part[m].mean()) for m in metrics},
                    **{k: first[k] for k in ("t_star", "trained_t_max", "max_sigma", "in_range")},
                    "note": next((n for n in part["note"] if n), "")})
    return pd.DataFrame(out, columns=[c for c in SUMMARY_COLUMNS if c in out[0]])


def quality_records(table: pd.DataFrame) -> list[dict]:
    """The table as JSON-able rows (NaN -> None, inf -> "inf", numpy scalars -> Python): for manifests and reports."""
    def plain(value):
        if hasattr(value, "item"):
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            return None if math.isnan(value) else str(value)
        return value

    return [{k: plain(v) for k, v in row.items()} for row in table.to_dict("records")]


def _dice(segmenter, images: torch.Tensor, masks: list[torch.Tensor]) -> list[float]:
    dev = _device(segmenter)
    labels = class_labels(segmenter(images.to(dev))).cpu()
    k = int(getattr(segmenter, "num_classes", 2))
    return [mean_dice(labels[j], masks[j], k) for j in range(len(masks))]
