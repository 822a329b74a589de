"""Training speed: DDPM and segmenter steps per second, and CPU seconds per wall second.

    python benchmarks/training_speed.py [--device cpu|cuda] [--seconds 50] [--only ddpm|segmenter]
                                        [--precision auto] [--threads N] [--json OUT.json]

``--seconds`` is the measured time of the whole run, shared equally by the trainers run
(``--seconds 60``: 30 s each; with ``--only``, all of it); building the data, the first
log interval and the first epoch come on top. Each trainer runs on certframe's built-in
``synthetic-lung`` data (through the registry; both trainers share one generated copy when
their sizes agree) and is stopped from its own callback (``on_log`` of
:func:`train_diffusion`, ``on_epoch`` of :func:`train_segmenter`); the first log interval
(DDPM) or epoch (segmenter) is warm-up and not counted. Printed per trainer: steps/s, s per
epoch (segmenter: training batches plus the validation pass), ``cpu/wall``:
``time.process_time()`` (all threads of this process) per wall second over the same
window, i.e. CPU cores kept busy, and steps per CPU second. On CUDA a ``cpu/wall`` near 1
or more means the host, not the GPU, sets the pace; on a shared CPU, steps per CPU second
moves less with the other processes' load than steps/s does.

Defaults (``--ddpm-size`` etc. override them):

* cuda: the issue's sizes: DDPM 128 px, batch 64, channels 32-64-128-128, one layer per
  block, 429 images; segmenter monai UNet (default network) at 128 px, batch 16, 429
  training and 54 validation images.
* cpu: DDPM 32 px, batch 8, channels 16-32-32-64, 64 images; segmenter 32 px, batch 16,
  64 training and 16 validation images (a CPU step of the GPU sizes takes seconds).

The segmenter runs without a checkpoint (no files written per epoch); the DDPM writes its
checkpoint only at the end (``checkpoint_every`` beyond the run). ``--precision`` is passed
to the trainers that take it (not to those from before the option existed, which ran
fp32). ``--json``: the rows (trainer, device, precision, steps_per_second, cpu_per_wall,
steps, ...) as a JSON list, for ``benchmarks/gpu.sh``. Figures, not verdicts: nothing is
asserted.
"""
from __future__ import annotations

import argparse
import inspect
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from certframe.plugins.denoisers.ddpm_training import train_diffusion
from certframe.registry import get_registry
from certframe.training.segmenter import train_segmenter

DEFAULTS = {
    "cuda": {"ddpm_size": 128, "ddpm_batch": 64, "ddpm_channels": "32,64,128,128", "ddpm_images": 429,
             "seg_size": 128, "seg_batch": 16, "seg_images": 429, "seg_val": 54, "log_every": 50},
    "cpu": {"ddpm_size": 32, "ddpm_batch": 8, "ddpm_channels": "16,32,32,64", "ddpm_images": 64,
            "seg_size": 32, "seg_batch": 16, "seg_images": 64, "seg_val": 16, "log_every": 5},
}


class Enough(Exception):
    """Raised from a trainer's callback once the time is up."""


class Clock:
    """Wall and process CPU time at marks; the first mark starts the measured window."""

    def __init__(self, device: torch.device, seconds: float):
        self.device, self.seconds = device, seconds
        self.marks: list[tuple[int, float, float]] = []

    def mark(self, steps: int) -> None:
        """Mark the time at ``steps`` done; raise :class:`Enough` once ``seconds`` have passed since the first
        mark (and there are two marks at least)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.marks.append((steps, time.perf_counter(), time.process_time()))
        if len(self.marks) > 1 and self.marks[-1][1] - self.marks[0][1] >= self.seconds:
            raise Enough

    def summary(self) -> dict:
        (s0, w0, c0), (s1, w1, c1) = self.marks[0], self.marks[-1]
        wall = w1 - w0
        return {"steps": s1 - s0, "seconds": round(wall, 3), "steps_per_second": (s1 - s0) / wall,
                "cpu_per_wall": (c1 - c0) / wall, "steps_per_cpu_second": (s1 - s0) / max(c1 - c0, 1e-9)}


class Cached:
    """A data set whose items are generated once (both trainers read the same copy)."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.items = [dataset[i] for i in range(len(dataset))]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]

    def __getattr__(self, name):
        return getattr(self.dataset, name)


_DATA: dict[tuple, Cached] = {}


def lungs(count: int, size: int, split: str) -> Cached:
    key = (count, size, split)
    if key not in _DATA:
        _DATA[key] = Cached(get_registry().create("dataset", "synthetic-lung", count=count, size=size, seed=0,
                                                  split=split))
    return _DATA[key]


def _precision(fn, args, device) -> tuple[dict, str]:
    """The precision keyword for ``fn`` (none for a trainer without the option) and the precision it runs in."""
    if "precision" not in inspect.signature(fn).parameters:
        return {}, "fp32 (no option)"
    from certframe.device import resolve_precision

    return {"precision": args.precision}, resolve_precision(args.precision, device)


def ddpm(args, device, seconds: float, out: Path) -> dict:
    data = lungs(args.ddpm_images, args.ddpm_size, "train")
    clock = Clock(device, seconds)
    extra, precision = _precision(train_diffusion, args, device)
    try:
        train_diffusion(data, out / "ddpm", block_out_channels=[int(c) for c in args.ddpm_channels.split(",")],
                        steps=10 ** 9, batch_size=args.ddpm_batch, lr=5e-4, seed=0, device=device,
                        checkpoint_every=10 ** 9, log_every=args.log_every,
                        on_log=lambda record: clock.mark(record["step"]), **extra)
    except Enough:
        pass
    return {"trainer": "ddpm", "device": str(device), "precision": precision, **clock.summary(),
            "size": args.ddpm_size, "batch": args.ddpm_batch, "channels": args.ddpm_channels,
            "images": args.ddpm_images}


def segmenter(args, device, seconds: float) -> dict:
    train, val = lungs(args.seg_images, args.seg_size, "train"), lungs(args.seg_val, args.seg_size, "val")
    torch.manual_seed(0)
    model = get_registry().create("segmenter", "monai", weights="random", in_channels=1, num_classes=2)
    batches = -(-args.seg_images // args.seg_batch)
    clock = Clock(device, seconds)
    extra, precision = _precision(train_segmenter, args, device)
    try:
        train_segmenter(model, train, val, epochs=10 ** 6, batch_size=args.seg_batch, lr=1e-3, seed=0,
                        device=device, on_epoch=lambda record: clock.mark((record["epoch"] + 1) * batches), **extra)
    except Enough:
        pass
    summary = clock.summary()
    return {"trainer": "segmenter", "device": str(device), "precision": precision, **summary,
            "epoch_seconds": summary["seconds"] / (summary["steps"] / batches), "size": args.seg_size,
            "batch": args.seg_batch, "images": args.seg_images, "val_images": args.seg_val}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--seconds", type=float, default=50.0,
                   help="measured wall seconds in all, shared equally by the trainers run")
    p.add_argument("--only", choices=["ddpm", "segmenter"], default=None)
    p.add_argument("--precision", default="auto", help="auto|fp32|bf16|fp16 (trainers that take it)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's; 1 gives steadier figures on a shared CPU)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    for key in ("ddpm_size", "ddpm_batch", "ddpm_images", "seg_size", "seg_batch", "seg_images", "seg_val",
                "log_every"):
        p.add_argument("--" + key.replace("_", "-"), type=int, default=None)
    p.add_argument("--ddpm-channels", default=None)
    args = p.parse_args()
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    for key, value in DEFAULTS["cuda" if device.type == "cuda" else "cpu"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    trainers = [args.only] if args.only else ["ddpm", "segmenter"]
    each = args.seconds / len(trainers)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"~{each:g} s measured per trainer", flush=True)
    rows = []
    if "ddpm" in trainers:
        with tempfile.TemporaryDirectory() as tmp:
            r = ddpm(args, device, each, Path(tmp))
        rows.append(r)
        print(f"ddpm: {r['size']} px, batch {r['batch']}, channels {r['channels']}, {r['images']} images, "
              f"precision {r['precision']}: {r['steps_per_second']:.2f} steps/s ({r['steps']} steps in "
              f"{r['seconds']:.1f} s), cpu/wall {r['cpu_per_wall']:.2f}, "
              f"{r['steps_per_cpu_second']:.2f} steps per CPU s", flush=True)
    if "segmenter" in trainers:
        r = segmenter(args, device, each)
        rows.append(r)
        print(f"segmenter: monai unet {r['size']} px, batch {r['batch']}, {r['images']} train / {r['val_images']} "
              f"val images, precision {r['precision']}: {r['steps_per_second']:.2f} steps/s, "
              f"{r['epoch_seconds']:.2f} s per epoch (validation included; {r['steps']} steps in "
              f"{r['seconds']:.1f} s), cpu/wall {r['cpu_per_wall']:.2f}, "
              f"{r['steps_per_cpu_second']:.2f} steps per CPU s", flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
