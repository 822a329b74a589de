"""``certframe report RUN...``: compare run folders in a table; write figures and report.html."""
from __future__ import annotations

import logging
from pathlib import Path

import click
from rich.console import Console

from certframe.cli.tables import print_comparison
from certframe.registry import get_registry
from certframe.report import DEFAULT_REPORTERS, make_report

log = logging.getLogger("certframe.report")


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
    """Compare run folders (or folders of run folders): certified Dice per method, sigma and radius.

    A study folder (``certframe study``) alone gives the study report: its table with each row's paired
    bootstrap CI against the baseline, the denoiser's quality, the training cost, a figure and report.html.
    """
    if quiet:
        logging.getLogger("certframe").setLevel(logging.WARNING)
    console = Console(quiet=quiet)
    if len(runs) == 1 and (runs[0] / "study.json").is_file():  # a study folder: the study report (docs/study.md)
        from certframe.study.report import write_study_report

        _, lines, written = write_study_report(runs[0], output)
        for line in lines:
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        for path in written:
            log.info("wrote %s", path)
        return
    options = {"overlay_images": overlay_images}
    if title:
        options["title"] = title
    table, written = make_report(runs, output, reporters=reporters, reporter_options=options,
                                 allow_incomplete=allow_incomplete, registry=get_registry())
    if len(table):
        print_comparison(table, console)
    for path in written:
        log.info("wrote %s", path)
