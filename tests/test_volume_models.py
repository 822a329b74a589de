"""3-D models: MONAI UNet / SegResNet over volumes, sliding-window prediction, safetensors
round trips that keep spatial_dims, the bundled phantom UNets, and ``certframe train
segmenter`` on volumes."""
from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from certframe.checkpoint import read_config, save_checkpoint
from certframe.cli import main
from certframe.core.metrics import mean_dice
from certframe.plugins.datasets.synthetic_volume import SyntheticVolume
from certframe.plugins.segmenters.monai_segmenter import MonaiSegmenter
from certframe.registry import get_registry
from certframe.training.segmenter import evaluate_dice, stack, train_segmenter

TINY = {"channels": [4, 8], "strides": [2], "num_res_units": 1}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small networks run faster on one thread than on oversubscribed shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(**kw):
    torch.manual_seed(0)
    return MonaiSegmenter(weights="random", network=TINY, spatial_dims=3, **kw)


@pytest.mark.parametrize("arch, network", [("unet", TINY), ("segresnet", {"init_filters": 8})])
def test_3d_networks_map_volumes_to_logits(arch, network):
    torch.manual_seed(0)
    seg = MonaiSegmenter(weights="random", arch=arch, network=network, spatial_dims=3, num_classes=3)
    assert seg.spatial_dims == 3 and seg.config["spatial_dims"] == 3
    with torch.no_grad():
        out = seg(torch.rand(2, 1, 16, 16, 16))
    assert out.shape == (2, 3, 16, 16, 16) and out.dtype == torch.float32 and bool(torch.isfinite(out).all())
    assert seg.predict(torch.rand(1, 1, 16, 16, 16)).shape == (1, 16, 16, 16)
    with pytest.raises(ValueError, match=r"expected volumes \[B, 1, D, H, W\], got \(2, 1, 16, 16\)"):
        seg(torch.rand(2, 1, 16, 16))


def test_2d_stays_the_default():
    seg = MonaiSegmenter(weights="random", network=TINY)
    assert seg.spatial_dims == 2 and seg.roi_size is None
    assert seg(torch.rand(1, 1, 16, 16)).shape == (1, 2, 16, 16)
    with pytest.raises(ValueError, match=r"expected images \[B, 1, H, W\], got \(1, 1, 8, 16, 16\)"):
        seg(torch.rand(1, 1, 8, 16, 16))
    with pytest.raises(ValueError, match="spatial_dims must be 2 .* or 3"):
        MonaiSegmenter(weights="random", spatial_dims=4)


def test_a_wrong_rank_is_a_value_error_naming_both_shapes_and_what_the_input_looks_like():
    """The bundled models: a 3-D model given one volume without its batch axis (the segmenter contract's
    "missing batch axis" case) or a batch of images, a 2-D model given a batch of volumes."""
    volume = MonaiSegmenter(weights="synthetic-volume")
    image = MonaiSegmenter(weights="synthetic-lung")
    with pytest.raises(ValueError) as err:
        volume(torch.rand(1, 32, 32, 32))
    assert str(err.value) == ("expected volumes [B, 1, D, H, W], got (1, 32, 32, 32): a 3-D model (spatial_dims=3) "
                              "takes 5-D input; the input looks like one volume without its batch axis (add it "
                              "with x.unsqueeze(0)) or a batch of images [B, C, H, W]")
    with pytest.raises(ValueError, match=r"^expected volumes \[B, 1, D, H, W\], got \(2, 1, 32, 32\): a 3-D model "
                                         r"\(spatial_dims=3\) takes 5-D input; the input looks like a batch of "
                                         r"images \[B, C, H, W\]$"):
        volume(torch.rand(2, 1, 32, 32))            # two channels' worth of leading axis: not one volume
    with pytest.raises(ValueError) as err:
        image(torch.rand(2, 1, 8, 64, 64))
    assert str(err.value) == ("expected images [B, 1, H, W], got (2, 1, 8, 64, 64): a 2-D model (spatial_dims=2) "
                              "takes 4-D input; the input looks like a batch of volumes [B, C, D, H, W]")
    with pytest.raises(ValueError, match=r"^expected volumes \[B, 1, D, H, W\], got \(2, 3, 32, 32, 32\): "
                                         r"3 channel\(s\) instead of 1$"):
        volume(torch.rand(2, 3, 32, 32, 32))


def test_the_contract_checks_the_bundled_volume_segmenter_on_volumes():
    from certframe.contract import check_segmenter

    report = check_segmenter(MonaiSegmenter, options={"weights": "synthetic-volume"}, image_size=(16, 24, 32))
    assert {"output shape", "batch independence", "bad input"} <= set(report.passed)


def test_sliding_window_equals_direct_prediction_at_the_patch_size_and_fits_larger_volumes():
    seg = tiny(roi_size=16)
    x = torch.rand(2, 1, 16, 16, 16)
    with torch.no_grad():
        direct = seg.net(x)
        assert torch.equal(seg(x), direct) and torch.equal(seg.sliding_window(x), direct)
        big = seg(torch.rand(3, 1, 24, 20, 40))  # larger than the patch: sliding window
        small = seg(torch.rand(1, 1, 8, 16, 16))  # smaller along D: padded, then cropped back
    assert big.shape == (3, 2, 24, 20, 40) and small.shape == (1, 2, 8, 16, 16)
    # a voxel-wise network gives the same logits whole or by (overlapping) windows
    seg.net = torch.nn.Conv3d(1, 2, kernel_size=1)
    vol = torch.rand(2, 1, 24, 20, 40)
    with torch.no_grad():
        torch.testing.assert_close(seg(vol), seg.net(vol), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="roi_size must be a positive int or 3 positive ints"):
        tiny(roi_size=[16, 16])


def test_safetensors_round_trip_keeps_spatial_dims_and_roi(tmp_path):
    seg = tiny(roi_size=[16, 16, 16], num_classes=3)
    path = save_checkpoint(tmp_path / "v.safetensors", seg.net, seg.config)
    cfg = read_config(path)
    assert cfg["spatial_dims"] == 3 and cfg["roi_size"] == [16, 16, 16]
    again = get_registry().create("segmenter", "monai", weights=str(path))
    assert (again.spatial_dims, again.roi_size, again.num_classes) == (3, (16, 16, 16), 3)
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(seg(x), again(x))
    assert MonaiSegmenter(weights=str(path), roi_size=8).roi_size == (8, 8, 8)  # the option wins
    with pytest.raises(ValueError, match=r"holds a 3-D network \(spatial_dims=3, inputs \[B, C, D, H, W\]\), but "
                                         r"spatial_dims=2 was asked"):
        MonaiSegmenter(weights=str(path), spatial_dims=2)


def test_2d_weights_refuse_to_load_as_3d():
    with pytest.raises(ValueError, match=r"synthetic-lung.safetensors holds a 2-D network \(spatial_dims=2, inputs "
                                         r"\[B, C, H, W\]\), but spatial_dims=3 was asked"):
        MonaiSegmenter(weights="synthetic-lung", spatial_dims=3)
    assert MonaiSegmenter(weights="synthetic-lung").spatial_dims == 2  # written before volumes: 2-D


@pytest.mark.parametrize("name, sigma, threshold", [("synthetic-volume", 0.0, 0.94),  # measured 0.969
                                                    ("synthetic-volume-noise0.25", 0.25, 0.87)])  # 0.908
def test_bundled_3d_unets_segment_the_phantom_test_split(name, sigma, threshold):
    """The bundled models (plugins/weights/README.md) on the phantom's test split, size 32:
    clean model on clean volumes, Gaussian-trained model on one seeded noisy copy each."""
    seg = MonaiSegmenter(weights=name)
    assert (seg.spatial_dims, seg.roi_size, seg.num_classes) == (3, (32, 32, 32), 3)
    images, masks = stack(SyntheticVolume(count=8, size=32, split="test"))
    noisy = images + sigma * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    dice = evaluate_dice(seg, noisy, masks, 3, batch_size=4)
    assert dice > threshold, dice
    with torch.inference_mode():
        big = seg.predict(SyntheticVolume(count=1, size=40)[0].image[None])  # sliding window over 32^3 patches
    assert big.shape == (1, 40, 40, 40)


def test_train_segmenter_on_volumes_with_noise():
    train, val = SyntheticVolume(count=4, size=16, split="train"), SyntheticVolume(count=2, size=16, split="val")
    seg = tiny(num_classes=3)
    res = train_segmenter(seg, train, val, epochs=2, batch_size=2, lr=3e-3, noise_sigma=[0.25, 0.5],
                          config=dict(seg.config))
    assert len(res.history) == 2 and all(0.0 <= r["val_dice"] <= 1.0 for r in res.history)
    images, masks = stack(val)
    assert images.shape == (2, 1, 16, 16, 16) and masks.shape == (2, 16, 16, 16)
    with torch.no_grad():
        pred = seg.predict(images)
    assert 0.0 <= mean_dice(pred[0], masks[0], 3) <= 1.0


@pytest.mark.parametrize("sigma", ["0", "0.25"])
def test_cli_trains_a_3d_unet_on_the_phantom(tmp_path, sigma):
    out = tmp_path / "vol.safetensors"
    args = ["train", "segmenter", "--dataset", "synthetic-volume", "--dataset-option", "count=4",
            "--dataset-option", "size=16", "--network-option", "channels=[4,8]", "--network-option", "strides=[2]",
            "--network-option", "num_res_units=1", "--epochs", "2", "--batch-size", "2", "--noise-sigma", sigma,
            "--output", str(out), "--device", "cpu"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "4 train / 4 val images, 3 classes" in r.output and "epoch 2/2" in r.output
    cfg = read_config(out)
    assert (cfg["spatial_dims"], cfg["roi_size"], cfg["dataset"]) == (3, [16, 16, 16], "synthetic-volume")
    assert cfg["class_names"] == ["background", "liver", "kidneys"] and cfg["training"]["noise_sigma"] == float(sigma)
    seg = get_registry().create("segmenter", "monai", weights=str(out))
    with torch.no_grad():
        assert seg(torch.rand(1, 1, 16, 16, 16)).shape == (1, 3, 16, 16, 16)


def test_cli_refuses_a_model_of_the_wrong_dimensionality(tmp_path):
    r = CliRunner().invoke(main, ["train", "segmenter", "--dataset", "synthetic-lung", "--dataset-option", "count=2",
                                  "--dataset-option", "size=16", "--segmenter-option", "spatial_dims=3",
                                  "--output", str(tmp_path / "m.safetensors"), "--epochs", "1"])
    assert r.exit_code == 1
    assert "the monai segmenter is 3-D (spatial_dims=3) but the data set yields images [C, H, W]" in r.output
    r = CliRunner().invoke(main, ["train", "segmenter", "--dataset", "synthetic-volume", "--dataset-option",
                                  "count=2", "--dataset-option", "size=16", "--init", "synthetic-lung",
                                  "--output", str(tmp_path / "v.safetensors"), "--epochs", "1"])
    assert r.exit_code == 1
    assert "is 2-D (spatial_dims=2) but the data set yields volumes [C, D, H, W]" in r.output


def test_cli_trains_on_a_nifti_folder(tmp_path):
    pytest.importorskip("nibabel")
    from nifti_fixture import CLASSES, write_fixture

    root = write_fixture(tmp_path / "data", cases=4)
    out = tmp_path / "nifti.safetensors"
    r = CliRunner().invoke(main, ["train", "segmenter", "--dataset", "nifti-folder", "--dataset-option", f"root={root}",
                                  "--dataset-option", "window=ct:-300,1400", "--dataset-option", "shape=[8,8,8]",
                                  "--dataset-option", "val_fraction=0.25", "--dataset-option", "test_fraction=0",
                                  "--network-option", "channels=[4,8]", "--network-option", "strides=[2]",
                                  "--epochs", "1", "--batch-size", "2", "--output", str(out), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "3 train / 1 val images, 3 classes" in r.output
    cfg = read_config(out)
    assert (cfg["spatial_dims"], cfg["roi_size"], cfg["class_names"]) == (3, [8, 8, 8], CLASSES)
    assert cfg["dataset_identity"]["intensity"]["window"] == "ct:-300,1400"  # the window travels with the model
