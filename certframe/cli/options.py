"""Shared click options and option parsing."""
from __future__ import annotations

import json

import click


def parse_options(pairs: tuple[str, ...], what: str) -> dict:
    """``("key=value", ...)`` -> dict; values are read as JSON when they parse, else strings.

    ``size=128`` -> 128, ``weights=out/model.safetensors`` -> str, ``channels=[8,16]`` -> list.
    """
    options = {}
    for pair in pairs:
        if "=" not in pair:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint=what)
        key, value = pair.split("=", 1)
        key = key.strip().replace("-", "_")
        if not key.isidentifier():
            raise click.BadParameter(f"option name {key!r} is not a valid name", param_hint=what)
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def plugin_option(kind: str, default: str | None, help: str):
    """``--KIND NAME`` plus repeatable ``--KIND-option KEY=VALUE``."""
    def decorator(f):
        f = click.option(f"--{kind}-option", f"{kind}_options", multiple=True, metavar="KEY=VALUE",
                         help=f"Option passed to the {kind} plugin (repeatable).")(f)
        f = click.option(f"--{kind}", f"{kind}_name", default=default, show_default=True,
                         required=default is None, help=help)(f)
        return f
    return decorator


def device_option(f):
    return click.option("--device", default="auto", show_default=True,
                        help="cpu, cuda, cuda:N or auto (CUDA when available).")(f)


def seed_option(f):
    return click.option("--seed", default=0, show_default=True, type=int,
                        help="Fixes every noise draw (with each image's id).")(f)
