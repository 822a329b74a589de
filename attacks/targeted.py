"""Targeted PGD toward a target mask: "make the segmenter output THIS map".

torchattacks' random and least-likely targets assume one label per image; for
segmentation the target is a whole mask. A typical medical threat: erase the
lesion (``target=0``: every pixel background), so a screening model misses it.

Paper: the targeted variant of PGD (Madry et al., ICLR 2018; Kurakin et al. 2017),
applied per pixel as in Xie et al., "Adversarial Examples for Semantic Segmentation
and Object Detection", ICCV 2017 (dense adversary generation). The objective
minimised is the mean per-pixel cross-entropy of the logits against the target mask.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchattacks.attack import Attack

from .base import SegmentationAttack, check_norm, check_positive, default_alpha, validate_labels


class TargetedPGD(SegmentationAttack):
    """PGD that pulls every pixel's prediction toward a target mask.

    model:  segmenter ``[B, C, H, W] in [0, 1] -> logits [B, K, H, W]``.
    target: an int class (every pixel gets it; default 0 = background, "erase
            the lesion") or an int64 mask ``[H, W]`` or ``[B, H, W]`` in ``0..K-1``.
    norm:   "linf" (default) or "l2".
    eps:    budget in [0, 1] pixel units (default 8/255 for linf, 0.5 for l2).
    alpha:  step size (default ``2.5 * eps / steps``).  steps: default 20.
    random_start: default True.  seed: fixes the random start (default 0).

    ``attack(images [B, C, H, W] in [0, 1], labels=None) -> [B, C, H, W]`` in the
    ball and in ``[0, 1]``. ``labels`` is ignored (the target is fixed at
    construction; use ``set_target`` to change it), except in torchattacks'
    ``set_mode_targeted_by_label`` mode, where ``labels`` ARE the target mask.
    """

    threat = "base"
    norms = ("l2", "linf")

    def __init__(self, model, target: int | torch.Tensor = 0, norm: str = "linf", eps: float | None = None,
                 alpha: float | None = None, steps: int = 20, random_start: bool = True,
                 seed: int | None = 0):
        Attack.__init__(self, "TargetedPGD", model)
        norm = check_norm(norm)
        self._setup(eps=(8 / 255 if norm == "linf" else 0.5) if eps is None else eps, norm=norm, seed=seed)
        self.steps = check_positive("steps", steps, integer=True)
        self.alpha = default_alpha(self.eps, self.steps) if alpha is None else check_positive("alpha", alpha)
        self.random_start = bool(random_start)
        self.supported_mode = ["default", "targeted"]
        self.set_target(target)

    def set_target(self, target: int | torch.Tensor) -> None:
        """An int class in ``0..K-1``, or an integer mask ``[H, W]`` / ``[B, H, W]``."""
        if isinstance(target, bool):
            raise ValueError(f"target must be a class index or a mask tensor, got {target!r}")
        if isinstance(target, int):
            if target < 0 or (self.num_classes is not None and target >= self.num_classes):
                k = self.num_classes
                raise ValueError(f"target class {target} is not a class of the model "
                                 f"(expected 0..{k - 1 if k else 'K-1'})")
        elif isinstance(target, torch.Tensor):
            if target.dim() not in (2, 3) or target.is_floating_point() or target.dtype == torch.bool:
                raise ValueError(f"a target mask must be an integer tensor [H, W] or [B, H, W], got "
                                 f"dtype {target.dtype} and shape {tuple(target.shape)}")
        else:
            raise ValueError(f"target must be a class index (int) or a mask tensor, got {type(target).__name__}")
        self.target = target
        # torchattacks' targeted API: get_target_label(images, labels) returns the mask
        self.targeted = True
        self.attack_mode = "targeted(mask)"
        self._target_map_function = self.target_mask

    def target_mask(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The target mask ``[B, H, W]`` int64 for ``images [B, C, H, W]``."""
        B, _, H, W = images.shape
        if isinstance(self.target, int):
            mask = torch.full((B, H, W), self.target, dtype=torch.long, device=images.device)
        else:
            mask = self.target.to(images.device).long()
            if mask.dim() == 2:
                mask = mask.unsqueeze(0).expand(B, H, W) if tuple(mask.shape) == (H, W) else mask.unsqueeze(0)
        validate_labels(mask, images, self.num_classes, name="target mask")
        return mask

    def perturb(self, images, labels):
        if self.attack_mode == "targeted(label)":  # torchattacks' API: the labels are the target
            if labels is None:
                raise ValueError("in set_mode_targeted_by_label mode the labels are the target mask; got none")
            target = labels
        else:
            target = self.target_mask(images)

        def loss(adv, t):
            logits = self.check_logits(self.get_logits(adv), adv)
            if self.num_classes is None and int(target.max()) >= logits.shape[1]:
                raise ValueError(f"the target mask holds class {int(target.max())}, the model predicts "
                                 f"{logits.shape[1]} classes")
            return -F.cross_entropy(logits, target)

        return self.ascend(images, self.loss_gradient(loss), alpha=self.alpha, steps=self.steps,
                           start_random=self.random_start, generator=self.generator())
