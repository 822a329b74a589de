"""Built-in data sets, the MONAI segmenter with bundled weights, checkpoints, the demo."""
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from certframe.checkpoint import load_checkpoint, read_config, save_checkpoint
from certframe.cli import main
from certframe.core.metrics import mean_dice
from certframe.plugins.datasets.synthetic import SyntheticChest, SyntheticLesion, SyntheticLung, SyntheticPolyp
from certframe.plugins.segmenters.monai_segmenter import MonaiSegmenter
from certframe.validation import validate_sample


@pytest.mark.parametrize("cls,channels,classes", [(SyntheticLung, 1, 2), (SyntheticChest, 1, 3),
                                                  (SyntheticPolyp, 3, 2), (SyntheticLesion, 3, 2)])
def test_synthetic_items_are_valid_and_seeded(cls, channels, classes):
    data = cls(count=5, size=48, seed=3)
    for s in data:
        validate_sample(s, data.class_names, data.in_channels)
        assert s.image.shape == (channels, 48, 48) and s.image.dtype == torch.float32
        assert set(torch.unique(s.mask).tolist()) == set(range(classes))  # every class present
    # an item depends on (seed, split, index, size) only, not on how many were asked for
    assert torch.equal(cls(count=9, size=48, seed=3)[4].image, data[4].image)
    assert not torch.equal(cls(count=5, size=48, seed=4)[4].image, data[4].image)
    assert not torch.equal(cls(count=5, size=48, seed=3, split="train")[4].image, data[4].image)
    assert len({s.id for s in data}) == 5


def test_synthetic_bad_options():
    with pytest.raises(ValueError, match="split must be one of"):
        SyntheticLung(split="holdout")
    with pytest.raises(ValueError, match="size >= 16"):
        SyntheticLung(size=8)
    with pytest.raises(IndexError, match="out of range for 2 items"):
        SyntheticLung(count=2)[2]


def test_bundled_weights_segment_the_synthetic_test_split():
    data = SyntheticLung(count=8, size=64)
    seg = MonaiSegmenter(weights="synthetic-lung")
    assert (seg.num_classes, seg.in_channels) == (2, 1)
    with torch.inference_mode():
        dices = [mean_dice(seg.predict(s.image[None])[0], s.mask, 2) for s in data]
    assert sum(dices) / len(dices) > 0.95


def test_segmenter_rejects_wrong_channels():
    with pytest.raises(ValueError, match=r"expected images \[B, 1, H, W\], got \(2, 3, 32, 32\)"):
        MonaiSegmenter(weights="synthetic-lung")(torch.rand(2, 3, 32, 32))


def test_checkpoint_round_trip(tmp_path):
    seg = MonaiSegmenter(weights="random", arch="unet", network={"channels": [4, 8], "strides": [2]})
    path = save_checkpoint(tmp_path / "m.safetensors", seg.net, {**seg.config, "note": "x"})
    assert read_config(path)["note"] == "x" and (tmp_path / "m.json").exists()
    again = MonaiSegmenter(weights=str(path))
    x = torch.rand(1, 1, 16, 16)
    assert torch.equal(seg(x), again(x))
    config, state = load_checkpoint(path)
    assert config["network"]["channels"] == [4, 8] and state


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_config(tmp_path / "missing.safetensors")
    pt = tmp_path / "model.pt"
    pt.write_bytes(b"\x80\x04")
    with pytest.raises(ValueError, match="pickled checkpoints"):
        read_config(pt)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(ValueError, match="without certframe configuration"):
        read_config(plain)
    with pytest.raises(ValueError, match="unknown architecture 'vnet'"):
        MonaiSegmenter(weights="random", arch="vnet")


def test_demo_runs_end_to_end(tmp_path):
    r = CliRunner().invoke(main, ["demo", "--images", "1", "-n", "20", "--output", str(tmp_path)],
                           env={"COLUMNS": "160"})
    assert r.exit_code == 0, r.output
    assert "certframe demo" in r.output and "clean UNet" in r.output
    assert (tmp_path / "0-none" / "results.csv").exists()
