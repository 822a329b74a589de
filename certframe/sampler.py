"""Monte-Carlo voting of the smoothed segmenter.

The smoothed segmenter (Fischer et al. 2021; Cohen et al. 2019) predicts, per
pixel, the class the base model ``f = segmenter o denoiser`` most often outputs
under Gaussian noise: ``g(x)_i = argmax_c P(f(x + eps)_i = c)``, ``eps ~ N(0, sigma^2 I)``.
:class:`NoiseVoter` estimates those probabilities by counting votes.

Design points:

* Votes accumulate as int64 class counts ``[K, H, W]`` (``[K, D, H, W]`` for a volume
  ``[C, D, H, W]``) on the model's device; the n label maps are never stored, so memory
  does not grow with n.
* The noise stream is counter-based: draw ``i`` of phase ``p`` for the image of a
  :class:`~certframe.interfaces.NoiseKey` ``(s, id)`` is a function of ``(s, id, p, i)``
  alone, so the counts are the same for every batch size and whichever process
  certifies the image (on the same device type), and no two draws of an image coincide.
  A volume's draw is the same stream read for ``C * D * H * W`` values instead of
  ``C * H * W``: the same key, the same counter start, nothing else changes.

  - CPU: numpy's Philox4x64-10 (Salmon et al., "Parallel random numbers: as easy as
    1, 2, 3", SC 2011). The 128-bit key is :func:`philox_key`, ``blake2b``
    of the JSON list ``[s, id, p]`` (16 bytes, the full key: numpy sets it directly,
    nothing is truncated); draw ``i``
    starts at counter ``i * 2**64`` (counter words ``[0, i, 0, 0]``) and reads float32
    standard normals (numpy's ziggurat) from there. One draw uses far fewer than
    ``2**64`` counter blocks, so the draws of one (seed, image, phase) lie in disjoint
    counter ranges of one key: two draws of an image never reuse a position of the
    stream, for any ``n < 2**64``. Two different (seed, image, phase) share a key with probability
    ``2**-128``. float64 images get float64 normals; other dtypes get float32 ones, cast.
  - Why not ``torch.Generator.manual_seed`` per draw (the earlier scheme): torch's CPU
    generator is a Mersenne Twister whose ``manual_seed`` keeps only the low 32 bits
    of the seed (``tests/test_sampler.py`` shows it), so 63-bit draw seeds collided in
    32 bits: two draws of one image were identical with probability about ``n^2 / 2^33``
    (0.012 at n = 10^4, 0.69 at n = 10^5).
  - CUDA (NOT tested: the development machine has no GPU): torch's CUDA generator is
    Philox4x32-10 with a 64-bit key that ``manual_seed`` keeps whole; draw ``i`` seeds it
    with the 64-bit :func:`draw_seed` of ``(s, id, p, i)`` and draws on the device. Two
    of n draws coincide with probability about ``n^2 / 2^65`` (3e-10 at n = 10^5). CUDA
    and CPU give different (equally valid) noise.
* Runtime checks on every batch (:class:`certframe.validation.BatchChecks`): labels of
  the wrong shape or device, labels outside ``0..K-1``, and (through the smoothed
  segmenter) non-finite denoiser outputs or logits raise
  :class:`~certframe.validation.ModelOutputError` naming the model, the image id, the
  draws and what was wrong. The flags stay on the model's device and are read once per
  :meth:`NoiseVoter.counts` call (one host synchronisation per call, none per batch;
  the same code on CPU and CUDA).
* Everything runs under :func:`torch.inference_mode`.
* On CPU the noise of the next batch is drawn in a helper thread while the model
  runs on the current one (numpy releases the GIL while it fills an array; see
  ``benchmarks/core.py overhead``); the draws are the same either way. On CUDA noise
  generation is already asynchronous on the device. A forked child starts its own
  helper thread (the parent's does not survive fork).
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Callable

import numpy as np
import torch

from certframe.interfaces import NoiseKey
from certframe.statistics import check_count
from certframe.validation import BatchChecks, ModelOutputError


def _identity(*parts) -> bytes:
    """An injective encoding of the parts (a JSON list: no choice of image id can mimic another key)."""
    return json.dumps(list(parts), ensure_ascii=False).encode()


def philox_key(seed: int, image_id: str, phase: str) -> int:
    """The 128-bit Philox key of one (seed, image, phase): ``blake2b`` of the three, 16 bytes."""
    return int.from_bytes(hashlib.blake2b(_identity(seed, image_id, phase), digest_size=16).digest(), "little")


def draw_seed(seed: int, image_id: str, phase: str, index: int) -> int:
    """A 64-bit seed for one noise draw, from its full identity (CUDA path; contract votes).

    Only for generators that keep all 64 bits of a seed (torch's CUDA Philox does):
    torch's CPU generator keeps the low 32 of them.
    """
    return int.from_bytes(hashlib.blake2b(_identity(seed, image_id, phase, index), digest_size=8).digest(),
                          "little")


def _philox_normals(key: int, index: int, out: np.ndarray) -> None:
    """Fill ``out`` (float32 or float64) with the standard normals of draw ``index`` under ``key``."""
    # counter as a Python int (words [0, index, 0, 0]): a list would go through a float64
    # array for index >= 2**63 and lose the low bits (tests/test_sampler.py caught it)
    gen = np.random.Generator(np.random.Philox(key=key, counter=index << 64))
    gen.standard_normal(dtype=out.dtype, out=out)


def gaussian_noise(shape, sigma: float, *, key: NoiseKey, phase: str, start: int, count: int,
                   device: torch.device, dtype=torch.float32,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Noise ``[count, *shape]`` with std ``sigma`` for draws ``start .. start+count-1`` of ``phase``.

    See the module docstring for the stream. ``generator``: a CUDA generator to reuse
    (ignored on CPU).
    """
    if not isinstance(key, NoiseKey):
        raise TypeError(f"key must be a NoiseKey(seed, image_id), got {type(key).__name__}")
    device = torch.device(device)
    if start < 0 or start + count > 2 ** 64:
        raise ValueError(f"draw indices must lie in [0, 2**64), got {start}..{start + count - 1}")
    if device.type == "cpu":
        np_dtype = np.float64 if dtype == torch.float64 else np.float32
        buf = np.empty((count, *shape), dtype=np_dtype)
        k = philox_key(key.seed, key.image_id, phase)
        for j in range(count):
            _philox_normals(k, start + j, buf[j])
        return torch.from_numpy(buf).to(dtype).mul_(sigma)
    gen = generator if generator is not None else torch.Generator(device=device)
    out = torch.empty((count, *shape), device=device, dtype=dtype)
    for j in range(count):
        gen.manual_seed(draw_seed(key.seed, key.image_id, phase, start + j))
        torch.randn(shape, generator=gen, device=device, dtype=dtype, out=out[j])
    return out.mul_(sigma)


def accumulate_votes(counts: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Add the votes of label maps ``[B, *S]`` (int) into ``counts [K, *S]`` in place (S = H, W or D, H, W).

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
        raise ModelOutputError(f"predicted labels outside 0..{counts.shape[0] - 1}: "
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

    model: callable ``[B, C, *S] -> int64 labels [B, *S]`` (for instance
        :meth:`SmoothedSegmenter.base_labels`); called under inference mode.
    x: float ``[C, *S]`` in ``[0, 1]`` on the model's device: an image ``[C, H, W]`` or a
        volume ``[C, D, H, W]`` (the votes are then ``[K, D, H, W]``).
    key: :class:`~certframe.interfaces.NoiseKey` ``(seed, image_id)``: fixes every draw
        (required: there is no default image id).
    sigma: noise std in ``[0, 1]`` pixel units.
    num_classes: K.
    batch_size: draws per forward pass (memory/speed only: results do not depend on it).
    checks: the :class:`~certframe.validation.BatchChecks` the model writes to (deferred
        flags are read at the end of each :meth:`counts` call), or None.
    model_name: how errors name the model (default: its class or function name).
    """

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, key: NoiseKey,
                 sigma: float, num_classes: int, batch_size: int = 32, checks: BatchChecks | None = None,
                 model_name: str | None = None):
        if x.dim() not in (3, 4):
            raise ValueError(f"expected one image [C, H, W] or one volume [C, D, H, W], got shape {tuple(x.shape)}")
        if not isinstance(key, NoiseKey):
            raise TypeError(f"key must be a NoiseKey(seed, image_id) naming the image, got {key!r}")
        self.model = model
        self.x = x
        self.key = key
        self.sigma = float(sigma)
        self.num_classes = int(num_classes)
        self.batch_size = check_count("batch_size", batch_size)
        if checks is None:   # a smoothed segmenter's base_labels: read the checks its batches write
            owner = getattr(model, "__self__", None)
            checks = owner.checks if isinstance(getattr(owner, "checks", None), BatchChecks) else None
        self.checks = checks
        self.model_name = model_name or f"the model {getattr(model, '__qualname__', type(model).__name__)}"
        self.draws_used = 0
        self.forward_passes = 0
        self._generator = None if x.device.type == "cpu" else torch.Generator(device=x.device)

    def _noise(self, phase: str, start: int, count: int) -> torch.Tensor:
        """Noise ``[count, C, *S]`` of draws ``start .. start + count - 1`` (any thread)."""
        with torch.inference_mode():
            return gaussian_noise(tuple(self.x.shape), self.sigma, key=self.key, phase=phase, start=start,
                                  count=count, device=self.x.device, dtype=self.x.dtype,
                                  generator=self._generator)

    def _check_labels(self, labels: torch.Tensor, b: int, spatial: tuple[int, ...]) -> None:
        if not isinstance(labels, torch.Tensor) or labels.shape != (b, *spatial):
            shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise ModelOutputError(f"{self.model_name} returned labels of shape {shape}, expected {(b, *spatial)}")
        BatchChecks.same_device(labels, self.x, self.model_name, "labels")

    def counts(self, phase: str, n: int, start: int = 0) -> torch.Tensor:
        """int64 ``[K, *S]`` votes of draws ``start .. start + n - 1`` of ``phase``."""
        n = check_count("number of samples", n)
        try:
            return self._counts(phase, n, start)
        except ModelOutputError as err:
            raise ModelOutputError(f"image {self.key.image_id!r}, {phase} draws {start}..{start + n - 1}: "
                                   f"{err}") from None

    def _counts(self, phase: str, n: int, start: int) -> torch.Tensor:
        spatial = tuple(self.x.shape[1:])
        if self.checks is not None:
            self.checks.reset()     # flags of calls outside this voter belong to no draw of it
        counts = torch.zeros((self.num_classes, *spatial), dtype=torch.int64, device=self.x.device)
        batches = [(start + done, min(self.batch_size, n - done)) for done in range(0, n, self.batch_size)]
        # CPU: draw batch i + 1 in the helper thread while the model runs on batch i. Only one
        # task per voter is in flight.
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
                    self._check_labels(labels, b, spatial)
                    accumulate_votes(counts, labels)
                    self.forward_passes += 1
        finally:  # a failing model leaves no draw running for this voter
            if pending is not None:
                wait_futures([pending])
        # every pixel got n valid votes, else the model emitted labels outside 0..K-1; read with the
        # finiteness flags of the batches in one host synchronisation per call
        totals = counts.sum(dim=0)
        checks = self.checks if self.checks is not None else BatchChecks()
        checks.flag(~(totals == n).all(), self.model_name, f"labels outside 0..{self.num_classes - 1}",
                    detail=lambda: f"{int((totals != n).sum())} pixel(s) got fewer than {n} valid votes")
        checks.raise_pending()
        self.draws_used += n
        return counts
