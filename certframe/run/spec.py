"""The run specification: every setting of one run, validated once, before anything is loaded.

A :class:`RunSpec` is built from command-line options, from one run of an experiment
file (:mod:`certframe.run.config`) or from a run's ``manifest.json``; an :class:`AttackSpec`
adds the attack settings. Validation happens in ``__post_init__``, so a spec that
exists is a valid one: sigma is a finite positive float, n0 / n / limit are positive
integers, alpha lies in (0, 1), the taus are distinct and in (0.5, 1), batch_size is a positive
int or ``"auto"``, seed an int in [0, 2**64), options are dicts (an option value naming an existing
file or folder is made absolute, so the manifest re-runs from any working directory).
The falsification options of an :class:`AttackSpec` are checked here too
(:func:`certframe.attacks.falsification.check_falsify_options`). Nothing later converts or
re-checks these values. A valid spec may still be unable to certify anything (an n too small
for alpha and tau): :meth:`RunSpec.warnings` says so.

``spec.config()`` is the part of the manifest a resumed run must match (its keys are
those of run folders written by earlier versions, so old folders still resume).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from certframe.attacks.suite import DEFAULT_ATTACKS
from certframe.core import statistics
from certframe.interfaces import CertifyRequest
from certframe.run.provenance import absolute_paths
from certframe.validation import OptionError, check_int, check_seed

PLUGIN_KINDS = ("dataset", "segmenter", "denoiser", "certifier")


SpecError = OptionError
"""A run setting is invalid; the message names the setting, what was expected and what came
(:class:`certframe.validation.OptionError`, under the name the run layer has always used)."""


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise SpecError(f"{name} must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise SpecError(f"{name} must be a number, got {value!r}") from None


def check_sigma(sigma: Any) -> float:
    """A finite noise level > 0 in [0, 1] pixel units (:func:`certframe.core.statistics.check_sigma`,
    with the run layer's message)."""
    value = _number("sigma", sigma)
    try:
        return statistics.check_sigma(value)
    except ValueError:
        raise SpecError(f"sigma must be a finite noise level > 0 (the std of the Gaussian noise in [0, 1] "
                        f"pixel units, e.g. 0.25), got {sigma!r}") from None


def check_batch_size(value: Any) -> int | str:
    """A positive number of draws per forward pass, or ``"auto"``."""
    if value == "auto":
        return "auto"
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise SpecError(f"batch_size must be a positive integer or 'auto', got {value!r}") from None
    return check_int("batch_size", value, 1)


@dataclass(frozen=True)
class RunSpec:
    """One certify run: plugins with their options, the certification request, execution settings.

    sigma, n0, n, alpha, taus: the request (see :class:`~certframe.interfaces.CertifyRequest`).
    seed: with each image's id, fixes every noise draw of the run.
    batch_size: draws per forward pass or ``"auto"`` (memory only: results do not depend on it).
    device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.  limit: certify only the first N images.
    label: the method's name in reports (default: segmenter, weights and denoiser).
    certificates: keep each image's label maps in the run folder.
    accelerate: options of :class:`certframe.run.accelerate.Acceleration`, or None (plain fp32).
    """

    dataset: str = "synthetic-lung"
    dataset_options: dict = field(default_factory=dict)
    segmenter: str = "monai"
    segmenter_options: dict = field(default_factory=dict)
    denoiser: str = "none"
    denoiser_options: dict = field(default_factory=dict)
    certifier: str = "segcertify"
    certifier_options: dict = field(default_factory=dict)
    sigma: float = 0.25
    n0: int = 10
    n: int = 100
    alpha: float = 0.001
    taus: tuple = (0.75,)
    batch_size: int | str = 32
    seed: int = 0
    device: str = "auto"
    limit: int | None = None
    label: str | None = None
    certificates: bool = True
    accelerate: dict | None = None

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        for kind in PLUGIN_KINDS:
            name, options = getattr(self, kind), getattr(self, f"{kind}_options")
            if not isinstance(name, str) or not name:
                raise SpecError(f"{kind} must be a plugin name, got {name!r}")
            if not isinstance(options, dict):
                raise SpecError(f"{kind}_options must be a dict of KEY=VALUE options, got {options!r}")
            set_(f"{kind}_options", absolute_paths(options))
        # the request's own validation (certframe.interfaces.CertifyRequest), once
        sigma = check_sigma(self.sigma)
        try:
            request = CertifyRequest(sigma, self.n0, self.n, self.alpha, self.taus)
        except ValueError as err:
            raise SpecError(str(err)) from None
        for key in ("sigma", "n0", "n", "alpha", "taus"):
            set_(key, getattr(request, key))
        set_("_request", request)
        set_("batch_size", check_batch_size(self.batch_size))
        set_("seed", check_seed(self.seed))
        if not isinstance(self.device, str) or not self.device:
            raise SpecError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.limit is not None:
            set_("limit", check_int("limit", self.limit, 1))
        if self.label is not None and not isinstance(self.label, str):
            raise SpecError(f"label must be a string, got {self.label!r}")
        set_("certificates", bool(self.certificates))
        if self.accelerate is not None and not isinstance(self.accelerate, dict):
            raise SpecError(f"accelerate must be a dict of acceleration options, got {self.accelerate!r}")

    @property
    def request(self) -> CertifyRequest:
        """The certification request every image of the run is asked (validated with the spec)."""
        return self._request

    def warnings(self) -> list[str]:
        """What is valid but cannot give a useful result (an n too small to certify at alpha and some tau);
        the run logs them before sampling, records them in its manifest, and the command repeats them
        under the summary (:meth:`certframe.interfaces.CertifyRequest.warnings`)."""
        return self.request.warnings()

    def options(self, kind: str) -> dict:
        return getattr(self, f"{kind}_options")

    def names(self) -> dict[str, str]:
        """``{kind: plugin name}`` of the four plugins."""
        return {kind: getattr(self, kind) for kind in PLUGIN_KINDS}

    def config(self) -> dict:
        """What a resumed run must share with the run it continues (the manifest's ``config``)."""
        return {"dataset": self.dataset, "dataset_options": self.dataset_options, "segmenter": self.segmenter,
                "segmenter_options": self.segmenter_options, "denoiser": self.denoiser,
                "denoiser_options": self.denoiser_options, "certifier": self.certifier,
                "certifier_options": self.certifier_options, "sigma": self.sigma, "n0": self.n0, "n": self.n,
                "alpha": self.alpha, "taus": list(self.taus), "seed": self.seed, "limit": self.limit}

    def replace(self, **changes) -> "RunSpec":
        """A copy with ``changes`` (validated again)."""
        return type(self)(**{**{f.name: getattr(self, f.name) for f in fields(self)}, **changes})

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class AttackSpec(RunSpec):
    """A ``certframe attack`` run: a :class:`RunSpec` plus the attacks and their budgets.

    attacks: attack plugin names; attack_options: ``{attack: {key: value}}``.
    eps_l2: L2 budgets (None: each certificate's own radius times each radius multiple);
    eps_linf: Linf budgets. radius_multiples: k of the budgets ``k R`` (k = 1 tests the claim;
    k > 1 is reported as beyond the claim). falsify: run the pixel-focused falsification
    job; falsify_options: its options (:func:`certframe.attacks.falsification.falsify`).
    """

    attacks: tuple = DEFAULT_ATTACKS
    attack_options: dict = field(default_factory=dict)
    eps_l2: tuple | None = None
    eps_linf: tuple = ()
    radius_multiples: tuple = (1.0,)
    falsify: bool = True
    falsify_options: dict = field(default_factory=dict)

    def __post_init__(self):
        super().__post_init__()
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        attacks = (self.attacks,) if isinstance(self.attacks, str) else tuple(self.attacks)
        if not attacks or not all(isinstance(a, str) and a for a in attacks):
            raise SpecError(f"attacks must be a non-empty list of attack plugin names, got {self.attacks!r}")
        set_("attacks", attacks)
        if not isinstance(self.attack_options, dict) or not all(isinstance(v, dict)
                                                                for v in self.attack_options.values()):
            raise SpecError(f"attack_options must map attack names to option dicts, got {self.attack_options!r}")
        unknown = sorted(set(self.attack_options) - set(attacks))
        if unknown:
            raise SpecError(f"options given for attack(s) {unknown} that are not run; attacks: {list(attacks)}")
        set_("eps_l2", None if self.eps_l2 is None else tuple(_number("eps_l2", e) for e in self.eps_l2))
        set_("eps_linf", tuple(_number("eps_linf", e) for e in self.eps_linf))
        multiples = tuple(_number("radius_multiple", k) for k in self.radius_multiples)
        if not multiples or not all(math.isfinite(k) and k > 0 for k in multiples):
            raise SpecError(f"radius multiples must be finite numbers > 0, got {self.radius_multiples!r}")
        set_("radius_multiples", multiples)
        set_("falsify", bool(self.falsify))
        if not isinstance(self.falsify_options, dict):
            raise SpecError(f"falsify_options must be a dict of KEY=VALUE options, got {self.falsify_options!r}")
        from certframe.attacks.falsification import check_falsify_options

        set_("falsify_options", check_falsify_options(self.falsify_options))

    def config(self) -> dict:
        config = super().config()
        config.update({"attacks": list(self.attacks), "attack_options": self.attack_options,
                       "eps_l2": None if self.eps_l2 is None else list(self.eps_l2),
                       "eps_linf": list(self.eps_linf), "radius_multiples": list(self.radius_multiples),
                       "falsify": self.falsify, "falsify_options": self.falsify_options})
        return config


def spec_fields(cls: type = RunSpec) -> list[str]:
    return [f.name for f in fields(cls)]


__all__ = ["RunSpec", "AttackSpec", "SpecError", "check_sigma", "check_batch_size", "spec_fields",
           "PLUGIN_KINDS", "DEFAULT_ATTACKS"]
