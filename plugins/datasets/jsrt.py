"""JSRT chest X-rays (Shiraishi et al., AJR 2000) with the SCR organ masks
(van Ginneken et al., MedIA 2006): 247 images, lungs, heart and clavicles.

Layout of the downloads (found anywhere under ``root``)::

    root/All247images/JPCLN001.IMG           headerless 2048x2048, 12-bit values in
                                             big-endian uint16, 0 = white (inverted)
    root/scratch/fold1/masks/left lung/JPCLN001.gif        1024x1024 GIF masks, one per organ:
    root/scratch/fold1/masks/right lung/JPCLN001.gif       left lung, right lung, heart,
    root/scratch/fold1/masks/heart/JPCLN001.gif            left clavicle, right clavicle
    root/scratch/fold1/masks/left clavicle/JPCLN001.gif    (fold1 and fold2 hold
    root/scratch/fold1/masks/right clavicle/JPCLN001.gif    different images)

Images are read as ``1 - raw / 4095`` (the raw values are optical density: high =
dark), a grey ``[1, size, size]`` in [0, 1]; the 1024x1024 masks share the image's
field of view and are resized to it with nearest neighbour.

Classes, as in Laousy et al. (MICCAI 2023): 0 background, 1 lungs (left and right),
2 heart, 3 clavicles (left and right). The SCR masks overlap (the clavicles lie over
the lung apices; the heart's outline can overlap the lungs'): overlaps are
resolved by painting lungs, then heart, then clavicles, so a pixel in both a
lung and a clavicle is a clavicle, and one in both lung and heart is heart.
An image without all five organ masks is reported as unpaired.
"""
from __future__ import annotations

import numpy as np

from ._files import FileSegmentationDataset, Pair, binary_mask, read_array, read_raw

ORGANS = ("left lung", "right lung", "heart", "left clavicle", "right clavicle")
LABELS = {"left lung": 1, "right lung": 1, "heart": 2, "left clavicle": 3, "right clavicle": 3}
PAINT_ORDER = ("left lung", "right lung", "heart", "left clavicle", "right clavicle")


class JSRT(FileSegmentationDataset):
    """JSRT + SCR masks: ``*.IMG`` 12-bit raw images with per-organ GIF masks.

    Options: root (required), size (256), split (train/val/test/all; test), seed (0),
    val_fraction (0.1), test_fraction (0.2), image_size (2048: the raw side length).
    Classes: background, lungs, heart, clavicles; 1 channel. Default label hierarchy (for
    ``--certifier hierarchical``): background | chest organs {cardiopulmonary {lungs, heart},
    clavicles} (the lungs touch the heart and lie under the clavicles).
    """

    name = "jsrt"
    class_names = ("background", "lungs", "heart", "clavicles")
    in_channels = 1
    default_hierarchy = {"name": "chest-organs", "root": ["background", "chest organs"],
                         "groups": {"chest organs": ["cardiopulmonary", "clavicles"],
                                    "cardiopulmonary": ["lungs", "heart"]}}

    def __init__(self, root, size=256, split="test", seed=0, val_fraction=0.1, test_fraction=0.2,
                 image_size: int = 2048):
        self.image_size = int(image_size)
        super().__init__(root, size, split, seed, val_fraction, test_fraction)

    def layout_help(self):
        return ("expected *.IMG raw images and SCR mask folders named "
                + ", ".join(repr(o) for o in ORGANS) + " holding <image stem>.gif")

    def find_pairs(self):
        images = sorted(p for p in self.root.rglob("*") if p.suffix.lower() == ".img"
                        and p.is_file() and not p.name.startswith("."))
        organ_files: dict[str, dict[str, object]] = {o: {} for o in ORGANS}
        for folder in sorted(p for p in self.root.rglob("*") if p.is_dir() and p.name.lower() in ORGANS):
            for f in sorted(folder.iterdir()):
                if f.suffix.lower() == ".gif" and not f.name.startswith("."):
                    organ_files[folder.name.lower()].setdefault(f.stem.upper(), f)
        pairs, unpaired = [], []
        for img in images:
            masks = tuple(organ_files[o].get(img.stem.upper()) for o in ORGANS)
            if all(masks):
                pairs.append(Pair(img.stem, img, masks))
            else:
                unpaired.append(img.stem)
        return pairs, unpaired

    def load_image(self, pair):
        raw = read_raw(pair.image, (self.image_size, self.image_size), ">u2")
        top = int(raw.max())
        if top > 4095:
            raise ValueError(f"{self.name}: {str(pair.image)!r} holds the value {top}; JSRT images are "
                             f"12-bit (0..4095) big-endian: is this a little-endian or other raw file?")
        return 1.0 - raw.astype(np.float32) / 4095.0

    def load_mask(self, pair):
        mask = None
        organs = dict(zip(ORGANS, pair.masks))
        for organ in PAINT_ORDER:
            m = binary_mask(read_array(organs[organ]), path=organs[organ])
            if mask is None:
                mask = np.zeros(m.shape, dtype=np.int64)
            elif m.shape != mask.shape:
                raise ValueError(f"{self.name}: mask {str(organs[organ])!r} is {m.shape}, "
                                 f"the other masks of {pair.id} are {mask.shape}")
            mask[m] = LABELS[organ]
        return mask
