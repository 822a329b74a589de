"""Any segmentation data set laid out as two folders with matching file stems::

    root/images/case01.png     any common format: PNG, JPEG, BMP, GIF, TIFF
    root/masks/case01.png      (or case01<mask_suffix>.png)

Masks are read either as binary masks thresholded at ``mask_threshold`` (in units
of the full scale: 0.5 means 128 of 255), or, with ``mask_mode="labels"``, as label
maps whose pixel values are the class indices ``0 .. len(class_names) - 1``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ._files import (
    CorruptFileError,
    FileSegmentationDataset,
    binary_mask,
    list_images,
    pair_by_stem,
    read_array,
    require_dir,
)


class FolderDataset(FileSegmentationDataset):
    """``root/images`` + ``root/masks`` with matching stems.

    Options: root (required), size (256), split (train/val/test/all; test), seed (0),
    val_fraction (0.1), test_fraction (0.2), images_dir ("images"), masks_dir ("masks"),
    mask_suffix (""; e.g. "_mask" pairs x.png with x_mask.png), mask_mode ("threshold"
    or "labels"), mask_threshold (0.5), class_names (["background", "foreground"]),
    in_channels (3; 1 for grey).
    """

    name = "folder"

    def __init__(self, root, size=256, split="test", seed=0, val_fraction=0.1, test_fraction=0.2,
                 images_dir: str = "images", masks_dir: str = "masks", mask_suffix: str = "",
                 mask_mode: str = "threshold", mask_threshold: float = 0.5,
                 class_names: Sequence[str] = ("background", "foreground"), in_channels: int = 3):
        if mask_mode not in ("threshold", "labels"):
            raise ValueError(f"mask_mode must be 'threshold' or 'labels', got {mask_mode!r}")
        if int(in_channels) not in (1, 3):
            raise ValueError(f"in_channels must be 1 (grey) or 3 (RGB), got {in_channels!r}")
        class_names = tuple(str(c) for c in class_names)
        if len(class_names) < 2:
            raise ValueError(f"class_names needs at least two names (background first), got {list(class_names)}")
        if mask_mode == "threshold" and len(class_names) != 2:
            raise ValueError(f"mask_mode='threshold' makes binary masks, so class_names must have 2 names, "
                             f"got {list(class_names)}; use mask_mode='labels' for label maps")
        self.class_names, self.in_channels = class_names, int(in_channels)
        self.images_dir, self.masks_dir, self.mask_suffix = images_dir, masks_dir, mask_suffix
        self.mask_mode, self.mask_threshold = mask_mode, float(mask_threshold)
        super().__init__(root, size, split, seed, val_fraction, test_fraction)

    def layout_help(self):
        return f"expected root/{self.images_dir}/X.ext and root/{self.masks_dir}/X{self.mask_suffix}.ext"

    def find_pairs(self):
        images = list_images(require_dir(self.root / self.images_dir, f"{self.name} images"))
        masks = list_images(require_dir(self.root / self.masks_dir, f"{self.name} masks"))
        return pair_by_stem(images, masks, mask_stem=lambda s: s + self.mask_suffix, dataset=self.name)

    def load_mask(self, pair):
        path = pair.masks[0]
        arr = read_array(path)
        if self.mask_mode == "threshold":
            return binary_mask(arr, self.mask_threshold, path).astype(np.int64)
        if arr.ndim == 3:
            if not (arr[..., :3] == arr[..., :1]).all():
                raise CorruptFileError(f"label map {str(path)!r} is a colour image; expected one "
                                       f"channel of class indices")
            arr = arr[..., 0]
        if np.issubdtype(arr.dtype, np.floating) or arr.dtype == bool:
            arr = arr.astype(np.int64) if arr.dtype == bool else arr
            if np.issubdtype(arr.dtype, np.floating):
                raise CorruptFileError(f"label map {str(path)!r} holds floats; expected integer class indices")
        labels = np.unique(arr)
        bad = [int(v) for v in labels if not 0 <= v < len(self.class_names)]
        if bad:
            raise ValueError(f"label map {str(path)!r} has labels {[int(v) for v in labels]}, the data set "
                             f"declares classes {list(range(len(self.class_names)))} "
                             f"({', '.join(self.class_names)})")
        return arr.astype(np.int64)

    def identity(self):
        return {**super().identity(), "mask_mode": self.mask_mode, "class_names": list(self.class_names)}
