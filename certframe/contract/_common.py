"""What every contract check shares: the rules, the error and report, the checker's
bookkeeping (with :meth:`_Checker.expect_error`, the one place that demands a clear
error), the helpers for starting a check (:func:`_begin`: naming, building, type),
bad options, test images and closeness, and the module checks segmenters and
denoisers share (outputs, devices, bad input).
"""
from __future__ import annotations

import copy
import inspect
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

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
    """Bookkeeping shared by the checks: naming, failing, passing, skipping, expecting errors."""

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

    def expect_error(self, rule: str, fn: Callable[[], object], errors: type | tuple[type, ...], *,
                     what: str, expected: str, accepted: Callable[[object], str],
                     unnamed: str | None = None) -> None:
        """Run plugin code that must refuse with one of ``errors``; anything else fails ``rule``.

        An expected error with an empty message fails with ``"{unnamed} raised <type> without
        a message"`` (the message is not checked when ``unnamed`` is None); another exception
        with ``"{what} raised <type>: <message>{expected}"``; a return with ``accepted(result)``.
        """
        try:
            result = fn()
        except errors as err:
            if unnamed is not None and not str(err).strip():
                self.fail(rule, f"{unnamed} raised {type(err).__name__} without a message")
            return
        except Exception as err:
            self.fail(rule, f"{what} raised {type(err).__name__}: {err}{expected}")
        self.fail(rule, accepted(result))


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


def _begin(kind: str, target, name: str | None, options: dict | None, seed: int, interface: type,
           factory_unless: type | None = None) -> tuple[_Checker, Callable | None, object, dict]:
    """Start a check of ``target`` (an instance, or a factory: anything callable that is not an
    instance of ``factory_unless``, default ``interface``): name it, build it under ``seed`` and
    check that it is an ``interface``. Returns the checker, the factory (None for an instance),
    the plugin and the options."""
    options = dict(options or {})
    ck = _Checker(kind, _name(target, name))
    factory = target if _is_factory(target, factory_unless or interface) else None
    plugin = _build(ck, factory, options, seed) if factory else target
    if not isinstance(plugin, interface):
        ck.fail("type", f"expected a certframe.interfaces.{interface.__name__}, got {type(plugin).__name__}")
    return ck, factory, plugin, options


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
        ck.expect_error("bad options", lambda: factory(**opts), _CLEAR_ERRORS, what=f"options {bad}",
                        expected="; expected ValueError, TypeError, KeyError or FileNotFoundError with a "
                                 "clear message",
                        accepted=lambda _: f"options {bad} were accepted; expected a clear error",
                        unnamed=f"options {bad}")
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
    expected = "; expected ValueError saying what shape was expected"
    for what, bad in cases:
        given = f"input of shape {_shape(bad)} ({what})"
        with torch.no_grad():
            ck.expect_error("bad input", lambda: run(module, bad), ValueError, what=given, expected=expected,
                            accepted=lambda out: f"{given} was accepted and gave output {_shape(out)}{expected}",
                            unnamed=f"input with {what}")
    ck.ok("bad input")
