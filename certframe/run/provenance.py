"""What exactly a run ran: content hashes of the models and files, absolute paths, the real configuration.

A run folder must identify every input, so that ``--resume`` and ``--from-manifest`` can
refuse a run whose inputs changed (say, a weights file replaced in place) instead of
mixing two models' rows under one name.

* :func:`absolute_paths`: option values that name an existing file or folder (relative
  to the working directory) become absolute paths, so a manifest re-runs from any folder.
* :func:`model_identity`: a SHA-256 over a model's ``state_dict`` (names, dtypes, shapes
  and bytes, in order), whatever file or bundled name it came from; plus the model's
  declared ``in_channels`` / ``num_classes`` and its ``config`` when it has one (the
  configuration read from the checkpoint, not the signature's defaults).
* :func:`file_identity`: SHA-256 of a file, or of a folder's files (relative path and
  content, sorted), for every option that names a path.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from certframe.files import file_sha256, update_digest
from certframe.run.folder import jsonable


def absolute_paths(options: dict) -> dict:
    """``options`` with every string value that names an existing path made absolute."""
    out = {}
    for key, value in options.items():
        if isinstance(value, str) and value and not Path(value).is_absolute():
            p = Path(value).expanduser()
            if p.is_file() or p.is_dir():
                value = str(p.resolve())
        out[key] = value
    return out


def file_identity(path: str | Path) -> dict:
    """``{"path": absolute, "sha256": ...}`` of a file, or of a folder's files (names and contents)."""
    p = Path(path).resolve()
    if p.is_file():
        return {"path": str(p), "sha256": file_sha256(p, prefix="")}
    h = hashlib.sha256()
    for f in sorted(q for q in p.rglob("*") if q.is_file()):
        h.update(str(f.relative_to(p)).encode() + b"\0")
        update_digest(h, f)
    return {"path": str(p), "sha256": h.hexdigest()}


def state_hash(module: torch.nn.Module) -> str:
    """SHA-256 over ``module.state_dict()`` (:func:`certframe.training.tuning.module_hash`: names, dtypes, shapes,
    bytes)."""
    from certframe.training.tuning import module_hash

    return module_hash(module)


def model_identity(model: Any) -> dict | None:
    """The identity of a built segmenter or denoiser (None for None)."""
    if model is None:
        return None

    out: dict[str, Any] = {"class": f"{type(model).__module__}.{type(model).__qualname__}"}
    if isinstance(model, torch.nn.Module):
        out["state_sha256"] = state_hash(model)
        out["parameters"] = int(sum(p.numel() for p in model.parameters()))
    for attr in ("in_channels", "num_classes"):
        value = getattr(model, attr, None)
        if isinstance(value, int):
            out[attr] = value
    config = getattr(model, "config", None)
    if isinstance(config, dict):
        out["config"] = jsonable(config)
    return out


def files_of(options: dict) -> dict:
    """``{option: file_identity}`` for the options that name an existing file or folder."""
    out = {}
    for key, value in options.items():
        if isinstance(value, str) and value and (Path(value).is_file() or Path(value).is_dir()):
            if Path(value).is_dir() and key in ("root", "data", "folder"):
                out[key] = {"path": str(Path(value).resolve())}  # data folders: the data set hash covers them
            else:
                out[key] = file_identity(value)
    return out


def provenance(spec, plugins) -> dict:
    """``{kind: {"model": model_identity, "files": files_of(options)}}`` for the run's plugins."""
    out = {}
    for kind, obj in (("segmenter", plugins.segmenter), ("denoiser", plugins.denoiser), ("dataset", None),
                      ("certifier", None)):
        out[kind] = {"model": model_identity(obj), "files": files_of(spec.options(kind))}
    return out


__all__ = ["absolute_paths", "file_identity", "state_hash", "model_identity", "files_of", "provenance"]
