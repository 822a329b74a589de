"""``synthetic-tumour``: a seeded 2-D phantom with nested anatomy (an organ holding tumours).

A CT-slice-like grey image: dark textured background, one large irregular "organ", and
one or two "tumours" inside it. The tumours are darker than the organ tissue around them,
with a contrast (about 0.2) well below the organ's against the background (about 0.45),
so under noise the boundary between organ tissue and tumour is the hard one, as in a
liver-tumour task. Classes: background, organ tissue, tumour; default hierarchy
(:attr:`SyntheticTumour.default_hierarchy`): background | organ {organ tissue, tumour},
which the ``hierarchical`` certifier uses when given none.

Items are ``Sample(image float32 [1, size, size] in [0, 1], mask int64 [size, size], id)``,
each a function of ``(seed, split, index, size)`` only (``numpy.random.default_rng([seed,
split, index])``, as the other synthetic data sets). Bundled Gaussian-trained UNet:
``weights=synthetic-tumour-noise0.25`` (``plugins/weights/README.md``).
"""
from __future__ import annotations

import numpy as np

from .synthetic import SyntheticDataset, _blob, _grid, _smooth_noise

BACKGROUND, ORGAN, TUMOUR_DROP = 0.18, 0.63, 0.2

DEFAULT_HIERARCHY = {"name": "organ-tumour", "root": ["background", "organ"],
                     "groups": {"organ": ["organ tissue", "tumour"]}}


class SyntheticTumour(SyntheticDataset):
    """Organ with one or two tumours inside, grey 2-D (background, organ tissue, tumour).

    Intensities: background about 0.18, organ tissue about 0.63, tumour about 0.2 below the
    organ (smooth texture of amplitude 0.03-0.05 and pixel noise of std 0.02 on top).
    Default hierarchy: background | organ {organ tissue, tumour}.
    Bundled Gaussian-trained UNet: weights=synthetic-tumour-noise0.25.

    Options: count (16), size (64), seed (0), split (train/val/test).
    """

    kind = "tumour"
    class_names = ("background", "organ tissue", "tumour")
    in_channels = 1
    default_hierarchy = DEFAULT_HIERARCHY

    def generate(self, rng):
        s = self.size
        yy, xx = _grid(s)
        cy, cx = rng.uniform(0.44, 0.56, size=2)
        ry, rx = rng.uniform(0.26, 0.33), rng.uniform(0.28, 0.36)
        organ = _blob(rng, yy, xx, cy, cx, ry, rx, 0.12, 4)
        mask = organ.astype(np.int64)
        image = BACKGROUND + 0.04 * _smooth_noise(rng, s, 6)
        image = np.where(organ, ORGAN + 0.03 * _smooth_noise(rng, s, 8), image)
        tumour = np.zeros_like(organ)
        for _ in range(int(rng.integers(1, 3))):
            angle, dist = rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 0.5)
            ty, tx = cy + dist * ry * np.sin(angle), cx + dist * rx * np.cos(angle)
            r = rng.uniform(0.08, 0.14)
            tumour |= _blob(rng, yy, xx, ty, tx, r, r * rng.uniform(0.8, 1.25), 0.2, 4) & organ
        mask[tumour] = 2
        drop = TUMOUR_DROP * rng.uniform(0.85, 1.15)
        image = np.where(tumour, image - drop + 0.02 * _smooth_noise(rng, s, 10), image)
        image = image + 0.02 * rng.standard_normal((s, s))
        return image, mask
