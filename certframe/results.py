"""Typed result objects."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from certframe.interfaces import ABSTAIN


@dataclass
class Certificate:
    """The certified prediction of the smoothed segmenter for one image at one ``tau``.

    labels:  int64 ``[H, W]``; a class index, or :data:`~certframe.interfaces.ABSTAIN` (-1).
    radius:  L2 radius ``R = sigma * Phi^-1(tau)`` in ``[0, 1]`` pixel units: with
             probability at least ``1 - alpha`` (over the Monte-Carlo draws) every
             non-abstained pixel keeps its class under any perturbation ``delta`` with
             ``||delta||_2 < R``.
    pvalues: float64 ``[H, W]`` of the per-pixel tests (``None`` where not applicable).
    pixel_radius: optional float ``[H, W]`` per-pixel radii (naive per-pixel certifier).
    num_samples: Monte-Carlo draws used (selection + estimation).
    """

    labels: torch.Tensor
    radius: float
    tau: float
    sigma: float
    alpha: float
    method: str
    num_samples: int
    pvalues: torch.Tensor | None = None
    pixel_radius: torch.Tensor | None = None
    info: dict = field(default_factory=dict)

    @property
    def abstained(self) -> torch.Tensor:
        """bool ``[H, W]``: pixels without a certificate."""
        return self.labels == ABSTAIN

    @property
    def abstain_rate(self) -> float:
        return float(self.abstained.float().mean())
