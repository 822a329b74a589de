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
from certframe.core.smoothing import SmoothedSegmenter
from certframe.interfaces import Certifier, CertifyRequest, NoiseKey, Sample, SegmentationDataset, class_labels
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


__all__ = ["CertifyStep", "ImageResult", "RecordingVotes", "resolve_batch_size"]


class AttackStep(CertifyStep):
    """Certify an image, run every attack job, and test each certificate's claim at the attacked images.

    jobs: :func:`certframe.attacks.suite.attack_jobs` (the falsification job, then attack x
    budget); attack_options: ``{attack: {key: value}}``; falsify_options: options of
    :func:`certframe.attacks.falsification.falsify` (max_pixels, steps, restarts, num_draws,
    n_test, level, empirical, ...). test_level: family-wise level of the test at x' for the
    whole-image attacks (Holm over the covered pixels, ``n`` fresh draws per x').
    Rows: see :mod:`certframe.attacks.suite`; one per (job, tau). The falsification job's
    per-pixel results are kept in :attr:`ImageResult.pixels`.
    """

    def __init__(self, *args, jobs, attack_options: dict | None = None, falsify_options: dict | None = None,
                 test_level: float | None = None, **kwargs):
        from certframe.attacks.flip_test import DEFAULT_LEVEL

        super().__init__(*args, **kwargs)
        self.jobs = list(jobs)
        self.attack_options = dict(attack_options or {})
        self.falsify_options = dict(falsify_options or {})
        self.test_level = float(test_level if test_level is not None else
                                self.falsify_options.get("level", DEFAULT_LEVEL))

    def build_attack(self, job, eps: float):
        """The attack object of one job at budget ``eps``, for the segmenter or the smoothed pipeline."""
        options = {"model": self.smoothed.segmenter, "eps": eps, "seed": self.seed,
                   **self.attack_options.get(job.name, {})}
        if job.pass_norm:
            options["norm"] = job.norm
        if job.threat == "smoothed":
            options.update(sigma=self.request.sigma, denoiser=self.smoothed.denoiser)
        return job.factory(**options)

    def fresh_counts(self, adv: torch.Tensor, image_id: str, phase: str) -> torch.Tensor:
        """``n`` fresh votes ``[K, H, W]`` at the attacked image ``adv [C, H, W]``, under a phase of their own
        (independent of every certificate's draws); drawn once per x' and shared by its certificates."""
        from certframe.attacks.falsification import fresh_votes

        return fresh_votes(self.smoothed, adv, seed=self.seed, image_id=image_id,
                           batch_size=self.batch_size).counts(phase, self.request.n)

    def test_at(self, counts: torch.Tensor, cert: Certificate, l2: float, multiple: float | None) -> dict:
        """The sound check of one certificate at one attacked image, from its fresh votes ``counts [K, H, W]``.

        Covered pixels: certified, with ``k R_i > ||x' - x||_2`` (k = the job's radius multiple,
        1 for a fixed budget). Each covered pixel's votes for its certified class (or, certified as a group of
        a label hierarchy, for any class of the group) go into the exact
        one-sided test of ``p(c_i | x') >= 1/2`` with Holm over the covered pixels at
        ``test_level`` (:func:`certframe.attacks.flip_test.flip_test`); rejections are violations.
        Returns the check columns plus ``_majority`` (g's majority vote at x', [H, W]).
        """
        from certframe.attacks.falsification import claimed_votes, covered_pixels, leaves_claim
        from certframe.attacks.flip_test import flip_test

        k = 1.0 if multiple is None else float(multiple)
        claimed, radius = covered_pixels(cert)
        covered = claimed & (k * radius > l2)
        n = self.request.n
        majority = counts.argmax(dim=0)
        m = int(covered.sum())
        row = {"covered": m, "tested": m, "violations": None, "flips_beyond_claim": None, "not_tested": m == 0,
               "min_upper_bound": None, "test_level": self.test_level, "n_test": n,
               "majority_flips": int((covered.to(majority.device)
                                      & leaves_claim(majority, cert, counts.shape[0])).sum()),
               "empirical_radius_min": None, "certified_radius_min": None, "_majority": majority}
        if m:
            votes = claimed_votes(counts, cert)[covered.to(counts.device)]
            rejected, upper = flip_test(votes.cpu().numpy(), n, self.test_level)
            found = int(rejected.sum())
            row.update(min_upper_bound=float(upper.min()), certified_radius_min=float(radius[covered].min()))
            row["violations" if k <= 1 else "flips_beyond_claim"] = found
        return row

    def __call__(self, index: int, sample: Sample) -> ImageResult:
        import math

        from certframe.attacks.falsification import falsify
        from certframe.attacks.suite import FALSIFY, RADIUS_MARGIN
        from certframe.interfaces import ABSTAIN

        validate_sample(sample, self.dataset.class_names, self.dataset.in_channels)
        K = self.dataset.num_classes
        start = time.perf_counter()
        x, y = sample.image.to(self.device), sample.mask
        certs, votes = self.certify(x, sample.id, record=True)
        majority = votes.majority()
        estimation = votes.recorded.get("estimation")
        clean = self.clean_prediction(x)
        clean_dice = metrics.mean_dice(clean, y, K)
        smoothed_dice = metrics.mean_dice(majority.cpu(), y, K)
        none_certified = metrics.mean_dice(torch.full_like(y, ABSTAIN), y, K)
        rows, pixels = {}, []

        def add(j, t, cert, job, eps, check, **values):
            bound = eps if job.norm == "l2" else eps * math.sqrt(x.numel())
            certified = metrics.mean_dice(cert.labels.cpu(), y, K)
            check = {key: v for key, v in check.items() if not key.startswith("_")}
            rows[(j, t)] = {
                **self.identity(index, sample, cert), "attack": job.name, "threat": job.threat, "norm": job.norm,
                "radius_multiple": job.radius_multiple, "eps": eps, "eps_l2_bound": bound,
                "perturbation_l2": values.get("l2"), "perturbation_linf": values.get("linf"),
                "clean_dice": clean_dice, "base_robust_dice": values.get("base_robust"),
                "smoothed_dice": smoothed_dice, "smoothed_robust_dice": values.get("smoothed_robust"),
                "certified_dice": certified,
                "certified_dice_at_eps": certified if cert.radius >= bound else none_certified,
                "abstain_rate": cert.abstain_rate, **check,   # at any level of a hierarchy
                "attack_seconds": values.get("seconds"), "seconds": 0.0}

        for j, job in enumerate(self.jobs):
            if job.name == FALSIFY:
                for t, cert in enumerate(certs):
                    res = falsify(self.smoothed, x, cert, estimation_counts=estimation,
                                  radius_multiple=job.radius_multiple, seed=self.seed, image_id=sample.id,
                                  batch_size=self.batch_size,
                                  **{"empirical": job.radius_multiple == 1.0, **self.falsify_options})
                    r = res.as_row()
                    check = {key: r[key] for key in ("covered", "tested", "violations", "flips_beyond_claim",
                                                     "not_tested", "min_upper_bound", "n_test",
                                                     "empirical_radius_min", "certified_radius_min")}
                    check.update(test_level=r["test_level"], majority_flips=None)
                    add(j, t, cert, job, job.radius_multiple * cert.radius, check,
                        l2=r["perturbation_l2_max"], seconds=r["falsify_seconds"])
                    pixels += [{"index": index, "radius_multiple": job.radius_multiple, **p}
                               for p in res.pixel_rows()]
                continue
            # the attack aims at the certified labels (abstained pixels: g's majority vote)
            target = torch.where(certs[0].labels != ABSTAIN, certs[0].labels, majority).to(self.device)
            per_cert = job.eps is None
            budgets = ([cert.radius * job.radius_multiple * (1 - RADIUS_MARGIN) for cert in certs] if per_cert
                       else [job.eps])
            for b, eps in enumerate(budgets):
                mine = [certs[b]] if per_cert else certs
                labels = mine[0].labels
                aim = torch.where(labels != ABSTAIN, labels, majority).to(self.device) if per_cert else target
                t0 = time.perf_counter()
                adv = self.build_attack(job, eps)(x.unsqueeze(0), aim.unsqueeze(0))[0]
                seconds = time.perf_counter() - t0
                d = (adv.double() - x.double()).flatten()
                l2, linf = float(d.norm(p=2)), float(d.abs().max())
                base_robust = metrics.mean_dice(self.clean_prediction(adv), y, K)
                counts = self.fresh_counts(adv, sample.id, phase=f"falsification-image-{j}-{b}")
                for t in ([b] if per_cert else range(len(certs))):
                    cert = certs[t]
                    check = self.test_at(counts, cert, l2, job.radius_multiple)
                    smoothed_robust = metrics.mean_dice(check["_majority"].cpu(), y, K)
                    add(j, t, cert, job, eps, check, l2=l2, linf=linf, base_robust=base_robust,
                        smoothed_robust=smoothed_robust, seconds=seconds)
        seconds = time.perf_counter() - start
        ordered = [rows[key] for key in sorted(rows)]
        for row in ordered:
            row["seconds"] = seconds
        return ImageResult(index, sample, certs, clean, ordered, majority=majority, pixels=pixels)


__all__ += ["AttackStep"]
