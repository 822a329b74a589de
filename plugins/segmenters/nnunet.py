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
``torch.nn`` are imported from the names in plans.json.

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

import importlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from certframe.interfaces import Segmenter

SCHEMES = ("CTNormalization", "ZScoreNormalization", "NoNormalization", "RescaleTo01Normalization",
           "RGBTo01Normalization")
ARCH_PREFIX = "dynamic_network_architectures.architectures."


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


def import_dna():
    try:
        import dynamic_network_architectures  # noqa: F401
    except ImportError as err:
        raise ImportError("the nnunet segmenter needs dynamic-network-architectures (the network library of "
                          f"nnU-Net): pip install 'certframe[nnunet]' ({err})") from err


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


def _locate(name: str, prefix: str):
    if not isinstance(name, str) or not name.startswith(prefix):
        raise ValueError(f"plans.json names {name!r}; only classes under {prefix!r} are imported")
    module, _, attr = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"plans.json names {name!r}, which cannot be imported ({err})") from None


def _configuration(plans: dict, name: str) -> dict:
    configs = plans.get("configurations", {})
    if name not in configs:
        raise ValueError(f"plans.json has no configuration {name!r}; it has {sorted(configs)}")
    cfg = dict(configs[name])
    parent = cfg.pop("inherits_from", None)
    return {**_configuration(plans, parent), **cfg} if parent else cfg


def build_network(cfg: dict, in_channels: int, num_classes: int) -> torch.nn.Module:
    """The nnU-Net network of a plans configuration (deep supervision off, as nnU-Net predicts)."""
    import_dna()
    arch = cfg.get("architecture")
    if not isinstance(arch, dict) or "network_class_name" not in arch:
        raise ValueError("plans.json configuration has no 'architecture' with 'network_class_name' (plans "
                         "written by nnU-Net >= 2.4 are supported; re-plan older ones with nnUNetv2_plan_experiment)")
    kwargs = dict(arch["arch_kwargs"])
    for key in arch.get("_kw_requires_import", ()):
        if kwargs.get(key) is not None:
            kwargs[key] = _locate(kwargs[key], "torch.nn.")
    if kwargs.get("conv_op") not in (torch.nn.Conv2d, None):
        raise ValueError(f"the configuration uses {kwargs.get('conv_op')}, expected torch.nn.Conv2d (a 2-D "
                         f"configuration such as '2d')")
    cls = _locate(arch["network_class_name"], ARCH_PREFIX)
    kwargs["deep_supervision"] = False
    return cls(input_channels=in_channels, num_classes=num_classes, **kwargs)


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
        folder = Path(model)
        for name in ("dataset.json", "plans.json"):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder / name} not found: model= must be an nnU-Net v2 results folder "
                                        f"(dataset.json, plans.json, fold_N/{checkpoint})")
        if not 0 < float(tile_step_size) <= 1:
            raise ValueError(f"tile_step_size must lie in (0, 1], got {tile_step_size}")
        plans = json.loads((folder / "plans.json").read_text())
        dataset = json.loads((folder / "dataset.json").read_text())
        cfg = _configuration(plans, configuration)
        channels = dataset.get("channel_names") or dataset.get("modality")
        labels = dataset.get("labels", {})
        if not channels or not labels:
            raise ValueError(f"{folder / 'dataset.json'}: expected 'channel_names' and 'labels'")
        if "regions_class_order" in dataset or any(isinstance(v, (list, tuple)) for v in labels.values()):
            raise ValueError(f"{folder / 'dataset.json'}: region-based training (regions_class_order) is not "
                             f"supported: certframe needs one class per pixel")
        self.in_channels, self.num_classes = len(channels), len(labels)
        transpose = plans.get("transpose_forward", [0, 1, 2])
        if list(transpose) not in ([0, 1, 2], [0, 2, 1]):
            raise ValueError(f"plans.json transpose_forward={transpose}: only [0, 1, 2] and [0, 2, 1] apply to "
                             f"2-D images")
        self.swap_axes = list(transpose) == [0, 2, 1]
        self.patch_size = tuple(int(p) for p in cfg["patch_size"])
        if len(self.patch_size) != 2:
            raise ValueError(f"configuration {configuration!r} has patch_size {cfg['patch_size']}, expected 2-D")
        ck_path = folder / f"fold_{fold}" / checkpoint
        ck = read_nnunet_checkpoint(ck_path)
        saved_config = (ck.get("init_args") or {}).get("configuration", configuration)
        if saved_config != configuration:
            raise ValueError(f"{ck_path} was trained for configuration {saved_config!r}, not {configuration!r}")
        self.net = build_network(cfg, self.in_channels, self.num_classes)
        state = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in ck["network_weights"].items()}
        try:
            self.net.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(f"{ck_path}: the weights do not fit the network of {folder / 'plans.json'} "
                             f"({str(err).splitlines()[0][:200]})") from None
        self.mirror_axes = tuple(int(a) for a in (ck.get("inference_allowed_mirroring_axes") or ())) \
            if mirroring else ()
        self.tile_step_size = float(tile_step_size)
        schemes = list(cfg.get("normalization_schemes", []))
        if len(schemes) != self.in_channels or any(s not in SCHEMES for s in schemes):
            raise ValueError(f"normalization_schemes {schemes}: expected one of {SCHEMES} per channel "
                             f"({self.in_channels} channels)")
        if any(cfg.get("use_mask_for_norm", [False] * self.in_channels)):
            raise ValueError("use_mask_for_norm is set in the plans: nnU-Net then normalises inside the non-zero "
                             "region of the uncropped case, which a 2-D certframe image does not carry")
        self.schemes = schemes
        props = plans.get("foreground_intensity_properties_per_channel", {})
        lo, hi, sub, div, clip_lo, clip_hi = [], [], [], [], [], []
        ranges = intensity_range
        if ranges is not None and len(ranges) == 2 and all(isinstance(v, (int, float)) for v in ranges):
            ranges = [ranges] * self.in_channels
        if ranges is not None and (len(ranges) != self.in_channels or any(len(r) != 2 or r[1] <= r[0] for r in ranges)):
            raise ValueError(f"intensity_range must be [lo, hi] with lo < hi, or one pair per channel "
                             f"({self.in_channels}), got {intensity_range}")
        for c, scheme in enumerate(schemes):
            p = props.get(str(c), {})
            if scheme in ("CTNormalization", "NoNormalization") and not p:
                raise ValueError(f"plans.json lacks foreground_intensity_properties_per_channel['{c}'] that "
                                 f"{scheme} needs")
            default = {"CTNormalization": lambda: (p["percentile_00_5"], p["percentile_99_5"]),
                       "NoNormalization": lambda: (p["min"], p["max"]),
                       "RGBTo01Normalization": lambda: (0.0, 255.0)}.get(scheme, lambda: (0.0, 1.0))()
            a, b = ranges[c] if ranges is not None else default
            lo.append(float(a))
            hi.append(float(b))
            ct = scheme == "CTNormalization"
            sub.append(float(p["mean"]) if ct else 0.0)
            div.append(max(float(p["std"]), 1e-8) if ct else 255.0 if scheme == "RGBTo01Normalization" else 1.0)
            clip_lo.append(float(p["percentile_00_5"]) if ct else -float("inf"))
            clip_hi.append(float(p["percentile_99_5"]) if ct else float("inf"))
        self.intensity_range = [[a, b] for a, b in zip(lo, hi)]
        for name, values in (("lo", lo), ("scale", [b - a for a, b in zip(lo, hi)]),
                             ("shift", [-m / d for m, d in zip(sub, div)]), ("inv_div", [1 / d for d in div]),
                             ("clip_lo", clip_lo), ("clip_hi", clip_hi)):
            self.register_buffer(name, torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1))
        self.per_image = [s in ("ZScoreNormalization", "RescaleTo01Normalization") for s in schemes]
        self.config = {"segmenter": "nnunet", "model": str(folder.resolve()), "fold": fold,
                       "configuration": configuration, "checkpoint": checkpoint,
                       "trainer_name": ck.get("trainer_name"), "normalization_schemes": schemes,
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
