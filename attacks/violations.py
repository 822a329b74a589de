"""The label-map violation checker: the WEAK check, kept for existing callers.

It can only count a pixel that x' certifies to ANOTHER class, so a pixel whose true
probability at x' lies between 1/2 and tau (the claim is false, yet x' is certified
as nothing) is invisible to it at any attack strength, and it reads x' with a
certificate of its own rather than a test of the claim. The sound check is
:func:`certframe.attacks.falsification.falsify` (fresh draws at x', an exact one-sided test
of ``p(c_i | x') < 1/2``, Holm); use this module only to compare two label maps.

A certificate on ``x`` (SegCertify, Fischer et al. ICML 2021) says: with
probability at least ``1 - alpha`` over its Monte-Carlo draws, every
non-abstained pixel i keeps its class c_i under the SMOOTHED segmenter g for
every perturbation with ``||x' - x||_2 < R``, ``R = sigma * Phi^-1(tau)``.

g(x') is itself only known through Monte-Carlo draws, so "the class of g on x'"
is read from a second certificate, computed on ``x'`` at the same sigma. What is
counted, per pixel i (``[H, W]`` label maps, :data:`~certframe.interfaces.ABSTAIN` = -1):

* covered     c_i != ABSTAIN on x, and ``R > ||x' - x||_2`` (the perturbation's
              actual L2 norm; strict, as the guarantee). Pixels of a certificate whose
              radius does not reach the perturbation are never covered: nothing was
              promised for them.
* violation   covered, and the certificate on x' certifies a class c'_i that is
              neither ABSTAIN nor c_i.
* abstained   covered, and the certificate on x' abstains. NOT a violation: the
              certificate promises that g keeps c_i (p_i(c_i; x') > 1/2), not that
              p_i(c_i; x') still exceeds tau, so x' may simply be too close to call
              with n draws.
* majority flips (optional) covered pixels whose plain majority vote on x' (argmax of
              the counts) differs from c_i; reported separately: a flip of a noisy
              estimate near p = 1/2 is not evidence against the certificate.

Why a different certified class is a violation: if both certificates are right,
g(x')_i = c_i (from the one on x) and p_i(c'_i; x') > tau > 1/2 (from the one on x'),
so c'_i = c_i. A violation therefore proves that at least one of the two
certificates is wrong; by the union bound that happens for an image with
probability at most ``alpha_x + alpha_x'``, whichever draws (fresh or the same
seed) each used. Violations are counted and reported, never hidden or filtered.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from certframe.interfaces import ABSTAIN


@dataclass(frozen=True)
class Violations:
    """Counts of one check (pixels of one image at one certificate radius)."""

    covered: int
    violations: int
    abstained: int
    kept: int
    majority_flips: int | None
    radius: float
    perturbation_l2: float

    @property
    def covers(self) -> bool:
        """Whether the certificate's radius reaches the perturbation at all."""
        return self.radius > self.perturbation_l2

    @property
    def violation_rate(self) -> float:
        """Violations per covered pixel (0.0 when nothing is covered)."""
        return self.violations / self.covered if self.covered else 0.0

    def as_row(self) -> dict:
        row = asdict(self)
        row.pop("radius")
        row.pop("perturbation_l2")
        return row


def _check_labels(name: str, labels: torch.Tensor) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be an int64 label map tensor [H, W], got {type(labels).__name__}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer labels (class or ABSTAIN = {ABSTAIN}), got dtype {labels.dtype}")
    if labels.numel() and int(labels.min()) < ABSTAIN:
        raise ValueError(f"{name} holds label {int(labels.min())}; labels are classes >= 0 or ABSTAIN = {ABSTAIN}")
    return labels


def count_violations(certified: torch.Tensor, radius: float, adversarial: torch.Tensor,
                     perturbation_l2: float, majority: torch.Tensor | None = None) -> Violations:
    """Check one certificate against the certified labels on the attacked image.

    certified:       int ``[H, W]`` certified labels on x (ABSTAIN = -1).
    radius:          the certificate's L2 radius R (>= 0).
    adversarial:     int ``[H, W]`` certified labels on x' (same sigma; ABSTAIN = -1).
    perturbation_l2: ``||x' - x||_2`` over all C*H*W values (>= 0).
    majority:        optional int ``[H, W]`` plain majority vote on x'.
    """
    certified = _check_labels("certified", certified)
    adversarial = _check_labels("adversarial", adversarial)
    if certified.shape != adversarial.shape:
        raise ValueError(f"the certificate on x has shape {tuple(certified.shape)}, the one on x' "
                         f"{tuple(adversarial.shape)}; they must be of the same image size")
    radius, perturbation_l2 = float(radius), float(perturbation_l2)
    if not radius >= 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    if not perturbation_l2 >= 0:
        raise ValueError(f"perturbation_l2 must be a norm >= 0, got {perturbation_l2}")
    adversarial = adversarial.to(certified.device)
    if radius > perturbation_l2:
        covered = certified != ABSTAIN
    else:
        covered = torch.zeros_like(certified, dtype=torch.bool)
    abstained = covered & (adversarial == ABSTAIN)
    violated = covered & (adversarial != ABSTAIN) & (adversarial != certified)
    kept = covered & (adversarial == certified)
    flips = None
    if majority is not None:
        majority = _check_labels("majority", majority)
        if majority.shape != certified.shape:
            raise ValueError(f"majority has shape {tuple(majority.shape)}, expected {tuple(certified.shape)}")
        flips = int((covered & (majority.to(certified.device) != certified)).sum())
    return Violations(covered=int(covered.sum()), violations=int(violated.sum()), abstained=int(abstained.sum()),
                      kept=int(kept.sum()), majority_flips=flips, radius=radius, perturbation_l2=perturbation_l2)


def check_certificates(clean, adversarial, perturbation_l2: float,
                       majority: torch.Tensor | None = None) -> Violations:
    """:func:`count_violations` for two :class:`~certframe.core.certificate.Certificate` objects.

    Both must share sigma (the smoothed segmenter is defined by it); the radius is
    the clean certificate's.
    """
    if abs(float(clean.sigma) - float(adversarial.sigma)) > 1e-12:
        raise ValueError(f"the certificates were made at different noise levels (sigma {clean.sigma} on x, "
                         f"{adversarial.sigma} on x'): they certify different smoothed segmenters")
    return count_violations(clean.labels, clean.radius, adversarial.labels, perturbation_l2, majority)
