"""Metrics of hierarchical certificates, as pure functions on label maps.

A hierarchical certificate (:class:`~certframe.core.certificate.Certificate` with ``nodes``,
``levels`` and ``hierarchy``) certifies each pixel as a fine class (level 0), as a group
of classes (a coarser level), or abstains. Its quality is read per level:

* **Certified Dice at level l** (:func:`level_prediction`): the truth is mapped to its
  level-l nodes, and the certificate to the level-l node of every pixel certified at level
  l or finer (a pixel certified as "tumour" counts as "organ" at the organ's level); pixels
  certified only at a coarser level, or not at all, are errors (as ABSTAIN in flat
  certified Dice, :mod:`certframe.core.metrics`). Level 0 is the fine certified Dice of the
  ``labels`` map. Per level, ``certified_dice_level<l>`` is the mean over the level's
  foreground nodes (those not holding class 0, background), and each group g gets
  ``certified_dice_<g>`` at the coarsest level where it is a node (where every pixel
  certified as g or finer counts). The empty-mask rule is :data:`certframe.core.metrics.EMPTY_DICE`.
* **Certified information gain** (CIG; Anani, Lorenz, Schiele, Fritz, ICML 2024), per
  image: the mean over all pixels of ``[v_i holds y_i] * (log K - log |v_i|) / log K``,
  where ``v_i`` is the certified node of pixel i, ``|v_i|`` the number of fine classes it
  holds, K the number of fine classes, and y_i the true class (0 where the pixel abstains
  or its node does not hold y_i). A correct fine certificate gains 1, a correct group of
  two classes out of three ``1 - log 2 / log 3 = 0.369``. For a flat certificate CIG is the
  certified accuracy. (The paper sums over the pixels of a whole data set before dividing;
  result rows hold it per image, and summaries average the images.)
* **Abstain rate**: pixels certified at no level; ``level<l>_rate``: pixels certified at
  level l (with the abstain rate they sum to 1).
"""
from __future__ import annotations

import math

import torch

from certframe.core.hierarchy import LabelHierarchy
from certframe.core.metrics import EMPTY_DICE, dice


def level_prediction(nodes: torch.Tensor, levels: torch.Tensor, hierarchy: LabelHierarchy,
                     level: int) -> torch.Tensor:
    """Node ids ``[*S]`` at ``level`` of the pixels certified at ``level`` or finer; -1 elsewhere."""
    first_leaf = torch.tensor([leaves[0] for leaves in hierarchy.leaves], dtype=torch.int64, device=nodes.device)
    table = hierarchy.level_table(nodes.device)[level]
    up = table[first_leaf[nodes.clamp(min=0)]]
    return torch.where((levels >= 0) & (levels <= level), up, torch.full_like(nodes, -1))


def node_gains(hierarchy: LabelHierarchy) -> torch.Tensor:
    """float64 ``[N]``: the information gain ``(log K - log |v|) / log K`` of certifying node v."""
    K = hierarchy.num_classes
    return torch.tensor([(math.log(K) - math.log(len(leaves))) / math.log(K) for leaves in hierarchy.leaves],
                        dtype=torch.float64)


def certified_information_gain(nodes: torch.Tensor, levels: torch.Tensor, target: torch.Tensor,
                               hierarchy: LabelHierarchy) -> float:
    """CIG of one certificate (see the module docstring): mean over pixels, in [0, 1]."""
    if nodes.shape != target.shape or levels.shape != target.shape:
        raise ValueError(f"nodes {tuple(nodes.shape)}, levels {tuple(levels.shape)} and target "
                         f"{tuple(target.shape)} must have one shape")
    target = target.to(nodes.device)
    table = hierarchy.level_table(nodes.device)
    truth_node = table[levels.clamp(min=0), target]                    # the truth's node at the pixel's level
    correct = (nodes >= 0) & (truth_node == nodes)
    gain = node_gains(hierarchy).to(nodes.device)[nodes.clamp(min=0)]
    return float(torch.where(correct, gain, torch.zeros_like(gain)).mean()) if nodes.numel() else EMPTY_DICE


def level_dice(nodes: torch.Tensor, levels: torch.Tensor, target: torch.Tensor, hierarchy: LabelHierarchy,
               level: int) -> dict[int, float]:
    """Certified Dice of every node of ``level`` (node id -> Dice), background's node included."""
    pred = level_prediction(nodes, levels, hierarchy, level).cpu()
    truth = hierarchy.to_level(target.cpu(), level)
    return {v: dice(pred, truth, v) for v in hierarchy.level_nodes(level)}


def hierarchy_metric_row(cert, target: torch.Tensor) -> dict[str, float]:
    """The hierarchical columns of a results row for ``cert`` against the truth ``target [*S]``.

    Empty for a flat certificate. Otherwise ``abstain_rate`` (no certificate at any level),
    ``level<l>_rate`` per level, ``cig``, and for every level l >= 1 ``certified_dice_level<l>``
    and ``certified_dice_<group>`` (module docstring). The fine-level columns
    (``certified_dice``, per class) come from :func:`certframe.core.metrics.metric_row` on
    ``cert.labels``, as for any certificate.
    """
    if getattr(cert, "nodes", None) is None or getattr(cert, "hierarchy", None) is None:
        return {}
    tree: LabelHierarchy = cert.hierarchy
    nodes, levels = cert.nodes.cpu(), cert.levels.cpu()
    target = target.cpu()
    row: dict[str, float] = {"abstain_rate": float((nodes < 0).double().mean())}
    for level in range(tree.num_levels):
        row[f"level{level}_rate"] = float((levels == level).double().mean())
    row["cig"] = certified_information_gain(nodes, levels, target, tree)
    per_level = {level: level_dice(nodes, levels, target, tree, level) for level in range(1, tree.num_levels)}
    for level, per in per_level.items():
        fg = [v for v in per if 0 not in tree.leaves[v]]
        row[f"certified_dice_level{level}"] = sum(per[v] for v in fg) / len(fg) if fg else EMPTY_DICE
    for v in range(tree.num_classes, len(tree.nodes)):
        top = max(tree.node_levels(v))
        row[f"certified_dice_{tree.nodes[v]}"] = per_level[top][v]
    return row


__all__ = ["certified_information_gain", "hierarchy_metric_row", "level_dice", "level_prediction", "node_gains"]
