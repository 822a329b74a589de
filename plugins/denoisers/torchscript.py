"""The ``torchscript`` denoiser: a denoising model exported with ``torch.jit.script`` or ``torch.jit.trace``.

Loading trusts the file as much as running its code (see
:mod:`certframe.plugins.segmenters.torchscript`).
"""
from __future__ import annotations

from pathlib import Path

import torch

from certframe.interfaces import Denoiser
from certframe.plugins.segmenters.torchscript import attach_normalization, load_torchscript
from certframe.validation import resolve_device


class TorchScriptDenoiser(Denoiser):
    """A TorchScript model that removes Gaussian noise, as a denoiser.

    ``forward(noisy [B, C, H, W], sigma)``: ``noisy = x + eps`` in the data set's ``[0, 1]`` space
    (unclipped, eps of std sigma). With ``normalize`` the model sees ``(noisy - mean) / std`` and
    its output is mapped back by ``* std + mean``. The model is called as ``model(x)``, or as
    ``model(x, sigma)`` with sigma a float tensor ``[B]`` (in ``[0, 1]`` units) when
    ``takes_sigma=true``. Its output ``[B, C, H, W]`` is clipped to ``[0, 1]`` (``clip=true``).
    Differentiable in the input (attacks go through it).

    Options: path (required), in_channels (1), normalize (None or ``{"mean", "std"}``),
    takes_sigma (False), clip (True), device (cpu).
    """

    def __init__(self, path: str | None = None, in_channels: int = 1, normalize: dict | None = None,
                 takes_sigma: bool = False, clip: bool = True, device: str = "cpu"):
        super().__init__()
        if path is None:
            raise ValueError("the torchscript denoiser needs path=: a file written by torch.jit.save")
        if int(in_channels) < 1:
            raise ValueError(f"need in_channels >= 1, got {in_channels}")
        self.path = str(Path(path))
        device = resolve_device(device)
        self.net = load_torchscript(path, device)
        self.in_channels = int(in_channels)
        self.takes_sigma, self.clip = bool(takes_sigma), bool(clip)
        attach_normalization(self, normalize, self.in_channels)
        self.to(device)

    def forward(self, noisy: torch.Tensor, sigma: float) -> torch.Tensor:
        if noisy.dim() != 4 or noisy.shape[1] != self.in_channels:
            raise ValueError(f"expected noisy images [B, {self.in_channels}, H, W], got {tuple(noisy.shape)}")
        x = (noisy - self.mean) / self.std if self.normalized else noisy
        if self.takes_sigma:
            out = self.net(x, torch.full((x.shape[0],), float(sigma), device=x.device, dtype=x.dtype))
        else:
            out = self.net(x)
        if not torch.is_tensor(out) or out.shape != noisy.shape:
            got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
            raise ValueError(f"{self.path}: the TorchScript denoiser returned {got} for input "
                             f"{tuple(noisy.shape)}, expected the same shape")
        if self.normalized:
            out = out * self.std + self.mean
        return out.clamp(0, 1) if self.clip else out
