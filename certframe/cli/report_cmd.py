"""``certframe report RUN...``: compare run folders in a table; write figures and report.html."""
from __future__ import annotations

import logging
from pathlib import Path

import click
from rich import box
from rich.console import Console
from rich.table import Table

from certframe.registry import PluginError, get_registry
from certframe.report import DEFAULT_REPORTERS, make_report

log = logging.getLogger("certframe.report")


def print_comparison(table, console: Console, title: str = "certified Dice") -> None:
    """The comparison table in rich, within 100 columns; method names are never cut."""
    several = table["dataset"].nunique() > 1
    certifiers = table["certifier"].nunique() > 1
    methods = table["method"].astype(str)
    if several:
        methods = table["dataset"].astype(str) + ": " + methods
    if certifiers:
        methods = methods + " [" + table["certifier"].astype(str) + "]"
    elif len(table):
        title = f"{title} ({table['certifier'].iloc[0]})"
    t = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    t.add_column("method", no_wrap=True, min_width=max([6] + [len(m) for m in methods]))
    for header in ("σ", "τ", "radius", "cert. Dice", "abstain", "clean Dice", "s/img", "images"):
        t.add_column(header, justify="right", no_wrap=True)
    for m, (_, r) in zip(methods, table.iterrows()):
        t.add_row(m, f"{r['sigma']:g}", f"{r['tau']:g}", f"{r['radius']:.3f}",
                  f"{r['certified_dice']:.3f}±{r['certified_dice_std']:.3f}", f"{r['abstain_rate']:.3f}",
                  f"{r['clean_dice']:.3f}", f"{r['seconds_per_image']:.2f}", str(int(r["images"])))
    console.print(t)


@click.command("report")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--output", "-o", type=click.Path(path_type=Path, file_okay=False), default=Path("report"),
              show_default=True, help="Folder for report.csv/json, figures/ and report.html.")
@click.option("--reporter", "reporters", multiple=True, default=DEFAULT_REPORTERS, show_default=True,
              help="Reporter plugin(s) to run (repeatable); see `certframe plugins`.")
@click.option("--overlays", "overlay_images", type=click.IntRange(min=0), default=4, show_default=True,
              help="Images per run in the overlay figures (0: none).")
@click.option("--title", default=None, help="Title of report.html.")
@click.option("--allow-incomplete", is_flag=True, help="Report runs that have not finished yet.")
@click.option("--quiet", "-q", is_flag=True, help="No table or info logs.")
def report(runs, output, reporters, overlay_images, title, allow_incomplete, quiet):
    """Compare run folders (or folders of run folders): certified Dice per method, sigma and radius."""
    if quiet:
        logging.getLogger("certframe").setLevel(logging.WARNING)
    console = Console(quiet=quiet)
    options = {"overlay_images": overlay_images}
    if title:
        options["title"] = title
    try:
        table, written = make_report(runs, output, reporters=reporters, reporter_options=options,
                                     allow_incomplete=allow_incomplete, registry=get_registry())
    except (PluginError, ValueError, FileNotFoundError) as err:  # RunError is a ValueError
        raise click.ClickException(str(err)) from err
    print_comparison(table, console)
    for path in written:
        log.info("wrote %s", path)
