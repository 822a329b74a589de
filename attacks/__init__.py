"""certframe.attacks: the attack suite (torchattacks-based, segmentation-aware).

Every attack subclasses torchattacks' :class:`~torchattacks.attack.Attack`
(through :class:`~certframe.attacks.base.SegmentationAttack`) and is called as
``attack(images [B, C, H, W] in [0, 1], labels [B, H, W] int64) -> [B, C, H, W]``.

=============  ======  =========  ==============================================
name           norm    threat     paper
=============  ======  =========  ==============================================
fgsm           linf    base       Goodfellow et al., ICLR 2015
pgd            linf    base       Madry et al., ICLR 2018
pgdl2          l2      base       Madry et al., ICLR 2018
targeted-pgd   either  base       targeted PGD toward a mask (Xie et al. 2017)
segpgd         either  base       Gu et al., ECCV 2022
eot-pgdl2      l2      smoothed   EOT (Athalye et al. 2018) / SmoothAdv (Salman et al. 2019)
eot-pgd        linf    smoothed   the same in the Linf ball
=============  ======  =========  ==============================================

"base" attacks see the segmenter alone; "smoothed" attacks differentiate through
the noise draws, the denoiser and the segmenter of the smoothed pipeline.
:func:`certframe.attacks.falsification.falsify` is the falsification test of one
certificate (issue 13): it attacks the weakest certified pixels of the SMOOTHED
model inside the certificate's own radius (:mod:`~certframe.attacks.pixel_attack`,
SmoothAdv objective with APGD's schedule), searches the minimal flipping norm
(:mod:`~certframe.attacks.min_norm`) and tests each attacked image with fresh draws
(:mod:`~certframe.attacks.flip_test`: exact binomial test, Holm, Clopper-Pearson).
:mod:`certframe.attacks.violations` holds the older, weak label-map comparison;
:func:`certframe.attacks.suite.attack_dataset` runs the whole comparison.
"""
from .base import SegmentationAttack, check_eps, check_norm
from .eot_pgd import EOTPGD
from .eot_pgdl2 import EOTPGDL2
from .falsification import FalsificationResult, falsify, falsify_all
from .fgsm import FGSM
from .flip_test import default_n_test, flip_test
from .min_norm import minimal_flip_radius
from .pgd import PGD
from .pgdl2 import PGDL2
from .pipeline import DenoisedSegmenter
from .pixel_attack import attack_pixels
from .segpgd import SegPGD
from .targeted import TargetedPGD
from .targets import weakest_pixels
from .violations import Violations, check_certificates, count_violations

BUILTIN_ATTACKS = {
    "fgsm": FGSM,
    "pgd": PGD,
    "pgdl2": PGDL2,
    "targeted-pgd": TargetedPGD,
    "segpgd": SegPGD,
    "eot-pgdl2": EOTPGDL2,
    "eot-pgd": EOTPGD,
}

__all__ = ["SegmentationAttack", "FGSM", "PGD", "PGDL2", "TargetedPGD", "SegPGD", "EOTPGDL2", "EOTPGD",
           "DenoisedSegmenter", "Violations", "count_violations", "check_certificates", "check_eps",
           "check_norm", "BUILTIN_ATTACKS", "falsify", "falsify_all", "FalsificationResult", "attack_pixels",
           "minimal_flip_radius", "flip_test", "default_n_test", "weakest_pixels"]
