"""The per-image step of ``certframe attack``: certify an image, attack it, test each certificate at x'.

:class:`AttackStep` is a :class:`~certframe.run.step.CertifyStep` (the image is certified
exactly as ``certframe certify`` certifies it, its draws recorded for g's majority vote) that
then runs every job of the plan (:func:`certframe.attacks.suite.attack_jobs`), in order:

* the falsification job (:meth:`AttackStep.falsification_job`): each certificate's own claim
  attacked pixel by pixel and tested soundly (:func:`certframe.attacks.falsification.falsify`);
* each whole-image attack (:meth:`AttackStep.attack_job`), at each budget
  (:meth:`AttackStep.budgets`): the attacked image x' (:meth:`AttackStep.perturb`), ``n`` fresh
  draws at x', and the check of every certificate the budget concerns (:meth:`AttackStep.test_at`).

Every job gives one row per certificate it checks (:meth:`AttackStep.row`; the columns are
described in :mod:`certframe.attacks.suite`); the image's rows are ordered by (job, tau).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from certframe.attacks.falsification import claimed_votes, covered_pixels, falsify, fresh_votes, leaves_claim
from certframe.attacks.flip_test import DEFAULT_LEVEL, flip_test
from certframe.attacks.suite import FALSIFY, RADIUS_MARGIN
from certframe.core import metrics
from certframe.core.certificate import Certificate
from certframe.interfaces import ABSTAIN, Sample
from certframe.run.step import CertifyStep, ImageResult
from certframe.validation import validate_sample


def attack_arguments(job, *, segmenter, denoiser, sigma: float, seed: int, eps: float, options: dict) -> dict:
    """The keyword arguments of a job's attack factory: the model, the budget, the seed, the user's
    ``options``, the norm (for attacks that support several) and, for an attack on the smoothed
    pipeline, sigma and the denoiser."""
    arguments = {"model": segmenter, "eps": eps, "seed": seed, **options}
    if job.pass_norm:
        arguments["norm"] = job.norm
    if job.threat == "smoothed":
        arguments.update(sigma=sigma, denoiser=denoiser)
    return arguments


@dataclass
class CertifiedImage:
    """One image certified, as every attack job of it sees it."""

    index: int
    sample: Sample
    x: torch.Tensor                     # [C, H, W] on the device
    certificates: list[Certificate]     # one per tau
    majority: torch.Tensor              # g's plain majority vote [H, W] (the certificates' estimation draws)
    estimation: torch.Tensor | None     # the estimation counts [K, H, W]
    clean: torch.Tensor                 # f on x [H, W], on the CPU
    clean_dice: float                   # of f on x
    smoothed_dice: float                # of g's majority vote on x
    none_certified: float               # of an all-ABSTAIN map (certified_dice_at_eps beyond the radius)


@dataclass
class Perturbation:
    """An attacked image x' of one budget and how far it lies from x."""

    adv: torch.Tensor   # x' [C, H, W] on the device
    l2: float
    linf: float
    seconds: float      # the attack's wall time


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
        super().__init__(*args, **kwargs)
        self.jobs = list(jobs)
        self.attack_options = dict(attack_options or {})
        self.falsify_options = dict(falsify_options or {})
        self.test_level = float(test_level if test_level is not None else
                                self.falsify_options.get("level", DEFAULT_LEVEL))

    # -- the step
    def __call__(self, index: int, sample: Sample) -> ImageResult:
        """Certify one sample, run every job in order; rows ordered by (job, tau), each with the image's wall time."""
        validate_sample(sample, self.dataset.class_names, self.dataset.in_channels)
        start = time.perf_counter()
        image = self.certify_image(index, sample)
        rows, pixels = {}, []
        for j, job in enumerate(self.jobs):
            if job.name == FALSIFY:
                found, job_pixels = self.falsification_job(image, j, job)
                pixels += job_pixels
            else:
                found = self.attack_job(image, j, job)
            rows.update(found)
        seconds = time.perf_counter() - start
        ordered = [rows[key] for key in sorted(rows)]
        for row in ordered:
            row["seconds"] = seconds
        return ImageResult(index, sample, image.certificates, image.clean, ordered, majority=image.majority,
                           pixels=pixels)

    def certify_image(self, index: int, sample: Sample) -> CertifiedImage:
        """Certify ``sample`` (its draws recorded: g's majority vote) and score f and g on the clean image."""
        K = self.dataset.num_classes
        x, y = sample.image.to(self.device), sample.mask
        certs, votes = self.certify(x, sample.id, record=True)
        majority = votes.majority()
        estimation = votes.recorded.get("estimation")
        clean = self.clean_prediction(x)
        return CertifiedImage(index, sample, x, certs, majority, estimation, clean,
                              clean_dice=metrics.mean_dice(clean, y, K),
                              smoothed_dice=metrics.mean_dice(majority.cpu(), y, K),
                              none_certified=metrics.mean_dice(torch.full_like(y, ABSTAIN), y, K))

    # -- the jobs
    def falsification_job(self, image: CertifiedImage, j: int, job) -> tuple[dict, list[dict]]:
        """The falsification job ``j``: each certificate's claim at ``k R`` attacked pixel by pixel and tested.

        Returns ``({(j, t): row}, per-pixel rows)``.
        """
        rows, pixels = {}, []
        for t, cert in enumerate(image.certificates):
            res = falsify(self.smoothed, image.x, cert, estimation_counts=image.estimation,
                          radius_multiple=job.radius_multiple, seed=self.seed, image_id=image.sample.id,
                          batch_size=self.batch_size,
                          **{"empirical": job.radius_multiple == 1.0, **self.falsify_options})
            r = res.as_row()
            check = {key: r[key] for key in ("covered", "tested", "violations", "flips_beyond_claim",
                                             "not_tested", "min_upper_bound", "n_test",
                                             "empirical_radius_min", "certified_radius_min")}
            check.update(test_level=r["test_level"], majority_flips=None)
            rows[(j, t)] = self.row(image, cert, job, job.radius_multiple * cert.radius, check,
                                    l2=r["perturbation_l2_max"], seconds=r["falsify_seconds"])
            pixels += [{"index": image.index, "radius_multiple": job.radius_multiple, **p}
                       for p in res.pixel_rows()]
        return rows, pixels

    def attack_job(self, image: CertifiedImage, j: int, job) -> dict:
        """The whole-image attack job ``j`` at each of its budgets; returns ``{(j, t): row}``.

        The attack aims at the certified labels (abstained pixels: g's majority vote) of the first
        certificate its budget concerns; ``n`` fresh draws at x', in a phase of their own per budget,
        test every certificate it concerns.
        """
        K, y = self.dataset.num_classes, image.sample.mask
        rows = {}
        for b, (eps, taus) in enumerate(self.budgets(job, image.certificates)):
            labels = image.certificates[taus[0]].labels
            aim = torch.where(labels != ABSTAIN, labels, image.majority).to(self.device)
            attacked = self.perturb(job, eps, image.x, aim)
            base_robust = metrics.mean_dice(self.clean_prediction(attacked.adv), y, K)
            counts = self.fresh_counts(attacked.adv, image.sample.id, phase=f"falsification-image-{j}-{b}")
            for t in taus:
                cert = image.certificates[t]
                check = self.test_at(counts, cert, attacked.l2, job.radius_multiple)
                smoothed_robust = metrics.mean_dice(check["_majority"].cpu(), y, K)
                rows[(j, t)] = self.row(image, cert, job, eps, check, l2=attacked.l2, linf=attacked.linf,
                                        base_robust=base_robust, smoothed_robust=smoothed_robust,
                                        seconds=attacked.seconds)
        return rows

    # -- the parts
    @staticmethod
    def budgets(job, certs: list[Certificate]) -> list[tuple[float, list[int]]]:
        """``(eps, taus)`` per budget of a whole-image job: each certificate's own radius times k, shrunk by
        :data:`~certframe.attacks.suite.RADIUS_MARGIN` (the claim is an open ball), for that certificate
        alone; or the job's fixed budget for every certificate (``taus``: the certificates' indices)."""
        if job.eps is not None:
            return [(job.eps, list(range(len(certs))))]
        return [(cert.radius * job.radius_multiple * (1 - RADIUS_MARGIN), [t]) for t, cert in enumerate(certs)]

    def build_attack(self, job, eps: float):
        """The attack object of one job at budget ``eps``, for the segmenter or the smoothed pipeline."""
        return job.factory(**attack_arguments(job, segmenter=self.smoothed.segmenter, denoiser=self.smoothed.denoiser,
                                              sigma=self.request.sigma, seed=self.seed, eps=eps,
                                              options=self.attack_options.get(job.name, {})))

    def perturb(self, job, eps: float, x: torch.Tensor, aim: torch.Tensor) -> Perturbation:
        """Attack ``x [C, H, W]`` toward ``aim [H, W]`` with the job's attack at budget ``eps``."""
        t0 = time.perf_counter()
        adv = self.build_attack(job, eps)(x.unsqueeze(0), aim.unsqueeze(0))[0]
        seconds = time.perf_counter() - t0
        d = (adv.double() - x.double()).flatten()
        return Perturbation(adv, float(d.norm(p=2)), float(d.abs().max()), seconds)

    def fresh_counts(self, adv: torch.Tensor, image_id: str, phase: str) -> torch.Tensor:
        """``n`` fresh votes ``[K, H, W]`` at the attacked image ``adv [C, H, W]``, under a phase of their own
        (independent of every certificate's draws); drawn once per x' and shared by its certificates."""
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

    def row(self, image: CertifiedImage, cert: Certificate, job, eps: float, check: dict, **values) -> dict:
        """One result row: the image's identity at ``cert``, the job and its budget, the Dice scores, the
        check (its ``_``-prefixed entries left out) and ``values`` (l2, linf, base_robust, smoothed_robust,
        seconds: absent ones empty). ``seconds`` (the whole image's) is filled in by :meth:`__call__`."""
        K, y = self.dataset.num_classes, image.sample.mask
        bound = eps if job.norm == "l2" else eps * math.sqrt(image.x.numel())
        certified = metrics.mean_dice(cert.labels.cpu(), y, K)
        check = {key: v for key, v in check.items() if not key.startswith("_")}
        return {
            **self.identity(image.index, image.sample, cert), "attack": job.name, "threat": job.threat,
            "norm": job.norm, "radius_multiple": job.radius_multiple, "eps": eps, "eps_l2_bound": bound,
            "perturbation_l2": values.get("l2"), "perturbation_linf": values.get("linf"),
            "clean_dice": image.clean_dice, "base_robust_dice": values.get("base_robust"),
            "smoothed_dice": image.smoothed_dice, "smoothed_robust_dice": values.get("smoothed_robust"),
            "certified_dice": certified,
            "certified_dice_at_eps": certified if cert.radius >= bound else image.none_certified,
            "abstain_rate": cert.abstain_rate, **check,   # at any level of a hierarchy
            "attack_seconds": values.get("seconds"), "seconds": 0.0}


__all__ = ["AttackStep", "CertifiedImage", "Perturbation", "attack_arguments"]
