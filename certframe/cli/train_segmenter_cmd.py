"""``certframe train segmenter``: train a MONAI segmenter on a data set plugin.

A thin command over :func:`certframe.training.train_segmenter`: the data set
plugin is built twice, with ``split=train`` and ``split=val``; the network comes
from :mod:`certframe.plugins.segmenters.networks`; the best epoch is written to
``--output`` (safetensors + JSON) and loads back with
``--segmenter monai --segmenter-option weights=OUTPUT``.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import click
from rich.console import Console

from certframe.cli.options import device_option, parse_options, plugin_option, seed_option
from certframe.registry import PluginError, get_registry
from certframe.training import TrainResult, resume_dir, train_segmenter


def run_train_segmenter(*, dataset: str, dataset_options: dict, arch: str, network: dict, epochs: int,
                        batch_size: int, lr: float, noise_sigma: float, output: Path, resume: bool = False,
                        overwrite: bool = False, device: str = "auto", seed: int = 0, quiet: bool = False,
                        registry=None, console=None) -> TrainResult:
    """Build the train/val splits and the network, train, return the :class:`TrainResult`."""
    from certframe.run.build import resolve_device
    from certframe.plugins.segmenters.monai_segmenter import MonaiSegmenter

    registry = registry or get_registry()
    console = console or Console(quiet=quiet)
    output = Path(output)
    if output.suffix != ".safetensors":
        raise ValueError(f"--output must be a .safetensors path, got {str(output)!r}")
    if "split" in dataset_options:
        raise ValueError("do not pass a split option: training uses split=train and validation split=val")
    state = resume_dir(output)
    if not resume and (output.exists() or state.exists()):
        if not overwrite:
            raise FileExistsError(f"{str(output)!r} (or its training state {str(state)!r}) exists; "
                                  f"pass --resume to continue that run or --overwrite to replace it")
        output.unlink(missing_ok=True)
        output.with_suffix(".json").unlink(missing_ok=True)
        shutil.rmtree(state, ignore_errors=True)
    train = registry.create("dataset", dataset, **dataset_options, split="train")
    val = registry.create("dataset", dataset, **dataset_options, split="val")
    dev = resolve_device(device)
    model = MonaiSegmenter(arch=arch, in_channels=train.in_channels, num_classes=train.num_classes,
                           network=network)
    config = {**model.config, "class_names": list(train.class_names), "dataset": dataset,
              "dataset_options": dataset_options, "dataset_identity": train.identity()}
    console.print(f"training {arch} on {dataset}: {len(train)} train / {len(val)} val images, "
                  f"{train.num_classes} classes, noise sigma {noise_sigma}, device {dev}")
    result = train_segmenter(model, train, val, epochs=epochs, batch_size=batch_size, lr=lr,
                             noise_sigma=noise_sigma, seed=seed, device=dev, checkpoint=output, config=config,
                             resume=resume, progress=not quiet, console=console,
                             on_epoch=lambda r: console.print(
                                 f"epoch {r['epoch'] + 1}/{epochs}: loss {r['loss']:.4f}, "
                                 f"val Dice {r['val_dice']:.4f}"))
    console.print(f"best val Dice {result.best_dice:.4f} at epoch {result.best_epoch + 1}: {result.checkpoint}")
    return result


@click.command("segmenter")
@plugin_option("dataset", None, "Data set plugin (kvasir-seg, jsrt, folder, synthetic-lung, ...).")
@click.option("--arch", default="unet", show_default=True,
              type=click.Choice(["unet", "basicunet", "attentionunet", "segresnet"]), help="MONAI network.")
@click.option("--network-option", "network_options", multiple=True, metavar="KEY=VALUE",
              help="Network argument, e.g. channels=[16,32,64,128] (repeatable).")
@click.option("--epochs", type=int, default=20, show_default=True)
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Adam learning rate.")
@click.option("--noise-sigma", type=float, default=0.0, show_default=True,
              help="Gaussian augmentation std in [0, 1] pixel units (0: clean training).")
@click.option("--output", "-o", type=click.Path(path_type=Path),
              default=Path("runs/train/segmenter.safetensors"), show_default=True,
              help="Best checkpoint (.safetensors; a .json and a .resume/ folder are written next to it).")
@click.option("--resume", is_flag=True, help="Continue the interrupted run that writes --output.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --output and its training state.")
@device_option
@seed_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or messages.")
def segmenter(dataset_name, dataset_options, arch, network_options, epochs, batch_size, lr, noise_sigma,
              output, resume, overwrite, device, seed, quiet):
    """Train a segmenter (MONAI network, Dice + cross-entropy, Adam) on a data set."""
    try:
        run_train_segmenter(dataset=dataset_name, dataset_options=parse_options(dataset_options, "--dataset-option"),
                            arch=arch, network=parse_options(network_options, "--network-option"),
                            epochs=epochs, batch_size=batch_size, lr=lr, noise_sigma=noise_sigma, output=output,
                            resume=resume, overwrite=overwrite, device=device, seed=seed, quiet=quiet)
    except (PluginError, ValueError, FileNotFoundError, FileExistsError, TypeError) as err:
        raise click.ClickException(str(err)) from err
