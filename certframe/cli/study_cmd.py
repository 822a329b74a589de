"""``certframe study STUDY.toml``: the paper's table on your own data, in one command (docs/study.md)."""
from __future__ import annotations

import logging
from pathlib import Path

import click
from rich.console import Console


@click.command("study")
@click.argument("study_file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--output", "-o", type=click.Path(path_type=Path), default=None,
              help="The study folder (default studies/<name>). Rerunning reuses what is complete there.")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N for every stage (default: the file's, "
                                             "else auto).")
@click.option("--plan", "plan_only", is_flag=True, help="Check everything and print the plan; run nothing.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the plan, the stages run and the report.")
def study(study_file, output, device, plan_only, quiet):
    """Run the study STUDY_FILE: train the denoiser and segmenters, certify every row at every sigma, report.

    Every stage whose output is complete with the same settings and inputs is reused; an interrupted
    one resumes; a changed setting reruns its stages and those downstream of it, and nothing else.
    """
    from certframe.cli.errors import on_interrupt
    from certframe.study import run_study

    if quiet:
        logging.getLogger("certframe").setLevel(logging.WARNING)
    on_interrupt("Interrupted. Every finished stage is kept and the interrupted one is recorded: run the same "
                 "command again to resume it.")
    run_study(study_file, output, device=device, plan_only=plan_only, console=Console())
