"""The denoiser contract: :func:`check_denoiser` (rules in ``RULES["denoiser"]``)."""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn

from certframe.contract._common import (
    ContractReport,
    _begin,
    _build,
    _check_bad_input,
    _check_bad_options,
    _check_module,
    _close,
    _images,
    _shape,
)
from certframe.interfaces import Denoiser


def check_denoiser(denoiser, *, options: dict | None = None, name: str | None = None,
                   in_channels: int | None = None, image_size: tuple[int, int] = (32, 48),
                   batch_size: int = 2, sigmas: Sequence[float] = (0.25, 0.5),
                   output_range: tuple[float, float] | None = (0.0, 1.0), seed: int = 0,
                   bad_options: Iterable[dict] = (), devices: str | Sequence[str] = "auto",
                   batch_tol: float = 1e-4) -> ContractReport:
    """Check a :class:`~certframe.interfaces.Denoiser` (instance or factory) against the contract.

    The denoiser gets ``x + eps`` with ``x`` uniform in ``[0, 1]`` and ``eps ~ N(0, sigma^2)``
    (not clipped), for each sigma in ``sigmas``.
    in_channels: channels of the test images; default: the denoiser's ``in_channels``
        attribute, else 1 (a channel-agnostic denoiser).
    output_range: ``(lo, hi)`` the output must lie in; ``None`` for a pass-through denoiser
        (``none``) whose output is the noisy input.
    Other arguments as in :func:`check_segmenter`.
    """
    ck, factory, den, options = _begin("denoiser", denoiser, name, options, seed, Denoiser, nn.Module)
    declared = getattr(den, "in_channels", None)
    if declared is not None and (not isinstance(declared, int) or declared < 1):
        ck.fail("type", f"in_channels, when declared, must be an int >= 1, got {declared!r}")
    ck.ok("type")
    C = in_channels or declared or 1
    H, W = image_size
    out = None
    for i, sigma in enumerate(sigmas):
        def run(m, t, sigma=float(sigma)):
            return m(t, sigma)

        x = _images((batch_size, C, H, W), seed + i, noise=float(sigma))
        if i == 0:
            out = _check_module(ck, den, run, x, lambda t: tuple(t.shape), batch_tol=batch_tol, devices=devices)
        else:
            with torch.no_grad():
                out = ck.call("output shape", f"forward at sigma={sigma}", run, den, x)
            if tuple(out.shape) != tuple(x.shape):
                ck.fail("output shape", f"at sigma={sigma} expected {_shape(x)}, got {_shape(out)}")
            if not bool(torch.isfinite(out).all()):
                ck.fail("finite output", f"NaN or infinite values in the output at sigma={sigma}")
        if output_range is not None:
            lo, hi = output_range
            o_lo, o_hi = float(out.min()), float(out.max())
            if o_lo < lo or o_hi > hi:
                ck.fail("output range", f"at sigma={sigma} the output spans [{o_lo:.4g}, {o_hi:.4g}], "
                                        f"expected values in [{lo}, {hi}] (clip the denoised image)")
    ck.ok("finite output")
    if output_range is None:
        ck.skip("output range", "output_range=None (a pass-through denoiser)")
    else:
        ck.ok("output range")
    if factory is not None:
        x = _images((batch_size, C, H, W), seed, noise=float(sigmas[0]))
        twin = _build(ck, factory, options, seed).to("cpu").eval()
        with torch.no_grad():
            a, b = den(x, float(sigmas[0])), twin(x, float(sigmas[0]))
        if not torch.equal(a, b):
            _, diff = _close(a, b, 0.0)
            ck.fail("determinism", f"two denoisers built with the same options under torch.manual_seed({seed}) "
                                   f"give different outputs (max |diff| {diff:.3g})")
    else:
        ck.skip("determinism: building", "an instance was given, not a factory")
    ck.ok("determinism")
    x = _images((batch_size, C, H, W), seed, noise=float(sigmas[0]))
    _check_bad_input(ck, den, lambda m, t: m(t, float(sigmas[0])), x, declared)
    _check_bad_options(ck, factory, options, bad_options)
    return ck.report
