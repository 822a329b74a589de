"""MONAI 2-D and 3-D networks by name (monai.networks.nets)."""
from __future__ import annotations

ARCHITECTURES = ("unet", "basicunet", "attentionunet", "segresnet")


def build_network(arch: str, in_channels: int, num_classes: int, spatial_dims: int = 2, **kwargs):
    """A MONAI network mapping ``[B, in_channels, *S]`` to logits ``[B, num_classes, *S]``.

    spatial_dims: 2 (``S = H, W``) or 3 (``S = D, H, W``, volumes).
    arch: one of ``unet`` (``channels``, ``strides``, ``num_res_units``),
    ``basicunet`` (``features``: 6 ints), ``attentionunet`` (``channels``, ``strides``),
    ``segresnet`` (``init_filters``). Every spatial size must be divisible by
    2**len(strides) (unet, attentionunet), 2**4 (basicunet) or 2**3 (segresnet).
    """
    from monai.networks import nets

    if spatial_dims not in (2, 3) or isinstance(spatial_dims, bool):
        raise ValueError(f"spatial_dims must be 2 (images) or 3 (volumes), got {spatial_dims!r}")
    arch = arch.lower()
    common = {"spatial_dims": spatial_dims, "in_channels": in_channels, "out_channels": num_classes}
    if arch == "unet":
        channels = tuple(kwargs.pop("channels", (16, 32, 64, 128)))
        strides = tuple(kwargs.pop("strides", (2,) * (len(channels) - 1)))
        return nets.UNet(**common, channels=channels, strides=strides,
                         num_res_units=kwargs.pop("num_res_units", 2), **kwargs)
    if arch == "basicunet":
        return nets.BasicUNet(**common, features=tuple(kwargs.pop("features", (16, 16, 32, 64, 128, 16))), **kwargs)
    if arch == "attentionunet":
        channels = tuple(kwargs.pop("channels", (16, 32, 64, 128)))
        return nets.AttentionUnet(**common, channels=channels,
                                  strides=tuple(kwargs.pop("strides", (2,) * (len(channels) - 1))), **kwargs)
    if arch == "segresnet":
        return nets.SegResNet(**common, init_filters=kwargs.pop("init_filters", 8), **kwargs)
    raise ValueError(f"unknown architecture {arch!r}; available: {', '.join(ARCHITECTURES)}")
