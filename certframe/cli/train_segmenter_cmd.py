"""``certframe train segmenter``: train any trainable segmenter plugin on a data set plugin.

A thin command over :func:`certframe.training.segmenter.train_segmenter`: the data set
plugin is built twice, with ``split=train`` and ``split=val``; the untrained model
comes from the registry (``--segmenter NAME`` with ``weights=random`` and the data
set's ``in_channels`` and ``num_classes``), or from ``--init WEIGHTS`` to fine-tune;
with ``--denoiser`` the model trains on the frozen denoiser's output
(denoised training). The best epoch is written to ``--output`` (safetensors +
JSON, recording the segmenter plugin, its configuration and, for noisy training,
what it was tuned for) and loads back with
``--segmenter NAME --segmenter-option weights=OUTPUT``.

A segmenter plugin is trainable when it accepts the options ``weights`` (a
certframe safetensors file, or ``"random"``), ``in_channels`` and ``num_classes``,
and keeps its ``nn.Module`` in ``.net`` and the configuration that rebuilds it in
``.config`` (the built-ins ``monai`` and ``smp`` do).
"""
from __future__ import annotations

from pathlib import Path

import click

from certframe.cli.options import device_option, parse_options, plugin_option, precision_option, seed_option
from certframe.training.segmenter_job import run_train_segmenter


@click.command("segmenter")
@plugin_option("dataset", None, "Data set plugin (kvasir-seg, jsrt, folder, synthetic-lung, synthetic-volume, "
                                "nifti-folder, ...).")
@plugin_option("segmenter", "monai", "Segmenter plugin to train (monai, smp, or a trainable third-party one).")
@click.option("--arch", default=None,
              help="Shorthand for --segmenter-option arch=... (monai: unet, basicunet, attentionunet, segresnet "
                   "[default: unet]; smp: Unet, UnetPlusPlus, DeepLabV3Plus, FPN, ...).")
@click.option("--network-option", "network_options", multiple=True, metavar="KEY=VALUE",
              help="Network argument, e.g. channels=[16,32,64,128] (repeatable; the segmenter option network).")
@click.option("--denoiser", "denoiser_name", default=None,
              help="Train on the output of this frozen denoiser plugin (denoised training); needs --noise-sigma.")
@click.option("--denoiser-option", "denoiser_options", multiple=True, metavar="KEY=VALUE",
              help="Option passed to the denoiser plugin (repeatable).")
@click.option("--init", default=None,
              help="Fine-tune from these weights (a .safetensors file of the same segmenter plugin, or a "
                   "bundled name such as synthetic-lung).")
@click.option("--epochs", type=int, default=20, show_default=True,
              help="Epochs to run (with --patience: the most epochs to run).")
@click.option("--patience", type=click.IntRange(min=1), default=None,
              help="Early stopping: stop once the validation Dice has not improved for this many epochs "
                   "(train until it stops improving; a fair Gaussian-trained baseline needs it).")
@click.option("--lr-plateau", type=click.IntRange(min=1), default=None,
              help="Halve the learning rate once the validation Dice has not improved for this many epochs "
                   "(ReduceLROnPlateau; default: constant rate). Use with a larger --patience.")
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Adam learning rate.")
@click.option("--noise-sigma", type=float, multiple=True,
              help="Gaussian noise std in [0, 1] pixel units [default: 0, clean training]; repeat it to train "
                   "one model for several sigmas (each batch draws one).")
@click.option("--output", "-o", type=click.Path(path_type=Path),
              default=Path("runs/train/segmenter.safetensors"), show_default=True,
              help="Best checkpoint (.safetensors; a .json and a .resume/ folder are written next to it).")
@click.option("--resume", is_flag=True, help="Continue the interrupted run that writes --output.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --output and its training state.")
@device_option
@precision_option("the segmenter's (and frozen denoiser's) forward pass and the loss")
@seed_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or messages.")
def segmenter(dataset_name, dataset_options, segmenter_name, segmenter_options, arch, network_options,
              denoiser_name, denoiser_options, init, epochs, patience, lr_plateau, batch_size, lr, noise_sigma, output,
              resume, overwrite, device, precision, seed, quiet):
    """Train a segmenter (Dice + cross-entropy, Adam) on a data set, optionally on noisy or denoised images."""
    sigmas = list(noise_sigma) or [0.0]  # errors go through the one boundary, certframe.cli.errors
    run_train_segmenter(dataset=dataset_name, dataset_options=parse_options(dataset_options, "--dataset-option"),
                        segmenter=segmenter_name,
                        segmenter_options=parse_options(segmenter_options, "--segmenter-option"),
                        arch=arch, network=parse_options(network_options, "--network-option"),
                        denoiser=denoiser_name,
                        denoiser_options=parse_options(denoiser_options, "--denoiser-option"),
                        init=init, epochs=epochs, batch_size=batch_size, lr=lr,
                        noise_sigma=sigmas if len(sigmas) > 1 else sigmas[0], output=output,
                        resume=resume, overwrite=overwrite, device=device, seed=seed, patience=patience,
                        lr_plateau=lr_plateau, quiet=quiet, precision=precision)
