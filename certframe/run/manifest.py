"""The manifest of a run folder: what was run, built once from the spec and the plugins.

Keys: ``format``, ``kind`` (``certify`` / ``attack``), ``label``, ``config`` (the part a
resumed run must match: :meth:`RunSpec.config`), ``execution`` (batch size, device asked
for, certificates, acceleration), ``device`` (the device used), ``plugins`` (each with its
resolved options, distribution and version), ``correction``, ``dataset`` (identity and
hash), ``classes``, ``denoiser_quality`` (PSNR / SSIM / t* / trained range of the denoiser at
the run's sigma, :func:`denoiser_record`), ``versions``, ``command``, ``created``; the run folder adds ``status``,
``rows_per_image`` and the time stamps.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from certframe.run.build import Plugins, method_label, plugin_record, plugin_records, resolve_device
from certframe.run.layout import FORMAT
from certframe.run.provenance import provenance
from certframe.run.records import dataset_identity, now, package_versions
from certframe.run.spec import AttackSpec, RunSpec

log = logging.getLogger("certframe.run")


def command_line() -> str:
    return " ".join([Path(sys.argv[0]).name] + sys.argv[1:])


def correction(certifier, options: dict) -> str | None:
    """The multiple-testing correction a certifier applies: its ``correction`` attribute, else its option."""
    value = getattr(certifier, "correction", None)
    return value if isinstance(value, str) else options.get("correction")


def run_config(spec: RunSpec) -> dict:
    """The manifest's ``config``: the spec's, plus the noise stream's version.

    A resumed run must match it: rows drawn from another noise stream (an older certframe's)
    are not mixed with this one's; the resume error names ``noise_stream``.
    """
    from certframe.core.sampler import NOISE_STREAM

    return {**spec.config(), "noise_stream": NOISE_STREAM}


QUALITY_IMAGES = 4
"""Images on which a run measures its denoiser (PSNR / SSIM, t*, trained range) for the manifest."""


def denoiser_record(spec: RunSpec, plugins: Plugins) -> list[dict] | None:
    """The denoiser's quality at the run's sigma on the first images (None without a denoiser).

    :func:`certframe.quality.denoiser.denoiser_quality` on ``QUALITY_IMAGES`` images, with the
    segmenter's Dice on the denoised images: a poor denoiser shows here before its
    certificates are read.
    """
    if spec.denoiser == "none" or plugins.denoiser is None:
        return None
    from certframe.quality.denoiser import denoiser_quality, quality_records

    table = denoiser_quality(plugins.denoiser, plugins.dataset, [spec.sigma], segmenter=plugins.segmenter,
                             limit=min(QUALITY_IMAGES, len(plugins.dataset)), seed=spec.seed)
    return quality_records(table)


def tuning_record(spec: RunSpec, plugins: Plugins) -> dict:
    """What the segmenter was tuned for (its checkpoint's record) and a warning when this run differs.

    Certifying a segmenter fine-tuned on one denoiser and sigma with another is valid but
    not what it was tuned for (:func:`certframe.training.tuning.check_tuning`); the warning is logged
    and kept in the manifest.
    """
    from certframe.training.tuning import segmenter_tuning_warning, tuned_for

    config = getattr(plugins.segmenter, "checkpoint_config", None)
    warning = segmenter_tuning_warning(plugins.segmenter, spec.denoiser, plugins.denoiser, spec.sigma)
    if warning:
        log.warning("%s", warning)
    return {"tuned_for": tuned_for(config if isinstance(config, dict) else None), "warning": warning}


def certify_manifest(spec: RunSpec, plugins: Plugins, registry) -> dict:
    """The manifest of a ``certframe certify`` run."""
    from certframe.run.accelerate import Acceleration

    records = plugin_records(spec, registry, plugins=plugins)
    device = resolve_device(spec.device)
    return {"format": FORMAT, "label": method_label(spec), "config": run_config(spec),
            "execution": {"batch_size": spec.batch_size, "device": spec.device,
                          "certificates": spec.certificates,
                          "accelerate": None if spec.accelerate is None else
                          Acceleration(**spec.accelerate).resolve(device).as_dict()},
            "device": str(device), "plugins": records, "provenance": provenance(spec, plugins),
            "correction": correction(plugins.certifier, records["certifier"]["options"]),
            "dataset": dataset_identity(plugins.dataset), "classes": list(plugins.dataset.class_names),
            "denoiser_quality": denoiser_record(spec, plugins), "tuning": tuning_record(spec, plugins),
            "versions": package_versions(), "command": command_line(), "created": now()}


def attack_manifest(spec: AttackSpec, plugins: Plugins, registry) -> dict:
    """The manifest of a ``certframe attack`` run."""
    records = plugin_records(spec, registry, plugin=False, plugins=plugins)
    records["attacks"] = {}
    for name in spec.attacks:
        record = plugin_record(registry, "attack", name, spec.attack_options.get(name, {}), plugin=False)
        record.pop("name")
        records["attacks"][name] = record
    return {"format": FORMAT, "kind": "attack", "config": run_config(spec),
            "device": str(resolve_device(spec.device)), "plugins": records,
            "provenance": provenance(spec, plugins), "tuning": tuning_record(spec, plugins),
            "correction": correction(plugins.certifier, records["certifier"]["options"]),
            "dataset": dataset_identity(plugins.dataset), "classes": list(plugins.dataset.class_names),
            "versions": package_versions(), "command": command_line(), "created": now()}


__all__ = ["certify_manifest", "attack_manifest", "command_line", "correction"]
