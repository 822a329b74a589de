"""Training a segmenter: MONAI Dice + cross-entropy loss, Adam, optional Gaussian
noise augmentation (the Gaussian-trained baseline of Cohen et al. 2019 / Salman
et al. 2019: train on ``x + eps``, eps ~ N(0, sigma^2 I), in [0, 1] pixel space),
optionally through a frozen denoiser: denoised training trains (or fine-tunes from
clean weights) the segmenter on ``D(x + eps)`` (Salman et al., NeurIPS 2020,
denoised smoothing; the fine-tuned variant of Carlini et al., ICLR 2023). A list
of sigmas trains one model for all of them: each batch draws its sigma.

Files written for ``checkpoint="out/model.safetensors"``:

* ``out/model.safetensors`` + ``out/model.json``: the best epoch by validation Dice,
  weights as safetensors with the configuration in its metadata (see
  :mod:`certframe.checkpoint`); it loads back with the ``monai`` segmenter plugin
  (``weights=out/model.safetensors``). When the run ends, the JSON also gets the
  whole run's ``epochs_run``, ``stopped_early``, ``total_seconds`` and
  ``total_cpu_seconds`` under ``training`` (the safetensors metadata keeps the
  best epoch's own record).
* ``out/model.resume/``: the state after the last finished epoch, for
  ``resume=True``: ``epoch-N.weights.safetensors``, ``epoch-N.optimizer.safetensors``
  (Adam's moments and step counts) and ``state.json`` (epoch, best Dice, history,
  the name of the random stream, torch's own generator state for a model's dropout,
  base64). ``state.json`` is replaced atomically after the tensors are written, so an
  interruption at any moment leaves a consistent state. A resumed run gives the same
  weights as an uninterrupted one (same device, same torch build; on CUDA also
  deterministic kernels, ``torch.use_deterministic_algorithms``).

On the device (:mod:`certframe.training.device`): the stacked train and validation sets
stay on the training device when they fit (on CPU always; on CUDA when their bytes are at
most a quarter of the free memory; else pinned host memory, copied per batch
``non_blocking``); the epoch's order, each batch's flip, sigma and noise come from
:mod:`certframe.core.philox` (stream ``("train-segmenter", seed, purpose)``, draw index the
epoch or the global step ``epoch * batches + b``), made on the device; the loss is summed
on the device and read once per epoch, with the validation Dice (one batched pass on the
device). Nothing in the step loop reads a tensor on the host (fp16's loss scaler
excepted). A training state written before this stream (state version 1, torch.Generator
draws) is refused on resume: continuing it could not give the uninterrupted run's weights.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from certframe.checkpoint import save_checkpoint
from certframe.core import metrics, philox
from certframe.device import autocast, resolve_precision
from certframe.files import atomic_write_json
from certframe.interfaces import Denoiser, SegmentationDataset, Segmenter, class_labels
from certframe.training.device import gather, grad_scaler, optimiser_step, place, streams
from certframe.training.resume import (
    Clock,
    StateFolder,
    generator_state,
    load_optimizer,
    restore_generators,
    save_optimizer,
    scaler_state,
    training_progress,
)

STATE_VERSION = 2  # 2: draws from the counter-based stream (philox.STREAM_VERSION); 1: torch.Generator
# Settings a resumed run must share with the run it continues (epochs may grow).
RESUME_KEYS = ("batch_size", "lr", "noise_sigma", "seed", "denoiser", "lr_plateau", "precision")
STREAMS = ("order", "flip", "sigma", "noise", "val-noise")


def stack(dataset: SegmentationDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """All images ``[N, C, *S]`` and masks ``[N, *S]`` of a (small) data set (``S = H, W`` for
    images, ``D, H, W`` for volumes)."""
    if len(dataset) == 0:
        raise ValueError(f"the data set {dataset.identity()} is empty: nothing to train or validate on")
    items = [dataset[i] for i in range(len(dataset))]
    shapes = {tuple(s.image.shape) for s in items}
    if len(shapes) > 1:
        raise ValueError(f"images of different shapes {sorted(shapes)} cannot be batched; give the "
                         f"data set a size option (a shape option for volumes) so that every item has one size")
    return torch.stack([s.image for s in items]), torch.stack([s.mask for s in items])


@dataclass
class TrainResult:
    """best_dice: best validation Dice (mean foreground Dice over images); best_epoch: its epoch
    (0-based); history: one ``{"epoch", "loss", "val_dice"}`` per epoch; checkpoint: the best file;
    stopped_early: whether ``patience`` ended the run before ``epochs``; seconds, cpu_seconds: wall and
    CPU time of the whole training (validation included, resumes added up)."""

    best_dice: float
    best_epoch: int
    history: list[dict] = field(default_factory=list)
    checkpoint: Path | None = None
    stopped_early: bool = False
    seconds: float = 0.0
    cpu_seconds: float = 0.0


def evaluate_dice(model: Segmenter, images: torch.Tensor, masks: torch.Tensor, num_classes: int,
                  batch_size: int = 32, device="cpu", precision: str = "fp32") -> float:
    """Mean over images of the mean foreground Dice of ``model`` (images ``[N, C, H, W]`` or
    volumes ``[N, C, D, H, W]``; Dice over all pixels / voxels of each item,
    :func:`certframe.core.metrics.mean_dice_per_item`).

    Batched on ``device``: predictions and Dice stay there, and the mean is read once.
    precision: a resolved precision (fp32, bf16, fp16) for the forward pass.
    """
    device = torch.device(device)
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size].to(device, non_blocking=True)
            with autocast(precision, device):
                pred = class_labels(model(x))
            total += metrics.mean_dice_per_item(pred, masks[i:i + batch_size].to(device, non_blocking=True),
                                                num_classes).sum()
    return float(total) / max(len(images), 1)


def resume_dir(checkpoint: str | Path) -> Path:
    """``out/model.safetensors`` -> ``out/model.resume``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + ".resume")


def _state_folder(checkpoint: str | Path) -> StateFolder:
    return StateFolder(resume_dir(checkpoint), STATE_VERSION, "epoch")


def _missing_state(checkpoint: str | Path) -> str:
    return f" (it is written after each epoch of a run with checkpoint={str(checkpoint)!r})"


def load_resume_state(checkpoint: str | Path) -> dict:
    """The ``state.json`` of a resumable run (raises FileNotFoundError naming the folder)."""
    return _state_folder(checkpoint).read(_missing_state(checkpoint))


def _record_total(checkpoint: Path, result: "TrainResult") -> None:
    """Add the whole run's cost and length to the best checkpoint's JSON (``training``: ``epochs_run``,
    ``stopped_early``, ``total_seconds``, ``total_cpu_seconds``): the cost of a model is the
    whole run, not the run up to its best epoch."""
    side = checkpoint.with_suffix(".json")
    if not side.is_file():
        return
    info = json.loads(side.read_text())
    info.setdefault("training", {}).update({"epochs_run": len(result.history), "stopped_early": result.stopped_early,
                                            "total_seconds": result.seconds, "total_cpu_seconds": result.cpu_seconds})
    atomic_write_json(side, info)


def noise_sigmas(noise_sigma) -> list[float]:
    """``0.25`` or ``[0.25, 0.5]`` -> a list of finite sigmas >= 0 (ValueError otherwise)."""
    sigmas = [float(s) for s in (noise_sigma if isinstance(noise_sigma, (list, tuple)) else [noise_sigma])]
    if not sigmas or any(not (s >= 0 and s < float("inf")) for s in sigmas):
        raise ValueError(f"noise sigma(s) must be finite and >= 0, got {noise_sigma!r}")
    return sigmas


@torch.no_grad()
def denoise_batches(denoiser: Denoiser, images: torch.Tensor, sigmas: list[float], batch_size: int,
                    device, precision: str = "fp32") -> torch.Tensor:
    """``D(images[i], sigmas[i])`` for noisy images ``[N, C, H, W]`` (one sigma per image), run on
    ``device`` (under ``precision``), returned float32 where ``images`` are."""
    device = torch.device(device)
    out = torch.empty_like(images)
    for sigma in sorted(set(sigmas)):
        idx = torch.tensor([i for i, s in enumerate(sigmas) if s == sigma], device=images.device)
        for j in range(0, len(idx), batch_size):
            part = idx[j:j + batch_size]
            with autocast(precision, device):
                out[part] = denoiser(images[part].to(device), sigma).float().to(out.device)
    return out


def train_segmenter(model: Segmenter, train: SegmentationDataset, val: SegmentationDataset, *,
                    epochs: int = 10, batch_size: int = 16, lr: float = 1e-3,
                    noise_sigma: float | list[float] = 0.0,
                    seed: int = 0, device: str | torch.device = "cpu", checkpoint: str | Path | None = None,
                    config: dict | None = None, denoiser: Denoiser | None = None,
                    denoiser_record: dict | None = None,
                    on_epoch: Callable[[dict], None] | None = None,
                    resume: bool = False, progress: bool = False, console=None,
                    save_state: bool = True, patience: int | None = None,
                    lr_plateau: int | None = None, precision: str = "auto") -> TrainResult:
    """Train ``model`` (a :class:`Segmenter` holding an ``nn.Module`` in ``.net``) in place.

    train, val: data sets whose items all have one size (``[C, H, W]``, masks ``[H, W]``; or
    volumes ``[C, D, H, W]``, masks ``[D, H, W]``, for a 3-D model).
    epochs: total number of epochs (a resumed run continues up to this number).
    noise_sigma: std of the Gaussian augmentation in [0, 1] pixel units (0 = clean), or a
    list of stds: each batch then draws one of them uniformly (one model for several sigmas).
    denoiser: a frozen :class:`Denoiser` (eval mode, no gradients, run under no_grad):
    the segmenter is trained on ``denoiser(x + eps, sigma)`` instead of ``x + eps``
    (denoised training; needs every sigma > 0). denoiser_record: what identifies it
    (``{"name", "options", "hash"}``, see :mod:`certframe.training.tuning`), stored in the
    training settings (a resumed run must use the same) and, with the sigmas, as
    ``"tuned_for"`` in the checkpoint's configuration.
    Validation Dice (mean foreground Dice, :func:`certframe.core.metrics.mean_dice`) is
    measured after every epoch on clean images for clean training and on one fixed
    noisy copy per image for noise training (image i at sigma ``sigmas[i % len(sigmas)]``),
    denoised once before the first epoch for denoised training. Each batch is flipped along its last axis (W:
    left-right, for volumes too) with probability 1/2. Every draw (the epoch's order, each
    batch's flip, sigma and noise, the validation noise) comes from the counter-based stream
    (module docstring), so the draws of step s do not depend on the steps before it and a
    resumed run repeats the uninterrupted one. precision: ``auto`` (bf16 or fp16 on CUDA, fp32
    on CPU), ``fp32``, ``bf16`` or ``fp16`` (CUDA only): autocast of the forward pass, the loss,
    the frozen denoiser and validation; recorded (resolved) in the training settings, and a
    resumed run must resolve to the same. checkpoint: where the best epoch is saved (with ``config`` plus
    a ``training`` section); the resumable state goes to :func:`resume_dir`.
    resume: continue from the state saved by an earlier run with the same
    checkpoint path and the same batch_size, lr, noise_sigma and seed.
    progress: show a rich progress bar (epochs and batches, last validation Dice).
    save_state: write the resumable state after each epoch (needs ``checkpoint``);
    False for one-off runs whose output folder should hold only the best checkpoint.
    patience: early stopping: end the run once the validation Dice has not improved for this
    many epochs (None: run all ``epochs``). "Trained until its validation Dice stops
    improving" is what a fair baseline needs (a Gaussian-trained model stopped early looks
    worse than it is); ``epochs`` then only caps the run.
    lr_plateau: halve the learning rate once the validation Dice has not improved for
    this many epochs (``torch.optim.lr_scheduler.ReduceLROnPlateau``, mode max, factor
    0.5; None: constant ``lr``). With a constant Adam step the validation Dice of a
    noise- or denoiser-trained model jitters, and ``patience`` can stop a run whose best
    epoch was a lucky one; decaying the step first lets it settle (give ``patience``
    more epochs than ``lr_plateau``). The scheduler's state is part of a resumed run's.
    The wall and CPU seconds of training (validation included, cumulative over resumes)
    are in the result and the checkpoint's ``training`` section.
    Returns the best epoch's Dice, its index and the per-epoch history.
    """
    sigmas = _checked_sigmas(noise_sigma, epochs=epochs, batch_size=batch_size, lr=lr, patience=patience,
                             lr_plateau=lr_plateau, denoiser=denoiser, train=train, val=val, resume=resume,
                             checkpoint=checkpoint)
    run = _SegmenterTraining(model, train, val, sigmas, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                             device=device, checkpoint=checkpoint, config=config, denoiser=denoiser,
                             denoiser_record=denoiser_record, lr_plateau=lr_plateau, precision=precision,
                             save_state=save_state)
    result = run.result
    start = run.resume() if resume else 0
    run.clock = Clock(result.seconds, result.cpu_seconds)  # earlier runs' time (a resumed training's) included

    def patience_ran_out(epoch: int) -> bool:
        return patience is not None and epoch - result.best_epoch >= patience

    bar = training_progress(console, enabled=progress)
    with bar:
        epoch_task = bar.add_task("epochs", total=epochs, completed=start, info="")
        batch_task = bar.add_task("batches", total=run.batches, info="")
        for epoch in range(start, epochs):
            if patience_ran_out(epoch - 1):  # a resumed run that had already stopped
                result.stopped_early = True
                break
            bar.reset(batch_task, total=run.batches)
            loss = run.train_epoch(epoch, advance=lambda: bar.update(batch_task, advance=1))
            record = run.end_epoch(epoch, loss, run.validate())
            bar.update(batch_task, info=f"loss {record['loss']:.3f}")
            bar.update(epoch_task, advance=1, info=f"val Dice {record['val_dice']:.3f} (best {result.best_dice:.3f} "
                                                   f"@ epoch {result.best_epoch + 1})")
            if on_epoch is not None:
                on_epoch(record)
            if patience_ran_out(epoch):
                result.stopped_early = True
                break
    run.finish()
    return result


def _checked_sigmas(noise_sigma, *, epochs, batch_size, lr, patience, lr_plateau, denoiser, train, val, resume,
                    checkpoint) -> list[float]:
    """The sigmas of :func:`train_segmenter` once every argument has been accepted (ValueError naming it otherwise)."""
    sigmas = noise_sigmas(noise_sigma)
    if (epochs < 1 or batch_size < 1 or lr <= 0 or (patience is not None and patience < 1)
            or (lr_plateau is not None and lr_plateau < 1)):
        raise ValueError(f"need epochs >= 1, batch_size >= 1, lr > 0, noise_sigma >= 0, patience >= 1 (or None), "
                         f"lr_plateau >= 1 (or None); got epochs={epochs}, batch_size={batch_size}, lr={lr}, "
                         f"noise_sigma={noise_sigma}, patience={patience}, lr_plateau={lr_plateau}")
    if denoiser is not None and min(sigmas) <= 0:
        raise ValueError(f"denoised training needs noise sigma(s) > 0, got {sigmas}")
    if train.num_classes != val.num_classes:
        raise ValueError(f"train has {train.num_classes} classes, val has {val.num_classes}")
    if resume and checkpoint is None:
        raise ValueError("resume=True needs the checkpoint path of the run to continue")
    return sigmas


class _SegmenterTraining:
    """One call of :func:`train_segmenter`, in named steps: the setup (``__init__``), :meth:`resume`,
    one epoch's steps (:meth:`train_epoch`), :meth:`validate`, the end of an epoch (:meth:`end_epoch`:
    its record, the best checkpoint, the resumable state) and :meth:`finish`."""

    def __init__(self, model: Segmenter, train: SegmentationDataset, val: SegmentationDataset, sigmas: list[float],
                 *, epochs: int, batch_size: int, lr: float, seed: int, device, checkpoint, config: dict | None,
                 denoiser: Denoiser | None, denoiser_record: dict | None, lr_plateau: int | None, precision: str,
                 save_state: bool):
        from monai.losses import DiceCELoss

        self.model, self.sigmas, self.batch_size, self.denoiser = model, sigmas, batch_size, denoiser
        self.num_classes = train.num_classes
        self.checkpoint, self.save_state = checkpoint, save_state
        self.net = model.net if hasattr(model, "net") else model
        self.device = device = torch.device(device)
        self.precision = precision = resolve_precision(precision, device)
        torch.manual_seed(seed)  # torch's own generator: only a model's own randomness (dropout) draws from it
        self.keys = streams("train-segmenter", seed, STREAMS)
        model.to(device)
        if denoiser is not None:
            denoiser.to(device).eval().requires_grad_(False)
        (self.images, self.masks), self.data_device = place(stack(train), device)
        self.val_images, self.val_masks = self._validation_set(val)
        self.loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        self.optim = torch.optim.Adam(model.parameters(), lr=lr)
        self.scheduler = (None if lr_plateau is None else torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optim, mode="max", factor=0.5, patience=lr_plateau - 1, eps=0.0))  # eps 0: halve even a tiny lr
        self.scaler = grad_scaler(precision, device)
        self.training = training = {"epochs": epochs, "batch_size": batch_size, "lr": lr,
                                    "noise_sigma": sigmas[0] if len(sigmas) == 1 else sigmas, "seed": seed,
                                    "precision": precision}
        if lr_plateau is not None:
            training["lr_plateau"] = int(lr_plateau)
        if denoiser is not None:
            training["denoiser"] = dict(denoiser_record or {"name": type(denoiser).__name__})
        self.model_config = dict(config or {})
        if max(sigmas) > 0:
            from certframe.training.tuning import module_hash, tuning_record

            record = training.get("denoiser") or {"name": "none", "options": {}, "hash": module_hash(None)}
            self.model_config["tuned_for"] = tuning_record(record["name"], record.get("options", {}),
                                                           record.get("hash"), sigmas)
        self.result = TrainResult(best_dice=-1.0, best_epoch=-1)
        self.states = None if checkpoint is None else _state_folder(checkpoint)
        self.batches = (len(self.images) + batch_size - 1) // batch_size
        self.clock = Clock()

    def _validation_set(self, val: SegmentationDataset) -> tuple[torch.Tensor, torch.Tensor]:
        """The validation images and masks: clean for clean training; one fixed noisy copy per image (image i
        at ``sigmas[i % len(sigmas)]``) for noise training, denoised once for denoised training."""
        sigmas, device = self.sigmas, self.device
        (val_images, val_masks), val_device = place(stack(val), device)
        if max(sigmas) > 0:
            val_sigmas = [sigmas[i % len(sigmas)] for i in range(len(val_images))]
            per_image = torch.tensor(val_sigmas, device=val_device).view(-1, *([1] * (val_images.dim() - 1)))
            noise = philox.normal(self.keys["val-noise"], 0, len(val_images), val_images[0].numel(),
                                  device=val_device)
            val_images = val_images + per_image * noise.view_as(val_images)
            if self.denoiser is not None:
                val_images = denoise_batches(self.denoiser, val_images, val_sigmas, self.batch_size, device,
                                             self.precision)
            if val_device != device and device.type == "cuda":
                val_images = val_images.pin_memory()  # a new host tensor: pinned again for non_blocking copies
        return val_images, val_masks

    def resume(self) -> int:
        """Continue the saved state (weights, optimizer, scheduler, generators, history, time); the first epoch
        to run."""
        from certframe.checkpoint import load_checkpoint

        states, result = self.states, self.result
        state = states.load(self.training, RESUME_KEYS, missing=_missing_state(self.checkpoint))
        saved_config, weights = load_checkpoint(states.folder / state["weights"])
        for key in ("arch", "in_channels", "num_classes", "network", "spatial_dims"):
            if key in self.model_config and key in saved_config and saved_config[key] != self.model_config[key]:
                raise ValueError(f"cannot resume: the saved model has {key}={saved_config[key]!r}, "
                                 f"this one {key}={self.model_config[key]!r}")
        self.net.load_state_dict(weights)
        load_optimizer(states.folder / state["optimizer"], self.optim)
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["lr_scheduler"])
        restore_generators(state, self.scaler, self.device)
        result.best_dice, result.best_epoch = state["best_dice"], state["best_epoch"]
        result.history = list(state["history"])
        if Path(self.checkpoint).is_file():
            result.checkpoint = Path(self.checkpoint)
        result.seconds, result.cpu_seconds = float(state.get("seconds", 0.0)), float(state.get("cpu_seconds", 0.0))
        return state["epoch"] + 1

    def train_epoch(self, epoch: int, advance: Callable[[], None] = lambda: None) -> float:
        """One epoch of steps; its mean training loss (the one host read). advance: called after each batch."""
        keys, device, batches, batch_size, sigmas = self.keys, self.device, self.batches, self.batch_size, self.sigmas
        images, masks, model = self.images, self.masks, self.model
        model.train()
        first = epoch * batches  # the global step of this epoch's first batch: the draw index
        order = philox.permutation(keys["order"], epoch, len(images), device=self.data_device)
        flips = philox.uniform(keys["flip"], first, batches, 1, device=device)[:, 0] < 0.5  # [batches]
        # the denoiser takes sigma as a number: the epoch's choices are drawn on the CPU, read there
        choice = ([0] * batches if len(sigmas) == 1 else
                  philox.integers(keys["sigma"], first, batches, 1, len(sigmas))[:, 0].tolist())
        total = torch.zeros((), dtype=torch.float64, device=device)
        for b in range(batches):
            idx = order[b * batch_size:(b + 1) * batch_size]
            x, y = gather(images, idx, device), gather(masks, idx, device)
            x, y = torch.where(flips[b], x.flip(-1), x), torch.where(flips[b], y.flip(-1), y)  # left-right
            sigma = sigmas[choice[b]]
            if sigma > 0:  # one draw per image: draws (first + b) * batch_size + j
                noise = philox.normal(keys["noise"], (first + b) * batch_size, len(x), x[0].numel(), device=device)
                x = x + sigma * noise.view_as(x)
            with autocast(self.precision, device):
                if self.denoiser is not None:
                    with torch.no_grad():
                        x = self.denoiser(x, sigma).float()
                self.optim.zero_grad()
                loss = self.loss_fn(model(x), y.unsqueeze(1))
            optimiser_step(loss, self.optim, self.scaler)
            total += loss.detach().double() * len(x)  # summed on the device, read once per epoch
            advance()
        return float(total) / len(images)

    def validate(self) -> float:
        """The validation Dice of the model as it is (:func:`evaluate_dice`)."""
        return evaluate_dice(self.model, self.val_images, self.val_masks, self.num_classes, self.batch_size,
                             self.device, self.precision)

    def end_epoch(self, epoch: int, loss: float, dice: float) -> dict:
        """Record the epoch, step the scheduler, save a better checkpoint and the resumable state; the record."""
        result, checkpoint = self.result, self.checkpoint
        seconds, cpu_seconds = tuple(round(v, 1) for v in self.clock.elapsed())
        result.seconds, result.cpu_seconds = seconds, cpu_seconds
        record = {"epoch": epoch, "loss": loss, "val_dice": dice}
        if self.scheduler is not None:
            record["lr"] = self.optim.param_groups[0]["lr"]  # the step this epoch was trained with
            self.scheduler.step(dice)
        result.history.append(record)
        if dice > result.best_dice:
            result.best_dice, result.best_epoch = dice, epoch
            if checkpoint is not None:
                cfg = dict(self.model_config)
                cfg["training"] = {**self.training, "best_epoch": epoch, "val_dice": dice,
                                   "seconds": seconds, "cpu_seconds": cpu_seconds}
                result.checkpoint = save_checkpoint(checkpoint, self.net, cfg)
        if checkpoint is not None and self.save_state:
            self._save_state(epoch, seconds, cpu_seconds)
        return record

    def _save_state(self, epoch: int, seconds: float, cpu_seconds: float) -> None:
        """The state after ``epoch``: weights, optimizer, then ``state.json`` (:class:`StateFolder`)."""
        result = self.result
        files = self.states.files(epoch, "weights", "optimizer")
        save_checkpoint(files["weights"], self.net, {**self.model_config, "training": self.training}, sidecar=False)
        save_optimizer(files["optimizer"], self.optim)
        self.states.write({"training": self.training, "best_dice": result.best_dice, "best_epoch": result.best_epoch,
                           "history": result.history, "seconds": seconds, "cpu_seconds": cpu_seconds,
                           **generator_state(self.device),
                           **({} if self.scheduler is None else {"lr_scheduler": self.scheduler.state_dict()}),
                           **scaler_state(self.scaler), **self.states.stamp(), "epoch": epoch,
                           "weights": files["weights"].name, "optimizer": files["optimizer"].name},
                          keep=[p.name for p in files.values()])

    def finish(self) -> None:
        """Add the whole run's totals to the best checkpoint's JSON; leave the model in eval mode."""
        result = self.result
        if self.checkpoint is not None and result.checkpoint is not None and result.history:
            _record_total(Path(self.checkpoint), result)
        self.model.eval()
