"""``certframe convert guided-diffusion IN.pt OUT/``: a third-party checkpoint -> a local diffusers folder.

A thin command: the converter is found through the registry, as the
``converters["guided-diffusion"]`` attribute of a registered denoiser's factory
(the built-in ``ddpm``), so the core imports no concrete plugin. The flags are
guided-diffusion's ``create_model`` flags; their defaults are those of the
unconditional 256x256 model the paper used (see docs/diffusion.md).
"""
from __future__ import annotations

from pathlib import Path

import click

from certframe.registry import PluginError, get_registry
from certframe.validation import check_output_folder


def find_converter(fmt: str, registry=None):
    """``(denoiser name, converter)`` of the first registered denoiser that converts ``fmt``."""
    registry = registry or get_registry()
    known = {}
    for name in registry.names("denoiser"):
        factory = registry.get("denoiser", name).factory
        # a class's own converters only: a subclass (ddim over ddpm) inherits them, the parent names them
        own = vars(factory).get("converters") if isinstance(factory, type) else getattr(factory, "converters", None)
        for key, fn in (own or {}).items():
            known.setdefault(key, (name, fn))
    if fmt not in known:
        raise PluginError(f"no denoiser plugin converts {fmt!r}; formats: {', '.join(sorted(known)) or 'none'}")
    return known[fmt]


def _ints(text: str, what: str) -> tuple:
    try:
        return tuple(float(v) if "." in v else int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {text!r}", param_hint=what)


@click.group("convert")
def convert():
    """Convert third-party model checkpoints into folders certframe loads."""


@convert.command("guided-diffusion")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("output", type=click.Path(path_type=Path))
@click.option("--image-size", type=int, default=256, show_default=True)
@click.option("--in-channels", type=int, default=3, show_default=True)
@click.option("--num-channels", type=int, default=256, show_default=True)
@click.option("--num-res-blocks", type=int, default=2, show_default=True)
@click.option("--channel-mult", default="", help="e.g. 1,1,2,2,4,4 (default: guided-diffusion's for the size).")
@click.option("--attention-resolutions", default="32,16,8", show_default=True)
@click.option("--num-heads", type=int, default=4, show_default=True)
@click.option("--num-head-channels", type=int, default=64, show_default=True)
@click.option("--num-heads-upsample", type=int, default=-1, show_default=True)
@click.option("--learn-sigma/--no-learn-sigma", default=True, show_default=True)
@click.option("--resblock-updown/--no-resblock-updown", default=True, show_default=True)
@click.option("--use-scale-shift-norm/--no-use-scale-shift-norm", default=True, show_default=True)
@click.option("--use-new-attention-order/--no-use-new-attention-order", default=False, show_default=True)
@click.option("--class-cond/--no-class-cond", default=False, show_default=True)
@click.option("--diffusion-steps", type=int, default=1000, show_default=True)
@click.option("--noise-schedule", type=click.Choice(["linear", "cosine"]), default="linear", show_default=True)
@click.option("--predict-xstart/--no-predict-xstart", default=False, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing OUTPUT folder.")
def guided_diffusion(checkpoint, output, channel_mult, attention_resolutions, overwrite, **flags):
    """Convert an OpenAI guided-diffusion (ADM) state dict CHECKPOINT (.pt) into the diffusers folder OUTPUT."""
    flags["channel_mult"] = _ints(channel_mult, "--channel-mult") or None
    flags["attention_resolutions"] = _ints(attention_resolutions, "--attention-resolutions")
    check_output_folder(output, "OUTPUT", "a diffusers model folder")  # errors: the one boundary, cli.errors
    name, converter = find_converter("guided-diffusion")
    folder = converter(checkpoint, output, overwrite=overwrite, **flags)
    click.echo(f"wrote {folder}: load it with --denoiser {name} --denoiser-option model={folder}")
    click.echo(f"validate it: certframe evaluate denoiser --dataset DATASET --denoiser {name} "
               f"--denoiser-option model={folder} --sigma 0.25 --sigma 0.5 (PSNR denoised must beat PSNR noisy)")
