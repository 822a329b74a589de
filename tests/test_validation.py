"""Bad input gets a clear error naming what was expected and what came."""
import pytest
import torch
from conftest import ListDataset, ThresholdSegmenter

from certframe.core.smoothing import SmoothedSegmenter
from certframe.interfaces import NoiseKey
from certframe.plugins.certifiers.segcertify import SegCertify
from certframe.run import certify_dataset


def run(pairs, class_names=("background", "foreground"), in_channels=1, **kw):
    args = dict(sigma=0.25, n0=5, n=10, alpha=0.01, taus=(0.75,), seed=0, device="cpu")
    args.update(kw)
    data = ListDataset(pairs, class_names, in_channels)
    return list(certify_dataset(data, ThresholdSegmenter(), None, SegCertify(), **args))


def good():
    return torch.rand(1, 8, 8), torch.zeros(8, 8, dtype=torch.long)


@pytest.mark.parametrize("value,match", [(float("nan"), "NaN or infinite"), (float("inf"), "NaN or infinite")])
def test_nan_and_inf_images(value, match):
    image, mask = good()
    image[0, 2, 3] = value
    with pytest.raises(ValueError, match=f"sample 'item-0': image has 1 {match}"):
        run([(image, mask)])


@pytest.mark.parametrize("lo,hi", [(-0.2, 0.5), (0.0, 255.0)])
def test_values_outside_unit_interval(lo, hi):
    image, mask = good()
    image[0, 0, 0], image[0, 0, 1] = lo, hi
    with pytest.raises(ValueError, match=r"values must lie in \[0, 1\].*got range"):
        run([(image, mask)])


def test_wrong_channel_count():
    _, mask = good()
    with pytest.raises(ValueError, match="image has 3 channel\\(s\\), the model expects 1"):
        run([(torch.rand(3, 8, 8), mask)])


def test_mask_and_image_sizes_differ():
    image, _ = good()
    with pytest.raises(ValueError, match=r"mask size \(8, 9\) differs from the image size \(8, 8\)"):
        run([(image, torch.zeros(8, 9, dtype=torch.long))])


def test_undeclared_mask_labels():
    image, mask = good()
    mask[0, 0] = 3
    with pytest.raises(ValueError, match=r"mask has labels \[0, 3\], the dataset declares classes \[0, 1\]"):
        run([(image, mask)])


def test_float_mask_is_rejected():
    image, _ = good()
    with pytest.raises(ValueError, match="integer labels"):
        run([(image, torch.zeros(8, 8))])


@pytest.mark.parametrize("kw,match", [
    ({"n0": 0}, "n0 must be a positive integer"), ({"n": 0}, "n must be a positive integer"),
    ({"taus": (0.5,)}, r"tau must lie in the open interval \(0.5, 1\)"),
    ({"taus": (1.0,)}, r"tau must lie in the open interval"),
    ({"alpha": 0.0}, r"alpha must lie in the open interval \(0, 1\)"),
    ({"alpha": 1.5}, r"alpha must lie in the open interval"),
    ({"sigma": 0.0}, "sigma must be a positive noise level"),
])
def test_bad_parameters(kw, match):
    with pytest.raises(ValueError, match=match):
        run([good()], **kw)


def test_class_count_mismatch():
    with pytest.raises(ValueError, match="predicts 2 classes, the dataset declares 3"):
        run([good()], class_names=("bg", "a", "b"))


def test_smoothed_segmenter_checks_the_image():
    with pytest.raises(ValueError, match=r"shape \[C, H, W\]"):
        SmoothedSegmenter(ThresholdSegmenter(), None, 0.5).certify(
            torch.rand(1, 1, 8, 8), SegCertify(), key=NoiseKey(0, "x"), n0=5, n=10, alpha=0.01)
