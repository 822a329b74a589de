"""The per-image step of every run: certify one image (and, for attack runs, attack it and re-test).

``certframe certify``, ``demo``, the torchrun/SLURM path and ``certframe attack`` all
certify an image through :meth:`CertifyStep.certify` (which is
:meth:`SmoothedSegmenter.certify_request <certframe.core.smoothing.SmoothedSegmenter.certify_request>`,
a library call's certification); :class:`certframe.run.attack_step.AttackStep` adds the
attacks and the checks of the certificates on the attacked images. A step holds what
is fixed for the whole run (the smoothed segmenter on its device, the certifier, the
request, the seed, the batch size, the names in the rows) and turns one
:class:`~certframe.interfaces.Sample` into an :class:`ImageResult`: the certificates
(one per tau), the base segmenter's clean prediction and the result rows.

Certify rows, one per (image, tau): ``image_id``, ``index``, ``segmenter``, ``denoiser``,
``certifier``, ``sigma``, ``tau``, ``radius``, ``n0``, ``n``, ``alpha``, ``certified_dice``
(mean over foreground classes; per class too when K > 2), ``clean_dice`` (base segmenter on
the clean image), ``abstain_rate``, ``certified_accuracy``, ``num_samples``,
``forward_passes``, ``seconds``. A hierarchical certificate adds the columns of
:func:`certframe.core.hierarchy_metrics.hierarchy_metric_row` (per level, CIG) and its ``abstain_rate``
counts the pixels certified at no level.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from certframe.core import metrics
from certframe.core.certificate import Certificate
from certframe.core.hierarchy_metrics import hierarchy_metric_row
from certframe.core.sampler import RecordingVotes
from certframe.core.smoothing import SmoothedSegmenter
from certframe.interfaces import Certifier, CertifyRequest, NoiseKey, Sample, SegmentationDataset
from certframe.run.build import Names
from certframe.validation import validate_sample


@dataclass
class ImageResult:
    """What one image gave: its certificates (one per tau), the clean prediction, the rows."""

    index: int
    sample: Sample
    certificates: list[Certificate]
    clean: torch.Tensor                 # int64 [*S] ([H, W] or [D, H, W]) on the CPU: the base segmenter on x
    rows: list[dict] = field(default_factory=list)
    majority: torch.Tensor | None = None  # int64 [*S]: g's plain majority vote (attack runs)
    pixels: list[dict] = field(default_factory=list)  # per attacked pixel (the falsification job)
    labels: list[torch.Tensor] = field(default_factory=list)  # each certificate's labels [*S] on the CPU


def resolve_batch_size(batch_size: int | str, smoothed: SmoothedSegmenter, x: torch.Tensor,
                       request: CertifyRequest) -> int:
    """``"auto"`` becomes the draws per pass that fit the memory (sized on ``x``); an int stays."""
    if batch_size != "auto":
        return int(batch_size)
    from certframe.run.accelerate import auto_batch_size

    return auto_batch_size(smoothed, x, max(request.n0, request.n))


class CertifyStep:
    """Certify images of one data set with one smoothed segmenter and certifier.

    smoothed: the :class:`SmoothedSegmenter` (models already on ``device``).
    request: the validated :class:`CertifyRequest`; seed: with each image's id, fixes the draws.
    batch_size: draws per forward pass, or ``"auto"`` (sized on the first image, then kept).
    """

    def __init__(self, smoothed: SmoothedSegmenter, certifier: Certifier, dataset: SegmentationDataset,
                 request: CertifyRequest, *, seed: int, batch_size: int | str, device: torch.device,
                 names: Names):
        self.smoothed, self.certifier, self.dataset = smoothed, certifier, dataset
        self.request, self.seed, self.batch_size = request, seed, batch_size
        self.device, self.names = device, names

    # -- the parts
    def certify(self, x: torch.Tensor, image_id: str, *, record: bool = False):
        """Certificates of ``x [C, H, W]`` (on the device), one per tau; with ``record`` also g's majority.

        Returns ``(certificates, votes)`` where ``votes`` is the vote source used (a
        :class:`~certframe.core.sampler.RecordingVotes` when ``record``): the certification is
        :meth:`SmoothedSegmenter.certify_request`'s, the same as a library call's.
        """
        if self.batch_size == "auto":
            self.batch_size = resolve_batch_size("auto", self.smoothed, x, self.request)
        done = self.smoothed.certify_request(x, self.certifier, self.request, key=NoiseKey(self.seed, image_id),
                                             batch_size=self.batch_size, record=record)
        return done.certificates, done.votes

    def clean_prediction(self, x: torch.Tensor) -> torch.Tensor:
        """The base segmenter's labels ``[H, W]`` (CPU) on the clean image ``x [C, H, W]``."""
        return self.smoothed.clean_prediction(x).cpu()

    def identity(self, index: int, sample: Sample, cert: Certificate) -> dict:
        """The identifying columns every row of this image at this certificate starts with."""
        r = self.request
        return {"image_id": sample.id, "index": index, "segmenter": self.names.segmenter,
                "denoiser": self.names.denoiser, "certifier": self.names.certifier, "sigma": r.sigma,
                "tau": cert.tau, "radius": cert.radius, "n0": r.n0, "n": r.n, "alpha": r.alpha}

    # -- the step
    def __call__(self, index: int, sample: Sample) -> ImageResult:
        """Certify one sample; rows as in the module docstring."""
        validate_sample(sample, self.dataset.class_names, self.dataset.in_channels)
        start = time.perf_counter()
        x = sample.image.to(self.device)
        certs, _ = self.certify(x, sample.id)
        clean = self.clean_prediction(x)
        seconds = time.perf_counter() - start
        mask = sample.mask
        clean_dice = metrics.mean_dice(clean, mask, self.dataset.num_classes)
        rows, cpu_labels = [], []
        for cert in certs:
            labels = cert.labels.cpu()
            cpu_labels.append(labels)
            row = self.identity(index, sample, cert)
            row.update(metrics.metric_row(labels, mask, self.dataset.class_names))
            row.update({"clean_dice": clean_dice, "abstain_rate": metrics.abstain_rate(labels),
                        "certified_accuracy": metrics.certified_accuracy(labels, mask),
                        "num_samples": cert.num_samples,
                        "forward_passes": cert.info.get("forward_passes", 0), "seconds": seconds})
            row.update(hierarchy_metric_row(cert, mask))  # a hierarchical certificate: per level, CIG
            rows.append(row)
        return ImageResult(index, sample, certs, clean, rows, labels=cpu_labels)




# RecordingVotes is certframe.core.sampler's, importable from here as before
__all__ = ["CertifyStep", "ImageResult", "RecordingVotes", "resolve_batch_size"]
