"""Kvasir-SEG: does a DDPM denoiser in front of a clean segmenter beat Gaussian training?

    python benchmarks/kvasir_diffusion.py                        # defaults below, about 20-40 min on 2 shared CPU cores
    python benchmarks/kvasir_diffusion.py --root PATH --ddpm-steps 600 --certify-images 10 --ddim-steps 2

The claim of Carlini et al. (ICLR 2023) and Laousy et al. (MICCAI 2023): a
diffusion model used as a one-shot denoiser keeps certified Dice high where a
noise-trained segmenter fails, at sigma 0.5 and 1.0. This script measures it.

1. A DDPM (diffusers UNet2DModel, block_out_channels ``--ddpm-channels``) trained
   here on the train split at ``--ddpm-size`` (64x64: CPU-feasible), timesteps
   concentrated on ``0 .. t*(1.25 s)`` with s = 1.0 x the noise shrink of the
   128 -> 64 resize (0.315) (:mod:`certframe.diffusion_training`), EMA
   weights; resumable, saved to ``benchmarks/out/kvasir/ddpm-kvasir-<size>``. At
   certification the 128x128 noisy images are resized to the DDPM's resolution
   (with ``t*`` for the noise std after resizing) and the result resized back.
2. Segmenters at 128x128 (the resolution of ``benchmarks/kvasir_segmenters.py``):
   the clean UNet and the Gaussian-trained UNets that script saves under
   ``benchmarks/out/kvasir/`` are reused (``kvasir-unet-clean``,
   ``kvasir-unet-noise<sigma>``); missing ones (``--gaussian-sigmas``) are
   trained here with the same settings (:func:`certframe.training.train_segmenter`,
   ``--seg-epochs``). The Gaussian baseline at each sigma is the model trained at
   that sigma when there is one, else the one trained at the nearest sigma (the
   table says which).
3. Certified Dice (SegCertify, Holm, n0=10, n=100, alpha=0.001, tau=0.75) at
   sigma 0.25, 0.5, 1.0 on the first ``--certify-images`` images of the test split
   for: clean segmenter without denoiser, Gaussian-trained segmenter, clean
   segmenter + DDPM one-shot, clean segmenter + DDIM (``--ddim-steps``); with the
   forward-pass cost (network calls and wall milliseconds per noisy sample).

The report is printed and written to ``benchmarks/results/kvasir_diffusion.txt``.
Timings are wall-clock on the machine that ran it (shared, noisy); nothing here
asserts a verdict.
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
SEG_NETWORK = {"channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 1}
SIGMAS = (0.25, 0.5, 1.0)


def segmenter_path(out: Path, sigma: float) -> Path:
    return out / ("kvasir-unet-clean.safetensors" if sigma == 0 else f"kvasir-unet-noise{sigma}.safetensors")


def finished(path: Path, epochs: int | None = None) -> bool:
    """A checkpoint whose training reached its last epoch (or has no resume state left behind)."""
    from certframe.training import resume_dir

    if not path.is_file():
        return False
    state = resume_dir(path) / "state.json"
    if not state.is_file():
        return True
    s = json.loads(state.read_text())
    return s["epoch"] + 1 >= (epochs or s["training"].get("epochs", 0))


def train_segmenter_here(sigma, data, args, log):
    from certframe.plugins.segmenters.monai_segmenter import MonaiSegmenter
    from certframe.training import resume_dir, train_segmenter

    path = segmenter_path(args.out, sigma)
    torch.manual_seed(args.seed)
    model = MonaiSegmenter(weights="random", arch="unet", in_channels=3, num_classes=2, network=SEG_NETWORK)
    config = {**model.config, "class_names": list(data["train"].class_names), "dataset": "kvasir-seg",
              "dataset_options": {"size": args.size, "seed": args.seed}}
    start = time.perf_counter()
    res = train_segmenter(model, data["train"], data["val"], epochs=args.seg_epochs, batch_size=16, lr=1e-3,
                          noise_sigma=sigma, seed=args.seed, checkpoint=path, config=config,
                          resume=(resume_dir(path) / "state.json").is_file())
    log(f"trained {path.name} here: {args.seg_epochs} epochs, best val Dice {res.best_dice:.4f}, "
        f"{time.perf_counter() - start:.0f} s")
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    p.add_argument("--size", type=int, default=128, help="segmenter / certification resolution")
    p.add_argument("--ddpm-size", type=int, default=64)
    p.add_argument("--ddpm-channels", default="16,32,32,64")
    p.add_argument("--ddpm-steps", type=int, default=2000)
    p.add_argument("--ddpm-batch-size", type=int, default=16)
    p.add_argument("--ddpm-lr", type=float, default=1e-3)
    p.add_argument("--ddim-steps", type=int, default=2)
    p.add_argument("--seg-epochs", type=int, default=25, help="for segmenters not found in --out")
    p.add_argument("--gaussian-sigmas", default="0.5,1.0",
                   help="train sigmas of the Gaussian baselines to use (trained here when missing)")
    p.add_argument("--certify-images", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=55)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--only-ddpm", action="store_true", help="stop after training the DDPM")
    p.add_argument("--out", type=Path, default=HERE / "out" / "kvasir")
    p.add_argument("--results", type=Path, default=HERE / "results" / "kvasir_diffusion.txt")
    args = p.parse_args(argv)

    from certframe.diffusion_training import resume_dir, train_diffusion
    from certframe.engine import Names, certify_dataset
    from certframe.plugins.denoisers.ddim import DDIMDenoiser
    from certframe.plugins.denoisers.ddpm import DDPMDenoiser
    from certframe.plugins.denoisers.diffusion import resized_noise_std
    from certframe.plugins.segmenters.monai_segmenter import MonaiSegmenter
    from certframe.registry import get_registry

    torch.set_num_threads(args.threads)
    if not args.root.is_dir():
        raise SystemExit(f"Kvasir-SEG not found at {args.root} (pass --root)")
    lines: list[str] = []

    def log(line=""):
        print(line, flush=True)
        lines.append(line)

    total_start = time.perf_counter()
    registry = get_registry()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.out.is_relative_to(HERE / "out"):  # keep checkpoints out of git
        (HERE / "out" / ".gitignore").write_text("*\n")
    data = {s: registry.create("dataset", "kvasir-seg", root=str(args.root), size=args.size, split=s,
                               seed=args.seed) for s in ("train", "val", "test")}
    log(f"Kvasir-SEG at {args.size}x{args.size}: {len(data['train'])} train / {len(data['val'])} val / "
        f"{len(data['test'])} test images (seeded split, seed {args.seed}); torch {torch.__version__}, "
        f"{args.threads} thread(s), {platform.processor() or platform.machine()}")

    # 1. the DDPM (first: it needs nothing else)
    ddpm_dir = args.out / f"ddpm-kvasir-{args.ddpm_size}-{args.ddpm_steps}steps"
    # resizing size -> ddpm_size averages the noise: the DDPM sees std sigma * shrink, so it is trained
    # only on the timesteps t*(sigma * shrink) that certification at max(SIGMAS) can ask for
    shrink = resized_noise_std(1.0, (args.size, args.size), (args.ddpm_size, args.ddpm_size))
    channels = [int(c) for c in args.ddpm_channels.split(",")]
    if (ddpm_dir / "certframe.json").is_file() and not resume_dir(ddpm_dir).exists():
        meta = json.loads((ddpm_dir / "certframe.json").read_text())
        seconds = meta["training"].get("seconds")
        log(f"reusing DDPM {ddpm_dir.name}: UNet2DModel {meta['training']['block_out_channels']}, "
            f"{meta['training']['steps']} steps of batch {meta['training']['batch_size']}, t in "
            f"0..{meta['training']['t_max']}, last loss {meta['history'][-1]['loss']:.4f}"
            + (f", trained in {seconds:.0f} s" if seconds else ""))
    else:
        log(f"training a DDPM at {args.ddpm_size}x{args.ddpm_size}: UNet2DModel {channels}, "
            f"{args.ddpm_steps} steps of batch {args.ddpm_batch_size}, Adam lr {args.ddpm_lr}, EMA, t up to "
            f"t*({max(SIGMAS)} x {shrink:.3f} x 1.25)")
        res = train_diffusion(data["train"], ddpm_dir, size=args.ddpm_size, block_out_channels=channels,
                              steps=args.ddpm_steps, batch_size=args.ddpm_batch_size, lr=args.ddpm_lr,
                              max_sigma=max(SIGMAS) * shrink, seed=args.seed, checkpoint_every=50,
                              resume=(resume_dir(ddpm_dir) / "state.json").is_file(),
                              info={"dataset": "kvasir-seg", "dataset_options": {"size": args.size}},
                              on_log=lambda r: print(f"  DDPM step {r['step']}: loss {r['loss']:.4f}", flush=True))
        import shutil

        shutil.rmtree(resume_dir(ddpm_dir))
        log(f"  t in 0..{res.t_max}, last loss {res.history[-1]['loss']:.4f}, {res.seconds:.0f} s")

    if args.only_ddpm:
        return
    # 2. segmenters
    gauss_sigmas = [float(s) for s in args.gaussian_sigmas.split(",") if s.strip()]
    seg_paths = {}
    for sigma in [0.0, *gauss_sigmas]:
        path = segmenter_path(args.out, sigma)
        if finished(path):
            log(f"reusing {path.relative_to(HERE.parent) if path.is_relative_to(HERE.parent) else path} "
                f"(val Dice {json.loads(path.with_suffix('.json').read_text())['training']['val_dice']:.4f})")
        else:
            path = train_segmenter_here(sigma, data, args, log)
        seg_paths[sigma] = path

    # 3. certification
    test = data["test"]
    k = min(args.certify_images, len(test))
    certifier = registry.create("certifier", "segcertify")
    clean = MonaiSegmenter(weights=str(seg_paths[0.0]))
    ddpm = DDPMDenoiser(model=str(ddpm_dir))
    ddim = DDIMDenoiser(model=str(ddpm_dir), steps=args.ddim_steps)
    rows = []
    for sigma in SIGMAS:
        g_sigma = min(gauss_sigmas, key=lambda s: (abs(s - sigma), -s))
        methods = [("clean UNet, no denoiser", clean, None, 1),
                   (f"Gaussian-trained UNet (train sigma {g_sigma})", MonaiSegmenter(weights=str(seg_paths[g_sigma])),
                    None, 1),
                   ("clean UNet + DDPM one-shot", clean, ddpm, 2),
                   (f"clean UNet + DDIM {args.ddim_steps} steps", clean, ddim, 1 + args.ddim_steps)]
        for label, seg, den, calls in methods:
            start = time.perf_counter()
            res = list(certify_dataset(test, seg, den, certifier, sigma=sigma, n0=10, n=100, alpha=0.001,
                                       taus=(0.75,), batch_size=args.batch_size, seed=args.seed, device="cpu",
                                       names=Names(segmenter=label), indices=range(k)))
            seconds = time.perf_counter() - start
            mean = lambda key: sum(r[key] for r in res) / len(res)  # noqa: E731
            rows.append({"method": label, "sigma": sigma, "certified_dice": mean("certified_dice"),
                         "abstain": mean("abstain_rate"), "radius": res[0]["radius"], "calls": calls,
                         "ms_per_sample": 1000 * seconds / (k * 110), "s_per_image": seconds / k})
            print(f"  sigma {sigma} {label}: certified Dice {rows[-1]['certified_dice']:.4f} ({seconds:.0f} s)",
                  flush=True)

    log("")
    log(f"Certified Dice on the first {k} of {len(test)} test images at {args.size}x{args.size} "
        f"(SegCertify, Holm, n0=10, n=100, alpha=0.001, tau=0.75; polyp-class Dice as reported by certframe)")
    log(f"DDPM {ddpm_dir.name}: one-shot at t*(sigma after resizing {args.size}->{args.ddpm_size}); "
        f"DDIM {args.ddim_steps} deterministic steps from the same t*")
    log(f"{'method':<42} {'sigma':>5} {'radius':>6} {'cert. Dice':>10} {'abstain':>7} {'net calls':>9} "
        f"{'ms/sample':>9} {'s/image':>7}")
    for r in rows:
        log(f"{r['method']:<42} {r['sigma']:>5.2f} {r['radius']:>6.3f} {r['certified_dice']:>10.4f} "
            f"{r['abstain']:>7.3f} {r['calls']:>9d} {r['ms_per_sample']:>9.2f} {r['s_per_image']:>7.2f}")
    log("")
    for sigma in SIGMAS:
        by = {r["method"].split(" (")[0]: r for r in rows if r["sigma"] == sigma}
        base = next(v for m, v in by.items() if m.startswith("Gaussian"))
        d = by["clean UNet + DDPM one-shot"]
        cost = d["ms_per_sample"] / base["ms_per_sample"]
        log(f"sigma {sigma}: DDPM one-shot minus Gaussian-trained certified Dice = "
            f"{d['certified_dice'] - base['certified_dice']:+.4f}; DDPM forward cost x{cost:.1f}")
    log(f"total wall time {time.perf_counter() - total_start:.0f} s")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
