"""Falsification test of one certificate: attack its own claim, then test x' soundly.

A certificate on x (SegCertify, Fischer et al. ICML 2021; Cohen et al. ICML 2019)
claims: with probability >= 1 - alpha, every non-abstained pixel i keeps class c_i
under the smoothed segmenter g for every ``||x' - x||_2 < R_i`` (R_i = the
certificate's ``pixel_radius`` where it has one, else its ``radius``). If the claim
holds then ``p_i(c_i | x') > 1/2`` there. :func:`falsify` checks that claim:

1. covered pixels: non-abstained, with ``R_i > 0``;
2. targets: the ``max_pixels`` covered pixels with the weakest margin
   (:func:`~certframe.attacks.targets.weakest_pixels`);
3. attack: per target its own x'_j inside ``||x'_j - x||_2 < k R_j`` (k =
   ``radius_multiple``) minimising the smoothed soft probability of c_j at the target
   (:func:`~certframe.attacks.pixel_attack.attack_pixels`: EOT / SmoothAdv objective,
   APGD schedule, best iterate, restarts);
4. test: ``n_test`` fresh draws at each x'_j (a phase of its own, independent of the
   certificate's and the attack's draws), exact one-sided binomial test of
   ``p(c_j | x'_j) >= 1/2`` with Holm over the tested pixels at ``level``
   (:mod:`~certframe.attacks.flip_test`). Default ``n_test``: the smallest n with power
   0.9 against p = 0.44 at ``level / m`` (:func:`~certframe.attacks.flip_test.default_n_test`);
5. optionally (``empirical=True``, default) a minimal-norm search per target
   (:func:`~certframe.attacks.min_norm.minimal_flip_radius`) up to
   ``empirical_upper * R_j``: the empirical radius beside the certified one.

A rejected pixel at k <= 1 is a **violation**: g provably (at family-wise error
``level``) does not keep c_j inside the claimed radius. With a correct certificate the
chance of any violation for an image is at most ``alpha + level`` (the certificate's
own error, plus the test's). At k > 1 the attack is beyond the claim: rejections are
reported as ``flips_beyond_claim`` and ``violations`` is None (nothing was claimed
there). With no covered pixel the result is "not tested" (``not_tested=True``,
``violations=None``), never 0.

A hierarchical certificate (the ``hierarchical`` certifier; :mod:`certframe.core.hierarchy`) also
claims pixels as a group of classes ("organ" for organ tissue or tumour): such a pixel
keeps its claim while its vote stays in the group, ``p_i(v_i | x') > 1/2``. Its targets are
attacked and tested the same way with the group in place of the class (the attack minimises
the smoothed probability of the group, the test counts the votes in the group), so moving
between two classes of the group is no violation; leaving it is.

Volumes ``[C, D, H, W]`` take the same path voxel by voxel: the radius is over the whole
volume (all C*D*H*W values), targets are (slice, row, col), and the per-pixel rows carry a
``slice`` column (the index along D) beside ``row`` and ``col``.
"""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from certframe.interfaces import ABSTAIN, NoiseKey

from .flip_test import DEFAULT_LEVEL, default_n_test, flip_test
from .min_norm import minimal_flip_radius
from .pixel_attack import attack_pixels
from .targets import weakest_pixels

FALSIFICATION_PHASE = "falsification"
DEFAULT_MAX_PIXELS = 8


def fresh_votes(smoothed, x: torch.Tensor, *, seed: int, image_id: str, batch_size: int = 64):
    """The ONE place the falsification test builds a vote source for an attacked image x' ``[C, *S]``.

    Its draws are asked for under phase names ``"falsification-<j>"``, which no
    certifier uses, so they are independent of the certificate's draws. When the
    sampler takes a required noise key, this is the one line to change.
    """
    return smoothed.voter(x, NoiseKey(seed, image_id), batch_size=batch_size)


def attack_seed(seed: int, image_id: str, tag: str) -> int:
    """A 63-bit seed for the attack's own generator, from (seed, image id, tag)."""
    digest = hashlib.blake2b(f"{seed}\x1f{image_id}\x1f{tag}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


@dataclass
class FalsificationResult:
    """The falsification test of one (image, certificate, radius multiple). See the module docstring.

    covered: pixels the claim covers; tested: pixels attacked and tested; violations:
    rejected pixels at ``radius_multiple <= 1`` (None when not tested or beyond the claim);
    flips_beyond_claim: rejected pixels at ``radius_multiple > 1`` (None otherwise);
    min_upper_bound: the smallest Clopper-Pearson upper bound on p(c | x') seen (None when
    nothing was tested); perturbation_l2_max: largest ``||x' - x||_2`` used;
    empirical_radius_min / certified_radius_min: over the tested pixels (nan if none found);
    test_level: the family-wise level of the test; falsify_seconds: wall time of the call.
    pixels: one dict per tested pixel (see :meth:`pixel_rows`).
    """

    image_id: str
    method: str
    sigma: float
    tau: float
    radius: float
    radius_multiple: float
    covered: int
    tested: int
    violations: int | None
    flips_beyond_claim: int | None
    min_upper_bound: float | None
    test_level: float
    n_test: int | None
    perturbation_l2_max: float | None
    empirical_radius_min: float | None
    certified_radius_min: float | None
    falsify_seconds: float
    pixels: list = field(default_factory=list)

    @property
    def not_tested(self) -> bool:
        """True when the claim covered no pixel: nothing was checked (never read as 0 violations)."""
        return self.tested == 0

    def as_row(self) -> dict:
        row = asdict(self)
        row.pop("pixels")
        row["not_tested"] = self.not_tested
        return row

    def pixel_rows(self) -> list[dict]:
        """Per tested pixel: image_id, method, tau, radius_multiple, (slice, for volumes) row, col, certified_class,
        certified_radius, budget, perturbation_l2, attack_estimate, votes, n_test, upper_bound,
        rejected, empirical_radius, empirical_upper."""
        base = {"image_id": self.image_id, "method": self.method, "tau": self.tau,
                "radius_multiple": self.radius_multiple}
        return [{**base, **p} for p in self.pixels]


def covered_pixels(certificate) -> tuple[torch.Tensor, torch.Tensor]:
    """``(covered bool [*S], radius float64 [*S])``: the pixels the claim covers and each one's radius."""
    labels = certificate.labels
    if certificate.pixel_radius is not None:
        radius = torch.as_tensor(certificate.pixel_radius, dtype=torch.float64).to(labels.device)
        if radius.shape != labels.shape:
            raise ValueError(f"the certificate's pixel_radius has shape {tuple(radius.shape)}, its labels "
                             f"{tuple(labels.shape)}")
    else:
        radius = torch.full(labels.shape, float(certificate.radius), dtype=torch.float64, device=labels.device)
    radius = torch.nan_to_num(radius, nan=0.0)
    certified = labels != ABSTAIN if getattr(certificate, "nodes", None) is None else certificate.nodes >= 0
    return certified & (radius > 0), radius


def claimed_votes(counts: torch.Tensor, certificate) -> torch.Tensor:
    """int64 ``[*S]``: per pixel, the votes of ``counts [K, *S]`` that keep its certificate's claim (its class,
    or any class of its certified group); 0 where it abstains."""
    claims = certificate.claims(counts.shape[0]).to(counts.device)
    return (counts * claims).sum(dim=0)


def leaves_claim(labels: torch.Tensor, certificate, num_classes: int) -> torch.Tensor:
    """bool ``[*S]``: where the class map ``labels [*S]`` (in ``0..num_classes-1``, e.g. g's majority vote at
    x') lies outside the certified pixel's claim; False where the certificate abstains."""
    claims = certificate.claims(num_classes).to(labels.device)
    inside = claims.gather(0, labels.unsqueeze(0)).squeeze(0)
    return ~certificate.abstained.to(labels.device) & ~inside


FALSIFY_OPTIONS = {
    "max_pixels": "pixels attacked per certificate",
    "steps": "attack iterations per restart",
    "restarts": "attack runs per pixel",
    "num_draws": "noise draws per attack step",
    "n_test": "fresh draws per tested pixel; leave it out for the default",
    "level": "the family-wise level of the test at the attacked images",
    "empirical": None,
    "empirical_upper": "the minimal-norm search goes up to this multiple of the certified radius",
    "empirical_iterations": "bisection steps of the minimal-norm search",
}
"""The options of :func:`falsify` a user sets (``certframe attack --falsify-option KEY=VALUE``), with what each
means; the others (seed, image id, batch size, radius multiple) are the run's."""


def check_falsify_options(options: dict) -> dict:
    """Check the user's :func:`falsify` options (:data:`FALSIFY_OPTIONS`) before any image is certified.

    Integers >= 1: max_pixels, steps, restarts, num_draws, empirical_iterations, n_test (or None
    for the default); level in (0, 1); empirical true or false; empirical_upper a finite number
    > 0. An unknown key is refused with the list of valid ones. Returns the options unchanged.
    """
    from certframe.validation import check_bool, check_int, check_keys, check_number

    check_keys(options, FALSIFY_OPTIONS, "falsify option")
    for key, value in options.items():
        name, meaning = f"falsify option {key}", FALSIFY_OPTIONS[key]
        if key == "level":
            check_number(name, value, above=0, below=1, meaning=meaning)
        elif key == "empirical":
            check_bool(name, value)
        elif key == "empirical_upper":
            check_number(name, value, above=0, meaning=meaning)
        elif not (key == "n_test" and value is None):
            check_int(name, value, 1, meaning=meaning)
    return dict(options)


def falsify(smoothed, x: torch.Tensor, certificate, *, estimation_counts: torch.Tensor | None = None,
            radius_multiple: float = 1.0, max_pixels: int = DEFAULT_MAX_PIXELS, steps: int = 20,
            restarts: int = 2, num_draws: int = 8, n_test: int | None = None, level: float = DEFAULT_LEVEL,
            empirical: bool = True, empirical_upper: float = 4.0, empirical_iterations: int = 5,
            seed: int = 0, image_id: str = "0", batch_size: int = 64) -> FalsificationResult:
    """Attack ``certificate``'s claim on ``x`` and test the attacked images; see the module docstring.

    smoothed: :class:`~certframe.core.smoothing.SmoothedSegmenter` (its ``base_logits`` is
        differentiated; its ``voter`` gives the fresh draws). x: ``[C, H, W]`` (or a volume
        ``[C, D, H, W]``) in [0, 1] on the model's device. certificate:
        :class:`~certframe.core.certificate.Certificate` of x at ``smoothed.sigma``.
        estimation_counts: optional int ``[K, *S]`` votes of the
        certificate's estimation phase (to pick the weakest pixels).
    radius_multiple: k > 0, the attack budget is ``k R_i`` (k > 1 is beyond the claim).
    max_pixels: targets per certificate (default 8). steps, restarts, num_draws: of the
        attack. n_test: fresh draws per tested pixel (default: :func:`default_n_test` of
        the number tested at ``level``). level: family-wise level of the test (default 0.001).
    empirical: run the minimal-norm search up to ``empirical_upper * R_i`` with
        ``empirical_iterations`` bisection steps (default on, 4x, 5).
    seed, image_id: fix every draw (attack and test). batch_size: draws per forward pass of the test.
    """
    t0 = time.perf_counter()
    if torch.is_inference_mode_enabled():
        raise RuntimeError("falsify differentiates through the model: call it outside torch.inference_mode()")
    k = float(radius_multiple)
    if not (math.isfinite(k) and k > 0):
        raise ValueError(f"radius_multiple must be a finite number > 0, got {radius_multiple!r}")
    if abs(float(certificate.sigma) - float(smoothed.sigma)) > 1e-12:
        raise ValueError(f"the certificate was made at sigma {certificate.sigma}, the smoothed segmenter "
                         f"has sigma {smoothed.sigma}: they are different smoothed segmenters")
    if x.dim() not in (3, 4) or tuple(x.shape[1:]) != tuple(certificate.labels.shape):
        axes = "H, W" if certificate.labels.dim() == 2 else "D, H, W"
        raise ValueError(f"x must be [C, {axes}] with {axes} = {tuple(certificate.labels.shape)} (the "
                         f"certificate's labels), got shape {tuple(x.shape)}")
    covered, radius = covered_pixels(certificate)
    n_covered = int(covered.sum())
    info = dict(image_id=str(image_id), method=str(certificate.method), sigma=float(certificate.sigma),
                tau=float(certificate.tau), radius=float(certificate.radius), radius_multiple=k,
                covered=n_covered, test_level=float(level))
    if n_covered == 0:
        return FalsificationResult(**info, tested=0, violations=None, flips_beyond_claim=None,
                                   min_upper_bound=None, n_test=None, perturbation_l2_max=None,
                                   empirical_radius_min=None, certified_radius_min=None,
                                   falsify_seconds=time.perf_counter() - t0)
    hierarchical = getattr(certificate, "nodes", None) is not None
    claims = certificate.claims(certificate.hierarchy.num_classes) if hierarchical else None
    targets = weakest_pixels(certificate.nodes if hierarchical else certificate.labels, covered, max_pixels,
                             estimation_counts=estimation_counts, pvalues=certificate.pvalues,
                             pixel_radius=certificate.pixel_radius, claims=claims)
    m = len(targets)
    n = default_n_test(m, level) if n_test is None else int(n_test)
    where = tuple(torch.as_tensor(targets[:, a]) for a in range(targets.shape[1]))   # (slice,) row, col
    # each target's claim: its class, or (hierarchical) the bool [P, K] set of classes of its certified node
    classes = (claims[(slice(None), *where)].t() if hierarchical else certificate.labels[where]).to(x.device)
    claimed = radius[where].cpu().numpy()
    budget = torch.as_tensor(k * claimed, dtype=x.dtype, device=x.device)
    pix = torch.as_tensor(targets, device=x.device)
    gen = torch.Generator(device=x.device)
    gen.manual_seed(attack_seed(seed, str(image_id), f"attack-{k!r}"))
    with torch.enable_grad():
        res = attack_pixels(smoothed.base_logits, smoothed.sigma, x, pix, classes, budget, steps=steps,
                            restarts=restarts, num_draws=num_draws, generator=gen)
    l2 = res.l2.cpu().numpy()
    if not bool((l2 < k * claimed).all()):  # the open ball, strictly
        raise AssertionError(f"the attack left the open ball: {l2.tolist()} vs budgets {(k * claimed).tolist()}")
    votes = np.zeros(m, dtype=np.int64)
    for j in range(m):
        source = fresh_votes(smoothed, res.adv[j], seed=seed, image_id=str(image_id), batch_size=batch_size)
        counts = source.counts(f"{FALSIFICATION_PHASE}-{k!r}-{j}", n)
        at = (slice(None), *(int(v) for v in targets[j]))
        votes[j] = int(counts[at][classes[j].to(counts.device)].sum()) if hierarchical else \
            int(counts[(int(classes[j]), *at[1:])])
    rejected, upper = flip_test(votes, n, level)
    emp = np.full(m, np.nan)
    emp_upper = np.full(m, np.nan)
    if empirical:
        egen = torch.Generator(device=x.device)
        egen.manual_seed(attack_seed(seed, str(image_id), "min-norm"))
        with torch.enable_grad():
            er = minimal_flip_radius(smoothed.base_logits, smoothed.sigma, x, pix, classes,
                                     torch.as_tensor(empirical_upper * claimed, dtype=x.dtype, device=x.device),
                                     iterations=empirical_iterations, num_draws=num_draws, generator=egen)
        emp, emp_upper = er.radius, er.upper
    found = int(rejected.sum())
    names = ("slice", "row", "col")[-targets.shape[1]:]
    node = {}
    if hierarchical:   # the certified node (a class or a group) and its level, beside the fine class or -1
        tree = certificate.hierarchy
        node = {j: {"certified_node": tree.nodes[int(certificate.nodes[where][j])],
                    "certified_level": int(certificate.levels[where][j])} for j in range(m)}
    pixels = [{**{a: int(v) for a, v in zip(names, targets[j])},
               "certified_class": int(certificate.labels[where][j]) if hierarchical else int(classes[j]),
               **node.get(j, {}),
               "certified_radius": float(claimed[j]), "budget": float(k * claimed[j]),
               "perturbation_l2": float(l2[j]), "attack_estimate": float(res.estimate[j]),
               "votes": int(votes[j]), "n_test": n, "upper_bound": float(upper[j]), "rejected": bool(rejected[j]),
               "empirical_radius": float(emp[j]), "empirical_upper": float(emp_upper[j])} for j in range(m)]
    finite = emp[np.isfinite(emp)]
    return FalsificationResult(
        **info, tested=m, violations=found if k <= 1 else None, flips_beyond_claim=found if k > 1 else None,
        min_upper_bound=float(upper.min()), n_test=n, perturbation_l2_max=float(l2.max()),
        empirical_radius_min=float(finite.min()) if finite.size else (float("nan") if empirical else None),
        certified_radius_min=float(claimed.min()), falsify_seconds=time.perf_counter() - t0, pixels=pixels)


def falsify_all(smoothed, x: torch.Tensor, certificates, *, radius_multiples=(1.0,),
                estimation_counts: torch.Tensor | None = None, empirical: bool = True, **options
                ) -> list[FalsificationResult]:
    """:func:`falsify` for every certificate of one image (one per tau) at every radius multiple.

    Results in order: certificates, then multiples within each. The minimal-norm search
    (``empirical``) runs only at multiple 1 (it does not depend on the multiple).
    ``options`` go to :func:`falsify` (max_pixels, steps, restarts, num_draws, n_test,
    level, seed, image_id, batch_size, ...).
    """
    multiples = [float(k) for k in radius_multiples]
    if not multiples:
        raise ValueError("radius_multiples is empty: give at least one multiple of the certified radius (e.g. 1)")
    return [falsify(smoothed, x, cert, estimation_counts=estimation_counts, radius_multiple=k,
                    empirical=empirical and k == 1.0, **options)
            for cert in certificates for k in multiples]
