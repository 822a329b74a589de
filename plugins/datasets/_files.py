"""Reading real data set downloads robustly: the shared machinery of the file-based
data set plugins (Kvasir-SEG, CVC-ClinicDB, ISIC 2018, JSRT, Montgomery, Shenzhen,
PH2, folder).

What real downloads contain and how it is handled here:

* stray files (``.DS_Store``, ``Thumbs.db``, macOS ``._*`` twins, ``.json``/``.txt``
  metadata, hidden files): skipped by :func:`list_images` (image extensions only);
* images without a mask: kept out of the data set and *reported* with a count by
  :func:`report_unpaired` (``logging`` warning plus a :class:`UnpairedImagesWarning`);
* corrupt or truncated files: :class:`CorruptFileError` naming the file;
* mixed sizes, grey and RGB, 1-bit / 8-bit / 16-bit: every item is brought to
  ``in_channels`` and resized to ``size`` x ``size`` (image bilinear with
  anti-aliasing, mask nearest neighbour) in :class:`FileSegmentationDataset`;
* TIFFs Pillow cannot read (CVC-ClinicDB's RGB TIFFs): read with ``tifffile``;
* JPEG masks (Kvasir-SEG) whose edges carry compression artefacts: thresholded.

Splits are seeded and independent of the file system's listing order: the sorted
ids are permuted with ``numpy.random.default_rng(seed)``; the first
``round(N * test_fraction)`` are ``test``, the next ``round(N * val_fraction)`` are
``val``, the rest ``train``. The three are disjoint and cover every paired item.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from certframe.interfaces import Sample, SegmentationDataset

log = logging.getLogger("certframe.datasets")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")
SPLITS = ("train", "val", "test", "all")


class CorruptFileError(ValueError):
    """A file of the data set cannot be decoded (the message names it)."""


class UnpairedImagesWarning(UserWarning):
    """Some images of a data set have no mask and were left out."""


# --------------------------------------------------------------------------- files

def is_stray(path: Path) -> bool:
    """Hidden files, macOS ``._`` twins, ``Thumbs.db`` and anything not an image."""
    name = path.name
    return (name.startswith(".") or name.lower() == "thumbs.db"
            or path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file())


def list_images(folder: Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Image files directly in ``folder``, sorted by name, stray files skipped."""
    exts = tuple(e.lower() for e in extensions)
    return sorted(p for p in folder.iterdir() if not is_stray(p) and p.suffix.lower() in exts)


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{what}: expected a folder at {str(path)!r}, it does not exist")
    return path


def report_unpaired(dataset: str, unpaired: Sequence[str], what: str = "without a mask",
                    note: str = "", noun: str = "image(s)") -> None:
    """Log and warn that ``len(unpaired)`` files were left out (first few named)."""
    if not unpaired:
        return
    shown = ", ".join(sorted(unpaired)[:5]) + (", ..." if len(unpaired) > 5 else "")
    msg = f"{dataset}: {len(unpaired)} {noun} {what} left out ({shown}){note}"
    log.warning(msg)
    warnings.warn(msg, UnpairedImagesWarning, stacklevel=3)


# ------------------------------------------------------------------------ decoding

def read_array(path: Path) -> np.ndarray:
    """Decode an image file to ``[H, W]`` or ``[H, W, C]`` (dtype as stored).

    Pillow first; ``tifffile`` for TIFFs Pillow cannot read. Pillow's 1-bit mode
    comes back as bool; 16-bit grey as uint16 (``I;16``) or int32 (``I``).
    Raises :class:`CorruptFileError` naming the file when nothing can decode it.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                arr = np.asarray(im)
                if arr.ndim == 3 and arr.shape[2] == 4:
                    arr = arr[..., :3]
            elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                arr = np.asarray(im.convert("RGB"))
            else:
                arr = np.asarray(im)
            return np.array(arr)  # forces the full decode inside the try
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        pil_error = err
    if path.suffix.lower() in (".tif", ".tiff"):
        try:
            import tifffile

            arr = np.asarray(tifffile.imread(str(path)))
            if arr.size == 0 or arr.ndim < 2:
                raise ValueError(f"no pixel data (shape {arr.shape})")
            if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[2] not in (3, 4):
                arr = np.moveaxis(arr, 0, -1)  # planar TIFF -> [H, W, C]
            return arr
        except Exception as err:  # tifffile raises many types on bad input
            raise CorruptFileError(f"cannot read image file {str(path)!r}: Pillow: {pil_error}; "
                                   f"tifffile: {err}") from err
    raise CorruptFileError(f"cannot read image file {str(path)!r}: {pil_error}") from pil_error


def read_raw(path: Path, shape: tuple[int, int], dtype: str = ">u2") -> np.ndarray:
    """A headerless raw file (e.g. JSRT ``.IMG``: 2048 x 2048, 12-bit in big-endian uint16)."""
    path = Path(path)
    expected = shape[0] * shape[1] * np.dtype(dtype).itemsize
    size = path.stat().st_size
    if size != expected:
        raise CorruptFileError(f"raw image {str(path)!r} has {size} bytes, expected {expected} "
                               f"({shape[0]}x{shape[1]} pixels of {np.dtype(dtype).itemsize} bytes)")
    return np.fromfile(path, dtype=dtype).reshape(shape)


def to_float(arr: np.ndarray, path: Path | str = "?") -> np.ndarray:
    """Scale stored values to float32 in [0, 1].

    bool -> {0, 1}; uint8 / 255; 16-bit grey (uint16, or Pillow's int32 ``I``)
    / 4095 when every value fits 12 bits (the usual depth of X-ray PNGs), else
    / 65535; float data already in [0, 1] as it is.
    """
    if arr.dtype == bool:
        return arr.astype(np.float32)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if np.issubdtype(arr.dtype, np.integer):
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 65535:
            raise CorruptFileError(f"image {str(path)!r}: integer values in [{lo}, {hi}], "
                                   f"expected 8- or 16-bit unsigned data")
        return arr.astype(np.float32) / (4095.0 if hi <= 4095 else 65535.0)
    if np.issubdtype(arr.dtype, np.floating):
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        if not (np.isfinite(arr).all() and lo >= 0.0 and hi <= 1.0):
            raise CorruptFileError(f"image {str(path)!r}: float values in [{lo:.4g}, {hi:.4g}], "
                                   f"expected finite values in [0, 1]")
        return arr.astype(np.float32)
    raise CorruptFileError(f"image {str(path)!r}: unsupported pixel type {arr.dtype}")


def to_channels(arr: np.ndarray, channels: int, path: Path | str = "?") -> np.ndarray:
    """``[H, W]`` / ``[H, W, C]`` float -> ``[channels, H, W]``.

    Grey -> RGB repeats the plane; RGB -> grey uses ITU-R 601 luma
    (0.299 R + 0.587 G + 0.114 B, Pillow's ``L``); an alpha channel is dropped.
    """
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 3:
        c = arr.shape[2]
        if c == 2:  # grey + alpha
            arr = arr[..., :1]
        elif c == 4:
            arr = arr[..., :3]
        elif c not in (1, 3):
            raise CorruptFileError(f"image {str(path)!r} has {c} channels, expected 1 (grey), 3 (RGB) or 4 (RGBA)")
        arr = np.moveaxis(arr, -1, 0)
    else:
        raise CorruptFileError(f"image {str(path)!r} has shape {arr.shape}, expected [H, W] or [H, W, C]")
    if arr.shape[0] == channels:
        return np.ascontiguousarray(arr)
    if channels == 3:
        return np.repeat(arr, 3, axis=0)
    if channels == 1:
        w = np.array([0.299, 0.587, 0.114], dtype=np.float32)[:, None, None]
        return (arr * w).sum(axis=0, keepdims=True).astype(np.float32)
    raise ValueError(f"in_channels must be 1 or 3, got {channels}")


def grey(arr: np.ndarray) -> np.ndarray:
    """A mask file's values as one ``[H, W]`` plane (max over colour channels)."""
    if arr.ndim == 3:
        arr = arr[..., :3] if arr.shape[2] >= 3 else arr[..., :1]
        arr = arr.max(axis=2)
    return arr


def binary_mask(arr: np.ndarray, threshold: float = 0.5, path: Path | str = "?") -> np.ndarray:
    """``[H, W]`` bool foreground of a mask file: value > ``threshold`` (in [0, 1] units).

    JPEG masks hold values such as 3 or 251 along edges; 1-bit masks are bool.
    """
    return to_float(grey(arr), path) > threshold


def resize_image(image: np.ndarray, size: int | None) -> torch.Tensor:
    """``[C, H, W]`` float -> ``[C, size, size]`` (bilinear, anti-aliased), clipped to [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    if size is not None and tuple(t.shape[-2:]) != (size, size):
        t = F.interpolate(t[None], size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True)[0].clamp_(0.0, 1.0)
    return t.contiguous()


def resize_mask(mask: np.ndarray, hw: tuple[int, int]) -> torch.Tensor:
    """``[H, W]`` int labels -> ``[h, w]`` int64 by nearest neighbour (labels stay labels)."""
    t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64))
    if tuple(t.shape) != tuple(hw):
        t = F.interpolate(t[None, None].float(), size=tuple(hw), mode="nearest-exact")[0, 0].long()
    return t


# -------------------------------------------------------------------------- splits

def split_ids(ids: Sequence[str], split: str, seed: int, val_fraction: float,
              test_fraction: float) -> list[str]:
    """The ids of ``split`` (train/val/test/all), sorted; see the module docstring."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= float(f) < 1.0:
            raise ValueError(f"{name} must lie in [0, 1), got {f}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must be < 1 (something must be left to "
                         f"train on), got {val_fraction} + {test_fraction}")
    ordered = sorted(ids)
    if split == "all":
        return ordered
    n = len(ordered)
    order = np.random.default_rng(int(seed)).permutation(n)
    n_test, n_val = int(round(n * test_fraction)), int(round(n * val_fraction))
    bounds = {"test": (0, n_test), "val": (n_test, n_test + n_val), "train": (n_test + n_val, n)}
    lo, hi = bounds[split]
    return sorted(ordered[i] for i in order[lo:hi])


# -------------------------------------------------------------------- base dataset

@dataclass(frozen=True)
class Pair:
    """One image and what makes its mask (a path, or several for multi-file masks)."""

    id: str
    image: Path
    masks: tuple[Path, ...]


class FileSegmentationDataset(SegmentationDataset):
    """Base of the file-based data sets: pairing, splitting, decoding, resizing.

    Subclasses implement :meth:`find_pairs` (-> pairs, ids of unpaired images) and
    may override :meth:`load_image` (-> ``[H, W]`` / ``[H, W, C]`` array) and
    :meth:`load_mask` (-> ``[H, W]`` int labels). Items are
    ``Sample(image float32 [in_channels, size, size] in [0, 1], mask int64 [size, size], id)``;
    with ``size=None`` the native size is kept (the mask is resized to the image).

    Common options: root (required), size (256), split (train/val/test/all; "test"),
    seed (0), val_fraction (0.1), test_fraction (0.2).
    """

    name = "files"
    unpaired_note = ""

    def __init__(self, root: str | Path, size: int | None = 256, split: str = "test", seed: int = 0,
                 val_fraction: float = 0.1, test_fraction: float = 0.2):
        if root is None or str(root) == "":
            raise ValueError(f"{self.name}: the option 'root' (the data set's folder) is required")
        self.root = Path(root).expanduser()
        require_dir(self.root, f"{self.name} root")
        if size is not None and (int(size) != size or int(size) < 8):
            raise ValueError(f"{self.name}: size must be an integer >= 8 or None, got {size!r}")
        self.size = None if size is None else int(size)
        self.split, self.seed = split, int(seed)
        self.val_fraction, self.test_fraction = float(val_fraction), float(test_fraction)
        pairs, unpaired = self.find_pairs()
        self.unpaired = sorted(unpaired)
        report_unpaired(self.name, self.unpaired, note=self.unpaired_note)
        if not pairs:
            raise FileNotFoundError(f"{self.name}: no image/mask pairs found under {str(self.root)!r}; "
                                    f"{self.layout_help()}")
        by_id = {p.id: p for p in pairs}
        if len(by_id) != len(pairs):
            raise ValueError(f"{self.name}: duplicate image ids under {str(self.root)!r}")
        self.pairs = [by_id[i] for i in self.select(sorted(by_id))]

    # -- to override
    def find_pairs(self) -> tuple[list[Pair], list[str]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def layout_help(self) -> str:
        return "see the data set's docstring for the expected layout"

    def select(self, ids: list[str]) -> list[str]:
        return split_ids(ids, self.split, self.seed, self.val_fraction, self.test_fraction)

    def load_image(self, pair: Pair) -> np.ndarray:
        return to_float(read_array(pair.image), pair.image)

    def load_mask(self, pair: Pair) -> np.ndarray:
        return binary_mask(read_array(pair.masks[0]), path=pair.masks[0]).astype(np.int64)

    # -- common
    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Sample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        pair = self.pairs[index]
        image = to_channels(self.load_image(pair), self.in_channels, pair.image)
        mask = self.load_mask(pair)
        ih, iw = image.shape[-2:]
        mh, mw = mask.shape
        if abs(ih / iw - mh / mw) > 0.02:
            raise ValueError(f"{self.name}: mask {str(pair.masks[0])!r} is {mh}x{mw}, its image "
                             f"{str(pair.image)!r} is {ih}x{iw}: the aspect ratios differ")
        image_t = resize_image(image, self.size)
        return Sample(image_t, resize_mask(mask, tuple(image_t.shape[-2:])), pair.id)

    def item_ids(self) -> list[str]:
        return [p.id for p in self.pairs]

    def identity(self) -> dict:
        return {"class": type(self).__name__, "name": self.name, "root": str(self.root),
                "size": self.size, "split": self.split, "seed": self.seed,
                "val_fraction": self.val_fraction, "test_fraction": self.test_fraction,
                "len": len(self), "unpaired": len(self.unpaired)}


def pair_by_stem(images: Sequence[Path], masks: Sequence[Path], mask_stem=lambda s: s,
                 dataset: str = "data set") -> tuple[list[Pair], list[str]]:
    """Pair each image with the mask whose stem is ``mask_stem(image stem)``.

    Returns (pairs, stems of images without a mask); masks without an image are
    reported here. Two images or two masks with the same stem (``1.png`` and
    ``1.tif``) are an error naming both.
    """
    def index(paths, what):
        out: dict[str, Path] = {}
        for p in paths:
            if p.stem in out:
                raise ValueError(f"{dataset}: two {what} files with the stem {p.stem!r}: "
                                 f"{str(out[p.stem])!r} and {str(p)!r}")
            out[p.stem] = p
        return out

    by_mask = index(masks, "mask")
    pairs, unpaired = [], []
    for stem, img in index(images, "image").items():
        m = by_mask.get(mask_stem(stem))
        if m is None:
            unpaired.append(stem)
        else:
            pairs.append(Pair(stem, img, (m,)))
    used = {p.masks[0].stem for p in pairs}
    report_unpaired(dataset, [s for s in by_mask if s not in used], what="without an image", noun="mask(s)")
    return pairs, unpaired
