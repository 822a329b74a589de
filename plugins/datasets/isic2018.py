"""ISIC 2018 Task 1, lesion boundary segmentation (Codella et al. 2019; Tschandl et al. 2018).

Layout of the challenge downloads (any subset of the three pairs may be present)::

    root/ISIC2018_Task1-2_Training_Input/ISIC_0000000.jpg                       RGB JPEG
    root/ISIC2018_Task1_Training_GroundTruth/ISIC_0000000_segmentation.png      mask PNG (255)
    root/ISIC2018_Task1-2_Validation_Input/...  root/ISIC2018_Task1_Validation_GroundTruth/...
    root/ISIC2018_Task1-2_Test_Input/...        root/ISIC2018_Task1_Test_GroundTruth/...

``ATTRIBUTION.txt``, ``LICENSE.txt`` and other stray files are skipped.

Splits: with ``official_splits="auto"`` (default) the challenge's own
Training / Validation / Test sets are used when all three input and ground-truth
folders exist; otherwise the pairs found are split with the seeded split (with a
:class:`PartialOfficialSplitsWarning` naming the missing folders when some of the
Validation / Test folders exist: the challenge's split was probably meant).
``official_splits=True`` demands the shipped folders (error naming the missing
one), ``False`` always uses the seeded split over every pair found.
Classes: background, lesion; items RGB ``[3, size, size]``.
"""
from __future__ import annotations

import logging
import warnings

from ._files import FileSegmentationDataset, list_images, pair_by_stem

log = logging.getLogger(__name__)

PHASES = {"train": "Training", "val": "Validation", "test": "Test"}


class PartialOfficialSplitsWarning(UserWarning):
    """Some of the challenge's Validation / Test folders exist but not all: the seeded split is used."""


def folders(phase: str) -> tuple[str, str]:
    return f"ISIC2018_Task1-2_{phase}_Input", f"ISIC2018_Task1_{phase}_GroundTruth"


class ISIC2018(FileSegmentationDataset):
    """ISIC 2018 Task 1: ``ISIC2018_Task1-2_<Phase>_Input/ISIC_x.jpg`` + ``..._GroundTruth/ISIC_x_segmentation.png``.

    Options: root (required), size (256), split (train/val/test/all; test), seed (0),
    val_fraction (0.1), test_fraction (0.2), official_splits ("auto", true, false).
    Classes: background, lesion; 3 channels.
    """

    name = "isic2018"
    class_names = ("background", "lesion")
    in_channels = 3

    def __init__(self, root, size=256, split="test", seed=0, val_fraction=0.1, test_fraction=0.2,
                 official_splits: bool | str = "auto"):
        if official_splits not in ("auto", True, False):
            raise ValueError(f"official_splits must be 'auto', true or false, got {official_splits!r}")
        self.official_splits = official_splits
        self._phase_of: dict[str, str] = {}
        super().__init__(root, size, split, seed, val_fraction, test_fraction)

    def layout_help(self):
        return "expected " + " with ".join(folders("Training")) + " (and/or the Validation/Test folders)"

    def _present(self, phase):
        return all((self.root / f).is_dir() for f in folders(phase))

    def find_pairs(self):
        present = {k: self._present(p) for k, p in PHASES.items()}
        if self.official_splits is True and not all(present.values()):
            missing = [f for p in PHASES.values() for f in folders(p) if not (self.root / f).is_dir()]
            raise FileNotFoundError(f"{self.name}: official_splits=true needs the folders "
                                    f"{', '.join(missing)} under {str(self.root)!r}")
        self.use_official = self.official_splits is not False and all(present.values())
        extra = [f for p in ("Validation", "Test") for f in folders(p) if (self.root / f).is_dir()]
        if self.official_splits == "auto" and extra and not self.use_official:
            missing = [f for p in PHASES.values() for f in folders(p) if not (self.root / f).is_dir()]
            msg = (f"{self.name}: the official splits need all six folders, {', '.join(missing)} missing under "
                   f"{str(self.root)!r}; using the seeded split over every pair found (official_splits=true "
                   f"makes this an error)")
            log.warning(msg)
            warnings.warn(msg, PartialOfficialSplitsWarning, stacklevel=4)
        pairs, unpaired = [], []
        for key, phase in PHASES.items():
            if not present[key]:
                continue
            image_dir, mask_dir = (self.root / f for f in folders(phase))
            images = [p for p in list_images(image_dir) if not p.stem.endswith("_superpixels")]
            got, missing = pair_by_stem(images, list_images(mask_dir), lambda s: f"{s}_segmentation",
                                        dataset=self.name)
            pairs += got
            unpaired += missing
            self._phase_of.update({p.id: key for p in got})
        return pairs, unpaired

    def select(self, ids):
        if not self.use_official:
            return super().select(ids)
        if self.split == "all":
            return ids
        if self.split not in PHASES:
            return super().select(ids)  # raises the split error
        return [i for i in ids if self._phase_of[i] == self.split]

    def identity(self):
        return {**super().identity(), "official_splits": self.use_official}
