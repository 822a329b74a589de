"""Shared test fixtures: small segmenters whose smoothed behaviour is known in closed form."""
from __future__ import annotations

import pytest
import torch

from certframe.interfaces import Sample, SegmentationDataset, Segmenter


class ThresholdSegmenter(Segmenter):
    """Class 1 where channel 0 > 0.5, else class 0: ``[B, C, H, W] -> logits [B, 2, H, W]``.

    Under noise eps ~ N(0, sigma^2), P(class 1 at pixel i) = Phi((x_i - 0.5) / sigma)
    exactly, which makes the certifier's guarantee checkable.
    """

    num_classes = 2

    def __init__(self, in_channels: int = 1):
        super().__init__()
        self.in_channels = in_channels

    def forward(self, images):
        d = images[:, :1] - 0.5
        return torch.cat([-d, d], dim=1)


class ListDataset(SegmentationDataset):
    """A data set over given (image, mask) pairs."""

    def __init__(self, pairs, class_names=("background", "foreground"), in_channels=1):
        self.pairs = pairs
        self.class_names = class_names
        self.in_channels = in_channels

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        image, mask = self.pairs[i]
        return Sample(image, mask, f"item-{i}")


@pytest.fixture
def threshold_segmenter():
    return ThresholdSegmenter()


@pytest.fixture
def one_thread():
    """Same thread count as the subprocesses (OMP_NUM_THREADS=1), so floating point agrees."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
