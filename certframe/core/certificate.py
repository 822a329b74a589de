"""Typed result objects."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from certframe.interfaces import ABSTAIN

if TYPE_CHECKING:
    from certframe.core.hierarchy import LabelHierarchy


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

    A hierarchical certificate (:mod:`certframe.core.hierarchy`; the ``hierarchical`` certifier) also
    has ``hierarchy``, ``nodes`` (int64 ``[H, W]``: the certified node id per pixel, a class or a
    group of classes, -1 = abstain) and ``levels`` (int64 ``[H, W]``: its level, 0 = the fine
    classes, -1 = abstain). Its ``labels`` hold the fine class where a pixel is certified at
    level 0 and ABSTAIN elsewhere, so every reader of flat certificates sees the fine-level
    certificate; the claim for a pixel certified as a group is that its votes stay in the
    group: ``P(f(x' + eps) in group) > 1/2`` for ``||x' - x||_2 < R``.
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
    nodes: torch.Tensor | None = None
    levels: torch.Tensor | None = None
    hierarchy: "LabelHierarchy | None" = None

    @property
    def abstained(self) -> torch.Tensor:
        """bool ``[H, W]``: pixels without a certificate (at any level of a hierarchy)."""
        return self.labels == ABSTAIN if self.nodes is None else self.nodes < 0

    def claims(self, num_classes: int) -> torch.Tensor:
        """bool ``[K, H, W]``: the classes each pixel's certificate allows (its class, or every class
        of its certified group); all False where it abstains. On the labels' device."""
        if self.nodes is None:
            classes = torch.arange(num_classes, device=self.labels.device).view(-1, *([1] * self.labels.dim()))
            return self.labels.unsqueeze(0) == classes
        members = self.hierarchy.members(self.nodes.device)                    # [N, K]
        out = members[self.nodes.clamp(min=0)].movedim(-1, 0)                # [K, H, W]
        return out & (self.nodes >= 0).unsqueeze(0)

    @property
    def abstain_rate(self) -> float:
        return float(self.abstained.float().mean())


def hierarchy_maps(certificates) -> dict:
    """``{"levels": [T x [H, W]], "nodes": [...]}`` (numpy, on the host) of one image's certificates when they
    are hierarchical (every one has ``nodes``), else ``{}``: what a run folder keeps beside the labels."""
    if not certificates or any(getattr(c, "nodes", None) is None for c in certificates):
        return {}
    return {"levels": [c.levels.cpu().numpy() for c in certificates],
            "nodes": [c.nodes.cpu().numpy() for c in certificates]}
