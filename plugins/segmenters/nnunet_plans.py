"""What an nnU-Net v2 results folder says, for the ``nnunet`` segmenter (:mod:`.nnunet`).

:func:`read_plans` reads ``plans.json`` and ``dataset.json``, chooses the configuration
(``inherits_from`` resolved) and checks that certframe can use it (a 2-D patch, one class
per pixel, a transpose that applies to 2-D images); :func:`load_network` rebuilds the
network from the plans' ``architecture`` (:func:`build_network`) and loads a checkpoint's
weights into it; :func:`normalization` turns the plans' normalisation schemes and
foreground intensity statistics into the per-channel constants of the segmenter's
``normalize``.
"""
from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

SCHEMES = ("CTNormalization", "ZScoreNormalization", "NoNormalization", "RescaleTo01Normalization",
           "RGBTo01Normalization")
ARCH_PREFIX = "dynamic_network_architectures.architectures."
PER_IMAGE_SCHEMES = ("ZScoreNormalization", "RescaleTo01Normalization")


def import_dna():
    try:
        import dynamic_network_architectures  # noqa: F401
    except ImportError as err:
        raise ImportError("the nnunet segmenter needs dynamic-network-architectures (the network library of "
                          f"nnU-Net): pip install 'certframe[nnunet]' ({err})") from err


@dataclass(frozen=True)
class NNUNetPlans:
    """The validated plans of one configuration of a results folder."""

    folder: Path
    configuration: str
    plans: dict                     # plans.json
    cfg: dict                       # plans["configurations"][configuration], inherits_from resolved
    in_channels: int                # dataset.json channel_names
    num_classes: int                # dataset.json labels
    swap_axes: bool                 # transpose_forward == [0, 2, 1]
    patch_size: tuple[int, int]

    @property
    def plans_path(self) -> Path:
        return self.folder / "plans.json"


def read_plans(folder: str | Path, configuration: str = "2d",
               checkpoint: str = "checkpoint_final.pth") -> NNUNetPlans:
    """Read and check ``plans.json`` and ``dataset.json`` of ``folder`` for ``configuration``.

    checkpoint: only named in the message when the folder lacks the json files.
    """
    folder = Path(folder)
    for name in ("dataset.json", "plans.json"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} not found: model= must be an nnU-Net v2 results folder "
                                    f"(dataset.json, plans.json, fold_N/{checkpoint})")
    plans = json.loads((folder / "plans.json").read_text())
    dataset = json.loads((folder / "dataset.json").read_text())
    cfg = configuration_of(plans, configuration)
    channels = dataset.get("channel_names") or dataset.get("modality")
    labels = dataset.get("labels", {})
    if not channels or not labels:
        raise ValueError(f"{folder / 'dataset.json'}: expected 'channel_names' and 'labels'")
    if "regions_class_order" in dataset or any(isinstance(v, (list, tuple)) for v in labels.values()):
        raise ValueError(f"{folder / 'dataset.json'}: region-based training (regions_class_order) is not "
                         f"supported: certframe needs one class per pixel")
    transpose = plans.get("transpose_forward", [0, 1, 2])
    if list(transpose) not in ([0, 1, 2], [0, 2, 1]):
        raise ValueError(f"plans.json transpose_forward={transpose}: only [0, 1, 2] and [0, 2, 1] apply to "
                         f"2-D images")
    patch_size = tuple(int(p) for p in cfg["patch_size"])
    if len(patch_size) != 2:
        raise ValueError(f"configuration {configuration!r} has patch_size {cfg['patch_size']}, expected 2-D")
    return NNUNetPlans(folder=folder, configuration=configuration, plans=plans, cfg=cfg,
                       in_channels=len(channels), num_classes=len(labels),
                       swap_axes=list(transpose) == [0, 2, 1], patch_size=patch_size)


def configuration_of(plans: dict, name: str) -> dict:
    """``plans["configurations"][name]`` with the configurations it ``inherits_from`` merged in."""
    configs = plans.get("configurations", {})
    if name not in configs:
        raise ValueError(f"plans.json has no configuration {name!r}; it has {sorted(configs)}")
    cfg = dict(configs[name])
    parent = cfg.pop("inherits_from", None)
    return {**configuration_of(plans, parent), **cfg} if parent else cfg


def _locate(name: str, prefix: str):
    if not isinstance(name, str) or not name.startswith(prefix):
        raise ValueError(f"plans.json names {name!r}; only classes under {prefix!r} are imported")
    module, _, attr = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"plans.json names {name!r}, which cannot be imported ({err})") from None


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


def load_network(plans: NNUNetPlans, ck: dict, ck_path: Path) -> torch.nn.Module:
    """The network of ``plans`` with the weights of the checkpoint ``ck`` (read from ``ck_path``).

    Refuses a checkpoint trained for another configuration, or weights that do not fit.
    """
    saved_config = (ck.get("init_args") or {}).get("configuration", plans.configuration)
    if saved_config != plans.configuration:
        raise ValueError(f"{ck_path} was trained for configuration {saved_config!r}, not {plans.configuration!r}")
    net = build_network(plans.cfg, plans.in_channels, plans.num_classes)
    state = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in ck["network_weights"].items()}
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{ck_path}: the weights do not fit the network of {plans.plans_path} "
                         f"({str(err).splitlines()[0][:200]})") from None
    return net


@dataclass(frozen=True)
class Normalization:
    """Per-channel constants of nnU-Net's intensity normalisation on ``[0, 1]``-space images.

    ``I = lo + x scale`` (scale = hi - lo), clamped to ``[clip_lo, clip_hi]``, then
    ``I * inv_div + shift`` (= ``(I - sub) / div``); the schemes in :data:`PER_IMAGE_SCHEMES`
    are then computed over each image.
    """

    schemes: list[str]
    intensity_range: list[list[float]]     # [lo, hi] per channel
    buffers: dict[str, list[float]]        # lo, scale, shift, inv_div, clip_lo, clip_hi: one value per channel

    @property
    def per_image(self) -> list[bool]:
        return [s in PER_IMAGE_SCHEMES for s in self.schemes]


def normalization(plans: NNUNetPlans, intensity_range: list | None = None) -> Normalization:
    """The normalisation of ``plans``' schemes; ``intensity_range``: ``[lo, hi]`` or one pair per
    channel (default per scheme: the CT percentiles, the foreground min and max, [0, 255] for RGB)."""
    cfg, n = plans.cfg, plans.in_channels
    schemes = list(cfg.get("normalization_schemes", []))
    if len(schemes) != n or any(s not in SCHEMES for s in schemes):
        raise ValueError(f"normalization_schemes {schemes}: expected one of {SCHEMES} per channel "
                         f"({n} channels)")
    if any(cfg.get("use_mask_for_norm", [False] * n)):
        raise ValueError("use_mask_for_norm is set in the plans: nnU-Net then normalises inside the non-zero "
                         "region of the uncropped case, which a 2-D certframe image does not carry")
    ranges = intensity_range
    if ranges is not None and len(ranges) == 2 and all(isinstance(v, (int, float)) for v in ranges):
        ranges = [ranges] * n
    if ranges is not None and (len(ranges) != n or any(len(r) != 2 or r[1] <= r[0] for r in ranges)):
        raise ValueError(f"intensity_range must be [lo, hi] with lo < hi, or one pair per channel "
                         f"({n}), got {intensity_range}")
    props = plans.plans.get("foreground_intensity_properties_per_channel", {})
    lo, hi, sub, div, clip_lo, clip_hi = [], [], [], [], [], []
    for c, scheme in enumerate(schemes):
        p = props.get(str(c), {})
        if scheme in ("CTNormalization", "NoNormalization") and not p:
            raise ValueError(f"plans.json lacks foreground_intensity_properties_per_channel['{c}'] that "
                             f"{scheme} needs")
        a, b = ranges[c] if ranges is not None else _default_range(scheme, p)
        lo.append(float(a))
        hi.append(float(b))
        ct = scheme == "CTNormalization"
        sub.append(float(p["mean"]) if ct else 0.0)
        div.append(max(float(p["std"]), 1e-8) if ct else 255.0 if scheme == "RGBTo01Normalization" else 1.0)
        clip_lo.append(float(p["percentile_00_5"]) if ct else -float("inf"))
        clip_hi.append(float(p["percentile_99_5"]) if ct else float("inf"))
    buffers = {"lo": lo, "scale": [b - a for a, b in zip(lo, hi)], "shift": [-m / d for m, d in zip(sub, div)],
               "inv_div": [1 / d for d in div], "clip_lo": clip_lo, "clip_hi": clip_hi}
    return Normalization(schemes, [[a, b] for a, b in zip(lo, hi)], buffers)


def _default_range(scheme: str, props: dict) -> tuple[float, float]:
    """The intensity window ``[0, 1]`` maps to when none is given, from a channel's foreground statistics."""
    if scheme == "CTNormalization":
        return props["percentile_00_5"], props["percentile_99_5"]
    if scheme == "NoNormalization":
        return props["min"], props["max"]
    if scheme == "RGBTo01Normalization":
        return 0.0, 255.0
    return 0.0, 1.0
