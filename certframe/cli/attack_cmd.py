"""``certframe attack``: check certificates against real attacks, empirical vs certified Dice.

A thin command over :func:`certframe.attacks.suite.attack_dataset`: builds the
plugins, writes the rows to a run folder (``results.csv``, ``results.parquet``
where pyarrow is installed, ``summary.json`` per attack and eps,
``robustness.json`` per method and eps, ``manifest.json``) and prints the table
of empirical vs certified robustness. Rows join ``certframe certify`` results on
``image_id``, ``segmenter``, ``denoiser``, ``certifier``, ``sigma``, ``tau``.

Each image's rows (one per attack, budget and tau) are appended and fsync'ed as
the image finishes, so an interrupted run (Ctrl-C, ``kill -9``) continues with
``--resume``: the images already done are kept, a partially written last image is
attacked again, and the final files cover the whole run (see :mod:`certframe.runs`).
"""
from __future__ import annotations

import logging
import sys
from fractions import Fraction
from pathlib import Path

import click
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from certframe.cli.certify_cmd import _label, certify_options
from certframe.cli.options import parse_options
from certframe.engine import Names, resolve_device
from certframe.registry import PluginError, get_registry
from certframe.runs import (FORMAT, RESULTS_PARQUET, RunError, RunFolder, _atomic_write, _now, dataset_identity,
                            jsonable, package_versions, resolved_options, write_parquet)

ATTACK_SUMMARY, ROBUSTNESS = "summary.json", "robustness.json"

# columns every attack results table has (checked when a run folder is read back)
ATTACK_COLUMNS = ["image_id", "index", "segmenter", "denoiser", "certifier", "sigma", "tau", "radius", "attack",
                  "norm", "eps", "violations", "seconds"]

log = logging.getLogger("certframe.attack")


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


def run_attack(*, dataset: str, dataset_options: dict, segmenter: str, segmenter_options: dict,
               denoiser: str, denoiser_options: dict, certifier: str, certifier_options: dict,
               attacks: tuple[str, ...], attack_options: dict[str, dict], eps_l2: tuple[float, ...] | None,
               eps_linf: tuple[float, ...], sigma: float, n0: int, n: int, alpha: float,
               taus: tuple[float, ...], batch_size: int, seed: int, device: str, output: Path,
               resume: bool = False, overwrite: bool = False, quiet: bool = False, limit: int | None = None,
               registry=None, console=None):
    """Build the plugins, attack and certify, write the run folder; return the robustness table.

    resume: continue an interrupted run in ``output`` (same configuration, else RunError):
        images already done are kept, only the others are attacked; the final files
        (results.parquet, summary.json, robustness.json) cover every image of the run.
    """
    from certframe.attacks.suite import attack_dataset, attack_jobs, robustness_table, summarize_attacks

    registry = registry or get_registry()
    console = console or Console(quiet=quiet)
    factories = {name: registry.get("attack", name).factory for name in attacks}
    # the rows each image writes, known before the run: needed to tell a complete image from a cut one
    jobs = attack_jobs(factories, sigma=sigma, taus=taus, eps_l2=eps_l2, eps_linf=eps_linf)
    rows_per_image = len(jobs) * len(taus)
    options = {"dataset": dataset_options, "segmenter": segmenter_options, "denoiser": denoiser_options,
               "certifier": certifier_options}
    names_ = {"dataset": dataset, "segmenter": segmenter, "denoiser": denoiser, "certifier": certifier}
    built = {kind: registry.create(kind, names_[kind], **options[kind]) for kind in names_}
    data, seg, den, cert = built["dataset"], built["segmenter"], built["denoiser"], built["certifier"]
    config = {**{k: v for k, v in names_.items()}, **{f"{k}_options": v for k, v in options.items()},
              "attacks": list(attacks), "attack_options": attack_options,
              "eps_l2": None if eps_l2 is None else list(eps_l2), "eps_linf": list(eps_linf),
              "sigma": float(sigma), "n0": int(n0), "n": int(n), "alpha": float(alpha),
              "taus": [float(t) for t in taus], "seed": int(seed), "limit": limit}
    plugins = {kind: {"name": name, "options": resolved_options(registry.get(kind, name), options[kind]),
                      "distribution": registry.get(kind, name).distribution,
                      "version": registry.get(kind, name).version} for kind, name in names_.items()}
    plugins["attacks"] = {a: {"options": resolved_options(registry.get("attack", a), attack_options.get(a, {})),
                              "distribution": registry.get("attack", a).distribution,
                              "version": registry.get("attack", a).version} for a in attacks}
    manifest = {"format": FORMAT, "kind": "attack", "config": jsonable(config),
                "device": str(resolve_device(device)), "plugins": plugins, "dataset": dataset_identity(data),
                "classes": list(data.class_names), "versions": package_versions(),
                "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "created": _now()}
    run = RunFolder(output, required_columns=ATTACK_COLUMNS)
    complete = False
    try:
        done = run.start(manifest, resume=resume, overwrite=overwrite, rows_per_image=rows_per_image)
        total = len(data) if limit is None else min(int(limit), len(data))
        todo = [i for i in range(total) if i not in done]
        if done:
            log.info("resuming %s: %d of %d images already done", output, total - len(todo), total)
        names = Names(segmenter=_label(segmenter, segmenter_options), denoiser=denoiser, certifier=cert.name)
        with Progress(TextColumn("attack"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=console, disable=quiet) as progress:
            task = progress.add_task("attack", total=total, completed=total - len(todo))

            def on_image(index, image_id, image_rows):
                run.append(image_rows)
                progress.advance(task)

            if todo:
                for _ in attack_dataset(data, seg, den, cert, factories, sigma=sigma, n0=n0, n=n, alpha=alpha,
                                        taus=taus, eps_l2=eps_l2, eps_linf=eps_linf,
                                        attack_options=attack_options, batch_size=batch_size, seed=seed,
                                        device=device, names=names, indices=todo, on_image=on_image):
                    pass
        # the whole run: rows kept from before the interruption plus the new ones (image_id as str)
        df = run.results(require_complete=False)
        df = df.sort_values("index", kind="stable").reset_index(drop=True)
        finished = set(df["index"].astype(int))
        complete = finished >= set(range(total))
        if complete:
            write_parquet(df, run.path / RESULTS_PARQUET)
        summary, table = summarize_attacks(df), robustness_table(df)
        _atomic_write(run.path / ATTACK_SUMMARY, (summary.to_json(orient="records", indent=2) + "\n").encode())
        _atomic_write(run.path / ROBUSTNESS, (table.to_json(orient="records", indent=2) + "\n").encode())
        if complete:
            run.update_manifest(status="complete", finished=_now(), images=int(df["index"].nunique()),
                                violations=int(df["violations"].sum()))
            log.info("run complete: %s", output)
        else:
            log.info("%d of %d images done in %s", len(finished), total, output)
    finally:
        run.unlock()  # start() locks the folder (flock)
    print_robustness(table, console, title=f"empirical vs certified Dice ({output})")
    return table


def print_robustness(table, console, title="robustness"):
    """Rich tables, one per method and sigma: clean / attacked / certified Dice and violations.

    "f" is the base segmenter (no noise), "g" the smoothed one (majority vote);
    "g cert" is certified Dice at radius >= eps (the budget's L2 bound); "viol"
    counts certificate violations (expected 0; shown in red otherwise).
    """
    cols = [("tau", "tau"), ("radius", "R"), ("norm", "norm"), ("eps", "eps"), ("clean_dice", "f clean"),
            ("base_robust_dice", "f att"), ("smoothed_dice", "g clean"), ("smoothed_robust_dice", "g att"),
            ("certified_dice_at_eps", "g cert"), ("violations", "viol")]
    for (seg, den, cert, sigma), part in table.groupby(["segmenter", "denoiser", "certifier", "sigma"],
                                                        sort=False):
        attacks = "; ".join(sorted({f"{r['norm']}: {r['attacks']}" for _, r in part.iterrows()}))
        t = Table(title=f"{title}\n{seg} + {den}, {cert}, sigma={sigma:g}", box=box.SIMPLE_HEAD,
                  caption=f"attacks {attacks}; f base, g smoothed, cert: certified at radius >= eps")
        for key, head in cols:
            t.add_column(head, justify="left" if key == "norm" else "right", no_wrap=key == "eps")
        for _, r in part.iterrows():
            cells = [f"{r[k]:.3g}" if k in ("tau", "radius", "eps") else
                     f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k, _ in cols]
            if int(r["violations"]):
                cells[-1] = f"[bold red]{cells[-1]}[/]"
            t.add_row(*cells)
        console.print(t)


@click.command("attack")
@certify_options
@click.option("--attack", "attacks", multiple=True, default=("pgdl2", "eot-pgdl2", "pgd", "eot-pgd"),
              show_default=True, help="Attack plugin (repeatable); each runs at every budget of its norm.")
@click.option("--attack-option", "attack_options", multiple=True, metavar="ATTACK:KEY=VALUE",
              help="Option for one attack, e.g. eot-pgdl2:num_draws=16 (repeatable).")
@click.option("--eps-l2", "eps_l2", type=Budget(), multiple=True,
              help="L2 budget (repeatable). Default: the certified radii sigma * Phi^-1(tau).")
@click.option("--eps-linf", "eps_linf", type=Budget(), multiple=True, default=("1/255",), show_default=True,
              help="Linf budget in [0, 1] units, e.g. 2/255 (repeatable).")
@click.option("--output", "-o", type=click.Path(path_type=Path), default=Path("runs/attack"),
              show_default=True, help="Run folder.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --output.")
@click.option("--overwrite", is_flag=True, help="Replace the results in --output.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar, table or info logs.")
def attack(dataset_name, dataset_options, segmenter_name, segmenter_options, denoiser_name, denoiser_options,
           certifier_name, certifier_options, sigma, n0, n, alpha, taus, batch_size, seed, device, limit,
           attacks, attack_options, eps_l2, eps_linf, output, resume, overwrite, quiet):
    """Attack the base and the smoothed segmenter; check every certificate on the attacked images.

    For each image: certify x; run each attack at each budget; certify x'. Reports
    empirical robust Dice (base f and smoothed g), certified Dice at radius >= eps,
    and certificate violations (pixels certified on x at a radius beyond the
    perturbation that are certified as another class on x'; expected 0).

    Rows are written image by image; an interrupted run continues with --resume
    (same options), which keeps the images already done.
    """
    if quiet:
        logging.getLogger("certframe").setLevel(logging.WARNING)
    try:
        run_attack(dataset=dataset_name, dataset_options=parse_options(dataset_options, "--dataset-option"),
                   segmenter=segmenter_name, segmenter_options=parse_options(segmenter_options, "--segmenter-option"),
                   denoiser=denoiser_name, denoiser_options=parse_options(denoiser_options, "--denoiser-option"),
                   certifier=certifier_name,
                   certifier_options=parse_options(certifier_options, "--certifier-option"),
                   attacks=tuple(attacks), attack_options=parse_attack_options(attack_options, tuple(attacks)),
                   eps_l2=tuple(eps_l2) or None, eps_linf=tuple(eps_linf), sigma=sigma, n0=n0, n=n, alpha=alpha,
                   taus=taus, batch_size=batch_size, seed=seed, device=device, output=output,
                   resume=resume, overwrite=overwrite, quiet=quiet, limit=limit)
    except (PluginError, RunError, ValueError, FileNotFoundError, FileExistsError, TypeError) as err:
        raise click.ClickException(str(err)) from err
