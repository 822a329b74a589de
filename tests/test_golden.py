"""Golden end-to-end run: bundled weights, fixed seed, exact certified Dice and abstain rate per image.

`certframe certify` through click's CliRunner on 4 synthetic-lung test images (64 x 64), SegCertify
n0 = 10, n = 100, alpha = 0.001, tau = 0.75, sigma 0.25, seed 0, batch size 50, on the CPU in fp32
(--device cpu --precision fp32, also where CUDA is present), for the clean-trained UNet, the
Gaussian-trained UNet (sigma 0.25) and, on the first image, the clean UNet behind the bundled DDPM.
Any change that moves what is certified (the noise stream, the label step, the statistics, the
weights, the data) moves these numbers, even one that would move both sides of a comparison
together. The values were written with the noise stream philox4x32-10/box-muller/1
(certframe/core/philox.py, the same draws on CPU and CUDA); on purpose, a change that moves them must
update them here and say why. One torch thread (conftest.one_thread): the votes of a pixel at a near-tie
can depend on the floating-point summation order of the forward pass.

Certified Dice values are ratios 2TP / (2TP + FP + FN), given here as those fractions; the
abstain rate is (abstained pixels) / 4096.
"""
from fractions import Fraction

import pandas as pd
import pytest
import torch
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
    "synthetic-lung": {"lung-test-0000": (F(29, 151), 2952), "lung-test-0001": (F(566, 1479), 2237),
                       "lung-test-0002": (F(77, 125), 2574), "lung-test-0003": (F(9, 59), 3121)},
    "synthetic-lung-noise0.25": {"lung-test-0000": (F(74, 79), 200), "lung-test-0001": (F(166, 175), 176),
                                 "lung-test-0002": (F(809, 838), 184), "lung-test-0003": (F(93, 101), 242)},
}
GOLDEN_DDPM = {"lung-test-0000": (F(290, 301), 134)}       # clean UNet behind the bundled DDPM, one-shot


def certify(tmp_path, name, *extra, device="cpu"):
    out = tmp_path / name
    command = [*COMMON, *extra, "--output", str(out)]
    command[command.index("--device") + 1] = device
    result = CliRunner().invoke(main, command)
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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("weights", sorted(GOLDEN))
def test_golden_run_on_cuda_in_fp32(tmp_path, weights):
    """The same command on CUDA in fp32: the same noise draws (one stream), convolutions in true fp32
    (no TF32), so the certificates match the CPU's except where a vote sits on a near-tie of the
    logits, which the two devices' kernels may round differently: a few pixels at most."""
    rows = certify(tmp_path, weights, "--dataset-option", "count=4", "--segmenter-option", f"weights={weights}",
                   "--denoiser", "none", device="cuda")
    got = {r.image_id: (r.certified_dice, round(r.abstain_rate * 4096)) for r in rows.itertuples()}
    for image_id, (dice, abstained) in GOLDEN[weights].items():
        assert abs(got[image_id][1] - abstained) <= 4, image_id
        assert got[image_id][0] == pytest.approx(float(dice), abs=2e-3), image_id
