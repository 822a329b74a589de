"""``certframe train ...``: training commands, one module each.

A training command registers itself by adding ``module: attribute`` to
``TRAIN_COMMANDS``.
"""
from __future__ import annotations

import importlib

import click

TRAIN_COMMANDS: dict[str, str] = {
    "certframe.cli.train_segmenter_cmd": "segmenter",
    "certframe.cli.train_denoiser_cmd": "denoiser",
}


@click.group("train")
def train():
    """Train segmenters and denoisers on a data set."""


for _module, _attr in TRAIN_COMMANDS.items():
    train.add_command(getattr(importlib.import_module(_module), _attr))
