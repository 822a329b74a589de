"""Reproduce the bundled segmenter weights (certframe/plugins/weights/).

    python examples/train_builtin_weights.py [OUT_DIR]   # default: the bundled folder

Trains a small MONAI UNet on the synthetic-lung train split, once on clean
images and once with Gaussian noise augmentation at sigma 0.25 (the
Gaussian-trained baseline), and writes safetensors files with their
configuration. Deterministic for a given torch version on CPU.
"""
from pathlib import Path

import torch

from certframe.plugins.datasets.synthetic import SyntheticLung
from certframe.plugins.segmenters.monai_segmenter import WEIGHTS_DIR, MonaiSegmenter
from certframe.training.segmenter import train_segmenter

NETWORK = {"channels": [8, 16, 32, 64], "strides": [2, 2, 2], "num_res_units": 1}


def main(out: Path = WEIGHTS_DIR, epochs: int = 12):
    """Train both bundled models into ``out`` (no resume state next to shipped weights)."""
    torch.set_num_threads(2)
    train = SyntheticLung(count=256, size=64, seed=0, split="train")
    val = SyntheticLung(count=32, size=64, seed=0, split="val")
    for name, sigma in (("synthetic-lung", 0.0), ("synthetic-lung-noise0.25", 0.25)):
        torch.manual_seed(0)  # the initial weights too, not only the training loop
        model = MonaiSegmenter(weights="random", arch="unet", in_channels=1, num_classes=2, network=NETWORK)
        config = {**model.config, "class_names": list(train.class_names), "dataset": "synthetic-lung"}
        res = train_segmenter(model, train, val, epochs=epochs, batch_size=16, lr=3e-3, noise_sigma=sigma,
                              seed=0, checkpoint=out / f"{name}.safetensors", config=config, save_state=False,
                              on_epoch=lambda r: print(name, r))
        print(f"{name}: best val Dice {res.best_dice:.3f} at epoch {res.best_epoch}")


if __name__ == "__main__":
    import sys

    main(Path(sys.argv[1]) if len(sys.argv) > 1 else WEIGHTS_DIR)
