"""``certframe train denoiser``: train a DDPM denoiser (diffusers) on a data set plugin's images.

A thin command over :func:`certframe.diffusion_training.train_diffusion`. The
result is a diffusers folder that loads with ``--denoiser ddpm --denoiser-option
model=OUTPUT`` (or ``ddim``).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import click
from rich.console import Console

from certframe.cli.options import device_option, parse_options, plugin_option, seed_option
from certframe.registry import PluginError, get_registry


def _widths(text: str) -> list[int]:
    try:
        widths = [int(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers such as 16,32,32,64, got {text!r}")
    return widths


def run_train_denoiser(*, dataset: str, dataset_options: dict, output: Path, size: int | None = None,
                       channels=(16, 32, 32, 64), layers_per_block: int = 1, attention: bool = False,
                       steps: int = 2000, batch_size: int = 16, lr: float = 5e-4, max_sigma: float | None = 1.0,
                       margin: float = 0.25, beta_schedule: str = "linear", prediction_type: str = "epsilon",
                       ema_decay: float = 0.999, checkpoint_every: int = 200, resume: bool = False,
                       overwrite: bool = False, device: str = "auto", seed: int = 0, quiet: bool = False,
                       registry=None, console=None):
    """Build the data set (``split=train``), train, save; returns the :class:`DiffusionTrainResult`."""
    from certframe.diffusion_training import resume_dir, train_diffusion
    from certframe.run.build import resolve_device

    registry = registry or get_registry()
    console = console or Console(quiet=quiet)
    output = Path(output)
    if "split" in dataset_options:
        raise ValueError("do not pass a split option: the denoiser trains on split=train")
    state = resume_dir(output)
    if not resume and (output.exists() or state.exists()):
        if not overwrite:
            raise FileExistsError(f"{str(output)!r} (or its training state {str(state)!r}) exists; "
                                  f"pass --resume to continue that run or --overwrite to replace it")
        shutil.rmtree(output, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)
    train = registry.create("dataset", dataset, **dataset_options, split="train")
    dev = resolve_device(device)
    console.print(f"training a DDPM on {dataset}: {len(train)} images, {train.in_channels} channel(s), "
                  f"UNet {list(channels)}, {steps} steps, device {dev}")
    result = train_diffusion(train, output, size=size, block_out_channels=channels,
                             layers_per_block=layers_per_block, attention=attention, steps=steps,
                             batch_size=batch_size, lr=lr, max_sigma=max_sigma, margin=margin,
                             beta_schedule=beta_schedule, prediction_type=prediction_type, ema_decay=ema_decay,
                             seed=seed, device=dev, checkpoint_every=checkpoint_every, resume=resume,
                             progress=not quiet, console=console,
                             info={"dataset": dataset, "dataset_options": dataset_options})
    last = result.history[-1]["loss"] if result.history else float("nan")
    console.print(f"trained on t in 0..{result.t_max}; last loss {last:.4f}; saved {result.output} "
                  f"(load with --denoiser ddpm --denoiser-option model={result.output})")
    return result


@click.command("denoiser")
@plugin_option("dataset", None, "Data set plugin whose train split is used (synthetic-lung, kvasir-seg, ...).")
@click.option("--size", type=int, default=None, help="Training resolution (default: the data set's image size).")
@click.option("--channels", default="16,32,32,64", show_default=True,
              help="UNet2DModel block_out_channels, one per resolution level.")
@click.option("--layers-per-block", type=int, default=1, show_default=True)
@click.option("--attention", is_flag=True, help="Self-attention at the lowest resolution.")
@click.option("--steps", type=int, default=2000, show_default=True, help="Optimisation steps.")
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--lr", type=float, default=5e-4, show_default=True, help="Adam learning rate.")
@click.option("--max-sigma", type=float, default=1.0, show_default=True,
              help="Largest smoothing sigma to serve: t is drawn from 0..t*(max_sigma*(1+margin)). "
                   "0 trains on every timestep.")
@click.option("--margin", type=float, default=0.25, show_default=True)
@click.option("--beta-schedule", type=click.Choice(["linear", "scaled_linear", "squaredcos_cap_v2"]),
              default="linear", show_default=True)
@click.option("--prediction-type", type=click.Choice(["epsilon", "sample", "v_prediction"]), default="epsilon",
              show_default=True)
@click.option("--ema-decay", type=float, default=0.999, show_default=True)
@click.option("--checkpoint-every", type=int, default=200, show_default=True,
              help="Steps between resumable states (OUTPUT.resume/).")
@click.option("--output", "-o", type=click.Path(path_type=Path), default=Path("runs/train/ddpm"),
              show_default=True, help="The diffusers folder to write.")
@click.option("--resume", is_flag=True, help="Continue the interrupted run that writes --output.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --output and its training state.")
@device_option
@seed_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or messages.")
def denoiser(dataset_name, dataset_options, size, channels, layers_per_block, attention, steps, batch_size, lr,
             max_sigma, margin, beta_schedule, prediction_type, ema_decay, checkpoint_every, output, resume,
             overwrite, device, seed, quiet):
    """Train a DDPM denoiser (diffusers UNet2DModel + DDPMScheduler, EMA) on a data set's images."""
    try:
        run_train_denoiser(dataset=dataset_name, dataset_options=parse_options(dataset_options, "--dataset-option"),
                           output=output, size=size, channels=_widths(channels), layers_per_block=layers_per_block,
                           attention=attention, steps=steps, batch_size=batch_size, lr=lr,
                           max_sigma=max_sigma if max_sigma > 0 else None, margin=margin,
                           beta_schedule=beta_schedule, prediction_type=prediction_type, ema_decay=ema_decay,
                           checkpoint_every=checkpoint_every, resume=resume, overwrite=overwrite, device=device,
                           seed=seed, quiet=quiet)
    except (PluginError, ValueError, FileNotFoundError, FileExistsError, TypeError) as err:
        raise click.ClickException(str(err)) from err
