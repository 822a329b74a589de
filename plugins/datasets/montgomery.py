"""Montgomery County chest X-rays (Jaeger et al., QIMS 2014): 138 images, lung masks.

Layout of the download (``NLM-MontgomeryCXRSet``)::

    root/CXR_png/MCUCXR_0001_0.png                 grey PNG, about 4020x4892
    root/ManualMask/leftMask/MCUCXR_0001_0.png     left lung (255)
    root/ManualMask/rightMask/MCUCXR_0001_0.png    right lung (255)
    root/ClinicalReadings/*.txt                    ignored

Classes: background, lungs (the union of both masks). Items grey ``[1, size, size]``.
An image needs both masks; one with a missing side is reported as unpaired.
"""
from __future__ import annotations

import numpy as np

from ._files import FileSegmentationDataset, Pair, binary_mask, list_images, read_array, require_dir


class Montgomery(FileSegmentationDataset):
    """Montgomery chest X-rays: ``CXR_png/*.png`` with ``ManualMask/{leftMask,rightMask}/*.png``.

    Options: root (required), size (256), split (train/val/test/all; test), seed (0),
    val_fraction (0.1), test_fraction (0.2). Classes: background, lungs; 1 channel.
    """

    name = "montgomery"
    class_names = ("background", "lungs")
    in_channels = 1

    def layout_help(self):
        return "expected root/CXR_png/*.png and root/ManualMask/leftMask|rightMask/*.png"

    def find_pairs(self):
        images = list_images(require_dir(self.root / "CXR_png", f"{self.name} images"))
        sides = []
        for side in ("leftMask", "rightMask"):
            folder = require_dir(self.root / "ManualMask" / side, f"{self.name} {side}")
            sides.append({p.stem: p for p in list_images(folder)})
        pairs, unpaired = [], []
        for img in images:
            masks = tuple(s.get(img.stem) for s in sides)
            if all(masks):
                pairs.append(Pair(img.stem, img, masks))
            else:
                unpaired.append(img.stem)
        return pairs, unpaired

    def load_mask(self, pair):
        left, right = (binary_mask(read_array(p), path=p) for p in pair.masks)
        if left.shape != right.shape:
            raise ValueError(f"{self.name}: left mask {str(pair.masks[0])!r} is {left.shape}, "
                             f"right mask {str(pair.masks[1])!r} is {right.shape}")
        return (left | right).astype(np.int64)
