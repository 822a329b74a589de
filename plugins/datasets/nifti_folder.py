"""3-D volumes in the Medical Segmentation Decathlon / nnU-Net raw layout (NIfTI, nibabel)::

    root/dataset.json                 labels and channels (optional)
    root/imagesTr/case_001_0000.nii.gz   nnU-Net v2: one file per channel, suffix _XXXX
    root/imagesTr/case_001.nii.gz        or MSD: one file, channels on a 4th axis
    root/labelsTr/case_001.nii.gz        integer label map on the image's voxel grid

``dataset.json``: ``"labels"`` is either nnU-Net v2's ``{"background": 0, "liver": 1}``
or the Decathlon's ``{"0": "background", "1": "liver"}``; the channels come from
``"channel_names"`` (nnU-Net v2) or ``"modality"`` (MSD), both ``{"0": "CT", ...}``.
Without the file, ``class_names`` and ``in_channels`` are options.

Each item: read with nibabel, turned to RAS+ and the tensor order ``[C, D, H, W]`` =
``[channel, inferior->superior, posterior->anterior, left->right]``
(:mod:`~certframe.plugins.datasets._nifti`), intensity-windowed into ``[0, 1]``,
resampled to ``spacing``, centre-cropped / zero-padded to ``shape``
(:mod:`~certframe.plugins.datasets._volumes`). All of it is in :meth:`identity`, hence in
the run manifest: a certificate's radius is an L2 norm in that windowed space.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from certframe.interfaces import Sample, SegmentationDataset

from ._files import require_dir, split_ids
from ._nifti import AXES, check_same_grid, nifti_stem, read_header, read_volume, require_nibabel
from ._volumes import Window, as_int_labels, as_triple, pad_or_crop, resample

CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def read_dataset_json(root: Path) -> dict:
    """``root/dataset.json`` (or ``{}`` when absent); a clear error when it is not JSON."""
    path = root / "dataset.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{str(path)!r} is not valid JSON: {err}") from None


def class_names_from(meta: dict, where: str) -> tuple[str, ...] | None:
    """Class names in label order from ``meta["labels"]`` (nnU-Net v2 or MSD style), or None."""
    labels = meta.get("labels")
    if not labels:
        return None
    if not isinstance(labels, dict):
        raise ValueError(f"{where}: 'labels' must be a mapping, got {type(labels).__name__}")
    if all(str(k).strip().isdigit() for k in labels):  # MSD: {"0": "background", ...}
        by_value = {int(k): str(v) for k, v in labels.items()}
    else:  # nnU-Net v2: {"background": 0, ...}
        bad = {k: v for k, v in labels.items() if isinstance(v, bool) or not isinstance(v, int)}
        if bad:
            raise ValueError(f"{where}: labels {bad} are not single integers (nnU-Net region-based "
                             f"labels are not supported); expected {{name: index}}")
        by_value = {int(v): str(k) for k, v in labels.items()}
    if sorted(by_value) != list(range(len(by_value))):
        raise ValueError(f"{where}: label values {sorted(by_value)} must be 0 .. K-1 without gaps")
    return tuple(by_value[i] for i in range(len(by_value)))


def channel_names_from(meta: dict) -> tuple[str, ...] | None:
    channels = meta.get("channel_names") or meta.get("modality")
    if not channels:
        return None
    return tuple(str(channels[k]) for k in sorted(channels, key=lambda k: int(k)))


class NiftiFolder(SegmentationDataset):
    """NIfTI volumes in the Medical Segmentation Decathlon / nnU-Net raw layout (needs nibabel).

    ``root/imagesTr/CASE_0000.nii.gz`` (nnU-Net, one file per channel) or
    ``root/imagesTr/CASE.nii.gz`` (MSD), ``root/labelsTr/CASE.nii.gz``, and
    ``root/dataset.json`` with "labels" and "channel_names" / "modality". Items are
    ``Sample(image float32 [C, D, H, W] in [0, 1], mask int64 [D, H, W], id=CASE)``, in RAS+
    order: D inferior -> superior, H posterior -> anterior, W left -> right. The window,
    spacing and shape are recorded in identity() (the run manifest): a certificate's
    radius is an L2 norm over the volume in the windowed [0, 1] space.

    Options: root (required), split (train/val/test/all; "test"), seed (0), val_fraction (0.1),
    test_fraction (0.2) -- seeded splits as in the 2-D file data sets; window
    ("percentile:0.5,99.5"; "ct:LEVEL,WIDTH" for a fixed CT window, e.g. "ct:40,400");
    spacing (None = native; mm, a number or [D, H, W]); shape (None = native; voxels, a
    number or [D, H, W], centred crop / zero pad so that volumes batch); images_dir
    ("imagesTr"), labels_dir ("labelsTr"); class_names and in_channels (from dataset.json
    when present, else ["background", "foreground"] and 1); affine_tolerance (1e-3 mm).
    """

    name = "nifti-folder"
    spatial_dims = 3

    def __init__(self, root: str | Path, split: str = "test", seed: int = 0, val_fraction: float = 0.1,
                 test_fraction: float = 0.2, window: str = "percentile:0.5,99.5",
                 spacing: float | Sequence[float] | None = None, shape: int | Sequence[int] | None = None,
                 images_dir: str = "imagesTr", labels_dir: str = "labelsTr",
                 class_names: Sequence[str] | None = None, in_channels: int | None = None,
                 affine_tolerance: float = 1e-3):
        if root is None or str(root) == "":
            raise ValueError(f"{self.name}: the option 'root' (the data set's folder) is required")
        require_nibabel()  # fail at build time, with the install hint, not at the first item
        self.root = require_dir(Path(root).expanduser(), f"{self.name} root")
        self.window = Window.parse(window)
        self.spacing = as_triple(spacing, f"{self.name}: spacing")
        self.shape = as_triple(shape, f"{self.name}: shape", cast=_whole)
        self.affine_tolerance = float(affine_tolerance)
        self.images_dir, self.labels_dir = images_dir, labels_dir
        meta = read_dataset_json(self.root)
        where = str(self.root / "dataset.json")
        names = tuple(str(c) for c in class_names) if class_names is not None else class_names_from(meta, where)
        self.class_names = names or ("background", "foreground")
        if len(self.class_names) < 2:
            raise ValueError(f"{self.name}: class_names needs at least two names (background first), "
                             f"got {list(self.class_names)}")
        self.channel_names = channel_names_from(meta)
        self.in_channels = int(in_channels) if in_channels is not None else len(self.channel_names or ("",))
        if self.channel_names and len(self.channel_names) != self.in_channels:
            raise ValueError(f"{self.name}: in_channels={in_channels} but {where} names "
                             f"{len(self.channel_names)} channel(s) {list(self.channel_names)}")
        self.split, self.seed = split, int(seed)
        self.val_fraction, self.test_fraction = float(val_fraction), float(test_fraction)
        cases = self._find_cases()
        self.cases = {c: cases[c] for c in split_ids(sorted(cases), split, self.seed, self.val_fraction,
                                                       self.test_fraction)}
        self.ids = list(self.cases)

    # ------------------------------------------------------------------ layout
    def _find_cases(self) -> dict[str, tuple[tuple[Path, ...], Path]]:
        """case -> (image files, one per channel or one 4-D file; label file)."""
        images_dir = require_dir(self.root / self.images_dir, f"{self.name} images")
        labels_dir = require_dir(self.root / self.labels_dir, f"{self.name} labels")
        images = {s: p for p in images_dir.iterdir() if (s := nifti_stem(p))}
        labels = {s: p for p in labels_dir.iterdir() if (s := nifti_stem(p))}
        cases, used = {}, set()
        for case, label in sorted(labels.items()):
            if case in images:  # MSD: one file per case
                files = (images[case],)
            else:  # nnU-Net v2: case_0000, case_0001, ...
                stems = [f"{case}_{c:04d}" for c in range(self.in_channels)]
                missing = [s for s in stems if s not in images]
                if len(missing) == len(stems):
                    raise FileNotFoundError(f"{self.name}: case {case!r} has the label map {str(label)!r} but no "
                                            f"image: expected {self.images_dir}/{case}.nii.gz (MSD) or "
                                            f"{self.images_dir}/{case}_0000.nii.gz (nnU-Net)")
                if missing:
                    raise FileNotFoundError(f"{self.name}: case {case!r} lacks the channel file(s) "
                                            f"{[s + '.nii.gz' for s in missing]} of its {self.in_channels} channels")
                files = tuple(images[s] for s in stems)
            used.update(nifti_stem(p) for p in files)
            cases[case] = (files, label)
        orphans = sorted({_case_of(s) for s in images if s not in used})
        if orphans:
            shown = ", ".join(orphans[:5]) + (", ..." if len(orphans) > 5 else "")
            raise FileNotFoundError(f"{self.name}: {len(orphans)} case(s) in {str(images_dir)!r} have no label "
                                    f"map ({shown}): expected {self.labels_dir}/{orphans[0]}.nii.gz; move "
                                    f"unlabelled cases to imagesTs/")
        if not cases:
            raise FileNotFoundError(f"{self.name}: no labelled cases under {str(self.root)!r}; expected "
                                    f"{self.images_dir}/CASE_0000.nii.gz (or CASE.nii.gz) and "
                                    f"{self.labels_dir}/CASE.nii.gz")
        return cases

    # ------------------------------------------------------------------- items
    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Sample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        case = self.ids[index]
        files, label_path = self.cases[case]
        label_img = read_header(label_path)
        channels = []
        for path in files:
            img = read_header(path)
            vol = read_volume(path, self.in_channels if len(files) == 1 else 1, image=img)  # checks it is 3-D
            check_same_grid(case, img, label_img, path, label_path, self.affine_tolerance)
            channels.append(vol.data)
        data = np.concatenate(channels, axis=0)
        if data.shape[0] != self.in_channels:
            raise ValueError(f"case {case!r}: {data.shape[0]} channel(s) read from {[str(p) for p in files]}, "
                             f"the data set declares in_channels={self.in_channels}")
        label = read_volume(label_path, 1, image=label_img)
        mask = torch.from_numpy(as_int_labels(label.data, f"case {case!r}: {str(label_path)!r}"))
        found = sorted(torch.unique(mask).tolist())
        if not set(found) <= set(range(self.num_classes)):
            raise ValueError(f"case {case!r}: the label map {str(label_path)!r} has labels {found}, the data set "
                             f"declares classes {list(range(self.num_classes))} ({', '.join(self.class_names)})")
        image = self.window.apply(torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)))
        image = pad_or_crop(resample(image, vol.spacing, self.spacing), self.shape).clamp_(0.0, 1.0)
        mask = pad_or_crop(resample(mask, label.spacing, self.spacing, labels=True), self.shape)
        return Sample(image.float().contiguous(), mask[0].long().contiguous(), case)

    def item_ids(self) -> list[str]:
        return list(self.ids)

    def identity(self) -> dict:
        return {"class": type(self).__name__, "name": self.name, "root": str(self.root), "split": self.split,
                "seed": self.seed, "val_fraction": self.val_fraction, "test_fraction": self.test_fraction,
                "len": len(self), "axes": AXES, "orientation": "RAS",
                "spacing": list(self.spacing) if self.spacing else "native",
                "shape": list(self.shape) if self.shape else "native",
                "resampling": "trilinear (image), nearest (labels), align_corners=False; window before resampling",
                "intensity": self.window.identity(), "channels": list(self.channel_names or ()),
                "class_names": list(self.class_names)}


def _whole(v) -> int:
    if int(v) != v:
        raise ValueError(f"expected a whole number of voxels, got {v!r}")
    return int(v)


def _case_of(stem: str) -> str:
    m = CHANNEL_SUFFIX.match(stem)
    return m.group("case") if m else stem
