"""``certframe attack``: check certificates against real attacks, empirical vs certified Dice.

A thin command over :func:`certframe.run.run_attack`: it parses the options into a
validated :class:`~certframe.run.AttackSpec`, runs it into a run folder (``results.csv``,
``results.parquet`` where pyarrow is installed, ``summary.json`` per attack and eps,
``robustness.json`` per method and eps, ``manifest.json``) and prints the table of
empirical vs certified robustness. Rows join ``certframe certify`` results on
``image_id``, ``segmenter``, ``denoiser``, ``certifier``, ``sigma``, ``tau``.

Each image's rows (one per attack, budget and tau) are appended and fsync'ed as the
image finishes, so an interrupted run (Ctrl-C, ``kill -9``) continues with ``--resume``.
"""
from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import click
from rich.console import Console

from certframe.attacks.suite import DEFAULT_ATTACKS
from certframe.cli.options import certify_options, parse_options
from certframe.cli.tables import print_robustness, print_warnings
from certframe.run import AttackSpec, run_attack


class Budget(click.ParamType):
    """A float, or a fraction such as ``2/255``."""

    name = "eps"

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            return value
        try:
            return float(Fraction(str(value).strip()))
        except (ValueError, ZeroDivisionError):
            self.fail(f"expected a number such as 0.5 or 2/255, got {value!r}", param, ctx)


def parse_attack_options(pairs: tuple[str, ...], attacks: tuple[str, ...]) -> dict[str, dict]:
    """``("eot-pgdl2:num_draws=16", "pgd:steps=20")`` -> ``{attack: {key: value}}``."""
    out: dict[str, dict] = {}
    for pair in pairs:
        name, sep, rest = pair.partition(":")
        if not sep or "=" not in rest:
            raise click.BadParameter(f"expected ATTACK:KEY=VALUE (e.g. eot-pgdl2:num_draws=16), got {pair!r}",
                                     param_hint="--attack-option")
        if name not in attacks:
            raise click.BadParameter(f"{pair!r} names attack {name!r}, which is not run; attacks: "
                                     f"{', '.join(attacks)}", param_hint="--attack-option")
        out.setdefault(name, {}).update(parse_options((rest,), "--attack-option"))
    return out


@click.command("attack")
@certify_options
@click.option("--attack", "attacks", multiple=True, default=DEFAULT_ATTACKS, show_default=True,
              help="Attack plugin (repeatable); each runs at every budget of its norm.")
@click.option("--attack-option", "attack_options", multiple=True, metavar="ATTACK:KEY=VALUE",
              help="Option for one attack, e.g. eot-pgdl2:num_draws=16 (repeatable).")
@click.option("--eps-l2", "eps_l2", type=Budget(), multiple=True,
              help="Fixed L2 budget (repeatable). Default: each certificate's own radius (times each "
                   "--radius-multiple).")
@click.option("--eps-linf", "eps_linf", type=Budget(), multiple=True,
              help="Linf budget in [0, 1] units, e.g. 2/255 (repeatable; Linf-only attacks need one).")
@click.option("--radius-multiple", "radius_multiples", type=float, multiple=True, default=(1.0,),
              show_default=True, help="Attack at k times the certified radius (repeatable); k > 1 is "
                                      "reported as beyond the claim, never as a violation.")
@click.option("--falsify/--no-falsify", default=True, show_default=True,
              help="Run the pixel-focused falsification of each certificate (weakest pixels, EOT attack on "
                   "the smoothed model, sound test at x').")
@click.option("--falsify-option", "falsify_options", multiple=True, metavar="KEY=VALUE",
              help="Option of the falsification, e.g. max_pixels=4, steps=10, n_test=500, level=0.001, "
                   "empirical=false (repeatable).")
@click.option("--output", "-o", type=click.Path(path_type=Path), default=Path("runs/attack"),
              show_default=True, help="Run folder.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --output.")
@click.option("--overwrite", is_flag=True, help="Replace the results in --output.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar, table or info logs.")
def attack(dataset_name, dataset_options, segmenter_name, segmenter_options, denoiser_name, denoiser_options,
           certifier_name, certifier_options, sigma, n0, n, alpha, taus, batch_size, seed, device, limit,
           attacks, attack_options, eps_l2, eps_linf, radius_multiples, falsify, falsify_options, output, resume,
           overwrite, quiet):
    """Try to break the certificates: attack each one's own claim, test the attacked images soundly.

    For each image: certify x; falsify each certificate (its weakest covered pixels, attacked on
    the smoothed model inside the certificate's own radius, then tested with fresh draws: p(c | x')
    < 1/2 at Holm-corrected level is a violation); run each attack at each budget (default: each
    certificate's radius) and test every covered pixel at x' the same way. With a correct
    certificate 0 violations is expected; a row that covered nothing says "not tested".

    Rows are written image by image; an interrupted run continues with --resume (same options).
    """
    if quiet:
        logging.getLogger("certframe").setLevel(logging.WARNING)
    spec = AttackSpec(dataset=dataset_name, dataset_options=parse_options(dataset_options, "--dataset-option"),
                      segmenter=segmenter_name,
                      segmenter_options=parse_options(segmenter_options, "--segmenter-option"),
                      denoiser=denoiser_name, denoiser_options=parse_options(denoiser_options, "--denoiser-option"),
                      certifier=certifier_name,
                      certifier_options=parse_options(certifier_options, "--certifier-option"),
                      attacks=tuple(attacks), attack_options=parse_attack_options(attack_options, tuple(attacks)),
                      eps_l2=tuple(eps_l2) or None, eps_linf=tuple(eps_linf),
                      radius_multiples=tuple(radius_multiples), falsify=falsify,
                      falsify_options=parse_options(falsify_options, "--falsify-option"), sigma=sigma, n0=n0, n=n,
                      alpha=alpha, taus=taus, batch_size=batch_size, seed=seed, device=device, limit=limit)
    console = Console(quiet=quiet)
    table = run_attack(spec, output, resume=resume, overwrite=overwrite, quiet=quiet, console=console)
    print_robustness(table, console, title=f"empirical vs certified Dice ({output})")
    print_warnings(spec.warnings(), console)


__all__ = ["attack", "Budget", "parse_attack_options"]
