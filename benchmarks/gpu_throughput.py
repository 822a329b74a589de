"""Images per second certified: the paper's path vs certframe's batched, mixed-precision path.

    python benchmarks/gpu_throughput.py [--images 8] [--size 256] [--n 100] [--device cuda]

Both paths certify the same images (synthetic-lung at ``size`` px) with SegCertify,
n0 = 10 selection and n = 100 estimation draws, in one run on one device:

* paper: one noise draw per forward pass, fp32 (the loop of Laousy et al. 2023 and
  Fischer et al. 2021's reference code);
* certframe: ``--batch-size auto`` (fits the free GPU memory), bf16/fp16 autocast and
  channels_last on CUDA (:mod:`certframe.accelerate`), prefetching.

The pipeline is ``denoiser -> segmenter``: the bundled ``synthetic-lung`` UNet behind a
diffusers ``UNet2DModel`` one-shot denoiser stand-in with random weights (the cost of
a DDPM call, not its quality; ``--no-denoiser`` drops it). Printed: images/s of both
paths, their ratio, and the share of pixels whose certified label (class or abstain)
agrees between fp32 and mixed precision. Figures, not verdicts: nothing asserts.
"""
from __future__ import annotations

import argparse
import time

import torch

from certframe.accelerate import Acceleration
from certframe.run import certify_dataset
from certframe.interfaces import Denoiser
from certframe.plugins.certifiers.segcertify import SegCertify
from certframe.registry import get_registry


class UNetDenoiserStandIn(Denoiser):
    """A diffusers ``UNet2DModel`` called once per draw, as a one-shot DDPM denoiser would be.

    ``[B, C, H, W]`` noisy in [0,1]-space -> ``[B, C, H, W]`` clipped to [0, 1]. Random weights:
    for timing only.
    """

    def __init__(self, channels: int, size: int, widths=(64, 128, 256, 256)):
        super().__init__()
        from diffusers import UNet2DModel

        torch.manual_seed(0)
        self.unet = UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels,
                                block_out_channels=tuple(widths), layers_per_block=1,
                                down_block_types=("DownBlock2D",) * len(widths),
                                up_block_types=("UpBlock2D",) * len(widths))

    def forward(self, noisy, sigma):
        t = torch.full((noisy.shape[0],), 100, device=noisy.device, dtype=torch.long)
        eps = self.unet(noisy * 2 - 1, t).sample
        return (noisy - sigma * eps).clamp(0, 1)


def run(path, data, seg, den, device, n0, n, accelerate, batch_size):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    certs = []
    rows = list(certify_dataset(data, seg, den, SegCertify(), sigma=0.25, n0=n0, n=n, alpha=0.001,
                                taus=(0.75,), batch_size=batch_size, seed=0, device=device,
                                accelerate=accelerate,
                                on_certificates=lambda i, s, c, clean: certs.append(c[0].labels.cpu())))
    if device.type == "cuda":
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    print(f"  {path:46s} {len(rows) / secs:9.3f} images/s  ({secs:7.2f} s, "
          f"certified Dice {sum(r['certified_dice'] for r in rows) / len(rows):.4f})")
    return len(rows) / secs, certs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--n0", type=int, default=10)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-denoiser", action="store_true")
    parser.add_argument("--compile", action="store_true", help="also torch.compile the certframe path")
    args = parser.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if device.type == "cpu":
        torch.set_num_threads(1)
    reg = get_registry()
    data = reg.create("dataset", "synthetic-lung", count=args.images, size=args.size)
    seg = reg.create("segmenter", "monai", weights="synthetic-lung")
    den = None if args.no_denoiser else UNetDenoiserStandIn(1, args.size)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    fast = Acceleration(compile=args.compile).resolve(device)
    print(f"[gpu] {name}: {args.images} images {args.size}x{args.size}, n0={args.n0}, n={args.n}, "
          f"pipeline {'UNet2DModel stand-in -> ' if den is not None else ''}monai UNet; "
          f"certframe path: {fast.as_dict()}")
    # warm-up (cuDNN autotune, allocator, compile) on one image for both paths
    warm = type(data)(count=1, size=args.size, seed=99)
    run("warm-up", warm, seg, den, device, args.n0, args.n, Acceleration(**fast.as_dict()), "auto")
    paper, c_paper = run("paper: 1 draw per pass, fp32", data, seg, den, device, args.n0, args.n, None, 1)
    ours, c_ours = run(f"certframe: batched (auto) + {fast.precision}", data, seg, den, device, args.n0, args.n,
                       Acceleration(**fast.as_dict()), "auto")
    agree = torch.cat([(a == b).flatten() for a, b in zip(c_paper, c_ours)]).float().mean().item()
    print(f"[gpu] speed-up {ours / paper:.2f}x; certified labels agree on {100 * agree:.3f}% of pixels "
          f"(fp32 vs {fast.precision})")


if __name__ == "__main__":
    main()
