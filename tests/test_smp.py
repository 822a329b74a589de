"""The ``smp`` segmenter: segmentation_models_pytorch networks, trained and certified through certframe."""
from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

smp = pytest.importorskip("segmentation_models_pytorch")

from routes import attack_cli, certify_cli  # noqa: E402

from certframe.checkpoint import read_config, save_checkpoint  # noqa: E402
from certframe.cli import main  # noqa: E402
from certframe.contract import check_segmenter  # noqa: E402
from certframe.plugins.segmenters.smp_segmenter import SMPSegmenter, normalization_stats  # noqa: E402
from certframe.registry import get_registry  # noqa: E402

TINY = {"encoder_depth": 3, "decoder_channels": [16, 8, 8]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An smp U-Net trained for one epoch by the CLI, through the registry, with Gaussian noise."""
    out = tmp_path_factory.mktemp("smp") / "unet.safetensors"
    args = ["train", "segmenter", "--dataset", "synthetic-lung", "--dataset-option", "count=8",
            "--dataset-option", "size=64", "--segmenter", "smp", "--arch", "Unet",
            "--network-option", "encoder_depth=3", "--network-option", "decoder_channels=[16,8,8]",
            "--epochs", "1", "--batch-size", "8", "--noise-sigma", "0.25", "--output", str(out),
            "--device", "cpu", "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return out


def test_training_records_the_plugin_and_loads_back(trained):
    cfg = read_config(trained)
    assert (cfg["segmenter"], cfg["arch"], cfg["encoder"], cfg["in_channels"], cfg["num_classes"]) == \
        ("smp", "Unet", "resnet18", 1, 2)
    assert cfg["network"] == TINY and cfg["normalize"] == "imagenet"
    assert cfg["tuned_for"]["denoiser"] == "none" and cfg["tuned_for"]["sigmas"] == [0.25]
    seg = get_registry().create("segmenter", "smp", weights=str(trained))
    assert seg.checkpoint_config == cfg and seg.config["network"] == TINY
    assert seg(torch.rand(2, 1, 64, 64)).shape == (2, 2, 64, 64)


def test_certify_and_attack_from_the_cli(trained, tmp_path):
    rows = certify_cli(tmp_path / "certify", "smp", {"weights": str(trained)})
    assert rows["clean_dice"].gt(0).all()
    attack_cli(tmp_path / "attack", "smp", {"weights": str(trained)})


def test_contract_and_bad_options(trained):
    report = check_segmenter(SMPSegmenter, options={"weights": str(trained)}, image_size=(32, 48),
                             bad_options=[{"weights": None}, {"weights": "random", "encoder_weights": "imagenet"},
                                          {"weights": "random", "arch": "Transformer"},
                                          {"weights": "random", "encoder": "no-such-encoder"},
                                          {"weights": "random", "normalize": "imagenet", "in_channels": 2}])
    assert "bad options" in report.passed


def test_no_weights_is_an_error_unless_random_is_asked_for():
    with pytest.raises(ValueError, match=r"the smp segmenter needs weights=.*weights=random"):
        SMPSegmenter()
    with pytest.raises(FileNotFoundError, match=r"encoder_weights='imagenet'.*never downloads"):
        SMPSegmenter(weights="random", encoder_weights="imagenet")


def test_normalisation_is_inside_forward_after_the_noise(tmp_path):
    """forward(x) == net((x - mean) / std): ImageNet statistics (grey: their channel means)."""
    assert normalization_stats("imagenet", 1) == ([pytest.approx(0.449)], [pytest.approx(0.226)])
    assert normalization_stats("imagenet", 3) == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    assert normalization_stats({"mean": 0.5, "std": 0.25}, 2) == ([0.5, 0.5], [0.25, 0.25])
    torch.manual_seed(0)
    seg = SMPSegmenter(weights="random", in_channels=3, network=TINY)
    x = torch.rand(2, 3, 64, 64) + 0.3 * torch.randn(2, 3, 64, 64)  # noisy, outside [0, 1]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(seg(x), seg.net((x - mean) / std), atol=1e-6)
        plain = SMPSegmenter(weights="random", in_channels=3, network=TINY, normalize="none")
        plain.net.load_state_dict(seg.net.state_dict())
        assert torch.equal(plain(x), seg.net(x))


def test_sizes_the_network_cannot_take_are_padded_and_cropped():
    """36 x 52 is not a multiple of the encoder's output stride (8 at depth 3): edge-padded to 40 x 56."""
    torch.manual_seed(0)
    seg = SMPSegmenter(weights="random", arch="UnetPlusPlus", network=TINY)
    x = torch.rand(1, 1, 36, 52)
    with torch.no_grad():
        out = seg(x)
        padded = torch.nn.functional.pad((x - seg.mean) / seg.std, (0, 4, 0, 4), mode="replicate")
        assert seg.stride == 8 and out.shape == (1, 2, 36, 52)
        assert torch.equal(out, seg.net(padded)[..., :36, :52])


def test_checkpoint_round_trip_and_foreign_checkpoints(tmp_path):
    torch.manual_seed(0)
    seg = SMPSegmenter(weights="random", arch="FPN", network={"encoder_depth": 3, "decoder_segmentation_channels": 32,
                                                               "decoder_pyramid_channels": 32})
    path = save_checkpoint(tmp_path / "fpn.safetensors", seg.net, seg.config)
    again = SMPSegmenter(weights=str(path))
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(seg(x), again(x))
    monai = get_registry().create("segmenter", "monai", weights="synthetic-lung")
    foreign = save_checkpoint(tmp_path / "monai.safetensors", monai.net, {**monai.config})
    with pytest.raises(ValueError, match=r"written by the 'monai' segmenter, not 'smp'.*--segmenter monai"):
        SMPSegmenter(weights=str(foreign))
    other = save_checkpoint(tmp_path / "other.safetensors", seg.net, {**seg.config, "arch": "Unet", "network": TINY})
    with pytest.raises(ValueError, match=r"other.safetensors: the weights do not fit the smp network"):
        SMPSegmenter(weights=str(other))


def test_missing_library_names_the_extra(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_smp(name, *args, **kwargs):
        if name.startswith("segmentation_models_pytorch"):
            raise ImportError("No module named 'segmentation_models_pytorch'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_smp)
    with pytest.raises(ImportError, match=r"pip install 'certframe\[smp\]'"):
        SMPSegmenter(weights="random")


def test_local_encoder_weights_are_loaded_and_foreign_checkpoints_refused_by_monai(trained, tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    source = SMPSegmenter(weights="random", network=TINY)
    encoder = {k: v.contiguous() for k, v in source.net.encoder.state_dict().items()}
    save_file(encoder, str(tmp_path / "enc.safetensors"))
    torch.manual_seed(2)
    seg = SMPSegmenter(weights="random", network=TINY, encoder_weights=str(tmp_path / "enc.safetensors"))
    for (k, a), (_, b) in zip(source.net.encoder.state_dict().items(), seg.net.encoder.state_dict().items()):
        assert torch.equal(a, b), k
    assert not torch.equal(source.net.segmentation_head[0].weight, seg.net.segmentation_head[0].weight)
    with pytest.raises(ValueError, match=r"written by the 'smp' segmenter, not 'monai'.*--segmenter smp"):
        get_registry().create("segmenter", "monai", weights=str(trained))
