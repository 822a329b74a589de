"""Hierarchical SegCertify: certify each pixel at the finest level of a label hierarchy that passes.

Flat SegCertify (Fischer, Baader, Vechev, ICML 2021) abstains wherever the top class is
not stable enough. In nested anatomy (tumour inside an organ; BraTS's enhancing tumour
inside the tumour core inside the whole tumour) most of those pixels sit between two
fine classes of one group, and nearly every vote says "organ" or "tumour region". Anani,
Lorenz, Schiele and Fritz ("Adaptive Hierarchical Certification for Segmentation using
Randomized Smoothing", ICML 2024) certify such pixels at a coarser node of a label
hierarchy instead of abstaining, with the same radius and the same family-wise
guarantee. :class:`HierarchicalSegCertify` does this from ONE sampling pass.

Notation: a hierarchy (:mod:`certframe.core.hierarchy`) with levels ``0 .. L-1`` (0 = the K
fine classes, each level merges nodes of the one before); ``node_l(c)`` is the node
holding class c at level l. Image of m pixels (voxels), one tau.

Algorithm (each tau of a request runs it on the same draws):

1. Selection: ``n0`` draws (phase ``"selection"``); ``c_i`` = most frequent class of
   pixel i (ties to the lowest), exactly SegCertify's choice. Pixel i's *chain* is
   ``v_{i,l} = node_l(c_i)``, ``l = 0 .. L-1``: its class and the groups above it.
2. Estimation: ``n`` fresh draws (phase ``"estimation"``); ``k_{i,l}`` = votes that fall
   in ``v_{i,l}`` (the sum of the counts of its classes); p-value
   ``p_{i,l} = P(Binomial(n, tau) >= k_{i,l})`` of ``H_{i,l}: P(f(x + eps)_i in v_{i,l}) <= tau``.
3. Full rejections (Holm over pixels): ``q_i = max_l p_{i,l}``; Holm's step-down over the
   m values ``q_i`` at level alpha. A rejected pixel is certified at level 0 (its class
   ``c_i``). Because the chain is nested, ``k_{i,l}`` grows with l, so ``q_i = p_{i,0}``: this
   step IS flat SegCertify with Holm, and every pixel SegCertify certifies is certified
   here as the same class (the fine-level certificate is exactly SegCertify's).
4. Relaxation: with ``r`` pixels certified in step 3 and ``r < m``, the rest face the
   threshold ``t = alpha / (m - r)`` (Holm's next one). Pixel i is certified at the finest
   level l with ``p_{i,l'} <= t`` for every ``l' >= l`` (its chain, coarse to fine, is a
   fixed sequence: a level is tested only if every coarser one passed); it abstains when
   even its top node fails.

The certificate: ``labels`` = ``c_i`` where certified at level 0, else ABSTAIN (so every
reader of flat certificates sees SegCertify's certificate); ``nodes`` = the certified node
id (a class or a group, -1 = abstain), ``levels`` = its level (-1 = abstain); ``pvalues`` =
the p-value of the test behind each pixel's certificate (the fine one where it abstains);
``radius`` = ``sigma * Phi^-1(tau)`` for every level.

Guarantee (per tau): with probability ``>= 1 - alpha`` over the draws, every certified
pixel i satisfies ``P(f(x + eps)_i in v_i) > tau`` for its certified node ``v_i`` (and so for
every coarser node of its chain). Then ``P(f(x' + eps)_i in v_i) > 1/2`` for every
``||x' - x||_2 < R = sigma * Phi^-1(tau)`` (Cohen et al. 2019, Lemma 4, applied to the
indicator of "the vote falls in v_i"): the smoothed segmenter's vote stays inside the node.
For a class (level 0) this is SegCertify's guarantee; for a group, the pixel keeps its
group (a pixel certified as "organ" may move between organ tissue and tumour, never to
background).

Proof (the correction is over EVERY test the procedure may run: all m * L hypotheses
``H_{i,l}``). Condition on the selection draws, which fix the chains. Call pixel i *null*
when some ``H_{i,l}`` is true, let ``m0`` be their number and ``h_i`` the coarsest true
hypothesis of a null pixel (with nested chains the true ones are the finest levels, but
the argument does not need it). A true hypothesis of pixel i is rejected only if ``h_i``
is, with a p-value at most the threshold used: in step 3 every hypothesis of the pixel
has ``p <= q_i``, and in step 4 a level is rejected only with every coarser one, ``h_i``
included (it is at or above any true level). Let ``E = {p(h_i) > alpha / m0 for every null
pixel i}``. On E: (a) no null pixel is fully rejected in step 3, for the first one in
Holm's order would have rank ``j <= m - m0 + 1`` (only non-null pixels before it) and so
``q_i <= alpha / (m - j + 1) <= alpha / m0``, while ``q_i >= p(h_i) > alpha / m0``; (b) hence
``r <= m - m0`` and ``t = alpha / (m - r) <= alpha / m0 < p(h_i)``: step 4 rejects no ``h_i``
either. So an error implies not-E, and since each ``p(h_i)`` is an exact binomial p-value
of a true null on draws independent of the selection (super-uniform),
``P(not E) <= sum_i P(p(h_i) <= alpha / m0) <= m0 * alpha / m0 = alpha``. This is Holm's
(1979) own argument with each pixel's chain as a fixed-sequence family (a sequentially
rejective graphical procedure in the sense of Bretz, Maurer, Brannath and Posch,
Stat. Med. 2009: a pixel's weight moves down its chain, and to the other pixels only once
its whole chain is rejected).

Relation to the paper. Anani et al.'s AdaptiveCertify picks ONE level per pixel from the
``n0`` selection draws (a threshold function on the gap between the top two mean softmax
scores), then runs one test per pixel at that level with a correction over the pixels;
it is valid because the level is chosen on draws independent of the test. The procedure
here is a different, simpler valid one: no threshold function to tune, every level of
every pixel is testable, the fine level loses nothing against SegCertify (step 3 is
SegCertify), and the relaxation costs no extra alpha beyond Holm's own step-down. What it
does not do that the paper's can: send a pixel to a coarse level when its fine test would
pass (it never needs to).

Testing each level at alpha without the fixed sequence (Holm over the pixels of each
level separately, then the finest level rejected) is NOT valid: its error adds up over
the levels; ``tests/test_hierarchical.py`` shows it failing the statistical check that
this certifier passes.

Options:
    hierarchy: a ``.toml`` / ``.json`` file (:mod:`certframe.core.hierarchy`), a JSON table, a
        dict, or None (default): the data set's own ``default_hierarchy``. Checked when the
        certifier is built (the file, its syntax) and against the data set's classes before
        anything is sampled (:meth:`bind_dataset`).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from certframe.core.certificate import Certificate
from certframe.core.hierarchy import HierarchyError, LabelHierarchy, read_hierarchy, resolve_hierarchy
from certframe.core.statistics import binomial_pvalues, certified_radius, holm_reject
from certframe.interfaces import ABSTAIN, Certifier, CertifyRequest, VoteSource, class_labels

CORRECTION = "holm-fixed-sequence"


def chain_counts(counts: torch.Tensor, c_hat: torch.Tensor, hierarchy: LabelHierarchy) -> torch.Tensor:
    """int64 ``[L, *S]``: per level l, the votes of ``counts [K, *S]`` in the node ``node_l(c_hat)``."""
    K = counts.shape[0]
    flat = counts.reshape(K, -1)
    sel = c_hat.reshape(-1)
    out = []
    table = hierarchy.level_table(counts.device)
    for level in range(hierarchy.num_levels):
        to_node = table[level]
        per_node = torch.zeros((len(hierarchy.nodes), flat.shape[1]), dtype=flat.dtype, device=flat.device)
        per_node.index_add_(0, to_node, flat)
        out.append(per_node.gather(0, to_node[sel].unsqueeze(0)).squeeze(0))
    return torch.stack(out).reshape(hierarchy.num_levels, *c_hat.shape)


def hierarchical_levels(pvalues: np.ndarray, alpha: float) -> tuple[np.ndarray, float | None]:
    """The certified level of each pixel from its chain's p-values (steps 3 and 4 of the module docstring).

    pvalues: float ``[L, m]``, ``pvalues[l, i]`` the p-value of pixel i's node at level l.
    Returns (int64 ``[m]``: the finest certified level, -1 = abstain; the threshold ``t`` of
    step 4, None when step 3 certified every pixel).
    """
    p = np.asarray(pvalues, dtype=np.float64)
    L, m = p.shape
    full = holm_reject(p.max(axis=0), alpha)
    level = np.where(full, 0, -1).astype(np.int64)
    r = int(full.sum())
    if r == m:
        return level, None
    t = alpha / (m - r)
    # passes[l, i]: every level l' >= l of pixel i has p <= t (the fixed sequence, coarse to fine)
    passes = np.logical_and.accumulate((p <= t)[::-1], axis=0)[::-1]
    finest = np.argmax(passes, axis=0)
    relaxed = ~full & passes.any(axis=0)
    level[relaxed] = finest[relaxed]
    return level, t


class HierarchicalSegCertify(Certifier):
    """Certify each pixel at the finest level of a label hierarchy that passes, from one sampling pass.

    Anani, Lorenz, Schiele, Fritz, "Adaptive Hierarchical Certification for Segmentation using
    Randomized Smoothing" (ICML 2024), with a simpler valid correction than the paper's.

    1. Selection (n0 draws): each pixel's class c_i, as SegCertify; its chain is c_i and the
       groups above it, one node per level.
    2. Estimation (n fresh draws): per level, the votes in the pixel's node and the p-value
       ``P(Binomial(n, tau) >= k)`` of H0: P(vote in the node) <= tau.
    3. Holm over the pixels at alpha, each with the largest p-value of its chain (its fine one):
       exactly SegCertify with Holm; rejected pixels are certified as their class.
    4. The rest face Holm's next threshold ``alpha / (m - r)``: each is certified at the finest
       level whose node passes with every coarser node of its chain (a fixed sequence, coarse
       to fine), else it abstains.

    Guarantee (per tau; the family is every pixel x level test): with probability >= 1 - alpha
    every certified pixel's node v has P(vote in v) > tau, so the smoothed segmenter's vote stays
    in v (a class, or a group of classes) for every L2 perturbation of norm < sigma * Phi^-1(tau).
    The proof (Holm's argument with each chain as a fixed-sequence family) is in the module
    docstring of ``certframe.plugins.certifiers.hierarchical``.

    Output: ``labels`` the fine class where certified at level 0, else ABSTAIN (SegCertify's
    certificate); ``nodes`` / ``levels`` int64 ``[H, W]`` (or ``[D, H, W]``) the certified node and
    its level (-1 = abstain); ``hierarchy`` names the nodes; ``radius`` sigma * Phi^-1(tau).

    hierarchy: a ``.toml`` / ``.json`` file, a JSON table or dict (:mod:`certframe.core.hierarchy`),
    or None (default) for the data set's ``default_hierarchy``; checked against the data set's
    classes before sampling.
    """

    name = "hierarchical"
    correction = CORRECTION

    def __init__(self, hierarchy: Any = None):
        self.tree: LabelHierarchy | None = None
        self._table = None if hierarchy is None else read_hierarchy(hierarchy)
        if self._table is not None and self._table.get("classes") is not None:
            self.tree = resolve_hierarchy(self._table)
        self.hierarchy = hierarchy if isinstance(hierarchy, (str, type(None))) else self._table

    def bind(self, class_names, default: Any = None, where: str = "the data set") -> LabelHierarchy:
        """Resolve the hierarchy against the data set's ``class_names`` (``default``: its default hierarchy).

        Called by the run before sampling; raises :class:`~certframe.core.hierarchy.HierarchyError`.
        """
        source = self._table if self._table is not None else default
        if source is None and len(class_names) != 2:   # (a binary task gets its own error from resolve)
            raise HierarchyError(f"the hierarchical certifier needs a label hierarchy and {where} declares none: "
                                 f"give one with --certifier-option hierarchy=FILE (.toml or .json; see "
                                 f"examples/hierarchies/)")
        self.tree = resolve_hierarchy(source if source is not None else {"root": list(class_names)},
                                      list(class_names))
        if self._table is None:
            self.hierarchy = self.tree.as_dict()   # the manifest records the hierarchy used
        return self.tree

    def bind_dataset(self, dataset) -> LabelHierarchy:
        """:meth:`bind` to a data set's ``class_names`` and ``default_hierarchy``."""
        return self.bind(dataset.class_names, getattr(dataset, "default_hierarchy", None),
                         f"the data set {type(dataset).__name__}")

    def certify(self, votes: VoteSource, request: CertifyRequest) -> list[Certificate]:
        tree = self.tree
        if tree is None:
            raise HierarchyError("the hierarchical certifier does not know the data set's classes yet: list them "
                                 "under 'classes' in the hierarchy, or call bind(class_names) / "
                                 "bind_dataset(dataset) first (certframe certify does)")
        if votes.num_classes != tree.num_classes:
            raise HierarchyError(f"the hierarchy has {tree.num_classes} classes ({', '.join(tree.class_names)}), "
                                 f"the votes {votes.num_classes}")
        selection = votes.counts("selection", request.n0)
        c_hat = class_labels(selection.unsqueeze(0))[0]
        estimation = votes.counts("estimation", request.n)
        k = chain_counts(estimation, c_hat, tree)                          # [L, *S]
        return certificates_from_chain(c_hat, k.detach().cpu().numpy(), request, tree, self.name,
                                       decide=hierarchical_levels)


def certificates_from_chain(c_hat: torch.Tensor, k: np.ndarray, request: CertifyRequest, tree: LabelHierarchy,
                            method: str, decide=hierarchical_levels) -> list[Certificate]:
    """One certificate per tau from the selected classes ``c_hat [*S]`` and the chain counts ``k [L, *S]``.

    decide: ``(pvalues [L, m], alpha) -> (levels [m], threshold)`` (:func:`hierarchical_levels`;
    tests pass broken ones).
    """
    device = c_hat.device
    L = tree.num_levels
    shape = tuple(c_hat.shape)
    level_map = tree.level_table(device)                                       # [L, K]
    certs = []
    for tau in request.taus:
        p = binomial_pvalues(k, request.n, tau).reshape(L, -1)                  # [L, m]
        level, threshold = decide(p, request.alpha)
        at = np.clip(level, 0, None)
        p_used = p[at, np.arange(p.shape[1])]
        levels = torch.from_numpy(level).to(device).reshape(shape)
        certified = levels >= 0
        nodes = torch.where(certified, level_map[levels.clamp(min=0), c_hat], torch.full_like(c_hat, -1))
        labels = torch.where(levels == 0, c_hat, torch.full_like(c_hat, ABSTAIN))
        counts = np.bincount(level[level >= 0], minlength=L)
        certs.append(Certificate(
            labels=labels, radius=certified_radius(request.sigma, tau), tau=tau, sigma=request.sigma,
            alpha=request.alpha, method=method, num_samples=request.n0 + request.n,
            pvalues=torch.from_numpy(p_used.reshape(shape).astype(np.float64)),
            info={"correction": CORRECTION, "levels": L, "relaxed_threshold": threshold,
                  "certified_per_level": counts.tolist()},
            nodes=nodes, levels=levels, hierarchy=tree))
    return certs
