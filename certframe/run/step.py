"""The per-image step of every run: certify one image (and, for attack runs, attack it and re-test).

``certframe certify``, ``demo``, the torchrun/SLURM path and ``certframe attack`` all
certify an image through :meth:`CertifyStep.certify`; :class:`AttackStep` adds the
attacks and the checks of the certificates on the attacked images. A step holds what
is fixed for the whole run (the smoothed segmenter on its device, the certifier, the
request, the seed, the batch size, the names in the rows) and turns one
:class:`~certframe.interfaces.Sample` into an :class:`ImageResult`: the certificates
(one per tau), the base segmenter's clean prediction and the result rows.

Certify rows, one per (image, tau): ``image_id``, ``index``, ``segmenter``, ``denoiser``,
``certifier``, ``sigma``, ``tau``, ``radius``, ``n0``, ``n``, ``alpha``, ``certified_dice``
(mean over foreground classes; per class too when K > 2), ``clean_dice`` (base segmenter on
the clean image), ``abstain_rate``, ``certified_accuracy``, ``num_samples``,
``forward_passes``, ``seconds``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import torch

from certframe import metrics
from certframe.interfaces import Certifier, CertifyRequest, NoiseKey, Sample, SegmentationDataset, class_labels
from certframe.results import Certificate
from certframe.run.build import Names
from certframe.smoothing import SmoothedSegmenter
from certframe.validation import validate_sample


@dataclass
class ImageResult:
    """What one image gave: its certificates (one per tau), the clean prediction, the rows."""

    index: int
    sample: Sample
    certificates: list[Certificate]
    clean: torch.Tensor                 # int64 [H, W] on the CPU: the base segmenter on the clean image
    rows: list[dict] = field(default_factory=list)
    majority: torch.Tensor | None = None  # int64 [H, W]: g's plain majority vote (attack runs)


class RecordingVotes:
    """A :class:`~certframe.interfaces.VoteSource` proxy that keeps the counts it hands out."""

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
        """g's plain majority vote ``[H, W]``: argmax of the estimation counts (else of all)."""
        counts = self.recorded.get("estimation")
        if counts is None:
            counts = sum(self.recorded.values())
        return counts.argmax(dim=0)


def resolve_batch_size(batch_size: int | str, smoothed: SmoothedSegmenter, x: torch.Tensor,
                       request: CertifyRequest) -> int:
    """``"auto"`` becomes the draws per pass that fit the memory (sized on ``x``); an int stays."""
    if batch_size != "auto":
        return int(batch_size)
    from certframe.accelerate import auto_batch_size

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
        :class:`RecordingVotes` when ``record``).
        """
        if self.batch_size == "auto":
            self.batch_size = resolve_batch_size("auto", self.smoothed, x, self.request)
        votes = self.smoothed.voter(x, NoiseKey(self.seed, image_id), batch_size=self.batch_size)
        if record:
            votes = RecordingVotes(votes)
        certs = self.certifier.certify(votes, self.request)
        if len(certs) != len(self.request.taus):
            raise ValueError(f"certifier {self.certifier.name!r} returned {len(certs)} certificates for "
                             f"{len(self.request.taus)} taus")
        for cert in certs:
            cert.info.setdefault("forward_passes", votes.forward_passes)
        return certs, votes

    def clean_prediction(self, x: torch.Tensor) -> torch.Tensor:
        """The base segmenter's labels ``[H, W]`` (CPU) on the clean image ``x [C, H, W]``."""
        with torch.inference_mode():
            return class_labels(self.smoothed.segmenter(x.unsqueeze(0)))[0].cpu()

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
        rows = []
        for cert in certs:
            labels = cert.labels.cpu()
            row = self.identity(index, sample, cert)
            row.update(metrics.metric_row(labels, mask, self.dataset.class_names))
            row.update({"clean_dice": clean_dice, "abstain_rate": metrics.abstain_rate(labels),
                        "certified_accuracy": metrics.certified_accuracy(labels, mask),
                        "num_samples": cert.num_samples,
                        "forward_passes": cert.info.get("forward_passes", 0), "seconds": seconds})
            rows.append(row)
        return ImageResult(index, sample, certs, clean, rows)


__all__ = ["CertifyStep", "ImageResult", "RecordingVotes", "resolve_batch_size"]


class AttackStep(CertifyStep):
    """Certify an image, attack it with every job, and check each certificate on the attacked image.

    jobs: :func:`certframe.attacks.suite.attack_jobs` (attack x budget); attack_options:
    ``{attack: {key: value}}``. Rows: see :mod:`certframe.attacks.suite`; one per (job, tau).
    """

    def __init__(self, *args, jobs, attack_options: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.jobs = list(jobs)
        self.attack_options = dict(attack_options or {})

    def build_attack(self, job):
        """The attack object of one job, for the segmenter (base threat) or the smoothed pipeline."""
        options = {"model": self.smoothed.segmenter, "eps": job.eps, "seed": self.seed,
                   **self.attack_options.get(job.name, {})}
        if job.pass_norm:
            options["norm"] = job.norm
        if job.threat == "smoothed":
            options.update(sigma=self.request.sigma, denoiser=self.smoothed.denoiser)
        return job.factory(**options)

    def __call__(self, index: int, sample: Sample) -> ImageResult:
        import math

        from certframe.attacks.violations import count_violations
        from certframe.interfaces import ABSTAIN

        validate_sample(sample, self.dataset.class_names, self.dataset.in_channels)
        K = self.dataset.num_classes
        start = time.perf_counter()
        x, y = sample.image.to(self.device), sample.mask
        certs, votes = self.certify(x, sample.id, record=True)
        majority = votes.majority()
        clean = self.clean_prediction(x)
        clean_dice = metrics.mean_dice(clean, y, K)
        smoothed_dice = metrics.mean_dice(majority.cpu(), y, K)
        none_certified = metrics.mean_dice(torch.full_like(y, ABSTAIN), y, K)
        rows = []
        for job in self.jobs:
            attack = self.build_attack(job)
            t0 = time.perf_counter()
            adv = attack(x.unsqueeze(0), y.unsqueeze(0).to(self.device))
            attack_seconds = time.perf_counter() - t0
            d = (adv[0].double() - x.double()).flatten()
            l2, linf = float(d.norm(p=2)), float(d.abs().max())
            bound = job.eps if job.norm == "l2" else job.eps * math.sqrt(x.numel())
            base_adv = self.clean_prediction(adv[0])
            certs_adv, votes_adv = self.certify(adv[0], sample.id, record=True)
            majority_adv = votes_adv.majority().cpu()
            base_robust = metrics.mean_dice(base_adv, y, K)
            smoothed_robust = metrics.mean_dice(majority_adv, y, K)
            for cert, cert_adv in zip(certs, certs_adv):
                labels, labels_adv = cert.labels.cpu(), cert_adv.labels.cpu()
                check = count_violations(labels, cert.radius, labels_adv, l2, majority_adv)
                certified = metrics.mean_dice(labels, y, K)
                rows.append({
                    **self.identity(index, sample, cert),
                    "attack": job.name, "threat": job.threat, "norm": job.norm, "eps": job.eps,
                    "eps_l2_bound": bound, "perturbation_l2": l2, "perturbation_linf": linf,
                    "clean_dice": clean_dice, "base_robust_dice": base_robust,
                    "smoothed_dice": smoothed_dice, "smoothed_robust_dice": smoothed_robust,
                    "certified_dice": certified,
                    "certified_dice_at_eps": certified if cert.radius >= bound else none_certified,
                    "certified_dice_adv": metrics.mean_dice(labels_adv, y, K),
                    "abstain_rate": metrics.abstain_rate(labels),
                    "covers": check.covers, **check.as_row(),
                    "attack_seconds": attack_seconds, "seconds": 0.0,
                })
        seconds = time.perf_counter() - start
        for row in rows:
            row["seconds"] = seconds
        return ImageResult(index, sample, certs, clean, rows, majority=majority)


__all__ += ["AttackStep"]
