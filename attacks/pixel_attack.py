"""A pixel-focused attack on the SMOOTHED segmenter: SmoothAdv's objective with APGD's schedule.

Target: one pixel i (row, col) certified as class c with an L2 budget R (for a volume
``[C, D, H, W]``: one voxel (slice, row, col), the ball over all C*D*H*W values). The
attack minimises the smoothed soft probability of c at i,

    L(x') = E_eps[ softmax(f(D(x' + eps)))_{c, i} ],   eps ~ N(0, sigma^2 I),

over ``||x' - x||_2 < R`` (all C*H*W values, [0, 1] pixel space) and ``x'`` in
``[0, 1]``. The expectation is estimated with ``num_draws`` fresh draws per step
(Expectation over Transformation, Athalye et al. ICML 2018; the soft smoothed
classifier as in SmoothAdv, Salman et al. NeurIPS 2019); gradients pass through the
noise, the denoiser and the segmenter (``model`` = ``SmoothedSegmenter.base_logits``).

The optimiser is the L2 version of APGD (Croce & Hein, ICML 2020, Algorithm 1):
step size ``eta = 2 R`` at first; a heavy-ball step
``x_{k+1} = P(x_k + a (z_{k+1} - x_k) + (1 - a)(x_k - x_{k-1}))``, ``a = 0.75``,
``z_{k+1} = P(x_k - eta grad / ||grad||_2)``; at the checkpoints
``w_j = ceil(p_j * steps)``, ``p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``,
the step size is halved and the iterate reset to the best point when fewer than
``rho = 0.75`` of the steps since the last checkpoint lowered the loss, or when
neither the step size nor the best loss changed since it. The best iterate (by the
EOT estimate at that iterate) is returned; restart 0 starts at x, restarts >= 1 at
a random point of the ball, and the best over restarts wins.

P is the projection onto the ball of radius ``R (1 - 1e-6)`` (strictly inside the
open ball the certificate covers, as the suite's default budgets), followed by
clipping to ``[0, 1]`` (which only moves coordinates toward x, so stays in the ball).

Batching: the P targets are attacked at once, each with its own ``x'`` in the batch
dimension (``[P, C, H, W]``, or ``[P, C, D, H, W]``) and its own budget. Everything is seeded through one
``torch.Generator`` (draws and random starts): a run is reproducible.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

RADIUS_MARGIN = 1e-6
MOMENTUM = 0.75
RHO = 0.75


@dataclass
class PixelAttackResult:
    """adv: ``[P, C, *S]`` in [0, 1]; estimate: ``[P]`` EOT estimate of the soft probability of
    the target class at the best iterate; l2: ``[P]`` ``||x'_j - x||_2``; budget: ``[P]`` the radii R_j."""

    adv: torch.Tensor
    estimate: torch.Tensor
    l2: torch.Tensor
    budget: torch.Tensor


def apgd_checkpoints(steps: int) -> list[int]:
    """The iterations ``ceil(p_j * steps)`` at which APGD checks its progress (Croce & Hein 2020)."""
    p = [0.0, 0.22]
    while True:
        nxt = p[-1] + max(p[-1] - p[-2] - 0.03, 0.06)
        if nxt > 1:
            break
        p.append(nxt)
    return sorted({c for c in (math.ceil(round(q * steps, 9)) for q in p[1:]) if c >= 1})


def project_l2_box(x: torch.Tensor, z: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
    """``z [P, C, *S]`` onto ``||z - x||_2 <= budget_j (1 - 1e-6)`` then into ``[0, 1]``."""
    radius = budget * (1 - RADIUS_MARGIN)
    delta = z - x
    norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    delta = delta * _per_target(torch.clamp(radius / norm, max=1.0), delta)
    out = (x + delta).clamp(0, 1)
    # float32 rounding of x + delta over many values can leave the ball by ~1e-5 (relative): measure the
    # perturbation actually made in float64 and pull it back towards x (a convex combination stays in
    # [0, 1]) until it lies strictly inside
    limit = radius.double()
    for _ in range(8):
        actual = (out.double() - x.double()).flatten(1).norm(dim=1)
        over = actual >= limit
        if not bool(over.any()):
            break
        shrink = torch.where(over, limit / actual * (1 - 16 * RADIUS_MARGIN), torch.ones_like(actual))
        out = x + (out - x) * shrink.to(out.dtype).view(-1, *([1] * (out.dim() - 1)))
    return out


def as_targets(classes, device) -> torch.Tensor:
    """The targets' claims as given to the attack: int64 ``[P]`` (one class each) or bool ``[P, K]`` (a set
    of classes each: a pixel certified as a group of a label hierarchy keeps its claim while its vote stays
    in the group)."""
    classes = torch.as_tensor(classes, device=device)
    if classes.dtype == torch.bool:
        if classes.dim() != 2:
            raise ValueError(f"a set of classes per target is bool [P, K], got shape {tuple(classes.shape)}")
        return classes
    return classes.long().reshape(-1)


def _claim_probability(probs: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """``probs [m, P, K]`` -> ``[m, P]``: the probability of each target's class (or set of classes)."""
    m, P = probs.shape[:2]
    if classes.dtype == torch.bool:
        return (probs * classes.unsqueeze(0).to(probs.dtype)).sum(-1)
    return probs.gather(-1, classes.view(1, P, 1).expand(m, P, 1)).squeeze(-1)


def _in_claim(top: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """``top [m, P]`` (each draw's class) -> bool ``[m, P]``: the class is the target's (or in its set)."""
    if classes.dtype == torch.bool:
        return classes.t().gather(0, top)
    return top == classes.view(1, -1)


def _per_target(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``values [P]`` as ``[P, 1, ..., 1]`` against ``like [P, C, *S]``."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def _at_targets(logits: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """Logits ``[m, P, K, *S]`` -> ``[m, P, K]``: for target j its own pixel ``pixels[j]`` (``[P, len(S)]``)."""
    P = logits.shape[1]
    idx = torch.arange(P, device=logits.device)
    spatial = list(range(3, logits.dim()))
    return logits.permute(1, *spatial, 0, 2)[(idx, *pixels.unbind(1))].transpose(0, 1)


def soft_probability(model: Callable[[torch.Tensor], torch.Tensor], adv: torch.Tensor, pixels: torch.Tensor,
                     classes: torch.Tensor, sigma: float, num_draws: int, generator: torch.Generator,
                     draw_batch: int = 8, grad: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """EOT estimate ``[P]`` of ``E_eps softmax(model(x'_j + eps))_{c_j, i_j}`` and its gradient ``[P, C, *S]``.

    adv ``[P, C, *S]``; pixels int64 ``[P, len(S)]`` ((row, col), or (slice, row, col) for
    volumes); classes int64 ``[P]``, or bool ``[P, K]`` for a set of classes per target (the estimate is then
    the soft probability of the set).
    ``num_draws`` draws per target, ``draw_batch`` of them per forward pass.
    """
    P = adv.shape[0]
    x = adv.detach().clone().requires_grad_(grad)
    total = torch.zeros(P, dtype=adv.dtype, device=adv.device)
    g = torch.zeros_like(adv) if grad else None
    done = 0
    while done < num_draws:
        m = min(draw_batch, num_draws - done)
        noise = torch.randn((m, *adv.shape), generator=generator, device=adv.device, dtype=adv.dtype) * sigma
        with torch.set_grad_enabled(grad):
            logits = model((x.unsqueeze(0) + noise).reshape(m * P, *adv.shape[1:]))
            if logits.dim() != adv.dim() or logits.shape[0] != m * P or logits.shape[2:] != adv.shape[2:]:
                raise ValueError(f"the model returned shape {tuple(logits.shape)}, expected logits "
                                 f"[{m * P}, K, {', '.join(str(v) for v in adv.shape[2:])}]")
            logits = logits.reshape(m, P, *logits.shape[1:])
            picked = torch.softmax(_at_targets(logits, pixels), dim=-1)  # [m, P, K]
            prob = _claim_probability(picked, classes).sum(0) / num_draws
        if grad:
            g += torch.autograd.grad(prob.sum(), x)[0]
        total += prob.detach()
        done += m
    return total, g


def hard_probability(model: Callable[[torch.Tensor], torch.Tensor], adv: torch.Tensor, pixels: torch.Tensor,
                     classes: torch.Tensor, sigma: float, num_draws: int, generator: torch.Generator,
                     draw_batch: int = 32) -> torch.Tensor:
    """Share ``[P]`` of ``num_draws`` noise draws at ``x'_j`` whose argmax at pixel i_j is c_j (the vote estimate;
    for a set of classes per target, bool ``[P, K]``: whose argmax lies in the set)."""
    P = adv.shape[0]
    hits = torch.zeros(P, dtype=torch.float64, device=adv.device)
    done = 0
    with torch.no_grad():
        while done < num_draws:
            m = min(draw_batch, num_draws - done)
            noise = torch.randn((m, *adv.shape), generator=generator, device=adv.device, dtype=adv.dtype) * sigma
            logits = model((adv.unsqueeze(0) + noise).reshape(m * P, *adv.shape[1:]))
            logits = logits.reshape(m, P, *logits.shape[1:])
            top = _at_targets(logits, pixels).argmax(dim=-1)  # [m, P]
            hits += _in_claim(top, classes).sum(0).double()
            done += m
    return hits / num_draws


def attack_pixels(model: Callable[[torch.Tensor], torch.Tensor], sigma: float, x: torch.Tensor,
                  pixels: torch.Tensor, classes: torch.Tensor, budget: torch.Tensor, *, steps: int = 20,
                  restarts: int = 2, num_draws: int = 8, draw_batch: int = 8,
                  generator: torch.Generator | None = None, seed: int = 0,
                  start: torch.Tensor | None = None) -> PixelAttackResult:
    """Minimise the smoothed soft probability of ``classes[j]`` at ``pixels[j]``, one x' per target.

    model: differentiable ``[B, C, *S]`` noisy images -> logits ``[B, K, *S]`` (e.g.
        ``SmoothedSegmenter.base_logits``; f(D(x + eps)) with eps added here, NOT clipped).
    sigma: smoothing noise std (> 0). x: ``[C, H, W]`` or a volume ``[C, D, H, W]`` in [0, 1].
    pixels: int64 ``[P, 2]`` (row, col), for a volume ``[P, 3]`` (slice, row, col);
        classes: int64 ``[P]``, or bool ``[P, K]`` (a set of classes per target: the attack minimises the
        smoothed soft probability of the set); budget: float ``[P]`` > 0,
        the L2 radius of each target (the attack stays strictly inside).
    steps: APGD iterations per restart (default 20); restarts: default 2 (restart 0 from x
        or ``start``, the others from random points of the ball); num_draws: noise draws per
        step and target (default 8); seed / generator: all randomness.
    start: optional ``[P, C, *S]`` starting points for restart 0 (projected into the ball).
    """
    if x.dim() not in (3, 4):
        raise ValueError(f"x must be one image [C, H, W] or one volume [C, D, H, W], got shape {tuple(x.shape)}")
    pixels = torch.as_tensor(pixels, dtype=torch.long, device=x.device).reshape(-1, x.dim() - 1)
    classes = as_targets(classes, x.device)
    budget = torch.as_tensor(budget, dtype=x.dtype, device=x.device).reshape(-1)
    P = pixels.shape[0]
    if classes.shape[0] != P or budget.shape[0] != P:
        raise ValueError(f"pixels ({P}), classes ({classes.shape[0]}) and budget ({budget.shape[0]}) "
                         f"must give one value per target")
    if P and not bool((budget > 0).all()):
        raise ValueError(f"every budget must be > 0, got {budget.tolist()}")
    for name, v in (("steps", steps), ("num_draws", num_draws)):
        if isinstance(v, bool) or int(v) != v or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if isinstance(restarts, bool) or int(restarts) != restarts or restarts < 1:
        raise ValueError(f"restarts must be an integer >= 1, got {restarts!r}")
    if generator is None:
        generator = torch.Generator(device=x.device)
        generator.manual_seed(int(seed))
    x = x.detach()
    X = x.unsqueeze(0).expand(P, *x.shape).contiguous()
    if P == 0:
        empty = torch.zeros(0, dtype=x.dtype, device=x.device)
        return PixelAttackResult(X, empty, empty, budget)

    def loss_grad(adv):
        return soft_probability(model, adv, pixels, classes, sigma, num_draws, generator, draw_batch)

    best_adv, best_loss = X.clone(), torch.full((P,), math.inf, dtype=x.dtype, device=x.device)
    checkpoints = apgd_checkpoints(int(steps))
    for r in range(int(restarts)):
        if r == 0:
            x0 = X.clone() if start is None else project_l2_box(X, start.to(X), budget)
        else:
            d = torch.randn(X.shape, generator=generator, device=x.device, dtype=x.dtype)
            u = torch.rand((P,), generator=generator, device=x.device, dtype=x.dtype)
            d = d * _per_target(u * budget / d.flatten(1).norm(dim=1).clamp_min(1e-12), d)
            x0 = project_l2_box(X, X + d, budget)
        adv, loss = _apgd(loss_grad, X, x0, budget, int(steps), checkpoints)
        better = loss < best_loss
        best_adv[better], best_loss[better] = adv[better], loss[better]
    l2 = (best_adv.double() - X.double()).flatten(1).norm(dim=1)
    return PixelAttackResult(best_adv.detach(), best_loss, l2, budget)


def _apgd(loss_grad, X, x0, budget, steps, checkpoints):
    """APGD-L2 minimisation of ``loss_grad(adv) -> (loss [P], grad)``; returns (best x, best loss)."""
    P = X.shape[0]
    view = (-1, *([1] * (X.dim() - 1)))
    eta = 2 * budget.clone()
    loss, grad = loss_grad(x0)
    best_x, best_loss, best_grad = x0.clone(), loss.clone(), grad.clone()
    prev_x, cur_x, cur_loss = x0.clone(), x0.clone(), loss.clone()
    successes = torch.zeros(P, device=X.device)
    last_check, eta_at_check, best_at_check = 0, eta.clone(), best_loss.clone()
    for k in range(steps):
        unit = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(view)
        z = project_l2_box(X, cur_x - eta.view(view) * unit, budget)
        if k == 0:
            nxt = z
        else:
            nxt = project_l2_box(X, cur_x + MOMENTUM * (z - cur_x) + (1 - MOMENTUM) * (cur_x - prev_x), budget)
        new_loss, new_grad = loss_grad(nxt)
        successes += (new_loss < cur_loss).float()
        improved = new_loss < best_loss
        best_x[improved], best_loss[improved] = nxt[improved], new_loss[improved]
        best_grad[improved] = new_grad[improved]
        prev_x, cur_x, cur_loss, grad = cur_x, nxt, new_loss, new_grad
        if (k + 1) in checkpoints:
            span = (k + 1) - last_check
            slow = successes < RHO * span
            stuck = (eta == eta_at_check) & (best_loss == best_at_check)
            halve = slow | stuck
            eta_at_check, best_at_check = eta.clone(), best_loss.clone()
            eta = torch.where(halve, eta / 2, eta)
            if bool(halve.any()):  # restart the halved targets from their best point, no momentum
                cur_x = torch.where(halve.view(view), best_x, cur_x)
                prev_x = torch.where(halve.view(view), best_x, prev_x)
                cur_loss = torch.where(halve, best_loss, cur_loss)
                grad = torch.where(halve.view(view), best_grad, grad)
            successes.zero_()
            last_check = k + 1
    return best_x, best_loss
