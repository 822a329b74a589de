"""Golden end-to-end run: bundled weights, fixed seed, exact certified Dice and abstain rate per image.

`certframe certify` through click's CliRunner on 4 synthetic-lung test images (64 x 64), SegCertify
n0 = 10, n = 100, alpha = 0.001, tau = 0.75, sigma 0.25, seed 0, batch size 50, on the CPU in fp32
(--device cpu --precision fp32, also where CUDA is present), for the clean-trained UNet, the
Gaussian-trained UNet (sigma 0.25) and, on the first image, the clean UNet behind the bundled DDPM.
Any change that moves what is certified (the noise stream, the label step, the statistics, the
weights, the data) moves these numbers, even one that would move both sides of a comparison
together. The values were written after the counter-based noise stream (certframe/sampler.py); on
purpose, a change that moves them must update them here and say why. One torch thread
(conftest.one_thread): the votes of a pixel at a near-tie can depend on the floating-point summation
order of the forward pass.

Certified Dice values are ratios 2TP / (2TP + FP + FN), given here as those fractions; the
abstain rate is (abstained pixels) / 4096.
"""
from fractions import Fraction

import pandas as pd
import pytest
from click.testing import CliRunner

from certframe.cli import main

COMMON = ["certify", "--dataset", "synthetic-lung", "--dataset-option", "size=64", "--segmenter", "monai",
          "--certifier", "segcertify", "--sigma", "0.25", "--n0", "10", "-n", "100", "--alpha", "0.001",
          "--tau", "0.75", "--batch-size", "50", "--seed", "0", "--quiet",
          # CPU values: pinned to the CPU in fp32 (--device auto would mean CUDA and bf16 autocast where present)
          "--device", "cpu", "--precision", "fp32"]

# image_id -> (certified Dice as a fraction, abstained pixels of 4096)
F = Fraction
GOLDEN = {
    "synthetic-lung": {"lung-test-0000": (F(86, 407), 2956), "lung-test-0001": (F(618, 1505), 2183),
                       "lung-test-0002": (F(164, 255), 2527), "lung-test-0003": (F(192, 1295), 3077)},
    "synthetic-lung-noise0.25": {"lung-test-0000": (F(79, 85), 207), "lung-test-0001": (F(94, 99), 175),
                                 "lung-test-0002": (F(820, 843), 178), "lung-test-0003": (F(2032, 2215), 238)},
}
GOLDEN_DDPM = {"lung-test-0000": (F(253, 263), 134)}       # clean UNet behind the bundled DDPM, one-shot


def certify(tmp_path, name, *extra):
    out = tmp_path / name
    result = CliRunner().invoke(main, [*COMMON, *extra, "--output", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return pd.read_csv(out / "results.csv")


def check(rows: pd.DataFrame, golden: dict) -> None:
    got = {r.image_id: (r.certified_dice, round(r.abstain_rate * 4096)) for r in rows.itertuples()}
    assert sorted(got) == sorted(golden)
    for image_id, (dice, abstained) in golden.items():
        assert got[image_id][1] == abstained, image_id
        assert got[image_id][0] == pytest.approx(float(dice), abs=1e-12), image_id
    assert rows["radius"].tolist() == pytest.approx([0.25 * 0.6744897501960817] * len(rows), rel=1e-12)
    assert (rows["num_samples"] == 110).all() and not rows["empty_truth"].any()


@pytest.mark.parametrize("weights", sorted(GOLDEN))
def test_golden_certify_run(tmp_path, one_thread, weights):
    rows = certify(tmp_path, weights, "--dataset-option", "count=4", "--segmenter-option", f"weights={weights}",
                   "--denoiser", "none")
    check(rows, GOLDEN[weights])


def test_golden_ddpm_row(tmp_path, one_thread):
    rows = certify(tmp_path, "ddpm", "--dataset-option", "count=1", "--segmenter-option", "weights=synthetic-lung",
                   "--denoiser", "ddpm", "--denoiser-option", "model=ddpm-synthetic-lung")
    check(rows, GOLDEN_DDPM)
