"""Where training's data and random draws live, and the precision it runs in: shared by both trainers.

**Data on the device.** The stacked training set (and the validation set) goes to the
training device when it fits: on CPU always (it is there already); on CUDA when its bytes
are at most :data:`DEVICE_DATA_FRACTION` (a quarter) of the device's free memory
(``torch.cuda.mem_get_info``) at that moment, leaving the rest to the model, its
activations and the optimiser. Otherwise it stays on the host in pinned memory, each
batch's indices are drawn on the CPU (the same numbers: the stream is the same on every
device), the batch is gathered there, pinned and copied with ``non_blocking=True``
(:func:`gather`).

**Random draws.** Every random choice of a step (indices, flips, crop offsets, timesteps,
noise, the sigma of a batch) comes from :mod:`certframe.core.philox`, the counter-based stream
that gives the same numbers on CPU and CUDA: one stream per purpose (:func:`streams`:
``stream_key(trainer, seed, purpose)``) and the global step (or epoch) as the draw index.
The draws of step ``s`` are therefore a function of ``(seed, s)`` alone, not of the batches
before it, and a resumed run draws what the uninterrupted run would have: the step number
is the generator's whole state, and nothing else is saved for it.

**Precision.** ``auto | fp32 | bf16 | fp16`` as ``certify`` takes it
(:meth:`certframe.run.accelerate.Acceleration.resolve`: auto is bf16 on CUDA where supported,
else fp16, and fp32 on CPU; mixed precision asked for on CPU is an error). Mixed precision
is ``torch.autocast`` around the forward pass and the loss; weights, gradients and the
optimiser stay fp32. fp16 adds a ``torch.amp.GradScaler`` (bf16 has fp32's range and needs
none); the scaler reads its overflow flag on the host at every step (``GradScaler.step``),
so fp16 training synchronises once per step where fp32 and bf16 do not.
"""
from __future__ import annotations

from typing import Sequence

import torch

from certframe.core import philox

DEVICE_DATA_FRACTION = 0.25
"""Stacked data goes to a CUDA device when its bytes are at most this share of the free memory."""


def streams(trainer: str, seed: int, purposes: Sequence[str]) -> dict[str, philox.StreamKey]:
    """One Philox stream per purpose: ``stream_key(trainer, seed, purpose)``."""
    return {p: philox.stream_key(trainer, int(seed), p) for p in purposes}


def fits_on_device(nbytes: int, device: torch.device) -> bool:
    """Whether data of ``nbytes`` stays on ``device``: always on CPU; on CUDA when
    ``nbytes <= DEVICE_DATA_FRACTION * free memory``."""
    device = torch.device(device)
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return nbytes <= DEVICE_DATA_FRACTION * free
    return True  # other accelerators: no free-memory query here; try the device


def place(tensors: Sequence[torch.Tensor], device: str | torch.device) -> tuple[list[torch.Tensor], torch.device]:
    """``tensors`` (one data set: images, masks) on ``device`` when their bytes together fit
    (:func:`fits_on_device`), else pinned on the host. Returns them and the device they live on."""
    device = torch.device(device)
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    if fits_on_device(nbytes, device):
        return [t.to(device) for t in tensors], device
    pinned = [t.pin_memory() if device.type == "cuda" else t for t in tensors]
    return pinned, torch.device("cpu")


def gather(data: torch.Tensor, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``data[idx]`` on ``device``; ``idx`` lives where ``data`` does. From host memory the rows
    are pinned and copied asynchronously (no host synchronisation)."""
    rows = data[idx]
    if rows.device == device:
        return rows
    if device.type == "cuda":
        rows = rows.pin_memory()
    return rows.to(device, non_blocking=True)


def grad_scaler(precision: str, device: torch.device):
    """A ``torch.amp.GradScaler`` for fp16, else None."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(torch.device(device).type)


def optimiser_step(loss: torch.Tensor, optim: torch.optim.Optimizer, scaler=None, clip_norm: float | None = None,
                   parameters=None) -> None:
    """Backward pass and optimiser step (gradient norm clipped at ``clip_norm`` when given), through
    ``scaler`` for fp16. Reads nothing on the host except fp16's overflow flag."""
    if scaler is None:
        loss.backward()
        if clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(parameters, clip_norm)
        optim.step()
        return
    scaler.scale(loss).backward()
    if clip_norm is not None:
        scaler.unscale_(optim)
        torch.nn.utils.clip_grad_norm_(parameters, clip_norm)
    scaler.step(optim)
    scaler.update()
