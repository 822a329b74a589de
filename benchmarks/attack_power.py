"""Detection power of the falsification test (issue 13): overclaiming certifiers caught, honest ones not.

    python benchmarks/attack_power.py                       # defaults below
    python benchmarks/attack_power.py --images 4 -n 500 --empirical

Synthetic lungs (64x64 grey) with the bundled Gaussian-trained UNet
``synthetic-lung-noise0.25`` smoothed at sigma 0.25, no denoiser. Per image:

* honest certificates: SegCertify (Holm), adaptive SegCertify and Cohen per pixel,
  n0 = 10, n = ``-n``, alpha = 0.001, tau = 0.75;
* overclaiming certifiers: SegCertify's certificate with its radius multiplied by
  1.5, 2, 4, 10 (exactly what a plugin wrapping SegCertify and scaling its radius
  would return);
* each certificate is checked with :func:`certframe.attacks.falsification.falsify` with
  its default options (8 weakest pixels, 20 APGD steps x 2 restarts, 8 EOT draws,
  n_test = 1696, Holm at level 0.001), minimal-norm search off unless ``--empirical``.

Reported per certifier: images, images with at least one covered pixel, share of
tested images with a caught violation (honest: false alarms), violations / tested
pixels, the smallest Clopper-Pearson upper bound seen, and seconds per image of the
falsification test. ``--kvasir ROOT --weights W --size 128 --sigma S`` runs the
test split of Kvasir-SEG with a Gaussian-trained UNet instead (train one with
``certframe train segmenter --dataset kvasir-seg ... --noise-sigma S``). Results:
``benchmarks/results/attack_power.txt`` (first line: the command). Timings are wall clock
on a shared machine; nothing here asserts a verdict.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from certframe.attacks.falsification import falsify
from certframe.core.smoothing import SmoothedSegmenter
from certframe.interfaces import NoiseKey
from certframe.registry import get_registry

OUT = Path(__file__).resolve().parent / "results" / "attack_power.txt"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("-n", type=int, default=500)
    ap.add_argument("--factors", type=float, nargs="+", default=[1.5, 2, 4, 10])
    ap.add_argument("--empirical", action="store_true", help="also run the minimal-norm search")
    ap.add_argument("--output", type=Path, default=OUT)
    ap.add_argument("--kvasir", type=Path, default=None,
                    help="Kvasir-SEG root (images/, masks/): run on its test split instead of synthetic lungs")
    ap.add_argument("--weights", default="synthetic-lung-noise0.25", help="monai segmenter weights")
    ap.add_argument("--size", type=int, default=64, help="image size (Kvasir-SEG)")
    ap.add_argument("--sigma", type=float, default=0.25)
    args = ap.parse_args(argv)
    command = "python benchmarks/attack_power.py " + " ".join(sys.argv[1:] if argv is None else argv)
    torch.manual_seed(0)
    registry = get_registry()
    seg = registry.create("segmenter", "monai", weights=args.weights).eval()
    if args.kvasir is None:
        data = registry.create("dataset", "synthetic-lung", count=args.images, size=64)
        what = f"synthetic-lung 64x64, monai:{Path(args.weights).stem}"
    else:
        full = registry.create("dataset", "kvasir-seg", root=str(args.kvasir), size=args.size, split="test")
        data = [full[i] for i in range(min(args.images, len(full)))]
        what = f"Kvasir-SEG test split {args.size}x{args.size}, monai:{Path(args.weights).stem}"
    sigma = args.sigma
    smoothed = SmoothedSegmenter(seg, None, sigma)
    certifiers = {"segcertify": registry.create("certifier", "segcertify"),
                  "adaptive": registry.create("certifier", "adaptive"),
                  "cohen-per-pixel": registry.create("certifier", "cohen-per-pixel")}
    rows, pixel_rows = [], []
    t_start = time.perf_counter()
    for index in range(len(data)):
        sample = data[index]
        certs = {}
        for name, certifier in certifiers.items():
            (cert,) = smoothed.certify(sample.image, certifier, n0=10, n=args.n, alpha=0.001, taus=(0.75,),
                                       key=NoiseKey(0, sample.id))
            certs[name] = cert
        for k in args.factors:
            base = certs["segcertify"]
            certs[f"segcertify-x{k:g}"] = replace(base, radius=base.radius * k, method=f"segcertify-x{k:g}")
        for name, cert in certs.items():
            r = falsify(smoothed, sample.image, cert, seed=0, image_id=sample.id, empirical=args.empirical)
            rows.append({"certifier": name, **r.as_row()})
            pixel_rows += r.pixel_rows()
            print(f"{sample.id} {name:20s} covered {r.covered:5d} tested {r.tested} violations {r.violations} "
                  f"min U {r.min_upper_bound} {r.falsify_seconds:.1f}s", flush=True)
    df = pd.DataFrame(rows)
    lines = [command, "",
             f"{what}, sigma {sigma}, no denoiser; certify n0=10 "
             f"n={args.n} alpha=0.001 tau=0.75; falsify defaults (8 pixels, 20 steps x 2 restarts, 8 EOT draws, "
             f"n_test from level 0.001, Holm); empirical search {'on' if args.empirical else 'off'}",
             f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {platform.machine()}", ""]
    header = (f"{'certifier':20s} {'images':>6s} {'tested':>6s} {'caught':>7s} {'share':>6s} {'viol/pix':>9s} "
              f"{'min U':>7s} {'s/image':>8s}")
    lines.append(header)
    for name, g in df.groupby("certifier", sort=False):
        tested = g[~g["not_tested"]]
        caught = int((tested["violations"].fillna(0) > 0).sum())
        share = f"{caught / len(tested):.2f}" if len(tested) else "n/a"
        vp = f"{int(tested['violations'].sum())}/{int(tested['tested'].sum())}" if len(tested) else "n/a"
        mu = f"{tested['min_upper_bound'].min():.3f}" if len(tested) else "n/a"
        lines.append(f"{name:20s} {len(g):6d} {len(tested):6d} {caught:7d} {share:>6s} {vp:>9s} {mu:>7s} "
                     f"{g['falsify_seconds'].mean():8.1f}")
    if args.empirical and pixel_rows:
        p = pd.DataFrame(pixel_rows)
        p = p[p["method"] == "segcertify"]
        found = p["empirical_radius"].notna()
        lines += ["", f"honest segcertify, attacked pixels: {len(p)}; flip found within 4R: {int(found.sum())}; "
                      f"median empirical / certified radius: "
                      f"{(p.loc[found, 'empirical_radius'] / p.loc[found, 'certified_radius']).median():.2f}"]
    lines += ["", "share = tested images with >= 1 caught violation (for honest certifiers: false alarms); "
                  "'tested' = images where the certificate covered at least one pixel",
              f"total wall time {time.perf_counter() - t_start:.0f} s"]
    text = "\n".join(lines) + "\n"
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)


if __name__ == "__main__":
    main()
