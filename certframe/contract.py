"""Contract checks for certframe plugins, to call from a plugin's own test suite.

A plugin is only as trustworthy as the certificates computed through it, and the
guarantee of randomized smoothing (Cohen et al. 2019; Fischer et al. 2021 for
segmentation) silently breaks if, for instance, a segmenter's output depends on
the batch it came in, a denoiser draws from the global random state, or a
certifier re-uses its selection draws for estimation. These helpers check the
contract of :mod:`certframe.interfaces` on a real object and raise
:class:`ContractError` (an ``AssertionError``, so pytest shows it as a failure)
naming the plugin, the violated rule and what came instead of what was expected::

    from certframe.contract import check_segmenter

    def test_my_unet_honours_the_certframe_contract(tmp_path):
        check_segmenter(MyUNet, options={"weights": "tests/data/tiny.safetensors"})

Each ``check_*`` takes either an instance or a factory (the class or function the
plugin registers; it is called with ``options`` as keyword arguments, twice, to
check that building is deterministic under a seed). :func:`check_plugin` does
the same for a *registered* name, going through the registry exactly as
``certframe certify`` does. Every check returns a :class:`ContractReport` of the
rules that passed and those that could not be checked here, with the reason
(for instance ``device cuda: CUDA is not available``).

The rules, by kind (``RULES`` holds them with one sentence each):

* segmenter: images ``[B, C, H, W]`` float in ``[0, 1]`` -> logits ``[B, K, H, W]``
  (non-square H x W, so swapped axes are caught), floating point and finite, also
  on noisy inputs outside ``[0, 1]``; the input is not modified in place; each
  item's output does not depend on the rest of the batch; forward is a function
  of its input (the sampler promises that a draw gives the same votes every time)
  and building under one ``torch.manual_seed`` gives the same model; the module
  follows ``.to(device)`` (CPU; the ``meta`` device, which catches tensors kept
  outside parameters/buffers or created without ``device=``; CUDA when
  available); a wrong channel count or a missing batch axis raises ``ValueError``.
* denoiser: the same, with output ``[B, C, H, W]`` in ``output_range`` (``[0, 1]``
  by default; ``None`` for a pass-through such as ``none``) at every sigma.
* dataset: ``len >= 1``; items are :class:`~certframe.interfaces.Sample` with
  image float32 ``[C, H, W]`` in ``[0, 1]`` (C = ``in_channels``), mask int64
  ``[H, W]`` with declared labels only, on the CPU, unique non-empty string ids
  equal to ``item_ids()``; reading (and building under the same options) is
  deterministic; ``dataset[len(dataset)]`` raises ``IndexError``; ``identity()``
  is JSON.
* certifier: one :class:`~certframe.results.Certificate` per tau, in order, with
  ``labels`` int64 ``[H, W]`` in ``{ABSTAIN} u {0..K-1}`` on the votes' device and
  ``radius == sigma * Phi^-1(tau)``; every draw comes through the
  :class:`~certframe.interfaces.VoteSource` (nothing else of it is touched, no
  draw is used twice, ``num_samples`` counts them); the same votes give the same
  certificate; pixels whose votes are unanimous may be certified only as the
  voted class (and some must be), pixels whose top class has probability 0.5 (below
  every tau) must abstain.

``bad_options`` (every kind): option dicts the factory must refuse with a clear
``ValueError``, ``TypeError``, ``KeyError`` or ``FileNotFoundError``.
"""
from __future__ import annotations

import copy
import inspect
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from scipy.stats import norm
from torch import nn

from certframe.interfaces import (ABSTAIN, Certifier, CertifyRequest, Denoiser, Sample, SegmentationDataset,
                                  Segmenter)
from certframe.sampler import draw_seed

__all__ = ["ContractError", "ContractReport", "ContractVotes", "RULES", "check_certifier", "check_dataset",
           "check_denoiser", "check_plugin", "check_segmenter"]

_BUILD = "the factory builds the plugin from the given options"
RULES: dict[str, dict[str, str]] = {
    "segmenter": {
        "build": _BUILD,
        "type": "is a certframe.interfaces.Segmenter (a torch.nn.Module) with int in_channels >= 1 and "
                "num_classes >= 2",
        "output shape": "images [B, C, H, W] -> logits [B, num_classes, H, W]",
        "output dtype": "the logits are a floating-point tensor",
        "finite output": "the logits are finite, for clean inputs in [0, 1] and noisy ones outside it",
        "input untouched": "forward does not modify its input in place",
        "batch independence": "each item's output does not depend on the other items of the batch",
        "determinism": "forward is a function of its input, and building under one torch.manual_seed "
                       "gives the same model",
        "device": "the module follows .to(device): outputs live on the input's device",
        "bad input": "a wrong channel count or a missing batch axis raises ValueError",
        "bad options": "invalid options are refused with a clear error",
    },
    "denoiser": {
        "build": _BUILD,
        "type": "is a certframe.interfaces.Denoiser (a torch.nn.Module)",
        "output shape": "noisy images [B, C, H, W] and sigma -> images [B, C, H, W]",
        "output dtype": "the output is a floating-point tensor",
        "finite output": "the output is finite",
        "output range": "the output lies in the declared range ([0, 1] for a real denoiser)",
        "input untouched": "forward does not modify its input in place",
        "batch independence": "each item's output does not depend on the other items of the batch",
        "determinism": "forward is a function of its input, and building under one torch.manual_seed "
                       "gives the same model",
        "device": "the module follows .to(device): outputs live on the input's device",
        "bad input": "a wrong channel count (when in_channels is declared) or a missing batch axis "
                     "raises ValueError",
        "bad options": "invalid options are refused with a clear error",
    },
    "dataset": {
        "build": _BUILD,
        "type": "is a certframe.interfaces.SegmentationDataset with >= 2 distinct class names and int "
                "in_channels >= 1",
        "length": "has at least one item",
        "sample": "items are Sample(image float32 [C, H, W] in [0, 1], mask int64 [H, W] with declared "
                  "labels, id: non-empty str), on the CPU",
        "ids": "ids are unique and item_ids() lists them in index order",
        "determinism": "reading an item twice, or from a second data set built with the same options, "
                       "gives the same sample",
        "index range": "dataset[len(dataset)] raises IndexError",
        "identity": "identity() returns a JSON-serialisable dict",
        "bad options": "invalid options are refused with a clear error",
    },
    "certifier": {
        "build": _BUILD,
        "type": "is a certframe.interfaces.Certifier with a non-empty name",
        "certificates": "certify returns one Certificate per tau, in order, with the request's tau, sigma "
                        "and alpha",
        "labels": "labels are int64 [H, W] with values in {ABSTAIN} u {0..K-1}, on the votes' device",
        "radius": "radius == sigma * Phi^-1(tau)",
        "votes only": "every draw comes through VoteSource.counts (nothing else of the vote source is "
                      "used), no draw is used twice, and num_samples counts the draws",
        "determinism": "the same votes give the same certificates",
        "follows votes": "pixels with unanimous votes are certified (if at all) as the voted class, and "
                         "not all of them abstain",
        "abstains without majority": "pixels whose top class has probability 0.5 < tau abstain",
        "extras": "pvalues (if given) are [H, W] in [0, 1]; pixel_radius (if given) is [H, W], finite, "
                  ">= 0 and >= radius on every certified pixel",
        "device": "votes on CUDA give labels on CUDA (when available)",
        "bad options": "invalid options are refused with a clear error",
    },
}

_CLEAR_ERRORS = (ValueError, TypeError, KeyError, FileNotFoundError)
_DEVICE_MISMATCH = re.compile(r"not on the expected device|same device|Expected all tensors|device type",
                              re.IGNORECASE)


class ContractError(AssertionError):
    """A plugin breaks a rule of the certframe plugin contract.

    Attributes: ``plugin`` (how the plugin was named), ``kind``, ``rule`` (a key of
    :data:`RULES`), ``detail`` (what was expected and what came).
    """

    def __init__(self, plugin: str, kind: str, rule: str, detail: str):
        self.plugin, self.kind, self.rule, self.detail = plugin, kind, rule, detail
        meaning = RULES.get(kind, {}).get(rule, "")
        super().__init__(f"{kind} {plugin} breaks the contract rule {rule!r}"
                         f"{f' ({meaning})' if meaning else ''}: {detail}")


@dataclass
class ContractReport:
    """What a check established: rules that ``passed``, and rules ``skipped`` with the reason."""

    kind: str
    plugin: str
    passed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"{self.kind} {self.plugin}: {len(self.passed)} rule(s) passed"]
        lines += [f"  ok    {r}" for r in self.passed]
        lines += [f"  skip  {r}: {why}" for r, why in self.skipped.items()]
        return "\n".join(lines)


class _Checker:
    """Bookkeeping shared by the checks: naming, failing, passing, skipping."""

    def __init__(self, kind: str, plugin: str):
        self.kind, self.plugin = kind, plugin
        self.report = ContractReport(kind, plugin)

    def fail(self, rule: str, detail: str):
        raise ContractError(self.plugin, self.kind, rule, detail)

    def ok(self, rule: str) -> None:
        if rule not in self.report.passed:
            self.report.passed.append(rule)

    def skip(self, rule: str, reason: str) -> None:
        self.report.skipped[rule] = reason

    def call(self, rule: str, what: str, fn: Callable, *args, **kwargs):
        """Run plugin code; an unexpected exception becomes a ContractError of ``rule``."""
        try:
            return fn(*args, **kwargs)
        except ContractError:
            raise
        except Exception as err:
            self.fail(rule, f"{what} raised {type(err).__name__}: {err}")


# ----------------------------------------------------------------------------- helpers

def _shape(t) -> str:
    return str(list(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


def _name(target, given: str | None) -> str:
    if given:
        return given
    obj = target if inspect.isclass(target) or inspect.isfunction(target) else type(target)
    return repr(getattr(obj, "__qualname__", None) or type(target).__name__)


def _is_factory(target, base: type) -> bool:
    return not isinstance(target, base) and callable(target)


def _build(ck: _Checker, factory: Callable, options: dict, seed: int):
    torch.manual_seed(seed)
    obj = ck.call("build", f"building it with options {options}", factory, **options)
    ck.ok("build")
    return obj


def _check_bad_options(ck: _Checker, factory: Callable | None, base_options: dict,
                       bad_options: Iterable[dict]) -> None:
    bad_options = list(bad_options)
    if not bad_options:
        ck.skip("bad options", "no bad_options given")
        return
    if factory is None:
        ck.skip("bad options", "an instance was given, not a factory")
        return
    for bad in bad_options:
        opts = {**base_options, **bad}
        try:
            factory(**opts)
        except _CLEAR_ERRORS as err:
            if not str(err).strip():
                ck.fail("bad options", f"options {bad} raised {type(err).__name__} without a message")
            continue
        except Exception as err:
            ck.fail("bad options", f"options {bad} raised {type(err).__name__}: {err}; expected ValueError, "
                                   f"TypeError, KeyError or FileNotFoundError with a clear message")
        ck.fail("bad options", f"options {bad} were accepted; expected a clear error")
    ck.ok("bad options")


def _images(shape, seed: int, noise: float = 0.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=gen)
    if noise:
        x = x + noise * torch.randn(shape, generator=gen)
    return x


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float) -> tuple[bool, float]:
    diff = float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
    scale = 1.0 + float(b.double().abs().max()) if b.numel() else 1.0
    return diff <= rtol * scale, diff


# --------------------------------------------------------------------- modules (seg/den)

def _check_module(ck: _Checker, module: nn.Module, run: Callable[[nn.Module, torch.Tensor], torch.Tensor],
                  x: torch.Tensor, expected_shape: Callable[[torch.Tensor], tuple], *, batch_tol: float,
                  devices: str | Sequence[str]) -> torch.Tensor:
    """The rules segmenters and denoisers share; returns the CPU output for ``x``."""
    module = ck.call("type", ".to('cpu')", module.to, "cpu")
    if not isinstance(module, nn.Module):
        ck.fail("type", f".to('cpu') returned {type(module).__name__}, expected the module itself")
    module.eval()
    x_before = x.clone()
    with torch.no_grad():
        out = ck.call("output shape", f"forward on {_shape(x)}", run, module, x)
    if not torch.equal(x, x_before):
        ck.fail("input untouched", "forward changed its input tensor in place; work on a copy "
                                   "(the engine reuses the image)")
    ck.ok("input untouched")
    if not isinstance(out, torch.Tensor):
        ck.fail("output shape", f"forward returned {type(out).__name__}, expected a tensor")
    if tuple(out.shape) != expected_shape(x):
        ck.fail("output shape", f"for input {_shape(x)} expected output {list(expected_shape(x))}, "
                                f"got {_shape(out)}")
    ck.ok("output shape")
    if not out.is_floating_point():
        ck.fail("output dtype", f"expected a floating-point tensor, got dtype {out.dtype}")
    ck.ok("output dtype")
    if out.device.type != "cpu":
        ck.fail("device", f"the module is on the CPU and so is the input, but the output is on {out.device}")
    finite = torch.isfinite(out)
    if not bool(finite.all()):
        ck.fail("finite output", f"{int((~finite).sum())} NaN or infinite value(s) in the output "
                                 f"for input of range [{float(x.min()):.3g}, {float(x.max()):.3g}]")
    # determinism: the same input twice gives the same output (no hidden random state)
    with torch.no_grad():
        again = ck.call("determinism", "a second forward", run, module, x)
    if not torch.equal(out, again):
        _, diff = _close(again, out, 0.0)
        ck.fail("determinism", f"two forward passes on the same input differ (max |diff| {diff:.3g}): "
                               f"forward must not draw random numbers (dropout left on? global RNG?); "
                               f"the sampler needs each noise draw to give the same votes every time")
    # batch independence: item i of a batch == item i alone
    if x.shape[0] > 1:
        with torch.no_grad():
            singles = torch.cat([ck.call("batch independence", "forward on one item", run, module, x[i:i + 1])
                                 for i in range(x.shape[0])])
        ok, diff = _close(singles, out, batch_tol)
        if not ok:
            ck.fail("batch independence", f"the outputs of the items run one by one differ from the batched "
                                          f"output by up to {diff:.3g}: does a BatchNorm run in training mode, "
                                          f"or is something computed over the batch? Results would depend "
                                          f"on --batch-size")
        ck.ok("batch independence")
    else:
        ck.skip("batch independence", "batch_size is 1")
    _check_devices(ck, module, run, x, out, devices)
    return out


def _check_devices(ck: _Checker, module: nn.Module, run, x: torch.Tensor, cpu_out: torch.Tensor,
                   devices: str | Sequence[str]) -> None:
    if devices == "auto":
        devices = ["meta"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        devices = list(devices)
    if "cuda" not in devices:
        ck.skip("device cuda", "CUDA is not available" if not torch.cuda.is_available() else "not asked for")
    for dev in devices:
        try:
            moved = copy.deepcopy(module)
        except Exception as err:
            ck.skip(f"device {dev}", f"the module cannot be deep-copied ({type(err).__name__}: {err})")
            continue
        moved = ck.call("device", f".to({dev!r})", moved.to, dev)
        for what, tensors in (("parameter", moved.named_parameters()), ("buffer", moved.named_buffers())):
            for pname, t in tensors:
                if t.device.type != torch.device(dev).type:
                    ck.fail("device", f"after .to({dev!r}) the {what} {pname!r} is on {t.device}")
        xd = x.to(dev)
        try:
            with torch.no_grad():
                out = run(moved, xd)
        except Exception as err:
            msg = f"{type(err).__name__}: {err}"
            if dev == "meta" and not _DEVICE_MISMATCH.search(str(err)):
                # The meta device holds no values: code that reads values (.item(), numpy) cannot
                # run there. That is allowed; only CUDA can then check the device move.
                ck.skip("device meta", f"the plugin reads tensor values, which meta tensors do not hold "
                                       f"({msg.splitlines()[0]}); the device move is checked on CUDA only")
                continue
            ck.fail("device", f"after .to({dev!r}), forward on a {dev} input raised {msg} (tensors kept "
                              f"outside parameters/buffers, or created without device=?)")
        if not isinstance(out, torch.Tensor) or out.device.type != torch.device(dev).type:
            where = out.device if isinstance(out, torch.Tensor) else type(out).__name__
            ck.fail("device", f"after .to({dev!r}) and for an input on {dev}, the output is on {where}")
        if dev != "meta":
            ok, diff = _close(out.float().cpu(), cpu_out.float(), 1e-2)
            if not ok:
                ck.fail("device", f"the output on {dev} differs from the CPU output by up to {diff:.3g}")
        ck.ok(f"device {dev}")
    ck.ok("device")


def _check_bad_input(ck: _Checker, module: nn.Module, run, x: torch.Tensor, in_channels: int | None) -> None:
    cases = []
    if in_channels is not None:
        wrong = in_channels + 1
        cases.append((f"{wrong} channel(s) instead of {in_channels}",
                      torch.rand((x.shape[0], wrong, *x.shape[2:]), generator=torch.Generator().manual_seed(1))))
    else:
        ck.skip("bad input: channels", "the plugin declares no in_channels (it accepts any channel count)")
    cases.append(("a missing batch axis", x[0]))
    for what, bad in cases:
        try:
            with torch.no_grad():
                out = run(module, bad)
        except ValueError as err:
            if not str(err).strip():
                ck.fail("bad input", f"input with {what} raised ValueError without a message")
            continue
        except Exception as err:
            ck.fail("bad input", f"input of shape {_shape(bad)} ({what}) raised {type(err).__name__}: {err}; "
                                 f"expected ValueError saying what shape was expected")
        ck.fail("bad input", f"input of shape {_shape(bad)} ({what}) was accepted and gave output "
                             f"{_shape(out)}; expected ValueError saying what shape was expected")
    ck.ok("bad input")


def check_segmenter(segmenter, *, options: dict | None = None, name: str | None = None,
                    image_size: tuple[int, int] = (32, 48), batch_size: int = 2, seed: int = 0,
                    bad_options: Iterable[dict] = (), devices: str | Sequence[str] = "auto",
                    batch_tol: float = 1e-4) -> ContractReport:
    """Check a :class:`~certframe.interfaces.Segmenter` (instance or factory) against the contract.

    options: keyword arguments for the factory (ignored for an instance).
    image_size: (H, W) of the test images; non-square by default so swapped axes show.
        Use sizes the network supports (e.g. divisible by 2**depth for a UNet).
    devices: ``"auto"`` (meta, plus CUDA when available) or a list such as ``["cuda"]``.
    batch_tol: relative tolerance between batched and one-by-one outputs.
    Raises :class:`ContractError` on the first broken rule; returns a :class:`ContractReport`.
    """
    options = dict(options or {})
    ck = _Checker("segmenter", _name(segmenter, name))
    factory = segmenter if _is_factory(segmenter, nn.Module) else None
    seg = _build(ck, factory, options, seed) if factory else segmenter
    if not isinstance(seg, Segmenter):
        ck.fail("type", f"expected a certframe.interfaces.Segmenter, got {type(seg).__name__}")
    C, K = getattr(seg, "in_channels", None), getattr(seg, "num_classes", None)
    if not isinstance(C, int) or isinstance(C, bool) or C < 1:
        ck.fail("type", f"in_channels must be an int >= 1, got {C!r}")
    if not isinstance(K, int) or isinstance(K, bool) or K < 2:
        ck.fail("type", f"num_classes must be an int >= 2 (background + at least one class), got {K!r}")
    ck.ok("type")
    H, W = image_size

    def run(m, t):
        return m(t)

    def expected(t):
        return (t.shape[0], K, t.shape[-2], t.shape[-1])

    x = _images((batch_size, C, H, W), seed)
    out = _check_module(ck, seg, run, x, expected, batch_tol=batch_tol, devices=devices)
    noisy = _images((batch_size, C, H, W), seed + 1, noise=0.5)
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
    if labels.dtype != torch.int64 or tuple(labels.shape) != (batch_size, H, W):
        ck.fail("output shape", f"predict must give int64 [B, H, W] labels, got {labels.dtype} {_shape(labels)}")
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
    options = dict(options or {})
    ck = _Checker("denoiser", _name(denoiser, name))
    factory = denoiser if _is_factory(denoiser, nn.Module) else None
    den = _build(ck, factory, options, seed) if factory else denoiser
    if not isinstance(den, Denoiser):
        ck.fail("type", f"expected a certframe.interfaces.Denoiser, got {type(den).__name__}")
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


# --------------------------------------------------------------------------- datasets

def _check_sample(ck: _Checker, ds: SegmentationDataset, i: int, s) -> None:
    where = f"item {i}"
    if not isinstance(s, Sample):
        ck.fail("sample", f"{where} is a {type(s).__name__}, expected certframe.interfaces.Sample")
    if not isinstance(s.id, str) or not s.id:
        ck.fail("sample", f"{where} has id {s.id!r}, expected a non-empty str")
    where = f"item {i} (id {s.id!r})"
    img, mask = s.image, s.mask
    if not isinstance(img, torch.Tensor) or img.dim() != 3 or img.shape[0] != ds.in_channels:
        ck.fail("sample", f"{where}: image must be [C={ds.in_channels}, H, W], got {_shape(img)}")
    if img.dtype != torch.float32:
        ck.fail("sample", f"{where}: image dtype must be float32, got {img.dtype}")
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.int64:
        ck.fail("sample", f"{where}: mask must be an int64 tensor, got "
                          f"{mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__}")
    if tuple(mask.shape) != tuple(img.shape[1:]):
        ck.fail("sample", f"{where}: mask shape {_shape(mask)} differs from the image's [H, W] "
                          f"{list(img.shape[1:])}")
    if img.device.type != "cpu" or mask.device.type != "cpu":
        ck.fail("sample", f"{where}: tensors must be on the CPU (the engine moves them), got "
                          f"image on {img.device}, mask on {mask.device}")
    if not bool(torch.isfinite(img).all()):
        ck.fail("sample", f"{where}: image has NaN or infinite values")
    lo, hi = float(img.min()), float(img.max())
    if lo < 0.0 or hi > 1.0:
        ck.fail("sample", f"{where}: image values span [{lo:.4g}, {hi:.4g}], expected [0, 1] "
                          f"(noise is added in that space)")
    labels = sorted(set(torch.unique(mask).tolist()))
    if not set(labels) <= set(range(ds.num_classes)):
        ck.fail("sample", f"{where}: mask has labels {labels}, the data set declares classes "
                          f"{list(range(ds.num_classes))} ({', '.join(ds.class_names)})")


def _same_sample(a: Sample, b: Sample) -> bool:
    return (a.id == b.id and a.image.shape == b.image.shape and torch.equal(a.image, b.image)
            and torch.equal(a.mask, b.mask))


def check_dataset(dataset, *, options: dict | None = None, name: str | None = None, max_items: int = 4,
                  seed: int = 0, bad_options: Iterable[dict] = ()) -> ContractReport:
    """Check a :class:`~certframe.interfaces.SegmentationDataset` (instance or factory).

    max_items: how many items are read (spread over the data set, first and last included).
    """
    options = dict(options or {})
    ck = _Checker("dataset", _name(dataset, name))
    factory = dataset if _is_factory(dataset, SegmentationDataset) else None
    ds = _build(ck, factory, options, seed) if factory else dataset
    if not isinstance(ds, SegmentationDataset):
        ck.fail("type", f"expected a certframe.interfaces.SegmentationDataset, got {type(ds).__name__}")
    names = list(ds.class_names)
    if len(names) < 2 or len(set(names)) != len(names) or not all(isinstance(c, str) and c for c in names):
        ck.fail("type", f"class_names must be >= 2 distinct non-empty strings (background first), got {names}")
    C = ds.in_channels
    if not isinstance(C, int) or isinstance(C, bool) or C < 1:
        ck.fail("type", f"in_channels must be an int >= 1, got {C!r}")
    ck.ok("type")
    n = ck.call("length", "len()", len, ds)
    if n < 1:
        ck.fail("length", f"len() is {n}; an empty data set certifies nothing (wrong folder or split?)")
    ck.ok("length")
    if max_items >= n:
        indices = list(range(n))
    else:
        indices = sorted({round(j * (n - 1) / max(1, max_items - 1)) for j in range(max_items)})
    samples = {}
    for i in indices:
        s = ck.call("sample", f"dataset[{i}]", ds.__getitem__, i)
        _check_sample(ck, ds, i, s)
        samples[i] = s
    ck.ok("sample")
    ids = ck.call("ids", "item_ids()", ds.item_ids)
    ids = list(ids)
    if len(ids) != n:
        ck.fail("ids", f"item_ids() lists {len(ids)} id(s) for {n} items")
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if list(ids).count(i) > 1})[:5]
        ck.fail("ids", f"ids are not unique ({dup} repeat); they seed the noise draws and key run folders")
    for i, s in samples.items():
        if ids[i] != s.id:
            ck.fail("ids", f"item_ids()[{i}] is {ids[i]!r} but dataset[{i}].id is {s.id!r}")
    ck.ok("ids")
    for i, s in samples.items():
        if not _same_sample(s, ds[i]):
            ck.fail("determinism", f"reading item {i} twice gave different samples")
    if factory is not None:
        twin = _build(ck, factory, options, seed + 1)  # a different global seed must not matter
        if len(twin) != n:
            ck.fail("determinism", f"a second data set built with the same options has {len(twin)} items, "
                                   f"the first {n}")
        for i, s in samples.items():
            if not _same_sample(s, twin[i]):
                ck.fail("determinism", f"item {i} differs between two data sets built with the same options "
                                       f"{options}: randomness must come from a seed option, not global state")
    else:
        ck.skip("determinism: building", "an instance was given, not a factory")
    ck.ok("determinism")
    try:
        extra = ds[n]
    except IndexError:
        ck.ok("index range")
    except Exception as err:
        ck.fail("index range", f"dataset[{n}] (one past the end) raised {type(err).__name__}: {err}, "
                               f"expected IndexError (iteration relies on it)")
    else:
        ck.fail("index range", f"dataset[{n}] (one past the end of {n} items) returned "
                               f"{type(extra).__name__}, expected IndexError")
    ident = ck.call("identity", "identity()", ds.identity)
    if not isinstance(ident, dict):
        ck.fail("identity", f"identity() returned {type(ident).__name__}, expected a dict")
    try:
        json.dumps(ident)
    except (TypeError, ValueError) as err:
        ck.fail("identity", f"identity() is not JSON-serialisable ({err}); run manifests store it")
    ck.ok("identity")
    _check_bad_options(ck, factory, options, bad_options)
    return ck.report


# ------------------------------------------------------------------------- certifiers

class ContractVotes:
    """A :class:`~certframe.interfaces.VoteSource` with known per-pixel class probabilities.

    probs: float ``[K, H, W]``, each pixel a distribution over the K classes. Draw
    ``i`` of ``phase`` is a label map sampled from ``probs`` with a generator seeded
    from ``(seed, phase, i)``, so asking again gives the same draw. Every call is
    recorded (``calls``: ``(phase, start, n)``), and touching anything but
    ``counts`` and ``num_classes`` is recorded in ``misuse`` and raises.
    """

    def __init__(self, probs: torch.Tensor, seed: int = 0, device: str | torch.device = "cpu"):
        object.__setattr__(self, "_probs", probs.double())
        object.__setattr__(self, "_cum", probs.double().cumsum(0).to(device))
        object.__setattr__(self, "num_classes", int(probs.shape[0]))
        object.__setattr__(self, "_seed", int(seed))
        object.__setattr__(self, "_device", torch.device(device))
        object.__setattr__(self, "calls", [])
        object.__setattr__(self, "misuse", [])

    def counts(self, phase: str, n: int, start: int = 0) -> torch.Tensor:
        if not isinstance(n, int) or isinstance(n, bool) or n < 1 or not isinstance(start, int) or start < 0:
            self.misuse.append(f"counts({phase!r}, n={n!r}, start={start!r})")
            raise ValueError(f"counts needs int n >= 1 and int start >= 0, got n={n!r}, start={start!r}")
        self.calls.append((str(phase), start, n))
        K, H, W = self._probs.shape
        gen = torch.Generator().manual_seed(draw_seed(self._seed, "contract", str(phase), 0))
        u = torch.rand((start + n, H, W), generator=gen, dtype=torch.float64)[start:].to(self._device)
        labels = (u.unsqueeze(1) >= self._cum.unsqueeze(0)).sum(dim=1).clamp_(max=K - 1)  # [n, H, W]
        return torch.stack([(labels == k).sum(dim=0) for k in range(K)]).to(torch.int64)

    def __getattr__(self, item):
        self.misuse.append(item)
        raise AttributeError(f"the VoteSource contract offers only counts(phase, n, start) and num_classes; "
                             f"the certifier asked for {item!r}")

    def __setattr__(self, key, value):
        self.misuse.append(f"set {key}")
        raise AttributeError(f"a certifier must not modify the VoteSource (tried to set {key!r})")

    def draws(self) -> int:
        return sum(n for _, _, n in self.calls)

    def reused(self) -> str | None:
        """A description of the first draw asked for twice, or None."""
        seen: dict[str, list[tuple[int, int]]] = {}
        for phase, start, n in self.calls:
            for a, b in seen.get(phase, []):
                if start < b and a < start + n:
                    return (f"draws {max(a, start)}..{min(b, start + n) - 1} of phase {phase!r} were asked for "
                            f"twice (calls: {self.calls})")
            seen.setdefault(phase, []).append((start, start + n))
        return None


def _scenario(K: int, H: int, W: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pixel probabilities: left half unanimous for a class map M, right half split
    ``(0.5, 0.3, 0.2, 0, ...)`` (top class 0.5, below any tau). Returns (probs, M, unanimous)."""
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    M = ((yy // 2 + xx // 3) % K).to(torch.int64)
    unanimous = xx < W // 2
    probs = torch.zeros((K, H, W), dtype=torch.float64)
    probs.scatter_(0, M.unsqueeze(0), 1.0)
    split = torch.zeros(K, dtype=torch.float64)
    split[:3] = torch.tensor([0.5, 0.5] if K == 2 else [0.5, 0.3, 0.2], dtype=torch.float64)
    rolled = torch.stack([split.roll(int(k)) for k in range(K)])  # top class varies with M
    probs[:, ~unanimous] = rolled[M[~unanimous]].T
    return probs, M, unanimous


def _false_certification(n: int, tau: float, alpha: float) -> float:
    """P(a pixel with top-class probability 0.5 passes the uncorrected one-sided binomial test
    of H0: p <= tau at level alpha with n draws): 9e-8 at n=200, tau=0.6, alpha=0.01."""
    from scipy.stats import binom

    k = torch.arange(n + 2).double().numpy()
    passing = k[binom.sf(k - 1, n, tau) <= alpha]
    return float(binom.sf(passing.min() - 1, n, 0.5)) if passing.size else 0.0


def check_certifier(certifier, *, options: dict | None = None, name: str | None = None,
                    num_classes: int = 3, image_size: tuple[int, int] = (12, 16), sigma: float = 0.5,
                    n0: int = 20, n: int = 200, alpha: float = 0.01, taus: Sequence[float] = (0.6, 0.75, 0.9),
                    seed: int = 0, bad_options: Iterable[dict] = (),
                    devices: str | Sequence[str] = "auto") -> ContractReport:
    """Check a :class:`~certframe.interfaces.Certifier` (instance or factory) against the contract.

    The certifier is run on a :class:`ContractVotes` whose left half votes unanimously
    for a class map and whose right half has top-class probability 0.5 (below every tau).
    With the default n = 200 and alpha = 0.01 a sound certifier certifies none of the
    right half except with probability < 1e-5 (9e-8 per pixel at tau = 0.6 even without a
    multiple-testing correction), and every correct test (Cohen's
    Clopper-Pearson, SegCertify's binomial test) certifies the left half at every tau.
    """
    options = dict(options or {})
    ck = _Checker("certifier", _name(certifier, name))
    factory = certifier if _is_factory(certifier, Certifier) else None
    cert = _build(ck, factory, options, seed) if factory else certifier
    if not isinstance(cert, Certifier):
        ck.fail("type", f"expected a certframe.interfaces.Certifier, got {type(cert).__name__}")
    if not isinstance(getattr(cert, "name", None), str) or not cert.name:
        ck.fail("type", f"name must be a non-empty str (it labels result rows), got {getattr(cert, 'name', None)!r}")
    ck.ok("type")
    K = int(num_classes)
    H, W = image_size
    request = CertifyRequest(sigma=float(sigma), n0=int(n0), n=int(n), alpha=float(alpha), taus=tuple(taus))
    probs, M, unanimous = _scenario(K, H, W)

    def run(device: str = "cpu", vote_seed: int = seed):
        votes = ContractVotes(probs, seed=vote_seed, device=device)
        try:
            certs = cert.certify(votes, request)
        except ContractError:
            raise
        except Exception as err:
            if votes.misuse:
                ck.fail("votes only", f"the certifier used {votes.misuse[0]!r} of the vote source ({err}); only "
                                      f"counts(phase, n, start) and num_classes are part of VoteSource")
            ck.fail("certificates", f"certify on a {device} vote source raised {type(err).__name__}: {err}")
        if votes.misuse:
            ck.fail("votes only", f"the certifier used {votes.misuse[0]!r} of the vote source; only "
                                  f"counts(phase, n, start) and num_classes are part of VoteSource")
        return votes, certs

    votes, certs = run()
    if not isinstance(certs, (list, tuple)) or len(certs) != len(request.taus):
        got = len(certs) if isinstance(certs, (list, tuple)) else type(certs).__name__
        ck.fail("certificates", f"expected a list of {len(request.taus)} certificates (one per tau "
                                f"{list(request.taus)}), got {got}")
    from certframe.results import Certificate

    for tau, c in zip(request.taus, certs):
        if not isinstance(c, Certificate):
            ck.fail("certificates", f"expected certframe.results.Certificate, got {type(c).__name__}")
        if not math.isclose(c.tau, tau, rel_tol=0, abs_tol=1e-12):
            ck.fail("certificates", f"certificates must follow the request's taus {list(request.taus)} in order; "
                                    f"got tau {c.tau} where {tau} was expected")
        if not math.isclose(c.sigma, request.sigma) or not math.isclose(c.alpha, request.alpha):
            ck.fail("certificates", f"certificate at tau={tau} carries sigma={c.sigma}, alpha={c.alpha}; "
                                    f"the request has sigma={request.sigma}, alpha={request.alpha}")
    ck.ok("certificates")
    for tau, c in zip(request.taus, certs):
        lab = c.labels
        if not isinstance(lab, torch.Tensor) or lab.dtype != torch.int64 or tuple(lab.shape) != (H, W):
            ck.fail("labels", f"at tau={tau}: expected int64 [{H}, {W}] labels, got "
                              f"{getattr(lab, 'dtype', type(lab).__name__)} {_shape(lab)}")
        if lab.device.type != "cpu":
            ck.fail("labels", f"at tau={tau}: votes on the CPU gave labels on {lab.device}")
        values = set(torch.unique(lab).tolist())
        allowed = {ABSTAIN, *range(K)}
        if not values <= allowed:
            ck.fail("labels", f"at tau={tau}: labels {sorted(values)} include {sorted(values - allowed)}; "
                              f"allowed are ABSTAIN ({ABSTAIN}) and the classes 0..{K - 1}")
    ck.ok("labels")
    for tau, c in zip(request.taus, certs):
        expected = request.sigma * float(norm.ppf(tau))
        if not math.isclose(float(c.radius), expected, rel_tol=1e-9, abs_tol=1e-12):
            ck.fail("radius", f"at sigma={request.sigma}, tau={tau} the radius must be sigma * Phi^-1(tau) "
                              f"= {expected:.6g}, got {float(c.radius):.6g}")
    ck.ok("radius")
    reused = votes.reused()
    if reused:
        ck.fail("votes only", f"{reused}: selection and estimation need independent draws, else the "
                              f"test is biased and the guarantee void")
    if votes.draws() == 0:
        ck.fail("votes only", "the certifier took no draws from the vote source: certificates must come "
                              "from the votes")
    for tau, c in zip(request.taus, certs):
        if c.num_samples != votes.draws():
            ck.fail("votes only", f"at tau={tau}: num_samples is {c.num_samples}, but {votes.draws()} draws were "
                                  f"taken from the vote source ({votes.calls})")
    ck.ok("votes only")
    _, again = run()
    for tau, a, b in zip(request.taus, certs, again):
        if not torch.equal(a.labels, b.labels) or a.radius != b.radius:
            diff = int((a.labels != b.labels).sum())
            ck.fail("determinism", f"at tau={tau}, two runs on the same votes differ in {diff} pixel(s): "
                                   f"draw nothing outside the vote source (no torch.rand, no numpy random)")
    ck.ok("determinism")
    for tau, c in zip(request.taus, certs):
        left = c.labels[unanimous]
        certified = left != ABSTAIN
        wrong = int((left[certified] != M[unanimous][certified]).sum())
        if wrong:
            ck.fail("follows votes", f"at tau={tau}: {wrong} pixel(s) whose {request.n0 + request.n} draws all "
                                     f"voted one class were certified as another class")
        if not bool(certified.any()):
            ck.fail("follows votes", f"at tau={tau}: every pixel abstains although all "
                                     f"{request.n0 + request.n} draws of half the image voted one class "
                                     f"(n={request.n}, alpha={request.alpha})")
        right = c.labels[~unanimous]
        bad = int((right != ABSTAIN).sum())
        if bad:
            bound = _false_certification(request.n, tau, request.alpha)
            ck.fail("abstains without majority", f"at tau={tau}: {bad} of {right.numel()} pixel(s) whose top class "
                                                 f"has probability 0.5 were certified; even an uncorrected "
                                                 f"binomial test at level alpha={request.alpha} certifies such a "
                                                 f"pixel with probability {bound:.2g} at n={request.n}")
    ck.ok("follows votes")
    ck.ok("abstains without majority")
    for tau, c in zip(request.taus, certs):
        if c.pvalues is not None:
            p = c.pvalues
            if tuple(p.shape) != (H, W) or not bool(((p >= 0) & (p <= 1)).all()):
                ck.fail("extras", f"at tau={tau}: pvalues must be [H, W] in [0, 1], got {_shape(p)} "
                                  f"in [{float(p.min()):.3g}, {float(p.max()):.3g}]")
        if c.pixel_radius is not None:
            r = c.pixel_radius.double().cpu()
            if tuple(r.shape) != (H, W) or not bool(torch.isfinite(r).all()) or bool((r < 0).any()):
                ck.fail("extras", f"at tau={tau}: pixel_radius must be finite, >= 0, [H, W]; got {_shape(r)}")
            short = (c.labels.cpu() != ABSTAIN) & (r < float(c.radius) - 1e-9)
            if bool(short.any()):
                ck.fail("extras", f"at tau={tau}: {int(short.sum())} certified pixel(s) have pixel_radius below "
                                  f"the certificate's radius {float(c.radius):.4g}")
    ck.ok("extras")
    want_cuda = (devices == "auto" and torch.cuda.is_available()) or (devices != "auto" and "cuda" in devices)
    if want_cuda:
        _, cuda_certs = run("cuda")
        for tau, a, b in zip(request.taus, certs, cuda_certs):
            if b.labels.device.type != "cuda":
                ck.fail("device", f"at tau={tau}: votes on CUDA gave labels on {b.labels.device}")
            if not torch.equal(a.labels, b.labels.cpu()):
                ck.fail("device", f"at tau={tau}: the same votes on CUDA gave other labels than on the CPU")
        ck.ok("device cuda")
        ck.ok("device")
    else:
        ck.skip("device cuda", "CUDA is not available" if not torch.cuda.is_available() else "not asked for")
    _check_bad_options(ck, factory, options, bad_options)
    return ck.report


# ------------------------------------------------------------------------------- dispatch

_CHECKS = {"segmenter": check_segmenter, "denoiser": check_denoiser, "dataset": check_dataset,
           "certifier": check_certifier}


def check_plugin(kind: str, target: Any, *, options: dict | None = None, registry=None,
                 **kwargs) -> ContractReport:
    """Check one plugin of ``kind`` (segmenter, denoiser, dataset, certifier).

    target: a registered name (looked up in ``registry``, default
        :func:`certframe.registry.get_registry`, and built through ``Registry.create``
        so the option checks of the CLI apply), a factory, or an instance.
    kwargs: passed to the kind's ``check_*`` function.
    """
    if kind not in _CHECKS:
        raise ValueError(f"no contract for plugin kind {kind!r}; kinds with a contract: {', '.join(_CHECKS)}")
    check = _CHECKS[kind]
    if isinstance(target, str):
        from certframe.registry import get_registry

        registry = registry or get_registry()
        entry = registry.get(kind, target)

        def factory(**opts):
            return registry.create(kind, target, **opts)

        provider = " ".join(p for p in (entry.distribution.strip("()"), entry.version) if p)
        kwargs.setdefault("name", f"{target!r} ({provider})")
        return check(factory, options=options, **kwargs)
    return check(target, options=options, **kwargs)
