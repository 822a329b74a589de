"""The dataset contract: :func:`check_dataset` (rules in ``RULES["dataset"]``)."""
from __future__ import annotations

import json
from typing import Iterable

import torch

from certframe.contract._common import ContractReport, _begin, _build, _check_bad_options, _Checker, _shape
from certframe.interfaces import Sample, SegmentationDataset


def _check_sample(ck: _Checker, ds: SegmentationDataset, i: int, s) -> None:
    where = f"item {i}"
    if not isinstance(s, Sample):
        ck.fail("sample", f"{where} is a {type(s).__name__}, expected certframe.interfaces.Sample")
    if not isinstance(s.id, str) or not s.id:
        ck.fail("sample", f"{where} has id {s.id!r}, expected a non-empty str")
    where = f"item {i} (id {s.id!r})"
    img, mask = s.image, s.mask
    if not isinstance(img, torch.Tensor) or img.dim() not in (3, 4) or img.shape[0] != ds.in_channels:
        dims = img.dim() if isinstance(img, torch.Tensor) else 0
        layout = {3: "H, W", 4: "D, H, W"}.get(dims, "H, W] (or a volume [C={}, D, H, W".format(ds.in_channels))
        ck.fail("sample", f"{where}: image must be [C={ds.in_channels}, {layout}], got {_shape(img)}")
    if img.dtype != torch.float32:
        ck.fail("sample", f"{where}: image dtype must be float32, got {img.dtype}")
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.int64:
        ck.fail("sample", f"{where}: mask must be an int64 tensor, got "
                          f"{mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__}")
    if tuple(mask.shape) != tuple(img.shape[1:]):
        axes = "[H, W]" if img.dim() == 3 else "[D, H, W]"
        ck.fail("sample", f"{where}: mask shape {_shape(mask)} differs from the image's {axes} "
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
    ck, factory, ds, options = _begin("dataset", dataset, name, options, seed, SegmentationDataset)
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
    ck.expect_error("index range", lambda: ds[n], IndexError, what=f"dataset[{n}] (one past the end)",
                    expected=", expected IndexError (iteration relies on it)",
                    accepted=lambda extra: f"dataset[{n}] (one past the end of {n} items) returned "
                                           f"{type(extra).__name__}, expected IndexError")
    ck.ok("index range")
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
