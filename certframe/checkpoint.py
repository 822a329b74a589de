"""Weights as safetensors, with the model's configuration in the file's metadata.

Never pickle: :func:`load_checkpoint` reads tensors with ``safetensors`` and the
configuration as JSON stored under the metadata key ``"certframe"``. A JSON copy of
the configuration is written next to the file (``<name>.json``) for people. Both are
written atomically (:mod:`certframe.files`): an interrupted save never leaves half a file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from certframe.files import atomic_path, atomic_write, commit

META_KEY = "certframe"


def save_checkpoint(path: str | Path, module: torch.nn.Module, config: dict, *, sidecar: bool = True) -> Path:
    """Write ``module.state_dict()`` and ``config`` (JSON-able) to ``path`` (.safetensors)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    tmp = atomic_path(path)
    save_file(state, str(tmp), metadata={META_KEY: json.dumps(config)})
    tmp.chmod(0o666 & ~_umask())  # safetensors writes 0600; give the usual permissions
    commit(tmp, path)
    if sidecar:
        atomic_write(path.with_suffix(".json"), json.dumps(config, indent=2) + "\n")
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_config(path: str | Path) -> dict:
    """The configuration stored in a certframe safetensors file."""
    path = _existing(path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if META_KEY not in meta:
        raise ValueError(f"{path} is a safetensors file without certframe configuration "
                         f"(metadata keys: {sorted(meta)}); save it with certframe.checkpoint.save_checkpoint")
    return json.loads(meta[META_KEY])


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[dict, dict[str, torch.Tensor]]:
    """``(config, state_dict)`` from a safetensors file."""
    path = _existing(path)
    config = read_config(path)
    tensors = {}
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        for key in f.keys():
            tensors[key] = f.get_tensor(key)
    return config, tensors


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist (expected a .safetensors file)")
    if path.suffix != ".safetensors":
        raise ValueError(f"checkpoint {str(path)!r}: expected a .safetensors file; "
                         f"pickled checkpoints (.pt, .pth, .ckpt) are not loaded for safety")
    return path
