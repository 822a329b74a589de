"""``synthetic-volume``: a seeded 3-D abdominal phantom, generated on the fly.

A CT-like body (an elliptic cylinder of soft tissue in air, with a bright spine that
is not labelled) holding a large irregular "liver" on the patient's right and two
small "kidneys" beside the spine. Classes: background, liver, kidneys.

Items are ``Sample(image float32 [1, D, H, W] in [0, 1], mask int64 [D, H, W], id)``
with ``D = H = W = size`` and the axis order of the NIfTI data sets
(:mod:`~certframe.plugins.datasets._nifti`): D inferior -> superior, H posterior ->
anterior, W the patient's left -> right. Intensities are generated directly in
``[0, 1]`` (air 0.05, soft tissue about 0.45, liver 0.62, kidneys 0.75, bone 0.9,
plus noise of std 0.03), so no window applies. One item of size 32 is 128 KiB of
image and 256 KiB of mask.

Each item is a function of ``(seed, split, index, size)`` only
(``numpy.random.default_rng([seed, split, index])``, as in the 2-D synthetic data
sets): the splits are disjoint and any subset is reproducible.
"""
from __future__ import annotations

import numpy as np

from .synthetic import SyntheticDataset

AIR, TISSUE, LIVER, KIDNEY, BONE = 0.05, 0.45, 0.62, 0.75, 0.9


def _grid3(size: int):
    ax = (np.arange(size) + 0.5) / size
    return np.meshgrid(ax, ax, ax, indexing="ij")  # zz (D), yy (H), xx (W) in (0, 1)


def _smooth_noise3(rng, size: int, scale: int) -> np.ndarray:
    """Low-frequency noise ``[size]*3`` in about [-1, 1]: a coarse grid, trilinearly upsampled."""
    out = rng.standard_normal((scale + 1,) * 3)
    t = np.linspace(0, scale, size)
    i = np.clip(t.astype(int), 0, scale - 1)
    f = t - i
    for axis in range(3):
        shape = [1, 1, 1]
        shape[axis] = size
        w = f.reshape(shape)
        out = np.take(out, i, axis=axis) * (1 - w) + np.take(out, i + 1, axis=axis) * w
    return out


def _blob3(rng, grid, centre, radii, wobble: float, size: int) -> np.ndarray:
    """Boolean ``[size]*3`` mask of an ellipsoid whose surface is pushed in and out by smooth noise."""
    r = np.sqrt(sum(((g - c) / rad) ** 2 for g, c, rad in zip(grid, centre, radii)))
    return r < 1.0 + wobble * _smooth_noise3(rng, size, 3)


class SyntheticVolume(SyntheticDataset):
    """3-D abdominal phantom, seeded and generated on the fly (background, liver, kidneys).

    Items: ``Sample(image float32 [1, size, size, size] in [0, 1], mask int64 [size]*3, id)``;
    D inferior -> superior, H posterior -> anterior, W left -> right (the liver is on the
    patient's right). Bundled 3-D UNets: weights=synthetic-volume, synthetic-volume-noise0.25.

    Options: count (16), size (32; voxels per side, >= 16), seed (0), split (train/val/test).
    Default label hierarchy (``--certifier hierarchical``): background | organs {liver, kidneys}.
    """

    kind = "volume"
    class_names = ("background", "liver", "kidneys")
    in_channels = 1
    spatial_dims = 3
    default_hierarchy = {"name": "abdominal-organs", "root": ["background", "organs"],
                         "groups": {"organs": ["liver", "kidneys"]}}

    def __init__(self, count: int = 16, size: int = 32, seed: int = 0, split: str = "test"):
        super().__init__(count=count, size=size, seed=seed, split=split)

    def generate(self, rng):
        s = self.size
        zz, yy, xx = grid = _grid3(s)
        ry, rx = rng.uniform(0.30, 0.34), rng.uniform(0.38, 0.44)
        body_edge = 1.0 + 0.04 * _smooth_noise3(rng, s, 2)
        body = np.hypot((yy - 0.5) / ry, (xx - 0.5) / rx) < body_edge
        spine_y = 0.5 - ry + rng.uniform(0.07, 0.09)
        spine = np.hypot(yy - spine_y, xx - 0.5) < 0.05
        liver = _blob3(rng, grid, (rng.uniform(0.55, 0.65), rng.uniform(0.56, 0.60), rng.uniform(0.62, 0.68)),
                       (rng.uniform(0.22, 0.28), rng.uniform(0.15, 0.19), rng.uniform(0.14, 0.18)), 0.12, s)
        kz, ky, dx = rng.uniform(0.35, 0.45), spine_y + rng.uniform(0.07, 0.09), rng.uniform(0.18, 0.21)
        kidneys = np.zeros_like(body)
        for side in (-1, 1):
            kidneys |= _blob3(rng, grid, (kz + rng.uniform(-0.03, 0.03), ky, 0.5 + side * dx),
                              (rng.uniform(0.12, 0.16), 0.08, 0.07), 0.08, s)
        liver &= body & ~spine
        kidneys &= body & ~spine & ~liver
        mask = np.zeros((s, s, s), dtype=np.int64)
        mask[liver] = 1
        mask[kidneys] = 2
        image = np.where(body, TISSUE + 0.04 * _smooth_noise3(rng, s, 4), AIR)
        image = np.where(spine & body, BONE, image)
        image = np.where(liver, LIVER + 0.02 * _smooth_noise3(rng, s, 6), image)
        image = np.where(kidneys, KIDNEY, image)
        image = image + 0.03 * rng.standard_normal((s, s, s))
        return image[None], mask

    def identity(self) -> dict:
        return {**super().identity(), "axes": "[C, D, H, W] = [channel, inferior->superior, "
                                              "posterior->anterior, left->right]",
                "intensity": "generated in [0, 1], no window"}
