"""Input checks with errors that say what was expected and what came."""
from __future__ import annotations

from typing import Sequence

import torch

from certframe.interfaces import Sample


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


def validate_sample(sample: Sample, class_names: Sequence[str], in_channels: int | None = None) -> None:
    """Check one :class:`Sample`; errors name the sample id."""
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
    :meth:`~certframe.sampler.NoiseVoter.counts` call, and raises one
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
