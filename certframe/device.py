"""Where models run and in what precision: one copy for certification and training.

``precision`` is ``auto`` (CUDA: bf16 where supported, else fp16; CPU: fp32), ``fp32``,
``bf16`` or ``fp16`` (autocast on CUDA only). ``fp32`` on CUDA means true fp32: cuDNN's TF32
is turned off (:func:`strict_fp32`), so a CUDA run in fp32 gives a CPU run's labels up to
near-tie pixels (README, "On a GPU").
"""
from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """``fp32``, ``bf16`` or ``fp16`` for ``precision`` on ``device``.

    ValueError for a name outside :data:`PRECISIONS` and for mixed precision on a CPU.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    device = torch.device(device)
    cuda = device.type == "cuda"
    if precision == "auto":
        return ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "fp32"
    if precision != "fp32" and not cuda:
        raise ValueError(f"mixed precision ({precision}) is only used on CUDA; the device here is "
                         f"{device}: use precision fp32 or auto")
    return precision


def autocast(precision: str, device: str | torch.device):
    """``torch.autocast`` for a resolved mixed precision; a no-op context for fp32 (training keeps
    cuDNN's defaults there; certification adds :func:`strict_fp32`)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=DTYPES[precision])


def strict_fp32(device_type: str):
    """cuDNN convolutions in true fp32 on CUDA (no TF32), for ``precision fp32``; nothing elsewhere.

    cuDNN's default ``allow_tf32`` rounds convolution inputs to 10-bit mantissas on Ampere and
    later GPUs, which moves logits by about 1e-3: fp32 is the option for exact reproduction (the
    certified labels of a CPU run), so it means fp32 arithmetic. Matrix products already default
    to fp32 (``torch.backends.cuda.matmul.allow_tf32`` is False unless a user sets it).
    """
    if device_type != "cuda":
        return contextlib.nullcontext()
    cudnn = torch.backends.cudnn
    return cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic,
                       allow_tf32=False)
