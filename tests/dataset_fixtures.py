"""Tiny fixtures of the real data sets, written in each download's own layout and formats (JPEG masks
with artefacts, RGB TIFFs Pillow cannot read, 1-bit BMPs, GIFs, 12-bit big-endian raw, 16-bit PNGs)
and with their stray files. Used by tests/test_datasets.py (the loaders) and tests/test_study_files.py
(the example study files against them).

Item k of every writer is identifiable: its RGB image's red channel is 20 * (k % 12) + 10 and its mask
is the disc of :func:`disc` with radius depending on k.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image


def disc(h, w, k):
    """A bool disc whose radius depends on k (so each fixture item has its own mask area)."""
    yy, xx = np.mgrid[:h, :w]
    r = 0.15 * min(h, w) + 2 * k
    return (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < r ** 2


def rgb(h, w, k):
    """An RGB uint8 image whose red channel is the constant 20 * k + 10 (identifies item k)."""
    a = np.zeros((h, w, 3), np.uint8)
    a[..., 0] = 20 * k + 10
    a[..., 1] = np.linspace(0, 255, w, dtype=np.uint8)[None]
    a[..., 2] = 128
    return a


def save(arr, path, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    return path


def strays(folder: Path):
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (folder / "Thumbs.db").write_bytes(b"junk")
    (folder / "._copy.jpg").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    (folder / "notes.json").write_text("{}")


# ------------------------------------------------------------------------ Kvasir-SEG

KVASIR_SIZES = [(48, 64), (64, 48), (40, 40), (56, 72), (64, 64), (30, 50)]  # mixed sizes, like the real set


def write_kvasir(root: Path, sizes=KVASIR_SIZES) -> Path:
    """``root/images/caseK.jpg`` + ``root/masks/caseK.jpg`` (JPEG masks) for each size; case5 is grey; plus
    an image without a mask (lonely), a mask without an image (orphan), stray files and the bbox JSON."""
    for k, (h, w) in enumerate(sizes):
        img = rgb(h, w, k % 12) if k != 5 else np.full((h, w), 20 * k + 10, np.uint8)  # case5 is grey
        save(img, root / "images" / f"case{k}.jpg", quality=95)
        save((disc(h, w, k) * 255).astype(np.uint8), root / "masks" / f"case{k}.jpg", quality=60)
    save(rgb(32, 32, 9), root / "images" / "lonely.jpg")  # an image without a mask
    save(np.zeros((32, 32), np.uint8), root / "masks" / "orphan.jpg")  # a mask without an image
    strays(root / "images")
    strays(root / "masks")
    (root / "kavsir_bboxes.json").write_text("{}")
    return root


# --------------------------------------------------------------------- CVC-ClinicDB

def write_cvc(root: Path, ks, fmt: str = "tif", h: int = 36, w: int = 48) -> Path:
    """``root/Original/K.tif`` + ``root/Ground Truth/K.tif`` (odd K a float RGB TIFF only tifffile reads), or
    the PNG redistribution (``fmt="png"``); stray files in Original."""
    (root / "Original").mkdir(parents=True, exist_ok=True)
    (root / "Ground Truth").mkdir(parents=True, exist_ok=True)
    for k in ks:
        img, mask = rgb(h, w, k % 12), (disc(h, w, k % 12) * 255).astype(np.uint8)
        if fmt == "tif":
            if k % 2:  # float RGB TIFF: Pillow cannot identify it, tifffile reads it
                tifffile.imwrite(root / "Original" / f"{k}.tif", img.astype(np.float32) / 255, photometric="rgb")
            else:
                tifffile.imwrite(root / "Original" / f"{k}.tif", img, photometric="rgb")
            tifffile.imwrite(root / "Ground Truth" / f"{k}.tif", mask)
        else:
            save(img, root / "Original" / f"{k}.png")
            save(mask, root / "Ground Truth" / f"{k}.png")
    strays(root / "Original")
    return root


# ------------------------------------------------------------------------- ISIC 2018

def write_isic(root: Path, phase: str, ks, missing_mask=()) -> Path:
    """One challenge phase (Training, Validation, Test): ``ISIC2018_Task1-2_<phase>_Input/ISIC_K.jpg`` and
    ``ISIC2018_Task1_<phase>_GroundTruth/ISIC_K_segmentation.png``, with the licence files."""
    for k in ks:
        save(rgb(40, 50, k % 12), root / f"ISIC2018_Task1-2_{phase}_Input" / f"ISIC_{k:07d}.jpg", quality=95)
        if k not in missing_mask:
            save((disc(40, 50, k % 12) * 255).astype(np.uint8),
                 root / f"ISIC2018_Task1_{phase}_GroundTruth" / f"ISIC_{k:07d}_segmentation.png")
    (root / f"ISIC2018_Task1-2_{phase}_Input" / "ATTRIBUTION.txt").write_text("cc-by-nc")
    (root / f"ISIC2018_Task1-2_{phase}_Input" / "LICENSE.txt").write_text("license")
    return root


# ------------------------------------------------------------------------------ JSRT

def write_jsrt(root: Path, k: int, side: int = 64, organs=None, little_endian: bool = False):
    """A 12-bit big-endian raw image ``All247images/JPCLN<k>.IMG`` (side x side) and half-resolution GIF
    masks per organ under ``scratch/fold<1|2>/masks/<organ>/``; returns (raw, organ shapes)."""
    raw = (np.arange(side * side).reshape(side, side) * 7 + 100 * k) % 4096
    (root / "All247images").mkdir(parents=True, exist_ok=True)
    raw.astype("<u2" if little_endian else ">u2").tofile(root / "All247images" / f"JPCLN{k:03d}.IMG")
    h = side // 2
    yy, xx = np.mgrid[:h, :h]
    shapes = {"left lung": (xx < h // 2) & (yy > 4), "right lung": (xx >= h // 2) & (yy > 4),
              "heart": (abs(xx - h // 2) < 4) & (yy > h // 2),           # overlaps both lungs
              "left clavicle": (yy < 8) & (xx < h // 2),                 # overlaps the left lung
              "right clavicle": (yy < 8) & (xx >= h // 2 + k)}
    for organ, m in shapes.items():
        if organs is None or organ in organs:
            mode = "1" if organ == "heart" else "L"  # 1-bit and 8-bit GIFs
            path = root / "scratch" / f"fold{k % 2 + 1}" / "masks" / organ / f"JPCLN{k:03d}.gif"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((m * 255).astype(np.uint8)).convert(mode).save(path)
    return raw, shapes


# ------------------------------------------------------------------------ Montgomery

def montgomery_image(k: int, h: int = 40, w: int = 30) -> np.ndarray:
    """Item k's image: 12-bit values stored in a 16-bit PNG."""
    return ((np.arange(h * w).reshape(h, w) * 3 + k) % 4096).astype(np.uint16)


def write_montgomery(root: Path, ks, no_right_mask=()) -> Path:
    """``CXR_png/MCUCXR_K_s.png`` (16-bit grey) with ``ManualMask/leftMask`` and ``rightMask`` PNGs (the right
    one left out for K in no_right_mask) and a clinical reading per image."""
    for k in ks:
        stem = f"MCUCXR_{k:04d}_{k % 2}"
        save(montgomery_image(k), root / "CXR_png" / f"{stem}.png")
        left = np.zeros((40, 30), np.uint8)
        left[5:30, 2:12] = 255
        right = np.zeros((40, 30), np.uint8)
        right[5:30, 16:28 - k % 10] = 255
        save(left, root / "ManualMask" / "leftMask" / f"{stem}.png")
        if k not in no_right_mask:
            save(right, root / "ManualMask" / "rightMask" / f"{stem}.png")
        (root / "ClinicalReadings").mkdir(exist_ok=True)
        (root / "ClinicalReadings" / f"{stem}.txt").write_text("normal")
    return root


# -------------------------------------------------------------------------- Shenzhen

def write_shenzhen(root: Path, ks, masked=None) -> Path:
    """``CXR_png/CHNCXR_K_s.png`` (stored RGB) with ``masks/CHNCXR_K_s_mask.png`` for K in masked (default
    all), and stray files in CXR_png."""
    for k in ks:
        stem = f"CHNCXR_{k:04d}_{k % 2}"
        save(rgb(24, 24, k % 12), root / "CXR_png" / f"{stem}.png")  # stored RGB: becomes grey
        if masked is None or k in masked:
            save((disc(24, 24, k % 12) * 255).astype(np.uint8), root / "masks" / f"{stem}_mask.png")
    strays(root / "CXR_png")
    return root


# ------------------------------------------------------------------------------ PH2

PH2_IMAGES = "PH2 Dataset images"


def write_ph2(root: Path, count: int, no_lesion=()) -> Path:
    """``PH2 Dataset images/IMDxxx/`` for item k = 0..count-1 (IMD002, IMD003, ...): the dermoscopic BMP, the
    lesion mask BMP (1-bit for k = 0, 8-bit otherwise; none for k in no_lesion) and an ROI BMP; plus the
    data set's text table."""
    base = root / PH2_IMAGES
    for k in range(count):
        name = f"IMD{k + 2:03d}"
        save(rgb(28, 36, k % 12), base / name / f"{name}_Dermoscopic_Image" / f"{name}.bmp")
        m = disc(28, 36, k % 12)
        if k not in no_lesion:
            mask = Image.fromarray((m * 255).astype(np.uint8)).convert("1" if k == 0 else "L")
            (base / name / f"{name}_lesion").mkdir(parents=True)
            mask.save(base / name / f"{name}_lesion" / f"{name}_lesion.bmp")
        (base / name / f"{name}_roi").mkdir()
        save((m * 255).astype(np.uint8), base / name / f"{name}_roi" / f"{name}_R1_Label4.bmp")
    (root / "PH2_dataset.txt").write_text("table")
    return root
