"""Train a denoiser plugin's model on a data set: the library behind ``certframe train denoiser``.

The trainer is the ``trainer`` attribute of the denoiser plugin's registered factory
(:func:`denoiser_trainer`); for ``ddpm`` it is
:func:`certframe.plugins.denoisers.ddpm_training.train_diffusion`.
"""
from __future__ import annotations

from pathlib import Path

from rich.console import Console

from certframe.device import resolve_precision
from certframe.interfaces import model_spatial_dims
from certframe.registry import PluginError, get_registry
from certframe.validation import (
    OptionError,
    check_int,
    check_number,
    check_output_folder,
    check_seed,
    require_images,
    resolve_device,
)


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


def check_train_denoiser_options(*, output, size, crop, channels, layers_per_block, attention, steps, batch_size,
                                 lr, max_sigma, margin, ema_decay, checkpoint_every, log_every, resume, overwrite,
                                 seed) -> dict:
    """The one place ``certframe train denoiser`` checks its options; errors name the option, value and range.

    Returns the normalised ``output`` (a Path), ``max_sigma`` (None for 0: every timestep) and
    ``channels`` (a list of ints).
    """
    output = check_output_folder(output, "--output", "a diffusers model folder")
    if resume and overwrite:
        raise OptionError("--resume and --overwrite exclude each other")
    widths = list(channels) if isinstance(channels, (list, tuple)) else channels
    if not isinstance(widths, list) or len(widths) < 2 or not all(
            isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in widths):
        raise OptionError(f"--channels must be positive integers (one width per resolution level), got {widths}"
                          + (" (at least 2 levels)" if isinstance(widths, list) and len(widths) < 2 else ""))
    levels = len(widths) - 1
    for name, value, meaning in (("--size", size, "the training resolution in pixels"),
                                 ("--crop", crop, "the side of the training patches")):
        if value is not None:
            check_int(name, value, 1, meaning=meaning)
            if value % 2 ** levels:
                raise OptionError(f"{name} must be divisible by 2^{levels} = {2 ** levels} for the {levels + 1} "
                                  f"resolution levels of --channels {','.join(map(str, widths))}, got {value}")
    if crop is not None and size is not None and crop > size:
        raise OptionError(f"--crop must be at most --size {size} (patches of the training images), got {crop}")
    if crop is not None and attention:
        raise OptionError("--crop and --attention exclude each other: attention sees the whole image, so a model "
                          "trained on crops would not transfer to whole images")
    check_int("--layers-per-block", layers_per_block, 1, meaning="ResNet layers per UNet block")
    check_int("--steps", steps, 1, meaning="optimisation steps")
    check_int("--batch-size", batch_size, 1, meaning="images per step")
    check_number("--lr", lr, above=0, meaning="the Adam learning rate")
    if max_sigma is not None:
        max_sigma = check_number("--max-sigma", max_sigma, minimum=0, meaning="the largest smoothing sigma the "
                                 "denoiser serves; 0 trains on every timestep") or None
    check_number("--margin", margin, minimum=0, meaning="the relative margin above --max-sigma")
    check_number("--ema-decay", ema_decay, above=0, below=1, meaning="the EMA weight of the old average")
    if checkpoint_every is not None:
        check_int("--checkpoint-every", checkpoint_every, 1, meaning="steps between resumable states")
    check_int("--log-every", log_every, 1, meaning="steps between lines of train.log")
    check_seed(seed, "--seed")
    return {"output": output, "max_sigma": max_sigma, "channels": widths}


def run_train_denoiser(*, dataset: str, dataset_options: dict, output: Path, denoiser: str = "ddpm",
                       size: int | None = None, channels=(16, 32, 32, 64), layers_per_block: int = 1,
                       attention: bool = False, steps: int = 2000, batch_size: int = 16, lr: float = 5e-4,
                       max_sigma: float | None = 1.0, margin: float = 0.25, beta_schedule: str = "linear",
                       prediction_type: str = "epsilon", ema_decay: float = 0.999,
                       checkpoint_every: int | None = None, log_every: int = 50, resume: bool = False,
                       overwrite: bool = False, device: str = "auto", seed: int = 0, quiet: bool = False,
                       crop: int | None = None, registry=None, console=None, precision: str = "auto"):
    """Check every option, build the data set (``split=train``), train with the denoiser's trainer, save.

    Returns the trainer's result. Every option is checked (:func:`check_train_denoiser_options`)
    before the data set is built, a model is made or anything is written. max_sigma: None or 0
    trains on every timestep. precision: ``--precision`` (auto, fp32, bf16, fp16), checked against the
    device first.
    """
    registry = registry or get_registry()
    console = console or Console(quiet=quiet)
    options = check_train_denoiser_options(
        output=output, size=size, crop=crop, channels=channels, layers_per_block=layers_per_block,
        attention=attention, steps=steps, batch_size=batch_size, lr=lr, max_sigma=max_sigma, margin=margin,
        ema_decay=ema_decay, checkpoint_every=checkpoint_every, log_every=log_every, resume=resume,
        overwrite=overwrite, seed=seed)
    output, max_sigma, channels = options["output"], options["max_sigma"], options["channels"]
    dev = resolve_device(device)
    resolve_precision(precision, dev)  # mixed precision on a CPU: refused before anything is built
    trainer = denoiser_trainer(denoiser, registry)
    if "split" in dataset_options:
        raise ValueError("do not pass a split option: the denoiser trains on split=train")
    train = registry.create("dataset", dataset, **dataset_options, split="train")
    if 3 not in model_spatial_dims(registry.get("denoiser", denoiser).factory):  # what the plugin declares
        require_images(train, f"certframe train denoiser: the denoiser {denoiser!r} is a 2-D model "
                              f"(spatial_dims=2) and trains", dataset)
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
                     log_every=log_every, crop=crop, resume=resume, overwrite=overwrite, progress=not quiet,
                     console=console, precision=precision,
                     info={"dataset": dataset, "dataset_options": dataset_options, "denoiser": denoiser})
    last = result.history[-1]["loss"] if result.history else float("nan")
    console.print(f"trained on t in 0..{result.t_max}; last loss {last:.4f}; saved {result.output} "
                  f"(load with --denoiser {denoiser} --denoiser-option model={result.output})")
    return result
