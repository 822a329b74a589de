"""Checking a plugin by kind, and a registered one by name: :func:`check_plugin`."""
from __future__ import annotations

from typing import Any

from certframe.contract._common import ContractReport
from certframe.contract.certifier import check_certifier
from certframe.contract.dataset import check_dataset
from certframe.contract.denoiser import check_denoiser
from certframe.contract.segmenter import check_segmenter

_CHECKS = {"segmenter": check_segmenter, "denoiser": check_denoiser, "dataset": check_dataset,
           "certifier": check_certifier}


def check_plugin(kind: str, target: Any, *, options: dict | None = None, registry=None,
                 **kwargs) -> ContractReport:
    """Check one plugin of ``kind`` (segmenter, denoiser, dataset, certifier).

    target: a registered name (looked up in ``registry``, default
        :func:`certframe.registry.get_registry`, and built through ``Registry.create``
        so the option checks of the CLI apply), a factory, or an instance.
    kwargs: passed to the kind's ``check_*`` function.
    """
    if kind not in _CHECKS:
        raise ValueError(f"no contract for plugin kind {kind!r}; kinds with a contract: {', '.join(_CHECKS)}")
    check = _CHECKS[kind]
    if isinstance(target, str):
        from certframe.registry import get_registry

        registry = registry or get_registry()
        entry = registry.get(kind, target)

        def factory(**opts):
            return registry.create(kind, target, **opts)

        provider = " ".join(p for p in (entry.distribution.strip("()"), entry.version) if p)
        kwargs.setdefault("name", f"{target!r} ({provider})")
        return check(factory, options=options, **kwargs)
    return check(target, options=options, **kwargs)
