"""Resuming a training run bit for bit: what the segmenter and DDPM trainers share around their loops.

One copy for :func:`certframe.training.segmenter.train_segmenter` and the ``ddpm`` plugin's
``train_diffusion`` (``certframe.plugins.denoisers.ddpm_training``); each trainer keeps what is
its own (its settings, which of them a resumed run must share, the tensors it saves, its loop).

* :class:`StateFolder`: a run's resumable state, a folder of tensor files named by progress
  (``epoch-N.*.safetensors``, ``step-N.*.safetensors``) and ``state.json``, which is replaced
  atomically (:mod:`certframe.files`) once the tensors are written, so an interruption at any
  moment leaves a consistent state; the files of earlier progress are then deleted. Reading it
  back refuses a state this certframe cannot continue exactly (:func:`check_resumable`) and a
  run asked with other settings (:func:`check_same_settings`).
* :func:`save_optimizer` / :func:`load_optimizer`: an optimizer's state as safetensors with its
  scalars and parameter groups as JSON metadata: a resumed run never unpickles anything.
* :func:`generator_state` / :func:`restore_generators`: torch's own RNG state (what a model's
  dropout draws from) as base64 text, and the fp16 loss scaler's state. The trainers' own draws
  come from :mod:`certframe.core.philox` by step number and need no saved state.
* :class:`Clock`: the wall and CPU seconds of a training, the earlier runs of a resumed one added.
* :class:`DeferredInterrupt`: Ctrl-C (SIGINT) waits for the end of the current step, so that the
  state saved then is the state after a whole step.
* :func:`training_progress`: the rich progress bar both loops show.
"""
from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from certframe.files import atomic_path, atomic_write, commit

STATE_FILE = "state.json"


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


def check_same_settings(saved: dict, asked: dict, keys) -> None:
    """Refuse to resume a run whose ``keys`` settings differ from the saved ones (ValueError listing each clash)."""
    clash = {k: (saved.get(k), asked.get(k)) for k in keys if saved.get(k) != asked.get(k)}
    if clash:
        raise ValueError("cannot resume with different settings (saved, asked): "
                         + ", ".join(f"{k}={a!r} vs {b!r}" for k, (a, b) in clash.items()))


class StateFolder:
    """The resumable state of one training run: ``FOLDER/state.json`` and the tensor files it names.

    version: the trainer's state version (:func:`check_resumable`); unit: what progress is counted
    in (``"epoch"``, ``"step"``), the prefix of the tensor files' names.
    """

    def __init__(self, folder: str | Path, version: int, unit: str):
        self.folder, self.version, self.unit = Path(folder), int(version), unit

    @property
    def state_path(self) -> Path:
        return self.folder / STATE_FILE

    def files(self, done: int, *parts: str) -> dict[str, Path]:
        """``{part: FOLDER/UNIT-DONE.PART.safetensors}``: where the tensors saved at ``done`` go (makes the folder)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        return {part: self.folder / f"{self.unit}-{done}.{part}.safetensors" for part in parts}

    def stamp(self) -> dict:
        """``{"version", "stream"}``: what :func:`check_resumable` reads back from a state."""
        from certframe.core.philox import STREAM_VERSION

        return {"version": self.version, "stream": STREAM_VERSION}

    def read(self, missing: str = "") -> dict:
        """The saved ``state.json`` (FileNotFoundError naming it, followed by ``missing``, when there is none)."""
        if not self.state_path.is_file():
            raise FileNotFoundError(f"cannot resume: no training state at {str(self.state_path)!r}{missing}")
        return json.loads(self.state_path.read_text())

    def load(self, asked: dict, keys, missing: str = "", defaults: dict | None = None) -> dict:
        """The saved state, once it is known that this certframe continues it exactly and that the
        ``keys`` of the saved settings (``state["training"]``, on top of ``defaults``: settings
        that states written before them lack) equal ``asked``'s."""
        state = self.read(missing)
        check_resumable(state, self.version, self.folder)
        check_same_settings({**(defaults or {}), **state["training"]}, asked, keys)
        return state

    def write(self, state: dict, keep) -> None:
        """Replace ``state.json`` by ``state`` atomically, then delete the tensor files not in ``keep``
        (the names of the files this state refers to, written before this call)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write(self.state_path, json.dumps(state, indent=1) + "\n")
        keep = set(keep)
        for old in self.folder.glob(f"{self.unit}-*.safetensors"):  # earlier progress is no longer needed
            if old.name not in keep:
                old.unlink()


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write tensors to a safetensors file atomically (a hidden file beside it, then renamed)."""
    tmp = atomic_path(path)
    save_file(tensors, str(tmp), metadata=metadata)
    commit(tmp, path)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, by name."""
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def save_optimizer(path: Path, optim: torch.optim.Optimizer) -> None:
    """Write ``optim.state_dict()`` to a safetensors file (atomically: hidden file, then rename)."""
    sd = optim.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"state.{pid}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{pid}.{key}"] = value
    meta = {"param_groups": json.dumps(sd["param_groups"]), "scalars": json.dumps(scalars)}
    save_tensors(path, tensors, meta)


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


def generator_state(cuda: torch.device | None = None) -> dict:
    """``{"torch_rng": ...}``, torch's CPU generator state as text, plus ``"cuda_rng"`` for a ``cuda`` device."""
    state = {"torch_rng": encode_state(torch.get_rng_state())}
    if cuda is not None and cuda.type == "cuda":
        state["cuda_rng"] = encode_state(torch.cuda.get_rng_state(cuda))
    return state


def scaler_state(scaler) -> dict:
    """``{"grad_scaler": ...}`` for fp16's loss scaler, ``{}`` without one."""
    return {} if scaler is None else {"grad_scaler": scaler.state_dict()}


def restore_generators(state: dict, scaler=None, cuda: torch.device | None = None) -> None:
    """Put back what :func:`generator_state` and :func:`scaler_state` saved in ``state``."""
    if scaler is not None:
        scaler.load_state_dict(state["grad_scaler"])
    torch.set_rng_state(decode_state(state["torch_rng"]))
    if cuda is not None and cuda.type == "cuda" and "cuda_rng" in state:
        torch.cuda.set_rng_state(decode_state(state["cuda_rng"]), cuda)


class Clock:
    """Wall and CPU seconds of a training since the clock was made, plus those of its earlier runs."""

    def __init__(self, seconds: float = 0.0, cpu_seconds: float = 0.0):
        self.earlier = (float(seconds), float(cpu_seconds))
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()

    def add_earlier(self, state: dict) -> None:
        """Count the ``seconds`` and ``cpu_seconds`` of a saved state as earlier runs'."""
        self.earlier = (float(state.get("seconds", 0.0)), float(state.get("cpu_seconds", 0.0)))

    def elapsed(self) -> tuple[float, float]:
        """``(wall, cpu)`` seconds, earlier runs included."""
        return (self.earlier[0] + time.perf_counter() - self.wall0,
                self.earlier[1] + time.process_time() - self.cpu0)

    def since_start(self) -> float:
        """Wall seconds of this run alone."""
        return time.perf_counter() - self.wall0


class DeferredInterrupt:
    """Within ``with``: the first SIGINT (Ctrl-C) only sets ``requested``; the loop raises at a step's end.

    A second Ctrl-C interrupts at once. Outside the main thread (where signal
    handlers cannot be set) Ctrl-C is not deferred. A process that ignores SIGINT (started
    with ``nohup``, or as a background job ``cmd &`` of a non-interactive shell) keeps
    ignoring it: installing a handler there would let a SIGINT meant for the shell stop
    the training.
    """

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        import signal
        import threading

        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN):
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False

    def check(self) -> None:
        """Raise the deferred KeyboardInterrupt, at the end of a step, when Ctrl-C was pressed during it."""
        if self.requested:
            raise KeyboardInterrupt


def training_progress(console, enabled: bool):
    """The rich progress bar of both trainers (an ``info`` field shows the latest metrics)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=console,
                    disable=not enabled, transient=False)
