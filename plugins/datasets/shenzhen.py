"""Shenzhen chest X-rays (Jaeger et al., QIMS 2014) with the lung masks of
Stirenko et al. (2018), which exist for 566 of the 662 images.

Layout (``ChinaSet_AllFiles`` with the Kaggle/"shcxr-lung-mask" masks)::

    root/CXR_png/CHNCXR_0001_0.png           grey (sometimes stored RGB) PNG, ~3000x3000
    root/masks/CHNCXR_0001_0_mask.png        lung mask (255)

Only images with a mask are used; the others are reported with a count (a
warning), never dropped silently. Classes: background, lungs; items grey ``[1, size, size]``.
"""
from __future__ import annotations

from ._files import FileSegmentationDataset, list_images, pair_by_stem, require_dir


class Shenzhen(FileSegmentationDataset):
    """Shenzhen chest X-rays: ``CXR_png/X.png`` with ``masks/X_mask.png``.

    Options: root (required), size (256), split (train/val/test/all; test), seed (0),
    val_fraction (0.1), test_fraction (0.2). Classes: background, lungs; 1 channel.
    """

    name = "shenzhen"
    class_names = ("background", "lungs")
    in_channels = 1
    unpaired_note = "; masks were published for a subset of Shenzhen (566 of 662), so this is expected"

    def layout_help(self):
        return "expected root/CXR_png/X.png and root/masks/X_mask.png"

    def find_pairs(self):
        images = list_images(require_dir(self.root / "CXR_png", f"{self.name} images"))
        masks = list_images(require_dir(self.root / "masks", f"{self.name} masks"))
        return pair_by_stem(images, masks, mask_stem=lambda s: f"{s}_mask", dataset=self.name)
