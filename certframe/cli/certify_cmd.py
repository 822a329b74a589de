"""``certframe certify``: certify every image of a data set, one row per (image, tau)."""
from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from certframe.cli.options import device_option, parse_options, plugin_option, seed_option
from certframe.engine import Names, certify_dataset
from certframe.registry import PluginError, get_registry
from certframe.runs import RunFolder


def run_certify(*, dataset: str, dataset_options: dict, segmenter: str, segmenter_options: dict,
                denoiser: str, denoiser_options: dict, certifier: str, certifier_options: dict,
                sigma: float, n0: int, n: int, alpha: float, taus: tuple[float, ...], batch_size: int,
                seed: int, device: str, output: Path, resume: bool = False, overwrite: bool = False,
                quiet: bool = False, limit: int | None = None, registry=None, console=None):
    """Build the plugins, certify, write the run folder; return the summary DataFrame."""
    registry = registry or get_registry()
    console = console or Console(quiet=quiet)
    config = {"dataset": dataset, "dataset_options": dataset_options, "segmenter": segmenter,
              "segmenter_options": segmenter_options, "denoiser": denoiser,
              "denoiser_options": denoiser_options, "certifier": certifier,
              "certifier_options": certifier_options, "sigma": sigma, "n0": n0, "n": n,
              "alpha": alpha, "taus": list(taus), "seed": seed, "limit": limit}
    data = registry.create("dataset", dataset, **dataset_options)
    seg = registry.create("segmenter", segmenter, **segmenter_options)
    den = registry.create("denoiser", denoiser, **denoiser_options)
    cert = registry.create("certifier", certifier, **certifier_options)
    config["dataset_identity"] = data.identity()
    config["plugin_versions"] = {k: registry.get(k, v).version for k, v in
                                 (("dataset", dataset), ("segmenter", segmenter),
                                  ("denoiser", denoiser), ("certifier", certifier))}
    run = RunFolder(output)
    done = run.start(config, resume=resume, overwrite=overwrite)
    total = len(data) if limit is None else min(limit, len(data))
    todo = [i for i in range(total) if data[i].id not in done] if done else list(range(total))
    names = Names(segmenter=_label(segmenter, segmenter_options), denoiser=denoiser, certifier=cert.name)
    with Progress(TextColumn("certify"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, disable=quiet) as progress:
        task = progress.add_task("certify", total=total, completed=total - len(todo))

        def on_image(index, image_id, rows):
            run.append(rows)
            progress.advance(task)

        for _ in certify_dataset(data, seg, den, cert, sigma=sigma, n0=n0, n=n, alpha=alpha, taus=taus,
                                 batch_size=batch_size, seed=seed, device=device, names=names,
                                 indices=todo, on_image=on_image):
            pass
    summary = run.write_summary()
    print_summary(summary, console, title=f"certified Dice ({output})")
    return summary


def _label(name: str, options: dict) -> str:
    weights = options.get("weights")
    return f"{name}:{Path(str(weights)).stem}" if weights else name


def print_summary(summary, console, title="summary"):
    table = Table(title=title)
    cols = ["segmenter", "denoiser", "certifier", "sigma", "tau", "radius", "certified_dice",
            "clean_dice", "abstain_rate", "images"]
    for c in cols:
        table.add_column(c, justify="right" if c not in cols[:3] else "left")
    for _, r in summary.iterrows():
        table.add_row(*[f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols])
    console.print(table)


def certify_options(f):
    """The options of ``certify`` (shared with other commands that certify)."""
    for deco in reversed([
        plugin_option("dataset", "synthetic-lung", "Data set plugin."),
        plugin_option("segmenter", "monai", "Segmenter plugin."),
        plugin_option("denoiser", "none", "Denoiser plugin (none: Gaussian-trained baseline)."),
        plugin_option("certifier", "segcertify", "Certifier plugin."),
        click.option("--sigma", type=float, default=0.25, show_default=True,
                     help="Noise std in [0, 1] pixel units."),
        click.option("--n0", type=int, default=10, show_default=True, help="Selection draws."),
        click.option("-n", "--n", "n", type=int, default=100, show_default=True, help="Estimation draws."),
        click.option("--alpha", type=float, default=0.001, show_default=True,
                     help="Family-wise error level per image."),
        click.option("--tau", "taus", type=float, multiple=True, default=(0.75,), show_default=True,
                     help="Threshold(s) in (0.5, 1); radius sigma * Phi^-1(tau). Repeatable."),
        click.option("--batch-size", type=int, default=32, show_default=True, help="Noise draws per forward pass."),
        seed_option, device_option,
        click.option("--limit", type=int, default=None, help="Certify only the first N images."),
    ]):
        f = deco(f)
    return f


@click.command("certify")
@certify_options
@click.option("--output", "-o", type=click.Path(path_type=Path), default=Path("runs/certify"),
              show_default=True, help="Run folder.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --output.")
@click.option("--overwrite", is_flag=True, help="Replace the results in --output.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or table.")
def certify(dataset_name, dataset_options, segmenter_name, segmenter_options, denoiser_name,
            denoiser_options, certifier_name, certifier_options, sigma, n0, n, alpha, taus, batch_size,
            seed, device, limit, output, resume, overwrite, quiet):
    """Certify a segmenter on a data set with randomized smoothing (SegCertify)."""
    try:
        run_certify(dataset=dataset_name, dataset_options=parse_options(dataset_options, "--dataset-option"),
                    segmenter=segmenter_name,
                    segmenter_options=parse_options(segmenter_options, "--segmenter-option"),
                    denoiser=denoiser_name, denoiser_options=parse_options(denoiser_options, "--denoiser-option"),
                    certifier=certifier_name,
                    certifier_options=parse_options(certifier_options, "--certifier-option"),
                    sigma=sigma, n0=n0, n=n, alpha=alpha, taus=taus, batch_size=batch_size, seed=seed,
                    device=device, output=output, resume=resume, overwrite=overwrite, quiet=quiet, limit=limit)
    except (PluginError, ValueError, FileNotFoundError, FileExistsError, TypeError) as err:
        raise click.ClickException(str(err)) from err
