"""The ``nnunet`` segmenter on a tiny results folder written in nnU-Net v2's format (tests/nnunet_fixture.py)."""
from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch

pytest.importorskip("dynamic_network_architectures")

from nnunet_fixture import INTENSITY, arch_kwargs, make_results_folder  # noqa: E402
from routes import attack_cli, certify_cli  # noqa: E402

from certframe.contract import check_segmenter  # noqa: E402
from certframe.plugins.segmenters.nnunet import NNUNetSegmenter, read_nnunet_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def ct_folder(tmp_path_factory):
    return make_results_folder(tmp_path_factory.mktemp("ct"), scheme="CTNormalization", patch=(64, 64))


def nnunet_ct(image: np.ndarray) -> np.ndarray:
    """nnU-Net's CTNormalization.run (nnunetv2/preprocessing/normalization), on original intensities."""
    image = image.astype(np.float32, copy=True)
    np.clip(image, INTENSITY["percentile_00_5"], INTENSITY["percentile_99_5"], out=image)
    image -= INTENSITY["mean"]
    image /= max(INTENSITY["std"], 1e-8)
    return image


def nnunet_zscore(image: np.ndarray) -> np.ndarray:
    """nnU-Net's ZScoreNormalization.run without a mask."""
    image = image.astype(np.float32, copy=True)
    return (image - image.mean()) / max(image.std(), 1e-8)


def test_ct_normalisation_matches_nnunet_on_the_original_intensities(ct_folder):
    """[0, 1] -> HU = lo + x (hi - lo), lo/hi = the 0.5 / 99.5 percentiles; then nnU-Net's own scheme."""
    seg = NNUNetSegmenter(model=str(ct_folder))
    assert seg.intensity_range == [[-200.0, 300.0]]
    x = torch.rand(2, 1, 64, 64) + 0.5 * torch.randn(2, 1, 64, 64)  # noisy, beyond the window too
    hu = -200.0 + x.numpy() * 500.0
    want = torch.from_numpy(np.stack([nnunet_ct(h) for h in hu]))
    assert torch.allclose(seg.normalize(x), want, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(seg(x), seg.net(want), atol=1e-4)


def test_zscore_normalisation_is_per_image_and_range_free(tmp_path):
    folder = make_results_folder(tmp_path, scheme="ZScoreNormalization", channels=("T2", "ADC"), patch=(32, 32))
    seg = NNUNetSegmenter(model=str(folder))
    other = NNUNetSegmenter(model=str(folder), intensity_range=[0, 4000])
    x = torch.rand(3, 2, 32, 32)
    want = torch.from_numpy(np.stack([[nnunet_zscore(c) for c in im] for im in x.numpy()]))
    assert torch.allclose(seg.normalize(x), want, atol=1e-5)
    assert torch.allclose(other.normalize(x), want, atol=1e-4)  # z-scores do not depend on the intensity window


def test_sliding_window_and_padding_agree_with_one_pass_of_a_pointwise_network(tmp_path):
    """With 1x1 kernels, stride 1 and no normalisation layer the network is pointwise, so a Gaussian-weighted sliding
    window over 16x16 patches (and padding a smaller image to the patch) must give the full-image forward."""
    folder = make_results_folder(tmp_path, patch=(16, 16), kwargs=arch_kwargs((4, 8), kernel=1, norm=False, stride=1))
    seg = NNUNetSegmenter(model=str(folder))
    x = torch.rand(2, 1, 40, 56)
    with torch.no_grad():
        full = seg.net(seg.normalize(x))
        assert torch.allclose(seg(x), full, atol=1e-5)
        small = torch.rand(1, 1, 10, 12)
        assert torch.allclose(seg(small), seg.net(seg.normalize(small)), atol=1e-5)


def test_mirroring_averages_the_flipped_predictions(ct_folder):
    seg = NNUNetSegmenter(model=str(ct_folder), mirroring=True)
    assert seg.mirror_axes == (0, 1)
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        z = seg.normalize(x)
        want = sum(seg.net(z.flip(d)).flip(d) if d else seg.net(z) for d in ([], [2], [3], [2, 3])) / 4
        assert torch.allclose(seg(x), want, atol=1e-5)


def test_checkpoint_is_read_weights_only_with_an_allow_list(tmp_path, ct_folder):
    ck = read_nnunet_checkpoint(ct_folder / "fold_0" / "checkpoint_final.pth")
    assert ck["trainer_name"] == "nnUNetTrainer" and isinstance(ck["_best_ema"], np.float64)
    bad = make_results_folder(tmp_path, extra_checkpoint={"output_folder": pathlib.PurePosixPath("/x")})
    with pytest.raises(ValueError, match=r"weights_only=True\): it stores types outside the allow-list: "
                                         r"pathlib.PurePosixPath. certframe never unpickles"):
        NNUNetSegmenter(model=str(bad))


def test_bad_folders_are_refused_clearly(tmp_path, ct_folder):
    with pytest.raises(ValueError, match="needs model="):
        NNUNetSegmenter()
    with pytest.raises(FileNotFoundError, match="dataset.json not found: model= must be an nnU-Net v2 results"):
        NNUNetSegmenter(model=str(tmp_path))
    with pytest.raises(ValueError, match=r"no configuration '3d_fullres'; it has \['2d'\]"):
        NNUNetSegmenter(model=str(ct_folder), configuration="3d_fullres")
    with pytest.raises(FileNotFoundError, match="fold_3"):
        NNUNetSegmenter(model=str(ct_folder), fold=3)
    evil = make_results_folder(tmp_path / "evil")
    plans = (evil / "plans.json").read_text().replace(
        "dynamic_network_architectures.architectures.unet.PlainConvUNet", "os.system")
    (evil / "plans.json").write_text(plans)
    with pytest.raises(ValueError, match="only classes under 'dynamic_network_architectures.architectures.'"):
        NNUNetSegmenter(model=str(evil))


def test_contract_and_certify_from_the_cli(ct_folder, tmp_path):
    check_segmenter(NNUNetSegmenter, options={"model": str(ct_folder)}, image_size=(32, 48),
                    bad_options=[{"model": str(tmp_path)}, {"tile_step_size": 0}])
    certify_cli(tmp_path / "certify", "nnunet", {"model": str(ct_folder)})
    attack_cli(tmp_path / "attack", "nnunet", {"model": str(ct_folder)})   # gradients flow through the wrapper


def test_missing_library_names_the_extra(ct_folder, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_dna(name, *args, **kwargs):
        if name.startswith("dynamic_network_architectures"):
            raise ImportError("No module named 'dynamic_network_architectures'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_dna)
    with pytest.raises(ImportError, match=r"pip install 'certframe\[nnunet\]'"):
        NNUNetSegmenter(model=str(ct_folder))
