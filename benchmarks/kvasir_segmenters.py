"""Kvasir-SEG: a clean and a Gaussian-trained (sigma 0.5) segmenter, clean and certified Dice.

    python benchmarks/kvasir_segmenters.py                       # defaults below
    python benchmarks/kvasir_segmenters.py --root PATH --size 128 --epochs 25 --certify-images 50

Trains two MONAI UNets (channels 16-32-64-128, strides 2-2-2, one residual unit)
on the seeded train split of Kvasir-SEG resized to ``--size`` x ``--size`` (70 %
train / 10 % val / 20 % test, seed 0): one on clean images, one with Gaussian
noise augmentation at sigma 0.5 (Cohen et al. 2019). Then, on the test split:

* clean Dice of each base model on all test images;
* certified Dice of the smoothed model (SegCertify, Fischer et al. 2021; no
  denoiser) at sigma 0.25 and 0.5, n0 = 10, n = 100, alpha = 0.001 (Holm),
  tau = 0.75, on the first ``--certify-images`` test images (a subset, to fit a
  CPU budget; the table says how many), through :func:`certframe.run.certify_dataset`.

Checkpoints go to ``benchmarks/out/kvasir/`` (git-ignored) so other work (diffusion
denoisers in front of these segmenters) can reuse them; rerunning resumes or
reuses finished training. The printed report is also written to
``benchmarks/results/kvasir_segmenters.txt``. Timings are wall-clock seconds on
the machine that ran it (shared and noisy); nothing here asserts.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
DEFAULT_ROOT = HERE.parent.parent / "shared" / "data" / "Kvasir-SEG"
NETWORK = {"channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 1}
MODELS = (("kvasir-unet-clean", 0.0), ("kvasir-unet-noise0.5", 0.5))
SIGMAS = (0.25, 0.5)


def train_one(name, sigma, train, val, args, out: Path, log):
    from certframe.plugins.segmenters.monai_segmenter import MonaiSegmenter
    from certframe.training.segmenter import load_resume_state, resume_dir, train_segmenter

    path = out / f"{name}.safetensors"
    resume = (resume_dir(path) / "state.json").is_file()
    if resume and load_resume_state(path)["epoch"] + 1 >= args.epochs and path.is_file():
        log(f"{name}: reusing finished training in {path}")
        return path, None
    torch.manual_seed(args.seed)
    model = MonaiSegmenter(weights="random", arch="unet", in_channels=3, num_classes=2, network=NETWORK)
    config = {**model.config, "class_names": list(train.class_names), "dataset": "kvasir-seg",
              "dataset_options": {"size": args.size, "seed": args.seed}, "dataset_identity": train.identity()}
    start = time.perf_counter()
    res = train_segmenter(model, train, val, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                          noise_sigma=sigma, seed=args.seed, checkpoint=path, config=config, resume=resume,
                          on_epoch=lambda r: print(f"  {name} epoch {r['epoch'] + 1}: loss {r['loss']:.4f} "
                                                   f"val Dice {r['val_dice']:.4f}", flush=True))
    seconds = time.perf_counter() - start
    log(f"{name}: best val Dice {res.best_dice:.4f} at epoch {res.best_epoch + 1}/{args.epochs}, "
        f"training {seconds:.0f} s{' (resumed)' if resume else ''}")
    return path, seconds


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--certify-images", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=HERE / "out" / "kvasir")
    p.add_argument("--results", type=Path, default=HERE / "results" / "kvasir_segmenters.txt")
    args = p.parse_args(argv)

    from certframe.core import metrics
    from certframe.plugins.segmenters.monai_segmenter import MonaiSegmenter
    from certframe.registry import get_registry
    from certframe.run import Names, certify_dataset

    torch.set_num_threads(args.threads)
    if not args.root.is_dir():
        raise SystemExit(f"Kvasir-SEG not found at {args.root} (pass --root)")
    lines: list[str] = []

    def log(line=""):
        print(line, flush=True)
        lines.append(line)

    total_start = time.perf_counter()
    registry = get_registry()
    data = {s: registry.create("dataset", "kvasir-seg", root=str(args.root), size=args.size, split=s,
                               seed=args.seed) for s in ("train", "val", "test")}
    log(f"Kvasir-SEG at {args.size}x{args.size}: {len(data['train'])} train / {len(data['val'])} val / "
        f"{len(data['test'])} test images (seeded split, seed {args.seed})")
    log(f"UNet {json.dumps(NETWORK)}, Dice+CE, Adam lr {args.lr}, batch {args.batch_size}, "
        f"{args.epochs} epochs, h-flip; torch {torch.__version__}, {args.threads} thread(s), "
        f"{platform.processor() or platform.machine()}")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.out.is_relative_to(HERE / "out"):  # keep the checkpoints out of git
        (HERE / "out" / ".gitignore").write_text("*\n")
    paths = {}
    for name, sigma in MODELS:
        paths[name], _ = train_one(name, sigma, data["train"], data["val"], args, args.out, log)

    certifier = registry.create("certifier", "segcertify")
    test = data["test"]
    k = min(args.certify_images, len(test))
    rows = []
    for name, train_sigma in MODELS:
        model = MonaiSegmenter(weights=str(paths[name])).eval()
        with torch.inference_mode():
            clean = [metrics.mean_dice(model(test[i].image[None]).argmax(1)[0], test[i].mask, 2)
                     for i in range(len(test))]
        clean_all = sum(clean) / len(clean)
        for sigma in SIGMAS:
            start = time.perf_counter()
            res = list(certify_dataset(test, model, None, certifier, sigma=sigma, n0=10, n=100, alpha=0.001,
                                       taus=(0.75,), batch_size=55, seed=args.seed, device="cpu",
                                       names=Names(segmenter=name), indices=range(k)))
            seconds = time.perf_counter() - start
            mean = lambda key: sum(r[key] for r in res) / len(res)  # noqa: E731
            rows.append({"model": name, "train_sigma": train_sigma, "sigma": sigma,
                         "clean_dice_all": clean_all, "clean_dice_subset": sum(clean[:k]) / k,
                         "certified_dice": mean("certified_dice"), "abstain": mean("abstain_rate"),
                         "radius": res[0]["radius"], "seconds": seconds, "per_image": seconds / k})
            print(f"  certified {name} at sigma {sigma}: {rows[-1]['certified_dice']:.4f} ({seconds:.0f} s)",
                  flush=True)

    log("")
    log(f"Test split: clean Dice on all {len(test)} images; certified Dice on the first {k} "
        f"(SegCertify, Holm, n0=10, n=100, alpha=0.001, tau=0.75, no denoiser)")
    header = (f"{'model':<22} {'train sigma':>11} {'clean Dice':>10} {'clean Dice':>10} {'sigma':>6} "
              f"{'radius':>7} {'cert. Dice':>10} {'abstain':>8} {'s/image':>8}")
    log(header)
    log(f"{'':<22} {'':>11} {f'(all {len(test)})':>10} {f'(first {k})':>10}")
    for r in rows:
        log(f"{r['model']:<22} {r['train_sigma']:>11.2f} {r['clean_dice_all']:>10.4f} "
            f"{r['clean_dice_subset']:>10.4f} {r['sigma']:>6.2f} {r['radius']:>7.4f} "
            f"{r['certified_dice']:>10.4f} {r['abstain']:>8.4f} {r['per_image']:>8.2f}")
    log("")
    for name, _ in MODELS:
        shown = paths[name].relative_to(HERE.parent) if paths[name].is_relative_to(HERE.parent) else paths[name]
        log(f"checkpoint {name}: {shown}")
    log(f"total wall time {time.perf_counter() - total_start:.0f} s")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
