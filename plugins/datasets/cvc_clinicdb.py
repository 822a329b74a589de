"""CVC-ClinicDB (Bernal et al., CMIG 2015): 612 frames from 31 colonoscopy videos.

Layout of the official download, or of its common PNG redistribution (same
folder names, ``.png`` instead of ``.tif``)::

    root/Original/1.tif          RGB TIFF, 384x288 (some only tifffile can read)
    root/Ground Truth/1.tif      mask TIFF (255 = polyp)

Classes: background, polyp; items RGB ``[3, size, size]``. Ids are the file
stems; the seeded split is per frame: frames of one video are alike, so a per-frame
split is optimistic (the paper's protocol, noted here so readers know).
"""
from __future__ import annotations

from ._files import FileSegmentationDataset, list_images, pair_by_stem, require_dir


class CVCClinicDB(FileSegmentationDataset):
    """CVC-ClinicDB polyps: ``root/Original/N.tif`` with ``root/Ground Truth/N.tif`` (or .png).

    Options: root (required), size (256), split (train/val/test/all; test), seed (0),
    val_fraction (0.1), test_fraction (0.2). Classes: background, polyp; 3 channels.
    """

    name = "cvc-clinicdb"
    class_names = ("background", "polyp")
    in_channels = 3

    def layout_help(self):
        return "expected root/Original/N.tif (or .png) and root/Ground Truth/N.tif (or .png)"

    def find_pairs(self):
        images = list_images(require_dir(self.root / "Original", f"{self.name} images"))
        masks = list_images(require_dir(self.root / "Ground Truth", f"{self.name} masks"))
        return pair_by_stem(images, masks, dataset=self.name)
