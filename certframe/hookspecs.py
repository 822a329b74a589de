"""Hook specifications: what a certframe plugin may implement.

Each hook receives a ``register`` callback owned by the core::

    from certframe import hookimpl

    @hookimpl
    def register_segmenters(register):
        register("my-unet", MyUNet)          # MyUNet(**options) -> Segmenter

``register(name, factory, summary=None)``: ``name`` is what users type
(lower case, digits, ``-``, ``_``, ``.``), ``factory`` is called with the
user's options as keyword arguments and returns the plugin object. The core
validates the name, records which distribution provided it and reports clashes.
"""
import pluggy

hookspec = pluggy.HookspecMarker("certframe")
hookimpl = pluggy.HookimplMarker("certframe")


class CertframeSpec:
    @hookspec
    def register_segmenters(self, register):
        """Register :class:`certframe.interfaces.Segmenter` factories."""

    @hookspec
    def register_denoisers(self, register):
        """Register :class:`certframe.interfaces.Denoiser` factories."""

    @hookspec
    def register_certifiers(self, register):
        """Register :class:`certframe.interfaces.Certifier` factories."""

    @hookspec
    def register_datasets(self, register):
        """Register :class:`certframe.interfaces.SegmentationDataset` factories."""

    @hookspec
    def register_attacks(self, register):
        """Register attack factories (see :mod:`certframe.attacks`)."""

    @hookspec
    def register_reporters(self, register):
        """Register reporter factories (turn run folders into tables and figures)."""
