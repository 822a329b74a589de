"""Shared click options and option parsing."""
from __future__ import annotations

import json

import click

from certframe.run.config import DEFAULTS


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


class BatchSizeType(click.ParamType):
    """A positive int, or ``auto`` (sized to the memory available)."""

    name = "INTEGER|auto"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or value == "auto":
            return value
        try:
            n = int(value)
        except (TypeError, ValueError):
            n = 0
        if n < 1:
            self.fail(f"expected a positive number of draws or 'auto', got {value!r}", param, ctx)
        return n


BATCH_SIZE = BatchSizeType()


def precision_option(what: str):
    """``--precision auto|fp32|bf16|fp16``, one copy for every command; ``what``: what it autocasts.

    Resolved by :meth:`certframe.run.accelerate.Acceleration.resolve` (auto: bf16 on CUDA where
    supported, else fp16; fp32 on CPU, where mixed precision is refused).
    """
    return click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto",
                        show_default=True, help=f"Autocast of {what}; auto = bf16/fp16 on CUDA, fp32 on CPU.")


def acceleration_options(f):
    """``--precision``, ``--channels-last/--no-channels-last``, ``--compile``, ``--prefetch``.

    The command receives them as ``precision``, ``channels_last`` (None = auto),
    ``compile_model`` and ``prefetch``; :func:`acceleration_from_params` turns them into
    the dict ``run_certify(accelerate=...)`` takes.
    """
    for deco in reversed([
        precision_option("denoiser + segmenter"),
        click.option("--channels-last/--no-channels-last", "channels_last", default=None,
                     help="channels_last memory format [default: on CUDA only]."),
        click.option("--compile", "compile_model", is_flag=True, help="torch.compile the base pipeline."),
        click.option("--prefetch", type=click.IntRange(min=0), default=2, show_default=True,
                     help="Images loaded ahead in a background thread (0: none)."),
    ]):
        f = deco(f)
    return f


def acceleration_from_params(params: dict) -> dict:
    """Pop the :func:`acceleration_options` from ``params``; the kwargs of ``Acceleration``."""
    return {"precision": params.pop("precision"), "channels_last": params.pop("channels_last"),
            "compile": params.pop("compile_model"), "prefetch": params.pop("prefetch")}


def certify_options(f):
    """The options of ``certify`` (shared with other commands that certify)."""
    for deco in reversed([
        plugin_option("dataset", DEFAULTS["dataset"], "Data set plugin."),
        plugin_option("segmenter", DEFAULTS["segmenter"], "Segmenter plugin."),
        plugin_option("denoiser", DEFAULTS["denoiser"], "Denoiser plugin (none: Gaussian-trained baseline)."),
        plugin_option("certifier", DEFAULTS["certifier"], "Certifier plugin."),
        click.option("--sigma", type=float, default=DEFAULTS["sigma"], show_default=True,
                     help="Noise std in [0, 1] pixel units."),
        click.option("--n0", type=int, default=DEFAULTS["n0"], show_default=True, help="Selection draws."),
        click.option("-n", "--n", "n", type=int, default=DEFAULTS["n"], show_default=True,
                     help="Estimation draws."),
        click.option("--alpha", type=float, default=DEFAULTS["alpha"], show_default=True,
                     help="Family-wise error level per image."),
        click.option("--tau", "taus", type=float, multiple=True, default=tuple(DEFAULTS["taus"]),
                     show_default=True, help="Threshold(s) in (0.5, 1); radius sigma * Phi^-1(tau). Repeatable."),
        click.option("--batch-size", type=BATCH_SIZE, default=DEFAULTS["batch_size"], show_default=True,
                     help="Noise draws per forward pass, or auto (fit the memory available)."),
        seed_option, device_option,
        click.option("--limit", type=int, default=None, help="Certify only the first N images."),
    ]):
        f = deco(f)
    return f
