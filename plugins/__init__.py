"""certframe's built-in plugins (installed as ``certframe.plugins``).

They register through exactly the hooks a third-party package implements; the
``certframe`` distribution also declares this module under the ``certframe``
entry-point group.
"""
from certframe.hookspecs import hookimpl


@hookimpl
def register_segmenters(register):
    from certframe.plugins.segmenters.monai_segmenter import MonaiSegmenter

    register("monai", MonaiSegmenter)


@hookimpl
def register_denoisers(register):
    from certframe.plugins.denoisers.none import NoDenoiser

    register("none", NoDenoiser)


@hookimpl
def register_certifiers(register):
    from certframe.plugins.certifiers.cohen_per_pixel import CohenPerPixel
    from certframe.plugins.certifiers.segcertify import SegCertify

    register("segcertify", SegCertify)
    register("cohen-per-pixel", CohenPerPixel)


@hookimpl
def register_datasets(register):
    from certframe.plugins.datasets import synthetic

    register("synthetic-lung", synthetic.SyntheticLung)
    register("synthetic-chest", synthetic.SyntheticChest)
    register("synthetic-polyp", synthetic.SyntheticPolyp)
    register("synthetic-lesion", synthetic.SyntheticLesion)
