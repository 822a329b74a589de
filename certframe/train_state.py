"""What training runs save to resume bit for bit, shared by the segmenter and denoiser trainers.

Optimizer state goes to safetensors (tensors) with its scalars and parameter groups as
JSON metadata: a resumed run never unpickles anything. RNG states are base64 strings
in the JSON state file.
"""
from __future__ import annotations

import base64
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file


def encode_state(t: torch.Tensor) -> str:
    """A uint8 RNG state tensor as base64 text."""
    return base64.b64encode(t.numpy().tobytes()).decode("ascii")


def decode_state(s: str) -> torch.Tensor:
    """The inverse of :func:`encode_state`."""
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def save_optimizer(path: Path, optim: torch.optim.Optimizer) -> None:
    """Write ``optim.state_dict()`` to a safetensors file (atomically: tmp file, then rename)."""
    sd = optim.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"state.{pid}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{pid}.{key}"] = value
    meta = {"param_groups": json.dumps(sd["param_groups"]), "scalars": json.dumps(scalars)}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)


def load_optimizer(path: Path, optim: torch.optim.Optimizer) -> None:
    """Restore what :func:`save_optimizer` wrote into ``optim``."""
    state: dict[int, dict] = {}
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        for key in f.keys():
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = f.get_tensor(key)
    for key, value in json.loads(meta["scalars"]).items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    optim.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})


def training_progress(console, enabled: bool):
    """The rich progress bar of both trainers (an ``info`` field shows the latest metrics)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=console,
                    disable=not enabled, transient=False)
