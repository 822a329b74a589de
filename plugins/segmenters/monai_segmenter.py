"""A segmenter plugin over MONAI networks (2-D and 3-D), with safetensors weights."""
from __future__ import annotations

import torch

from certframe.checkpoint import load_checkpoint
from certframe.interfaces import Segmenter

from .networks import build_network
from .weights import RANDOM, WEIGHTS_DIR, check_written_by, load_state, require_weights, resolve_weights  # noqa: F401

AXES = {2: "H, W", 3: "D, H, W"}


class MonaiSegmenter(Segmenter):
    """A MONAI network (UNet, BasicUNet, AttentionUnet, SegResNet) as a segmenter.

    Images ``[B, C, H, W]`` (``spatial_dims=2``) or volumes ``[B, C, D, H, W]``
    (``spatial_dims=3``) in [0, 1] (or noisy, for Gaussian-trained models) -> logits
    ``[B, K, H, W]`` / ``[B, K, D, H, W]``. With ``weights`` (a .safetensors file written by
    ``certframe train segmenter`` or a bundled name such as ``synthetic-lung`` or
    ``synthetic-volume``) the architecture, channels, classes and spatial_dims come from
    the checkpoint. ``weights`` is required: ``weights="random"`` builds a randomly
    initialised network of ``arch`` on purpose (what training does); leaving it out is an
    error, so that no untrained network is certified by accident.

    Sliding window: with ``roi_size`` (the patch the network was trained on; a
    checkpoint may record it), an input whose spatial size differs from it is predicted
    with MONAI's ``sliding_window_inference`` (patches of ``roi_size``, ``sw_batch_size``
    at a time, ``overlap``, blending ``sw_mode``), each batch item on its own: every
    noisy copy is still one whole-volume prediction. An input of exactly ``roi_size``
    goes through the network directly.

    ``config`` holds what rebuilds the network (segmenter, arch, in_channels,
    num_classes, network, spatial_dims, and roi_size when set); ``checkpoint_config``
    the whole configuration stored in the weights file (training, data set, tuning), or
    None for random weights. ``spatial_dims`` (2 or 3) is also an attribute.

    Options: weights (path, bundled name or "random"), arch (unet), in_channels (1),
    num_classes (2), network (dict of extra architecture arguments), spatial_dims (the
    checkpoint's; 2 for random weights; a different value than the checkpoint's is an
    error), roi_size (None: the checkpoint's, else no sliding window; an int or one per
    spatial axis), sw_batch_size (4), overlap (0.25), sw_mode ("constant" or "gaussian"),
    device (cpu).
    """

    def __init__(self, weights: str | None = None, arch: str = "unet", in_channels: int = 1,
                 num_classes: int = 2, network: dict | None = None, spatial_dims: int | None = None,
                 roi_size: int | list[int] | None = None, sw_batch_size: int = 4, overlap: float = 0.25,
                 sw_mode: str = "constant", device: str = "cpu"):
        super().__init__()
        require_weights("monai", weights)
        if spatial_dims is not None and (isinstance(spatial_dims, bool) or spatial_dims not in (2, 3)):
            raise ValueError(f"spatial_dims must be 2 (images) or 3 (volumes), got {spatial_dims!r}")
        self.config = {"segmenter": "monai", "arch": arch, "in_channels": int(in_channels),
                       "num_classes": int(num_classes), "network": dict(network or {}),
                       "spatial_dims": int(spatial_dims or 2)}
        self.checkpoint_config = None
        state = None
        if weights != RANDOM:
            path = resolve_weights(weights)
            config, state = load_checkpoint(path)
            check_written_by(path, config, "monai")
            saved = int(config.get("spatial_dims", 2))  # checkpoints from before volumes are 2-D
            if spatial_dims is not None and spatial_dims != saved:
                raise ValueError(f"{path} holds a {saved}-D network (spatial_dims={saved}, inputs "
                                 f"[B, C, {AXES[saved]}]), but spatial_dims={spatial_dims} was asked: leave "
                                 f"spatial_dims out to use the checkpoint's, or give {spatial_dims}-D weights")
            self.config.update({k: config[k] for k in ("arch", "in_channels", "num_classes", "network")})
            self.config["spatial_dims"] = saved
            if roi_size is None and config.get("roi_size") is not None:
                roi_size = config["roi_size"]
            self.checkpoint_config = config
            self.weights_path = str(path)
        self.spatial_dims = self.config["spatial_dims"]
        self.roi_size = _roi(roi_size, self.spatial_dims)
        if self.roi_size is not None:
            self.config["roi_size"] = list(self.roi_size)
        if int(sw_batch_size) < 1 or not 0.0 <= float(overlap) < 1.0 or sw_mode not in ("constant", "gaussian"):
            raise ValueError(f"need sw_batch_size >= 1, overlap in [0, 1), sw_mode 'constant' or 'gaussian'; got "
                             f"sw_batch_size={sw_batch_size}, overlap={overlap}, sw_mode={sw_mode!r}")
        self.sw_batch_size, self.overlap, self.sw_mode = int(sw_batch_size), float(overlap), sw_mode
        self.in_channels = self.config["in_channels"]
        self.num_classes = self.config["num_classes"]
        self.net = build_network(self.config["arch"], self.in_channels, self.num_classes,
                                 spatial_dims=self.spatial_dims, **self.config["network"])
        if state is not None:
            load_state(self.net, state, self.weights_path, "monai")
        self.eval()
        self.to(device)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != self.spatial_dims + 2 or images.shape[1] != self.in_channels:
            raise ValueError(_bad_input(tuple(images.shape), self.spatial_dims, self.in_channels))
        if self.roi_size is not None and tuple(images.shape[2:]) != self.roi_size:
            return self.sliding_window(images)
        return self.net(images)

    def sliding_window(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, K, *S]`` of ``images [B, C, *S]`` by MONAI's ``sliding_window_inference``
        over patches of ``roi_size`` (inputs smaller than the patch are padded, then cropped back)."""
        from monai.inferers import sliding_window_inference

        out = sliding_window_inference(images, self.roi_size, self.sw_batch_size, self.net,
                                       overlap=self.overlap, mode=self.sw_mode)
        return out.as_subclass(torch.Tensor) if type(out) is not torch.Tensor else out


def _bad_input(shape: tuple[int, ...], spatial_dims: int, in_channels: int) -> str:
    """The error for an input of the wrong rank or channel count: the shape expected, the shape given, and
    what a wrong rank most likely is (one item without its batch axis, or a batch of the other kind)."""
    noun = "images" if spatial_dims == 2 else "volumes"
    message = f"expected {noun} [B, {in_channels}, {AXES[spatial_dims]}], got {shape}"
    if len(shape) == spatial_dims + 2:
        return message + f": {shape[1]} channel(s) instead of {in_channels}"
    looks = []
    if len(shape) == spatial_dims + 1 and shape[0] == in_channels:
        looks.append(f"one {noun[:-1]} without its batch axis (add it with x.unsqueeze(0))")
    other = {4: "images [B, C, H, W]", 5: "volumes [B, C, D, H, W]"}.get(len(shape))
    if other is not None:
        looks.append(f"a batch of {other}")
    message += f": a {spatial_dims}-D model (spatial_dims={spatial_dims}) takes {spatial_dims + 2}-D input"
    return message + (f"; the input looks like {' or '.join(looks)}" if looks else "")


def _roi(roi_size, spatial_dims: int) -> tuple[int, ...] | None:
    if roi_size is None:
        return None
    values = [roi_size] * spatial_dims if isinstance(roi_size, int) and not isinstance(roi_size, bool) else roi_size
    try:
        out = tuple(int(v) for v in values)
    except (TypeError, ValueError):
        out = ()
    if len(out) != spatial_dims or any(v < 1 or v != w for v, w in zip(out, values)):
        raise ValueError(f"roi_size must be a positive int or {spatial_dims} positive ints (one per spatial axis), "
                         f"got {roi_size!r}")
    return out
