"""The ``torchscript`` segmenter and denoiser: any exported model, certified and attacked like the others."""
from __future__ import annotations

import pytest
import torch
from routes import attack_cli, certify_cli
from torch import nn

from certframe.contract import check_denoiser, check_segmenter
from certframe.plugins.denoisers.torchscript import TorchScriptDenoiser
from certframe.plugins.segmenters.torchscript import TorchScriptSegmenter, load_torchscript
from certframe.registry import get_registry

# TorchScript modules cannot be moved to the meta device (torch refuses, "param must be a Parameter"),
# so the contract's device rule is checked on the CPU (and on CUDA where there is one).
DEVICES = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


class Blur(nn.Module):
    """A 3x3 mean filter: a deterministic stand-in for a denoising network."""

    def forward(self, x, sigma):
        k = torch.full((x.shape[1], 1, 3, 3), 1.0 / 9, device=x.device, dtype=x.dtype)
        return nn.functional.conv2d(nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=x.shape[1])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The bundled clean UNet traced (torch.jit.trace) and a scripted denoiser (torch.jit.script)."""
    root = tmp_path_factory.mktemp("ts")
    unet = get_registry().create("segmenter", "monai", weights="synthetic-lung").net.eval()
    traced = torch.jit.trace(unet, torch.rand(1, 1, 64, 64))
    traced.save(str(root / "unet.pt"))
    torch.jit.script(Blur()).save(str(root / "blur.pt"))
    torch.save(unet.state_dict(), root / "state_dict.pt")
    (root / "garbage.pt").write_bytes(b"not a model at all")
    return root


def test_segmenter_reproduces_the_exported_model(files):
    unet = get_registry().create("segmenter", "monai", weights="synthetic-lung")
    seg = TorchScriptSegmenter(path=str(files / "unet.pt"))
    x = torch.rand(3, 1, 64, 64) + 0.25 * torch.randn(3, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(seg(x), unet(x), atol=1e-5)
    assert seg.config == {"segmenter": "torchscript", "path": str(files / "unet.pt"), "num_classes": 2,
                          "in_channels": 1, "normalize": None}


def test_normalisation_is_applied_after_the_noise(files, tmp_path):
    conv = nn.Conv2d(2, 3, 1)
    torch.jit.script(conv).save(str(tmp_path / "conv.pt"))
    seg = TorchScriptSegmenter(path=str(tmp_path / "conv.pt"), num_classes=3, in_channels=2,
                               normalize={"mean": [0.5, 0.25], "std": [0.2, 0.1]})
    x = torch.rand(2, 2, 8, 12) - 0.3
    want = conv((x - torch.tensor([0.5, 0.25]).view(1, 2, 1, 1)) / torch.tensor([0.2, 0.1]).view(1, 2, 1, 1))
    with torch.no_grad():
        assert torch.allclose(seg(x), want, atol=1e-6)


def test_a_file_that_is_not_torchscript_is_refused_naming_it(files):
    for name in ("state_dict.pt", "garbage.pt"):
        with pytest.raises(ValueError, match=rf"{name} is not a TorchScript model: expected a file written by "
                                             rf"torch.jit.save"):
            TorchScriptSegmenter(path=str(files / name))
    with pytest.raises(FileNotFoundError, match="no-such.pt' does not exist"):
        load_torchscript(files / "no-such.pt")
    with pytest.raises(ValueError, match="needs path="):
        TorchScriptSegmenter()


def test_wrong_output_shape_names_the_file(files):
    seg = TorchScriptSegmenter(path=str(files / "unet.pt"), num_classes=3)
    with pytest.raises(ValueError, match=r"unet.pt: the TorchScript model returned \(1, 2, 64, 64\).*expected "
                                         r"logits \(1, 3, 64, 64\)"):
        seg(torch.rand(1, 1, 64, 64))


def test_contracts(files):
    check_segmenter(TorchScriptSegmenter, options={"path": str(files / "unet.pt")}, devices=DEVICES,
                    bad_options=[{"path": str(files / "garbage.pt")}, {"num_classes": 1},
                                 {"normalize": {"mean": [0.5, 0.5], "std": [1, 1]}}])
    check_denoiser(TorchScriptDenoiser, options={"path": str(files / "blur.pt"), "takes_sigma": True},
                   devices=DEVICES, bad_options=[{"path": str(files / "state_dict.pt")}])


def test_denoiser_calls_the_model_with_sigma_and_clips(files):
    den = TorchScriptDenoiser(path=str(files / "blur.pt"), takes_sigma=True)
    x = torch.rand(2, 1, 16, 16) * 3 - 1
    with torch.no_grad():
        assert torch.equal(den(x, 0.5), Blur()(x, 0.5).clamp(0, 1))


def test_certify_and_attack_from_the_cli(files, tmp_path):
    seg = {"path": str(files / "unet.pt"), "num_classes": 2, "in_channels": 1}
    rows = certify_cli(tmp_path / "certify", "torchscript", seg)
    reference = certify_cli(tmp_path / "monai", "monai", {"weights": "synthetic-lung"})
    # the traced network is the bundled one: the same votes, hence the same certificates
    assert rows["certified_dice"].tolist() == pytest.approx(reference["certified_dice"].tolist(), abs=1e-9)
    certify_cli(tmp_path / "denoised", "monai", {"weights": "synthetic-lung"}, denoiser="torchscript",
                denoiser_options={"path": str(files / "blur.pt"), "takes_sigma": True})
    attack_cli(tmp_path / "attack", "torchscript", seg)
