"""Recipe: the Kvasir-SEG DDPM denoiser of ``benchmarks/kvasir_diffusion.py``, trained on a CPU.

    python examples/train_kvasir_ddpm.py --root /path/to/Kvasir-SEG            # resumes if interrupted
    python examples/train_kvasir_ddpm.py --root ... --steps 600 --output runs/ddpm-kvasir-short
    python examples/train_kvasir_ddpm.py --root ... --ddpm-size 64 --crop 32 --channels 32,64,128,128 \
        --steps 2500 --output benchmarks/out/kvasir/ddpm-kvasir-64-wide   # the CPU model of kvasir_diffusion.py

The same run as a command (what this script calls, through the library):

    certframe train denoiser --dataset kvasir-seg --dataset-option root=/path/to/Kvasir-SEG \\
        --dataset-option size=128 --channels 16,32,64,64 --steps 3000 --batch-size 16 --lr 1e-3 \\
        --max-sigma 1.0 --margin 0.25 --seed 0 --output benchmarks/out/kvasir/ddpm-kvasir-128

Choices, for a model worth its CPU time:

* **Resolution = the segmenter's** (128x128, the data set's ``size``): no resize
  in front of the DDPM, so it sees the smoothing noise at its full std and its
  output needs no upsampling.
* **On a CPU**, a 128x128 DDPM (channels 16-32-64-64) costs about 150 ms per noisy
  copy on one loaded core of this project's machine, so the 50-image benchmark (110
  draws per image, 3 sigma, 4 DDPM calls per draw over its diffusion rows) would
  spend about 3 hours denoising, its fine-tuning more. The benchmark's CPU model therefore
  works at ``--ddpm-size 64`` (the denoiser resizes 128 -> 64 -> 128, and
  ``t*`` accounts for the noise the resize averages away) and trains on random
  ``--crop 32`` patches (a quarter of the pixels per step; the UNet is fully
  convolutional and denoises whole images). On a GPU, train the default 128x128 model.
  What each choice buys on Kvasir-SEG (``certframe evaluate denoiser``, 50 test images):
  twice the steps +0.1 dB (``benchmarks/results/kvasir_ddpm_steps.txt``), four times the
  parameters (channels 32-64-128-128, 946 CPU s) +0.2 dB but +0.010 to +0.030 Dice on
  denoised images, nine times (48-96-192-192) nothing more (``kvasir_ddpm_capacity.txt``);
  and the 64 px round trip alone keeps the clean segmenter's Dice (0.669 against 0.670):
  the benchmark's CPU model is the 32-64-128-128 one (``kvasir_diffusion.txt``).
* **Only the timesteps certification uses**: ``t`` uniform in ``0 .. t*(1.25)``
  (sigma up to 1.0 with a 25 % margin; t_max = 440 for the linear schedule). The
  ddpm/ddim denoisers refuse larger sigma with this model, instead of
  silently denoising with an untrained network.
* **EMA with warm-up** (decay ``1 - (1 + n)^(-2/3)``, at most 0.999): after 3000
  steps it averages about the last 200; see ``ddpm_training``.
* **Checkpoints** every 300 steps in ``OUTPUT.resume/`` and on Ctrl-C (the EMA
  model at that step is written to OUTPUT too, marked interrupted); rerunning the
  same command resumes bit for bit. Progress: ``OUTPUT/train.log``.

Cost on this project's shared CPU is in ``OUTPUT/certframe.json`` (``seconds``,
``cpu_seconds``). Validate the result before certifying with it:

    certframe evaluate denoiser --dataset kvasir-seg --dataset-option root=... --dataset-option size=128 \\
        --denoiser ddpm --denoiser-option model=OUTPUT --sigma 0.25 --sigma 0.5 --sigma 1.0 --limit 50
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
DEFAULT_ROOT = HERE.parent.parent / "shared" / "data" / "Kvasir-SEG"
DEFAULT_OUTPUT = HERE.parent / "benchmarks" / "out" / "kvasir" / "ddpm-kvasir-128"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    p.add_argument("--size", type=int, default=128, help="the segmenter's resolution (data set size option)")
    p.add_argument("--ddpm-size", type=int, default=None,
                   help="the DDPM's resolution (default --size; smaller is faster, see above)")
    p.add_argument("--crop", type=int, default=None, help="train on random CROP x CROP patches")
    p.add_argument("--channels", default="16,32,64,64")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-sigma", type=float, default=1.0)
    p.add_argument("--checkpoint-every", type=int, default=300)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = p.parse_args(argv)

    from certframe.registry import get_registry

    torch.set_num_threads(args.threads)
    if not args.root.is_dir():
        raise SystemExit(f"Kvasir-SEG not found at {args.root} (pass --root)")
    registry = get_registry()
    train = registry.create("dataset", "kvasir-seg", root=str(args.root), size=args.size, split="train",
                            seed=args.seed)
    trainer = registry.get("denoiser", "ddpm").factory.trainer
    state = args.output.with_name(args.output.name + ".resume") / "state.json"
    if args.output.is_relative_to(HERE.parent / "benchmarks" / "out"):
        args.output.parent.mkdir(parents=True, exist_ok=True)
        (HERE.parent / "benchmarks" / "out" / ".gitignore").write_text("*\n")  # checkpoints stay out of git
    print(f"Kvasir-SEG train split: {len(train)} images at {args.size}x{args.size}; log: {args.output}/train.log",
          flush=True)
    result = trainer(train, args.output, size=args.ddpm_size, crop=args.crop,
                     block_out_channels=[int(c) for c in args.channels.split(",")],
                     steps=args.steps, batch_size=args.batch_size, lr=args.lr, max_sigma=args.max_sigma,
                     margin=0.25, seed=args.seed, checkpoint_every=args.checkpoint_every, resume=state.is_file(),
                     info={"dataset": "kvasir-seg", "dataset_options": {"size": args.size, "seed": args.seed},
                           "command": "python examples/train_kvasir_ddpm.py " + " ".join(argv or [])},
                     on_log=lambda r: print(f"step {r['step']}: loss {r['loss']:.4f}", flush=True))
    print(f"saved {result.output}: t in 0..{result.t_max}, {result.seconds:.0f} s this call", flush=True)


if __name__ == "__main__":
    main()
