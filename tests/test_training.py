"""Training: it learns, it saves the best epoch as a loadable segmenter, it resumes
exactly, and the ``certframe train segmenter`` command drives it."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from training_helpers import lung_command, lung_splits, single_thread, untrained_monai

from certframe.checkpoint import read_config
from certframe.cli import main
from certframe.plugins.datasets.synthetic import SyntheticLung
from certframe.plugins.segmenters.monai_segmenter import MonaiSegmenter
from certframe.registry import get_registry
from certframe.training.segmenter import evaluate_dice, load_resume_state, resume_dir, stack, train_segmenter

NET = {"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1}
one_thread = pytest.fixture(scope="module", autouse=True)(single_thread)


@pytest.fixture(scope="module")
def data():
    return lung_splits(48, 16)


def fresh(arch="unet", network=NET):
    return untrained_monai(network, seed=123, arch=arch)


def run(data, path=None, epochs=4, resume=False, **kw):
    model = fresh()
    res = train_segmenter(model, *data, epochs=epochs, batch_size=8, lr=3e-3, checkpoint=path,
                          config={**model.config, "class_names": ["background", "lungs"]}, resume=resume, **kw)
    return model, res


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    path = tmp_path_factory.mktemp("train") / "lung.safetensors"
    model, res = run(data, path)
    return model, res, path


def test_validation_dice_rises_above_an_honest_threshold(data, trained):
    _, res, _ = trained
    val_images, val_masks = stack(data[1])
    # the best constant guess (everything lungs) scores 2|L| / (|L| + N): what "learned nothing" gets
    frac = float(val_masks.float().mean())
    trivial = 2 * frac / (1 + frac)
    assert trivial < 0.6
    dices = [h["val_dice"] for h in res.history]
    assert len(dices) == 4 and [h["epoch"] for h in res.history] == [0, 1, 2, 3]
    assert res.best_dice == max(dices) and res.best_epoch == dices.index(max(dices))
    assert res.best_dice > 0.85 > trivial
    assert dices[-1] > dices[0] + 0.2


def test_best_checkpoint_loads_as_segmenter_plugin_with_same_outputs(data, trained):
    model, res, path = trained
    assert res.checkpoint == path and path.is_file()
    config = read_config(path)
    side = json.loads(path.with_suffix(".json").read_text())
    totals = {k: side["training"].pop(k) for k in ("epochs_run", "stopped_early", "total_seconds", "total_cpu_seconds")}
    assert side == config  # the JSON is the metadata plus the whole run's totals
    assert totals["epochs_run"] == 4 and totals["stopped_early"] is False
    assert totals["total_cpu_seconds"] >= config["training"]["cpu_seconds"] > 0
    assert config["training"]["best_epoch"] == res.best_epoch and config["class_names"] == ["background", "lungs"]
    loaded = get_registry().create("segmenter", "monai", weights=str(path))
    assert (loaded.in_channels, loaded.num_classes) == (1, 2)
    x = stack(data[1])[0]
    assert res.best_epoch == len(res.history) - 1  # so the in-memory model is the saved one
    with torch.inference_mode():
        assert torch.equal(loaded(x), model(x))
    assert evaluate_dice(loaded, *stack(data[1]), 2) == pytest.approx(res.best_dice, abs=1e-12)


def test_resumed_run_equals_uninterrupted_run(data, trained, tmp_path):
    full_model, full, _ = trained
    path = tmp_path / "r.safetensors"
    run(data, path, epochs=2)
    state = load_resume_state(path)
    assert state["epoch"] == 1 and len(state["history"]) == 2
    assert sorted(p.name for p in resume_dir(path).iterdir()) == [
        "epoch-1.optimizer.safetensors", "epoch-1.weights.safetensors", "state.json"]
    model, res = run(data, path, epochs=4, resume=True)
    assert res.history == full.history
    assert (res.best_dice, res.best_epoch) == (full.best_dice, full.best_epoch)
    for (k, a), (_, b) in zip(full_model.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), k


def test_resume_refuses_other_settings_and_missing_state(data, trained, tmp_path):
    _, _, path = trained
    model = fresh()
    with pytest.raises(ValueError, match=r"cannot resume with different settings .*lr=0\.003 vs 0\.01"):
        train_segmenter(model, *data, epochs=5, batch_size=8, lr=1e-2, checkpoint=path, resume=True)
    with pytest.raises(FileNotFoundError, match="cannot resume: no training state at"):
        train_segmenter(model, *data, epochs=5, checkpoint=tmp_path / "none.safetensors", resume=True)
    with pytest.raises(ValueError, match="resume=True needs the checkpoint path"):
        train_segmenter(model, *data, resume=True)
    with pytest.raises(ValueError, match="need epochs >= 1"):
        train_segmenter(model, *data, epochs=0)


def test_patience_stops_when_validation_dice_stops_improving(data, tmp_path):
    # lr 1e-9: the weights barely move, the hard-label Dice of epoch 0 is never beaten
    path = tmp_path / "p.safetensors"
    model = fresh()
    res = train_segmenter(model, *data, epochs=50, batch_size=8, lr=1e-9, checkpoint=path, patience=2,
                          config=model.config)
    assert res.best_epoch == 0 and len(res.history) == 3 and res.stopped_early  # epochs 1 and 2 did not improve
    assert json.loads(path.with_suffix(".json").read_text())["training"]["epochs_run"] == 3
    again = train_segmenter(fresh(), *data, epochs=50, batch_size=8, lr=1e-9, checkpoint=path, patience=2,
                            resume=True)
    assert again.stopped_early and again.history == res.history  # a stopped run resumes as stopped
    learning = train_segmenter(fresh(), *data, epochs=3, batch_size=8, lr=3e-3, patience=1)
    assert not learning.stopped_early or learning.best_epoch == len(learning.history) - 2
    with pytest.raises(ValueError, match="patience >= 1"):
        train_segmenter(fresh(), *data, epochs=2, patience=0)


def test_lr_plateau_halves_the_step_after_epochs_without_improvement(data, tmp_path):
    # lr 1e-9: epoch 0's Dice is never beaten, so the step halves after every lr_plateau
    # non-improving epochs: 1e-9 for epochs 0-2, then 5e-10 for 3-4, then 2.5e-10
    res = train_segmenter(fresh(), *data, epochs=7, batch_size=8, lr=1e-9, lr_plateau=2)
    assert res.best_epoch == 0
    assert [h["lr"] for h in res.history] == pytest.approx([1e-9] * 3 + [5e-10] * 2 + [2.5e-10] * 2, rel=1e-12)
    constant = train_segmenter(fresh(), *data, epochs=2, batch_size=8, lr=1e-9)
    assert "lr" not in constant.history[0]  # no scheduler: the history is what it was
    with pytest.raises(ValueError, match="lr_plateau >= 1"):
        train_segmenter(fresh(), *data, epochs=2, lr_plateau=0)


def test_lr_plateau_run_resumes_exactly(data, tmp_path):
    # the scheduler's counters travel with the resume state: 2 + 5 epochs equal 7 in one go (a
    # scheduler started afresh at epoch 2 would take that epoch as its best and halve later)
    kw = dict(batch_size=8, lr=1e-9, lr_plateau=2, seed=2)
    whole = train_segmenter(fresh(), *data, epochs=7, checkpoint=tmp_path / "a.safetensors", **kw)
    assert [h["lr"] for h in whole.history] == pytest.approx([1e-9] * 3 + [5e-10] * 2 + [2.5e-10] * 2, rel=1e-12)
    path = tmp_path / "b.safetensors"
    train_segmenter(fresh(), *data, epochs=2, checkpoint=path, **kw)
    assert load_resume_state(path)["lr_scheduler"]["num_bad_epochs"] == 1
    resumed = train_segmenter(fresh(), *data, epochs=7, checkpoint=path, resume=True, **kw)
    assert resumed.history == whole.history
    with pytest.raises(ValueError, match=r"lr_plateau=2 vs 3"):
        train_segmenter(fresh(), *data, epochs=6, checkpoint=path, resume=True, **{**kw, "lr_plateau": 3})


def test_noise_training_validates_on_noisy_images(data):
    model, res = run(data, epochs=2, noise_sigma=0.25, seed=1)
    assert len(res.history) == 2 and 0.0 <= res.best_dice <= 1.0 and res.checkpoint is None
    _, again = run(data, epochs=2, noise_sigma=0.25, seed=1)
    assert again.history == res.history  # seeded: noise draws included


@pytest.mark.parametrize("arch, network", [("unet", NET), ("basicunet", {"features": [4, 4, 8, 8, 16, 4]}),
                                           ("attentionunet", {"channels": [4, 8, 16]}),
                                           ("segresnet", {"init_filters": 8})])
def test_cli_trains_each_architecture_and_the_result_loads(tmp_path, arch, network):
    out = tmp_path / f"{arch}.safetensors"
    args = ["train", "segmenter", "--dataset", "synthetic-chest", "--dataset-option", "count=8",
            "--dataset-option", "size=32", "--arch", arch, "--epochs", "1", "--batch-size", "4",
            "--output", str(out), "--device", "cpu", "--quiet"]
    for key, value in network.items():
        args += ["--network-option", f"{key}={json.dumps(value)}"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    cfg = read_config(out)
    assert (cfg["arch"], cfg["num_classes"], cfg["in_channels"]) == (arch, 3, 1)
    assert cfg["class_names"] == ["background", "lungs", "heart"] and cfg["dataset"] == "synthetic-chest"
    seg = get_registry().create("segmenter", "monai", weights=str(out))
    x = SyntheticLung(count=2, size=32).__getitem__(0).image[None]
    assert seg(x).shape == (1, 3, 32, 32)


def test_cli_output_resume_and_errors(tmp_path):
    out = tmp_path / "m.safetensors"
    base = lung_command(16) + ["--network-option", "channels=[8,16,32]", "--batch-size", "8",
                               "--output", str(out), "--device", "cpu"]
    runner = CliRunner()
    r = runner.invoke(main, base + ["--epochs", "1"])
    assert r.exit_code == 0, r.output
    assert "16 train / 16 val images" in r.output and "epoch 1/1" in r.output and "best val Dice" in r.output
    r = runner.invoke(main, base + ["--epochs", "2"])
    assert r.exit_code == 1 and "exists; pass --resume" in r.output
    r = runner.invoke(main, base + ["--epochs", "2", "--resume"])
    assert r.exit_code == 0, r.output
    assert "epoch 2/2" in r.output and "epoch 1/2" not in r.output
    assert len(load_resume_state(out)["history"]) == 2
    r = runner.invoke(main, base + ["--epochs", "1", "--overwrite", "--quiet"])
    assert r.exit_code == 0 and len(load_resume_state(out)["history"]) == 1
    r = runner.invoke(main, base + ["--epochs", "2", "--overwrite", "--lr-plateau", "1", "--lr", "1e-9"])
    assert r.exit_code == 0, r.output
    assert "epoch 2/2: loss" in r.output and "lr 1e-09" in r.output  # epoch 2 trained with the step before halving
    assert load_resume_state(out)["training"]["lr_plateau"] == 1
    assert [h["lr"] for h in load_resume_state(out)["history"]] == [1e-9, 1e-9]
    r = runner.invoke(main, base + ["--epochs", "1", "--overwrite", "--lr-plateau", "0"])
    assert r.exit_code == 2 and "--lr-plateau" in r.output
    r = runner.invoke(main, base + ["--epochs", "1", "--dataset-option", "split=test"])
    assert r.exit_code == 1 and "do not pass a split option" in r.output
    r = runner.invoke(main, base[:-4] + ["--output", str(tmp_path / "m.pt")])
    assert r.exit_code == 1 and "must be a .safetensors path" in r.output
    r = runner.invoke(main, ["train", "segmenter", "--dataset", "kvasir-seg", "--dataset-option",
                             f"root={tmp_path / 'absent'}", "--output", str(tmp_path / "k.safetensors")])
    assert r.exit_code == 1 and "kvasir-seg root: expected a folder" in r.output


def test_save_state_false_writes_only_the_best_checkpoint(data, tmp_path):
    path = tmp_path / "only.safetensors"
    run(data, path, epochs=1, save_state=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["only.json", "only.safetensors"]


def test_no_segmenter_is_certified_by_accident(tmp_path):
    """monai without weights= is an error (not a randomly initialised UNet certified with rc 0);
    weights=random asks for one on purpose, which is what training does."""
    with pytest.raises(ValueError, match=r"the monai segmenter needs weights=.*Pass weights=random"):
        MonaiSegmenter()
    assert MonaiSegmenter(weights="random").checkpoint_config is None
    r = CliRunner().invoke(main, ["certify", "--dataset", "synthetic-lung", "--dataset-option", "count=1",
                                  "--segmenter", "monai", "-n", "10", "--n0", "5", "--output", str(tmp_path / "c"),
                                  "--device", "cpu", "--quiet"])
    assert r.exit_code != 0 and "needs weights=" in r.output
