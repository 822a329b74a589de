"""Certification throughput against its forward floor, with and without the bundled DDPM.

    python benchmarks/certify_throughput.py --device cuda [--sizes 128,256] [--ns 100,1000]
        [--images 16] [--paper-images 2] [--json OUT.json]

For each denoiser (none; the bundled ``ddpm-synthetic-lung`` one-shot), image size and n, in
one process on one device, on the built-in ``synthetic-lung`` images with the bundled
``synthetic-lung`` UNet (SegCertify, n0 10, alpha 0.001, tau 0.75, sigma 0.25):

* **floor**: the same forward passes (``n0`` draws, then ``n`` in passes of the same batch
  size, at the same precision) of ``segmenter o denoiser`` on inputs made beforehand: what the
  models alone cost;
* **certframe**: ``certframe.run.certify_dataset`` (noise, votes, statistics, the clean
  prediction, rows, Dice) at that batch size and precision (``auto``: bf16 on CUDA);
* **overhead** = certframe / floor (goal on a GPU: <= 1.15 at n 100, <= 1.05 at n 1000);
* **paper**: the loop of Laousy et al. 2023 / Fischer et al. 2021 (one draw per fp32 forward
  pass) through certframe's own step (batch size 1, fp32), at the first n of ``--ns`` on
  ``--paper-images`` images; speed-up = certframe images/s over the paper's.
* **agreement**: on CUDA, the share of pixels whose certified label (class or abstain) is the
  same in fp32 and in the mixed precision ``auto`` picks (not measured on CPU, where only fp32
  runs: printed as "not measured", never as a number).

Figures, not verdicts: nothing here asserts. ``benchmarks/gpu.sh`` runs it.
"""
from __future__ import annotations

import argparse
import json
import math
import time

import torch

from certframe.plugins.certifiers.segcertify import SegCertify
from certframe.registry import get_registry
from certframe.run import certify_dataset
from certframe.run.accelerate import Acceleration
from certframe.run.build import prepare_models

SIGMA, N0, ALPHA, TAU = 0.25, 10, 0.001, 0.75


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pass_sizes(n0: int, n: int, batch: int) -> list[int]:
    """The forward passes certification makes: n0 draws, then n, each in passes of at most ``batch``."""
    return [min(batch, m - i) for m in (n0, n) for i in range(0, m, batch)]


def forward_floor(data, seg, den, device, precision: str, n: int, batch: int) -> float:
    """Seconds per image of the passes alone (inputs made beforehand, nothing else)."""
    smoothed = Acceleration(precision=precision, prefetch=0).smoothed(seg, den, SIGMA, device)
    x = data[0].image.to(device)
    noisy = (x + SIGMA * torch.randn((batch, *x.shape), device=device)).contiguous()
    sizes = pass_sizes(N0, n, batch)
    with torch.inference_mode():
        for b in sizes:                                   # warm-up (cuDNN autotune, allocator)
            smoothed.base_labels(noisy[:b])
        sync(device)
        t0 = time.perf_counter()
        for _ in range(len(data)):
            for b in sizes:
                smoothed.base_labels(noisy[:b])
        sync(device)
    return (time.perf_counter() - t0) / len(data)


def certify_seconds(data, seg, den, device, precision: str | None, n: int, batch: int, limit=None):
    """Seconds per image of ``certify_dataset`` and the certified labels of each image."""
    accelerate = None if precision is None else Acceleration(precision=precision, prefetch=2)
    indices = range(len(data) if limit is None else min(limit, len(data)))
    certs = []

    def run(which):
        return list(certify_dataset(data, seg, den, SegCertify(), sigma=SIGMA, n0=N0, n=n, alpha=ALPHA,
                                    taus=(TAU,), seed=0, batch_size=batch, device=device, accelerate=accelerate,
                                    indices=which,
                                    on_certificates=lambda i, s, c, clean: certs.append(c[0].labels.cpu())))
    run(range(1))                                         # warm-up
    certs.clear()
    sync(device)
    t0 = time.perf_counter()
    rows = run(indices)
    sync(device)
    secs = (time.perf_counter() - t0) / len(indices)
    dice = sum(r["certified_dice"] for r in rows) / len(rows)
    return secs, certs, dice


def agreement(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return float(torch.cat([(x == y).flatten() for x, y in zip(a, b)]).double().mean())


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", default="128,256")
    parser.add_argument("--ns", default="100,1000")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--paper-images", type=int, default=2)
    parser.add_argument("--batch", type=int, default=0, help="draws per pass (0: n, at most 512)")
    parser.add_argument("--denoisers", default="none,ddpm")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    reg = get_registry()
    seg0 = reg.create("segmenter", "monai", weights="synthetic-lung")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    auto = Acceleration().resolve(device).precision
    print(f"[certify] {name}; precision auto = {auto}; SegCertify n0 {N0}, alpha {ALPHA}, tau {TAU}, sigma {SIGMA}")
    print(f"  {'denoiser':8s} {'size':>4s} {'n':>5s} {'batch':>5s} {'floor ms':>9s} {'certify ms':>10s} "
          f"{'overhead':>8s} {'paper ms':>9s} {'speed-up':>8s} {'fp32=auto':>10s} {'cert Dice':>9s}")
    out = []
    for den_name in args.denoisers.split(","):
        den0 = None if den_name == "none" else reg.create("denoiser", "ddpm", model="ddpm-synthetic-lung")
        for size in (int(s) for s in args.sizes.split(",")):
            data = reg.create("dataset", "synthetic-lung", count=args.images, size=size)
            seg, den = prepare_models(seg0, den0, data, device)
            ns = [int(v) for v in args.ns.split(",")]
            for n in ns:
                batch = args.batch or min(n, 512)
                floor = forward_floor(data, seg, den, device, auto, n, batch)
                secs, certs, dice = certify_seconds(data, seg, den, device, auto, n, batch)
                row = {"device": name, "denoiser": den_name, "size": size, "n": n, "batch": batch,
                       "precision": auto, "floor_ms": 1e3 * floor, "certify_ms": 1e3 * secs,
                       "overhead": secs / floor, "paper_ms": None, "speedup_vs_paper": None,
                       "agreement_fp32_vs_auto": None, "certified_dice": dice}
                if n == ns[0] and args.paper_images > 0:
                    paper, _, _ = certify_seconds(data, seg, den, device, None, n, 1, limit=args.paper_images)
                    row.update(paper_ms=1e3 * paper, speedup_vs_paper=paper / secs)
                if auto != "fp32":
                    _, certs32, _ = certify_seconds(data, seg, den, device, "fp32", n, batch)
                    row["agreement_fp32_vs_auto"] = agreement(certs32, certs)
                out.append(row)
                paper_s = "-" if row["paper_ms"] is None else f"{row['paper_ms']:9.1f}"
                speed_s = "-" if row["speedup_vs_paper"] is None else f"{row['speedup_vs_paper']:7.1f}x"
                agree = row["agreement_fp32_vs_auto"]
                agree_s = "not meas." if agree is None else f"{100 * agree:9.3f}%"
                print(f"  {den_name:8s} {size:4d} {n:5d} {batch:5d} {row['floor_ms']:9.1f} {row['certify_ms']:10.1f} "
                      f"{row['overhead']:8.2f} {paper_s:>9s} {speed_s:>8s} {agree_s:>10s} {dice:9.4f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v)
    return out


if __name__ == "__main__":
    main()
