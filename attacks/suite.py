"""Certified vs empirical robustness: the library function behind ``certframe attack``.

For each image x (``[C, H, W]`` in [0, 1], mask y ``[H, W]``):

1. certify x with the smoothed segmenter g (one sampling pass, every tau);
2. for each attack and each budget (norm, eps) it supports: x' = attack(x, y)
   ("base" attacks see the segmenter f alone; "smoothed" attacks, EOT, see
   ``f(D(x + eps))`` with its noise draws);
3. predict f(x'), certify x' at the same sigma, and compare.

Rows, one per (image, attack, norm, eps, tau), carry the identifying columns of
``certframe certify`` results (``image_id``, ``index``, ``segmenter``,
``denoiser``, ``certifier``, ``sigma``, ``tau``, ``radius``, ``n0``, ``n``,
``alpha``) so the two tables join, plus:

* ``attack``, ``threat`` (base / smoothed), ``norm`` (l2 / linf), ``eps``;
  ``eps_l2_bound``: the L2 ball that contains the threat model (eps for l2,
  ``eps * sqrt(C H W)`` for linf: the radius a certificate must reach to cover it);
* ``perturbation_l2``, ``perturbation_linf``: the norms of the x' - x found;
* ``clean_dice`` (f on x), ``base_robust_dice`` (f on x');
* ``smoothed_dice``, ``smoothed_robust_dice``: g's majority vote over the
  estimation draws on x and on x' (no abstention);
* ``certified_dice`` (the certificate on x at tau), ``certified_dice_at_eps``
  (the same when ``radius >= eps_l2_bound``, else the Dice of an all-ABSTAIN map:
  no pixel is certified at that budget), ``certified_dice_adv`` (certificate on x');
* ``covers`` (``radius > perturbation_l2``), ``covered``, ``violations``,
  ``abstained``, ``kept``, ``majority_flips``: see :mod:`certframe.attacks.violations`;
* ``attack_seconds``, ``seconds`` (wall time of the attack and of the whole image).

Mean Dice is over foreground classes (:func:`certframe.metrics.mean_dice`).
The certificate on x' uses the same seed and image id as the one on x, i.e. the
same noise draws (common random numbers): both are valid certificates on their
own, and the violation bound (union bound, ``2 alpha`` per image) holds for any
draws. The attacks are seeded with ``seed`` too, so a run is reproducible.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Iterable, Iterator, NamedTuple, Sequence

import pandas as pd
import torch

from certframe import metrics
from certframe.engine import Names, prepare_models, resolve_device
from certframe.interfaces import (ABSTAIN, Certifier, CertifyRequest, Denoiser, NoiseKey, SegmentationDataset,
                                  Segmenter, class_labels)
from certframe.smoothing import SmoothedSegmenter
from certframe.statistics import certified_radius, check_tau
from certframe.validation import validate_sample

from .base import check_eps, check_norm
from .violations import count_violations

DEFAULT_ATTACKS = ("pgdl2", "eot-pgdl2", "pgd", "eot-pgd")
RADIUS_MARGIN = 1e-6
IDENTITY_COLUMNS = ["image_id", "index", "segmenter", "denoiser", "certifier", "sigma", "tau", "radius"]
ATTACK_KEYS = ["segmenter", "denoiser", "certifier", "sigma", "tau", "radius", "attack", "threat", "norm",
               "eps", "eps_l2_bound"]


def attack_norms(factory) -> tuple[str, ...]:
    """The norms an attack plugin supports: its ``fixed_norm`` or ``norms`` attribute."""
    fixed = getattr(factory, "fixed_norm", None)
    if fixed is not None:
        return (check_norm(fixed),)
    norms = getattr(factory, "norms", None)
    if norms is None:
        raise ValueError(f"attack {getattr(factory, '__name__', factory)!r} declares neither `fixed_norm` nor "
                         f"`norms` (the threat models it supports: 'l2', 'linf')")
    return tuple(check_norm(n) for n in norms)


def budgets(eps_l2: Iterable[float], eps_linf: Iterable[float]) -> list[tuple[str, float]]:
    """``[(norm, eps), ...]``, validated; duplicates dropped, order kept."""
    out: list[tuple[str, float]] = []
    for norm, values in (("l2", eps_l2), ("linf", eps_linf)):
        for e in values:
            item = (norm, check_eps(e, norm))
            if item not in out:
                out.append(item)
    if not out:
        raise ValueError("no attack budget: give at least one L2 or Linf eps")
    return out


class AttackJob(NamedTuple):
    """One (attack, norm, eps) an image is attacked with; each writes one row per tau."""

    name: str
    factory: Callable
    threat: str        # "base" or "smoothed"
    norm: str          # "l2" or "linf"
    eps: float
    pass_norm: bool    # the attack supports several norms: ``norm=`` is passed to its factory


def attack_jobs(attacks: dict[str, Callable], *, sigma: float, taus: Sequence[float],
                eps_l2: Sequence[float] | None = None, eps_linf: Sequence[float] = ()) -> list[AttackJob]:
    """The jobs :func:`attack_dataset` runs on every image: each attack at each budget of its norms.

    Order: attacks as given, then budgets (L2 first, then Linf, as given). Each image
    writes ``len(jobs) * len(taus)`` rows. eps_l2 None: the certified radii of ``taus``
    shrunk by ``1 - 1e-6`` (see :func:`attack_dataset`). Raises ValueError for no attack,
    no budget, a bad tau or eps, an unknown threat, or attacks that support none of the
    budgets' norms.
    """
    if not attacks:
        raise ValueError("no attack given")
    taus = tuple(check_tau(t) for t in (taus if isinstance(taus, (list, tuple)) else [taus]))
    if not taus:
        raise ValueError("at least one tau is needed")
    radii = [certified_radius(float(sigma), t) for t in taus]
    # default L2 budgets: the certified radii, shrunk by 1e-6 (relative) so that the attack stays
    # strictly inside the open ball ||delta||_2 < R the certificate covers, despite float rounding
    plan = budgets([r * (1 - RADIUS_MARGIN) for r in radii] if eps_l2 is None else eps_l2, eps_linf)
    jobs = []
    for name, factory in attacks.items():
        norms = attack_norms(factory)
        threat = getattr(factory, "threat", "base")
        if threat not in ("base", "smoothed"):
            raise ValueError(f"attack {name!r} has threat {threat!r}; expected 'base' or 'smoothed'")
        for norm, eps in plan:
            if norm in norms:
                jobs.append(AttackJob(name, factory, threat, norm, eps, len(norms) > 1))
    if not jobs:
        raise ValueError(f"none of the attacks {sorted(attacks)} supports the norms of the budgets "
                         f"{sorted({n for n, _ in plan})}")
    return jobs


class _RecordingVotes:
    """A :class:`~certframe.interfaces.VoteSource` proxy that keeps the counts it hands out."""

    def __init__(self, votes):
        self.votes = votes
        self.num_classes = votes.num_classes
        self.recorded: dict[str, torch.Tensor] = {}

    def counts(self, phase: str, n: int, start: int = 0) -> torch.Tensor:
        c = self.votes.counts(phase, n, start)
        self.recorded[phase] = c if phase not in self.recorded else self.recorded[phase] + c
        return c

    def majority(self) -> torch.Tensor:
        """g's plain majority vote ``[H, W]``: argmax of the estimation counts (else of all)."""
        counts = self.recorded.get("estimation")
        if counts is None:
            counts = sum(self.recorded.values())
        return counts.argmax(dim=0)


def _certify(smoothed: SmoothedSegmenter, certifier: Certifier, x: torch.Tensor, request, *, batch_size: int,
             seed: int, image_id: str):
    votes = _RecordingVotes(smoothed.voter(x, NoiseKey(seed, image_id), batch_size=batch_size))
    certs = certifier.certify(votes, request)
    if len(certs) != len(request.taus):
        raise ValueError(f"certifier {certifier.name!r} returned {len(certs)} certificates for "
                         f"{len(request.taus)} taus")
    return certs, votes.majority()


def attack_dataset(dataset: SegmentationDataset, segmenter: Segmenter, denoiser: Denoiser | None,
                   certifier: Certifier, attacks: dict[str, Callable], *, sigma: float, n0: int, n: int,
                   alpha: float, taus: Sequence[float] = (0.75,), eps_l2: Sequence[float] | None = None,
                   eps_linf: Sequence[float] = (), attack_options: dict[str, dict] | None = None,
                   batch_size: int = 32, seed: int = 0, device: str | torch.device = "auto",
                   names: Names | None = None, indices: Iterable[int] | None = None,
                   on_image: Callable[[int, str, list[dict]], None] | None = None) -> Iterator[dict]:
    """Yield result rows (see the module docstring), image by image.

    Every image runs the same jobs, :func:`attack_jobs` (attack x budget), and yields
    ``len(jobs) * len(taus)`` rows: jobs in order, taus within each job.

    attacks: ``{name: factory}``; ``factory(model=segmenter, eps=..., [norm=...],
        [sigma=..., denoiser=...,] seed=..., **attack_options[name])`` builds the attack
        (``norm`` is passed to attacks that support several; ``sigma`` and ``denoiser``
        to attacks whose ``threat`` is "smoothed").
    eps_l2: L2 budgets (default: the certified radii ``sigma * Phi^-1(tau)`` of ``taus``, times
        ``1 - 1e-6``: the guarantee covers the OPEN ball ``||delta||_2 < R``, and an attack
        projected onto ``||delta||_2 <= R`` lands on its boundary up to float rounding, where
        nothing is promised; a budget exactly equal to R leaves the check to chance).
    eps_linf: Linf budgets in [0, 1] pixel units (default none).
    on_image: called after each image with (index, image id, its rows).
    """
    request = CertifyRequest(sigma, n0, n, alpha, taus)
    names = names or Names()
    device = resolve_device(device)
    attack_options = dict(attack_options or {})
    unknown = sorted(set(attack_options) - set(attacks))
    if unknown:
        raise ValueError(f"options given for attack(s) {unknown} that are not run; attacks: {sorted(attacks)}")
    jobs = attack_jobs(attacks, sigma=request.sigma, taus=request.taus, eps_l2=eps_l2, eps_linf=eps_linf)
    segmenter, denoiser = prepare_models(segmenter, denoiser, dataset, device)
    smoothed = SmoothedSegmenter(segmenter, denoiser, request.sigma)
    K = dataset.num_classes
    for index in (range(len(dataset)) if indices is None else indices):
        sample = dataset[index]
        validate_sample(sample, dataset.class_names, dataset.in_channels)
        start = time.perf_counter()
        x = sample.image.to(device)
        y = sample.mask
        certs, majority = _certify(smoothed, certifier, x, request, batch_size=batch_size, seed=seed,
                                   image_id=sample.id)
        with torch.inference_mode():
            clean = class_labels(segmenter(x.unsqueeze(0)))[0].cpu()
        clean_dice = metrics.mean_dice(clean, y, K)
        smoothed_dice = metrics.mean_dice(majority.cpu(), y, K)
        none_certified = metrics.mean_dice(torch.full_like(y, ABSTAIN), y, K)
        rows = []
        for name, factory, threat, norm, eps, pass_norm in jobs:
            options = {"model": segmenter, "eps": eps, "seed": seed, **attack_options.get(name, {})}
            if pass_norm:
                options["norm"] = norm
            if threat == "smoothed":
                options.update(sigma=request.sigma, denoiser=denoiser)
            attack = factory(**options)
            t0 = time.perf_counter()
            adv = attack(x.unsqueeze(0), y.unsqueeze(0).to(device))
            attack_seconds = time.perf_counter() - t0
            d = (adv[0].double() - x.double()).flatten()
            l2, linf = float(d.norm(p=2)), float(d.abs().max())
            bound = eps if norm == "l2" else eps * math.sqrt(x.numel())
            with torch.inference_mode():
                base_adv = class_labels(segmenter(adv))[0].cpu()
            certs_adv, majority_adv = _certify(smoothed, certifier, adv[0], request, batch_size=batch_size,
                                               seed=seed, image_id=sample.id)
            base_robust = metrics.mean_dice(base_adv, y, K)
            smoothed_robust = metrics.mean_dice(majority_adv.cpu(), y, K)
            for cert, cert_adv in zip(certs, certs_adv):
                labels, labels_adv = cert.labels.cpu(), cert_adv.labels.cpu()
                check = count_violations(labels, cert.radius, labels_adv, l2, majority_adv.cpu())
                certified = metrics.mean_dice(labels, y, K)
                rows.append({
                    "image_id": sample.id, "index": index, "segmenter": names.segmenter,
                    "denoiser": names.denoiser, "certifier": names.certifier, "sigma": request.sigma,
                    "tau": cert.tau, "radius": cert.radius, "n0": request.n0, "n": request.n,
                    "alpha": request.alpha, "attack": name, "threat": threat, "norm": norm, "eps": eps,
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
        if on_image is not None:
            on_image(index, sample.id, rows)
        yield from rows


def summarize_attacks(df: pd.DataFrame) -> pd.DataFrame:
    """Per (method, sigma, tau, attack, norm, eps): means over images of the Dice columns
    and of ``attack_seconds``; sums of ``covered``, ``violations``, ``abstained`` and
    ``majority_flips``; ``images`` (count)."""
    keys = [k for k in ATTACK_KEYS if k in df.columns]
    means = ["clean_dice", "base_robust_dice", "smoothed_dice", "smoothed_robust_dice", "certified_dice",
             "certified_dice_at_eps", "certified_dice_adv", "perturbation_l2", "perturbation_linf",
             "attack_seconds"]
    sums = ["covered", "violations", "abstained", "majority_flips"]
    g = df.groupby(keys, dropna=False, sort=False)
    out = g[[c for c in means if c in df.columns]].mean()
    out[[c for c in sums if c in df.columns]] = g[[c for c in sums if c in df.columns]].sum()
    out["images"] = g["image_id"].nunique()
    return out.reset_index()


def robustness_table(df: pd.DataFrame) -> pd.DataFrame:
    """Empirical vs certified robustness per (method, sigma, tau, norm, eps).

    Per image, the empirical robust Dice is the worst over the attacks run at that
    budget (``base_robust_dice`` of f, ``smoothed_robust_dice`` of g); then means
    over images. ``certified_dice_at_eps`` is a lower bound (with prob. >= 1 - alpha
    per image) of g's Dice under ANY attack of the budget, so it should not exceed
    ``smoothed_robust_dice`` other than by Monte-Carlo error; ``violations`` (summed
    over images and attacks) should be 0.
    """
    method = ["segmenter", "denoiser", "certifier", "sigma", "tau", "radius", "norm", "eps", "eps_l2_bound"]
    per_image = df.groupby(method + ["image_id"], dropna=False, sort=False).agg(
        clean_dice=("clean_dice", "first"), base_robust_dice=("base_robust_dice", "min"),
        smoothed_dice=("smoothed_dice", "first"), smoothed_robust_dice=("smoothed_robust_dice", "min"),
        certified_dice_at_eps=("certified_dice_at_eps", "first"), violations=("violations", "sum"),
        covered=("covered", "sum"), attacks=("attack", lambda s: ",".join(sorted(set(s)))))
    g = per_image.groupby(method, dropna=False, sort=False)
    out = g[["clean_dice", "base_robust_dice", "smoothed_dice", "smoothed_robust_dice",
             "certified_dice_at_eps"]].mean()
    out[["violations", "covered"]] = g[["violations", "covered"]].sum()
    out["attacks"] = g["attacks"].first()
    out["images"] = g.size()
    return out.reset_index()
