"""Training a segmenter: MONAI Dice + cross-entropy loss, Adam, optional Gaussian
noise augmentation (the Gaussian-trained baseline of Cohen et al. 2019 / Salman
et al. 2019: train on ``x + eps``, eps ~ N(0, sigma^2 I), in [0, 1] pixel space).

The best checkpoint by validation Dice is saved as safetensors with its
configuration (see :mod:`certframe.checkpoint`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from certframe import metrics
from certframe.checkpoint import save_checkpoint
from certframe.interfaces import SegmentationDataset, Segmenter


def stack(dataset: SegmentationDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """All images ``[N, C, H, W]`` and masks ``[N, H, W]`` of a (small) data set."""
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([s.image for s in items]), torch.stack([s.mask for s in items])


@dataclass
class TrainResult:
    best_dice: float
    best_epoch: int
    history: list[dict] = field(default_factory=list)
    checkpoint: Path | None = None


def evaluate_dice(model: Segmenter, images: torch.Tensor, masks: torch.Tensor, num_classes: int,
                  batch_size: int = 32, device="cpu") -> float:
    """Mean foreground Dice of ``model`` over images ``[N, C, H, W]``."""
    model.eval()
    scores = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            pred = model(images[i:i + batch_size].to(device)).argmax(1).cpu()
            scores += [metrics.mean_dice(p, m, num_classes) for p, m in zip(pred, masks[i:i + batch_size])]
    return sum(scores) / max(len(scores), 1)


def train_segmenter(model: Segmenter, train: SegmentationDataset, val: SegmentationDataset, *,
                    epochs: int = 10, batch_size: int = 16, lr: float = 1e-3, noise_sigma: float = 0.0,
                    seed: int = 0, device: str | torch.device = "cpu", checkpoint: str | Path | None = None,
                    config: dict | None = None,
                    on_epoch: Callable[[dict], None] | None = None) -> TrainResult:
    """Train ``model`` (a :class:`Segmenter` holding an ``nn.Module``) in place.

    noise_sigma: std of the Gaussian augmentation in [0, 1] pixel units (0 = clean).
    Validation Dice is measured on clean images for clean training and on one
    fixed noisy copy per image for noise training. Returns the best epoch's Dice.
    """
    from monai.losses import DiceCELoss

    torch.manual_seed(seed)
    device = torch.device(device)
    model.to(device)
    images, masks = stack(train)
    val_images, val_masks = stack(val)
    if noise_sigma > 0:
        g = torch.Generator().manual_seed(seed + 1)
        val_images = val_images + noise_sigma * torch.randn(val_images.shape, generator=g)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optim = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    result = TrainResult(best_dice=-1.0, best_epoch=-1)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(images), generator=g)
        total = 0.0
        for i in range(0, len(images), batch_size):
            idx = order[i:i + batch_size]
            x, y = images[idx], masks[idx]
            if torch.rand(1, generator=g) < 0.5:  # horizontal flip
                x, y = x.flip(-1), y.flip(-1)
            if noise_sigma > 0:
                x = x + noise_sigma * torch.randn(x.shape, generator=g)
            x, y = x.to(device), y.to(device)
            optim.zero_grad()
            loss = loss_fn(model(x), y.unsqueeze(1))
            loss.backward()
            optim.step()
            total += loss.item() * len(idx)
        dice = evaluate_dice(model, val_images, val_masks, train.num_classes, batch_size, device)
        record = {"epoch": epoch, "loss": total / len(images), "val_dice": dice}
        result.history.append(record)
        if dice > result.best_dice:
            result.best_dice, result.best_epoch = dice, epoch
            if checkpoint is not None:
                cfg = dict(config or {})
                cfg["training"] = {"epochs": epochs, "batch_size": batch_size, "lr": lr,
                                   "noise_sigma": noise_sigma, "seed": seed, "best_epoch": epoch,
                                   "val_dice": dice}
                result.checkpoint = save_checkpoint(checkpoint, model.net if hasattr(model, "net") else model, cfg)
        if on_epoch is not None:
            on_epoch(record)
    model.eval()
    return result
