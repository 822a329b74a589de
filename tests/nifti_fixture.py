"""A tiny NIfTI data set in the Medical Segmentation Decathlon / nnU-Net v2 raw layout, written with nibabel.

12 x 10 x 8 voxels of 1 x 2 x 3 mm whose first axis points to the patient's LEFT (affine
diag(-1, 2, 3)), so that canonical (RAS+) orientation flips it; a marker voxel (400 HU,
label 2) at the stored index (i, j, k) = (0, 2, 5) lands at (D, H, W) = (5, 2, 11).
"""
from __future__ import annotations

import json

import numpy as np

SHAPE = (12, 10, 8)  # stored (i, j, k)
AFFINE = np.array([[-1.0, 0, 0, 20.0], [0, 2.0, 0, -10.0], [0, 0, 3.0, 5.0], [0, 0, 0, 1]])
MARKER = (0, 2, 5)
MARKER_DHW = (5, 2, 11)  # (k, j, 11 - i)
CLASSES = ["background", "organ", "marker"]


def image_array(case: int) -> np.ndarray:
    """HU: air -1000, a body box of 40 + case, the marker voxel 400."""
    a = np.full(SHAPE, -1000, dtype=np.int16)
    a[2:10, 2:9, 1:7] = 40 + case
    a[MARKER] = 400
    return a


def label_array() -> np.ndarray:
    m = np.zeros(SHAPE, dtype=np.uint8)
    m[3:9, 3:8, 2:6] = 1
    m[MARKER] = 2
    return m


def save_nifti(array, path, affine=AFFINE):
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))


def write_fixture(root, layout: str = "nnunet", cases: int = 3):
    """MSD (``case.nii.gz``, labels ``{"0": name}``) or nnU-Net v2 (``case_0000.nii.gz``,
    labels ``{name: 0}``) raw layout with ``cases`` tiny CT cases."""
    for c in range(cases):
        image = root / "imagesTr" / (f"case_{c:03d}_0000.nii.gz" if layout == "nnunet" else f"case_{c:03d}.nii.gz")
        save_nifti(image_array(c), image)
        save_nifti(label_array(), root / "labelsTr" / f"case_{c:03d}.nii.gz")
    if layout == "nnunet":
        meta = {"channel_names": {"0": "CT"}, "labels": {n: i for i, n in enumerate(CLASSES)},
                "numTraining": cases, "file_ending": ".nii.gz"}
    else:
        meta = {"name": "Tiny", "modality": {"0": "CT"}, "labels": {str(i): n for i, n in enumerate(CLASSES)}}
    (root / "dataset.json").write_text(json.dumps(meta))
    (root / "imagesTr" / "._case_000.nii.gz").write_bytes(b"macOS resource fork")  # as in the MSD tars
    return root
