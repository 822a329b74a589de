"""Runtime checks on every batch: a misbehaving model raises, naming the plugin, the image and what was wrong."""
import pytest
import torch
from conftest import ListDataset, ThresholdSegmenter

from certframe.core.sampler import NoiseVoter
from certframe.core.smoothing import SmoothedSegmenter
from certframe.interfaces import Denoiser, NoiseKey
from certframe.plugins.certifiers.segcertify import SegCertify
from certframe.run import certify_dataset
from certframe.validation import BatchChecks, ModelOutputError

KW = dict(n0=5, n=20, alpha=0.01, taus=(0.75,), batch_size=4)


class BadValueSegmenter(ThresholdSegmenter):
    """ThresholdSegmenter whose logits get ``value`` at one pixel from call ``from_call`` on."""

    def __init__(self, value=float("nan"), from_call=0):
        super().__init__()
        self.value, self.from_call, self.calls = value, from_call, 0

    def forward(self, images):
        logits = super().forward(images)
        self.calls += 1
        if self.calls > self.from_call:
            logits[:, 1, 0, 0] = self.value
        return logits


class NaNDenoiser(Denoiser):
    def forward(self, noisy, sigma):
        out = noisy.clamp(0, 1)
        out[:, :, 1, 1] = float("nan")
        return out


class MetaSegmenter(ThresholdSegmenter):
    """Returns its logits on another device (meta) than its input."""

    def forward(self, images):
        return super().forward(images).to("meta")


def image():
    return torch.rand(1, 6, 6, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_logits_raise_naming_segmenter_and_image(value):
    smoothed = SmoothedSegmenter(BadValueSegmenter(value), None, 0.25)
    with pytest.raises(ModelOutputError, match=r"image 'lung-7', selection draws 0..4: the segmenter "
                                               r"BadValueSegmenter returned non-finite logits \(NaN or inf"):
        smoothed.certify(image(), SegCertify(), key=NoiseKey(0, "lung-7"), **KW)


def test_a_nan_in_one_late_batch_is_caught():
    """Flags accumulate over batches: a NaN in the 4th of 5 estimation batches still raises."""
    seg = BadValueSegmenter(from_call=2 + 3)          # 2 selection batches, then 3 good estimation ones
    smoothed = SmoothedSegmenter(seg, None, 0.25)
    with pytest.raises(ModelOutputError, match=r"estimation draws 0..19: the segmenter BadValueSegmenter"):
        smoothed.certify(image(), SegCertify(), key=NoiseKey(0, "x"), **KW)


def test_large_finite_logits_pass():
    """The control of a sum-based check (which would overflow to inf): 3e38, near float32's max, passes."""
    smoothed = SmoothedSegmenter(BadValueSegmenter(3e38), None, 0.25)
    cert, = smoothed.certify(image(), SegCertify(), key=NoiseKey(0, "x"), **KW)
    assert cert.labels.shape == (6, 6)


def test_nan_denoiser_raises_naming_the_denoiser():
    smoothed = SmoothedSegmenter(ThresholdSegmenter(), NaNDenoiser(), 0.25)
    with pytest.raises(ModelOutputError, match=r"image 'ct-1', selection draws 0..4: the denoiser NaNDenoiser "
                                               r"returned non-finite images"):
        smoothed.certify(image(), SegCertify(), key=NoiseKey(0, "ct-1"), **KW)


def test_labels_out_of_range_raise_naming_the_model():
    def five_classes(noisy):                      # labels 0..4 for a 2-class vote
        return (noisy[:, 0] * 5).long().clamp(0, 4)

    voter = NoiseVoter(five_classes, image(), key=NoiseKey(0, "im"), sigma=0.25, num_classes=2, batch_size=4)
    with pytest.raises(ModelOutputError, match=r"image 'im', estimation draws 0..9: the model "
                                               r".*five_classes returned labels outside 0..1 \(\d+ pixel\(s\) "
                                               r"got fewer than 10 valid votes\)"):
        voter.counts("estimation", 10)


def test_output_on_another_device_raises():
    smoothed = SmoothedSegmenter(MetaSegmenter(), None, 0.25)
    with pytest.raises(ModelOutputError, match=r"image 'a', selection draws 0..4: the segmenter MetaSegmenter "
                                               r"returned logits on meta, its input was on cpu"):
        smoothed.certify(image(), SegCertify(), key=NoiseKey(0, "a"), **KW)


def test_a_nan_segmenter_fails_the_dataset_run():
    """Through the engine (what `certframe certify` runs): an error, not a certified Dice of 0 with rc 0."""
    data = ListDataset([(image(), torch.zeros(6, 6, dtype=torch.long))])
    with pytest.raises(ModelOutputError, match="image 'item-0'.*BadValueSegmenter returned non-finite logits"):
        list(certify_dataset(data, BadValueSegmenter(), None, SegCertify(), sigma=0.25, n0=5, n=20, alpha=0.01, seed=0,
                             device="cpu"))


def test_checks_read_the_device_once_per_counts_call():
    """The flags stay on the device: raise_pending reads one int, whatever the number of batches."""
    checks = BatchChecks()
    for _ in range(5):
        checks.finite(torch.ones(3), "the segmenter S", "logits")
        checks.finite(torch.ones(3), "the denoiser D", "images")
    checks.raise_pending()                        # all finite: nothing raised
    checks.finite(torch.tensor([1.0, float("nan")]), "the denoiser D", "images")
    checks.finite(torch.ones(3), "the segmenter S", "logits")
    with pytest.raises(ModelOutputError, match=r"^the denoiser D returned non-finite images"):
        checks.raise_pending()
    checks.raise_pending()                        # cleared after reading
