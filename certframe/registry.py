"""The plugin registry, on pluggy.

:func:`get_registry` builds a fresh :class:`pluggy.PluginManager` (no module
global), registers the built-in plugins (:mod:`certframe.plugins`) through the
same hooks a third-party package uses, loads every entry point of group
``certframe`` unless ``CERTFRAME_DISABLE_PLUGIN_AUTOLOAD`` is set, calls
``check_pending()``, then asks each plugin to register its objects.

A plugin that fails to import or whose hook raises is recorded in
:attr:`Registry.failures` (shown by ``certframe plugins``) and does not take the
tool down. Asking for an unknown name raises :class:`PluginNotFound`, which lists
what is available.
"""
from __future__ import annotations

import inspect
import os
import re
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable, Iterable

import pluggy

from certframe.hookspecs import CertframeSpec

GROUP = "certframe"
DISABLE_ENV = "CERTFRAME_DISABLE_PLUGIN_AUTOLOAD"
KINDS = {
    "segmenter": "register_segmenters",
    "denoiser": "register_denoisers",
    "certifier": "register_certifiers",
    "dataset": "register_datasets",
    "attack": "register_attacks",
    "reporter": "register_reporters",
}
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


class PluginError(Exception):
    """A plugin is broken or misused."""


class PluginNotFound(PluginError, KeyError):
    def __str__(self):  # KeyError would quote the message
        return str(self.args[0])


@dataclass
class PluginEntry:
    """One registered object: ``factory(**options)`` builds it."""

    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str
    distribution: str
    version: str
    summary: str = ""

    def options(self) -> dict[str, inspect.Parameter]:
        """The keyword options the factory accepts (from its signature)."""
        try:
            params = inspect.signature(self.factory).parameters
        except (TypeError, ValueError):
            return {}
        return {k: p for k, p in params.items()
                if k != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}

    def accepts_any_option(self) -> bool:
        try:
            params = inspect.signature(self.factory).parameters.values()
        except (TypeError, ValueError):
            return True
        return any(p.kind == p.VAR_KEYWORD for p in params)

    @property
    def doc(self) -> str:
        return inspect.getdoc(self.factory) or ""


@dataclass
class PluginFailure:
    """A plugin that could not be loaded, or whose registration failed."""

    plugin: str
    distribution: str
    error: str


@dataclass
class Registry:
    entries: dict[str, dict[str, PluginEntry]] = field(default_factory=lambda: {k: {} for k in KINDS})
    failures: list[PluginFailure] = field(default_factory=list)
    plugin_manager: pluggy.PluginManager | None = None

    def names(self, kind: str) -> list[str]:
        return sorted(self._kind(kind))

    def get(self, kind: str, name: str) -> PluginEntry:
        entries = self._kind(kind)
        if name not in entries:
            available = ", ".join(sorted(entries)) or "none"
            broken = ""
            if self.failures:
                names = ", ".join(sorted({f.plugin for f in self.failures}))
                broken = f"; {len(self.failures)} plugin(s) failed to load ({names})"
            raise PluginNotFound(f"unknown {kind} {name!r}; available {kind}s: {available}{broken}")
        return entries[name]

    def create(self, kind: str, name: str, **options) -> Any:
        """Build the named plugin with ``options`` as keyword arguments."""
        entry = self.get(kind, name)
        accepted = entry.options()
        if not entry.accepts_any_option():
            unknown = sorted(set(options) - set(accepted))
            if unknown:
                raise PluginError(f"{kind} {name!r} does not accept option(s) {unknown}; "
                                  f"its options: {sorted(accepted) or 'none'}")
        return entry.factory(**options)

    def _kind(self, kind: str) -> dict[str, PluginEntry]:
        if kind not in self.entries:
            raise PluginError(f"unknown plugin kind {kind!r}; kinds: {', '.join(KINDS)}")
        return self.entries[kind]


def _entry_points() -> Iterable[metadata.EntryPoint]:
    return metadata.entry_points(group=GROUP)


BUILTINS = {"builtin": "certframe.plugins", "attacks": "certframe.attacks.hooks"}
"""certframe's own plugin modules (entry-point name -> module): the built-in plugins and
the attack suite's attacks, registered directly (also with ``load_entrypoints=False``)
through the same hooks as any third-party package; their entry points are skipped."""


def get_plugin_manager(*, load_entrypoints: bool | None = None,
                       plugins: Iterable[tuple[str, object]] = ()
                       ) -> tuple[pluggy.PluginManager, list[PluginFailure], dict[str, tuple[str, str]]]:
    """A fresh PluginManager with the built-ins, entry points and ``plugins`` registered.

    load_entrypoints: ``None`` means "unless the environment variable
        ``CERTFRAME_DISABLE_PLUGIN_AUTOLOAD`` is set to a non-empty value".
    plugins: extra ``(name, module_or_object)`` pairs, e.g. from tests.
    Returns the manager, the plugins that failed to load, and ``{plugin name:
    (distribution, version)}``.
    """
    import importlib

    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(CertframeSpec)
    failures: list[PluginFailure] = []
    dists: dict[str, tuple[str, str]] = {}
    for name, module in BUILTINS.items():
        pm.register(importlib.import_module(module), name=name)
        dists[name] = _dist_of_module("certframe")
    if load_entrypoints is None:
        load_entrypoints = not os.environ.get(DISABLE_ENV)
    if load_entrypoints:
        for ep in _entry_points():
            dist = (ep.dist.name, ep.dist.version) if ep.dist else ("?", "?")
            if ep.value.split(":")[0] in BUILTINS.values():
                continue  # certframe's own entry points: already registered above
            try:
                obj = ep.load()
                if pm.is_registered(obj) or pm.get_plugin(ep.name) is not None:
                    raise PluginError(f"plugin name {ep.name!r} or its module is already registered")
                pm.register(obj, name=ep.name)
                dists[ep.name] = dist
            except Exception as err:  # a broken plugin must not take the tool down
                failures.append(PluginFailure(ep.name, dist[0], f"{type(err).__name__}: {err}"))
    for name, obj in plugins:
        pm.register(obj, name=name)
        dists[name] = ("(registered at run time)", "")
    pm.check_pending()
    return pm, failures, dists


def get_registry(*, load_entrypoints: bool | None = None,
                 plugins: Iterable[tuple[str, object]] = ()) -> Registry:
    """Build the :class:`Registry` of every plugin available now."""
    pm, failures, dists = get_plugin_manager(load_entrypoints=load_entrypoints, plugins=plugins)
    registry = Registry(failures=failures, plugin_manager=pm)
    for kind, hook_name in KINDS.items():
        hook = getattr(pm.hook, hook_name)
        # Call each implementation on its own, so one failing plugin is reported
        # with its name and the others still register.
        for impl in hook.get_hookimpls():  # registration order: built-ins first
            dist, version = dists.get(impl.plugin_name, ("?", "?"))
            register = _make_register(registry, kind, impl.plugin_name, dist, version)
            try:
                impl.function(register=register)
            except Exception as err:
                registry.failures.append(PluginFailure(
                    impl.plugin_name, dist, f"{hook_name}: {type(err).__name__}: {err}"))
    return registry


def _make_register(registry: Registry, kind: str, plugin: str, dist: str, version: str):
    def register(name: str, factory: Callable[..., Any], summary: str | None = None) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise PluginError(f"{kind} name must be lower case letters, digits, '-', '_' or '.', got {name!r}")
        if not callable(factory):
            raise PluginError(f"{kind} {name!r}: factory must be callable, got {type(factory).__name__}")
        existing = registry.entries[kind].get(name)
        if existing is not None:
            registry.failures.append(PluginFailure(plugin, dist, (
                f"{kind} name clash: {name!r} is registered by plugin {existing.plugin!r} "
                f"({existing.distribution}) and again by {plugin!r} ({dist}); the first is kept")))
            return
        first_line = (summary or inspect.getdoc(factory) or "").strip().splitlines()
        registry.entries[kind][name] = PluginEntry(kind, name, factory, plugin, dist, version,
                                                   first_line[0] if first_line else "")
    return register


def _dist_of_module(dist_name: str) -> tuple[str, str]:
    try:
        return dist_name, metadata.version(dist_name)
    except metadata.PackageNotFoundError:
        return dist_name, "unknown"
