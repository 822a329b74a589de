"""PH2 dermoscopy (Mendonca et al., EMBC 2013): 200 images with lesion masks.

Layout of the download (``PH2Dataset``; ``root`` may be that folder or the
``PH2 Dataset images`` folder inside it)::

    root/PH2 Dataset images/IMD002/IMD002_Dermoscopic_Image/IMD002.bmp   RGB BMP 768x560
    root/PH2 Dataset images/IMD002/IMD002_lesion/IMD002_lesion.bmp      mask BMP (1-bit or 8-bit)
    root/PH2 Dataset images/IMD002/IMD002_roi/...                       ignored
    root/PH2_dataset.xlsx, PH2_dataset.txt                              ignored

Classes: background, lesion; items RGB ``[3, size, size]``.
"""
from __future__ import annotations

from ._files import FileSegmentationDataset, Pair, is_stray

IMAGES_DIR = "PH2 Dataset images"


class PH2(FileSegmentationDataset):
    """PH2 dermoscopy: ``IMDxxx/IMDxxx_Dermoscopic_Image/IMDxxx.bmp`` + ``IMDxxx_lesion/IMDxxx_lesion.bmp``.

    Options: root (required), size (256), split (train/val/test/all; test), seed (0),
    val_fraction (0.1), test_fraction (0.2). Classes: background, lesion; 3 channels.
    """

    name = "ph2"
    class_names = ("background", "lesion")
    in_channels = 3

    def layout_help(self):
        return (f"expected root/{IMAGES_DIR}/IMDxxx/IMDxxx_Dermoscopic_Image/IMDxxx.bmp and "
                f"IMDxxx_lesion/IMDxxx_lesion.bmp")

    def find_pairs(self):
        base = self.root / IMAGES_DIR if (self.root / IMAGES_DIR).is_dir() else self.root
        pairs, unpaired = [], []
        for case in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
            images = _first(case / f"{case.name}_Dermoscopic_Image", case.name)
            if images is None:
                continue  # not a case folder
            mask = _first(case / f"{case.name}_lesion", f"{case.name}_lesion")
            if mask is None:
                unpaired.append(case.name)
            else:
                pairs.append(Pair(case.name, images, (mask,)))
        return pairs, unpaired


def _first(folder, stem):
    if not folder.is_dir():
        return None
    found = sorted(p for p in folder.iterdir() if p.stem == stem and not is_stray(p))
    return found[0] if found else None
