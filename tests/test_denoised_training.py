"""Denoised training (Salman et al. 2020; fine-tuned, Carlini et al. 2023): the segmenter learns on D(x + eps),
the checkpoint records what it was tuned for, resume stays exact, and certifying otherwise warns."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from certframe.checkpoint import read_config
from certframe.cli import main
from certframe.interfaces import Denoiser
from certframe.plugins.datasets.synthetic import SyntheticLung
from certframe.plugins.denoisers.none import NoDenoiser
from certframe.plugins.segmenters.monai_segmenter import MonaiSegmenter
from certframe.registry import get_registry
from certframe.training.segmenter import load_resume_state, train_segmenter
from certframe.training.tuning import check_tuning, module_hash, segmenter_tuning_warning, tuned_for, tuning_record

NET = {"channels": [4, 8], "strides": [2], "num_res_units": 1}


@pytest.fixture(scope="module")
def data():
    return SyntheticLung(count=16, size=32, seed=0, split="train"), SyntheticLung(count=8, size=32, seed=0, split="val")


class Blur(Denoiser):
    """A learnable-looking but frozen 3x3 filter that logs how it is called."""

    def __init__(self):
        super().__init__()
        self.kernel = nn.Parameter(torch.full((1, 1, 3, 3), 1.0 / 9))
        self.calls = []

    def forward(self, noisy, sigma):
        self.calls.append((sigma, torch.is_grad_enabled(), self.kernel.requires_grad, self.training))
        return nn.functional.conv2d(nn.functional.pad(noisy, (1, 1, 1, 1), mode="replicate"), self.kernel).clamp(0, 1)


def fresh():
    torch.manual_seed(7)
    return MonaiSegmenter(weights="random", network=NET)


def train(data, denoiser=None, record=None, epochs=2, sigma=0.25, path=None, resume=False):
    model = fresh()
    res = train_segmenter(model, *data, epochs=epochs, batch_size=8, lr=3e-3, noise_sigma=sigma, seed=3,
                          denoiser=denoiser, denoiser_record=record, checkpoint=path, config=dict(model.config),
                          resume=resume)
    return model, res


def test_the_none_denoiser_trains_exactly_like_gaussian_training(data):
    """The denoiser path takes no randomness of its own: with the identity it IS Gaussian training."""
    gauss_model, gauss = train(data)
    none_model, none = train(data, denoiser=NoDenoiser(), record={"name": "none", "options": {}, "hash": "h"})
    assert none.history == gauss.history
    for (k, a), (_, b) in zip(gauss_model.state_dict().items(), none_model.state_dict().items()):
        assert torch.equal(a, b), k


def test_the_segmenter_trains_on_the_frozen_denoiser_output_with_a_sigma_per_batch(data, tmp_path):
    den = Blur()
    record = {"name": "blur", "options": {"k": 3}, "hash": module_hash(den)}
    path = tmp_path / "tuned.safetensors"
    model, res = train(data, denoiser=den, record=record, sigma=[0.25, 0.5], path=path)
    before = torch.full((1, 1, 3, 3), 1.0 / 9)
    assert torch.equal(den.kernel.detach(), before)  # frozen
    train_calls = den.calls[2:]  # the first calls denoise the fixed validation copies
    assert {c[0] for c in den.calls[:2]} == {0.25, 0.5}
    assert len(train_calls) == 2 * 2 and {c[0] for c in train_calls} <= {0.25, 0.5}
    assert all(not grad and not req and not training for _, grad, req, training in den.calls)
    cfg = read_config(path)
    assert cfg["tuned_for"] == {"denoiser": "blur", "denoiser_options": {"k": 3}, "denoiser_hash": record["hash"],
                                "sigmas": [0.25, 0.5]}
    assert cfg["training"]["noise_sigma"] == [0.25, 0.5] and cfg["training"]["denoiser"] == record
    # a resumed denoised run ends where the uninterrupted one does
    half = tmp_path / "half.safetensors"
    train(data, denoiser=Blur(), record=record, sigma=[0.25, 0.5], path=half, epochs=1)
    resumed_model, resumed = train(data, denoiser=Blur(), record=record, sigma=[0.25, 0.5], path=half, resume=True)
    assert resumed.history == res.history and len(load_resume_state(half)["history"]) == 2
    for (k, a), (_, b) in zip(model.state_dict().items(), resumed_model.state_dict().items()):
        assert torch.equal(a, b), k
    with pytest.raises(ValueError, match=r"cannot resume with different settings .*denoiser="):
        train(data, denoiser=Blur(), record={**record, "hash": "sha256:other"}, sigma=[0.25, 0.5], path=half,
              epochs=3, resume=True)
    with pytest.raises(ValueError, match=r"denoised training needs noise sigma\(s\) > 0"):
        train(data, denoiser=Blur(), record=record, sigma=0.0)


def test_tuned_for_and_check_tuning():
    cfg = {"tuned_for": tuning_record("ddpm", {"model": "m"}, "sha256:" + "a" * 64, [0.25, 0.5])}
    assert tuned_for(cfg)["sigmas"] == [0.25, 0.5]
    assert check_tuning(cfg, "ddpm", "sha256:" + "a" * 64, 0.5) is None
    assert check_tuning(cfg, "ddpm", "sha256:" + "a" * 64, 1.0) == (
        "the segmenter was tuned for denoiser 'ddpm' at sigma 0.25, 0.5; this run uses sigma 1 outside the "
        "trained sigma(s) 0.25, 0.5: the certificate holds, but it does not measure the pipeline the model "
        "was tuned for")
    assert "denoiser 'none' instead of 'ddpm'" in check_tuning(cfg, "none", module_hash(None), 0.25)
    assert "denoiser 'ddpm' with other weights (sha256:bbbbbbbbbbbb..." in check_tuning(
        cfg, "ddpm", "sha256:" + "b" * 64, 0.25)
    # clean training: nothing to warn about; Gaussian training recorded only in "training": tuned for none
    assert tuned_for({"training": {"noise_sigma": 0.0}}) is None and check_tuning(None, "ddpm", None, 0.5) is None
    legacy = {"training": {"noise_sigma": 0.25}}
    assert tuned_for(legacy)["denoiser"] == "none"
    assert check_tuning(legacy, "none", module_hash(None), 0.25) is None
    assert "denoiser 'ddpm' instead of 'none'" in check_tuning(legacy, "ddpm", "x", 0.25)
    bundled = get_registry().create("segmenter", "monai", weights="synthetic-lung-noise0.25")
    assert segmenter_tuning_warning(bundled, "none", None, 0.25) is None
    assert "sigma 0.5 outside" in segmenter_tuning_warning(bundled, "none", None, 0.5)


def test_module_hash_is_a_content_hash():
    a, b = Blur(), Blur()
    assert module_hash(a) == module_hash(b) != module_hash(None)
    with torch.no_grad():
        b.kernel[0, 0, 0, 0] += 1e-6
    assert module_hash(a) != module_hash(b)
    assert module_hash(None) == module_hash(NoDenoiser())


def test_cli_fine_tunes_the_clean_unet_behind_the_bundled_ddpm(tmp_path):
    out = tmp_path / "tuned.safetensors"
    init = get_registry().create("segmenter", "monai", weights="synthetic-lung").weights_path
    args = ["train", "segmenter", "--dataset", "synthetic-lung", "--dataset-option", "count=4", "--dataset-option",
            "size=64", "--init", "synthetic-lung", "--denoiser", "ddpm", "--denoiser-option",
            "model=ddpm-synthetic-lung", "--noise-sigma", "0.25", "--epochs", "1", "--batch-size", "4", "--output",
            str(out), "--device", "cpu"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "fine-tuning monai unet on synthetic-lung" in r.output and "through denoiser ddpm" in r.output
    cfg = read_config(out)
    ddpm = get_registry().create("denoiser", "ddpm", model="ddpm-synthetic-lung")
    assert cfg["tuned_for"] == {"denoiser": "ddpm", "denoiser_options": {"model": "ddpm-synthetic-lung"},
                                "denoiser_hash": module_hash(ddpm), "sigmas": [0.25]}
    # a bundled name is recorded as given (portable), with the hash of the file it resolved to
    from certframe.files import file_sha256

    assert cfg["init"] == {"weights": "synthetic-lung", "sha256": file_sha256(Path(init))}
    tuned = get_registry().create("segmenter", "monai", weights=str(out))
    assert segmenter_tuning_warning(tuned, "ddpm", ddpm, 0.25) is None
    assert "denoiser 'none' instead of 'ddpm'" in segmenter_tuning_warning(tuned, "none", None, 0.25)


def test_cli_errors(tmp_path):
    runner = CliRunner()
    base = ["train", "segmenter", "--dataset", "synthetic-lung", "--dataset-option", "count=4", "--dataset-option",
            "size=32", "--epochs", "1", "--device", "cpu", "--output", str(tmp_path / "m.safetensors")]
    r = runner.invoke(main, base + ["--denoiser", "none"])
    assert r.exit_code == 1 and "--denoiser needs --noise-sigma > 0" in r.output
    r = runner.invoke(main, base + ["--segmenter", "torchscript"])
    assert r.exit_code == 1 and "the torchscript segmenter cannot be trained by certframe" in r.output
    r = runner.invoke(main, base + ["--segmenter-option", "weights=x.safetensors"])
    assert r.exit_code == 1 and "do not pass --segmenter-option weights=" in r.output
    r = runner.invoke(main, base + ["--init", str(tmp_path / "absent.safetensors")])
    assert r.exit_code == 1 and "--init: segmenter weights" in r.output and "absent.safetensors' not found" in r.output
    r = runner.invoke(main, base + ["--noise-sigma", "-1"])
    assert r.exit_code == 1 and "must be finite and >= 0" in r.output
    assert not (tmp_path / "m.safetensors").exists()
