"""A segmenter plugin over MONAI networks, with safetensors weights."""
from __future__ import annotations

from pathlib import Path

import torch

from certframe.checkpoint import load_checkpoint
from certframe.interfaces import Segmenter

from .networks import build_network

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


def resolve_weights(weights: str | Path) -> Path:
    """A path, or the name of a bundled checkpoint (``certframe/plugins/weights/<name>.safetensors``)."""
    p = Path(weights)
    if p.is_file():
        return p
    bundled = WEIGHTS_DIR / f"{weights}.safetensors"
    if bundled.is_file():
        return bundled
    names = sorted(q.stem for q in WEIGHTS_DIR.glob("*.safetensors"))
    raise FileNotFoundError(f"segmenter weights {str(weights)!r} not found: expected a .safetensors "
                            f"path or a bundled name ({', '.join(names) or 'none bundled'})")


class MonaiSegmenter(Segmenter):
    """A MONAI 2-D network (UNet, BasicUNet, AttentionUnet, SegResNet) as a segmenter.

    Input ``[B, C, H, W]`` in [0, 1] (or noisy, for Gaussian-trained models) ->
    logits ``[B, K, H, W]``. With ``weights`` (a .safetensors file written by
    ``certframe train segmenter`` or a bundled name such as ``synthetic-lung``) the
    architecture, channels and classes come from the checkpoint; without, a
    randomly initialised network of ``arch`` is built (for training).

    Options: weights (path or bundled name), arch (unet), in_channels (1),
    num_classes (2), network (dict of extra architecture arguments), device (cpu).
    """

    def __init__(self, weights: str | None = None, arch: str = "unet", in_channels: int = 1,
                 num_classes: int = 2, network: dict | None = None, device: str = "cpu"):
        super().__init__()
        self.config = {"arch": arch, "in_channels": int(in_channels), "num_classes": int(num_classes),
                       "network": dict(network or {})}
        state = None
        if weights is not None:
            path = resolve_weights(weights)
            config, state = load_checkpoint(path)
            self.config = {k: config[k] for k in ("arch", "in_channels", "num_classes", "network")}
            self.config.update({k: v for k, v in config.items() if k not in self.config})
            self.weights_path = str(path)
        self.in_channels = self.config["in_channels"]
        self.num_classes = self.config["num_classes"]
        self.net = build_network(self.config["arch"], self.in_channels, self.num_classes,
                                 **self.config["network"])
        if state is not None:
            self.net.load_state_dict(state)
        self.eval()
        self.to(device)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise ValueError(f"expected images [B, {self.in_channels}, H, W], got {tuple(images.shape)}")
        return self.net(images)
