"""Certify a whole data set: the library function behind ``certframe certify``.

One row per (image, tau) is produced as soon as the image is done, so callers can
write results incrementally (and resume). Row columns: ``image_id``, ``index``,
``segmenter``, ``denoiser``, ``certifier``, ``sigma``, ``tau``, ``radius``,
``n0``, ``n``, ``alpha``, ``certified_dice`` (mean over foreground classes; per
class too when K > 2), ``clean_dice`` (base segmenter on the clean image),
``abstain_rate``, ``certified_accuracy``, ``num_samples``, ``forward_passes``,
``seconds``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import torch

from certframe import metrics
from certframe.interfaces import (Certifier, CertifyRequest, Denoiser, NoiseKey, Sample, SegmentationDataset,
                                  Segmenter, class_labels)
from certframe.smoothing import SmoothedSegmenter
from certframe.validation import validate_sample


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU; anything else is passed to torch."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} asked for, but CUDA is not available here")
    return dev


def prepare_models(segmenter: Segmenter, denoiser: Denoiser | None, dataset: SegmentationDataset,
                   device: torch.device) -> tuple[Segmenter, Denoiser | None]:
    """Move both models to ``device`` in eval mode; the segmenter's classes must match the data set's."""
    segmenter = segmenter.to(device).eval()
    if denoiser is not None:
        denoiser = denoiser.to(device).eval()
    if segmenter.num_classes != dataset.num_classes:
        raise ValueError(f"the segmenter predicts {segmenter.num_classes} classes, the dataset declares "
                         f"{dataset.num_classes} ({', '.join(dataset.class_names)})")
    return segmenter, denoiser


@dataclass
class Names:
    """How the pieces are named in the result rows."""

    segmenter: str = "segmenter"
    denoiser: str = "none"
    certifier: str = "segcertify"


def certify_dataset(dataset: SegmentationDataset, segmenter: Segmenter, denoiser: Denoiser | None,
                    certifier: Certifier, *, sigma: float, n0: int, n: int, alpha: float,
                    taus: Sequence[float] = (0.75,), batch_size: int = 32, seed: int = 0,
                    device: str | torch.device = "auto", names: Names | None = None,
                    indices: Iterable[int] | None = None,
                    on_image: Callable[[int, str, list[dict]], None] | None = None,
                    on_certificates: Callable[[int, Sample, list, torch.Tensor], None] | None = None,
                    accelerate=None) -> Iterator[dict]:
    """Yield result rows (dicts), image by image.

    indices: which items to certify (default: all); lets a caller skip finished ones.
    on_image: called after each image with (index, image id, its rows).
    on_certificates: called after each image, before ``on_image``, with (index, the
        :class:`Sample`, its :class:`~certframe.results.Certificate` list (one per tau),
        the base segmenter's clean prediction int64 ``[H, W]`` on the CPU); lets a caller
        keep the label maps (run folders save them for figures).
    accelerate: a :class:`certframe.accelerate.Acceleration` (mixed precision on CUDA,
        channels_last, torch.compile, prefetching) or None (plain fp32, no prefetch).
    batch_size: draws per forward pass, or ``"auto"`` (sized to the memory available,
        :func:`certframe.accelerate.auto_batch_size`, on the first image).
    """
    request = CertifyRequest(sigma, n0, n, alpha, taus)
    names = names or Names()
    device = resolve_device(device)
    segmenter, denoiser = prepare_models(segmenter, denoiser, dataset, device)
    if accelerate is None:
        smoothed = SmoothedSegmenter(segmenter, denoiser, request.sigma)
    else:
        smoothed = accelerate.smoothed(segmenter, denoiser, request.sigma, device)
    from certframe.accelerate import auto_batch_size, samples

    wanted = range(len(dataset)) if indices is None else indices
    for index, sample in samples(dataset, wanted, accelerate, device):
        validate_sample(sample, dataset.class_names, dataset.in_channels)
        start = time.perf_counter()
        x = sample.image.to(device)
        if batch_size == "auto":
            batch_size = auto_batch_size(smoothed, x, max(request.n0, request.n))
        certs = smoothed.certify(x, certifier, key=NoiseKey(seed, sample.id), n0=request.n0, n=request.n,
                                 alpha=request.alpha, taus=request.taus, batch_size=batch_size)
        with torch.inference_mode():
            clean = class_labels(segmenter(x.unsqueeze(0)))[0].cpu()
        seconds = time.perf_counter() - start
        mask = sample.mask
        clean_dice = metrics.mean_dice(clean, mask, dataset.num_classes)
        rows = []
        for cert in certs:
            labels = cert.labels.cpu()
            row = {"image_id": sample.id, "index": index, "segmenter": names.segmenter,
                   "denoiser": names.denoiser, "certifier": names.certifier, "sigma": request.sigma,
                   "tau": cert.tau, "radius": cert.radius, "n0": request.n0, "n": request.n,
                   "alpha": request.alpha}
            row.update(metrics.metric_row(labels, mask, dataset.class_names))
            row.update({"clean_dice": clean_dice, "abstain_rate": metrics.abstain_rate(labels),
                        "certified_accuracy": metrics.certified_accuracy(labels, mask),
                        "num_samples": cert.num_samples,
                        "forward_passes": cert.info.get("forward_passes", 0), "seconds": seconds})
            rows.append(row)
        if on_certificates is not None:
            on_certificates(index, sample, certs, clean)
        if on_image is not None:
            on_image(index, sample.id, rows)
        yield from rows
