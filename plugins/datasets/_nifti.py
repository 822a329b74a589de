"""Reading NIfTI volumes with nibabel (the optional extra ``certframe[nifti]``), in one
canonical axis order.

Axis order. Every volume is turned to the closest canonical orientation, RAS+
(``nibabel.as_closest_canonical``: axis permutations and flips only, no
interpolation, so no voxel value changes), and then to the tensor order
``[C, D, H, W]`` = ``[channel, S, A, R]``:

* ``D`` runs inferior -> superior (the index of an axial slice, feet to head),
* ``H`` runs posterior -> anterior,
* ``W`` runs the patient's left -> right (a flip of ``W`` is a left-right mirror).

So ``tensor[c, k, j, i]`` is the canonical voxel ``(i, j, k)``, and the voxel spacing
in tensor order is ``(zoom_S, zoom_A, zoom_R)`` in mm. An oblique acquisition stays
oblique: its nearest axis-aligned orientation is used (as nnU-Net and MONAI's
``Orientation`` do); nothing is rotated by interpolation.

nibabel is imported only when a volume is read: :func:`require_nibabel` gives the
error that names the extra to install.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

AXES = ("[C, D, H, W] = [channel, inferior->superior, posterior->anterior, left->right] "
        "(RAS+, nibabel as_closest_canonical)")
NIFTI_SUFFIXES = (".nii.gz", ".nii")


def require_nibabel():
    """The ``nibabel`` module, or an ImportError saying how to install it."""
    try:
        import nibabel
    except ImportError as err:
        raise ImportError("reading NIfTI volumes needs nibabel, which is not installed: "
                          "pip install 'certframe[nifti]' (or pip install 'nibabel>=5')") from err
    return nibabel


def nifti_stem(path: Path) -> str | None:
    """``case_001.nii.gz`` -> ``case_001``; None for hidden files, macOS ``._`` twins and non-NIfTI files."""
    name = path.name
    if name.startswith(".") or not path.is_file():
        return None
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


@dataclass
class Volume:
    """One NIfTI file read in canonical tensor order.

    data: ``[C, D, H, W]`` numpy array as stored (C = 1 for a 3-D file, the 4th axis for
    a 4-D one); spacing: mm per voxel along (D, H, W); affine / shape: the file's own
    (before reorientation), for comparing an image with its label map.
    """

    data: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    shape: tuple[int, ...]
    path: Path


def read_header(path: Path):
    """The nibabel image of ``path`` (data not loaded yet); a clear error for unreadable files."""
    nib = require_nibabel()
    try:
        return nib.load(str(path))
    except Exception as err:  # nibabel raises several types on corrupt input
        raise ValueError(f"cannot read NIfTI file {str(path)!r}: {err}") from err


def read_volume(path: Path, channels: int | None = None, image=None) -> Volume:
    """Read ``path`` as a :class:`Volume` in canonical order.

    A 3-D file is one channel; a 4-D file (the Medical Segmentation Decathlon's
    multi-modal images) has its channels on the 4th axis, and ``channels`` (when given)
    must match it. Anything else is a ValueError naming the file and its shape.
    """
    nib = require_nibabel()
    img = image if image is not None else read_header(path)
    shape = tuple(int(s) for s in img.shape)
    ndim = len(shape)
    if ndim == 4 and shape[3] == 1:
        ndim = 3
    if ndim not in (3, 4) or (ndim == 4 and channels is not None and shape[3] != channels):
        expected = "[X, Y, Z]" if not channels or channels == 1 else f"[X, Y, Z] or [X, Y, Z, {channels}]"
        raise ValueError(f"{str(path)!r} has shape {list(shape)}; expected a 3-D volume {expected}")
    canonical = nib.as_closest_canonical(img)
    data = np.asarray(canonical.dataobj)  # applies the file's scaling (scl_slope / scl_inter)
    data = data.reshape(data.shape[:3] + (-1,))  # [X, Y, Z, C]
    zooms = tuple(float(z) for z in canonical.header.get_zooms()[:3])
    return Volume(np.ascontiguousarray(np.transpose(data, (3, 2, 1, 0))), zooms[::-1],
                  np.asarray(img.affine, dtype=np.float64), shape[:3], Path(path))


def check_same_grid(case: str, image, label, image_path: Path, label_path: Path, tolerance: float) -> None:
    """A label map must lie on its image's voxel grid: same 3-D shape, affines equal within
    ``tolerance`` (mm, largest absolute difference of the 4x4 matrices). Raises ValueError
    naming the case, both files and both shapes or affines."""
    ishape, lshape = tuple(image.shape[:3]), tuple(label.shape[:3])
    if ishape != lshape:
        raise ValueError(f"case {case!r}: the label map {str(label_path)!r} has shape {list(lshape)}, its image "
                         f"{str(image_path)!r} has shape {list(ishape)}; a label map must lie on its image's "
                         f"voxel grid")
    ia, la = np.asarray(image.affine, dtype=np.float64), np.asarray(label.affine, dtype=np.float64)
    diff = float(np.abs(ia - la).max())
    if not diff <= tolerance:
        fmt = lambda a: str(np.round(a, 4).tolist())  # noqa: E731
        raise ValueError(f"case {case!r}: the affines of the image {str(image_path)!r} and its label map "
                         f"{str(label_path)!r} differ by up to {diff:.4g} mm (tolerance {tolerance:g}); "
                         f"image affine {fmt(ia)}, label affine {fmt(la)}")
