"""certframe's built-in plugins (installed as ``certframe.plugins``).

They register through exactly the hooks a third-party package implements; the
``certframe`` distribution also declares this module under the ``certframe``
entry-point group. The attacks are not here: the attack suite registers them through
its own entry point (:mod:`certframe.attacks.hooks`), so the built-in plugins do not
depend on it.
"""
from certframe.hookspecs import hookimpl


@hookimpl
def register_segmenters(register):
    from certframe.plugins.segmenters.monai_segmenter import MonaiSegmenter

    register("monai", MonaiSegmenter)
    # the optional extras import their library only when built: listing works without them
    from certframe.plugins.segmenters.nnunet import NNUNetSegmenter
    from certframe.plugins.segmenters.smp_segmenter import SMPSegmenter
    from certframe.plugins.segmenters.torchscript import TorchScriptSegmenter

    register("smp", SMPSegmenter)
    register("nnunet", NNUNetSegmenter)
    register("torchscript", TorchScriptSegmenter)


@hookimpl
def register_denoisers(register):
    from certframe.plugins.denoisers.ddim import DDIMDenoiser
    from certframe.plugins.denoisers.ddpm import DDPMDenoiser
    from certframe.plugins.denoisers.none import NoDenoiser

    register("none", NoDenoiser)
    register("ddpm", DDPMDenoiser)
    register("ddim", DDIMDenoiser)

    from certframe.plugins.denoisers.torchscript import TorchScriptDenoiser

    register("torchscript", TorchScriptDenoiser)


@hookimpl
def register_certifiers(register):
    from certframe.plugins.certifiers.cohen_per_pixel import CohenPerPixel
    from certframe.plugins.certifiers.segcertify import SegCertify

    register("segcertify", SegCertify)
    register("cohen-per-pixel", CohenPerPixel)

    from certframe.plugins.certifiers.adaptive import AdaptiveSegCertify

    register("adaptive", AdaptiveSegCertify)

    from certframe.plugins.certifiers.hierarchical import HierarchicalSegCertify

    register("hierarchical", HierarchicalSegCertify)


@hookimpl
def register_datasets(register):
    from certframe.plugins.datasets import synthetic

    register("synthetic-lung", synthetic.SyntheticLung)
    register("synthetic-chest", synthetic.SyntheticChest)
    register("synthetic-polyp", synthetic.SyntheticPolyp)
    register("synthetic-lesion", synthetic.SyntheticLesion)

    from certframe.plugins.datasets.synthetic_tumour import SyntheticTumour

    register("synthetic-tumour", SyntheticTumour)

    from certframe.plugins.datasets import cvc_clinicdb, folder, isic2018, jsrt, kvasir, montgomery, ph2, shenzhen

    register("kvasir-seg", kvasir.KvasirSEG)
    register("cvc-clinicdb", cvc_clinicdb.CVCClinicDB)
    register("isic2018", isic2018.ISIC2018)
    register("jsrt", jsrt.JSRT)
    register("montgomery", montgomery.Montgomery)
    register("shenzhen", shenzhen.Shenzhen)
    register("ph2", ph2.PH2)
    register("folder", folder.FolderDataset)

    from certframe.plugins.datasets import nifti_folder, synthetic_volume

    register("synthetic-volume", synthetic_volume.SyntheticVolume)
    register("nifti-folder", nifti_folder.NiftiFolder)  # nibabel is imported only when built


@hookimpl
def register_reporters(register):
    from certframe.plugins.reporters.figures import FigureReporter
    from certframe.plugins.reporters.html import HtmlReporter
    from certframe.plugins.reporters.table import TableReporter

    register("table", TableReporter)
    register("figures", FigureReporter)
    register("html", HtmlReporter)
