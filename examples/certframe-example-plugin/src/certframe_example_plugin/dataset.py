"""``example-csv``: a segmentation data set listed in a CSV file.

Layout (paths in the CSV are relative to ``root``)::

    root/index.csv            image,mask,split
                              images/case01.png,masks/case01.png,train
                              images/case02.png,masks/case02.png,test
    root/images/*.png         any format Pillow reads; grey or RGB
    root/masks/*.png          binary masks (foreground = value >= half the full scale)

The ``split`` column is optional (without it every row belongs to ``split="all"``);
an ``id`` column, if present, names the items (default: the image's file stem).
"""
from __future__ import annotations

import csv
import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from certframe.interfaces import Sample, SegmentationDataset

SPLITS = ("train", "val", "test", "all")


class CSVDataset(SegmentationDataset):
    """Images and binary masks listed in ``root/<csv>``; items ``Sample(image float32
    [C, H, W] in [0, 1], mask int64 [H, W] in {0, 1}, id)``.

    Options (``--dataset-option KEY=VALUE``):

    * ``root`` (required): the folder holding the CSV file and the images.
    * ``csv`` ("index.csv"): the CSV file name, relative to ``root``.
    * ``split`` ("all"): keep the rows whose ``split`` column is train, val or test.
    * ``size`` (None): resize every item to ``size`` x ``size`` (image bilinear, mask
      nearest) BEFORE certification; ``None`` keeps the files' size.
    * ``in_channels`` (1): 1 reads images as grey, 3 as RGB.
    * ``class_names`` (["background", "foreground"]).
    """

    def __init__(self, root: str, csv: str = "index.csv", split: str = "all", size: int | None = None,
                 in_channels: int = 1, class_names: Sequence[str] = ("background", "foreground")):
        self.root = Path(root).expanduser()
        self.csv_path = self.root / csv
        if not self.csv_path.is_file():
            raise FileNotFoundError(f"example-csv: no CSV file at {str(self.csv_path)!r} (expected "
                                    f"root/{csv} with columns image,mask[,split][,id])")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        if int(in_channels) not in (1, 3):
            raise ValueError(f"in_channels must be 1 (grey) or 3 (RGB), got {in_channels!r}")
        if size is not None and int(size) < 1:
            raise ValueError(f"size must be a positive number of pixels or None, got {size!r}")
        class_names = tuple(str(c) for c in class_names)
        if len(class_names) != 2:
            raise ValueError(f"masks are binary, so class_names needs exactly 2 names, got {list(class_names)}")
        self.split, self.size, self.in_channels, self.class_names = split, size and int(size), int(in_channels), class_names
        text = self.csv_path.read_text(encoding="utf-8")
        self.csv_sha256 = hashlib.sha256(text.encode()).hexdigest()
        rows = list(_read_rows(text, self.csv_path))
        if split != "all":
            rows = [r for r in rows if r.get("split") == split]
        if not rows:
            raise ValueError(f"example-csv: {str(self.csv_path)!r} lists no rows for split {split!r}")
        ids = [r.get("id") or Path(r["image"]).stem for r in rows]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"example-csv: ids {dup[:5]} appear more than once in {str(self.csv_path)!r}; "
                             f"add an id column")
        for r in rows:
            for col in ("image", "mask"):
                if not (self.root / r[col]).is_file():
                    raise FileNotFoundError(f"example-csv: {col} {r[col]!r} listed in {str(self.csv_path)!r} "
                                            f"does not exist under {str(self.root)!r}")
        self.rows, self.ids = rows, ids

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < len(self.rows):
            raise IndexError(f"index {index} out of range for {len(self.rows)} items")
        row = self.rows[index]
        image = Image.open(self.root / row["image"]).convert("L" if self.in_channels == 1 else "RGB")
        mask = Image.open(self.root / row["mask"])
        if self.size:
            image = image.resize((self.size, self.size), Image.BILINEAR)
            mask = mask.resize((self.size, self.size), Image.NEAREST)
        x = np.asarray(image, dtype=np.float32) / 255.0
        x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)
        m = np.asarray(mask.convert("L") if mask.mode not in ("L", "1", "I;16", "I") else mask)
        full_scale = 65535 if m.dtype == np.uint16 or mask.mode.startswith("I") else (1 if m.dtype == bool else 255)
        y = (m.astype(np.float64) >= full_scale / 2).astype(np.int64)
        if x.shape[1:] != y.shape:
            raise ValueError(f"example-csv: image {row['image']!r} is {x.shape[2]}x{x.shape[1]} but its mask "
                             f"{row['mask']!r} is {y.shape[1]}x{y.shape[0]}; pass size=N to resize both")
        return Sample(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y), self.ids[index])

    def item_ids(self) -> list[str]:
        return list(self.ids)

    def identity(self) -> dict:
        return {"class": "CSVDataset", "root": str(self.root), "csv": self.csv_path.name, "split": self.split,
                "size": self.size, "len": len(self), "csv_sha256": self.csv_sha256}


def _read_rows(text: str, path: Path):
    reader = csv.DictReader(text.splitlines())
    missing = {"image", "mask"} - set(reader.fieldnames or [])
    if missing:
        raise ValueError(f"example-csv: {str(path)!r} has columns {reader.fieldnames}, it needs image and mask "
                         f"(and optionally split, id)")
    for row in reader:
        yield {k: (v or "").strip() for k, v in row.items() if k}
