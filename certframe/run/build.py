"""Building a run's plugins through the registry, and the names its rows and reports use.

:func:`build_plugins` creates the data set, segmenter, denoiser and certifier of a
:class:`~certframe.run.spec.RunSpec` (the ``none`` denoiser becomes ``None``: the
Gaussian-trained baseline), moves the models to the device in eval mode and checks
that the segmenter predicts the data set's classes. :func:`plugin_records` describes
each plugin for the manifest (resolved options, distribution, version).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from certframe.interfaces import SPATIAL_DIMS, Certifier, Denoiser, SegmentationDataset, Segmenter
from certframe.run.spec import PLUGIN_KINDS, RunSpec
from certframe.validation import resolve_device  # noqa: F401  (its one copy; re-exported here, as before)


def prepare_models(segmenter: Segmenter, denoiser: Denoiser | None, dataset: SegmentationDataset,
                   device: torch.device) -> tuple[Segmenter, Denoiser | None]:
    """Move both models to ``device`` in eval mode; the segmenter's classes must match the data set's."""
    segmenter = segmenter.to(device).eval()
    if denoiser is not None:
        denoiser = denoiser.to(device).eval()
    if segmenter.num_classes != dataset.num_classes:
        raise ValueError(f"the segmenter predicts {segmenter.num_classes} classes, the dataset declares "
                         f"{dataset.num_classes} ({', '.join(dataset.class_names)})")
    return segmenter, denoiser


@dataclass
class Names:
    """How the pieces are named in the result rows."""

    segmenter: str = "segmenter"
    denoiser: str = "none"
    certifier: str = "segcertify"


def weights_name(weights) -> str:
    """The file name of a weights path without ``.safetensors`` / ``.json`` (dots in names stay)."""
    name = Path(str(weights).rstrip("/")).name
    for suffix in (".safetensors", ".json"):
        name = name.removesuffix(suffix)
    return name


def segmenter_label(name: str, options: dict) -> str:
    """``monai`` + ``weights=out/lung-noise0.25.safetensors`` -> ``monai:lung-noise0.25``."""
    weights = options.get("weights")
    return f"{name}:{weights_name(weights)}" if weights else name


def method_label(spec: RunSpec) -> str:
    """The method's name in reports: the spec's label, else segmenter (+ weights) (+ denoiser)."""
    if spec.label:
        return spec.label
    base = segmenter_label(spec.segmenter, spec.segmenter_options)
    return base if spec.denoiser == "none" else f"{base} + {spec.denoiser}"


@dataclass
class Plugins:
    """The built plugins of a run (models not yet on their device)."""

    dataset: SegmentationDataset
    segmenter: Segmenter
    denoiser: Denoiser | None
    certifier: Certifier

    def names(self, spec: RunSpec) -> Names:
        return Names(segmenter=segmenter_label(spec.segmenter, spec.segmenter_options), denoiser=spec.denoiser,
                     certifier=self.certifier.name)


def build_plugin(registry, kind: str, name: str, options: dict) -> Any:
    """``registry.create(kind, name, **options)``; a failure names the plugin and its options.

    A plugin's own error (a corrupt weights file, weights of another architecture, a
    missing folder, an option of the wrong type) becomes a :class:`PluginError` whose
    message says which plugin, with which options, failed and why (its first lines: a
    state-dict mismatch lists hundreds), so the command prints one clear line.
    """
    from certframe.registry import PluginError

    try:
        return registry.create(kind, name, **options)
    except PluginError:
        raise
    except Exception as err:
        lines = (str(err).strip() or type(err).__name__).splitlines()
        detail = lines[0] if len(lines) == 1 else f"{lines[0]} ... ({len(lines) - 1} more lines)"
        given = ", ".join(f"{k}={v}" for k, v in options.items()) or "no options"
        raise PluginError(f"{kind} {name!r} ({given}) could not be built: {type(err).__name__}: {detail}") from err


def build_dataset(spec: RunSpec, registry) -> SegmentationDataset:
    return build_plugin(registry, "dataset", spec.dataset, spec.dataset_options)


def build_plugins(spec: RunSpec, registry, dataset: SegmentationDataset | None = None) -> Plugins:
    """Create the four plugins of ``spec`` through ``registry`` (the ``none`` denoiser is kept as an object).

    Every name is looked up before anything is built, so an unknown certifier is reported
    before a model is loaded.
    """
    for kind in PLUGIN_KINDS:
        registry.get(kind, getattr(spec, kind))
    data = dataset if dataset is not None else build_dataset(spec, registry)
    built: dict[str, Any] = {kind: build_plugin(registry, kind, getattr(spec, kind), spec.options(kind))
                             for kind in PLUGIN_KINDS if kind != "dataset"}
    return Plugins(data, built["segmenter"], built["denoiser"], built["certifier"])


def check_plugins(spec: RunSpec, plugins: Plugins) -> None:
    """Checks that need the built plugins, made before anything is written or sampled.

    The segmenter's classes match the data set's; the segmenter and the denoiser handle the
    data set's kind of input (their ``spatial_dims``, 2 unless they say otherwise: a 2-D
    segmenter or diffusion denoiser refuses volumes ``[C, D, H, W]``, a volume segmenter
    refuses images ``[C, H, W]``, read from the first item); the denoiser accepts the run's
    sigma (a denoiser that exposes ``check_sigma(sigma, image_size)`` refuses a noise level
    beyond what it was trained for at the data set's image size, naming the largest it supports);
    a certifier that exposes ``bind_dataset(dataset)`` (the ``hierarchical`` one: its label hierarchy
    against the data set's classes) is bound to the data set.
    """
    from certframe.core.smoothing import check_model_spatial_dims

    if plugins.segmenter.num_classes != plugins.dataset.num_classes:
        raise ValueError(f"the segmenter {spec.segmenter!r} predicts {plugins.segmenter.num_classes} classes, the "
                         f"dataset {spec.dataset!r} declares {plugins.dataset.num_classes} "
                         f"({', '.join(plugins.dataset.class_names)})")
    bind = getattr(plugins.certifier, "bind_dataset", None)
    if callable(bind):  # a certifier that needs the data set's classes (a label hierarchy) checks them now
        bind(plugins.dataset)
    check = getattr(plugins.denoiser, "check_sigma", None)
    if len(plugins.dataset) == 0:
        return
    try:
        first = plugins.dataset[0].image
    except Exception:
        if callable(check):
            raise
        return      # an unreadable item is reported by the step, with the run marked failed
    dims = first.dim() - 1    # a malformed item ([H, W], ...) is reported by the step's validation
    where = f"the dataset {spec.dataset!r}"
    if dims in SPATIAL_DIMS:
        check_model_spatial_dims(plugins.segmenter, "segmenter", dims, tuple(first.shape), where, spec.segmenter)
        if plugins.denoiser is not None:
            check_model_spatial_dims(plugins.denoiser, "denoiser", dims, tuple(first.shape), where, spec.denoiser)
    if callable(check):
        check(spec.sigma, tuple(first.shape[1:]))


def probe_models(segmenter: Segmenter, denoiser: Denoiser | None, dataset: SegmentationDataset,
                 sigma: float, device: torch.device) -> None:
    """One pass of the base pipeline ``f(D(x))`` on the data set's first image, without noise.

    The models on ``device`` (:func:`prepare_models`) get the checks every batch of the
    sampler gets (:class:`~certframe.core.smoothing.SmoothedSegmenter`: logits of floating-point
    dtype and shape ``[1, K, *S]`` on the input's device, finite values), so a model that
    returns the wrong thing fails here, before the run folder is written or a noise sample is
    drawn, with the same message. An item that cannot be read or is malformed is left to the
    step, which names it (and marks the run failed).
    """
    from certframe.core.smoothing import SmoothedSegmenter
    from certframe.validation import validate_sample

    if len(dataset) == 0:
        return
    try:
        sample = dataset[0]
        validate_sample(sample, dataset.class_names, dataset.in_channels)
    except Exception:
        return
    smoothed = SmoothedSegmenter(segmenter, denoiser, sigma)
    with torch.inference_mode():
        smoothed.base_labels(sample.image.to(device).unsqueeze(0))
    smoothed.checks.raise_pending()


def resolved_options(entry, given: dict, built: Any = None) -> dict:
    """The options a plugin was built with: its signature's defaults updated by ``given``.

    built: the object the factory returned. An option that was not given but that the
    object states itself (an attribute, or a key of its ``config`` dict: what a checkpoint
    said, e.g. ``in_channels`` and ``network`` of loaded weights) is taken from the object
    rather than from the signature's default, which the weights may have overridden.
    """
    from certframe.run.records import jsonable

    config = getattr(built, "config", None)
    config = config if isinstance(config, dict) else {}
    out = {}
    for name, param in entry.options().items():
        if name in given:
            continue
        if name in config:
            out[name] = config[name]
        elif built is not None and isinstance(getattr(built, name, None), (int, float, str, bool, dict, list,
                                                                            tuple)):
            out[name] = getattr(built, name)
        elif param.default is not param.empty:
            out[name] = param.default
    out.update(given)
    return jsonable(out)


def plugin_record(registry, kind: str, name: str, options: dict, *, plugin: bool = True,
                  built: Any = None) -> dict:
    """One plugin in the manifest: name, resolved options, distribution, version (and its hook plugin)."""
    entry = registry.get(kind, name)
    record = {"name": name, "options": resolved_options(entry, options, built), "distribution": entry.distribution,
              "version": entry.version}
    if plugin:
        record["plugin"] = entry.plugin
    return record


def plugin_records(spec: RunSpec, registry, *, plugin: bool = True, plugins: "Plugins | None" = None) -> dict:
    """``{kind: record}`` for the four plugins of ``spec`` (``plugins``: the built objects)."""
    return {kind: plugin_record(registry, kind, getattr(spec, kind), spec.options(kind), plugin=plugin,
                                built=None if plugins is None else getattr(plugins, kind))
            for kind in PLUGIN_KINDS}


__all__ = ["resolve_device", "prepare_models", "Names", "weights_name", "segmenter_label", "method_label",
           "Plugins", "build_plugins", "build_plugin", "build_dataset", "check_plugins", "probe_models",
           "resolved_options", "plugin_record", "plugin_records"]
