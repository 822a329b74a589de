"""What training runs save to resume bit for bit, shared by the segmenter and denoiser trainers.

Optimizer state goes to safetensors (tensors) with its scalars and parameter groups as
JSON metadata: a resumed run never unpickles anything. torch's own RNG state (what a
model's dropout draws from) is a base64 string in the JSON state file; the trainers' own
draws come from :mod:`certframe.core.philox` by step number and need no saved state
(:func:`check_resumable` refuses states from before that).
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


def check_resumable(state: dict, version: int, folder: Path) -> None:
    """Refuse a training state that this certframe cannot continue exactly (ValueError naming the fix).

    state: the ``state.json`` of a run; version: the trainer's current state version. A state
    of version 1 drew its batches from a ``torch.Generator``, whose state it saved; the trainers
    now draw from :mod:`certframe.core.philox` by step number, so continuing such a run would not give
    the weights of its uninterrupted run. A state drawn from another stream version, or written
    by a newer certframe, is refused for the same reason.
    """
    from certframe.core.philox import STREAM_VERSION

    saved = int(state.get("version", 1))
    if saved > version:
        raise ValueError(f"cannot resume: the training state in {str(folder)!r} has version {saved}, written by a "
                         f"newer certframe (this one reads version {version}); resume it with that certframe")
    if saved < version or state.get("stream") != STREAM_VERSION:
        drawn = ("a torch.Generator (an earlier certframe)" if saved < 2 or "stream" not in state
                 else f"the stream {state['stream']!r}")
        raise ValueError(f"cannot resume: the training state in {str(folder)!r} (version {saved}) drew its batches "
                         f"from {drawn}; this certframe draws them from the counter-based stream "
                         f"{STREAM_VERSION!r}, so the resumed run would not end with the weights of an "
                         f"uninterrupted one. Start the run again (--overwrite), or finish it with the certframe "
                         f"that began it")


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
