"""Kvasir-SEG (Jha et al., MMM 2020): 1000 colonoscopy images with polyp masks.

Layout of the download (``kvasir-seg.zip``)::

    root/images/cju0qkwl35piu0993l0dewei2.jpg   RGB JPEG, sizes from 332x487 to 1920x1072
    root/masks/cju0qkwl35piu0993l0dewei2.jpg    JPEG mask (white polyp on black)
    root/kavsir_bboxes.json                      ignored

The masks are JPEGs, so their edges carry compression artefacts (values such as 3
or 251): they are thresholded at ``mask_threshold`` (default 0.5 of full scale).
Classes: background, polyp. Items: RGB ``[3, size, size]`` in [0, 1]. No official
split: a seeded train/val/test split (see :mod:`certframe.plugins.datasets._files`).
"""
from __future__ import annotations

import numpy as np

from ._files import FileSegmentationDataset, binary_mask, list_images, pair_by_stem, read_array, require_dir


class KvasirSEG(FileSegmentationDataset):
    """Kvasir-SEG polyps: ``root/images/*.jpg`` with ``root/masks/*.jpg`` (same stem).

    Options: root (required), size (256), split (train/val/test/all; test), seed (0),
    val_fraction (0.1), test_fraction (0.2), mask_threshold (0.5).
    Classes: background, polyp; 3 channels.
    """

    name = "kvasir-seg"
    class_names = ("background", "polyp")
    in_channels = 3

    def __init__(self, root, size=256, split="test", seed=0, val_fraction=0.1, test_fraction=0.2,
                 mask_threshold: float = 0.5):
        self.mask_threshold = float(mask_threshold)
        super().__init__(root, size, split, seed, val_fraction, test_fraction)

    def layout_help(self):
        return "expected root/images/*.jpg and root/masks/*.jpg with matching names"

    def find_pairs(self):
        images = list_images(require_dir(self.root / "images", f"{self.name} images"))
        masks = list_images(require_dir(self.root / "masks", f"{self.name} masks"))
        return pair_by_stem(images, masks, dataset=self.name)

    def load_mask(self, pair):
        return binary_mask(read_array(pair.masks[0]), self.mask_threshold, pair.masks[0]).astype(np.int64)
