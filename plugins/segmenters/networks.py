"""MONAI 2-D networks by name (monai.networks.nets)."""
from __future__ import annotations

ARCHITECTURES = ("unet", "basicunet", "attentionunet", "segresnet")


def build_network(arch: str, in_channels: int, num_classes: int, **kwargs):
    """A MONAI network mapping ``[B, in_channels, H, W]`` to logits ``[B, num_classes, H, W]``.

    arch: one of ``unet`` (``channels``, ``strides``, ``num_res_units``),
    ``basicunet`` (``features``: 6 ints), ``attentionunet`` (``channels``, ``strides``),
    ``segresnet`` (``init_filters``). H and W must be divisible by 2**len(strides).
    """
    from monai.networks import nets

    arch = arch.lower()
    if arch == "unet":
        channels = tuple(kwargs.pop("channels", (16, 32, 64, 128)))
        strides = tuple(kwargs.pop("strides", (2,) * (len(channels) - 1)))
        return nets.UNet(spatial_dims=2, in_channels=in_channels, out_channels=num_classes,
                         channels=channels, strides=strides,
                         num_res_units=kwargs.pop("num_res_units", 2), **kwargs)
    if arch == "basicunet":
        return nets.BasicUNet(spatial_dims=2, in_channels=in_channels, out_channels=num_classes,
                              features=tuple(kwargs.pop("features", (16, 16, 32, 64, 128, 16))), **kwargs)
    if arch == "attentionunet":
        channels = tuple(kwargs.pop("channels", (16, 32, 64, 128)))
        return nets.AttentionUnet(spatial_dims=2, in_channels=in_channels, out_channels=num_classes,
                                  channels=channels,
                                  strides=tuple(kwargs.pop("strides", (2,) * (len(channels) - 1))), **kwargs)
    if arch == "segresnet":
        return nets.SegResNet(spatial_dims=2, in_channels=in_channels, out_channels=num_classes,
                              init_filters=kwargs.pop("init_filters", 8), **kwargs)
    raise ValueError(f"unknown architecture {arch!r}; available: {', '.join(ARCHITECTURES)}")
