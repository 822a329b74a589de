"""Monte-Carlo voting of the smoothed segmenter.

The smoothed segmenter (Fischer et al. 2021; Cohen et al. 2019) predicts, per
pixel, the class the base model ``f = segmenter o denoiser`` most often outputs
under Gaussian noise: ``g(x)_i = argmax_c P(f(x + eps)_i = c)``, ``eps ~ N(0, sigma^2 I)``.
:class:`NoiseVoter` estimates those probabilities by counting votes.

Design points:

* Votes accumulate as int64 class counts ``[K, H, W]`` (``[K, D, H, W]`` for a volume
  ``[C, D, H, W]``) on the model's device; the n label maps are never stored, so memory
  does not grow with n.
* The noise stream is counter-based and the same on every device: draw ``i`` of phase ``p``
  for the image of a :class:`~certframe.interfaces.NoiseKey` ``(s, id)`` is draw ``i`` of the
  Philox4x32-10 stream ``(s, id, p)`` (:mod:`certframe.core.philox`; Salmon et al., SC 2011), read
  for ``C * H * W`` values (``C * D * H * W`` for a volume) and turned into normals by
  Box-Muller. So the counts are the same for every batch size, whichever process certifies
  the image, and on CPU or CUDA (the 32-bit words bit for bit, the normals to rounding), and
  no two draws of an image coincide (each has its own counter range). float64 images get
  float64 normals; other dtypes get float32 ones, cast. :data:`NOISE_STREAM` names the
  stream; run manifests record it and a run made with another stream is not resumed.

  - Earlier streams, and why they went: numpy's Philox4x64 one draw at a time on CPU (2.7x
    ``torch.randn``, and not available on CUDA), and on CUDA torch's generator reseeded per
    draw (other noise than the CPU's for the same seed, so a certificate made on a GPU could
    not be re-checked on a laptop). Before those, ``torch.Generator.manual_seed`` per draw on
    CPU: its Mersenne Twister keeps only the low 32 bits of a seed, so two draws of one image
    coincided with probability about ``n^2 / 2^33``.
* Runtime checks on every batch (:class:`certframe.validation.BatchChecks`): labels of
  the wrong shape or device, labels outside ``0..K-1``, and (through the smoothed
  segmenter) non-finite denoiser outputs or logits raise
  :class:`~certframe.validation.ModelOutputError` naming the model, the image id, the
  draws and what was wrong. The flags stay on the model's device and are read once per
  :meth:`NoiseVoter.counts` call (one host synchronisation per call, none per batch;
  the same code on CPU and CUDA).
* Everything runs under :func:`torch.inference_mode`.
* On CPU the noise of the next batch is drawn in a helper thread while the model
  runs on the current one (the compiled Philox loop and torch's operations release the GIL;
  see ``benchmarks/core.py overhead``); the draws are the same either way. On CUDA noise
  generation is already asynchronous on the device. A forked child starts its own
  helper thread (the parent's does not survive fork).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Callable

import torch

from certframe.core import philox
from certframe.core.statistics import check_count
from certframe.interfaces import NoiseKey
from certframe.validation import BatchChecks, ModelOutputError

NOISE_STREAM = philox.STREAM_VERSION
"""The noise stream's version, recorded in run manifests (``config.noise_stream``)."""


def draw_seed(seed: int, image_id: str, phase: str, index: int) -> int:
    """A 64-bit seed from a draw's full identity, for code that seeds a ``torch.Generator``.

    Not used for certification noise (that is :func:`gaussian_noise`); torch's CPU generator
    keeps only the low 32 bits of it.
    """
    identity = json.dumps([seed, image_id, phase, index], ensure_ascii=False).encode()
    return int.from_bytes(hashlib.blake2b(identity, digest_size=8).digest(), "little")


def noise_stream(key: NoiseKey, phase: str) -> philox.StreamKey:
    """The Philox stream of one image's phase: :func:`certframe.core.philox.stream_key` of
    ``(seed, image id, phase)``."""
    return philox.stream_key(key.seed, key.image_id, phase)


def gaussian_noise(shape, sigma: float, *, key: NoiseKey, phase: str, start: int, count: int,
                   device: torch.device, dtype=torch.float32) -> torch.Tensor:
    """Noise ``[count, *shape]`` with std ``sigma`` for draws ``start .. start+count-1`` of ``phase``.

    Made on ``device`` from the one stream of the module docstring (the same values on every
    device). ``0 <= start``, ``start + count <= 2**63``.
    """
    if not isinstance(key, NoiseKey):
        raise TypeError(f"key must be a NoiseKey(seed, image_id), got {type(key).__name__}")
    if start < 0 or start + count > 2 ** 63:
        raise ValueError(f"draw indices must lie in [0, 2**63), got {start}..{start + count - 1}")
    numel = math.prod(shape)
    z = philox.normal(noise_stream(key, phase), start, count, numel, device=device, dtype=dtype)
    return z.view(count, *shape).mul_(sigma)


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

    def _noise(self, phase: str, start: int, count: int) -> torch.Tensor:
        """Noise ``[count, C, *S]`` of draws ``start .. start + count - 1`` (any thread)."""
        with torch.inference_mode():
            return gaussian_noise(tuple(self.x.shape), self.sigma, key=self.key, phase=phase, start=start,
                                  count=count, device=self.x.device, dtype=self.x.dtype)

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


class RecordingVotes:
    """A :class:`~certframe.interfaces.VoteSource` proxy that keeps the counts it hands out.

    ``recorded[phase]``: the sum of every count of that phase handed to the certifier, so that
    g's plain majority vote (:meth:`majority`) comes from the certificate's own draws, at no extra pass.
    """

    def __init__(self, votes):
        self.votes = votes
        self.num_classes = votes.num_classes
        self.recorded: dict[str, torch.Tensor] = {}

    def counts(self, phase: str, n: int, start: int = 0) -> torch.Tensor:
        c = self.votes.counts(phase, n, start)
        self.recorded[phase] = c if phase not in self.recorded else self.recorded[phase] + c
        return c

    @property
    def forward_passes(self) -> int:
        return self.votes.forward_passes

    def majority(self) -> torch.Tensor:
        """g's plain majority vote ``[*S]``: argmax of the estimation counts (else of all)."""
        counts = self.recorded.get("estimation")
        if counts is None:
            counts = sum(self.recorded.values())
        return counts.argmax(dim=0)
