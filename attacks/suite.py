"""Certified vs empirical robustness: the attack plan and the summaries of ``certframe attack``.

The per-image step (certify x, attack, certify x', check) is
:class:`certframe.run.attack_step.AttackStep`, shared with ``certframe certify``;
:func:`certframe.run.attack_dataset` runs it over a data set. This module plans the
jobs (:func:`attack_jobs`) and summarises the rows (:func:`summarize_attacks`,
:func:`robustness_table`).

For each image x (``[C, H, W]`` in [0, 1], mask y ``[H, W]``):

1. certify x with the smoothed segmenter g (one sampling pass, every tau);
2. the falsification job (default on): for each certificate and radius multiple k,
   attack the certificate's own claim pixel by pixel and test the attacked images
   soundly (:func:`certframe.attacks.falsification.falsify`);
3. each attack at each budget (L2: each certificate's own radius times k, by default;
   Linf: the given budgets), aimed at the certified labels (abstained pixels: g's
   majority vote); at x', ``n`` fresh draws independent of the certificate's test every
   covered pixel: ``p(c_i | x') < 1/2`` rejected with Holm at ``test_level`` is a
   violation (:mod:`certframe.attacks.flip_test`).

Rows, one per (image, job, tau), carry the identifying columns of ``certframe certify``
results (``image_id``, ``index``, ``segmenter``, ``denoiser``, ``certifier``, ``sigma``,
``tau``, ``radius``, ``n0``, ``n``, ``alpha``) so the two tables join, plus:

* ``attack``, ``threat`` (base / smoothed), ``norm`` (l2 / linf), ``radius_multiple``
  (k, or empty for a fixed budget), ``eps``; ``eps_l2_bound``: the L2 ball that contains
  the threat model (eps for l2, ``eps * sqrt(C H W)`` for linf);
* ``perturbation_l2``, ``perturbation_linf``: the norms of the x' - x found (the largest
  over the attacked pixels for the falsification job);
* ``clean_dice`` (f on x), ``base_robust_dice`` (f on x');
* ``smoothed_dice``, ``smoothed_robust_dice``: g's majority vote on x (estimation draws)
  and on x' (the fresh test draws);
* ``certified_dice`` (the certificate on x at tau), ``certified_dice_at_eps``
  (the same when ``radius >= eps_l2_bound``, else the Dice of an all-ABSTAIN map);
* the check, :data:`CHECK_COLUMNS`: ``covered`` (pixels the claim covers at this
  budget), ``tested``, ``violations`` (rejected at k <= 1; EMPTY when nothing was tested
  or k > 1: never 0 for a check not made), ``flips_beyond_claim`` (rejected at k > 1),
  ``not_tested``, ``min_upper_bound`` (smallest Clopper-Pearson upper bound on
  p(c | x')), ``test_level``, ``n_test``, ``majority_flips`` (covered pixels whose plain
  majority at x' differs: informative, not a violation), ``empirical_radius_min``
  (minimal-norm search), ``certified_radius_min``;
* ``attack_seconds``, ``seconds`` (wall time of the job and of the whole image).

Mean Dice is over foreground classes (:func:`certframe.core.metrics.mean_dice`). With a
correct certificate the expected number of violations is 0 (a false alarm has
probability at most ``alpha + test_level`` per image and job): the suite's worth is its
power on false certificates, shown by the controls in ``tests/test_falsification.py``.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, NamedTuple, Sequence

import pandas as pd

from certframe.core.statistics import check_tau

from .base import check_eps, check_norm

DEFAULT_ATTACKS = ("pgdl2", "eot-pgdl2")
"""Whole-image L2 attacks run by default (beside the falsification job); Linf ones need --eps-linf.
The one copy: :class:`certframe.run.spec.AttackSpec` and ``certframe attack`` take it from here."""
FALSIFY = "falsify"
"""The name of the pixel-focused falsification job (:func:`certframe.attacks.falsification.falsify`)."""
RADIUS_MARGIN = 1e-6
IDENTITY_COLUMNS = ["image_id", "index", "segmenter", "denoiser", "certifier", "sigma", "tau", "radius"]
ATTACK_KEYS = ["segmenter", "denoiser", "certifier", "sigma", "tau", "radius", "attack", "threat", "norm",
               "radius_multiple", "eps", "eps_l2_bound"]
CHECK_COLUMNS = ["covered", "tested", "violations", "flips_beyond_claim", "not_tested", "min_upper_bound",
                 "test_level", "n_test", "majority_flips", "empirical_radius_min", "certified_radius_min"]
"""The certificate check of every row (see :class:`certframe.run.attack_step.AttackStep`): ``violations`` is
empty (None) where nothing was tested or the budget lies beyond the claim, never 0 for an unmade check."""


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
    return out


def check_multiples(radius_multiples: Sequence[float]) -> tuple[float, ...]:
    """Positive, finite multiples of the certified radius, duplicates dropped."""
    out: list[float] = []
    for k in radius_multiples:
        value = float(k)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"a radius multiple must be a finite number > 0, got {k!r}")
        if value not in out:
            out.append(value)
    if not out:
        raise ValueError("no radius multiple: give at least one (1 = the certificate's own claim)")
    return tuple(out)


class AttackJob(NamedTuple):
    """One attack an image runs; each writes one row per tau (per certificate).

    eps None: the budget is each certificate's own radius times ``radius_multiple``
    (shrunk by ``1 - 1e-6``: the guarantee covers the open ball), so the attack runs once
    per certificate; a number: one fixed budget for every certificate.
    """

    name: str
    factory: Callable | None   # None for the falsification job
    threat: str                # "base" or "smoothed"
    norm: str                  # "l2" or "linf"
    eps: float | None
    pass_norm: bool            # the attack supports several norms: ``norm=`` is passed to its factory
    radius_multiple: float | None = None


def attack_jobs(attacks: dict[str, Callable], *, taus: Sequence[float] = (0.75,),
                eps_l2: Sequence[float] | None = None, eps_linf: Sequence[float] = (),
                radius_multiples: Sequence[float] = (1.0,), falsify: bool = True) -> list[AttackJob]:
    """The jobs every image of an attack run goes through, in order.

    1. ``falsify`` (default on): the pixel-focused falsification of each certificate at
       each radius multiple (:func:`certframe.attacks.falsification.falsify`).
    2. each attack at each budget of its norms: L2 budgets are each certificate's own
       radius times each multiple (``eps_l2`` None, the default) or the given ``eps_l2``;
       then the Linf budgets ``eps_linf``.
    Each image writes ``len(jobs) * len(taus)`` rows. Raises ValueError for no job, a bad
    tau, eps or multiple, an unknown threat, or attacks that support none of the norms.
    """
    taus = tuple(check_tau(t) for t in (taus if isinstance(taus, (list, tuple)) else [taus]))
    if not taus:
        raise ValueError("at least one tau is needed")
    multiples = check_multiples(radius_multiples)
    jobs = [AttackJob(FALSIFY, None, "smoothed", "l2", None, False, k) for k in multiples] if falsify else []
    fixed = budgets(eps_l2 or (), eps_linf)
    for name, factory in attacks.items():
        norms = attack_norms(factory)
        threat = getattr(factory, "threat", "base")
        if threat not in ("base", "smoothed"):
            raise ValueError(f"attack {name!r} has threat {threat!r}; expected 'base' or 'smoothed'")
        mine = []
        if "l2" in norms and eps_l2 is None:
            mine += [AttackJob(name, factory, threat, "l2", None, len(norms) > 1, k) for k in multiples]
        mine += [AttackJob(name, factory, threat, norm, eps, len(norms) > 1) for norm, eps in fixed
                 if norm in norms]
        if not mine:
            raise ValueError(f"attack {name!r} supports {'/'.join(norms)} budgets and none was given: "
                             f"pass --eps-linf (e.g. 2/255) or --eps-l2, or leave --eps-l2 out to attack "
                             f"at each certificate's own radius")
        jobs += mine
    if not jobs:
        raise ValueError(f"nothing to run: none of the attacks {sorted(attacks)} supports the norms of the "
                         f"budgets {sorted({n for n, _ in fixed})}, and the falsification job is off")
    return jobs


def _tested(df: pd.DataFrame) -> pd.Series:
    return ~df["not_tested"].astype(bool) if "not_tested" in df.columns else pd.Series(True, index=df.index)


def _check_sums(g, df: pd.DataFrame, out: pd.DataFrame) -> pd.DataFrame:
    """Sums of the check columns over TESTED rows; "not tested" where no row of a group was."""
    tested = df.assign(_tested=_tested(df))
    for col in ("covered", "tested", "violations", "flips_beyond_claim", "majority_flips"):
        if col in df.columns:
            out[col] = g[col].sum(min_count=1) if col == "covered" else \
                tested.assign(_v=tested[col].where(tested["_tested"])).groupby(g.keys, dropna=False,
                                                                               sort=False)["_v"].sum(min_count=1)
    if "min_upper_bound" in df.columns:
        out["min_upper_bound"] = g["min_upper_bound"].min()
    out["not_tested"] = ~tested.groupby(g.keys, dropna=False, sort=False)["_tested"].any()
    return out


def summarize_attacks(df: pd.DataFrame) -> pd.DataFrame:
    """Per (method, sigma, tau, attack, norm, multiple, eps): means over images of the Dice columns
    and of ``attack_seconds``; sums of ``covered``, ``tested``, ``violations``,
    ``flips_beyond_claim`` and ``majority_flips`` over the tested rows (empty where none was
    tested), the smallest upper bound, ``not_tested`` and ``images`` (count)."""
    keys = [k for k in ATTACK_KEYS if k in df.columns]
    means = ["clean_dice", "base_robust_dice", "smoothed_dice", "smoothed_robust_dice", "certified_dice",
             "certified_dice_at_eps", "perturbation_l2", "perturbation_linf", "empirical_radius_min",
             "attack_seconds"]
    g = df.groupby(keys, dropna=False, sort=False)
    out = g[[c for c in means if c in df.columns]].mean()
    out = _check_sums(g, df, out)
    out["images"] = g["image_id"].nunique()
    return out.reset_index()


def robustness_table(df: pd.DataFrame) -> pd.DataFrame:
    """Empirical vs certified robustness per (method, sigma, tau, norm, multiple, eps).

    Per image, the empirical robust Dice is the worst over the attacks run at that
    budget (``base_robust_dice`` of f, ``smoothed_robust_dice`` of g); then means
    over images. ``certified_dice_at_eps`` is a lower bound (with prob. >= 1 - alpha
    per image) of g's Dice under ANY attack of the budget. ``violations`` (summed over
    images and attacks, over the rows whose check tested something) should be 0 for a
    correct certificate; ``not_tested`` marks a budget at which no pixel was covered.
    """
    method = ["segmenter", "denoiser", "certifier", "sigma", "tau", "radius", "norm", "radius_multiple", "eps",
              "eps_l2_bound"]
    method = [c for c in method if c in df.columns]
    df = df.assign(_tested=_tested(df))
    for col in ("violations", "flips_beyond_claim"):
        if col in df.columns:
            df[col] = df[col].where(df["_tested"])
    per_image = df.groupby(method + ["image_id"], dropna=False, sort=False).agg(
        clean_dice=("clean_dice", "first"), base_robust_dice=("base_robust_dice", "min"),
        smoothed_dice=("smoothed_dice", "first"), smoothed_robust_dice=("smoothed_robust_dice", "min"),
        certified_dice_at_eps=("certified_dice_at_eps", "first"),
        violations=("violations", lambda s: s.sum(min_count=1)),
        flips_beyond_claim=("flips_beyond_claim", lambda s: s.sum(min_count=1)),
        covered=("covered", "sum"), tested=("tested", "sum"), _tested=("_tested", "any"),
        attacks=("attack", lambda s: ",".join(sorted(set(s)))))
    g = per_image.groupby(method, dropna=False, sort=False)
    out = g[["clean_dice", "base_robust_dice", "smoothed_dice", "smoothed_robust_dice",
             "certified_dice_at_eps"]].mean()
    for col in ("violations", "flips_beyond_claim"):
        out[col] = g[col].sum(min_count=1)
    out[["covered", "tested"]] = g[["covered", "tested"]].sum()
    out["not_tested"] = ~g["_tested"].any()
    out["attacks"] = g["attacks"].first()
    out["images"] = g.size()
    return out.reset_index()
