"""A segmenter plugin over MONAI networks, with safetensors weights."""
from __future__ import annotations

import torch

from certframe.checkpoint import load_checkpoint
from certframe.interfaces import Segmenter

from .networks import build_network
from .weights import RANDOM, WEIGHTS_DIR, check_written_by, load_state, require_weights, resolve_weights  # noqa: F401

class MonaiSegmenter(Segmenter):
    """A MONAI 2-D network (UNet, BasicUNet, AttentionUnet, SegResNet) as a segmenter.

    Input ``[B, C, H, W]`` in [0, 1] (or noisy, for Gaussian-trained models) ->
    logits ``[B, K, H, W]``. With ``weights`` (a .safetensors file written by
    ``certframe train segmenter`` or a bundled name such as ``synthetic-lung``) the
    architecture, channels and classes come from the checkpoint. ``weights`` is
    required: ``weights="random"`` builds a randomly initialised network of ``arch``
    on purpose (what training does); leaving it out is an error, so that no
    untrained network is certified by accident.

    ``config`` holds what rebuilds the network (segmenter, arch, in_channels,
    num_classes, network); ``checkpoint_config`` the whole configuration stored in
    the weights file (training, data set, tuning), or None for random weights.

    Options: weights (path, bundled name or "random"), arch (unet), in_channels (1),
    num_classes (2), network (dict of extra architecture arguments), device (cpu).
    """

    def __init__(self, weights: str | None = None, arch: str = "unet", in_channels: int = 1,
                 num_classes: int = 2, network: dict | None = None, device: str = "cpu"):
        super().__init__()
        require_weights("monai", weights)
        self.config = {"segmenter": "monai", "arch": arch, "in_channels": int(in_channels),
                       "num_classes": int(num_classes), "network": dict(network or {})}
        self.checkpoint_config = None
        state = None
        if weights != RANDOM:
            path = resolve_weights(weights)
            config, state = load_checkpoint(path)
            check_written_by(path, config, "monai")
            self.config.update({k: config[k] for k in ("arch", "in_channels", "num_classes", "network")})
            self.checkpoint_config = config
            self.weights_path = str(path)
        self.in_channels = self.config["in_channels"]
        self.num_classes = self.config["num_classes"]
        self.net = build_network(self.config["arch"], self.in_channels, self.num_classes,
                                 **self.config["network"])
        if state is not None:
            load_state(self.net, state, self.weights_path, "monai")
        self.eval()
        self.to(device)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise ValueError(f"expected images [B, {self.in_channels}, H, W], got {tuple(images.shape)}")
        return self.net(images)
