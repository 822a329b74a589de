"""Throughput: batch sizing, mixed precision, channels_last, torch.compile, prefetching.

Certification costs ``n0 + n`` forward passes of ``segmenter o denoiser`` per image;
this module makes each pass cheap without changing what is certified.

* :class:`Acceleration` holds the options; ``resolve(device)`` turns ``"auto"`` into
  concrete choices. Safe defaults: on CPU everything stays fp32 / contiguous (an
  explicit mixed precision on CPU is an error); on CUDA ``auto`` picks bf16 autocast
  where the GPU supports it (else fp16) and channels_last.
* :class:`AcceleratedSmoothedSegmenter`: a :class:`~certframe.core.smoothing.SmoothedSegmenter`
  whose base pipeline runs under ``torch.autocast`` (mixed precision), with inputs in
  channels_last memory format, optionally ``torch.compile``'d, and which splits a
  batch in halves when CUDA runs out of memory (the noise is drawn before the model
  is called, so the votes do not depend on how a batch is split).
* :func:`auto_batch_size`: draws per forward pass from the memory available
  (CUDA: ``torch.cuda.mem_get_info`` and the peak memory of a probe pass; CPU: a cap
  that scales with the image size).
* :func:`prefetch`: loads (and on CUDA pins and copies) the next images in a
  background thread while the current one is certified.
* :func:`sliding_windows`, :func:`certification_cost`: the draws x windows a volume
  costs (``docs/volumes.md``).

Mixed precision changes the base model f (its argmax may differ on near-ties), so
the certificate is a certificate of the smoothed model of the pipeline *as run*: the
guarantee holds unchanged for that model, and results are reproducible for the same
precision and device type. Runs record the resolved options in their manifest.
"""
from __future__ import annotations

import logging
import math
import queue
import threading
from dataclasses import asdict, dataclass
from typing import Iterable, Iterator, Sequence

import torch

from certframe.core.smoothing import SmoothedSegmenter
from certframe.device import PRECISIONS, autocast, resolve_precision, strict_fp32
from certframe.interfaces import Denoiser, Sample, SegmentationDataset, Segmenter, model_spatial_dims

log = logging.getLogger("certframe.run.accelerate")

CPU_PIXEL_BUDGET = 32 * 256 * 256
"""On CPU, draws per pass = this many input pixels or voxels (32 images of 256 x 256, 8 volumes of
64^3), at least 1."""


def _memory_format(volume: bool) -> torch.memory_format:
    """channels_last for 4-D tensors ``[B, C, H, W]``, channels_last_3d for 5-D ``[B, C, D, H, W]``."""
    return torch.channels_last_3d if volume else torch.channels_last


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


@dataclass(frozen=True)
class Acceleration:
    """Throughput options (none of them changes the maths of certification).

    precision: ``auto`` (CUDA: bf16 if supported else fp16; CPU: fp32), ``fp32``,
        ``bf16`` or ``fp16`` (autocast of the denoiser and segmenter; CUDA only).
    channels_last: ``None`` = auto (on CUDA only), or True / False (True on CPU is allowed
        but rarely faster).
    compile: wrap the base pipeline in ``torch.compile`` (off by default: the first
        batch then takes seconds to minutes).
    prefetch: images loaded ahead in a background thread (0 = none).
    """

    precision: str = "auto"
    channels_last: bool | None = None
    compile: bool = False
    prefetch: int = 2

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if int(self.prefetch) < 0:
            raise ValueError(f"prefetch must be a number of images >= 0, got {self.prefetch}")

    def resolve(self, device: str | torch.device) -> "Acceleration":
        """Concrete options for ``device``: ``precision`` becomes fp32/bf16/fp16, ``channels_last`` a bool."""
        precision = resolve_precision(self.precision, device)
        cuda = torch.device(device).type == "cuda"
        channels_last = cuda if self.channels_last is None else bool(self.channels_last)
        return Acceleration(precision=precision, channels_last=channels_last, compile=bool(self.compile),
                            prefetch=int(self.prefetch))

    def as_dict(self) -> dict:
        return asdict(self)

    def smoothed(self, segmenter: Segmenter, denoiser: Denoiser | None, sigma: float,
                 device: str | torch.device) -> "AcceleratedSmoothedSegmenter":
        """The smoothed segmenter with these (resolved) options on ``device``."""
        return AcceleratedSmoothedSegmenter(segmenter, denoiser, sigma, self.resolve(device))


class AcceleratedSmoothedSegmenter(SmoothedSegmenter):
    """:class:`SmoothedSegmenter` whose base pipeline runs with the options of an :class:`Acceleration`.

    ``base_logits([B, C, H, W]) -> [B, K, H, W]`` (float32 logits whatever the autocast
    dtype). On a CUDA out-of-memory error the batch is split in halves (recursively) and
    later calls use the smaller size (``max_batch``).
    """

    def __init__(self, segmenter: Segmenter, denoiser: Denoiser | None, sigma: float,
                 options: Acceleration):
        super().__init__(segmenter, denoiser, sigma)
        if options.precision == "auto" or options.channels_last is None:
            raise ValueError("pass resolved options (Acceleration.resolve(device))")
        self.options = options
        self.max_batch: int | None = None
        if options.channels_last:   # a volume model's 5-D weights take the 3-D variant
            for model in (segmenter, denoiser):
                if model is not None:
                    model.to(memory_format=_memory_format(3 in model_spatial_dims(model)
                                                          and 2 not in model_spatial_dims(model)))
        self._pipeline = self._raw_logits
        if options.compile:
            self._pipeline = torch.compile(self._raw_logits, dynamic=True)

    def _raw_logits(self, noisy: torch.Tensor) -> torch.Tensor:
        return super().base_logits(noisy)

    def _run(self, noisy: torch.Tensor) -> torch.Tensor:
        if self.options.channels_last and noisy.dim() in (4, 5):
            noisy = noisy.contiguous(memory_format=_memory_format(noisy.dim() == 5))
        if self.options.precision == "fp32":
            with strict_fp32(noisy.device.type):
                return self._pipeline(noisy)
        with autocast(self.options.precision, noisy.device):
            return self._pipeline(noisy).float()

    def base_logits(self, noisy: torch.Tensor) -> torch.Tensor:
        b = noisy.shape[0]
        if self.max_batch is not None and b > self.max_batch:
            return torch.cat([self.base_logits(part) for part in noisy.split(self.max_batch)])
        try:
            return self._run(noisy)
        except RuntimeError as err:
            if not _is_oom(err) or b == 1:
                raise
            if noisy.is_cuda:
                torch.cuda.empty_cache()
            self.max_batch = max(1, b // 2)
            log.warning("out of memory at %d draws per pass; continuing with %d", b, self.max_batch)
            return self.base_logits(noisy)


def auto_batch_size(smoothed: SmoothedSegmenter, image: torch.Tensor, limit: int,
                    memory_fraction: float = 0.8) -> int:
    """Draws per forward pass for ``image`` ``[C, H, W]`` or volume ``[C, D, H, W]`` (on the model's
    device), at most ``limit``.

    CUDA: run one probe pass of 2 draws, measure the peak memory it adds, and fit as
    many draws as ``memory_fraction`` of the free memory (``torch.cuda.mem_get_info``)
    holds; an out-of-memory error later still halves the batch
    (:class:`AcceleratedSmoothedSegmenter`). The probe is a whole-image (whole-volume)
    prediction, so a segmenter that runs a sliding window over a volume is measured with
    its windows. CPU: ``CPU_PIXEL_BUDGET / (number of pixels or voxels)`` (32 at
    256 x 256, 8 at 64^3, 1 from about 128^3), since bigger CPU batches only add memory,
    not speed.
    """
    limit = max(1, int(limit))
    spatial = tuple(image.shape[1:])
    if image.device.type != "cuda":
        return max(1, min(limit, CPU_PIXEL_BUDGET // math.prod(spatial)))
    torch.cuda.synchronize(image.device)
    torch.cuda.reset_peak_memory_stats(image.device)
    before = torch.cuda.memory_allocated(image.device)
    with torch.inference_mode():
        smoothed.base_labels(image.unsqueeze(0).expand(2, *image.shape).contiguous())
    torch.cuda.synchronize(image.device)
    per_draw = max(1, (torch.cuda.max_memory_allocated(image.device) - before) // 2)
    free, _ = torch.cuda.mem_get_info(image.device)
    size = int(free * memory_fraction // per_draw)
    return max(1, min(limit, size))


def sliding_windows(image_size: Sequence[int], roi_size: Sequence[int] | None = None,
                    overlap: float | Sequence[float] = 0.25) -> int:
    """Windows one whole-volume (or image) prediction runs when the segmenter uses MONAI's
    ``sliding_window_inference(roi_size, overlap)``; 1 without a window (``roi_size`` None).

    Per axis (MONAI's ``_get_scan_interval`` and ``dense_patch_slices``): the step is
    ``int(roi * (1 - overlap))`` (at least 1; ``roi`` when roi = size), and the windows
    ``ceil((size - roi) / step) + 1`` when size > roi, else 1 (the input is padded to roi).
    The count is the product over the axes. Example: a 128 x 128 x 128 volume, roi 96^3,
    overlap 0.25: step 72, ``ceil(32 / 72) + 1 = 2`` windows per axis, 8 per prediction.
    """
    if roi_size is None:
        return 1
    if len(roi_size) != len(image_size):
        raise ValueError(f"roi_size {tuple(roi_size)} and image_size {tuple(image_size)} differ in length")
    overlaps = [float(overlap)] * len(image_size) if isinstance(overlap, (int, float)) else list(overlap)
    total = 1
    for size, roi, o in zip(image_size, roi_size, overlaps):
        size, roi = int(size), int(roi)
        if size <= roi:
            continue
        step = max(1, int(roi * (1 - o)))
        total *= math.ceil((size - roi) / step) + 1
    return total


def certification_cost(image_size: Sequence[int], *, n0: int, n: int, roi_size: Sequence[int] | None = None,
                       overlap: float | Sequence[float] = 0.25) -> dict[str, int]:
    """What certifying one image or volume costs, for sizing a run (see ``docs/volumes.md``).

    draws: ``n0 + n`` noisy copies (the adaptive certifier draws at most this, often fewer);
    windows: :func:`sliding_windows` per draw (1 for a whole-input segmenter);
    window_passes: ``draws * windows``, the segmenter evaluations on one roi each (the
    compute; ``--batch-size`` and the segmenter's own window batch only group them into
    fewer, larger forward calls); voxels: per draw.
    """
    draws = int(n0) + int(n)
    windows = sliding_windows(image_size, roi_size, overlap)
    return {"draws": draws, "windows": windows, "window_passes": draws * windows,
            "voxels": math.prod(int(v) for v in image_size)}


def prefetch(dataset: SegmentationDataset, indices: Iterable[int], depth: int = 2,
             device: str | torch.device = "cpu") -> Iterator[tuple[int, Sample]]:
    """Yield ``(index, dataset[index])`` in order, loading up to ``depth`` items ahead in a thread.

    On CUDA the image is pinned and copied asynchronously to ``device`` by the loader
    thread (mask and id stay on the CPU). ``depth=0`` loads in the caller's thread.
    An exception while loading is raised in the caller at that item.
    """
    device = torch.device(device)
    indices = list(indices)
    if depth <= 0:
        for i in indices:
            yield i, dataset[i]
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def load():
        try:
            for i in indices:
                if stop.is_set():
                    return
                sample = dataset[i]
                if device.type == "cuda":
                    sample = Sample(sample.image.pin_memory().to(device, non_blocking=True), sample.mask,
                                    sample.id)
                q.put((i, sample, None))
        except BaseException as err:  # handed to the consumer
            q.put((None, None, err))
        q.put(done)

    thread = threading.Thread(target=load, name="certframe-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                break
            i, sample, err = item
            if err is not None:
                raise err
            yield i, sample
    finally:
        stop.set()
        while thread.is_alive():  # unblock a loader waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


__all__ = ["Acceleration", "AcceleratedSmoothedSegmenter", "auto_batch_size", "prefetch",
           "PRECISIONS", "sliding_windows", "certification_cost"]
