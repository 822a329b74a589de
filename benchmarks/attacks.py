"""Certified vs empirical robustness under real attacks, with certificate violation counts.

    python benchmarks/attacks.py                      # defaults below, about 10-15 min on 2 shared CPU cores
    python benchmarks/attacks.py --images 4 --kvasir-images 3 -n 100

For each method and data set, through :func:`certframe.attacks.suite.attack_dataset`
(SegCertify, Holm, n0 = 10, n = ``-n``, alpha = 0.001, tau = 0.75): certify x;
attack with PGD-L2 and PGD-Linf on the base segmenter and EOT-PGD-L2 / EOT-PGD-Linf
on the smoothed pipeline (gradients through noise draws, denoiser, segmenter);
certify x'. Reported per method and budget: clean and attacked Dice of the base
segmenter f and of the smoothed segmenter g (worst over the attacks run),
certified Dice at radius >= eps, and certificate violations (pixels certified on
x whose radius exceeds ||x' - x||_2 and that x' certifies as another class;
expected 0), and the cost of each attack per image.

Methods:

* synthetic-lung (64x64 grey, sigma 0.25): the undefended bundled segmenter
  ``synthetic-lung`` smoothed without denoiser ("base"); the Gaussian-trained
  ``synthetic-lung-noise0.25`` ("gaussian"); ``synthetic-lung`` behind the ``ddpm``
  denoiser when a DDPM for it is bundled ("ddpm").
* Kvasir-SEG (``--kvasir-root``, 128x128 RGB, sigma 0.5) when the folder and the
  segmenters trained by ``benchmarks/kvasir_segmenters.py`` exist under
  ``benchmarks/out/kvasir/``: ``kvasir-unet-clean`` (base), ``kvasir-unet-noise0.5``
  (gaussian), and ``kvasir-unet-clean`` behind ``benchmarks/out/kvasir/ddpm-kvasir-64``
  when that trained DDPM folder exists.

What is missing is said in the report. The report is printed and written to
``benchmarks/results/attacks.txt``. Timings are wall-clock seconds on the machine
that ran it (shared, noisy); nothing here asserts a verdict.
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import pandas as pd
import torch

from certframe.attacks.suite import robustness_table, summarize_attacks
from certframe.core.statistics import certified_radius
from certframe.registry import get_registry
from certframe.run import Names, attack_dataset

HERE = Path(__file__).resolve().parent
DEFAULT_ROOT = HERE.parent.parent / "shared" / "data" / "Kvasir-SEG"
KVASIR_OUT = HERE / "out" / "kvasir"
ATTACKS = ("pgdl2", "eot-pgdl2", "pgd", "eot-pgd")


def try_denoiser(registry, **options):
    try:
        return registry.create("denoiser", "ddpm", **options), None
    except FileNotFoundError as err:
        return None, str(err).split(";")[0]


def run_methods(title, data, methods, *, sigma, eps_l2, eps_linf, args, registry, log):
    certifier = registry.create("certifier", "segcertify")
    factories = {a: registry.get("attack", a).factory for a in ATTACKS}
    options = {"eot-pgdl2": {"num_draws": args.draws, "steps": args.steps},
               "eot-pgd": {"num_draws": args.draws, "steps": args.steps},
               "pgdl2": {"steps": args.steps}, "pgd": {"steps": args.steps}}
    frames = []
    for label, seg, den in methods:
        t0 = time.perf_counter()
        rows = list(attack_dataset(data, seg, den, certifier, factories, sigma=sigma, n0=10, n=args.n,
                                   alpha=0.001, taus=(0.75,), eps_l2=eps_l2, eps_linf=eps_linf,
                                   attack_options=options, batch_size=args.batch_size, seed=0, device="cpu",
                                   names=Names(segmenter=label, denoiser="ddpm" if den is not None else "none"),
                                   indices=range(min(args.images if title.startswith("synthetic") else
                                                     args.kvasir_images, len(data)))))
        log(f"  {label}: {len(rows)} rows in {time.perf_counter() - t0:.0f} s")
        frames.append(pd.DataFrame(rows))
    df = pd.concat(frames, ignore_index=True)
    table = robustness_table(df)
    log("")
    log(f"{title}: empirical vs certified Dice (mean over {df.image_id.nunique()} images; attacked = worst "
        f"over the attacks run at that budget)")
    cols = ["segmenter", "denoiser", "norm", "eps", "eps_l2_bound", "radius", "clean_dice", "base_robust_dice",
            "smoothed_dice", "smoothed_robust_dice", "certified_dice_at_eps", "covered", "violations"]
    log(table[cols].rename(columns={"eps_l2_bound": "l2_bound", "clean_dice": "f_clean",
                                    "base_robust_dice": "f_attacked", "smoothed_dice": "g_clean",
                                    "smoothed_robust_dice": "g_attacked",
                                    "certified_dice_at_eps": "g_certified"})
        .to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    summary = summarize_attacks(df)
    log("")
    log(f"{title}: per attack (attack_s = wall seconds per image; viol = violations, abst = covered pixels "
        f"abstained on x', flips = covered pixels whose majority vote on x' flipped)")
    cols = ["segmenter", "denoiser", "attack", "norm", "eps", "perturbation_l2", "base_robust_dice",
            "smoothed_robust_dice", "certified_dice_adv", "covered", "violations", "abstained", "majority_flips",
            "attack_seconds"]
    log(summary[cols].rename(columns={"perturbation_l2": "|d|_2", "base_robust_dice": "f_att",
                                      "smoothed_robust_dice": "g_att", "certified_dice_adv": "g_cert_x'",
                                      "abstained": "abst", "majority_flips": "flips", "violations": "viol",
                                      "attack_seconds": "attack_s"})
        .to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return df


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=3, help="synthetic images")
    p.add_argument("--kvasir-images", type=int, default=2, help="Kvasir-SEG test images")
    p.add_argument("--kvasir-root", type=Path, default=DEFAULT_ROOT)
    p.add_argument("-n", type=int, default=100, help="estimation draws")
    p.add_argument("--steps", type=int, default=5, help="attack iterations")
    p.add_argument("--draws", type=int, default=4, help="EOT noise draws per step")
    p.add_argument("--batch-size", type=int, default=55)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--output", type=Path, default=HERE / "results" / "attacks.txt")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    lines: list[str] = []

    def log(s=""):
        print(s, flush=True)
        lines.append(s)

    start = time.perf_counter()
    registry = get_registry()
    log(f"certframe attack benchmark; torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{args.threads} thread(s); SegCertify Holm n0=10 n={args.n} alpha=0.001 tau=0.75; attacks "
        f"{', '.join(ATTACKS)} with {args.steps} steps, EOT {args.draws} draws/step, seed 0")

    # -- synthetic
    sigma = 0.25
    data = registry.create("dataset", "synthetic-lung", count=args.images, size=64, split="test")
    seg = registry.create("segmenter", "monai", weights="synthetic-lung")
    methods = [("synthetic-lung", seg, None),
               ("synthetic-lung-noise0.25", registry.create("segmenter", "monai",
                                                            weights="synthetic-lung-noise0.25"), None)]
    den, why = try_denoiser(registry)
    if den is not None:
        methods.append(("synthetic-lung", seg, den))
    else:
        log(f"NOTE: no DDPM for synthetic-lung ({why}): the ddpm-denoised method is NOT measured on synthetic data")
    R = certified_radius(sigma, 0.75)
    log(f"\n== synthetic-lung, {args.images} test images 64x64, sigma {sigma}, R(0.75) = {R:.4f}")
    run_methods("synthetic-lung", data, methods, sigma=sigma, eps_l2=(R * (1 - 1e-6), 0.5), eps_linf=(1 / 255,),
                args=args, registry=registry, log=log)

    # -- Kvasir-SEG
    log("")
    clean_w, noise_w = KVASIR_OUT / "kvasir-unet-clean.safetensors", KVASIR_OUT / "kvasir-unet-noise0.5.safetensors"
    if not (args.kvasir_root / "images").is_dir():
        log(f"NOTE: Kvasir-SEG not found at {args.kvasir_root}: synthetic data only")
    elif not (clean_w.is_file() and noise_w.is_file()):
        log(f"NOTE: trained Kvasir segmenters missing under {KVASIR_OUT} (run benchmarks/kvasir_segmenters.py): "
            f"synthetic data only")
    else:
        sigma = 0.5
        data = registry.create("dataset", "kvasir-seg", root=str(args.kvasir_root), size=128, split="test", seed=0)
        clean = registry.create("segmenter", "monai", weights=str(clean_w))
        methods = [("kvasir-unet-clean", clean, None),
                   ("kvasir-unet-noise0.5", registry.create("segmenter", "monai", weights=str(noise_w)), None)]
        den, why = try_denoiser(registry, model=str(KVASIR_OUT / "ddpm-kvasir-64"))
        if den is not None:
            methods.append(("kvasir-unet-clean", clean, den))
        else:
            log(f"NOTE: no trained Kvasir DDPM ({why}): the ddpm-denoised method is NOT measured on Kvasir-SEG")
        R = certified_radius(sigma, 0.75)
        log(f"== Kvasir-SEG, first {args.kvasir_images} test images at 128x128, sigma {sigma}, R(0.75) = {R:.4f}")
        run_methods("Kvasir-SEG", data, methods, sigma=sigma, eps_l2=(R * (1 - 1e-6), 1.0), eps_linf=(1 / 255,),
                    args=args, registry=registry, log=log)
    log(f"\ntotal {time.perf_counter() - start:.0f} s")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
