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

from certframe.cli.errors import on_interrupt
from certframe.cli.options import device_option, parse_options, plugin_option, precision_option, seed_option
from certframe.training.denoiser_job import run_train_denoiser


def _widths(text: str) -> list[int]:
    try:
        widths = [int(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers such as 16,32,32,64, got {text!r}")
    return widths


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
                   "refuses larger sigma. 0 trains on every timestep (a finite number >= 0).")
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
@precision_option("the UNet's forward pass")
@seed_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or messages.")
def denoiser(dataset_name, dataset_options, denoiser_name, size, crop, channels, layers_per_block, attention, steps,
             batch_size, lr, max_sigma, margin, beta_schedule, prediction_type, ema_decay, checkpoint_every,
             log_every, output, resume, overwrite, device, precision, seed, quiet):
    """Train a DDPM denoiser (diffusers UNet2DModel + DDPMScheduler, EMA) on a data set's images."""
    # errors go through the one boundary (certframe.cli.errors); Ctrl-C says what this command saved
    on_interrupt(f"Interrupted: the training state and the current EMA model are saved; continue with the "
                 f"same command and --resume (log: {output / 'train.log'})")
    run_train_denoiser(dataset=dataset_name, dataset_options=parse_options(dataset_options, "--dataset-option"),
                       output=output, denoiser=denoiser_name, size=size, channels=_widths(channels),
                       layers_per_block=layers_per_block, attention=attention, steps=steps,
                       batch_size=batch_size, lr=lr, max_sigma=max_sigma,
                       margin=margin, beta_schedule=beta_schedule, prediction_type=prediction_type,
                       ema_decay=ema_decay, checkpoint_every=checkpoint_every, log_every=log_every,
                       resume=resume, overwrite=overwrite, device=device, seed=seed, crop=crop, quiet=quiet,
                       precision=precision)
