"""Train ``example-cnn`` on an ``example-csv`` data set and write its safetensors checkpoint.

    python -m certframe_example_plugin.train ROOT OUT.safetensors [--epochs 30] [--noise-sigma 0.25]

Uses :func:`certframe.training.train_segmenter` (Dice + cross-entropy, Adam, optional
Gaussian noise augmentation, the Gaussian-trained baseline of Cohen et al. 2019),
which writes the best epoch with the network's configuration in the file's metadata;
``TinyCNN(weights=OUT.safetensors)`` (``--segmenter-option weights=OUT.safetensors``)
reads it back.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from certframe.training import TrainResult, train_segmenter

from .dataset import CSVDataset
from .segmenter import TinyCNN


def train(root: str | Path, output: str | Path, *, epochs: int = 30, width: int = 8, noise_sigma: float = 0.25,
          lr: float = 1e-2, batch_size: int = 8, seed: int = 0) -> TrainResult:
    """Train on the ``train`` rows, select the epoch by Dice on the ``val`` rows, save to ``output``."""
    from . import __version__

    import torch

    train_set = CSVDataset(root, split="train")
    val_set = CSVDataset(root, split="val")
    torch.manual_seed(seed)  # the initial weights, so that one seed gives one checkpoint
    model = TinyCNN(in_channels=train_set.in_channels, num_classes=train_set.num_classes, width=width)
    config = {**model.config, "class_names": list(train_set.class_names), "plugin_version": __version__,
              "dataset_identity": train_set.identity()}
    return train_segmenter(model, train_set, val_set, epochs=epochs, batch_size=batch_size, lr=lr,
                           noise_sigma=noise_sigma, seed=seed, checkpoint=Path(output), config=config)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root")
    p.add_argument("output")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--noise-sigma", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    res = train(a.root, a.output, epochs=a.epochs, width=a.width, noise_sigma=a.noise_sigma, seed=a.seed)
    print(f"best val Dice {res.best_dice:.3f} at epoch {res.best_epoch + 1}: {res.checkpoint}")


if __name__ == "__main__":
    main()
