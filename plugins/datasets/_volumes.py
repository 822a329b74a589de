"""Preprocessing of 3-D volumes before any noise: intensity window, spacing, fixed shape.

Every volume data set yields images ``[C, D, H, W]`` float32 in ``[0, 1]``: the
certificate's radius is an L2 norm in that space, over all voxels of the whole
volume, so the map from scanner units to ``[0, 1]`` is part of what a certificate
means and is recorded in the data set's ``identity()`` (hence in the run manifest).

* :class:`Window` maps intensities to ``[0, 1]``:

  - ``"ct:L,W"``: a fixed window of level (centre) ``L`` and width ``W`` in the
    scanner's units (Hounsfield units for CT): ``lo = L - W/2`` -> 0, ``hi = L + W/2``
    -> 1, linear in between, clipped outside. A radius ``r`` then equals
    ``r * W`` units: ``"ct:-300,1400"`` maps -1000 HU to 0 and 400 HU to 1, and
    ``r = 0.1`` is 140 HU of L2 norm over the volume.
  - ``"percentile:a,b"``: per volume and per channel, the ``a``-th percentile -> 0 and
    the ``b``-th -> 1 (MR, whose units are arbitrary); a radius is then a fraction of
    that volume's own intensity range.

* :func:`resample` brings a volume to a target voxel spacing (trilinear for images,
  nearest neighbour for label maps) on an axis-aligned grid (after canonical
  orientation, see :mod:`certframe.plugins.datasets._nifti`).
* :func:`pad_or_crop` brings it to a fixed shape (centred), so that volumes batch.

MONAI does the fixed window (``ScaleIntensityRange``), the percentiles (its numpy / torch
``percentile``, numpy above a million voxels) and the centred crop/pad
(``ResizeWithPadOrCrop``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

WINDOW_HELP = 'expected "ct:LEVEL,WIDTH" (e.g. "ct:-300,1400") or "percentile:LOW,HIGH" (e.g. "percentile:0.5,99.5")'


@dataclass(frozen=True)
class Window:
    """An intensity window to ``[0, 1]``: ``kind`` "ct" (a, b = level, width) or
    "percentile" (a, b = low, high percentiles in [0, 100])."""

    kind: str
    a: float
    b: float

    @classmethod
    def parse(cls, spec: str | Window) -> Window:
        """``"ct:-300,1400"`` or ``"percentile:0.5,99.5"`` -> Window (ValueError otherwise)."""
        if isinstance(spec, Window):
            return spec
        text = str(spec).strip().lower()
        kind, _, rest = text.partition(":")
        try:
            a, b = (float(v) for v in rest.split(","))
        except ValueError:
            raise ValueError(f"window {spec!r}: {WINDOW_HELP}") from None
        if kind == "ct":
            if not (math.isfinite(a) and math.isfinite(b) and b > 0):
                raise ValueError(f"window {spec!r}: the width must be > 0 and both numbers finite")
        elif kind == "percentile":
            if not 0.0 <= a < b <= 100.0:
                raise ValueError(f"window {spec!r}: percentiles must satisfy 0 <= LOW < HIGH <= 100")
        else:
            raise ValueError(f"window {spec!r}: unknown kind {kind!r}; {WINDOW_HELP}")
        return cls(kind, a, b)

    @property
    def spec(self) -> str:
        return f"{self.kind}:{self.a:g},{self.b:g}"

    def apply(self, volume: torch.Tensor) -> torch.Tensor:
        """``[C, *S]`` raw intensities -> float32 ``[C, *S]`` in ``[0, 1]`` (clipped)."""
        from monai.transforms import ScaleIntensityRange

        x = volume.float()
        if self.kind == "ct":
            lo, hi = self.a - self.b / 2, self.a + self.b / 2
            out = ScaleIntensityRange(lo, hi, 0.0, 1.0, clip=True)(x)
        else:
            out = torch.cat([self._percentile_window(c) for c in x.split(1)])
        return plain(out).float().clamp_(0.0, 1.0).contiguous()

    def _percentile_window(self, channel: torch.Tensor) -> torch.Tensor:
        """One channel ``[1, *S]``: percentile a -> 0, b -> 1, clipped. When the two percentiles
        coincide (a constant channel, or one mostly of one value) there is no range to scale:
        voxels above it become 1, the others 0."""
        from monai.transforms.utils_pytorch_numpy_unification import percentile

        lo, hi = (float(v) for v in percentile(channel.flatten(), torch.tensor([self.a, self.b])))
        if hi <= lo:
            return (channel > lo).float()
        return ((channel - lo) / (hi - lo)).clamp_(0.0, 1.0)

    def identity(self) -> dict:
        """What the window is, and what a radius of 1.0 in ``[0, 1]`` space means."""
        if self.kind == "ct":
            lo, hi = self.a - self.b / 2, self.a + self.b / 2
            return {"window": self.spec, "kind": "fixed", "level": self.a, "width": self.b, "range": [lo, hi],
                    "radius_unit": f"1.0 in [0, 1] space = {self.b:g} scanner units (HU for CT); L2 over all voxels"}
        return {"window": self.spec, "kind": "percentile", "percentiles": [self.a, self.b],
                "radius_unit": (f"1.0 in [0, 1] space = each volume's own p{self.b:g} - p{self.a:g} "
                                f"intensity range (per channel); L2 over all voxels")}


def plain(t: torch.Tensor) -> torch.Tensor:
    """A MONAI ``MetaTensor`` (what MONAI transforms return) as a plain ``torch.Tensor``."""
    return t.as_subclass(torch.Tensor) if type(t) is not torch.Tensor else t


def as_triple(value, what: str, cast=float) -> tuple | None:
    """None, a number or three numbers -> None or a 3-tuple (ValueError naming ``what``)."""
    if value is None:
        return None
    values = [value] * 3 if isinstance(value, (int, float)) and not isinstance(value, bool) else list(value)
    try:
        out = tuple(cast(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number or three numbers [D, H, W], got {value!r}") from None
    if len(out) != 3 or not all(v > 0 for v in out):
        raise ValueError(f"{what} must be a positive number or three positive numbers [D, H, W], got {value!r}")
    return out


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, ...]:
    """The shape that covers the same extent at ``target`` spacing: ``round(n * s / t)``, at least 1."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target))


def resample(volume: torch.Tensor, spacing: Sequence[float], target: Sequence[float] | None,
             labels: bool = False) -> torch.Tensor:
    """``[C, D, H, W]`` at voxel ``spacing`` (mm, in D, H, W order) -> the same extent at ``target``.

    Images: trilinear (``align_corners=False``: voxel centres of both grids span the
    same field of view), so values stay in the input's range. Label maps (``labels=True``,
    integer ``[C, D, H, W]``): nearest neighbour, labels stay labels. ``target=None``
    or an equal spacing returns the input unchanged.
    """
    if target is None:
        return volume
    shape = resampled_shape(volume.shape[1:], spacing, target)
    if shape == tuple(volume.shape[1:]):
        return volume
    if labels:
        return F.interpolate(volume[None].float(), size=shape, mode="nearest-exact")[0].to(volume.dtype)
    return F.interpolate(volume[None].float(), size=shape, mode="trilinear", align_corners=False)[0]


def pad_or_crop(volume: torch.Tensor, shape: Sequence[int] | None) -> torch.Tensor:
    """``[C, *S]`` -> ``[C, *shape]``, centred: crop what is larger, pad what is smaller with 0
    (for images 0 is the window's low end, e.g. air in CT; for labels the background)."""
    if shape is None or tuple(volume.shape[1:]) == tuple(shape):
        return volume
    from monai.transforms import ResizeWithPadOrCrop

    out = ResizeWithPadOrCrop(tuple(int(s) for s in shape), mode="constant")(volume)
    return plain(out).contiguous()


def as_int_labels(array: np.ndarray, where: str) -> np.ndarray:
    """A label map's voxels as int64 (floats must hold whole numbers: NIfTI often stores labels as floats)."""
    if np.issubdtype(array.dtype, np.floating):
        rounded = np.rint(array)
        if not np.array_equal(rounded, array):
            raise ValueError(f"{where}: the label map holds non-integer values (e.g. "
                             f"{float(array[rounded != array].flat[0])}); expected class indices")
        array = rounded
    return array.astype(np.int64)
