"""Which certified pixels to attack: the ones with the weakest margin.

An attack with a budget of R spent on one pixel is far stronger than one spread
over the whole image, and the pixels most likely to be wrongly certified are those
whose certified class is least sure. The margin of pixel i is read, in order of
preference, from

Shapes are given for images; a volume's maps are ``[D, H, W]`` (counts ``[K, D, H, W]``)
and its distances are taken in 3-D.

1. ``estimation_counts`` (int ``[K, H, W]``, the certificate's estimation votes):
   the estimated probability ``k_i(c_i) / n_i`` of the certified class (of the certified
   group of classes, for a hierarchical certificate: ``claims``);
2. the certificate's ``pvalues`` (float ``[H, W]``, SegCertify / adaptive: the
   p-value of H0 ``p_i <= tau``; a larger p-value is a weaker pixel);
3. the certificate's ``pixel_radius`` (float ``[H, W]``, Cohen per pixel: a smaller
   radius is a weaker pixel);
4. the Euclidean distance (in pixels) to the nearest pixel with another label
   (another class or ABSTAIN): pixels on a class boundary first.

Ties are broken by the next criterion down the list, then by row-major (C-order) index, so
the choice is deterministic.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt

from certframe.interfaces import ABSTAIN


def boundary_distance(labels: np.ndarray) -> np.ndarray:
    """Per pixel, the distance (pixels) to the nearest pixel of another label; inf if there is none."""
    labels = np.asarray(labels)
    out = np.full(labels.shape, np.inf)
    for value in np.unique(labels):
        inside = labels == value
        if inside.all():
            continue
        out[inside] = distance_transform_edt(inside)[inside]
    return out


def weakest_pixels(labels: torch.Tensor, covered: torch.Tensor, max_pixels: int, *,
                   estimation_counts: torch.Tensor | None = None, pvalues: torch.Tensor | None = None,
                   pixel_radius: torch.Tensor | None = None, claims: torch.Tensor | None = None) -> np.ndarray:
    """Up to ``max_pixels`` covered pixels, weakest first: int64 ``[P, 2]`` (row, col), for a volume
    ``[P, 3]`` (slice, row, col).

    labels: int ``[H, W]`` (``[D, H, W]``) certified labels (ABSTAIN = -1). covered: bool of the
    same shape, the pixels the claim covers. The optional margins are described in the module
    docstring; shapes must be the labels' (``[K, *S]`` for the counts). claims: optional bool
    ``[K, *S]``, the classes each pixel's certificate allows
    (:meth:`~certframe.core.certificate.Certificate.claims`); the margin is then the share of votes in them.
    """
    labels_np = labels.detach().cpu().numpy()
    shape = labels_np.shape
    cov = covered.detach().cpu().numpy().astype(bool)
    if cov.shape != shape:
        raise ValueError(f"covered must have the labels' shape {shape}, got {cov.shape}")
    if isinstance(max_pixels, bool) or int(max_pixels) != max_pixels or max_pixels < 1:
        raise ValueError(f"max_pixels must be an integer >= 1, got {max_pixels!r}")
    keys = []  # np.lexsort: the LAST key is the primary one
    keys.append(-np.arange(labels_np.size, dtype=np.float64).reshape(shape))  # row-major order, last resort
    keys.append(-boundary_distance(np.where(cov, labels_np, ABSTAIN)))
    if pixel_radius is not None:
        r = _plane("pixel_radius", pixel_radius, shape)
        keys.append(-r)
    if pvalues is not None:
        keys.append(_plane("pvalues", pvalues, shape))
    if estimation_counts is not None:
        counts = estimation_counts.detach().cpu().numpy()
        if counts.ndim != len(shape) + 1 or counts.shape[1:] != shape:
            raise ValueError(f"estimation_counts must be int [K, *S] with S = {shape}, got {counts.shape}")
        total = np.maximum(counts.sum(axis=0), 1)
        if claims is not None:
            share = (counts * claims.detach().cpu().numpy()).sum(axis=0) / total
        else:
            safe = np.clip(labels_np, 0, counts.shape[0] - 1)
            share = np.take_along_axis(counts, safe[None], axis=0)[0] / total
        keys.append(-share)
    # larger key = weaker; lexsort sorts ascending, so sort the negated keys
    order = np.lexsort([-k.ravel() for k in keys])
    order = order[cov.ravel()[order]][: int(max_pixels)]
    return np.stack(np.unravel_index(order, shape), axis=1).astype(np.int64)


def _plane(name: str, value, shape) -> np.ndarray:
    arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape} (one value per pixel), got {arr.shape}")
    return np.nan_to_num(arr.astype(np.float64), nan=np.inf)
