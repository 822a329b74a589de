"""Adaptive vs fixed-n certification: forward passes (noise draws) used and certified Dice.

    python benchmarks/adaptive_vs_fixed.py [--images 40] [--n 1000] [--kvasir-images 40]
        [--kvasir-weights W] [--kvasir-noise-weights W] [--parts synthetic,kvasir-clean,kvasir-gaussian]

Each image is certified with SegCertify at a fixed n (n0 + n draws) and with the
adaptive certifier (``plugins/certifiers/adaptive.py``; n is its largest look), on
the same draws (the adaptive one uses a prefix of them). Printed: mean draws per
image (each draw is one denoiser + segmenter evaluation), the ratio fixed/adaptive
(target >= 3) and mean certified Dice (target: within 1 point of fixed), for a sweep
of ``dice_tolerance`` (stop once the certificate is expected to be within that Dice
of the one all n draws would give; 0 = stop only when every pixel is resolved).
Rows meeting both targets are marked ``<- target``.

Data: the bundled ``synthetic-lung`` set with its Gaussian-trained weights
(``synthetic-lung-noise0.25``, sigma 0.25), and Kvasir-SEG test images from
``/work/shared/data/Kvasir-SEG`` with the issue-3 segmenter
``benchmarks/out/kvasir/kvasir-unet-clean.safetensors`` (trained on clean images, so
it is certified at a small sigma, 0.05, without a denoiser) and, when present, the
sigma-0.5 Gaussian-trained ``kvasir-unet-noise0.5.safetensors`` at sigma 0.25; skipped
when the data or weights are missing. ``--kvasir-weights`` / ``--kvasir-noise-weights``
take others (the results file uses the MONAI UNets of ``kvasir_own_models.py``, same
network, trained until validation Dice stopped improving); ``--parts`` picks tables, so
that one process per table can use more cores. Figures are measured in one run; nothing here asserts.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from certframe.interfaces import CertifyRequest
from certframe.plugins.certifiers.adaptive import AdaptiveSegCertify
from certframe.plugins.certifiers.segcertify import SegCertify
from certframe.registry import get_registry
from certframe.run import Names, certify_dataset

ROOT = Path(__file__).resolve().parent.parent
KVASIR = Path("/work/shared/data/Kvasir-SEG")
KVASIR_WEIGHTS = ROOT / "benchmarks" / "out" / "kvasir" / "kvasir-unet-clean.safetensors"
KVASIR_NOISE_WEIGHTS = KVASIR_WEIGHTS.with_name("kvasir-unet-noise0.5.safetensors")


def compare(title, dataset, segmenter, *, sigma, n0, n, alpha, tau, certifiers):
    print(f"\n[{title}] {len(dataset)} images, sigma={sigma}, tau={tau}, alpha={alpha}, n0={n0}, n={n}")
    print(f"  {'certifier':38s} {'draws/image':>12s} {'ratio':>7s} {'cert. Dice':>11s} {'abstain':>8s} {'s/image':>8s}")
    base = None
    for label, cert in certifiers:
        t0 = time.perf_counter()
        rows = list(certify_dataset(dataset, segmenter, None, cert, sigma=sigma, n0=n0, n=n, alpha=alpha,
                                    taus=(tau,), batch_size=100, seed=0, device="cpu",
                                    names=Names(certifier=cert.name)))
        secs = (time.perf_counter() - t0) / len(rows)
        draws = sum(r["num_samples"] for r in rows) / len(rows)
        dice = 100 * sum(r["certified_dice"] for r in rows) / len(rows)
        abstain = sum(r["abstain_rate"] for r in rows) / len(rows)
        if base is None:
            base = (draws, dice)
        ratio, delta = base[0] / draws, dice - base[1]
        mark = "  <- target" if ratio >= 3 and delta >= -1 else ""
        print(f"  {label:38s} {draws:12.1f} {ratio:7.2f} {dice:10.2f}  {abstain:8.4f} {secs:8.2f}"
              f"   (Dice {delta:+.2f} points){mark}")


DICE_TOLERANCES = (0.0, 0.005, 0.01, 0.02, 0.05)


def certifiers():
    rows = [("segcertify (fixed n)", SegCertify())]
    for tol in DICE_TOLERANCES:
        label = f"adaptive, dice_tolerance {tol:g}" + (" (default)" if tol == 0.01 else "")
        rows.append((label, AdaptiveSegCertify(dice_tolerance=tol)))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--kvasir-images", type=int, default=40)
    parser.add_argument("--kvasir-weights", type=Path, default=KVASIR_WEIGHTS,
                        help="the clean-trained Kvasir-SEG MONAI UNet (e.g. benchmarks/out/kvasir/own-monai-unet-clean"
                             ".safetensors from kvasir_own_models.py)")
    parser.add_argument("--kvasir-noise-weights", type=Path, default=KVASIR_NOISE_WEIGHTS,
                        help="the sigma-0.5 Gaussian-trained one")
    parser.add_argument("--parts", default="synthetic,kvasir-clean,kvasir-gaussian",
                        help="comma list of the tables to measure (one process per part uses more cores)")
    args = parser.parse_args()
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not parts or parts - {"synthetic", "kvasir-clean", "kvasir-gaussian"}:
        parser.error(f"--parts: expected a comma list of synthetic, kvasir-clean, kvasir-gaussian; got {args.parts!r}")
    torch.set_num_threads(1)
    reg = get_registry()
    data = reg.create("dataset", "synthetic-lung", count=args.images, size=args.size)
    seg = reg.create("segmenter", "monai", weights="synthetic-lung-noise0.25")
    probe = CertifyRequest(sigma=0.25, n0=10, n=args.n, alpha=0.001, taus=(0.75,))
    print("adaptive certifier: looks", AdaptiveSegCertify().schedule(probe, args.size ** 2),
          f"at {args.size}x{args.size},", AdaptiveSegCertify().schedule(probe, 128 ** 2),
          "at 128x128; Bonferroni spending, futility beta 0.001")
    if "synthetic" in parts:
        compare("synthetic-lung, Gaussian-trained UNet", data, seg, sigma=0.25, n0=10, n=args.n, alpha=0.001,
                tau=0.75, certifiers=certifiers())
    if not parts & {"kvasir-clean", "kvasir-gaussian"}:
        return
    if not (KVASIR / "images").is_dir() or not args.kvasir_weights.is_file():
        print(f"\n[kvasir-seg] skipped: needs {KVASIR} and {args.kvasir_weights}")
        return
    kv = _Subset(reg.create("dataset", "kvasir-seg", root=str(KVASIR), size=128, split="test"),
                 args.kvasir_images)
    if "kvasir-clean" in parts:
        seg = reg.create("segmenter", "monai", weights=str(args.kvasir_weights))
        compare("kvasir-seg test split (128 px), clean-trained UNet, no denoiser", kv, seg, sigma=0.05, n0=10,
                n=args.n, alpha=0.001, tau=0.75, certifiers=certifiers())
    if "kvasir-gaussian" in parts and args.kvasir_noise_weights.is_file():
        seg = reg.create("segmenter", "monai", weights=str(args.kvasir_noise_weights))
        compare("kvasir-seg test split (128 px), sigma-0.5 Gaussian-trained UNet", kv, seg, sigma=0.25, n0=10,
                n=args.n, alpha=0.001, tau=0.75, certifiers=certifiers())


class _Subset:
    """The first ``k`` items of a data set (same class names and channels)."""

    def __init__(self, dataset, k):
        self.dataset, self.k = dataset, min(int(k), len(dataset))
        self.class_names, self.in_channels = dataset.class_names, dataset.in_channels
        self.num_classes = dataset.num_classes

    def __len__(self):
        return self.k

    def __getitem__(self, i):
        if not 0 <= i < self.k:
            raise IndexError(i)
        return self.dataset[i]


if __name__ == "__main__":
    main()
