"""Minimal-norm search: per attacked pixel, the smallest L2 perturbation found that flips it.

The certified radius R_i is a lower bound (with probability >= 1 - alpha) on the
distance from x to the nearest x' where the smoothed segmenter g changes pixel i.
An attack gives an upper bound: the smallest ``||x' - x||_2`` it finds with g's
class at i no longer c_i. The two together bracket the true robustness of pixel i;
an empirical radius below the certified one is a (noisy) sign of a false claim, to
be confirmed by the sound test of :mod:`certframe.attacks.flip_test`.

Search (per pixel, all pixels batched): attack at the upper budget U with
:func:`~certframe.attacks.pixel_attack.attack_pixels`; a pixel is *flipped* at x'
when the vote estimate ``hard_probability`` of c_i over ``flip_draws`` fresh draws is
below 1/2. Pixels not flipped at U get no empirical radius (``nan``: none found
within U). For the others, bisection on the budget: ``lo = 0``, ``hi`` = norm of the
flipping x'; attack at ``(lo + hi) / 2`` (warm-started from the last flipping x',
scaled into the smaller ball); flipped: ``hi`` = the norm found, else ``lo`` = the
budget. The empirical radius is the final ``hi``: the norm of an x' that flips the
vote estimate, so within the bisection's resolution ``U / 2^iterations`` of the
smallest norm this attack can find. It is an estimate (the vote estimate is noisy
near 1/2), never a certificate and never counted as a violation.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .pixel_attack import as_targets, attack_pixels, hard_probability


@dataclass
class EmpiricalRadii:
    """radius: float64 ``[P]``, smallest flipping norm found (nan: none within ``upper``);
    upper: ``[P]`` the largest budget tried; estimate: ``[P]`` vote estimate at the returned x'."""

    radius: np.ndarray
    upper: np.ndarray
    estimate: np.ndarray


def minimal_flip_radius(model, sigma: float, x: torch.Tensor, pixels, classes, upper, *, iterations: int = 5,
                        steps: int = 10, restarts: int = 1, num_draws: int = 8, flip_draws: int = 256,
                        seed: int = 0, generator: torch.Generator | None = None) -> EmpiricalRadii:
    """Bisection over the L2 budget with the pixel attack; see the module docstring.

    model, sigma, x, pixels ``[P, 2]`` (``[P, 3]`` for a volume), classes ``[P]`` (or bool ``[P, K]``): as
    :func:`~certframe.attacks.pixel_attack.attack_pixels`. upper: float ``[P]`` (or a
    scalar) > 0, the largest budget per pixel. iterations: bisection steps (default 5);
    steps / restarts / num_draws: of each attack; flip_draws: draws of the flip check.
    """
    if generator is None:
        generator = torch.Generator(device=x.device)
        generator.manual_seed(int(seed))
    pixels = torch.as_tensor(pixels, dtype=torch.long, device=x.device).reshape(-1, x.dim() - 1)
    classes = as_targets(classes, x.device)
    P = pixels.shape[0]
    upper = torch.as_tensor(upper, dtype=x.dtype, device=x.device).reshape(-1).expand(P).clone()
    kw = dict(steps=steps, restarts=restarts, num_draws=num_draws, generator=generator)
    res = attack_pixels(model, sigma, x, pixels, classes, upper, **kw)
    est = hard_probability(model, res.adv, pixels, classes, sigma, flip_draws, generator)
    found = (est < 0.5).cpu().numpy()
    radius = np.where(found, res.l2.cpu().numpy(), np.nan)
    estimate = est.cpu().numpy().copy()
    idx = np.nonzero(found)[0]
    if idx.size:
        sel = torch.as_tensor(idx, device=x.device)
        lo = np.zeros(idx.size)
        hi = radius[idx].copy()
        best = res.adv[sel].clone()
        for _ in range(int(iterations)):
            mid = (lo + hi) / 2
            budget = torch.as_tensor(mid, dtype=x.dtype, device=x.device).clamp_min(1e-12)
            r = attack_pixels(model, sigma, x, pixels[sel], classes[sel], budget, start=best, **kw)
            e = hard_probability(model, r.adv, pixels[sel], classes[sel], sigma, flip_draws, generator)
            flipped = (e < 0.5).cpu().numpy()
            l2 = r.l2.cpu().numpy()
            hi = np.where(flipped, np.minimum(l2, hi), hi)
            lo = np.where(flipped, lo, mid)
            f = torch.as_tensor(flipped, device=x.device)
            best[f] = r.adv[f]
            estimate[idx[flipped]] = e.cpu().numpy()[flipped]
        radius[idx] = hi
    return EmpiricalRadii(radius=radius, upper=upper.double().cpu().numpy(), estimate=estimate)
