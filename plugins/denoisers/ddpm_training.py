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
from safetensors import safe_open
from safetensors.torch import save_file

from certframe.core import philox
from certframe.device import autocast, resolve_precision
from certframe.interfaces import SegmentationDataset
from certframe.training.device import gather, grad_scaler, optimiser_step, place, streams
from certframe.training.segmenter import stack
from certframe.training.state import (
    check_resumable,
    decode_state,
    encode_state,
    load_optimizer,
    save_optimizer,
    training_progress,
)

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


class _DeferredInterrupt:
    """Within ``with``: the first SIGINT (Ctrl-C) only sets ``requested``; the loop raises at a step's end.

    A second Ctrl-C interrupts at once. Outside the main thread (where signal
    handlers cannot be set) Ctrl-C is not deferred.
    """

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


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
    from diffusers.training_utils import EMAModel

    from .diffusion import resized_noise_std

    checkpoint_every = default_checkpoint_every(steps) if checkpoint_every is None else checkpoint_every
    if (steps < 1 or batch_size < 1 or lr <= 0 or not 0 < ema_decay < 1 or checkpoint_every < 1
            or log_every < 1):
        raise ValueError(f"need steps >= 1, batch_size >= 1, lr > 0, 0 < ema_decay < 1, checkpoint_every >= 1, "
                         f"log_every >= 1; got steps={steps}, batch_size={batch_size}, lr={lr}, "
                         f"ema_decay={ema_decay}, checkpoint_every={checkpoint_every}, log_every={log_every}")
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other")
    output = Path(output)
    folder = resume_dir(output)
    if not (resume or overwrite) and (output.exists() or folder.exists()):
        raise FileExistsError(f"{str(output)!r} or its training state {str(folder)!r} exists; resume it or "
                              f"remove it first (--resume / --overwrite)")
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    started, cpu_started = time.perf_counter(), time.process_time()
    images, data_size = _images(dataset, size)
    size = int(images.shape[-1])
    channels = int(images.shape[1])
    shrink = resized_noise_std(1.0, data_size, (size, size))
    training = {"size": int(size), "block_out_channels": [int(c) for c in block_out_channels],
                "layers_per_block": int(layers_per_block), "attention": bool(attention),
                "batch_size": int(batch_size), "lr": float(lr), "max_sigma": max_sigma, "margin": float(margin),
                "beta_schedule": beta_schedule, "num_train_timesteps": int(num_train_timesteps),
                "prediction_type": prediction_type, "ema_decay": float(ema_decay), "seed": int(seed),
                "data_size": list(data_size), "crop": None if crop is None else int(crop), "precision": precision}
    if crop is not None:
        levels = len(block_out_channels) - 1
        if not 0 < crop <= size or crop % (2 ** levels):
            raise ValueError(f"crop must be in 1..{size} (the training size) and divisible by 2^{levels} for "
                             f"{levels + 1} resolution levels, got {crop}")
        if attention:
            raise ValueError("crop training needs a fully convolutional UNet: attention sees the whole image, "
                             "so a model trained on crops would not transfer to whole images; drop attention")
    torch.manual_seed(seed)
    unet = build_unet(size, channels, block_out_channels, layers_per_block, attention).to(device)
    scheduler = build_scheduler(num_train_timesteps, beta_schedule, prediction_type)
    t_max = max_timestep(scheduler.alphas_cumprod, max_sigma, margin, shrink)
    if overwrite:  # only now, once every setting has been accepted
        shutil.rmtree(output, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)
    ema = EMAModel(unet.parameters(), decay=ema_decay, use_ema_warmup=True, inv_gamma=1.0, power=2 / 3,
                   foreach=True)
    optim = torch.optim.Adam(unet.parameters(), lr=lr)
    scaler = grad_scaler(precision, device)
    keys = streams("train-diffusion", seed, STREAMS)
    history: list[dict] = []
    start, earlier, earlier_cpu = 0, 0.0, 0.0
    if resume:
        state_path = folder / "state.json"
        if not state_path.is_file():
            raise FileNotFoundError(f"cannot resume: no training state at {str(state_path)!r}")
        state = json.loads(state_path.read_text())
        check_resumable(state, STATE_VERSION, folder)
        saved = {"data_size": list(data_size), **state["training"]}  # states written before data_size existed
        clash = {k: (saved.get(k), training[k]) for k in RESUME_KEYS + ("data_size",)
                 if saved.get(k) != training[k]}
        if clash:
            raise ValueError("cannot resume with different settings (saved, asked): "
                             + ", ".join(f"{k}={a!r} vs {b!r}" for k, (a, b) in clash.items()))
        unet.load_state_dict(_read(folder / state["unet"]))
        shadow = _read(folder / state["ema"])
        names = [n for n, _ in unet.named_parameters()]
        ema.shadow_params = [shadow[n].to(device) for n in names]
        ema.optimization_step = int(state["ema_step"])
        load_optimizer(folder / state["optimizer"], optim)
        if scaler is not None:
            scaler.load_state_dict(state["grad_scaler"])
        torch.set_rng_state(decode_state(state["torch_rng"]))
        history, start = list(state["history"]), int(state["step"])
        earlier = float(state.get("seconds", 0.0))
        earlier_cpu = float(state.get("cpu_seconds", 0.0))
    log = TrainLog(output / LOG_NAME)

    def elapsed() -> tuple[float, float]:
        return earlier + time.perf_counter() - started, earlier_cpu + time.process_time() - cpu_started

    def meta(done: int, interrupted: bool) -> dict:
        wall, cpu = elapsed()
        m = {"training": {**training, "steps": steps, "t_max": t_max, "seconds": round(wall, 1),
                          "cpu_seconds": round(cpu, 1)},
             "history": history, "images": len(images), "channels": channels,
             "dataset_identity": dataset.identity(), **(info or {})}
        if interrupted:
            m["interrupted"] = {"step": done, "steps": steps,
                                "resume": f"rerun with resume (--resume) to continue to step {steps}"}
        return m

    def save_ema_model(done: int, interrupted: bool) -> None:
        final = build_unet(size, channels, block_out_channels, layers_per_block, attention)
        ema.copy_to(final.parameters())
        save_diffusion_folder(output, final.cpu(), scheduler, meta(done, interrupted))

    log(f"{'resume at step ' + str(start) if resume else 'start'}: {len(images)} images {channels}x{size}x{size} "
        f"(data set {data_size[0]}x{data_size[1]}), t in 0..{t_max} (max_sigma {max_sigma}, margin {margin}), "
        f"{steps} steps, batch {batch_size}{'' if crop is None else f' of {crop}x{crop} crops'}, lr {lr}, "
        f"checkpoint every {checkpoint_every}, device {device}")
    acp = scheduler.alphas_cumprod.to(device)
    (images,), data_device = place([images], device)
    B, C, H, W = batch_size, *(int(v) for v in images.shape[1:])
    side = size if crop is None else crop
    running = torch.zeros((), dtype=torch.float64, device=device)  # the loss summed on the device
    seen, done, at_boundary = 0, start, True
    drawn: dict[str, torch.Tensor] = {}
    chunk = -1

    def draws(step: int) -> dict[str, torch.Tensor]:
        """The small draws of ``step`` (rows of a chunk of DRAW_CHUNK steps drawn at once)."""
        nonlocal chunk
        if step // DRAW_CHUNK != chunk:
            chunk, first = step // DRAW_CHUNK, step // DRAW_CHUNK * DRAW_CHUNK
            count = min(DRAW_CHUNK, steps - first)
            drawn["index"] = philox.integers(keys["index"], first, count, B, len(images), device=data_device)
            drawn["flip"] = philox.uniform(keys["flip"], first, count, B, device=device) < 0.5
            drawn["t"] = philox.integers(keys["timestep"], first, count, B, t_max + 1, device=device)
            if crop is not None:
                drawn["top"] = philox.integers(keys["crop-top"], first, count, B, H - crop + 1, device=device)
                drawn["left"] = philox.integers(keys["crop-left"], first, count, B, W - crop + 1, device=device)
        return {k: v[step - chunk * DRAW_CHUNK] for k, v in drawn.items()}

    loop_started = time.perf_counter()  # the time left is estimated from the steps alone, not the data loading
    bar = training_progress(console, enabled=progress)
    try:
        with bar, _DeferredInterrupt() as interrupt:
            task = bar.add_task("DDPM steps", total=steps, completed=start, info=f"t in 0..{t_max}")
            unet.train()
            for step in range(start, steps):
                at_boundary = False
                d = draws(step)
                x0 = gather(images, d["index"], device)
                if crop is not None:
                    x0 = random_crops(x0, crop, d["top"], d["left"])
                x0 = torch.where(d["flip"].view(-1, 1, 1, 1), x0.flip(-1), x0)
                noise = philox.normal(keys["noise"], step * B, B, C * side * side, device=device).view_as(x0)
                t = d["t"]
                a = acp[t].view(-1, 1, 1, 1)
                x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
                with autocast(precision, device):
                    prediction = unet(x_t, t).sample
                loss = F.mse_loss(prediction.float(), training_target(scheduler, x0, noise, t))
                optim.zero_grad(set_to_none=True)
                optimiser_step(loss, optim, scaler, clip_norm=1.0, parameters=unet.parameters())
                ema.step(unet.parameters())
                done, at_boundary = step + 1, True
                running += loss.detach()
                seen += 1
                bar.update(task, advance=1)
                if done % log_every == 0 or done == steps:
                    history.append({"step": done, "loss": float(running) / seen})  # the one host read
                    running.zero_()
                    seen = 0
                    bar.update(task, info=f"loss {history[-1]['loss']:.4f}, t in 0..{t_max}")
                    wall, _ = elapsed()
                    rate = (time.perf_counter() - loop_started) / (done - start)
                    log(f"step {done}/{steps} loss {history[-1]['loss']:.5f} "
                        f"ema_decay {ema.get_decay(ema.optimization_step):.4f} elapsed {wall:.0f}s "
                        f"left {rate * (steps - done):.0f}s")
                    if on_log is not None:
                        on_log(history[-1])
                if done % checkpoint_every == 0 or done == steps:
                    _save_state(folder, done, unet, ema, optim, scaler, training, history, *elapsed())
                    log(f"checkpoint at step {done} in {folder}")
                if interrupt.requested:
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        if at_boundary and done > start:
            _save_state(folder, done, unet, ema, optim, scaler, training, history, *elapsed())
            save_ema_model(done, interrupted=True)
            log(f"interrupted at step {done}/{steps}: resume state in {folder}, EMA model in {output} "
                f"(marked interrupted); continue with --resume")
        else:
            log(f"interrupted during step {done + 1}/{steps}: nothing new saved; the last checkpoint in "
                f"{folder} is the resume point")
        raise
    save_ema_model(steps, interrupted=False)
    wall, cpu = elapsed()
    log(f"done: {steps} steps, {wall:.0f}s wall, {cpu:.0f}s CPU; saved {output}")
    return DiffusionTrainResult(output=output, steps=steps, t_max=t_max, history=history,
                                seconds=time.perf_counter() - started)


def _read(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _save_state(folder: Path, step: int, unet, ema, optim, scaler, training: dict, history: list,
                seconds: float, cpu_seconds: float = 0.0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    names = {"unet": f"step-{step}.unet.safetensors", "ema": f"step-{step}.ema.safetensors",
             "optimizer": f"step-{step}.optimizer.safetensors"}
    save_file(_named(unet.state_dict()), str(folder / names["unet"]))
    save_file(_named(dict(zip([n for n, _ in unet.named_parameters()], ema.shadow_params))),
              str(folder / names["ema"]))
    save_optimizer(folder / names["optimizer"], optim)
    state = {"version": STATE_VERSION, "stream": philox.STREAM_VERSION, "step": step,
             "ema_step": int(ema.optimization_step), "training": training, "history": history,
             "torch_rng": encode_state(torch.get_rng_state()), "seconds": seconds, "cpu_seconds": cpu_seconds,
             **({} if scaler is None else {"grad_scaler": scaler.state_dict()}), **names}
    tmp = folder / "state.json.tmp"
    tmp.write_text(json.dumps(state, indent=1) + "\n")
    tmp.replace(folder / "state.json")
    for old in folder.glob("step-*.safetensors"):
        if old.name not in names.values():
            old.unlink()
