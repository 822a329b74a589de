"""The run layer: one orchestration for certify, attack, demo and distributed runs.

Commands (``certframe.cli``) parse options into a validated spec and call this layer;
this layer builds the plugins through the registry, writes the run folder and runs the
per-image step; the mathematics (smoothing, sampler, certifiers, statistics, metrics)
lies below it. See ``docs/architecture.md``.

=================  =====================================================================
module             what it owns
=================  =====================================================================
``spec``           :class:`RunSpec` / :class:`AttackSpec`: every setting, validated once
``build``          plugin building through the registry, device, names and labels
``manifest``       the manifest of a run folder
``selection``      which images, in what order, how they are loaded
``step``           the per-image step: certify one image (:class:`CertifyStep`)
``attack_step``    the per-image step of attack runs: certify, attack, re-test
                   (:class:`AttackStep`)
``certify``        certify runs (:func:`run_certify`, sharded over processes, and
                   :func:`certify_dataset` without a run folder) and the loop every run shares
``attack``         attack runs (:func:`run_attack`, :func:`attack_dataset`)
=================  =====================================================================
The run folder itself is :mod:`certframe.run.folder` (writing; its parts: ``layout``,
``records``, ``reading``, ``writer``, ``tables``).
"""
from certframe.run.attack import attack_dataset, run_attack
from certframe.run.attack_step import AttackStep
from certframe.run.build import Names, build_plugins, method_label, resolve_device
from certframe.run.certify import certify_dataset, run_certify, run_certify_sharded
from certframe.run.spec import AttackSpec, RunSpec, SpecError
from certframe.run.step import CertifyStep, ImageResult

__all__ = ["RunSpec", "AttackSpec", "SpecError", "Names", "build_plugins", "method_label", "resolve_device",
           "CertifyStep", "AttackStep", "ImageResult", "run_certify", "run_certify_sharded", "certify_dataset",
           "run_attack", "attack_dataset"]
