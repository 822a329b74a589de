"""The segmenter contract: :func:`check_segmenter` (rules in ``RULES["segmenter"]``)."""
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
from certframe.interfaces import Segmenter, model_spatial_dims


def check_segmenter(segmenter, *, options: dict | None = None, name: str | None = None,
                    image_size: tuple[int, ...] | None = None, batch_size: int = 2, seed: int = 0,
                    bad_options: Iterable[dict] = (), devices: str | Sequence[str] = "auto",
                    batch_tol: float = 1e-4) -> ContractReport:
    """Check a :class:`~certframe.interfaces.Segmenter` (instance or factory) against the contract.

    options: keyword arguments for the factory (ignored for an instance).
    image_size: (H, W) of the test images, or (D, H, W) of test volumes for a volume segmenter
        (``spatial_dims = 3``); default (32, 48), for a volume-only segmenter (16, 32, 48):
        non-square so swapped axes show. Use sizes the network supports (e.g. divisible by
        2**depth for a UNet).
    devices: ``"auto"`` (meta, plus CUDA when available) or a list such as ``["cuda"]``.
    batch_tol: relative tolerance between batched and one-by-one outputs.
    Raises :class:`ContractError` on the first broken rule; returns a :class:`ContractReport`.
    """
    ck, factory, seg, options = _begin("segmenter", segmenter, name, options, seed, Segmenter, nn.Module)
    C, K = getattr(seg, "in_channels", None), getattr(seg, "num_classes", None)
    if not isinstance(C, int) or isinstance(C, bool) or C < 1:
        ck.fail("type", f"in_channels must be an int >= 1, got {C!r}")
    if not isinstance(K, int) or isinstance(K, bool) or K < 2:
        ck.fail("type", f"num_classes must be an int >= 2 (background + at least one class), got {K!r}")
    try:
        dims = model_spatial_dims(seg)
    except ValueError as err:
        ck.fail("type", str(err))
    ck.ok("type")
    if image_size is None:
        image_size = (32, 48) if 2 in dims else (16, 32, 48)
    size = tuple(int(v) for v in image_size)
    if len(size) not in dims:
        ck.fail("type", f"image_size {size} has {len(size)} spatial dimension(s); the segmenter declares "
                        f"spatial_dims={dims[0] if len(dims) == 1 else dims}")

    def run(m, t):
        return m(t)

    def expected(t):
        return (t.shape[0], K, *t.shape[2:])

    x = _images((batch_size, C, *size), seed)
    out = _check_module(ck, seg, run, x, expected, batch_tol=batch_tol, devices=devices)
    noisy = _images((batch_size, C, *size), seed + 1, noise=0.5)
    with torch.no_grad():
        out_noisy = ck.call("finite output", "forward on a noisy input outside [0, 1]", run, seg, noisy)
    if tuple(out_noisy.shape) != expected(noisy):
        ck.fail("output shape", f"for noisy input {_shape(noisy)} expected {list(expected(noisy))}, "
                                f"got {_shape(out_noisy)}")
    if not bool(torch.isfinite(out_noisy).all()):
        ck.fail("finite output", "NaN or infinite logits for a noisy input x + N(0, 0.5^2) (values outside "
                                 "[0, 1], which is what the smoothed segmenter feeds it)")
    ck.ok("finite output")
    labels = seg.predict(x)
    if labels.dtype != torch.int64 or tuple(labels.shape) != (batch_size, *size):
        axes = "H, W" if len(size) == 2 else "D, H, W"
        ck.fail("output shape", f"predict must give int64 [B, {axes}] labels, got {labels.dtype} {_shape(labels)}")
    if factory is not None:
        twin = _build(ck, factory, options, seed).to("cpu").eval()
        with torch.no_grad():
            twin_out = run(twin, x)
        if not torch.equal(twin_out, out):
            _, diff = _close(twin_out, out, 0.0)
            ck.fail("determinism", f"two segmenters built with the same options under torch.manual_seed({seed}) "
                                   f"give different outputs (max |diff| {diff:.3g}): use torch's RNG (seeded "
                                   f"by the caller) for random initialisation")
    else:
        ck.skip("determinism: building", "an instance was given, not a factory")
    ck.ok("determinism")
    _check_bad_input(ck, seg, run, x, C)
    _check_bad_options(ck, factory, options, bad_options)
    return ck.report
