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
* On CPU the noise of the next batch is drawn in a helper thread while the model
  runs on the current one (seeded noise is about 4% of a UNet's forward time at
  256x256, see ``benchmarks/core.py overhead``); the draws are the same either way.
  On CUDA noise generation is already asynchronous on the device. A forked child
  starts its own helper thread (the parent's does not survive fork).
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
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


_NOISE_THREAD: ThreadPoolExecutor | None = None


def _forget_noise_thread() -> None:
    """After a fork the child has the executor but not its thread: a task sent there would wait forever."""
    global _NOISE_THREAD
    _NOISE_THREAD = None


os.register_at_fork(after_in_child=_forget_noise_thread)


def _noise_thread() -> ThreadPoolExecutor:
    """One helper thread per process draws the next batch's noise (tasks of several voters queue)."""
    global _NOISE_THREAD
    if _NOISE_THREAD is None:
        _NOISE_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="certframe-noise")
    return _NOISE_THREAD


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

    def _noise(self, phase: str, start: int, count: int) -> torch.Tensor:
        """Noise ``[count, C, H, W]`` of draws ``start .. start + count - 1`` (any thread)."""
        with torch.inference_mode():
            return gaussian_noise(tuple(self.x.shape), self.sigma, seed=self.seed, image_id=self.image_id,
                                  phase=phase, start=start, count=count, device=self.x.device,
                                  dtype=self.x.dtype, generator=self._generator)

    def counts(self, phase: str, n: int, start: int = 0) -> torch.Tensor:
        """int64 ``[K, H, W]`` votes of draws ``start .. start + n - 1`` of ``phase``."""
        n = check_count("number of samples", n)
        _, H, W = self.x.shape
        counts = torch.zeros((self.num_classes, H, W), dtype=torch.int64, device=self.x.device)
        batches = [(start + done, min(self.batch_size, n - done)) for done in range(0, n, self.batch_size)]
        # CPU: draw batch i + 1 in the helper thread while the model runs on batch i. Only one
        # task per voter is in flight, so the voter's generator is never used by two threads.
        ahead = self.x.device.type == "cpu" and len(batches) > 1
        pending = _noise_thread().submit(self._noise, phase, *batches[0]) if ahead else None
        try:
            with torch.inference_mode():
                for i, (first, b) in enumerate(batches):
                    if ahead:
                        noise = pending.result()
                        pending = (_noise_thread().submit(self._noise, phase, *batches[i + 1])
                                   if i + 1 < len(batches) else None)
                    else:
                        noise = self._noise(phase, first, b)
                    labels = self.model(noise.add_(self.x))
                    if labels.shape != (b, H, W):
                        raise ValueError(f"the model returned labels of shape {tuple(labels.shape)}, "
                                         f"expected {(b, H, W)}")
                    accumulate_votes(counts, labels)
                    self.forward_passes += 1
        finally:  # a failing model leaves no draw running on this voter's generator
            if pending is not None:
                wait_futures([pending])
        check_totals(counts, n)
        self.draws_used += n
        return counts
