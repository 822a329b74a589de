"""Denoiser quality: PSNR / SSIM pinned to closed forms, the per-sigma table, `certframe evaluate denoiser`."""
from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner

from certframe.interfaces import Denoiser, Sample, SegmentationDataset, Segmenter
from certframe.plugins.denoisers.none import NoDenoiser
from certframe.quality.denoiser import denoiser_quality, noise_for
from certframe.quality.image import mse, psnr, ssim


# ------------------------------------------------------------------- metrics
def test_psnr_of_a_known_mse():
    x = torch.zeros(2, 1, 8, 8)
    y = x + 0.25  # MSE 1/16 exactly
    assert mse(x, y).tolist() == [0.0625, 0.0625]
    assert psnr(y, x).tolist() == [10 * math.log10(16)] * 2  # 12.0412 dB, exact in float64
    half = x.clone()
    half[:, :, :4] = 0.5  # MSE = 0.25 / 2 = 1/8
    assert psnr(half, x)[0].item() == pytest.approx(10 * math.log10(8), abs=1e-12)
    assert psnr(x, x)[0].item() == math.inf
    assert psnr(y * 255, x, data_range=255.0)[0].item() == pytest.approx(10 * math.log10(16), abs=1e-9)


def test_psnr_agrees_with_monai():
    from monai.metrics import PSNRMetric

    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 3, 16, 16, generator=g), torch.rand(3, 3, 16, 16, generator=g)
    ref = PSNRMetric(max_val=1.0, reduction="none")(a, b).flatten()
    torch.testing.assert_close(psnr(a, b).float(), ref.float())


def test_ssim_closed_forms():
    c1 = (0.01 * 1.0) ** 2
    a, b = torch.full((1, 1, 16, 16), 0.5), torch.full((1, 1, 16, 16), 0.1)
    # constant images: mean term (2ab + C1)/(a^2 + b^2 + C1), the variance term C2/C2 = 1
    # (to 1e-5: MONAI's Gaussian window is float32, its weights sum to 1 within float32 rounding)
    assert ssim(a, b).item() == pytest.approx((2 * 0.5 * 0.1 + c1) / (0.25 + 0.01 + c1), rel=1e-5)
    assert ssim(a, b).item() != pytest.approx(ssim(a, b + 0.01).item(), rel=1e-3)  # and it moves with b
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 20, 20, generator=g)
    assert ssim(x, x).tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    assert (ssim(x, x.flip(-1)) < 0.5).all()
    # an image smaller than the 11-pixel window uses the largest odd window that fits
    assert ssim(a[..., :6, :6], b[..., :6, :6]).item() == pytest.approx(ssim(a, b).item(), rel=1e-5)
    with pytest.raises(ValueError, match="at least 3x3"):
        ssim(a[..., :2, :2], b[..., :2, :2])
    with pytest.raises(ValueError, match=r"\(1, 1, 16, 16\) and \(1, 1, 8, 8\)"):
        ssim(a, b[..., :8, :8])


# ------------------------------------------------------ denoiser_quality
class Squares(SegmentationDataset):
    """Grey 16x16 images: a bright square (0.8) on 0.2; the mask is the square."""

    def __init__(self, count=5, size=16):
        self.count, self.size = count, size

    def __len__(self):
        return self.count

    def __getitem__(self, i):
        mask = torch.zeros(self.size, self.size, dtype=torch.long)
        mask[2 + i % 3: 10 + i % 3, 4:12] = 1
        return Sample(image=(0.2 + 0.6 * mask.float())[None], mask=mask, id=f"sq{i}")


class Threshold(Segmenter):
    """Logits (0.5 - x, x - 0.5): class 1 where the image is above 0.5."""

    num_classes, in_channels = 2, 1

    def forward(self, images):
        return torch.cat([0.5 - images, images - 0.5], 1)


class Halfway(Denoiser):
    """A closed-form 'denoiser': the mean of the noisy input and 0.5, clipped to [0, 1]."""

    def forward(self, noisy, sigma):
        return ((noisy + 0.5) / 2).clamp(0, 1)


def test_table_matches_the_metrics_on_the_seeded_noise():
    data = Squares()
    table = denoiser_quality(Halfway(), data, [0.25, 1.0], segmenter=Threshold(), seed=7, batch_size=2,
                             per_image=True)
    assert len(table) == 10 and list(table["id"][:5]) == [f"sq{i}" for i in range(5)]
    for _, row in table.iterrows():
        i = int(row["id"][2:])
        x = data[i].image[None]
        noisy = x + row["sigma"] * noise_for(i, x.shape[1:], seed=7)[None]
        assert row["psnr_noisy"] == pytest.approx(psnr(noisy.clamp(0, 1), x).item(), rel=1e-9)
        assert row["psnr_denoised"] == pytest.approx(psnr(((noisy + 0.5) / 2).clamp(0, 1), x).item(), rel=1e-9)
        assert row["ssim_denoised"] == pytest.approx(ssim(((noisy + 0.5) / 2).clamp(0, 1), x).item(), rel=1e-6)
        assert row["dice_clean"] == 1.0  # the threshold segmenter is exact on clean squares
        assert row["t_star"] is None and row["in_range"] is None  # not a diffusion denoiser
    summary = denoiser_quality(Halfway(), data, [0.25, 1.0], segmenter=Threshold(), seed=7, batch_size=2)
    assert list(summary["sigma"]) == [0.25, 1.0] and list(summary["images"]) == [5, 5]
    for sigma, part in table.groupby("sigma"):
        got = summary.set_index("sigma").loc[sigma]
        assert got["psnr_denoised"] == pytest.approx(part["psnr_denoised"].mean())
        assert got["dice_denoised"] == pytest.approx(part["dice_denoised"].mean())
    # more noise, worse everything
    assert summary["psnr_noisy"].is_monotonic_decreasing and summary["psnr_denoised"].is_monotonic_decreasing
    # reproducible, and independent of batching and of limit
    again = denoiser_quality(Halfway(), data, [0.25, 1.0], segmenter=Threshold(), seed=7, batch_size=5,
                             per_image=True)
    assert again.equals(table)
    first3 = denoiser_quality(Halfway(), data, [0.25, 1.0], segmenter=Threshold(), seed=7, limit=3, per_image=True)
    assert first3["psnr_noisy"].tolist() == table[table["id"].isin(["sq0", "sq1", "sq2"])]["psnr_noisy"].tolist()
    other = denoiser_quality(Halfway(), data, [0.25], seed=8, per_image=True)
    assert other["psnr_noisy"].tolist() != table[table["sigma"] == 0.25]["psnr_noisy"].tolist()
    assert "dice_denoised" not in other  # no segmenter, no Dice columns


def test_identity_denoiser_measures_the_unclipped_input():
    data = Squares(count=2)
    row = denoiser_quality(NoDenoiser(), data, [0.5]).iloc[0]
    assert row["psnr_denoised"] < row["psnr_noisy"]  # clipping alone helps


def test_bad_arguments_are_refused():
    for bad in ([], [0.0], [float("inf")], [-1.0]):
        with pytest.raises(ValueError, match="sigmas must be positive finite"):
            denoiser_quality(Halfway(), Squares(), bad)
    with pytest.raises(ValueError, match="nothing to evaluate"):
        denoiser_quality(Halfway(), Squares(), [0.5], limit=0)

    class NaNDenoiser(Denoiser):
        def forward(self, noisy, sigma):
            return noisy * float("nan")

    with pytest.raises(ValueError, match="non-finite"):
        denoiser_quality(NaNDenoiser(), Squares(), [0.5])


def test_shipped_ddpm_rows_say_t_star_and_the_trained_range():
    from certframe.plugins.datasets.synthetic import SyntheticLung
    from certframe.plugins.denoisers.ddpm import DDPMDenoiser

    data = SyntheticLung(count=2, size=64, seed=0, split="test")
    table = denoiser_quality(DDPMDenoiser(), data, [0.5, 1.5])
    ok, beyond = table.iloc[0], table.iloc[1]
    assert (ok["t_star"], ok["trained_t_max"], ok["in_range"], ok["note"]) == (258, 440, True, "")
    assert ok["psnr_denoised"] > ok["psnr_noisy"] + 10 and ok["ssim_denoised"] > ok["ssim_noisy"]
    assert (beyond["t_star"], beyond["in_range"]) == (475, False)
    assert math.isnan(beyond["psnr_denoised"])
    assert "largest sigma it supports on 64x64 images is 1.254" in beyond["note"]
    assert beyond["max_sigma"] == pytest.approx(1.2544, abs=1e-4)
    from certframe.quality.denoiser import quality_records

    records = quality_records(table)
    assert records[1]["psnr_denoised"] is None and records[1]["in_range"] is False and records[0]["t_star"] == 258
    assert json.loads(json.dumps(records)) == records  # what a manifest can hold


# ------------------------------------------------------------------------ CLI
def test_evaluate_denoiser_command(tmp_path):
    from certframe.cli import main

    out = tmp_path / "q.json"
    args = ["evaluate", "denoiser", "--dataset", "synthetic-lung", "--dataset-option", "count=2",
            "--denoiser", "ddpm", "--sigma", "0.25", "--sigma", "1.5", "--segmenter", "monai",
            "--segmenter-option", "weights=synthetic-lung", "--output", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    for word in ("PSNR", "SSIM", "Dice", "144", "475"):  # headers wrap at 80 columns
        assert word in result.output, word
    assert "sigma 1.5: refused" in result.output
    record = json.loads(out.read_text())
    rows = {r["sigma"]: r for r in record["rows"]}
    assert rows[0.25]["t_star"] == 144 and rows[0.25]["in_range"] is True and rows[0.25]["images"] == 2
    assert rows[1.5]["in_range"] is False and rows[1.5]["psnr_denoised"] is None
    assert rows[0.25]["dice_denoised"] > 0.8 and record["segmenter_options"] == {"weights": "synthetic-lung"}
    for bad, message in ((["--sigma", "0"], "positive finite"), (["--limit", "0"], "--limit must be an integer >= 1"),
                         (["--output", str(tmp_path / "q.csv")], "must be a .json file")):
        res = CliRunner().invoke(main, args[:6] + ["--sigma", "0.5"] + bad)
        assert res.exit_code != 0 and message in res.output, res.output
    nosigma = CliRunner().invoke(main, args[:6])
    assert nosigma.exit_code != 0 and "sigma" in nosigma.output


def test_volumes_are_refused_before_any_model_is_built(monkeypatch):
    """Denoiser quality is 2-D (PSNR / SSIM per image): a volume data set is refused up front, naming it and
    its shape, by the library function and by the command (which does not even build the denoiser)."""
    from certframe.cli import main
    from certframe.plugins.datasets.synthetic_volume import SyntheticVolume
    from certframe.plugins.denoisers.ddpm import DDPMDenoiser

    with pytest.raises(ValueError, match=r"denoiser quality \(PSNR / SSIM\) is measured on images \[C, H, W\]; "
                                         r"the data set gives volumes of shape \[1, 16, 16, 16\] \(\[C, D, H, W\]\)"):
        denoiser_quality(NoDenoiser(), SyntheticVolume(count=1, size=16), [0.25])
    built = []
    monkeypatch.setattr(DDPMDenoiser, "__init__", lambda self, *a, **k: built.append("ddpm"))
    result = CliRunner().invoke(main, ["evaluate", "denoiser", "--dataset", "synthetic-volume", "--dataset-option",
                                       "count=1", "--dataset-option", "size=16", "--denoiser", "ddpm",
                                       "--sigma", "0.25"])
    assert result.exit_code != 0
    message = " ".join(result.output.split())  # rich wraps at 80 columns
    assert ("certframe evaluate denoiser measures denoisers (PSNR / SSIM) on images [C, H, W]; the dataset "
            "'synthetic-volume' gives volumes of shape [1, 16, 16, 16] ([C, D, H, W])") in message, result.output
    assert "Traceback" not in result.output and built == []
