"""Input checks with errors that say what was expected and what came.

Two kinds live here, one copy of each:

* argument checks (:func:`check_int`, :func:`check_number`, :func:`check_seed`,
  :func:`check_keys`, :func:`check_output_folder`, :func:`resolve_device`): every command,
  the run specification (:mod:`certframe.run.spec`) and plugins call them on their options
  before anything is created, loaded or sampled; an invalid value raises
  :class:`OptionError` whose message names the option, the value given and what is
  allowed ("--size must be an integer >= 1 (the training resolution in pixels), got 0");
* data checks (:func:`validate_image`, :func:`validate_mask`, :func:`validate_sample`,
  :func:`require_images`) and the per-batch checks of the models' outputs
  (:class:`BatchChecks`).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

SEED_LIMIT = 2 ** 64
"""Seeds lie in ``[0, 2**64)``: the noise stream's key (:class:`~certframe.interfaces.NoiseKey`) and torch's
generators take 64-bit seeds."""


class OptionError(ValueError):
    """An option is invalid: the message names the option, the value given and what is allowed."""


def _meaning(meaning: str | None) -> str:
    return f" ({meaning})" if meaning else ""


def check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None, *,
              meaning: str | None = None) -> int:
    """An integer (not a bool; an integral float such as 4.0 is taken) in ``[minimum, maximum]``.

    The error reads "{name} must be an integer >= 1 (meaning), got 0".
    """
    ok = not isinstance(value, (bool, str)) and isinstance(value, (int, float))
    ok = ok and (isinstance(value, int) or (math.isfinite(value) and int(value) == value))
    ok = ok and (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    if not ok:
        if minimum is not None and maximum is not None:
            allowed = f"an integer in [{minimum}, {maximum}]"
        elif minimum is not None:
            allowed = f"an integer >= {minimum}"
        elif maximum is not None:
            allowed = f"an integer <= {maximum}"
        else:
            allowed = "an integer"
        raise OptionError(f"{name} must be {allowed}{_meaning(meaning)}, got {value!r}")
    return int(value)


def check_number(name: str, value: Any, *, above: float | None = None, minimum: float | None = None,
                 below: float | None = None, maximum: float | None = None, meaning: str | None = None) -> float:
    """A finite number (not a bool) with optional bounds: ``> above``, ``>= minimum``, ``< below``, ``<= maximum``.

    The error reads "{name} must be a finite number > 0 (meaning), got 0.0" or, with two
    bounds, "{name} must be a number in [0, 1) (meaning), got 1.0".
    """
    try:
        number = float(value) if not isinstance(value, (bool, str)) else math.nan
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    ok = math.isfinite(number) and (above is None or number > above) and (minimum is None or number >= minimum) \
        and (below is None or number < below) and (maximum is None or number <= maximum)
    if not ok:
        low = f"[{minimum:g}" if minimum is not None else f"({above:g}" if above is not None else None
        high = f"{maximum:g}]" if maximum is not None else f"{below:g})" if below is not None else None
        if low and high:
            allowed = f"a number in {low}, {high}"
        elif low:
            allowed = f"a finite number {'>=' if minimum is not None else '>'} {low[1:]}"
        elif high:
            allowed = f"a finite number {'<=' if maximum is not None else '<'} {high[:-1]}"
        else:
            allowed = "a finite number"
        raise OptionError(f"{name} must be {allowed}{_meaning(meaning)}, got {value!r}")
    return number


def check_seed(value: Any, name: str = "seed") -> int:
    """A seed: an int in ``[0, 2**64)`` (:data:`SEED_LIMIT`); what :class:`~certframe.interfaces.NoiseKey` takes."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < SEED_LIMIT:
        raise OptionError(f"{name} must be an int in [0, 2**64), got {value!r} (the seeds are 64-bit)")
    return int(value)


def check_bool(name: str, value: Any) -> bool:
    """``True`` / ``False`` (a JSON ``true`` / ``false`` given as ``KEY=true``)."""
    if not isinstance(value, bool):
        raise OptionError(f"{name} must be true or false, got {value!r}")
    return value


def check_keys(given: Mapping | Iterable[str], valid: Iterable[str], what: str, owner: str = "") -> None:
    """Refuse a key of ``given`` that is not in ``valid``, listing the valid ones.

    what: how the keys are called ("falsify option"); owner: whose they are ("pgdl2"): the error
    reads "unknown falsify option 'foo'; valid options: a, b, c" or "unknown attack option 'foo'
    of pgdl2; valid options: ...".
    """
    valid = sorted(set(valid))
    unknown = [key for key in given if key not in valid]
    if unknown:
        names = ", ".join(repr(k) for k in unknown)
        plural = "s" if len(unknown) > 1 else ""
        of = f" of {owner}" if owner else ""
        raise OptionError(f"unknown {what}{plural} {names}{of}; valid options: {', '.join(valid) or 'none'}")


def check_output_folder(path: str | Path, name: str = "--output", what: str = "a run folder") -> Path:
    """``path`` is a folder, or does not exist yet: an existing regular file is refused, and left as it is."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OptionError(f"{name} {str(path)!r} is an existing file; {what} is expected (the file is left as "
                          f"it is)")
    return path


def resolve_device(device: str | torch.device = "auto", name: str = "device") -> torch.device:
    """``auto`` picks CUDA when available, else CPU; ``cpu``, ``cuda``, ``cuda:N`` (``mps``, ``xpu``) as asked.

    Checked before anything is loaded: a device torch does not know, or CUDA asked for on a
    machine without it, raises :class:`OptionError` naming the value (``name`` is how the
    option is called, e.g. "device").
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise OptionError(f"{name} {str(device)!r} is not a device torch knows: expected auto, cpu, cuda or "
                          f"cuda:N") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise OptionError(f"{name} {str(device)!r} asked for, but CUDA is not available here: expected cpu or auto")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise OptionError(f"{name} {str(device)!r} asked for, but this machine has {torch.cuda.device_count()} "
                          f"CUDA device(s): expected cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    if dev.type not in ("cpu", "cuda", "mps", "xpu"):
        raise OptionError(f"{name} {str(device)!r} is not supported: expected auto, cpu, cuda or cuda:N")
    return dev


def validate_image(image: torch.Tensor, *, in_channels: int | None = None, name: str = "image") -> None:
    """An image is float ``[C, H, W]`` (or a volume ``[C, D, H, W]``) with finite values in ``[0, 1]``."""
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [C, H, W] or [C, D, H, W], got {type(image).__name__}")
    if image.dim() not in (3, 4):
        raise ValueError(f"{name} must have shape [C, H, W] (an image) or [C, D, H, W] (a volume), "
                         f"got shape {tuple(image.shape)}")
    if not image.is_floating_point():
        raise ValueError(f"{name} must be a float tensor in [0, 1], got dtype {image.dtype}")
    if in_channels is not None and image.shape[0] != in_channels:
        raise ValueError(f"{name} has {image.shape[0]} channel(s), the model expects {in_channels}")
    finite = torch.isfinite(image)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise ValueError(f"{name} has {bad} NaN or infinite value(s); expected finite values in [0, 1]")
    lo, hi = float(image.min()), float(image.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"{name} values must lie in [0, 1] (noise is added in that space), "
                         f"got range [{lo:.4g}, {hi:.4g}]")


def validate_mask(mask: torch.Tensor, image_hw: Sequence[int], class_names: Sequence[str],
                  *, name: str = "mask") -> None:
    """A mask is integer ``[H, W]`` (``[D, H, W]`` for a volume) of the image's size with declared labels only.

    image_hw: the image's spatial size ``(H, W)`` or ``(D, H, W)``.
    """
    axes = "[H, W]" if len(image_hw) == 2 else "[D, H, W]"
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {axes}, got {type(mask).__name__}")
    if mask.dim() != len(image_hw):
        raise ValueError(f"{name} must have shape {axes} = {tuple(image_hw)} like its image, "
                         f"got shape {tuple(mask.shape)}")
    if mask.is_floating_point():
        raise ValueError(f"{name} must hold integer labels, got dtype {mask.dtype}")
    if tuple(mask.shape) != tuple(image_hw):
        raise ValueError(f"{name} size {tuple(mask.shape)} differs from the image size {tuple(image_hw)}")
    labels = set(torch.unique(mask).tolist())
    declared = set(range(len(class_names)))
    if not labels <= declared:
        raise ValueError(f"{name} has labels {sorted(labels)}, the dataset declares classes "
                         f"{sorted(declared)} ({', '.join(class_names)})")


def validate_sample(sample, class_names: Sequence[str], in_channels: int | None = None) -> None:
    """Check one :class:`~certframe.interfaces.Sample`; errors name the sample id.

    (This module imports nothing of certframe: :mod:`certframe.interfaces` uses its argument checks.)
    """
    try:
        validate_image(sample.image, in_channels=in_channels)
        validate_mask(sample.mask, sample.image.shape[1:], class_names)
    except (ValueError, TypeError) as err:
        raise type(err)(f"sample {sample.id!r}: {err}") from None


# ------------------------------------------------------------ runtime checks of the models

def require_images(dataset, what: str, name: str | None = None) -> None:
    """Raise ValueError unless ``dataset`` gives 2-D images ``[C, H, W]`` (read from its first item).

    For the parts of certframe that are 2-D only (``what``, e.g. "certframe train denoiser trains
    2-D denoisers"): a volume data set is refused here, before any model is built, with the
    data set's ``name`` and the shape it gives, instead of failing deep inside a 2-D model.
    """
    if len(dataset) == 0:
        return
    shape = tuple(dataset[0].image.shape)
    if len(shape) == 3:
        return
    source = f"the dataset {name!r}" if name else "the data set"
    kind = "volumes" if len(shape) == 4 else f"{len(shape)}-D items"
    layout = " ([C, D, H, W])" if len(shape) == 4 else ""
    raise ValueError(f"{what} on images [C, H, W]; {source} gives {kind} of shape {list(shape)}{layout}. "
                     f"Volumes are certified with the none denoiser (docs/volumes.md)")


class ModelOutputError(ValueError):
    """A model misbehaved while votes were counted (non-finite outputs, labels out of range,
    outputs on another device). The message names the plugin, the image id and what was wrong."""


class BatchChecks:
    """Checks of every batch of the Monte-Carlo loop that cost nothing measurable.

    ``finite(tensor, source, what)``: every value is finite. Computed as ONE
    :func:`torch.aminmax` pass: the minimum and maximum propagate NaN and are +-inf
    exactly when an infinite value is present, so both are finite exactly when every
    value is; no temporary the size of the tensor and, unlike a sum, no overflow of
    large finite values (a float64 sum would be exact too, but costs about 100x more on
    CPU: 120 ms for a 32 x 2 x 256 x 256 batch, half a UNet forward pass).
    ``flag(bad, source, what)``: record a failed check given as a bool tensor (0-dim).
    ``same_device(out, inp, source, what)``: the output lies on the input's device
    (tensor metadata only; raises at once).

    The flags accumulate in one int64 bit mask on the tensors' device: no host
    synchronisation per batch (on CUDA a ``bool()`` per batch would stall the pipeline).
    :meth:`raise_pending` reads the mask once, at the end of each
    :meth:`~certframe.core.sampler.NoiseVoter.counts` call, and raises one
    :class:`ModelOutputError` naming every failed check. CPU and CUDA run the same code,
    so the CPU tests exercise the CUDA logic. ``source`` names the plugin ("the segmenter
    MonaiSegmenter"); the voter adds the image id and the draws.
    """

    def __init__(self):
        self._names: list[tuple[str, str]] = []     # bit i of the mask -> (source, what)
        self._details: dict[int, object] = {}
        self._mask: torch.Tensor | None = None

    def flag(self, bad: torch.Tensor, source: str, what: str, detail=None) -> None:
        """Record ``bad`` (a 0-dim bool tensor, on any device) as a failure of check (source, what).

        detail: optional callable returning a string for the error message (called only on failure).
        """
        key = (source, what)
        if key not in self._names:
            if len(self._names) == 63:
                raise RuntimeError("BatchChecks holds at most 63 distinct checks")
            self._names.append(key)
        bit = self._names.index(key)
        if detail is not None:
            self._details[bit] = detail
        value = bad.to(torch.int64) << bit
        self._mask = value if self._mask is None else self._mask | value.to(self._mask.device)

    @torch.compiler.disable
    def finite(self, tensor: torch.Tensor, source: str, what: str) -> None:
        low, high = torch.aminmax(tensor.detach())
        self.flag(~(torch.isfinite(low) & torch.isfinite(high)), source,
                  f"non-finite {what} (NaN or inf; expected finite values)")

    @staticmethod
    def same_device(out: torch.Tensor, inp: torch.Tensor, source: str, what: str) -> None:
        if out.device != inp.device:
            raise ModelOutputError(f"{source} returned {what} on {out.device}, its input was on {inp.device}: "
                                   f"a model must return its output on its input's device")

    def reset(self) -> None:
        self._mask, self._details = None, {}

    def raise_pending(self) -> None:
        """Read the flags (one host read) and clear them; raise if any check failed since the last call."""
        mask, details, self._mask, self._details = self._mask, self._details, None, {}
        if mask is None:
            return
        value = int(mask)
        if value:
            failed = []
            for bit, (source, what) in enumerate(self._names):
                if value >> bit & 1:
                    extra = f" ({details[bit]()})" if bit in details else ""
                    failed.append(f"{source} returned {what}{extra}")
            raise ModelOutputError("; ".join(failed))
