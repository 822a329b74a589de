"""Values a run folder's manifest records, and what a resumed run must share with the run it continues.

* :func:`jsonable`, :func:`now`, :func:`package_versions`, :func:`dataset_identity`: the
  manifest's plain-JSON values, time stamps, package versions and the data set's identity.
* :func:`resume_conflicts`: why a new manifest cannot continue an old one (its ``config``, the
  data set's hash, the precision, the inputs' content hashes by :func:`provenance_diff`); empty
  when it can.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
from importlib import metadata
from typing import Any

import numpy as np

_VERSIONED = ("certframe", "torch", "numpy", "scipy", "monai", "diffusers", "torchattacks", "pandas",
              "pyarrow")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types (tuples -> lists, paths and other objects -> str)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def dataset_identity(dataset) -> dict:
    """The data set's ``identity()`` plus ``items`` (count) and ``sha256``.

    ``sha256`` hashes the identity's canonical JSON and the item ids in order, so two
    runs on the same files in the same order share it, and a changed file list or
    split does not.
    """
    ident = jsonable(dataset.identity())
    ids = list(dataset.item_ids())
    h = hashlib.sha256(json.dumps(ident, sort_keys=True).encode())
    for i in ids:
        h.update(b"\n" + str(i).encode())
    return {**ident, "items": len(ids), "sha256": h.hexdigest()}


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def provenance_diff(old: dict | None, new: dict | None) -> list[str]:
    """What differs between the ``provenance`` of two manifests (model state hashes, file hashes).

    A manifest without provenance (written before it was recorded) compares as unknown: no difference.
    """
    if not old or not new:
        return []
    diffs = []
    for kind in sorted(set(old) | set(new)):
        a, b = old.get(kind) or {}, new.get(kind) or {}
        ha, hb = ((x.get("model") or {}).get("state_sha256") for x in (a, b))
        if ha != hb:
            diffs.append(f"the {kind}'s weights differ (state sha256 {str(ha)[:12]} in the run, {str(hb)[:12]} now)")
        files_a, files_b = a.get("files") or {}, b.get("files") or {}
        for key in sorted(set(files_a) | set(files_b)):
            fa, fb = files_a.get(key) or {}, files_b.get(key) or {}
            if fa.get("sha256") != fb.get("sha256"):
                diffs.append(f"the {kind} file {key}={fb.get('path') or fa.get('path')} changed (sha256 "
                             f"{str(fa.get('sha256'))[:12]} in the run, {str(fb.get('sha256'))[:12]} now)")
    return diffs


def _run_line(key: str, old, new) -> str:
    return f"{key}: {old!r} in the run, {new!r} now"


def config_diff(old: dict, new: dict, prefix: str = "", line=_run_line) -> list[str]:
    """Every key of two (nested) configurations whose values differ, one ``line(dotted key, old, new)`` each
    (default: ``key: old in the run, new now``); a key missing on one side is ``"<absent>"`` there."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_diff(a, b, f"{prefix}{k}.", line)
        elif a != b:
            out.append(line(f"{prefix}{k}", a, b))
    return out


def resume_conflicts(old: dict, new: dict) -> list[str]:
    """Why the manifest ``new`` cannot continue the run of manifest ``old`` (empty: it can).

    They must share the ``config``, the data set's hash, the numerical precision (fp32 rows and bf16
    rows must not mix) and the inputs' content hashes (:func:`provenance_diff`).
    """
    diff = config_diff(old.get("config", {}), new["config"])
    old_hash = old.get("dataset", {}).get("sha256")
    new_hash = new.get("dataset", {}).get("sha256")
    if old_hash != new_hash:
        diff.append(f"data set identity: {old_hash} in the run, {new_hash} now")
    old_prec, new_prec = (((m.get("execution") or {}).get("accelerate") or {}).get("precision")
                          for m in (old, new))
    if old_prec and new_prec and old_prec != new_prec:
        diff.append(f"precision: {old_prec!r} in the run, {new_prec!r} now")
    return diff + provenance_diff(old.get("provenance"), new.get("provenance"))


__all__ = ["package_versions", "jsonable", "dataset_identity", "now", "provenance_diff", "config_diff",
           "resume_conflicts"]
