"""The ``nnunet`` segmenter: a trained nnU-Net v2 model (Isensee et al., Nature Methods 2021), 2-D configuration.

Reads an nnU-Net v2 results folder as nnU-Net writes it::

    MODEL/                      e.g. nnUNet_results/Dataset001_Lung/nnUNetTrainer__nnUNetPlans__2d
      dataset.json              channel_names, labels
      plans.json                configurations["2d"]: patch_size, normalization_schemes, architecture
      fold_0/checkpoint_final.pth

The network is rebuilt from the plans' ``architecture`` (``network_class_name`` and
``arch_kwargs``, nnU-Net >= 2.4 plans) with ``dynamic_network_architectures``, the
package nnU-Net itself builds its networks with; nnunetv2 itself is not needed (it
pulls scikit-image, SimpleITK, scikit-learn and more, none of which inference uses).
Only classes of ``dynamic_network_architectures.architectures`` and operators of
``torch.nn`` are imported from the names in plans.json. Reading the plans, choosing the
configuration, building the network and the normalisation constants live in
:mod:`certframe.plugins.segmenters.nnunet_plans`.

The checkpoint is a pickle (``torch.save``); it is read with
``torch.load(weights_only=True)`` and an explicit allow-list of the types nnU-Net
stores besides tensors and plain containers (numpy scalars and dtypes, in its
training log): :data:`CHECKPOINT_GLOBALS`. Anything else is refused with the
name of the type, never unpickled.

Noise space and normalisation: certframe adds noise in the data set's ``[0, 1]``
space; nnU-Net's intensity normalisation runs here, inside ``forward``, on the
noisy image. ``[0, 1]`` maps to the original intensities through
``intensity_range = [lo, hi]`` per channel: ``I = lo + x (hi - lo)``, so an L2
radius R in ``[0, 1]`` units is ``R (hi - lo)`` in original units (HU for CT). See
docs/certify-your-own-model.md for each scheme.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from certframe.interfaces import Segmenter

from .nnunet_plans import SCHEMES, build_network, import_dna, load_network, normalization, read_plans

__all__ = ["NNUNetSegmenter", "CHECKPOINT_GLOBALS", "read_nnunet_checkpoint", "build_network", "import_dna",
           "SCHEMES"]


def _numpy_globals() -> list:
    """The numpy types an nnU-Net checkpoint pickles (np.float64 values in its training log)."""
    core = getattr(np, "_core", None) or np.core
    found = [np.dtype, core.multiarray.scalar]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        found += [getattr(dtypes, n) for n in ("Float64DType", "Float32DType", "Float16DType", "Int64DType",
                                               "Int32DType", "BoolDType") if hasattr(dtypes, n)]
    return found


CHECKPOINT_GLOBALS = _numpy_globals()
"""Types allowed in ``torch.load(weights_only=True)`` beyond torch's own safe set."""


def read_nnunet_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict of ``fold_N/checkpoint_final.pth``, read with ``weights_only=True``.

    Raises ValueError naming the file and the type when it holds anything outside
    torch's safe set and :data:`CHECKPOINT_GLOBALS`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"nnU-Net checkpoint {str(path)!r} does not exist")
    try:
        with torch.serialization.safe_globals(CHECKPOINT_GLOBALS):
            ck = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, RuntimeError (not a zip), ...
        unsafe = []
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception:  # noqa: BLE001 - not a torch archive at all
            pass
        allowed = {f"{g.__module__}.{g.__qualname__}" for g in CHECKPOINT_GLOBALS}
        unsafe = [u for u in unsafe if u not in allowed]
        why = (f"it stores types outside the allow-list: {', '.join(unsafe)}" if unsafe
               else f"{type(err).__name__}: {str(err).strip().splitlines()[0][:200] if str(err).strip() else ''}")
        raise ValueError(f"{path} cannot be read as an nnU-Net checkpoint with torch.load(weights_only=True): "
                         f"{why}. certframe never unpickles arbitrary objects") from None
    if not isinstance(ck, dict) or "network_weights" not in ck:
        keys = sorted(ck) if isinstance(ck, dict) else type(ck).__name__
        raise ValueError(f"{path}: expected an nnU-Net checkpoint with 'network_weights', got {keys}")
    return ck


class NNUNetSegmenter(Segmenter):
    """A trained nnU-Net v2 2-D model (a results folder) as a segmenter.

    See the module docstring for the folder layout and the checkpoint allow-list.

    ``forward(images [B, C, H, W])``: images in the data set's ``[0, 1]`` space plus noise,
    unclipped, already at the plans' spacing (resizing belongs to the data set plugin).
    Per channel c: ``I = lo_c + x (hi_c - lo_c)``, then nnU-Net's scheme of the plans:

    * CTNormalization: clip I to [percentile_00_5, percentile_99_5] of the foreground
      intensities, subtract their mean, divide by their std (from plans.json).
      Default ``intensity_range``: [percentile_00_5, percentile_99_5].
    * ZScoreNormalization: ``(I - mean(I)) / std(I)`` over each image (as nnU-Net does per
      case), here of the noisy image; invariant to ``intensity_range``.
    * RescaleTo01Normalization: per-image min-max; invariant to ``intensity_range``.
    * RGBTo01Normalization: I / 255 (default range [0, 255]).
    * NoNormalization: I (default range [min, max] of the foreground intensities).

    Then nnU-Net's prediction: images no larger than the patch size are padded to it
    (zeros, centred, as nnU-Net's ``pad_nd_image``); larger ones go through a Gaussian-weighted
    sliding window (``monai.inferers.sliding_window_inference``, tile step ``tile_step_size`` of
    the patch, sigma 1/8 of the patch, nnU-Net's defaults). ``mirroring=true`` averages the logits
    over the mirror axes the checkpoint allows (nnU-Net's test-time augmentation; off by
    default: it costs 4 forward passes in 2-D). Output: logits ``[B, K, H, W]``, K = the labels
    of dataset.json.

    Options: model (the results folder; required), fold (0), configuration ("2d"),
    checkpoint ("checkpoint_final.pth"), intensity_range ([lo, hi] or one pair per channel),
    mirroring (False), tile_step_size (0.5), device (cpu).
    """

    def __init__(self, model: str | None = None, fold: int | str = 0, configuration: str = "2d",
                 checkpoint: str = "checkpoint_final.pth", intensity_range: list | None = None,
                 mirroring: bool = False, tile_step_size: float = 0.5, device: str = "cpu"):
        super().__init__()
        if model is None:
            raise ValueError("the nnunet segmenter needs model=: an nnU-Net v2 results folder holding "
                             "dataset.json, plans.json and fold_N/checkpoint_final.pth")
        if not 0 < float(tile_step_size) <= 1:
            raise ValueError(f"tile_step_size must lie in (0, 1], got {tile_step_size}")
        plans = read_plans(model, configuration, checkpoint)
        self.in_channels, self.num_classes = plans.in_channels, plans.num_classes
        self.swap_axes, self.patch_size = plans.swap_axes, plans.patch_size
        ck_path = plans.folder / f"fold_{fold}" / checkpoint
        ck = read_nnunet_checkpoint(ck_path)
        self.net = load_network(plans, ck, ck_path)
        allowed = ck.get("inference_allowed_mirroring_axes") or ()
        self.mirror_axes = tuple(int(a) for a in allowed) if mirroring else ()
        self.tile_step_size = float(tile_step_size)
        norm = normalization(plans, intensity_range)
        self.schemes, self.intensity_range, self.per_image = norm.schemes, norm.intensity_range, norm.per_image
        for name, values in norm.buffers.items():
            self.register_buffer(name, torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1))
        self.config = {"segmenter": "nnunet", "model": str(plans.folder.resolve()), "fold": fold,
                       "configuration": configuration, "checkpoint": checkpoint,
                       "trainer_name": ck.get("trainer_name"), "normalization_schemes": self.schemes,
                       "intensity_range": self.intensity_range, "patch_size": list(self.patch_size),
                       "mirror_axes": list(self.mirror_axes), "tile_step_size": self.tile_step_size}
        self.weights_path = str(ck_path)
        self.eval()
        self.to(device)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """nnU-Net's intensity normalisation of ``[0, 1]``-space images ``[B, C, H, W]``."""
        x = torch.addcmul(self.lo, images, self.scale)  # I = lo + x (hi - lo)
        x = torch.clamp(x, self.clip_lo, self.clip_hi)
        x = torch.addcmul(self.shift, x, self.inv_div)  # (I - sub) / div
        if any(self.per_image):
            chans = []
            for c, scheme in enumerate(self.schemes):
                xc = x[:, c:c + 1]
                if scheme == "ZScoreNormalization":
                    mean = xc.mean(dim=(-2, -1), keepdim=True)
                    std = xc.std(dim=(-2, -1), keepdim=True, unbiased=False)
                    xc = (xc - mean) / std.clamp_min(1e-8)
                elif scheme == "RescaleTo01Normalization":
                    mn = xc.amin(dim=(-2, -1), keepdim=True)
                    xc = xc - mn
                    xc = xc / xc.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-8)
                chans.append(xc)
            x = torch.cat(chans, dim=1)
        return x

    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        ph, pw = self.patch_size
        if H <= ph and W <= pw:
            top, left = (ph - H) // 2, (pw - W) // 2
            if (H, W) != (ph, pw):
                x = F.pad(x, (left, pw - W - left, top, ph - H - top))
            return self.net(x)[..., top:top + H, left:left + W]
        from monai.inferers import sliding_window_inference

        return sliding_window_inference(x, roi_size=self.patch_size, sw_batch_size=max(1, x.shape[0]),
                                        predictor=self.net, overlap=1 - self.tile_step_size, mode="gaussian",
                                        sigma_scale=0.125, padding_mode="constant", cval=0.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise ValueError(f"expected images [B, {self.in_channels}, H, W], got {tuple(images.shape)}")
        x = self.normalize(images)
        if self.swap_axes:
            x = x.transpose(-2, -1)
        logits = self._predict(x)
        if self.mirror_axes:
            dims = [d + 2 for d in self.mirror_axes]
            for k in range(1, 1 << len(dims)):
                flip = [d for i, d in enumerate(dims) if k >> i & 1]
                logits = logits + self._predict(x.flip(flip)).flip(flip)
            logits = logits / (1 << len(dims))
        return logits.transpose(-2, -1) if self.swap_axes else logits
