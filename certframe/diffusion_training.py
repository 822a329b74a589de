"""Training a DDPM denoiser (Ho et al., NeurIPS 2020) on a data set's images, with diffusers.

The model is a ``diffusers.UNet2DModel`` with a ``DDPMScheduler``; images in
``[0, 1]`` become ``x_0 = 2 x - 1`` in ``[-1, 1]``; each step draws ``t`` and
``z ~ N(0, I)``, forms ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) z`` and
minimises the MSE to the target of ``prediction_type`` (epsilon: ``z``;
sample: ``x_0``; v_prediction: ``sqrt(abar) z - sqrt(1 - abar) x_0``).

One-shot / DDIM denoising for randomized smoothing only ever queries the
model at ``t <= t*(sigma)`` (:mod:`certframe.plugins.denoisers.diffusion`), so
``max_sigma`` concentrates training on ``t`` uniform in ``0 .. t_max`` with
``t_max = t*(max_sigma * (1 + margin))`` (noise std ``2 sigma`` in the model's
range). ``max_sigma=None`` trains on all timesteps.

Exponential moving average of the weights (``diffusers.training_utils.EMAModel``,
with warm-up) is what gets saved. Files for ``output="out/ddpm"``:

* ``out/ddpm/``: a diffusers ``DDPMPipeline`` folder (``model_index.json``,
  ``unet/`` with the EMA weights as safetensors, ``scheduler/``) plus
  ``certframe.json`` (training settings, data set, loss history). It loads with
  the ``ddpm`` / ``ddim`` denoiser plugins (``model=out/ddpm``) and with
  ``diffusers.DDPMPipeline.from_pretrained``.
* ``out/ddpm.resume/``: the state after the last checkpoint, every
  ``checkpoint_every`` steps: ``step-N.unet.safetensors``, ``step-N.ema.safetensors``,
  ``step-N.optimizer.safetensors`` and ``state.json`` (step, loss history, random
  generators' states), replaced atomically. ``resume=True`` continues it with the
  same settings and gives the same weights as an uninterrupted run (same device
  and torch build).
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

from certframe.interfaces import SegmentationDataset
from certframe.train_state import decode_state, encode_state, load_optimizer, save_optimizer, training_progress
from certframe.training import stack

STATE_VERSION = 1
RESUME_KEYS = ("size", "block_out_channels", "layers_per_block", "attention", "batch_size", "lr",
               "max_sigma", "margin", "beta_schedule", "num_train_timesteps", "prediction_type",
               "ema_decay", "seed")


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


def max_timestep(alphas_cumprod: torch.Tensor, max_sigma: float | None, margin: float = 0.25) -> int:
    """Largest timestep to train on: ``t*(max_sigma * (1 + margin))``, or T - 1 when max_sigma is None."""
    from certframe.plugins.denoisers.diffusion import timestep_for_sigma

    if max_sigma is None:
        return len(alphas_cumprod) - 1
    if not max_sigma > 0 or margin < 0:
        raise ValueError(f"need max_sigma > 0 and margin >= 0, got max_sigma={max_sigma}, margin={margin}")
    return timestep_for_sigma(alphas_cumprod, max_sigma * (1 + margin))


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


def save_diffusion_folder(output: str | Path, unet, scheduler, info: dict) -> Path:
    """Write a diffusers ``DDPMPipeline`` folder (safetensors) plus ``certframe.json``."""
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
    shutil.rmtree(output, ignore_errors=True)
    tmp.rename(output)
    return output


def _images(dataset: SegmentationDataset, size: int) -> torch.Tensor:
    from certframe.plugins.denoisers.diffusion import resize

    images, _ = stack(dataset)
    return resize(images.float(), (size, size)).clamp(0, 1) * 2 - 1


def _named(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in params.items()}


def train_diffusion(dataset: SegmentationDataset, output: str | Path, *, size: int | None = None,
                    block_out_channels: Sequence[int] = (16, 32, 32, 64), layers_per_block: int = 1,
                    attention: bool = False, steps: int = 2000, batch_size: int = 16, lr: float = 5e-4,
                    max_sigma: float | None = 1.0, margin: float = 0.25, beta_schedule: str = "linear",
                    num_train_timesteps: int = 1000, prediction_type: str = "epsilon",
                    ema_decay: float = 0.999, seed: int = 0, device: str | torch.device = "cpu",
                    checkpoint_every: int = 200, resume: bool = False, progress: bool = False,
                    console=None, info: dict | None = None,
                    on_log: Callable[[dict], None] | None = None, log_every: int = 50) -> DiffusionTrainResult:
    """Train a DDPM on ``dataset``'s images (``[C, H, W]`` in ``[0, 1]``) and save it to ``output``.

    size: training resolution (images are resized, bilinear antialiased); default
        the data set's. block_out_channels / layers_per_block / attention: the
        UNet (:func:`build_unet`). steps: total optimisation steps (a resumed run
        continues up to this number); batch_size; lr: Adam learning rate (gradient
        norm clipped at 1). max_sigma, margin: concentrate t on ``0 .. t_max``
        (:func:`max_timestep`; None: all t). beta_schedule, num_train_timesteps,
        prediction_type: the scheduler (:func:`build_scheduler`). ema_decay: the
        EMA's largest decay (warm-up ``1 - (1 + step)^(-2/3)``). Every batch is
        flipped left-right with probability 1/2. checkpoint_every: steps between
        resumable states. info: extra JSON-able facts for ``certframe.json``.
    """
    from diffusers.training_utils import EMAModel

    if steps < 1 or batch_size < 1 or lr <= 0 or not 0 < ema_decay < 1 or checkpoint_every < 1:
        raise ValueError(f"need steps >= 1, batch_size >= 1, lr > 0, 0 < ema_decay < 1, checkpoint_every >= 1; "
                         f"got steps={steps}, batch_size={batch_size}, lr={lr}, ema_decay={ema_decay}, "
                         f"checkpoint_every={checkpoint_every}")
    output = Path(output)
    device = torch.device(device)
    started = time.perf_counter()
    images = _images(dataset, size) if size else None
    if images is None:
        images, _ = stack(dataset)
        if images.shape[-1] != images.shape[-2]:
            raise ValueError(f"images are {tuple(images.shape[-2:])}, not square: pass size")
        size = int(images.shape[-1])
        images = images.float() * 2 - 1
    channels = int(images.shape[1])
    training = {"size": int(size), "block_out_channels": [int(c) for c in block_out_channels],
                "layers_per_block": int(layers_per_block), "attention": bool(attention),
                "batch_size": int(batch_size), "lr": float(lr), "max_sigma": max_sigma, "margin": float(margin),
                "beta_schedule": beta_schedule, "num_train_timesteps": int(num_train_timesteps),
                "prediction_type": prediction_type, "ema_decay": float(ema_decay), "seed": int(seed)}
    torch.manual_seed(seed)
    unet = build_unet(size, channels, block_out_channels, layers_per_block, attention).to(device)
    scheduler = build_scheduler(num_train_timesteps, beta_schedule, prediction_type)
    t_max = max_timestep(scheduler.alphas_cumprod, max_sigma, margin)
    ema = EMAModel(unet.parameters(), decay=ema_decay, use_ema_warmup=True, power=2 / 3)
    optim = torch.optim.Adam(unet.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    history: list[dict] = []
    start, earlier = 0, 0.0
    folder = resume_dir(output)
    if resume:
        state_path = folder / "state.json"
        if not state_path.is_file():
            raise FileNotFoundError(f"cannot resume: no training state at {str(state_path)!r}")
        state = json.loads(state_path.read_text())
        clash = {k: (state["training"].get(k), training[k]) for k in RESUME_KEYS
                 if state["training"].get(k) != training[k]}
        if clash:
            raise ValueError("cannot resume with different settings (saved, asked): "
                             + ", ".join(f"{k}={a!r} vs {b!r}" for k, (a, b) in clash.items()))
        unet.load_state_dict(_read(folder / state["unet"]))
        shadow = _read(folder / state["ema"])
        names = [n for n, _ in unet.named_parameters()]
        ema.shadow_params = [shadow[n].to(device) for n in names]
        ema.optimization_step = int(state["ema_step"])
        load_optimizer(folder / state["optimizer"], optim)
        g.set_state(decode_state(state["generator"]))
        torch.set_rng_state(decode_state(state["torch_rng"]))
        history, start = list(state["history"]), int(state["step"])
        earlier = float(state.get("seconds", 0.0))
    elif output.exists() or folder.exists():
        raise FileExistsError(f"{str(output)!r} or its training state {str(folder)!r} exists; resume it or "
                              f"remove it first")
    acp = scheduler.alphas_cumprod.to(device)
    running, seen = 0.0, 0
    bar = training_progress(console, enabled=progress)
    with bar:
        task = bar.add_task("DDPM steps", total=steps, completed=start, info=f"t in 0..{t_max}")
        unet.train()
        for step in range(start, steps):
            idx = torch.randint(len(images), (batch_size,), generator=g)
            x0 = images[idx]
            flip = torch.rand(batch_size, generator=g) < 0.5
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0).to(device)
            noise = torch.randn(x0.shape, generator=g).to(device)
            t = torch.randint(0, t_max + 1, (batch_size,), generator=g).to(device)
            a = acp[t].view(-1, 1, 1, 1)
            x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
            loss = F.mse_loss(unet(x_t, t).sample, training_target(scheduler, x0, noise, t))
            optim.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            optim.step()
            ema.step(unet.parameters())
            running, seen = running + loss.item(), seen + 1
            done = step + 1
            bar.update(task, advance=1, info=f"loss {loss.item():.4f}, t in 0..{t_max}")
            if done % log_every == 0 or done == steps:
                history.append({"step": done, "loss": running / seen})
                running, seen = 0.0, 0
                if on_log is not None:
                    on_log(history[-1])
            if done % checkpoint_every == 0 or done == steps:
                _save_state(folder, done, unet, ema, optim, g, training, history,
                            earlier + time.perf_counter() - started)
    final = build_unet(size, channels, block_out_channels, layers_per_block, attention)
    ema.copy_to(final.parameters())
    meta = {"training": {**training, "steps": steps, "t_max": t_max,
                         "seconds": round(earlier + time.perf_counter() - started, 1)}, "history": history,
            "images": len(images), "channels": channels, "dataset_identity": dataset.identity(), **(info or {})}
    save_diffusion_folder(output, final.cpu(), scheduler, meta)
    return DiffusionTrainResult(output=output, steps=steps, t_max=t_max, history=history,
                                seconds=time.perf_counter() - started)


def _read(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _save_state(folder: Path, step: int, unet, ema, optim, g, training: dict, history: list,
                seconds: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    names = {"unet": f"step-{step}.unet.safetensors", "ema": f"step-{step}.ema.safetensors",
             "optimizer": f"step-{step}.optimizer.safetensors"}
    save_file(_named(unet.state_dict()), str(folder / names["unet"]))
    save_file(_named(dict(zip([n for n, _ in unet.named_parameters()], ema.shadow_params))),
              str(folder / names["ema"]))
    save_optimizer(folder / names["optimizer"], optim)
    state = {"version": STATE_VERSION, "step": step, "ema_step": int(ema.optimization_step),
             "training": training, "history": history, "generator": encode_state(g.get_state()),
             "torch_rng": encode_state(torch.get_rng_state()), "seconds": seconds, **names}
    tmp = folder / "state.json.tmp"
    tmp.write_text(json.dumps(state, indent=1) + "\n")
    tmp.replace(folder / "state.json")
    for old in folder.glob("step-*.safetensors"):
        if old.name not in names.values():
            old.unlink()
