"""Training a DDPM denoiser (Ho et al., NeurIPS 2020) on a data set's images, with diffusers.

Lives next to the ``ddpm`` plugin it trains (the core never imports a concrete
plugin): ``certframe train denoiser --denoiser ddpm`` finds :func:`train_diffusion`
as ``DDPMDenoiser.trainer`` through the registry.

The model is a ``diffusers.UNet2DModel`` with a ``DDPMScheduler``; images in
``[0, 1]`` become ``x_0 = 2 x - 1`` in ``[-1, 1]``; each step draws ``t`` and
``z ~ N(0, I)``, forms ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) z`` and
minimises the MSE to the target of ``prediction_type`` (epsilon: ``z``;
sample: ``x_0``; v_prediction: ``sqrt(abar) z - sqrt(1 - abar) x_0``).

**Trained range.** One-shot / DDIM denoising for randomized smoothing only ever
queries the model at ``t <= t*(sigma)`` (:mod:`certframe.plugins.denoisers.diffusion`),
so ``max_sigma`` concentrates training on ``t`` uniform in ``0 .. t_max`` with
``t_max = t*(s')``, ``s' = resized_noise_std(max_sigma * (1 + margin), data size,
training size)``: ``max_sigma`` is the smoothing sigma on the data set's images
(the resolution the segmenter sees), and a model trained at a smaller size sees
the noise the resize leaves. ``max_sigma=None`` trains on all timesteps. ``t_max``
is recorded in ``certframe.json``; the ``ddpm``/``ddim`` denoisers refuse a sigma
whose ``t*`` lies beyond it.

**EMA for short runs.** ``diffusers.training_utils.EMAModel`` with warm-up
(``use_ema_warmup=True``, ``inv_gamma=1``, ``power=2/3``): the decay after ``n``
updates is ``min(ema_decay, 1 - (1 + n)^(-2/3))``, i.e. 0.954 at 100 steps, 0.984
at 500, 0.994 at 2000: an averaging window of about ``(1 + n)^(2/3)`` steps (22,
63, 159), so a run of a few hundred CPU steps averages its recent weights. A fixed
decay of 0.999 would still give weight 0.999^500 = 0.61 to the random
initialisation after 500 steps. ``ema_decay`` (default 0.999) only caps the decay
of long runs.

**Checkpoints.** Every ``checkpoint_every`` steps (default: a tenth of the run,
at most 200, so a short run has ten restart points) and at the end. Ctrl-C
(``KeyboardInterrupt``) is deferred to the end of the current step; then the
resume state AND the current EMA model (marked ``"interrupted"`` in
``certframe.json``) are saved and the interrupt re-raised: the output folder is
usable at once and ``resume=True`` continues bit for bit.

Files for ``output="out/ddpm"``:

* ``out/ddpm/``: a diffusers ``DDPMPipeline`` folder (``model_index.json``,
  ``unet/`` with the EMA weights as safetensors, ``scheduler/``) plus
  ``certframe.json`` (training settings, ``t_max``, data set, loss history, wall
  and CPU seconds) and ``train.log`` (one line per event: start, every
  ``log_every`` steps with loss, EMA decay and time left, checkpoints, the end).
  It loads with the ``ddpm`` / ``ddim`` denoiser plugins (``model=out/ddpm``) and
  with ``diffusers.DDPMPipeline.from_pretrained``.
* ``out/ddpm.resume/``: the state after the last checkpoint:
  ``step-N.unet.safetensors``, ``step-N.ema.safetensors``,
  ``step-N.optimizer.safetensors`` and ``state.json`` (step, loss history, the name of
  the random stream, torch's own generator state), replaced atomically. ``resume=True``
  continues it with the same settings and gives the same weights as an uninterrupted
  run (same device and torch build; on CUDA also deterministic kernels,
  ``torch.use_deterministic_algorithms``).

**On the device** (:mod:`certframe.training.device`). The stacked images stay on the
training device when they fit (on CPU always; on CUDA when their bytes are at most a
quarter of the free memory; else pinned host memory, each batch copied
``non_blocking``). Each step's image indices, crop offsets, flips, timesteps and noise
come from :mod:`certframe.core.philox` (stream ``("train-diffusion", seed, purpose)``, draw
index the step; noise: one draw per image, ``step * batch_size + j``), made on the device;
the step's draws do not depend on the steps before it, and a resumed run draws what the
uninterrupted one did, so the step number is the whole generator state. The loss is summed
on the device and read every ``log_every`` steps; nothing else in the step loop reads a
tensor on the host (fp16's loss scaler excepted). ``precision`` (auto, fp32, bf16, fp16)
autocasts the UNet's forward pass as ``certify`` does; a resumed run must resolve to the
same. A training state from before the stream (version 1, torch.Generator draws) is
refused on resume: continuing it could not give the uninterrupted run's weights.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from certframe.core import philox
from certframe.device import autocast, resolve_precision
from certframe.interfaces import SegmentationDataset
from certframe.training.device import gather, grad_scaler, optimiser_step, place, streams
from certframe.training.resume import (
    Clock,
    DeferredInterrupt,
    StateFolder,
    generator_state,
    load_optimizer,
    read_tensors,
    restore_generators,
    save_optimizer,
    save_tensors,
    scaler_state,
    training_progress,
)
from certframe.training.segmenter import stack

STATE_VERSION = 2  # 2: draws from the counter-based stream (philox.STREAM_VERSION); 1: torch.Generator
RESUME_KEYS = ("size", "block_out_channels", "layers_per_block", "attention", "batch_size", "lr",
               "max_sigma", "margin", "beta_schedule", "num_train_timesteps", "prediction_type",
               "ema_decay", "seed", "crop", "precision")
STREAMS = ("index", "crop-top", "crop-left", "flip", "timestep", "noise")
DRAW_CHUNK = 64
"""Steps whose small draws (indices, crop offsets, flips, timesteps) are made in one call: the same
numbers as one call per step (draw index = step), fewer kernel launches."""


@dataclass
class DiffusionTrainResult:
    """output: the diffusers folder; steps: steps done; t_max: largest timestep trained on;
    history: ``{"step", "loss"}`` (mean loss since the previous record); seconds: this call's time
    (``certframe.json`` records the wall time of all calls of a resumed run)."""

    output: Path
    steps: int
    t_max: int
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def build_unet(size: int, channels: int, block_out_channels: Sequence[int] = (16, 32, 32, 64),
               layers_per_block: int = 1, attention: bool = False):
    """A ``diffusers.UNet2DModel`` for ``channels`` x ``size`` x ``size`` images.

    One down/up block per entry of ``block_out_channels`` (plain ResNet blocks; the
    lowest resolution gets self-attention when ``attention``). GroupNorm groups:
    the largest of 8, 4, 2, 1 that divides every width.
    """
    from diffusers import UNet2DModel

    widths = [int(c) for c in block_out_channels]
    if len(widths) < 2 or min(widths) < 1:
        raise ValueError(f"block_out_channels needs >= 2 positive widths, got {list(block_out_channels)}")
    if size % (2 ** (len(widths) - 1)):
        raise ValueError(f"size {size} must be divisible by 2^{len(widths) - 1} for {len(widths)} resolution levels")
    groups = next(g for g in (8, 4, 2, 1) if all(w % g == 0 for w in widths))
    down = ["DownBlock2D"] * len(widths)
    if attention:
        down[-1] = "AttnDownBlock2D"
    up = [b.replace("Down", "Up") for b in reversed(down)]
    return UNet2DModel(sample_size=int(size), in_channels=int(channels), out_channels=int(channels),
                       block_out_channels=tuple(widths), layers_per_block=int(layers_per_block),
                       down_block_types=tuple(down), up_block_types=tuple(up), norm_num_groups=groups)


def build_scheduler(num_train_timesteps: int = 1000, beta_schedule: str = "linear",
                    prediction_type: str = "epsilon"):
    """A ``diffusers.DDPMScheduler`` (linear: betas 1e-4..0.02; or squaredcos_cap_v2, the cosine schedule)."""
    from diffusers import DDPMScheduler

    if beta_schedule not in ("linear", "scaled_linear", "squaredcos_cap_v2"):
        raise ValueError(f"beta_schedule must be linear, scaled_linear or squaredcos_cap_v2, got {beta_schedule!r}")
    if prediction_type not in ("epsilon", "sample", "v_prediction"):
        raise ValueError(f"prediction_type must be epsilon, sample or v_prediction, got {prediction_type!r}")
    return DDPMScheduler(num_train_timesteps=int(num_train_timesteps), beta_schedule=beta_schedule,
                         prediction_type=prediction_type, clip_sample=True)


def max_timestep(alphas_cumprod: torch.Tensor, max_sigma: float | None, margin: float = 0.25,
                 shrink: float = 1.0) -> int:
    """Largest timestep to train on: ``t*(shrink * max_sigma * (1 + margin))``, or T - 1 when max_sigma is None.

    shrink: the factor by which resizing the data set's images to the training
    size scales the noise std (``resized_noise_std(1, data size, size)``; 1 when
    equal). Refuses a sigma whose noise exceeds the schedule's last timestep.
    """
    from .diffusion import noise_to_signal, timestep_for_sigma

    if max_sigma is None:
        return len(alphas_cumprod) - 1
    if not max_sigma > 0 or margin < 0:
        raise ValueError(f"need max_sigma > 0 and margin >= 0, got max_sigma={max_sigma}, margin={margin}")
    target = shrink * max_sigma * (1 + margin)
    largest = float(noise_to_signal(alphas_cumprod)[-1]) / 2
    if target > largest:
        raise ValueError(f"max_sigma {max_sigma} (x{1 + margin:g} margin) needs noise std {2 * target:.4g} in the "
                         f"model's [-1, 1] range, beyond the schedule's last timestep "
                         f"(std {2 * largest:.4g}); use fewer sigma or another beta_schedule")
    return timestep_for_sigma(alphas_cumprod, target)


def training_target(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the network learns to output for ``prediction_type``."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "sample":
        return x0
    return scheduler.get_velocity(x0, noise, t)


def resume_dir(output: str | Path) -> Path:
    """``out/ddpm`` -> ``out/ddpm.resume``."""
    output = Path(output)
    return output.with_name(output.name + ".resume")


LOG_NAME = "train.log"


def save_diffusion_folder(output: str | Path, unet, scheduler, info: dict) -> Path:
    """Write a diffusers ``DDPMPipeline`` folder (safetensors) plus ``certframe.json``.

    The folder is written beside ``output`` and renamed into place; a ``train.log``
    already in ``output`` is carried over.
    """
    import diffusers

    output = Path(output)
    tmp = output.with_name(output.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    unet.save_pretrained(str(tmp / "unet"), safe_serialization=True)
    scheduler.save_pretrained(str(tmp / "scheduler"))
    (tmp / "model_index.json").write_text(json.dumps(
        {"_class_name": "DDPMPipeline", "_diffusers_version": diffusers.__version__,
         "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]}, indent=2) + "\n")
    (tmp / "certframe.json").write_text(json.dumps(info, indent=2) + "\n")
    if (output / LOG_NAME).is_file():
        shutil.copy2(output / LOG_NAME, tmp / LOG_NAME)
    shutil.rmtree(output, ignore_errors=True)
    tmp.rename(output)
    return output


class TrainLog:
    """Appends timestamped lines to ``OUTPUT/train.log`` (flushed at once, so ``tail -f`` follows it)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with self.path.open("a") as f:
            f.write(f"{stamp} {message}\n")

def _images(dataset: SegmentationDataset, size: int | None) -> tuple[torch.Tensor, tuple[int, int]]:
    """The data set's images in ``[-1, 1]`` at ``size`` x ``size`` (default: theirs), and their own size."""
    from .diffusion import resize

    images, _ = stack(dataset)
    data_size = (int(images.shape[-2]), int(images.shape[-1]))
    if size is None:
        if data_size[0] != data_size[1]:
            raise ValueError(f"images are {data_size}, not square: pass size")
        return images.float() * 2 - 1, data_size
    return resize(images.float(), (size, size)).clamp(0, 1) * 2 - 1, data_size


def _named(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in params.items()}


def default_checkpoint_every(steps: int) -> int:
    """A tenth of the run, between 1 and 200 steps: ten restart points for a short run."""
    return max(1, min(200, -(-int(steps) // 10)))


def random_crops(x: torch.Tensor, crop: int, top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    """One ``crop`` x ``crop`` patch of each image of ``x`` ``[B, C, H, W]``: image ``i``'s rows
    ``top[i] ..`` and columns ``left[i] ..`` (int64 ``[B]`` on ``x``'s device, in ``0 .. H - crop`` and
    ``0 .. W - crop``). One gather, no host read."""
    B, C = x.shape[:2]
    span = torch.arange(crop, device=x.device)
    rows, cols = top.view(B, 1, 1, 1) + span.view(1, 1, crop, 1), left.view(B, 1, 1, 1) + span.view(1, 1, 1, crop)
    return x[torch.arange(B, device=x.device).view(B, 1, 1, 1), torch.arange(C, device=x.device).view(1, C, 1, 1),
             rows, cols]


def train_diffusion(dataset: SegmentationDataset, output: str | Path, *, size: int | None = None,
                    block_out_channels: Sequence[int] = (16, 32, 32, 64), layers_per_block: int = 1,
                    attention: bool = False, steps: int = 2000, batch_size: int = 16, lr: float = 5e-4,
                    max_sigma: float | None = 1.0, margin: float = 0.25, beta_schedule: str = "linear",
                    num_train_timesteps: int = 1000, prediction_type: str = "epsilon",
                    ema_decay: float = 0.999, seed: int = 0, device: str | torch.device = "cpu",
                    checkpoint_every: int | None = None, resume: bool = False, overwrite: bool = False,
                    progress: bool = False, console=None, info: dict | None = None,
                    on_log: Callable[[dict], None] | None = None, log_every: int = 50,
                    crop: int | None = None, precision: str = "auto") -> DiffusionTrainResult:
    """Train a DDPM on ``dataset``'s images (``[C, H, W]`` in ``[0, 1]``) and save it to ``output``.

    size: training resolution (images are resized, bilinear antialiased); default
        the data set's, which is the resolution the segmenter sees. block_out_channels
        / layers_per_block / attention: the UNet (:func:`build_unet`). steps: total
        optimisation steps (a resumed run continues up to this number); batch_size;
        lr: Adam learning rate (gradient norm clipped at 1). max_sigma, margin: the
        largest smoothing sigma to serve ON THE DATA SET'S IMAGES; t is drawn from
        ``0 .. t_max`` (:func:`max_timestep`, with the resize's noise shrink; None:
        all t). beta_schedule, num_train_timesteps, prediction_type: the scheduler
        (:func:`build_scheduler`). ema_decay: the EMA's largest decay (warm-up
        ``1 - (1 + step)^(-2/3)``, see the module docstring). Every batch is flipped
        left-right with probability 1/2. checkpoint_every: steps between resumable
        states (default :func:`default_checkpoint_every`). resume: continue the
        state in ``output.resume/``; overwrite: delete an existing ``output`` and its
        state first. info: extra JSON-able facts for ``certframe.json``. on_log:
        called with each ``{"step", "loss"}`` record (every ``log_every`` steps).
        crop: train on random ``crop`` x ``crop`` patches of the ``size`` x ``size``
        images (one per drawn image) while the model is saved for ``size``: the UNet
        is fully convolutional (without ``attention``) and its GroupNorm statistics
        are per image, so it denoises whole ``size`` images at inference, with no
        resize in front of it, at a quarter of the training cost for ``crop = size / 2``
        (patch-wise training of diffusion models: Wang et al., "Patch Diffusion",
        NeurIPS 2023). The noise level per pixel, hence ``t*``, is the same.
        precision: ``auto`` (bf16 or fp16 on CUDA, fp32 on CPU), ``fp32``, ``bf16`` or ``fp16``
        (CUDA only): autocast of the UNet's forward pass (module docstring); recorded, resolved,
        in the training settings. Every draw comes from the counter-based stream by step
        number (module docstring). The mean loss is read on the host every ``log_every`` steps.
        A ``KeyboardInterrupt`` (Ctrl-C, or raised by ``on_log``) saves the resume
        state and the current EMA model, then propagates.
    """
    checkpoint_every = default_checkpoint_every(steps) if checkpoint_every is None else checkpoint_every
    if (steps < 1 or batch_size < 1 or lr <= 0 or not 0 < ema_decay < 1 or checkpoint_every < 1
            or log_every < 1):
        raise ValueError(f"need steps >= 1, batch_size >= 1, lr > 0, 0 < ema_decay < 1, checkpoint_every >= 1, "
                         f"log_every >= 1; got steps={steps}, batch_size={batch_size}, lr={lr}, "
                         f"ema_decay={ema_decay}, checkpoint_every={checkpoint_every}, log_every={log_every}")
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other")
    output = Path(output)
    if not (resume or overwrite) and (output.exists() or resume_dir(output).exists()):
        raise FileExistsError(f"{str(output)!r} or its training state {str(resume_dir(output))!r} exists; resume "
                              f"it or remove it first (--resume / --overwrite)")
    run = _DiffusionTraining(dataset, output, size=size, block_out_channels=block_out_channels,
                             layers_per_block=layers_per_block, attention=attention, steps=steps,
                             batch_size=batch_size, lr=lr, max_sigma=max_sigma, margin=margin,
                             beta_schedule=beta_schedule, num_train_timesteps=num_train_timesteps,
                             prediction_type=prediction_type, ema_decay=ema_decay, seed=seed, device=device,
                             overwrite=overwrite, info=info, crop=crop, precision=precision)
    if resume:
        run.resume()
    run.log_start(resume, checkpoint_every)
    run.prepare_loop()
    bar = training_progress(console, enabled=progress)
    try:
        with bar, DeferredInterrupt() as interrupt:
            task = bar.add_task("DDPM steps", total=steps, completed=run.start, info=f"t in 0..{run.t_max}")
            run.unet.train()
            for step in range(run.start, steps):
                run.step(step)
                bar.update(task, advance=1)
                if run.done % log_every == 0 or run.done == steps:
                    record = run.record_loss()
                    bar.update(task, info=f"loss {record['loss']:.4f}, t in 0..{run.t_max}")
                    if on_log is not None:
                        on_log(record)
                if run.done % checkpoint_every == 0 or run.done == steps:
                    run.save_state()
                    run.log(f"checkpoint at step {run.done} in {run.states.folder}")
                interrupt.check()
    except KeyboardInterrupt:
        run.interrupted()
        raise
    return run.finish()


class _DiffusionTraining:
    """One call of :func:`train_diffusion`, in named steps: the setup (``__init__``), :meth:`resume`, one
    optimisation step (:meth:`step`), the loss record (:meth:`record_loss`), the resumable state
    (:meth:`save_state`), the EMA model's folder (:meth:`save_ema_model`), Ctrl-C (:meth:`interrupted`) and
    :meth:`finish`."""

    def __init__(self, dataset: SegmentationDataset, output: Path, *, size, block_out_channels, layers_per_block,
                 attention, steps, batch_size, lr, max_sigma, margin, beta_schedule, num_train_timesteps,
                 prediction_type, ema_decay, seed, device, overwrite, info, crop, precision):
        from diffusers.training_utils import EMAModel

        from .diffusion import resized_noise_std

        self.dataset, self.output, self.info, self.crop, self.steps = dataset, output, info, crop, steps
        self.batch_size = batch_size
        self.asked = {"max_sigma": max_sigma, "margin": margin, "lr": lr}  # as given, for train.log
        self.states = StateFolder(resume_dir(output), STATE_VERSION, "step")
        self.device = device = torch.device(device)
        self.precision = precision = resolve_precision(precision, device)
        self.clock = Clock()
        self.images, self.data_size = _images(dataset, size)
        self.size = size = int(self.images.shape[-1])
        self.channels = int(self.images.shape[1])
        self.unet_args = (size, self.channels, block_out_channels, layers_per_block, attention)
        shrink = resized_noise_std(1.0, self.data_size, (size, size))
        self.training = {"size": int(size), "block_out_channels": [int(c) for c in block_out_channels],
                         "layers_per_block": int(layers_per_block), "attention": bool(attention),
                         "batch_size": int(batch_size), "lr": float(lr), "max_sigma": max_sigma,
                         "margin": float(margin), "beta_schedule": beta_schedule,
                         "num_train_timesteps": int(num_train_timesteps), "prediction_type": prediction_type,
                         "ema_decay": float(ema_decay), "seed": int(seed), "data_size": list(self.data_size),
                         "crop": None if crop is None else int(crop), "precision": precision}
        if crop is not None:
            levels = len(block_out_channels) - 1
            if not 0 < crop <= size or crop % (2 ** levels):
                raise ValueError(f"crop must be in 1..{size} (the training size) and divisible by 2^{levels} for "
                                 f"{levels + 1} resolution levels, got {crop}")
            if attention:
                raise ValueError("crop training needs a fully convolutional UNet: attention sees the whole image, "
                                 "so a model trained on crops would not transfer to whole images; drop attention")
        torch.manual_seed(seed)
        self.unet = build_unet(*self.unet_args).to(device)
        self.scheduler = build_scheduler(num_train_timesteps, beta_schedule, prediction_type)
        self.t_max = max_timestep(self.scheduler.alphas_cumprod, max_sigma, margin, shrink)
        if overwrite:  # only now, once every setting has been accepted
            shutil.rmtree(output, ignore_errors=True)
            shutil.rmtree(self.states.folder, ignore_errors=True)
        self.ema = EMAModel(self.unet.parameters(), decay=ema_decay, use_ema_warmup=True, inv_gamma=1.0,
                            power=2 / 3, foreach=True)
        self.optim = torch.optim.Adam(self.unet.parameters(), lr=lr)
        self.scaler = grad_scaler(precision, device)
        self.keys = streams("train-diffusion", seed, STREAMS)
        self.history: list[dict] = []
        self.start = 0
        self.log = TrainLog(output / LOG_NAME)

    def resume(self) -> None:
        """Continue the saved state: the UNet, its EMA, the optimizer, the generators, history and time."""
        states, device = self.states, self.device
        # states written before data_size existed: their data size is taken as this one
        state = states.load(self.training, RESUME_KEYS + ("data_size",), defaults={"data_size": list(self.data_size)})
        self.unet.load_state_dict(read_tensors(states.folder / state["unet"]))
        shadow = read_tensors(states.folder / state["ema"])
        names = [n for n, _ in self.unet.named_parameters()]
        self.ema.shadow_params = [shadow[n].to(device) for n in names]
        self.ema.optimization_step = int(state["ema_step"])
        load_optimizer(states.folder / state["optimizer"], self.optim)
        restore_generators(state, self.scaler)
        self.history, self.start = list(state["history"]), int(state["step"])
        self.clock.add_earlier(state)

    def log_start(self, resume: bool, checkpoint_every: int) -> None:
        t, size, data_size, crop = self.asked, self.size, self.data_size, self.crop
        self.log(f"{'resume at step ' + str(self.start) if resume else 'start'}: {len(self.images)} images "
                 f"{self.channels}x{size}x{size} (data set {data_size[0]}x{data_size[1]}), t in 0..{self.t_max} "
                 f"(max_sigma {t['max_sigma']}, margin {t['margin']}), {self.steps} steps, batch {self.batch_size}"
                 f"{'' if crop is None else f' of {crop}x{crop} crops'}, lr {t['lr']}, checkpoint every "
                 f"{checkpoint_every}, device {self.device}")

    def prepare_loop(self) -> None:
        """The data on the device and the loop's counters."""
        self.acp = self.scheduler.alphas_cumprod.to(self.device)
        (self.images,), self.data_device = place([self.images], self.device)
        self.side = self.size if self.crop is None else self.crop
        self.running = torch.zeros((), dtype=torch.float64, device=self.device)  # the loss summed on the device
        self.seen, self.done, self.at_boundary = 0, self.start, True
        self.drawn: dict[str, torch.Tensor] = {}
        self.chunk = -1
        self.loop_started = time.perf_counter()  # the time left is estimated from the steps alone, not the loading

    def draws(self, step: int) -> dict[str, torch.Tensor]:
        """The small draws of ``step`` (rows of a chunk of DRAW_CHUNK steps drawn at once)."""
        keys, device, crop, drawn = self.keys, self.device, self.crop, self.drawn
        B, (H, W) = self.batch_size, self.images.shape[-2:]
        if step // DRAW_CHUNK != self.chunk:
            self.chunk, first = step // DRAW_CHUNK, step // DRAW_CHUNK * DRAW_CHUNK
            count = min(DRAW_CHUNK, self.steps - first)
            drawn["index"] = philox.integers(keys["index"], first, count, B, len(self.images), device=self.data_device)
            drawn["flip"] = philox.uniform(keys["flip"], first, count, B, device=device) < 0.5
            drawn["t"] = philox.integers(keys["timestep"], first, count, B, self.t_max + 1, device=device)
            if crop is not None:
                drawn["top"] = philox.integers(keys["crop-top"], first, count, B, H - crop + 1, device=device)
                drawn["left"] = philox.integers(keys["crop-left"], first, count, B, W - crop + 1, device=device)
        return {k: v[step - self.chunk * DRAW_CHUNK] for k, v in drawn.items()}

    def step(self, step: int) -> None:
        """One optimisation step and its EMA update; the loss is added up on the device."""
        device, B, C, side = self.device, self.batch_size, self.channels, self.side
        self.at_boundary = False
        d = self.draws(step)
        x0 = gather(self.images, d["index"], device)
        if self.crop is not None:
            x0 = random_crops(x0, self.crop, d["top"], d["left"])
        x0 = torch.where(d["flip"].view(-1, 1, 1, 1), x0.flip(-1), x0)
        noise = philox.normal(self.keys["noise"], step * B, B, C * side * side, device=device).view_as(x0)
        t = d["t"]
        a = self.acp[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        with autocast(self.precision, device):
            prediction = self.unet(x_t, t).sample
        loss = F.mse_loss(prediction.float(), training_target(self.scheduler, x0, noise, t))
        self.optim.zero_grad(set_to_none=True)
        optimiser_step(loss, self.optim, self.scaler, clip_norm=1.0, parameters=self.unet.parameters())
        self.ema.step(self.unet.parameters())
        self.done, self.at_boundary = step + 1, True
        self.running += loss.detach()
        self.seen += 1

    def record_loss(self) -> dict:
        """``{"step", "loss"}``, the mean loss since the last record (the one host read), added to the history
        and to ``train.log`` with the EMA decay and the time left."""
        self.history.append({"step": self.done, "loss": float(self.running) / self.seen})
        self.running.zero_()
        self.seen = 0
        wall, _ = self.clock.elapsed()
        rate = (time.perf_counter() - self.loop_started) / (self.done - self.start)
        self.log(f"step {self.done}/{self.steps} loss {self.history[-1]['loss']:.5f} "
                 f"ema_decay {self.ema.get_decay(self.ema.optimization_step):.4f} elapsed {wall:.0f}s "
                 f"left {rate * (self.steps - self.done):.0f}s")
        return self.history[-1]

    def save_state(self) -> None:
        """The state after step ``done``: UNet, EMA and optimizer tensors, then ``state.json``."""
        seconds, cpu_seconds = self.clock.elapsed()
        files = self.states.files(self.done, "unet", "ema", "optimizer")
        save_tensors(files["unet"], _named(self.unet.state_dict()))
        save_tensors(files["ema"], _named(dict(zip([n for n, _ in self.unet.named_parameters()],
                                                   self.ema.shadow_params))))
        save_optimizer(files["optimizer"], self.optim)
        self.states.write({**self.states.stamp(), "step": self.done, "ema_step": int(self.ema.optimization_step),
                           "training": self.training, "history": self.history, **generator_state(),
                           "seconds": seconds, "cpu_seconds": cpu_seconds, **scaler_state(self.scaler),
                           **{part: p.name for part, p in files.items()}},
                          keep=[p.name for p in files.values()])

    def meta(self, done: int, interrupted: bool) -> dict:
        """``certframe.json``: the settings, t_max, time, history, data set and ``info``."""
        wall, cpu = self.clock.elapsed()
        m = {"training": {**self.training, "steps": self.steps, "t_max": self.t_max, "seconds": round(wall, 1),
                          "cpu_seconds": round(cpu, 1)},
             "history": self.history, "images": len(self.images), "channels": self.channels,
             "dataset_identity": self.dataset.identity(), **(self.info or {})}
        if interrupted:
            m["interrupted"] = {"step": done, "steps": self.steps,
                                "resume": f"rerun with resume (--resume) to continue to step {self.steps}"}
        return m

    def save_ema_model(self, done: int, interrupted: bool) -> None:
        """The EMA weights as a diffusers folder at ``output`` (:func:`save_diffusion_folder`)."""
        final = build_unet(*self.unet_args)
        self.ema.copy_to(final.parameters())
        save_diffusion_folder(self.output, final.cpu(), self.scheduler, self.meta(done, interrupted))

    def interrupted(self) -> None:
        """On Ctrl-C at a step's end: save the state and the current EMA model (marked interrupted)."""
        done, steps, folder = self.done, self.steps, self.states.folder
        if self.at_boundary and done > self.start:
            self.save_state()
            self.save_ema_model(done, interrupted=True)
            self.log(f"interrupted at step {done}/{steps}: resume state in {folder}, EMA model in {self.output} "
                     f"(marked interrupted); continue with --resume")
        else:
            self.log(f"interrupted during step {done + 1}/{steps}: nothing new saved; the last checkpoint in "
                     f"{folder} is the resume point")

    def finish(self) -> DiffusionTrainResult:
        """Save the EMA model, log the end."""
        self.save_ema_model(self.steps, interrupted=False)
        wall, cpu = self.clock.elapsed()
        self.log(f"done: {self.steps} steps, {wall:.0f}s wall, {cpu:.0f}s CPU; saved {self.output}")
        return DiffusionTrainResult(output=self.output, steps=self.steps, t_max=self.t_max, history=self.history,
                                    seconds=self.clock.since_start())
