"""The ``certframe`` command line (click). Each command lives in its own module.

Commands are thin: they parse options into a validated spec, call the run layer
(:mod:`certframe.run`) or another library function, and print tables
(:mod:`certframe.cli.tables`). Failures go through one error boundary
(:mod:`certframe.cli.errors`).
"""
from __future__ import annotations

import importlib

import click

from certframe import __version__
from certframe.cli.errors import CertframeGroup

# module name -> attribute: a new command adds one line here.
COMMANDS = {
    "certframe.cli.plugins_cmd": "plugins",
    "certframe.cli.certify_cmd": "certify",
    "certframe.cli.demo_cmd": "demo",
    "certframe.cli.train_cmd": "train",
    "certframe.cli.report_cmd": "report",
    "certframe.cli.attack_cmd": "attack",
    "certframe.cli.evaluate_cmd": "evaluate",
    "certframe.cli.convert_cmd": "convert",
    "certframe.cli.study_cmd": "study",
}


@click.group(cls=CertframeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="certframe")
@click.option("--debug", is_flag=True, help="Show the full traceback of an error (or set CERTFRAME_DEBUG=1).")
def main(debug):
    """Certify medical image segmentation models with randomized smoothing."""
    from certframe.cli.logs import setup_logging

    setup_logging()


for _module, _attr in COMMANDS.items():
    main.add_command(getattr(importlib.import_module(_module), _attr))
