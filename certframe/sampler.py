"""Monte-Carlo voting of the smoothed segmenter.

The smoothed segmenter (Fischer et al. 2021; Cohen et al. 2019) predicts, per
pixel, the class the base model ``f = segmenter o denoiser`` most often outputs
under Gaussian noise: ``g(x)_i = argmax_c P(f(x + eps)_i = c)``, ``eps ~ N(0, sigma^2 I)``.
:class:`NoiseVoter` estimates those probabilities by counting votes.

Design points:

* Votes accumulate as int64 class counts ``[K, H, W]`` on the model's device; the
  n label maps are never stored, so memory does not grow with n.
* Reproducible: draw number ``i`` of phase ``p`` for image ``id`` under seed ``s``
  uses its own generator seeded from ``(s, id, p, i)``. The counts are therefore
  the same for every batch size and whichever process certifies the image
  (on the same device type).
* Everything runs under :func:`torch.inference_mode`.
"""
from __future__ import annotations

import hashlib
from typing import Callable

import torch

from certframe.statistics import check_count


def draw_seed(seed: int, image_id: str, phase: str, index: int) -> int:
    """A 63-bit seed for one noise draw, from its full identity."""
    digest = hashlib.blake2b(f"{seed}\x1f{image_id}\x1f{phase}\x1f{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def gaussian_noise(shape, sigma: float, *, seed: int, image_id: str, phase: str, start: int,
                   count: int, device: torch.device, dtype=torch.float32,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Noise ``[count, *shape]`` with std ``sigma`` for draws ``start .. start+count-1``."""
    device = torch.device(device)
    gen = generator if generator is not None else torch.Generator(device=device)
    out = torch.empty((count, *shape), device=device, dtype=dtype)
    for j in range(count):
        gen.manual_seed(draw_seed(seed, image_id, phase, start + j))
        torch.randn(shape, generator=gen, device=device, dtype=dtype, out=out[j])
    return out.mul_(sigma)


def accumulate_votes(counts: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Add the votes of label maps ``[B, H, W]`` (int) into ``counts [K, H, W]`` in place.

    One compare-and-sum per class (faster than ``bincount`` on CPU, and no host
    synchronisation on CUDA). Labels outside ``0..K-1`` are not counted: callers
    check the totals once per call (:func:`check_totals`) instead of every batch.
    """
    for k in range(counts.shape[0]):
        counts[k] += (labels == k).sum(dim=0, dtype=torch.int32)
    return counts


def check_totals(counts: torch.Tensor, n: int) -> None:
    """Every pixel must have received exactly n votes (else the model emitted bad labels)."""
    totals = counts.sum(dim=0)
    if not bool((totals == n).all()):
        raise ValueError(f"the model predicted labels outside 0..{counts.shape[0] - 1}: "
                         f"{int((totals != n).sum())} pixel(s) got fewer than {n} valid votes")


class NoiseVoter:
    """Counts the votes of ``model(x + eps)`` for one image ``x``.

    Implements :class:`certframe.interfaces.VoteSource`.

    model: callable ``[B, C, H, W] -> int64 labels [B, H, W]`` (for instance
        :meth:`SmoothedSegmenter.base_labels`); called under inference mode.
    x: float ``[C, H, W]`` in ``[0, 1]`` on the model's device.
    sigma: noise std in ``[0, 1]`` pixel units.
    num_classes: K.
    batch_size: draws per forward pass (memory/speed only: results do not depend on it).
    seed, image_id: fix every draw.
    """

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *,
                 sigma: float, num_classes: int, batch_size: int = 32, seed: int = 0,
                 image_id: str = "0"):
        if x.dim() != 3:
            raise ValueError(f"expected one image [C, H, W], got shape {tuple(x.shape)}")
        self.model = model
        self.x = x
        self.sigma = float(sigma)
        self.num_classes = int(num_classes)
        self.batch_size = check_count("batch_size", batch_size)
        self.seed = int(seed)
        self.image_id = str(image_id)
        self.draws_used = 0
        self.forward_passes = 0
        self._generator = torch.Generator(device=x.device)

    def counts(self, phase: str, n: int, start: int = 0) -> torch.Tensor:
        """int64 ``[K, H, W]`` votes of draws ``start .. start + n - 1`` of ``phase``."""
        n = check_count("number of samples", n)
        C, H, W = self.x.shape
        counts = torch.zeros((self.num_classes, H, W), dtype=torch.int64, device=self.x.device)
        with torch.inference_mode():
            done = 0
            while done < n:
                b = min(self.batch_size, n - done)
                noise = gaussian_noise((C, H, W), self.sigma, seed=self.seed, image_id=self.image_id,
                                       phase=phase, start=start + done, count=b,
                                       device=self.x.device, dtype=self.x.dtype,
                                       generator=self._generator)
                labels = self.model(noise.add_(self.x))
                if labels.shape != (b, H, W):
                    raise ValueError(f"the model returned labels of shape {tuple(labels.shape)}, "
                                     f"expected {(b, H, W)}")
                accumulate_votes(counts, labels)
                done += b
                self.forward_passes += 1
        check_totals(counts, n)
        self.draws_used += n
        return counts
