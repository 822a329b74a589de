"""``certframe train denoiser``: train a denoiser plugin's model (the DDPM by default) on a data set's images.

A thin command: the denoiser plugin named by ``--denoiser`` (default ``ddpm``)
brings its trainer as the ``trainer`` attribute of its registered factory, found
through the registry (the core never imports a concrete plugin). For ``ddpm``
(and ``ddim``, the same model) that is
:func:`certframe.plugins.denoisers.ddpm_training.train_diffusion`; the result is a
diffusers folder that loads with ``--denoiser ddpm --denoiser-option
model=OUTPUT``, with progress in ``OUTPUT/train.log``.
"""
from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from certframe.cli.options import device_option, parse_options, plugin_option, seed_option
from certframe.interfaces import model_spatial_dims
from certframe.registry import PluginError, get_registry
from certframe.validation import require_images


def _widths(text: str) -> list[int]:
    try:
        widths = [int(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers such as 16,32,32,64, got {text!r}")
    return widths


def denoiser_trainer(name: str, registry=None):
    """The ``trainer`` of the registered denoiser ``name``; PluginError naming the trainable ones otherwise."""
    registry = registry or get_registry()
    trainer = getattr(registry.get("denoiser", name).factory, "trainer", None)
    if trainer is None:
        trainable = [n for n in registry.names("denoiser")
                     if getattr(registry.get("denoiser", n).factory, "trainer", None) is not None]
        raise PluginError(f"denoiser {name!r} has no trainer (no `trainer` attribute on its factory); "
                          f"trainable denoisers: {', '.join(trainable) or 'none'}")
    return trainer


def run_train_denoiser(*, dataset: str, dataset_options: dict, output: Path, denoiser: str = "ddpm",
                       size: int | None = None, channels=(16, 32, 32, 64), layers_per_block: int = 1,
                       attention: bool = False, steps: int = 2000, batch_size: int = 16, lr: float = 5e-4,
                       max_sigma: float | None = 1.0, margin: float = 0.25, beta_schedule: str = "linear",
                       prediction_type: str = "epsilon", ema_decay: float = 0.999,
                       checkpoint_every: int | None = None, log_every: int = 50, resume: bool = False,
                       overwrite: bool = False, device: str = "auto", seed: int = 0, quiet: bool = False,
                       crop: int | None = None, registry=None, console=None):
    """Build the data set (``split=train``), train with the denoiser's trainer, save; returns its result."""
    from certframe.run.build import resolve_device

    registry = registry or get_registry()
    console = console or Console(quiet=quiet)
    trainer = denoiser_trainer(denoiser, registry)
    output = Path(output)
    if "split" in dataset_options:
        raise ValueError("do not pass a split option: the denoiser trains on split=train")
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    train = registry.create("dataset", dataset, **dataset_options, split="train")
    if 3 not in model_spatial_dims(registry.get("denoiser", denoiser).factory):  # what the plugin declares
        require_images(train, f"certframe train denoiser: the denoiser {denoiser!r} is a 2-D model "
                              f"(spatial_dims=2) and trains", dataset)
    dev = resolve_device(device)
    h, w = (int(v) for v in train[0].image.shape[-2:])
    if size is not None and (size, size) != (h, w):
        console.print(f"[yellow]note: the data set's images (what the segmenter sees) are {h}x{w}; a {size}x{size} "
                      f"denoiser resizes them before and after denoising (--max-sigma is on the {h}x{w} images)"
                      f"[/yellow]")
    console.print(f"training a {denoiser} denoiser on {dataset}: {len(train)} images, {train.in_channels} "
                  f"channel(s), UNet {list(channels)}, {steps} steps, device {dev}; log: {output / 'train.log'}")
    result = trainer(train, output, size=size, block_out_channels=channels, layers_per_block=layers_per_block,
                     attention=attention, steps=steps, batch_size=batch_size, lr=lr, max_sigma=max_sigma,
                     margin=margin, beta_schedule=beta_schedule, prediction_type=prediction_type,
                     ema_decay=ema_decay, seed=seed, device=dev, checkpoint_every=checkpoint_every,
                     log_every=log_every, crop=crop, resume=resume, overwrite=overwrite, progress=not quiet, console=console,
                     info={"dataset": dataset, "dataset_options": dataset_options, "denoiser": denoiser})
    last = result.history[-1]["loss"] if result.history else float("nan")
    console.print(f"trained on t in 0..{result.t_max}; last loss {last:.4f}; saved {result.output} "
                  f"(load with --denoiser {denoiser} --denoiser-option model={result.output})")
    return result


@click.command("denoiser")
@plugin_option("dataset", None, "Data set plugin whose train split is used (synthetic-lung, kvasir-seg, ...).")
@click.option("--denoiser", "denoiser_name", default="ddpm", show_default=True,
              help="Denoiser plugin whose model is trained (its factory's `trainer`).")
@click.option("--size", type=int, default=None,
              help="Training resolution (default: the data set's image size, i.e. what the segmenter sees).")
@click.option("--crop", type=int, default=None,
              help="Train on random CROP x CROP patches of the images (the model still denoises whole images at "
                   "their size): about (size/crop)^2 times cheaper per step; needs no --attention.")
@click.option("--channels", default="16,32,32,64", show_default=True,
              help="UNet2DModel block_out_channels, one per resolution level.")
@click.option("--layers-per-block", type=int, default=1, show_default=True)
@click.option("--attention", is_flag=True, help="Self-attention at the lowest resolution.")
@click.option("--steps", type=int, default=2000, show_default=True, help="Optimisation steps.")
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--lr", type=float, default=5e-4, show_default=True, help="Adam learning rate.")
@click.option("--max-sigma", type=float, default=1.0, show_default=True,
              help="Largest smoothing sigma to serve, on the data set's images: t is drawn from "
                   "0..t*(max_sigma*(1+margin)) (after the noise shrink of a resize to --size); the denoiser "
                   "refuses larger sigma. 0 trains on every timestep.")
@click.option("--margin", type=float, default=0.25, show_default=True)
@click.option("--beta-schedule", type=click.Choice(["linear", "scaled_linear", "squaredcos_cap_v2"]),
              default="linear", show_default=True)
@click.option("--prediction-type", type=click.Choice(["epsilon", "sample", "v_prediction"]), default="epsilon",
              show_default=True)
@click.option("--ema-decay", type=float, default=0.999, show_default=True)
@click.option("--checkpoint-every", type=int, default=None,
              help="Steps between resumable states (OUTPUT.resume/); default a tenth of --steps, at most 200. "
                   "Ctrl-C also saves one (and the current EMA model).")
@click.option("--log-every", type=int, default=50, show_default=True,
              help="Steps between lines of OUTPUT/train.log.")
@click.option("--output", "-o", type=click.Path(path_type=Path), default=Path("runs/train/ddpm"),
              show_default=True, help="The diffusers folder to write.")
@click.option("--resume", is_flag=True, help="Continue the interrupted run that writes --output.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --output and its training state.")
@device_option
@seed_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or messages.")
def denoiser(dataset_name, dataset_options, denoiser_name, size, crop, channels, layers_per_block, attention, steps,
             batch_size, lr, max_sigma, margin, beta_schedule, prediction_type, ema_decay, checkpoint_every,
             log_every, output, resume, overwrite, device, seed, quiet):
    """Train a DDPM denoiser (diffusers UNet2DModel + DDPMScheduler, EMA) on a data set's images."""
    try:
        run_train_denoiser(dataset=dataset_name, dataset_options=parse_options(dataset_options, "--dataset-option"),
                           output=output, denoiser=denoiser_name, size=size, channels=_widths(channels),
                           layers_per_block=layers_per_block, attention=attention, steps=steps,
                           batch_size=batch_size, lr=lr, max_sigma=max_sigma if max_sigma > 0 else None,
                           margin=margin, beta_schedule=beta_schedule, prediction_type=prediction_type,
                           ema_decay=ema_decay, checkpoint_every=checkpoint_every, log_every=log_every,
                           resume=resume, overwrite=overwrite, device=device, seed=seed, crop=crop, quiet=quiet)
    except KeyboardInterrupt:
        click.echo(f"Interrupted: the training state and the current EMA model are saved; continue with the "
                   f"same command and --resume (log: {output / 'train.log'})", err=True)
        click.get_current_context().exit(130)
    except (PluginError, ValueError, FileNotFoundError, FileExistsError, TypeError) as err:
        raise click.ClickException(str(err)) from err
