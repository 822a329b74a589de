"""The ``smp`` segmenter: segmentation_models_pytorch networks (U-Net, UNet++, DeepLabV3+, FPN, ...)."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from certframe.checkpoint import load_checkpoint
from certframe.interfaces import Segmenter

from .weights import RANDOM, check_written_by, load_state, require_weights, resolve_weights

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATIONS = ("imagenet", "none")


def import_smp():
    """``segmentation_models_pytorch``, or an ImportError that says how to install it."""
    try:
        import segmentation_models_pytorch as smp
    except ImportError as err:
        raise ImportError("the smp segmenter needs segmentation-models-pytorch: pip install 'certframe[smp]' "
                          f"({err})") from err
    return smp


def normalization_stats(normalize, in_channels: int) -> tuple[list[float], list[float]] | None:
    """``(mean, std)`` per input channel, or None for no normalisation.

    normalize: ``"imagenet"`` (ImageNet mean/std, what smp's pretrained encoders expect; a grey
    image uses the mean of the three channels' values, as smp sums the RGB filters of the first
    convolution for ``in_channels=1``), ``"none"``, or ``{"mean": [...], "std": [...]}`` with one
    value per channel (or one value for all).
    """
    if normalize == "none" or normalize is None:
        return None
    if normalize == "imagenet":
        if in_channels == 3:
            return list(IMAGENET_MEAN), list(IMAGENET_STD)
        if in_channels == 1:
            return [sum(IMAGENET_MEAN) / 3], [sum(IMAGENET_STD) / 3]
        raise ValueError(f"normalize='imagenet' is defined for 1 or 3 input channels, got in_channels="
                         f"{in_channels}; give normalize={{\"mean\": [...], \"std\": [...]}} or 'none'")
    if isinstance(normalize, dict) and set(normalize) == {"mean", "std"}:
        mean, std = ([float(v)] * in_channels if isinstance(v, (int, float)) else [float(a) for a in v]
                     for v in (normalize["mean"], normalize["std"]))
        if len(mean) != in_channels or len(std) != in_channels or min(std) <= 0:
            raise ValueError(f"normalize needs {in_channels} means and {in_channels} positive stds, got {normalize}")
        return mean, std
    raise ValueError(f"normalize must be one of {NORMALIZATIONS} or {{'mean': [...], 'std': [...]}}, "
                     f"got {normalize!r}")


class SMPSegmenter(Segmenter):
    """A segmentation_models_pytorch network (U-Net, UNet++, DeepLabV3+, FPN, ...) as a segmenter.

    Laousy et al. (MICCAI 2023) certified smp U-Net, UNet++ and DeepLabV3+ models.

    ``forward(images [B, C, H, W])`` with images in ``[0, 1]`` plus noise (unclipped) ->
    logits ``[B, K, H, W]``. The input normalisation ``(x - mean) / std`` happens here, after
    the noise, so a certificate radius stays in the data set's ``[0, 1]`` units. Sizes that
    the network cannot take (H or W not a multiple of the encoder's output stride, for the
    architectures that require it) are padded at the bottom/right by edge replication and
    the logits cropped back.

    Options:
      weights: a .safetensors file written by certframe (``certframe train segmenter
        --segmenter smp``; the architecture is read from its metadata), or ``"random"`` for an
        untrained network on purpose. Required.
      arch: an smp architecture (Unet, UnetPlusPlus, DeepLabV3Plus, FPN, Linknet, MAnet, PAN,
        PSPNet, ...; default Unet). encoder: an smp encoder name (resnet18).
      in_channels (1), num_classes (2), network: extra ``smp.create_model`` arguments
        (e.g. ``{"encoder_depth": 3, "decoder_channels": [32, 16, 8]}``).
      encoder_weights: a local .safetensors file with the encoder's state dict, or None.
        Nothing is ever downloaded: names such as ``"imagenet"`` are refused.
      normalize: ``"imagenet"`` (default), ``"none"`` or ``{"mean": [...], "std": [...]}`` (see
        :func:`normalization_stats`).
      device (cpu).
    """

    def __init__(self, weights: str | None = None, arch: str = "Unet", encoder: str = "resnet18",
                 in_channels: int = 1, num_classes: int = 2, network: dict | None = None,
                 encoder_weights: str | None = None, normalize="imagenet", device: str = "cpu"):
        super().__init__()
        smp = import_smp()
        require_weights("smp", weights)
        config = {"segmenter": "smp", "arch": arch, "encoder": encoder, "in_channels": int(in_channels),
                  "num_classes": int(num_classes), "network": dict(network or {}), "normalize": normalize}
        self.checkpoint_config, state = None, None
        if weights != RANDOM:
            path = resolve_weights(weights)
            saved, state = load_checkpoint(path)
            check_written_by(path, saved, "smp")
            missing = [k for k in config if k not in saved and k != "segmenter"]
            if missing:
                raise ValueError(f"{path} lacks the smp configuration keys {missing}: it was not written for "
                                 f"the smp segmenter")
            config.update({k: saved[k] for k in config if k != "segmenter"})
            self.checkpoint_config = saved
            self.weights_path = str(path)
        self.config = config
        self.in_channels, self.num_classes = config["in_channels"], config["num_classes"]
        if encoder_weights is not None and not Path(str(encoder_weights)).is_file():
            raise FileNotFoundError(f"encoder_weights={encoder_weights!r}: expected a local .safetensors file "
                                    f"with the encoder's state dict; certframe never downloads weights "
                                    f"(smp's 'imagenet' and similar names need the network)")
        if config["arch"].lower() not in {a.lower() for a in smp.MODEL_ARCHITECTURES_MAPPING}:
            raise ValueError(f"unknown smp architecture {config['arch']!r}; available: "
                             f"{', '.join(sorted(smp.MODEL_ARCHITECTURES_MAPPING))}")
        if config["encoder"] not in smp.encoders.encoders:
            raise ValueError(f"unknown smp encoder {config['encoder']!r}; see "
                             f"segmentation_models_pytorch.encoders.get_encoder_names()")
        if self.in_channels < 1 or self.num_classes < 2:
            raise ValueError(f"need in_channels >= 1 and num_classes >= 2, got {self.in_channels}, "
                             f"{self.num_classes}")
        self.net = smp.create_model(config["arch"], encoder_name=config["encoder"], encoder_weights=None,
                                    in_channels=self.in_channels, classes=self.num_classes, **config["network"])
        if encoder_weights is not None and state is None:
            from safetensors.torch import load_file

            load_state(self.net.encoder, load_file(str(encoder_weights)), encoder_weights, "smp encoder")
        if state is not None:
            load_state(self.net, state, weights, "smp")
        stats = normalization_stats(config["normalize"], self.in_channels)
        self.normalized = stats is not None
        mean, std = stats or ([0.0] * self.in_channels, [1.0] * self.in_channels)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        self.stride = int(getattr(self.net.encoder, "output_stride", 32))
        self.pad_input = bool(getattr(self.net, "requires_divisible_input_shape", True))
        self.eval()
        self.to(device)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise ValueError(f"expected images [B, {self.in_channels}, H, W], got {tuple(images.shape)}")
        x = (images - self.mean) / self.std if self.normalized else images
        H, W = x.shape[-2:]
        ph, pw = (-H) % self.stride, (-W) % self.stride
        if self.pad_input and (ph or pw):
            return self.net(F.pad(x, (0, pw, 0, ph), mode="replicate"))[..., :H, :W]
        return self.net(x)
