"""Procedural, seeded synthetic data sets that look like the paper's modalities.

Each item is generated from ``numpy.random.default_rng([seed, index])``, so an
item depends only on (seed, index, size), never on how many items were asked
for or in which order. Images are float32 in [0, 1]; masks int64.

* ``synthetic-lung``   grey chest X-ray-like: bright mediastinum and ribs, two dark
  lung fields (classes: background, lungs).
* ``synthetic-chest``  the same with the heart as a third class (background, lungs,
  heart), like JSRT's multi-class masks.
* ``synthetic-polyp``  RGB colonoscopy-like: pink textured mucosa, one raised
  polyp with a specular highlight (background, polyp).
* ``synthetic-lesion`` RGB dermoscopy-like: skin tone, hairs, one dark irregular
  lesion (background, lesion).
"""
from __future__ import annotations

import numpy as np
import torch

from certframe.interfaces import Sample, SegmentationDataset


def _grid(size: int):
    ax = (np.arange(size) + 0.5) / size
    return np.meshgrid(ax, ax, indexing="ij")  # yy, xx in (0, 1)


def _smooth_noise(rng, size: int, scale: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1] by bilinear upsampling of a coarse grid."""
    coarse = rng.standard_normal((scale + 1, scale + 1))
    t = np.linspace(0, scale, size)
    i = np.clip(t.astype(int), 0, scale - 1)
    f = t - i
    rows = coarse[i] * (1 - f)[:, None] + coarse[i + 1] * f[:, None]
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


def _blob(rng, yy, xx, cy, cx, ry, rx, wobble: float, lobes: int = 5) -> np.ndarray:
    """Boolean mask of an irregular ellipse-like blob."""
    angle = np.arctan2((yy - cy) / ry, (xx - cx) / rx)
    r = np.hypot((yy - cy) / ry, (xx - cx) / rx)
    edge = 1.0
    for k in range(2, 2 + lobes):
        edge = edge + wobble * rng.uniform(-1, 1) / k * np.cos(k * angle + rng.uniform(0, 2 * np.pi))
    return r < edge


class SyntheticDataset(SegmentationDataset):
    """Base class: ``count`` items of ``size`` x ``size`` pixels from ``seed``."""

    kind = "synthetic"

    def __init__(self, count: int = 16, size: int = 64, seed: int = 0, split: str = "test"):
        if int(count) < 1 or int(size) < 16:
            raise ValueError(f"synthetic data needs count >= 1 and size >= 16, got count={count}, size={size}")
        splits = {"train": 0, "val": 1, "test": 2}
        if split not in splits:
            raise ValueError(f"split must be one of {sorted(splits)}, got {split!r}")
        self.count, self.size, self.seed, self.split = int(count), int(size), int(seed), split
        self._split_key = splits[split]

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.count:
            raise IndexError(f"index {index} out of range for {self.count} items")
        rng = np.random.default_rng([self.seed, self._split_key, index])
        image, mask = self.generate(rng)
        image = np.clip(image, 0.0, 1.0).astype(np.float32)
        if image.ndim == 2:
            image = image[None]
        return Sample(torch.from_numpy(image), torch.from_numpy(mask.astype(np.int64)),
                      f"{self.kind}-{self.split}-{index:04d}")

    def generate(self, rng) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def identity(self) -> dict:
        return {"class": type(self).__name__, "kind": self.kind, "count": self.count,
                "size": self.size, "seed": self.seed, "split": self.split}


class SyntheticLung(SyntheticDataset):
    """Chest X-ray-like grey images with two dark lung fields (background, lungs).

    Options: count (16), size (64), seed (0), split (train/val/test).
    """

    kind = "lung"
    class_names = ("background", "lungs")
    in_channels = 1
    with_heart = False

    def generate(self, rng):
        s = self.size
        yy, xx = _grid(s)
        body = 0.55 + 0.15 * np.exp(-((xx - 0.5) / 0.35) ** 2) + 0.05 * _smooth_noise(rng, s, 4)
        ribs = 0.06 * (np.sin(yy * rng.uniform(28, 36) + rng.uniform(0, 6)) > 0.6)
        cy, dx = rng.uniform(0.48, 0.56), rng.uniform(0.18, 0.24)
        ry, rx = rng.uniform(0.26, 0.34), rng.uniform(0.11, 0.15)
        left = _blob(rng, yy, xx, cy, 0.5 - dx, ry, rx, 0.08, 3)
        right = _blob(rng, yy, xx, cy, 0.5 + dx, ry, rx, 0.08, 3)
        lungs = left | right
        mask = lungs.astype(np.int64)
        image = body + ribs
        image = np.where(lungs, image - rng.uniform(0.3, 0.4) + 0.04 * _smooth_noise(rng, s, 8), image)
        if self.with_heart:
            heart = _blob(rng, yy, xx, cy + 0.12, 0.5 + 0.04, 0.13, 0.12, 0.05, 2) & ~lungs
            mask[heart] = 2
            image = np.where(heart, image + 0.18, image)
        image = image + 0.02 * rng.standard_normal((s, s))
        return image, mask


class SyntheticChest(SyntheticLung):
    """Chest X-ray-like grey images with lungs and heart (background, lungs, heart).

    Options: count (16), size (64), seed (0), split (train/val/test).
    Default label hierarchy (``--certifier hierarchical``): background | chest organs {lungs, heart}.
    """

    kind = "chest"
    class_names = ("background", "lungs", "heart")
    with_heart = True
    default_hierarchy = {"name": "chest-organs", "root": ["background", "chest organs"],
                         "groups": {"chest organs": ["lungs", "heart"]}}


class SyntheticPolyp(SyntheticDataset):
    """Colonoscopy-like RGB images with one polyp (background, polyp).

    Options: count (16), size (64), seed (0), split (train/val/test).
    """

    kind = "polyp"
    class_names = ("background", "polyp")
    in_channels = 3

    def generate(self, rng):
        s = self.size
        yy, xx = _grid(s)
        tex = _smooth_noise(rng, s, 6)
        vignette = 1.0 - 0.6 * ((yy - 0.5) ** 2 + (xx - 0.5) ** 2)
        base = np.stack([0.75 + 0.08 * tex, 0.42 + 0.06 * tex, 0.38 + 0.05 * tex]) * vignette
        cy, cx = rng.uniform(0.3, 0.7, size=2)
        ry, rx = rng.uniform(0.1, 0.2, size=2)
        polyp = _blob(rng, yy, xx, cy, cx, ry, rx, 0.15)
        shade = np.clip(1 - ((yy - cy) ** 2 / ry ** 2 + (xx - cx) ** 2 / rx ** 2), 0, 1)
        colour = np.array([0.92, 0.62, 0.45])[:, None, None]
        image = np.where(polyp[None], colour * (0.75 + 0.25 * shade) + 0.03 * tex, base)
        glint = (yy - cy + 0.3 * ry) ** 2 + (xx - cx + 0.3 * rx) ** 2 < (0.15 * min(ry, rx)) ** 2
        image = np.where(glint[None] & polyp[None], 1.0, image)
        image = image + 0.015 * rng.standard_normal(image.shape)
        return image, polyp.astype(np.int64)


class SyntheticLesion(SyntheticDataset):
    """Dermoscopy-like RGB images with one dark lesion and a few hairs (background, lesion).

    Options: count (16), size (64), seed (0), split (train/val/test).
    """

    kind = "lesion"
    class_names = ("background", "lesion")
    in_channels = 3

    def generate(self, rng):
        s = self.size
        yy, xx = _grid(s)
        skin = np.array(rng.uniform([0.8, 0.6, 0.5], [0.95, 0.75, 0.65]))[:, None, None]
        tex = _smooth_noise(rng, s, 5)
        image = skin + 0.03 * tex
        cy, cx = rng.uniform(0.35, 0.65, size=2)
        r = rng.uniform(0.12, 0.25)
        lesion = _blob(rng, yy, xx, cy, cx, r, r * rng.uniform(0.7, 1.3), 0.25, 6)
        dark = np.array([0.35, 0.22, 0.15])[:, None, None] * (1 + 0.2 * _smooth_noise(rng, s, 10))
        image = np.where(lesion[None], dark, image)
        for _ in range(rng.integers(0, 4)):
            a, b = rng.uniform(-2, 2), rng.uniform(0, 1)
            hair = np.abs(yy - (a * (xx - 0.5) + b)) < 0.006 * (1 + abs(a))
            image = np.where(hair[None], 0.15, image)
        image = image + 0.015 * rng.standard_normal(image.shape)
        return image, lesion.astype(np.int64)
