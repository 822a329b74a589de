"""What the training tests share (tests/test_training.py, tests/test_train_device.py): one thread per test
module, a seeded untrained MONAI segmenter, the synthetic-lung train/val pair and the ``train segmenter``
command's data options."""
from __future__ import annotations

import torch

from certframe.plugins.datasets.synthetic import SyntheticLung
from certframe.plugins.segmenters.monai_segmenter import MonaiSegmenter


def single_thread():
    """Small networks train faster on one thread than on oversubscribed shared cores; a module that trains
    makes this its module-scoped autouse fixture (``pytest.fixture(scope="module", autouse=True)(single_thread)``),
    so that its module-scoped trained models see the same thread count as its tests."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def untrained_monai(network: dict, seed: int, arch: str = "unet") -> MonaiSegmenter:
    """A MONAI segmenter with random weights drawn after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    return MonaiSegmenter(weights="random", arch=arch, network=network)


def lung_splits(train: int, val: int, size: int = 32) -> tuple[SyntheticLung, SyntheticLung]:
    """The synthetic-lung train and val splits (seed 0) with ``train`` and ``val`` images of ``size`` pixels."""
    return (SyntheticLung(count=train, size=size, seed=0, split="train"),
            SyntheticLung(count=val, size=size, seed=0, split="val"))


def lung_command(count: int, size: int = 32) -> list[str]:
    """``certframe train segmenter`` on synthetic-lung with ``count`` images of ``size`` pixels (no output yet)."""
    return ["train", "segmenter", "--dataset", "synthetic-lung", "--dataset-option", f"count={count}",
            "--dataset-option", f"size={size}"]
