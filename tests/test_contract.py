"""certframe.contract: every built-in plugin passes it; broken plugins of each kind fail it
with a ContractError naming the plugin and the rule.

The built-ins are taken from the registry at collection time, so a new built-in is
checked without editing this file. A built-in that cannot be built without options
gets them in ``OPTIONS`` (a dict, or a function of a temporary folder that writes a
fixture), or is skipped by name in ``SKIP`` with the reason; one that is in neither
fails with a message saying so.
"""
from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from certframe import hookimpl
from certframe.contract import (
    RULES,
    ContractError,
    ContractReport,
    ContractVotes,
    check_certifier,
    check_dataset,
    check_denoiser,
    check_plugin,
    check_segmenter,
)
from certframe.core.certificate import Certificate
from certframe.core.statistics import certified_radius
from certframe.interfaces import ABSTAIN, Certifier, Denoiser, Sample, SegmentationDataset, Segmenter
from certframe.plugins.certifiers.segcertify import SegCertify
from certframe.registry import get_registry

KINDS = ("segmenter", "denoiser", "dataset", "certifier")

_FILE_DATASET_REASON = ("reads a downloaded data set from a root folder in its own layout; its reading is "
                        "tested on fixtures in that layout in tests/test_datasets.py; here the 'folder' data "
                        "set runs the contract on a file fixture, and kvasir-seg on the real data when present")
SKIP = {
    ("dataset", name): _FILE_DATASET_REASON
    for name in ("kvasir-seg", "cvc-clinicdb", "isic2018", "jsrt", "montgomery", "shenzhen", "ph2")
}
# the model routes of optional extras (certframe[smp], certframe[nnunet]) are checked where the extra is installed
for _name, _module, _extra in (("smp", "segmentation_models_pytorch", "smp"),
                               ("nnunet", "dynamic_network_architectures", "nnunet")):
    try:
        __import__(_module)
    except ImportError:
        SKIP[("segmenter", _name)] = f"{_module} is not installed (pip install 'certframe[{_extra}]')"


def _contract_takes_volumes() -> bool:
    """Whether certframe/contract/dataset.py accepts volume items ``[C, D, H, W]`` on this branch."""
    from certframe.plugins.datasets.synthetic_volume import SyntheticVolume

    try:
        check_dataset(SyntheticVolume, options={"count": 1, "size": 16}, max_items=1)
    except ContractError as err:
        if err.rule == "sample":
            return False
        raise
    return True


if not _contract_takes_volumes():
    for _name in ("synthetic-volume", "nifti-folder"):
        SKIP[("dataset", _name)] = ("the dataset contract's sample rule still assumes [C, H, W] images (the volume "
                                    "core generalises it); tests/test_volume_data.py checks this data set")
try:
    __import__("nibabel")
except ImportError:
    SKIP[("dataset", "nifti-folder")] = "nibabel is not installed (pip install 'certframe[nifti]')"


def _torchscript_segmenter(tmp_path) -> dict:
    torch.jit.script(nn.Conv2d(1, 2, 3, padding=1)).save(str(tmp_path / "seg.pt"))
    return {"path": str(tmp_path / "seg.pt")}


def _torchscript_denoiser(tmp_path) -> dict:
    torch.jit.script(nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.Sigmoid())).save(str(tmp_path / "den.pt"))
    return {"path": str(tmp_path / "den.pt")}


def _nnunet_folder(tmp_path) -> dict:
    from nnunet_fixture import make_results_folder

    return {"model": str(make_results_folder(tmp_path))}


def _folder_fixture(tmp_path) -> dict:
    """Four 40x40 PNG pairs in root/images + root/masks (a bright disk = foreground)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    yy, xx = np.mgrid[:40, :40]
    for i in range(4):
        cy, cx = rng.integers(12, 28, size=2)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 < 64
        img = (60 + 120 * disk + rng.integers(0, 40, size=(40, 40))).astype(np.uint8)
        Image.fromarray(np.stack([img] * 3, -1)).save(tmp_path / "images" / f"case{i}.png")
        Image.fromarray((255 * disk).astype(np.uint8)).save(tmp_path / "masks" / f"case{i}.png")
    return {"root": str(tmp_path), "size": 32, "split": "all"}


def _nifti_fixture(tmp_path) -> dict:
    """Three tiny CT cases in the nnU-Net v2 raw layout (tests/nifti_fixture.py)."""
    from nifti_fixture import write_fixture

    return {"root": str(write_fixture(tmp_path)), "split": "all", "window": "ct:-300,1400"}


def _tiny_diffusion_model(tmp_path) -> dict:
    """A randomly initialised 16x16 grey diffusers UNet2DModel + DDPMScheduler folder."""
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, in_channels=1, out_channels=1, layers_per_block=1,
                       block_out_channels=(8, 16), norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    unet.save_pretrained(tmp_path / "unet", safe_serialization=True)
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(tmp_path / "scheduler")
    return {"model": str(tmp_path)}


# Options for built-ins that need them, and contract arguments where the default does not apply.
OPTIONS = {
    ("segmenter", "monai"): {"weights": "synthetic-lung"},
    ("segmenter", "smp"): {"weights": "random", "network": {"encoder_depth": 3, "decoder_channels": [16, 8, 8]}},
    ("segmenter", "torchscript"): _torchscript_segmenter,
    ("segmenter", "nnunet"): _nnunet_folder,
    ("denoiser", "torchscript"): _torchscript_denoiser,
    ("dataset", "folder"): _folder_fixture,
    ("dataset", "nifti-folder"): _nifti_fixture,
    ("dataset", "synthetic-volume"): {"count": 3, "size": 16},
    ("denoiser", "ddpm"): _tiny_diffusion_model,
    ("denoiser", "ddim"): _tiny_diffusion_model,
    # the contract's votes have 3 classes without names: the hierarchy lists them
    ("certifier", "hierarchical"): {"hierarchy": {"classes": ["c0", "c1", "c2"], "root": ["c0", "g"],
                                                  "groups": {"g": ["c1", "c2"]}}},
}
CHECK_ARGS = {
    ("denoiser", "none"): {"output_range": None},  # passes x + eps on, outside [0, 1]
    # TorchScript modules cannot move to the meta device (a torch limitation); CPU (and CUDA) are checked
    ("segmenter", "torchscript"): {"devices": ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]},
    ("denoiser", "torchscript"): {"devices": ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]},
}
BAD_OPTIONS = {
    ("segmenter", "monai"): [{"weights": "no-such-weights"}, {"weights": None}, {"weights": "random",
                                                                                 "arch": "transformer"}],
    ("segmenter", "smp"): [{"weights": None}, {"encoder_weights": "imagenet"}, {"arch": "Transformer"}],
    ("segmenter", "torchscript"): [{"path": None}, {"num_classes": 1}],
    ("segmenter", "nnunet"): [{"model": "/no/such/folder"}, {"fold": 7}],
    ("denoiser", "torchscript"): [{"path": "/no/such/file.pt"}],
    ("dataset", "synthetic-lung"): [{"count": 0}, {"split": "holdout"}],
    ("dataset", "folder"): [{"root": "/no/such/folder"}, {"mask_mode": "rgb"}],
    ("dataset", "synthetic-volume"): [{"size": 8}, {"split": "holdout"}],
    ("dataset", "nifti-folder"): [{"root": "/no/such/folder"}, {"window": "ct:40"}, {"spacing": [1, 2]}],
    ("certifier", "segcertify"): [{"correction": "sidak"}],
    ("certifier", "hierarchical"): [{"hierarchy": "/no/such/hierarchy.toml"},
                                    {"hierarchy": {"classes": ["c0", "c1", "c2"], "root": ["c0", "c1"]}}],
    ("denoiser", "ddpm"): [{"model": "/no/such/diffusers-folder"}],
}

_REGISTRY = get_registry(load_entrypoints=False)
BUILTINS = [(kind, name) for kind in KINDS for name in _REGISTRY.names(kind)]


@pytest.mark.parametrize("kind,name", BUILTINS, ids=[f"{k}-{n}" for k, n in BUILTINS])
def test_builtin_plugin_honours_the_contract(kind, name, tmp_path, one_thread):
    if (kind, name) in SKIP:
        pytest.skip(f"{kind} {name!r}: {SKIP[kind, name]}")
    options = OPTIONS.get((kind, name), {})
    if callable(options):
        options = options(tmp_path)
    entry = _REGISTRY.get(kind, name)
    required = [k for k, p in entry.options().items() if p.default is p.empty and k not in options]
    if required:
        pytest.fail(f"built-in {kind} {name!r} needs option(s) {required}: give test values in OPTIONS of "
                    f"tests/test_contract.py, or skip it by name in SKIP with the reason")
    report = check_plugin(kind, name, options=options, registry=_REGISTRY,
                          bad_options=BAD_OPTIONS.get((kind, name), ()), **CHECK_ARGS.get((kind, name), {}))
    assert isinstance(report, ContractReport)
    assert {"build", "type"} <= set(report.passed)
    expected = {"segmenter": {"output shape", "determinism", "device", "bad input", "batch independence"},
                "denoiser": {"output shape", "determinism", "device", "bad input", "finite output"},
                "dataset": {"sample", "ids", "determinism", "index range"},
                "certifier": {"radius", "labels", "votes only", "follows votes", "abstains without majority"}}
    assert expected[kind] <= set(report.passed), report
    if not torch.cuda.is_available() and kind != "dataset":
        assert report.skipped["device cuda"] == "CUDA is not available"


KVASIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "Kvasir-SEG"


@pytest.mark.skipif(not (KVASIR / "images").is_dir(), reason=f"real Kvasir-SEG not found at {KVASIR}")
def test_kvasir_seg_on_the_real_data_honours_the_contract():
    report = check_plugin("dataset", "kvasir-seg", options={"root": str(KVASIR), "size": 64}, registry=_REGISTRY,
                          bad_options=[{"root": str(KVASIR / "masks")}])
    assert {"sample", "ids", "determinism", "index range", "bad options"} <= set(report.passed)


def test_the_checks_run_on_what_they_claim():
    r = check_plugin("denoiser", "none", registry=_REGISTRY, output_range=None)
    assert r.skipped["output range"].startswith("output_range=None")
    assert "bad input: channels" in r.skipped  # none declares no in_channels
    assert "device meta" in r.passed  # the meta device checks the device move without CUDA
    text = str(r)
    assert "ok    determinism" in text and "skip  output range" in text


def test_unknown_kind_and_unknown_name_are_clear_errors():
    with pytest.raises(ValueError, match=r"no contract for plugin kind 'attack'; kinds with a contract: segmenter"):
        check_plugin("attack", "pgd")
    with pytest.raises(KeyError, match="unknown segmenter 'nope'"):
        check_plugin("segmenter", "nope", registry=_REGISTRY)


def test_contract_error_is_an_assertion_error_naming_plugin_and_rule():
    err = ContractError("'my-net'", "segmenter", "output shape", "expected [2, 2, 8, 8], got [2, 1, 8, 8]")
    assert isinstance(err, AssertionError)
    assert str(err) == ("segmenter 'my-net' breaks the contract rule 'output shape' "
                        f"({RULES['segmenter']['output shape']}): expected [2, 2, 8, 8], got [2, 1, 8, 8]")


def test_plugin_registered_by_a_third_party_is_checked_through_the_registry():
    mod = types.SimpleNamespace(register_segmenters=hookimpl(lambda register: register("good-seg", GoodSeg)))
    reg = get_registry(load_entrypoints=False, plugins=[("third-party", mod)])
    report = check_plugin("segmenter", "good-seg", registry=reg, options={"in_channels": 3})
    assert report.plugin == "'good-seg' (registered at run time)"
    with pytest.raises(ContractError, match=r"segmenter 'good-seg'.*rule 'build'.*does not accept option"):
        check_plugin("segmenter", "good-seg", registry=reg, options={"in_chanels": 3})


# ------------------------------------------------------------------------ segmenters

class GoodSeg(Segmenter):
    """A correct tiny segmenter: 1x1 convolution, seeded random init, checks its input."""

    num_classes = 2

    def __init__(self, in_channels: int = 1):
        super().__init__()
        if int(in_channels) < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        self.in_channels = int(in_channels)
        self.conv = nn.Conv2d(self.in_channels, 2, 1)
        self.register_buffer("mean", torch.full((1, self.in_channels, 1, 1), 0.5))

    def check(self, x):
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected images [B, {self.in_channels}, H, W], got {tuple(x.shape)}")

    def forward(self, x):
        self.check(x)
        return self.conv(x - self.mean)


class WrongClasses(GoodSeg):
    def forward(self, x):
        return super().forward(x)[:, :1]


class SwappedAxes(GoodSeg):
    def forward(self, x):
        return super().forward(x).transpose(-1, -2)


class NaNLogits(GoodSeg):
    def forward(self, x):
        return torch.log(super().forward(x))  # log of negative logits: NaN


class NaNOnNoise(GoodSeg):
    def forward(self, x):
        return super().forward(x) + torch.sqrt(x[:, :1])  # finite on [0, 1], NaN on noisy input


class MutatesInput(GoodSeg):
    def forward(self, x):
        self.check(x)
        return self.conv(x.sub_(self.mean))


class BatchStatistics(GoodSeg):
    def forward(self, x):
        return super().forward(x) - super().forward(x).mean(dim=0, keepdim=True)


class DropoutAlwaysOn(GoodSeg):
    def forward(self, x):
        return nn.functional.dropout(super().forward(x), p=0.2, training=True)


class UnseededInit(GoodSeg):
    def __init__(self, in_channels: int = 1):
        super().__init__(in_channels)
        w = np.random.default_rng().standard_normal(self.conv.weight.shape)  # not torch's seeded RNG
        self.conv.weight.data = torch.from_numpy(w).float()


class UnregisteredTensor(GoodSeg):
    def __init__(self, in_channels: int = 1):
        super().__init__(in_channels)
        self.scale = torch.ones(1, 2, 1, 1)  # not a buffer: .to(device) leaves it behind

    def forward(self, x):
        return super().forward(x) * self.scale


class ReturnsOnCPU(GoodSeg):
    def forward(self, x):
        self.check(x)
        return torch.zeros(x.shape[0], 2, *x.shape[2:])  # default device, whatever the input's


class NoInputCheck(GoodSeg):
    def forward(self, x):
        return self.conv(x[:, :1] - 0.5)  # silently uses channel 0 of whatever comes


class RuntimeErrorOnBadInput(GoodSeg):
    def forward(self, x):
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise RuntimeError("bad")
        return super().forward(x)


class NoBadOptionCheck(GoodSeg):
    def __init__(self, in_channels: int = 1):
        super().__init__(max(1, int(in_channels)))


class NotASegmenter(nn.Module):
    num_classes, in_channels = 2, 1

    def forward(self, x):
        return x


class OneClass(GoodSeg):
    num_classes = 1


BROKEN_SEGMENTERS = [
    (WrongClasses, {}, "output shape", r"expected output \[2, 2, 32, 48\], got \[2, 1, 32, 48\]"),
    (SwappedAxes, {}, "output shape", r"expected output \[2, 2, 32, 48\], got \[2, 2, 48, 32\]"),
    (NaNLogits, {}, "finite output", r"NaN or infinite value\(s\) in the output"),
    (NaNOnNoise, {}, "finite output", r"noisy input x \+ N\(0, 0.5\^2\)"),
    (MutatesInput, {}, "input untouched", "changed its input tensor in place"),
    (BatchStatistics, {}, "batch independence", "depend on --batch-size"),
    (DropoutAlwaysOn, {}, "determinism", "two forward passes on the same input differ"),
    (UnseededInit, {}, "determinism", r"two segmenters built with the same options under torch.manual_seed\(0\)"),
    (UnregisteredTensor, {}, "device", r"after .to\('meta'\), forward on a meta input raised RuntimeError"),
    (ReturnsOnCPU, {}, "device", r"for an input on meta, the output is on cpu"),
    (NoInputCheck, {}, "bad input", r"input of shape \[2, 2, 32, 48\] \(2 channel\(s\) instead of 1\) was "
                                    r"accepted and gave output \[2, 2, 32, 48\]"),
    (RuntimeErrorOnBadInput, {}, "bad input", "raised RuntimeError: bad; expected ValueError"),
    (NotASegmenter, {}, "type", "expected a certframe.interfaces.Segmenter, got NotASegmenter"),
    (OneClass, {}, "type", r"num_classes must be an int >= 2"),
]


@pytest.mark.parametrize("factory,kwargs,rule,message", BROKEN_SEGMENTERS,
                         ids=[b[0].__name__ for b in BROKEN_SEGMENTERS])
def test_broken_segmenter_fails_with_a_clear_message(factory, kwargs, rule, message):
    with pytest.raises(ContractError, match=message) as info:
        check_segmenter(factory, **kwargs)
    assert info.value.rule == rule and info.value.kind == "segmenter"
    assert str(info.value).startswith(f"segmenter '{factory.__qualname__}' breaks the contract rule {rule!r}")


def test_good_segmenter_passes_and_bad_options_are_checked():
    report = check_segmenter(GoodSeg, options={"in_channels": 3}, bad_options=[{"in_channels": 0}])
    assert "bad options" in report.passed
    report = check_segmenter(GoodSeg(2), name="instance")  # an instance: building is not checked
    assert report.plugin == "instance" and "determinism: building" in report.skipped
    with pytest.raises(ContractError, match=r"rule 'bad options'.*options \{'in_channels': 0\} were accepted"):
        check_segmenter(NoBadOptionCheck, bad_options=[{"in_channels": 0}])


# ------------------------------------------------------------------------- denoisers

class GoodDen(Denoiser):
    """Clips: a (poor but correct) denoiser with a declared channel count."""

    def __init__(self, in_channels: int = 1):
        super().__init__()
        self.in_channels = in_channels

    def forward(self, noisy, sigma):
        if noisy.dim() != 4 or noisy.shape[1] != self.in_channels:
            raise ValueError(f"expected [B, {self.in_channels}, H, W], got {tuple(noisy.shape)}")
        return noisy.clamp(0, 1)


class Unclipped(GoodDen):
    def forward(self, noisy, sigma):
        return super().forward(noisy, sigma) * 0 + noisy


class DropsChannel(GoodDen):
    def forward(self, noisy, sigma):
        return super().forward(noisy, sigma)[:, :1]


class StochasticStep(GoodDen):
    def forward(self, noisy, sigma):
        return (super().forward(noisy, sigma) + 0.01 * torch.randn_like(noisy)).clamp(0, 1)


class BuildsOnCPU(GoodDen):
    def forward(self, noisy, sigma):
        return torch.zeros(noisy.shape) + super().forward(noisy, sigma)


class AnyChannels(GoodDen):
    def forward(self, noisy, sigma):
        return noisy.clamp(0, 1)  # declares in_channels but never checks it


BROKEN_DENOISERS = [
    (Unclipped, {}, "output range",
     r"at sigma=0.25 the output spans \[-0.\d+, 1.\d+\], expected values in \[0.0, 1.0\]"),
    (DropsChannel, {"in_channels": 3}, "output shape", r"expected output \[2, 3, 32, 48\], got \[2, 1, 32, 48\]"),
    (StochasticStep, {}, "determinism", "two forward passes on the same input differ"),
    (BuildsOnCPU, {}, "device", r"after .to\('meta'\), forward on a meta input raised"),
    (AnyChannels, {}, "bad input", r"\(2 channel\(s\) instead of 1\) was accepted"),
]


@pytest.mark.parametrize("factory,kwargs,rule,message", BROKEN_DENOISERS,
                         ids=[b[0].__name__ for b in BROKEN_DENOISERS])
def test_broken_denoiser_fails_with_a_clear_message(factory, kwargs, rule, message):
    with pytest.raises(ContractError, match=message) as info:
        check_denoiser(factory, options=kwargs)
    assert info.value.rule == rule
    assert str(info.value).startswith(f"denoiser '{factory.__qualname__}' breaks the contract rule {rule!r}")


def test_good_denoiser_passes():
    report = check_denoiser(GoodDen, options={"in_channels": 3}, sigmas=(0.25, 1.0))
    assert {"output range", "bad input", "device meta"} <= set(report.passed)


# -------------------------------------------------------------------------- datasets

class GoodData(SegmentationDataset):
    class_names = ("background", "lesion")
    in_channels = 1

    def __init__(self, count: int = 5, seed: int = 0):
        if int(count) < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        self.count, self.seed = int(count), int(seed)

    def __len__(self):
        return self.count

    def image(self, index):
        g = torch.Generator().manual_seed(self.seed * 1000 + index)
        return torch.rand(1, 12, 10, generator=g)

    def __getitem__(self, index):
        if not 0 <= index < self.count:
            raise IndexError(f"index {index} out of range for {self.count} items")
        x = self.image(index)
        return Sample(x, (x[0] > 0.5).long(), f"item-{index}")


class Bytes(GoodData):
    def image(self, index):
        return super().image(index) * 255


class FloatMask(GoodData):
    def __getitem__(self, index):
        s = super().__getitem__(index)
        return Sample(s.image, s.mask.float(), s.id)


class RGBButDeclaresGrey(GoodData):
    def image(self, index):
        return super().image(index).expand(3, -1, -1).contiguous()


class UndeclaredLabel(GoodData):
    def __getitem__(self, index):
        s = super().__getitem__(index)
        return Sample(s.image, s.mask * 2, s.id)


class UnseededImages(GoodData):
    def image(self, index):
        return torch.from_numpy(np.random.default_rng().random((1, 12, 10), dtype=np.float32))


class GlobalSeedImages(GoodData):
    """Deterministic within one object (cached), but drawn from torch's global RNG."""

    def __init__(self, count: int = 5, seed: int = 0):
        super().__init__(count, seed)
        self.cache = [torch.rand(1, 12, 10) for _ in range(count)]

    def image(self, index):
        return self.cache[index]


class DuplicateIds(GoodData):
    def __getitem__(self, index):
        s = super().__getitem__(index)
        return Sample(s.image, s.mask, f"item-{index // 2}")


class WrapsAround(GoodData):
    def __getitem__(self, index):
        return super().__getitem__(index % self.count)


class PathIdentity(GoodData):
    def identity(self):
        from pathlib import Path

        return {"root": Path("/data")}


class MaskOtherSize(GoodData):
    def __getitem__(self, index):
        s = super().__getitem__(index)
        return Sample(s.image, s.mask[:, :5], s.id)


BROKEN_DATASETS = [
    (Bytes, "sample", r"item 0 \(id 'item-0'\): image values span \[\d.*, 2\d\d.*\], expected \[0, 1\]"),
    (FloatMask, "sample", r"item 0 \(id 'item-0'\): mask must be an int64 tensor, got torch.float32"),
    (RGBButDeclaresGrey, "sample", r"image must be \[C=1, H, W\], got \[3, 12, 10\]"),
    (UndeclaredLabel, "sample", r"mask has labels \[0, 2\], the data set declares classes \[0, 1\] "
                                r"\(background, lesion\)"),
    (MaskOtherSize, "sample", r"mask shape \[12, 5\] differs from the image's \[H, W\] \[12, 10\]"),
    (UnseededImages, "determinism", "reading item 0 twice gave different samples"),
    (GlobalSeedImages, "determinism", "differs between two data sets built with the same options"),
    (DuplicateIds, "ids", r"ids are not unique \(\['item-0', 'item-1'\] repeat\)"),
    (WrapsAround, "index range", r"dataset\[5\] \(one past the end of 5 items\) returned Sample, expected IndexError"),
    (PathIdentity, "identity", "identity\\(\\) is not JSON-serialisable"),
]


@pytest.mark.parametrize("factory,rule,message", BROKEN_DATASETS, ids=[b[0].__name__ for b in BROKEN_DATASETS])
def test_broken_dataset_fails_with_a_clear_message(factory, rule, message):
    with pytest.raises(ContractError, match=message) as info:
        check_dataset(factory)
    assert info.value.rule == rule
    assert str(info.value).startswith(f"dataset '{factory.__qualname__}' breaks the contract rule {rule!r}")


def test_good_dataset_passes_and_empty_one_fails():
    report = check_dataset(GoodData, options={"count": 9}, max_items=3, bad_options=[{"count": 0}])
    assert {"sample", "ids", "determinism", "index range", "identity", "bad options"} <= set(report.passed)
    class Empty(GoodData):
        def __len__(self):
            return 0

    with pytest.raises(ContractError, match=r"rule 'length'.*len\(\) is 0; an empty data set certifies nothing"):
        check_dataset(Empty)


# ------------------------------------------------------------------------ certifiers

class WrongRadius(SegCertify):
    def certify(self, votes, request):
        certs = super().certify(votes, request)
        for c in certs:
            c.radius = request.sigma * c.tau  # not sigma * Phi^-1(tau)
        return certs


class AbstainAs255(SegCertify):
    def certify(self, votes, request):
        certs = super().certify(votes, request)
        for c in certs:
            c.labels = torch.where(c.labels == ABSTAIN, torch.full_like(c.labels, 255), c.labels)
        return certs


class FloatLabels(SegCertify):
    def certify(self, votes, request):
        certs = super().certify(votes, request)
        for c in certs:
            c.labels = c.labels.float()
        return certs


class ReusesSelection(Certifier):
    """Selects and estimates on the same draws (selection bias)."""

    name = "reuse"

    def certify(self, votes, request):
        counts = votes.counts("estimation", request.n)
        c_hat = counts.argmax(0)
        k = votes.counts("estimation", request.n).gather(0, c_hat[None])[0]
        from certframe.plugins.certifiers.segcertify import certificates_from_counts

        return certificates_from_counts(c_hat, k, request, "holm", self.name)


class PeeksAtTheModel(SegCertify):
    def certify(self, votes, request):
        getattr(votes, "model")  # not part of VoteSource
        return super().certify(votes, request)


class OwnRandomness(SegCertify):
    def certify(self, votes, request):
        certs = super().certify(votes, request)
        for c in certs:
            drop = torch.rand(c.labels.shape) < 0.3
            c.labels = torch.where(drop, torch.full_like(c.labels, ABSTAIN), c.labels)
        return certs


class NoTest(Certifier):
    """Certifies the majority class everywhere, without any test."""

    name = "no-test"

    def certify(self, votes, request):
        c_hat = votes.counts("selection", request.n0).argmax(0)
        votes.counts("estimation", request.n)
        return [Certificate(c_hat.clone(), certified_radius(request.sigma, t), t, request.sigma, request.alpha,
                            self.name, request.n0 + request.n) for t in request.taus]


class Inverted(SegCertify):
    def certify(self, votes, request):
        certs = super().certify(votes, request)
        for c in certs:
            c.labels = torch.where(c.labels == ABSTAIN, c.labels, (c.labels + 1) % votes.num_classes)
        return certs


class AlwaysAbstains(SegCertify):
    def certify(self, votes, request):
        certs = super().certify(votes, request)
        for c in certs:
            c.labels = torch.full_like(c.labels, ABSTAIN)
        return certs


class CountsOnlyEstimation(SegCertify):
    def certify(self, votes, request):
        certs = super().certify(votes, request)
        for c in certs:
            c.num_samples = request.n
        return certs


class OneCertificate(SegCertify):
    def certify(self, votes, request):
        return super().certify(votes, request)[:1]


class ShortPixelRadius(SegCertify):
    def certify(self, votes, request):
        certs = super().certify(votes, request)
        for c in certs:
            c.pixel_radius = torch.zeros(c.labels.shape, dtype=torch.float64)
        return certs


BROKEN_CERTIFIERS = [
    (WrongRadius, "radius", r"at sigma=0.5, tau=0.6 the radius must be sigma \* Phi\^-1\(tau\) = 0.126674, got 0.3"),
    (AbstainAs255, "labels", r"at tau=0.6: labels .* include \[255\]; allowed are ABSTAIN \(-1\) and the classes 0..2"),
    (FloatLabels, "labels", r"at tau=0.6: expected int64 \[12, 16\] labels, got torch.float32"),
    (ReusesSelection, "votes only", r"draws 0..199 of phase 'estimation' were asked for twice"),
    (PeeksAtTheModel, "votes only", r"the certifier used 'model' of the vote source"),
    (OwnRandomness, "determinism", r"two runs on the same votes differ in \d+ pixel\(s\)"),
    (NoTest, "abstains without majority", r"at tau=0.6: 96 of 96 pixel\(s\) whose top class has probability 0.5 "
                                         r"were certified.*probability 9e-08 at n=200"),
    (Inverted, "follows votes", r"all voted one class were certified as another class"),
    (AlwaysAbstains, "follows votes", "every pixel abstains although all 220 draws"),
    (CountsOnlyEstimation, "votes only", r"num_samples is 200, but 220 draws were taken"),
    (OneCertificate, "certificates", r"expected a list of 3 certificates \(one per tau \[0.6, 0.75, 0.9\]\), got 1"),
    (ShortPixelRadius, "extras", r"certified pixel\(s\) have pixel_radius below the certificate's radius"),
]


@pytest.mark.parametrize("factory,rule,message", BROKEN_CERTIFIERS, ids=[b[0].__name__ for b in BROKEN_CERTIFIERS])
def test_broken_certifier_fails_with_a_clear_message(factory, rule, message):
    with pytest.raises(ContractError, match=message) as info:
        check_certifier(factory)
    assert info.value.rule == rule
    assert str(info.value).startswith(f"certifier '{factory.__qualname__}' breaks the contract rule {rule!r}")


def test_contract_votes_are_a_reproducible_vote_source():
    probs = torch.tensor([[[0.2, 1.0]], [[0.8, 0.0]]], dtype=torch.float64)  # K=2, H=1, W=2
    votes = ContractVotes(probs, seed=3)
    a = votes.counts("estimation", 4000)
    assert a.dtype == torch.int64 and a.shape == (2, 1, 2) and a.sum(0).eq(4000).all()
    assert a[:, 0, 1].tolist() == [4000, 0]  # a class of probability 1 gets every vote
    assert abs(a[1, 0, 0].item() / 4000 - 0.8) < 4 * (0.8 * 0.2 / 4000) ** 0.5
    # the same (phase, index) is the same draw: counts of 0..9 == counts of 0..4 + 5..9
    assert torch.equal(votes.counts("x", 10), votes.counts("x", 5) + votes.counts("x", 5, start=5))
    assert votes.reused() is not None and "phase 'x'" in votes.reused()
    assert votes.draws() == 4000 + 10 + 5 + 5
    with pytest.raises(AttributeError, match="only counts"):
        votes.image
    assert votes.misuse == ["image"]
