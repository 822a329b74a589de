"""The ``torchscript`` segmenter: any model exported with ``torch.jit.script`` or ``torch.jit.trace``.

What loading a TorchScript file trusts: :func:`torch.jit.load` does not unpickle
arbitrary Python objects (no Python code from the file is imported or run), but it
does run the TorchScript program stored in the archive, and that program may call
any operator registered in this torch build (file I/O operators included). Load
only files whose source you would trust to run code on this machine, as you would
a Python model definition.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from certframe.interfaces import Segmenter
from certframe.validation import resolve_device


def load_torchscript(path: str | Path, device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """A ``torch.jit.ScriptModule`` from ``path``, loaded on ``device`` (``map_location``), in eval mode.

    Raises FileNotFoundError for a missing file and ValueError naming the file for a file
    that is not a TorchScript archive (a ``torch.save`` checkpoint, a state dict, safetensors).
    The device is checked first (:func:`certframe.validation.resolve_device`: ``auto``, ``cpu``,
    ``cuda``, ``cuda:N``): CUDA asked for on a machine without it says so, before the file is read.
    """
    device = resolve_device(device)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"TorchScript file {str(path)!r} does not exist (expected a model saved "
                                f"with torch.jit.save(torch.jit.script(model) or torch.jit.trace(model, x), path))")
    try:
        with warnings.catch_warnings():  # torch >= 2.9 marks torch.jit deprecated; the format still loads
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location=device)
    except (RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path} is not a TorchScript model: expected a file written by torch.jit.save of a "
                         f"torch.jit.script or torch.jit.trace module (a torch.save checkpoint or state dict "
                         f"is not one); torch.jit.load said: {first[:200]}") from None
    if not isinstance(module, torch.jit.ScriptModule):
        raise ValueError(f"{path}: torch.jit.load returned {type(module).__name__}, expected a ScriptModule")
    return module.eval()


def input_stats(normalize, in_channels: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``normalize`` = None or ``{"mean": [...], "std": [...]}`` (one value per channel, or one for all)
    -> buffers ``mean``, ``std`` of shape ``[1, C, 1, 1]``, or None."""
    if normalize is None or normalize == "none":
        return None
    if not (isinstance(normalize, dict) and set(normalize) == {"mean", "std"}):
        raise ValueError(f"normalize must be None or {{'mean': [...], 'std': [...]}}, got {normalize!r}")
    mean, std = ([float(v)] * in_channels if isinstance(v, (int, float)) else [float(a) for a in v]
                 for v in (normalize["mean"], normalize["std"]))
    if len(mean) != in_channels or len(std) != in_channels or min(std) <= 0:
        raise ValueError(f"normalize needs {in_channels} means and {in_channels} positive stds, got {normalize}")
    return torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)



def attach_normalization(module: torch.nn.Module, normalize: dict | None, in_channels: int) -> None:
    """Register ``mean`` / ``std`` buffers ``[1, C, 1, 1]`` from ``normalize`` (see :func:`input_stats`) on
    ``module`` and set ``module.normalized``; identity buffers when ``normalize`` is None."""
    stats = input_stats(normalize, in_channels)
    module.normalized = stats is not None
    mean, std = stats or (torch.zeros(1, in_channels, 1, 1), torch.ones(1, in_channels, 1, 1))
    module.register_buffer("mean", mean)
    module.register_buffer("std", std)

class TorchScriptSegmenter(Segmenter):
    """A TorchScript model as a segmenter.

    ``forward(images [B, C, H, W])``, images in ``[0, 1]`` plus noise (unclipped) -> logits
    ``[B, K, H, W]``: the optional normalisation ``(x - mean) / std`` is applied here, after the
    noise, then the scripted model is called; its output must be ``[B, num_classes, H, W]``
    (checked on every call, with an error naming the file).

    Options: path (the .pt/.ts file from torch.jit.save; required), num_classes (2),
    in_channels (1), normalize (None or ``{"mean": [...], "std": [...]}``), device (cpu; auto, cuda, cuda:N).
    See the module docstring for what loading the file trusts.
    """

    def __init__(self, path: str | None = None, num_classes: int = 2, in_channels: int = 1,
                 normalize: dict | None = None, device: str = "cpu"):
        super().__init__()
        if path is None:
            raise ValueError("the torchscript segmenter needs path=: a file written by torch.jit.save")
        if int(num_classes) < 2 or int(in_channels) < 1:
            raise ValueError(f"need num_classes >= 2 and in_channels >= 1, got {num_classes}, {in_channels}")
        self.path = str(Path(path))
        device = resolve_device(device)
        self.net = load_torchscript(path, device)
        self.num_classes, self.in_channels = int(num_classes), int(in_channels)
        self.config = {"segmenter": "torchscript", "path": self.path, "num_classes": self.num_classes,
                       "in_channels": self.in_channels, "normalize": normalize}
        attach_normalization(self, normalize, self.in_channels)
        self.to(device)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise ValueError(f"expected images [B, {self.in_channels}, H, W], got {tuple(images.shape)}")
        x = (images - self.mean) / self.std if self.normalized else images
        out = self.net(x)
        expected = (images.shape[0], self.num_classes, *images.shape[-2:])
        if not torch.is_tensor(out) or tuple(out.shape) != expected:
            got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
            raise ValueError(f"{self.path}: the TorchScript model returned {got} for input "
                             f"{tuple(images.shape)}, expected logits {expected} (num_classes={self.num_classes})")
        return out
