"""The synthetic-tumour phantom (nested anatomy) and its bundled Gaussian-trained UNet."""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from certframe.core.hierarchy import resolve_hierarchy
from certframe.core.metrics import mean_dice
from certframe.registry import get_registry


def test_organ_holds_one_or_two_tumours_with_lower_contrast():
    data = get_registry(load_entrypoints=False).create("dataset", "synthetic-tumour", count=12)
    assert data.class_names == ("background", "organ tissue", "tumour") and data.in_channels == 1
    tree = resolve_hierarchy(data.default_hierarchy, data.class_names)
    assert tree.describe() == ("level 0: background | organ tissue | tumour\n"
                               "level 1: background | organ {organ tissue, tumour}")
    for sample in data:
        image, mask = sample.image[0].numpy(), sample.mask.numpy()
        assert sample.image.shape == (1, 64, 64) and set(np.unique(mask)) == {0, 1, 2}
        organ = mask > 0
        assert ndimage.label(organ)[1] == 1                               # one organ
        assert ndimage.binary_fill_holes(organ).sum() == organ.sum()      # the tumours lie inside it
        assert 1 <= ndimage.label(mask == 2)[1] <= 2
        bg, tissue, tumour = (float(image[mask == c].mean()) for c in range(3))
        assert 0 < tissue - tumour < 0.6 * (tissue - bg)                  # the inner boundary is the faint one
    assert data[3].id == "tumour-test-0003" and torch.equal(data[3].mask, data[3].mask)


def test_bundled_weights_segment_the_phantom():
    reg = get_registry(load_entrypoints=False)
    data = reg.create("dataset", "synthetic-tumour", count=8)
    seg = reg.create("segmenter", "monai", weights="synthetic-tumour-noise0.25").eval()
    assert seg.num_classes == 3
    images = torch.stack([s.image for s in data])
    with torch.inference_mode():
        pred = seg.predict(images)
    dice = [mean_dice(p, s.mask, 3) for p, s in zip(pred, data)]
    assert np.mean(dice) > 0.85, dice
