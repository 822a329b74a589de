"""The segmentation-aware base of every certframe attack, on torchattacks' :class:`Attack`.

Shapes and ranges (B = batch, C = channels, K = classes, H x W = size):

* images  float ``[B, C, H, W]`` in ``[0, 1]`` (the data set's pixel space, the same
  space the smoothing noise is added in and the certified radii are measured in);
* labels  int64 ``[B, H, W]`` in ``0..K-1`` (ground truth for untargeted attacks,
  the target mask for targeted ones);
* volumes: everything holds with ``H, W`` read as ``D, H, W`` (images ``[B, C, D, H, W]``,
  labels ``[B, D, H, W]``, logits ``[B, K, D, H, W]``); the L2 ball is then over all
  C*D*H*W values of one volume. (torchattacks' own ``PGDL2.forward`` reshapes per-image
  norms with ``view(B, 1, 1, 1)``, 4-D only; certframe's attacks use :meth:`ascend` and
  :func:`per_sample`, which broadcast over any number of spatial dimensions.)
* the model returns logits ``[B, K, H, W]``; torchattacks' ``nn.CrossEntropyLoss``
  is then the mean per-pixel cross-entropy, which is why FGSM, PGD and PGD-L2 work
  for segmentation unchanged.

Threat models: ``norm="l2"`` is the ball ``||x' - x||_2 <= eps`` over all C*H*W
values of one image (the ball randomized smoothing certifies); ``norm="linf"`` is
``max |x' - x| <= eps``. Every attack also keeps ``x'`` in ``[0, 1]``. Clipping to
``[0, 1]`` after projecting onto the ball never leaves the ball: it only moves each
coordinate of ``x'`` towards ``x``.

:class:`SegmentationAttack` validates inputs with errors that say what was expected
and what came, seeds the attack's randomness (random starts, noise draws) so a run
is reproducible, and offers :meth:`SegmentationAttack.ascend`, the projected
gradient ascent loop (Madry et al., ICLR 2018) that the segmentation-specific
attacks share.
"""
from __future__ import annotations

import contextlib
import io
import math
import sys
from typing import Callable

import torch
import torch.nn.functional as F
from torchattacks.attack import Attack

NORMS = ("l2", "linf")


def check_norm(norm: str) -> str:
    """``"l2"`` or ``"linf"`` (case-insensitive; ``"inf"`` is read as ``"linf"``)."""
    if not isinstance(norm, str):
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    n = norm.lower()
    n = "linf" if n in ("inf", "l_inf", "linfinity") else n
    if n not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return n


def check_eps(eps: float, norm: str = "l2") -> float:
    """A finite perturbation budget ``eps > 0``; an Linf budget must also be ``<= 1``.

    Images live in ``[0, 1]``, so an Linf budget above 1 means "anything", which is
    almost always a budget given in 0..255 units by mistake.
    """
    norm = check_norm(norm)
    try:
        value = float(eps)
    except (TypeError, ValueError):
        raise ValueError(f"eps must be a number > 0, got {eps!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"eps must be a finite number > 0 (the {norm} radius of the threat model in "
                         f"[0, 1] pixel units), got {eps!r}")
    if norm == "linf" and value > 1:
        raise ValueError(f"an Linf budget eps must be <= 1 (images are in [0, 1]), got {eps!r}; "
                         f"for a budget in 0..255 units pass eps/255 (e.g. {value:g}/255 = {value / 255:.5f})")
    return value


def check_positive(name: str, value, *, integer: bool = False):
    """A number > 0 (an int >= 1 where ``integer``)."""
    if integer:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        return value
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number > 0, got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``values [B]`` viewed as ``[B, 1, ..., 1]`` to broadcast over ``like [B, ...]`` (images or volumes)."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def validate_images(images: torch.Tensor, in_channels: int | None = None) -> None:
    """``images`` is float ``[B, C, H, W]`` (or volumes ``[B, C, D, H, W]``), finite, in ``[0, 1]``."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor [B, C, H, W], got {type(images).__name__}")
    if images.dim() not in (4, 5):
        raise ValueError(f"images must have shape [B, C, H, W] (or volumes [B, C, D, H, W]), "
                         f"got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be a float tensor in [0, 1], got dtype {images.dtype}")
    if in_channels is not None and images.shape[1] != in_channels:
        raise ValueError(f"images have {images.shape[1]} channel(s), the model expects {in_channels}")
    if not bool(torch.isfinite(images).all()):
        raise ValueError("images hold NaN or infinite values; expected finite values in [0, 1]")
    lo, hi = float(images.min()), float(images.max())
    if lo < 0 or hi > 1:
        raise ValueError(f"images must lie in [0, 1] (the attack's box), got range [{lo:.4g}, {hi:.4g}]")


def validate_labels(labels: torch.Tensor, images: torch.Tensor, num_classes: int | None = None,
                    name: str = "labels") -> None:
    """``labels`` is integer ``[B, *S]`` matching ``images [B, C, *S]``, values in ``0..K-1``."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [B, H, W] of class indices, got {type(labels).__name__}")
    expected = (images.shape[0], *images.shape[2:])
    axes = "[B, H, W]" if images.dim() == 4 else "[B, D, H, W]"
    if labels.dim() != images.dim() - 1 or tuple(labels.shape) != expected:
        raise ValueError(f"{name} must have shape {axes} = {expected} to match the images "
                         f"{tuple(images.shape)}, got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class indices, got dtype {labels.dtype}")
    if labels.numel():
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or (num_classes is not None and hi >= num_classes):
            present = sorted(torch.unique(labels).tolist())
            top = num_classes - 1 if num_classes else "K-1"
            raise ValueError(f"{name} hold classes {present}, expected values in 0..{top}")


def project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project ``delta [B, ...]`` onto the ``norm`` ball of radius ``eps``, per sample."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    flat = delta.flatten(1).norm(p=2, dim=1)
    factor = torch.clamp(eps / (flat + 1e-12), max=1.0)
    return delta * per_sample(factor, delta)


def perturbation_norms(images: torch.Tensor, adv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(l2 [B], linf [B])`` norms of ``adv - images`` per sample (float64)."""
    d = (adv.detach().double() - images.detach().double()).flatten(1)
    return d.norm(p=2, dim=1), d.abs().amax(dim=1)


def random_start(images: torch.Tensor, eps: float, norm: str, generator: torch.Generator | None) -> torch.Tensor:
    """A random point of the ball around ``images``, clipped to ``[0, 1]``.

    Linf: uniform in the cube (as torchattacks' PGD). L2: a uniformly random
    direction with a radius uniform in ``[0, eps]`` (as torchattacks' PGDL2).
    """
    if norm == "linf":
        delta = (torch.rand(images.shape, generator=generator, device=images.device, dtype=images.dtype)
                 * 2 - 1) * eps
    else:
        delta = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
        r = torch.rand((images.shape[0],), generator=generator, device=images.device, dtype=images.dtype)
        n = delta.flatten(1).norm(p=2, dim=1) + 1e-12
        delta = delta * per_sample(r * eps / n, delta)
    return (images + delta).clamp(0, 1)


class SegmentationAttack(Attack):
    """Base of the certframe attacks: validation, seeding, and the PGD ascent loop.

    Subclasses set ``norm`` ("l2" / "linf") and ``threat`` ("base": the attack sees
    the base segmenter, no noise; "smoothed": it attacks the smoothed pipeline
    ``segmenter(denoiser(x + eps))`` itself), call :meth:`_setup` in ``__init__``
    and implement :meth:`perturb`. They are called like any torchattacks attack::

        adv = attack(images [B, C, H, W] in [0, 1], labels [B, H, W] int64)

    and return ``adv`` of the same shape, in ``[0, 1]`` and inside the norm ball.
    """

    norm: str = "l2"
    threat: str = "base"

    def _setup(self, *, eps: float, norm: str, seed: int | None) -> None:
        self.norm = check_norm(norm)
        self.eps = check_eps(eps, self.norm)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an integer or None, got {seed!r}")
        self.seed = seed
        self.num_classes = getattr(self.model, "num_classes", None)
        self.in_channels = getattr(self.model, "in_channels", None)
        if self.device is None:  # a model without parameters: torchattacks could not tell
            self.device = torch.device("cpu")

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        validate_images(images, self.in_channels)
        if labels is not None:
            validate_labels(labels, images, self.num_classes)
        images = images.detach().to(self.device)
        labels = None if labels is None else labels.detach().to(self.device).long()
        with self._seeded():
            adv = self.perturb(images, labels)
        return adv.detach()

    def perturb(self, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    @contextlib.contextmanager
    def _seeded(self):
        """Fix torch's global RNG inside the attack (torchattacks' random starts use it)."""
        if self.seed is None:
            yield
            return
        devices = [self.device] if torch.device(self.device).type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            yield

    def generator(self) -> torch.Generator | None:
        """A generator on the attack's device seeded with ``seed`` (None: torch's global RNG)."""
        if self.seed is None:
            return None
        g = torch.Generator(device=self.device)
        g.manual_seed(self.seed)
        return g

    def ascend(self, images: torch.Tensor, gradient: Callable[[torch.Tensor, int], torch.Tensor] | None = None, *,
               step_size: float, steps: int, start_random: bool, generator: torch.Generator | None = None,
               objective: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
               score: Callable[[torch.Tensor], torch.Tensor] | None = None, restarts: int = 1,
               value_gradient: Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]] | None = None
               ) -> torch.Tensor:
        """Projected gradient ascent inside the ``norm`` ball of radius ``eps`` around ``images``.

        Give either ``objective(adv, t)``: the per-sample loss ``[B]`` to maximise at step
        ``t`` in ``1..steps`` (its gradient comes from autograd; the BEST iterate per sample,
        by ``score(adv) -> [B]`` or else by the objective, is returned, over ``restarts``
        runs: the first from ``images`` or a random start, the others from random starts),
        or ``value_gradient(adv, t) -> (loss [B], gradient [B, C, H, W])`` computed by the
        caller (e.g. a Monte-Carlo estimate in draw batches; best iterate and restarts as
        with ``objective``, except that the starting point itself is not a candidate), or
        ``gradient(adv, t)``: the gradient alone (then the last
        iterate of one run is returned). Linf steps are ``step_size * sign(grad)``; L2 steps are
        ``step_size * grad / ||grad||_2`` per sample. After each step the perturbation is
        projected onto the ball and ``x'`` clipped to ``[0, 1]``.
        """
        if sum(f is not None for f in (gradient, objective, value_gradient)) != 1:
            raise ValueError("ascend needs exactly one of gradient=, objective= and value_gradient=")
        restarts = check_positive("restarts", restarts, integer=True)
        if gradient is not None:
            restarts = 1
        best = images.clone()
        best_value = torch.full((images.shape[0],), -math.inf, device=images.device, dtype=torch.float64)

        def keep(adv, value):
            nonlocal best
            better = value.detach().double() > best_value
            best = torch.where(per_sample(better, adv), adv.detach(), best)
            best_value[better] = value.detach().double()[better]

        for r in range(restarts):
            use_random = start_random or r > 0
            adv = random_start(images, self.eps, self.norm, generator) if use_random else images.clone()
            for t in range(1, steps + 1):
                if objective is not None:
                    x = adv.detach().clone().requires_grad_(True)
                    value = objective(x, t)
                    grad = torch.autograd.grad(value.sum(), x)[0]
                    keep(adv, value if score is None else _no_grad(score, adv))
                elif value_gradient is not None:
                    value, grad = value_gradient(adv.detach(), t)
                    if t > 1:  # a noisy estimate may rank the unmoved start first by chance: not a candidate
                        keep(adv, value if score is None else _no_grad(score, adv))
                else:
                    grad = gradient(adv.detach(), t)
                if self.norm == "linf":
                    step = step_size * grad.sign()
                else:
                    gnorm = grad.flatten(1).norm(p=2, dim=1).clamp_min(1e-12)
                    step = step_size * grad / per_sample(gnorm, grad)
                delta = project(adv.detach() + step - images, self.eps, self.norm)
                adv = (images + delta).clamp(0, 1).detach()
            if gradient is not None:
                return adv
            if score is not None:
                keep(adv, _no_grad(score, adv))
            elif objective is not None:
                keep(adv, _no_grad(lambda a: objective(a, steps), adv))
            else:
                keep(adv, value_gradient(adv.detach(), steps)[0])
        return best

    def loss_gradient(self, loss_fn: Callable[[torch.Tensor, int], torch.Tensor]):
        """Turn ``loss_fn(adv, t) -> scalar`` into the ``gradient`` callable of :meth:`ascend`."""
        def gradient(adv: torch.Tensor, t: int) -> torch.Tensor:
            adv = adv.clone().requires_grad_(True)
            loss = loss_fn(adv, t)
            return torch.autograd.grad(loss, adv)[0]
        return gradient

    def check_logits(self, logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        expected = (images.shape[0], *images.shape[2:])
        if logits.dim() != images.dim() or (logits.shape[0], *logits.shape[2:]) != expected:
            axes = "H, W" if images.dim() == 4 else "D, H, W"
            raise ValueError(f"the model returned shape {tuple(logits.shape)}, expected logits "
                             f"[B, K, {axes}] with B, {axes} = {expected}")
        return logits


def _no_grad(fn, adv):
    with torch.no_grad():
        return fn(adv)


@contextlib.contextmanager
def quiet_device_message():
    """Silence torchattacks' "Failed to set device automatically" print (a model without parameters).

    :meth:`SegmentationAttack._setup` then sets the device to the CPU; anything else
    printed inside the block is passed on unchanged.
    """
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        yield
    rest = "".join(line for line in buffer.getvalue().splitlines(keepends=True)
                   if not line.startswith("Failed to set device automatically"))
    if rest:
        sys.stdout.write(rest)


def per_sample_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean per-pixel cross-entropy of each image: logits ``[B, K, *S]``, labels ``[B, *S]`` -> ``[B]``."""
    return F.cross_entropy(logits, labels, reduction="none").flatten(1).mean(dim=1)


def default_step_size(eps: float, steps: int) -> float:
    """Step size ``2.5 * eps / steps`` (Madry et al. 2018; Salman et al. 2019)."""
    return 2.5 * eps / steps
