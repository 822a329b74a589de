"""Train a segmenter plugin on a data set plugin: the library behind ``certframe train segmenter``.

:func:`run_train_segmenter` builds the train and val splits, the trainable model (:func:`build_trainable`:
``weights=random`` or ``--init``), the optional frozen denoiser, and calls
:func:`certframe.training.segmenter.train_segmenter`; the command only parses and prints.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from rich.console import Console

from certframe.device import resolve_precision
from certframe.files import file_sha256
from certframe.interfaces import RANDOM_WEIGHTS
from certframe.registry import get_registry
from certframe.training.segmenter import TrainResult, noise_sigmas, resume_dir, train_segmenter
from certframe.validation import OptionError, check_int, check_number, check_seed, resolve_device


def _plain(value):
    """A value as JSON would give it back (tuples as lists), so option values compare as the user means them."""
    return json.loads(json.dumps(value, default=str))


def check_init_options(config: dict, options: dict, init, flags: dict | None = None) -> None:
    """With ``--init``, the network is the checkpoint's: an option that its configuration states otherwise is refused.

    config: the configuration of the model built from ``init`` (``model.config``); options: the
    segmenter options given (``--arch`` and ``--network-option`` merged in); flags: how each
    top-level key was given (``{"arch": "--arch", "network": "--network-option"}``; default
    ``--segmenter-option``). A segmenter plugin loads the architecture its weights record and
    would silently ignore another one asked for; this names the option, both values and the fix.
    """
    flags = flags or {}
    for key, value in options.items():
        flag = flags.get(key, "--segmenter-option")
        if key == "network" and isinstance(value, dict) and isinstance(config.get("network"), dict):
            pairs = [(k, v, config["network"].get(k, "<not set>")) for k, v in value.items()]
        elif key in config:
            pairs = [(key, value, config[key])]
        else:
            continue
        for name, given, saved in pairs:
            if _plain(given) == _plain(saved):
                continue
            if flag == "--arch":
                shown = given
            elif key == "network" and flag == "--segmenter-option":
                shown = f"network={json.dumps(value)}"
            else:
                shown = f"{name}={given}" if isinstance(given, str) else f"{name}={given!r}"
            raise ValueError(f"{flag} {shown} conflicts with --init {init}, whose weights have {name}={saved!r}: "
                             f"fine-tuning keeps the network of the --init weights (drop {flag}, or train from "
                             f"scratch without --init)")


def build_trainable(registry, segmenter: str, options: dict, in_channels: int, num_classes: int,
                    init: str | Path | None = None, seed: int = 0, spatial_shape: tuple[int, ...] | None = None,
                    flags: dict | None = None):
    """The segmenter to train, through the registry: untrained (``weights=random``) or from ``init``.

    The random initial weights come from torch's generator seeded with ``seed`` (the caller's
    random state is left as it was), so a training run is reproducible whatever ran before it.
    With ``init``, every option given must agree with the network the weights record
    (:func:`check_init_options`; flags: how each option was given, for the message).
    spatial_shape: the size ``(H, W)`` or ``(D, H, W)`` of the training items. For volumes, a
    segmenter that takes the options ``spatial_dims`` and ``roi_size`` (monai) gets
    ``spatial_dims=3`` and ``roi_size=spatial_shape`` unless given: the checkpoint then records
    the patch it was trained on, and larger volumes are predicted by sliding window.
    """
    entry = registry.get("segmenter", segmenter)
    accepted = entry.options()
    missing = [k for k in ("weights", "in_channels", "num_classes") if k not in accepted]
    if missing and not entry.accepts_any_option():
        raise ValueError(f"the {segmenter} segmenter cannot be trained by certframe: it lacks the option(s) "
                         f"{missing} (a trainable segmenter takes weights=random|FILE, in_channels and "
                         f"num_classes; {segmenter!r} takes {sorted(accepted)})")
    if "weights" in options:
        raise ValueError("do not pass --segmenter-option weights=...: training builds weights=random, or "
                         "give --init WEIGHTS to fine-tune")
    opts = dict(options)
    if init is not None:
        try:
            model = registry.create("segmenter", segmenter, **{**opts, "weights": str(init)})
        except FileNotFoundError as err:
            raise FileNotFoundError(f"--init: {err}") from None
    else:
        opts.setdefault("in_channels", in_channels)
        opts.setdefault("num_classes", num_classes)
        if spatial_shape is not None and len(spatial_shape) == 3:
            if "spatial_dims" in accepted:
                opts.setdefault("spatial_dims", 3)
            if "roi_size" in accepted:
                opts.setdefault("roi_size", list(spatial_shape))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = registry.create("segmenter", segmenter, **{**opts, "weights": RANDOM_WEIGHTS})
    if not hasattr(model, "net") or not isinstance(getattr(model, "config", None), dict):
        raise ValueError(f"the {segmenter} segmenter cannot be trained by certframe: it must keep its network "
                         f"in .net and its configuration in .config")
    if init is not None:
        check_init_options(model.config, opts, init, flags)
    dims = getattr(model, "spatial_dims", 2)
    if spatial_shape is not None and isinstance(dims, int) and dims != len(spatial_shape):
        kind = {2: "images [C, H, W]", 3: "volumes [C, D, H, W]"}
        hint = (f"; pass --segmenter-option spatial_dims={len(spatial_shape)}"
                if init is None and "spatial_dims" in accepted else "")
        raise ValueError(f"the {segmenter} segmenter is {dims}-D (spatial_dims={dims}) but the data set yields "
                         f"{kind.get(len(spatial_shape), list(spatial_shape))}{hint}")
    if (model.in_channels, model.num_classes) != (in_channels, num_classes):
        raise ValueError(f"the {segmenter} segmenter takes {model.in_channels} channels and predicts "
                         f"{model.num_classes} classes; the data set has {in_channels} channels and "
                         f"{num_classes} classes")
    return model


def run_train_segmenter(*, dataset: str, dataset_options: dict, epochs: int, batch_size: int, lr: float,
                        noise_sigma: float | list[float], output: Path, segmenter: str = "monai",
                        segmenter_options: dict | None = None, arch: str | None = None,
                        network: dict | None = None, denoiser: str | None = None,
                        denoiser_options: dict | None = None, init: str | Path | None = None,
                        resume: bool = False, overwrite: bool = False, device: str = "auto", seed: int = 0,
                        patience: int | None = None, lr_plateau: int | None = None, quiet: bool = False,
                        registry=None, console=None, precision: str = "auto") -> TrainResult:
    """Build the train/val splits, the model (and denoiser), train, return the :class:`TrainResult`.

    arch, network: the ``--arch`` / ``--network-option`` shorthands for the segmenter options
    ``arch`` and ``network`` (kept for the monai segmenter; smp takes them too).
    precision: ``--precision`` (auto, fp32, bf16, fp16), checked against the device before anything is built.
    """
    from certframe.training.tuning import module_hash

    registry = registry or get_registry()
    console = console or Console(quiet=quiet)
    # every option first, before a data set is built, a model loaded or a file touched
    output = Path(output)
    if output.suffix != ".safetensors":
        raise ValueError(f"--output must be a .safetensors path, got {str(output)!r}")
    if output.is_dir():
        raise OptionError(f"--output {str(output)!r} is an existing folder; a .safetensors file path is expected")
    if resume and overwrite:
        raise OptionError("--resume and --overwrite exclude each other")
    if "split" in dataset_options:
        raise ValueError("do not pass a split option: training uses split=train and validation split=val")
    check_int("--epochs", epochs, 1, meaning="epochs to run")
    check_int("--batch-size", batch_size, 1, meaning="images per step")
    check_number("--lr", lr, above=0, meaning="the Adam learning rate")
    check_seed(seed, "--seed")
    sigmas = noise_sigmas(noise_sigma)
    if denoiser is not None and min(sigmas) <= 0:
        raise ValueError(f"--denoiser needs --noise-sigma > 0 (the noise it removes), got {sigmas}")
    options = dict(segmenter_options or {})
    flags = {}
    if arch is not None:
        options["arch"] = arch
        flags["arch"] = "--arch"
    if network:
        options["network"] = {**options.get("network", {}), **network}
        flags["network"] = "--network-option"
    state = resume_dir(output)
    if not resume and (output.exists() or state.exists()):
        if not overwrite:
            raise FileExistsError(f"{str(output)!r} (or its training state {str(state)!r}) exists; "
                                  f"pass --resume to continue that run or --overwrite to replace it")
    dev = resolve_device(device)
    resolve_precision(precision, dev)  # mixed precision on a CPU: refused before anything is built
    train = registry.create("dataset", dataset, **dataset_options, split="train")
    val = registry.create("dataset", dataset, **dataset_options, split="val")
    model = build_trainable(registry, segmenter, options, train.in_channels, train.num_classes, init, seed=seed,
                            spatial_shape=tuple(train[0].image.shape[1:]) if len(train) else None, flags=flags)
    den, record = None, None
    if denoiser is not None:
        den = registry.create("denoiser", denoiser, **(denoiser_options or {}))
        record = {"name": denoiser, "options": dict(denoiser_options or {}), "hash": module_hash(den)}
    if not resume and (output.exists() or state.exists()):  # --overwrite, now that the inputs are valid
        output.unlink(missing_ok=True)
        output.with_suffix(".json").unlink(missing_ok=True)
        shutil.rmtree(state, ignore_errors=True)
    config = {"segmenter": segmenter, **model.config, "class_names": list(train.class_names), "dataset": dataset,
              "dataset_options": dataset_options, "dataset_identity": train.identity()}
    if init is not None:
        loaded = Path(getattr(model, "weights_path", init))  # a bundled name resolves to its file
        # a file by its absolute path; a bundled name as it is (it resolves wherever certframe is installed)
        given = str(Path(init).resolve()) if Path(init).exists() else str(init)
        config["init"] = {"weights": given, "sha256": file_sha256(loaded)}
    what = f"{segmenter} {model.config.get('arch', '')}".strip()
    via = f", through denoiser {denoiser}" if denoiser else ""
    console.print(f"{'fine-tuning' if init else 'training'} {what} on {dataset}: {len(train)} train / "
                  f"{len(val)} val images, {train.num_classes} classes, noise sigma "
                  f"{', '.join(f'{s:g}' for s in sigmas)}{via}, device {dev}")
    result = train_segmenter(model, train, val, epochs=epochs, batch_size=batch_size, lr=lr,
                             noise_sigma=sigmas if len(sigmas) > 1 else sigmas[0], seed=seed, device=dev,
                             checkpoint=output, config=config, denoiser=den, denoiser_record=record,
                             resume=resume, progress=not quiet, console=console, patience=patience,
                             lr_plateau=lr_plateau, precision=precision,
                             on_epoch=lambda r: console.print(
                                 f"epoch {r['epoch'] + 1}/{epochs}: loss {r['loss']:.4f}, "
                                 f"val Dice {r['val_dice']:.4f}" + (f", lr {r['lr']:.3g}" if "lr" in r else "")))
    if result.stopped_early:
        console.print(f"stopped after epoch {len(result.history)}: no better val Dice for {patience} epochs")
    console.print(f"best val Dice {result.best_dice:.4f} at epoch {result.best_epoch + 1}: {result.checkpoint}")
    return result
