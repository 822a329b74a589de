"""What the noise of one image costs: 110 draws (n0 10 + n 100) at 256x256, against ``torch.randn``.

    python benchmarks/noise_cost.py [--device cpu|cuda] [--draws 110] [--size 256] [--repeats 7]

Three ways to draw the same amount of noise, in one run, medians of ``--repeats``:

* ``torch.randn``: the floor (one generator, no per-draw identity: not reproducible per draw);
* **before**: the stream certframe used until the one-stream change: on CPU numpy's
  Philox4x64-10 one draw at a time (``np.random.Philox(key, counter=i << 64)``, ziggurat
  normals); on CUDA torch's generator reseeded for each draw (``manual_seed`` + ``randn``);
* **after**: :func:`certframe.core.sampler.gaussian_noise` (Philox4x32-10 + Box-Muller, the same
  numbers on every device; on CPU the words come from the numba loop of
  :mod:`certframe.core.philox_cpu`, then Box-Muller in torch in cache-sized tiles).

The issue's goal on CPU: after <= 1.5x ``torch.randn``. Figures and ratios, not verdicts.
"""
from __future__ import annotations

import argparse
import hashlib
import statistics
import time

import numpy as np
import torch

from certframe.core.sampler import gaussian_noise
from certframe.interfaces import NoiseKey


def before_cpu(shape, count, key=12345):
    out = np.empty((count, *shape), dtype=np.float32)
    for i in range(count):
        np.random.Generator(np.random.Philox(key=key, counter=i << 64)).standard_normal(dtype=np.float32, out=out[i])
    return torch.from_numpy(out)


def before_cuda(shape, count, device):
    gen = torch.Generator(device=device)
    out = torch.empty((count, *shape), device=device)
    for i in range(count):
        seed = int.from_bytes(hashlib.blake2b(f"0/img/estimation/{i}".encode(), digest_size=8).digest(), "little")
        gen.manual_seed(seed)
        torch.randn(shape, generator=gen, device=device, out=out[i])
    return out


def timed(f, device, repeats):
    f()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        f()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--draws", type=int, default=110)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    shape = (1, args.size, args.size)
    key = NoiseKey(0, "img")
    floor = timed(lambda: torch.randn((args.draws, *shape), device=device), device, args.repeats)
    before = timed((lambda: before_cpu(shape, args.draws)) if device.type == "cpu"
                   else (lambda: before_cuda(shape, args.draws, device)), device, args.repeats)
    after = timed(lambda: gaussian_noise(shape, 0.25, key=key, phase="estimation", start=0, count=args.draws,
                                         device=device), device, args.repeats)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"[noise] {name}: {args.draws} draws of {args.size}x{args.size}, median of {args.repeats}")
    print(f"  torch.randn          {1e3 * floor:8.1f} ms   1.00x")
    print(f"  before (old stream)  {1e3 * before:8.1f} ms   {before / floor:.2f}x")
    print(f"  after (one stream)   {1e3 * after:8.1f} ms   {after / floor:.2f}x   (goal on CPU: <= 1.5x)")
    return {"randn_ms": 1e3 * floor, "before_ms": 1e3 * before, "after_ms": 1e3 * after}


if __name__ == "__main__":
    main()
