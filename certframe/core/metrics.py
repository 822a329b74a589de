"""Segmentation metrics as pure functions on label maps.

Empty-mask convention (the one place it is defined): for a class c, when the
ground truth has no pixel of c and the prediction certifies none as c, Dice is
:data:`EMPTY_DICE` = 1.0 (nothing to find, nothing wrongly found). When only one
of them is empty, Dice is 0. MONAI returns NaN in the first case
(``ignore_empty=True``); we prefer a number so that means over images stay
defined, and report it in the docs.

The rule is made visible where it applies: :func:`metric_row` adds ``empty_truth``
(True when the ground truth has no foreground pixel at all, so an all-ABSTAIN
certificate scores certified Dice 1.0 by this rule) and, for K > 2, one
``empty_truth_<class>`` per foreground class (that class's Dice is 1.0 or 0.0 by the
rule, not by overlap). Tables and summaries show it beside the metric, with the
abstain rate.

Certified Dice (Fischer et al. 2021; Laousy et al. 2023) counts an abstained
pixel as an error: TP = certified c where y = c; FP = certified c where y != c;
FN = y = c but certified as another class or ABSTAIN. Dice = 2TP / (2TP + FP + FN).
"""
from __future__ import annotations

from typing import Sequence

import torch

from certframe.interfaces import ABSTAIN

EMPTY_DICE = 1.0


def confusion(pred: torch.Tensor, target: torch.Tensor, cls: int) -> tuple[int, int, int]:
    """(TP, FP, FN) of class ``cls``; ``pred`` may hold ABSTAIN (-1)."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from target {tuple(target.shape)}")
    p = pred == cls
    t = target == cls
    tp = int((p & t).sum())
    fp = int((p & ~t).sum())
    fn = int((~p & t).sum())
    return tp, fp, fn


def dice(pred: torch.Tensor, target: torch.Tensor, cls: int = 1) -> float:
    """Dice of class ``cls`` between label maps ``[H, W]`` (or any equal shapes).

    ABSTAIN in ``pred`` is simply "not cls", so this is certified Dice when ``pred``
    is a certificate's labels and ordinary Dice otherwise.
    """
    tp, fp, fn = confusion(pred, target, cls)
    denom = 2 * tp + fp + fn
    return EMPTY_DICE if denom == 0 else 2.0 * tp / denom


certified_dice = dice


def dice_per_class(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                   include_background: bool = False) -> dict[int, float]:
    start = 0 if include_background else 1
    return {c: dice(pred, target, c) for c in range(start, num_classes)}


def mean_dice(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    """Mean Dice over the foreground classes ``1..K-1`` (class 0 is background)."""
    per = dice_per_class(pred, target, num_classes)
    return sum(per.values()) / len(per) if per else EMPTY_DICE


def mean_dice_per_item(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """:func:`mean_dice` of each item of a batch ``[N, ...]``, as a float64 tensor ``[N]`` on their device.

    The same numbers as ``[mean_dice(p, t, num_classes) for p, t in zip(pred, target)]`` (the same
    float64 operations in the same order), computed without reading anything on the host.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from target {tuple(target.shape)}")
    n = pred.shape[0]
    total = torch.zeros(n, dtype=torch.float64, device=pred.device)
    if num_classes < 2:
        return total + EMPTY_DICE
    for c in range(1, num_classes):
        p, t = (pred == c).reshape(n, -1), (target == c).reshape(n, -1)
        tp = (p & t).sum(1)
        denom = (2 * tp + (p & ~t).sum(1) + (~p & t).sum(1)).double()
        total += torch.where(denom == 0, EMPTY_DICE, 2.0 * tp.double() / denom.clamp(min=1))
    return total / (num_classes - 1)


def abstain_rate(pred: torch.Tensor) -> float:
    """Fraction of pixels labelled ABSTAIN."""
    return float((pred == ABSTAIN).float().mean())


def certified_accuracy(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Fraction of pixels certified AND correct (abstain counts as wrong)."""
    return float((pred == target).float().mean())


def empty_truth(target: torch.Tensor, cls: int) -> bool:
    """True when the ground truth has no pixel of class ``cls`` (Dice then follows the empty-mask rule)."""
    return not bool((target == cls).any())


def metric_row(pred: torch.Tensor, target: torch.Tensor, class_names: Sequence[str],
               prefix: str = "certified_") -> dict[str, float | bool]:
    """Flat dict of the metrics of one prediction, for a results row.

    ``{prefix}dice``: mean Dice over the foreground classes; for K > 2 also
    ``{prefix}dice_<class>``. ``empty_truth``: the truth has no foreground pixel (Dice
    is then :data:`EMPTY_DICE` for a prediction with no foreground, e.g. all ABSTAIN);
    for K > 2 also ``empty_truth_<class>`` per foreground class. (The ``empty_truth``
    columns describe the truth, so they carry no prefix.)
    """
    k = len(class_names)
    row: dict[str, float | bool] = {f"{prefix}dice": mean_dice(pred, target, k)}
    if k > 2:
        for c, d in dice_per_class(pred, target, k).items():
            row[f"{prefix}dice_{class_names[c]}"] = d
    empty = {c: empty_truth(target, c) for c in range(1, k)}
    row["empty_truth"] = all(empty.values())
    if k > 2:
        for c, e in empty.items():
            row[f"empty_truth_{class_names[c]}"] = e
    return row
