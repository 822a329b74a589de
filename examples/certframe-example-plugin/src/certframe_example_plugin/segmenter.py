"""``example-cnn``: a three-layer CNN segmenter whose weights are a safetensors file."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from certframe.checkpoint import load_checkpoint
from certframe.interfaces import Segmenter

MODEL = "example-cnn"


class TinyCNN(Segmenter):
    """A small fully convolutional segmenter (3x3 conv, ReLU, dilated 3x3 conv, ReLU, 1x1 conv).

    ``forward(images [B, C, H, W] float, [0, 1] or noisy) -> logits [B, K, H, W]``; any
    H x W. The input is centred (``x - 0.5``) inside ``forward``: normalisation
    belongs to the model, noise is added by certframe in ``[0, 1]`` space.

    Options (``--segmenter-option KEY=VALUE``):

    * ``weights``: path of a ``.safetensors`` file written by
      ``python -m certframe_example_plugin.train`` (or any
      :func:`certframe.checkpoint.save_checkpoint` of this network). Its metadata
      holds the architecture (``in_channels``, ``num_classes``, ``width``), which then
      overrides the options below. Without weights the network is randomly
      initialised (from torch's RNG), which is what training starts from.
    * ``in_channels`` (1), ``num_classes`` (2), ``width`` (8): the architecture.
    * ``device`` ("cpu"): where the weights are loaded.
    """

    def __init__(self, weights: str | None = None, in_channels: int = 1, num_classes: int = 2,
                 width: int = 8, device: str = "cpu"):
        super().__init__()
        config = {"model": MODEL, "in_channels": int(in_channels), "num_classes": int(num_classes),
                  "width": int(width)}
        state = None
        if weights is not None:
            saved, state = load_checkpoint(Path(weights))  # safetensors only, never a pickle
            if saved.get("model") != MODEL:
                raise ValueError(f"{weights!s} holds weights for model {saved.get('model')!r}, not {MODEL!r}; "
                                 f"train one with `python -m certframe_example_plugin.train`")
            config = {k: saved[k] for k in config}
            self.weights_path = str(weights)
        if config["in_channels"] < 1 or config["num_classes"] < 2 or config["width"] < 1:
            raise ValueError(f"need in_channels >= 1, num_classes >= 2, width >= 1; got {config}")
        self.config = config
        self.in_channels, self.num_classes = config["in_channels"], config["num_classes"]
        w = config["width"]
        self.net = nn.Sequential(
            nn.Conv2d(self.in_channels, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=2, dilation=2), nn.ReLU(),
            nn.Conv2d(w, self.num_classes, 1),
        )
        if state is not None:
            self.net.load_state_dict(state)
        self.eval()
        self.to(device)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise ValueError(f"{MODEL} expects images [B, {self.in_channels}, H, W], got {tuple(images.shape)}")
        return self.net(images - 0.5)
