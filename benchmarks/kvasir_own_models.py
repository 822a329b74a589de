"""Kvasir-SEG at 128 px: smp UNet++ (the paper's architecture) against the MONAI UNet, same training budget (issue 16).

    python benchmarks/kvasir_own_models.py --device cuda                  # the full run (meant for a GPU)
    python benchmarks/kvasir_own_models.py                                # the same on 1 CPU thread: hours
    python benchmarks/kvasir_own_models.py --archs smp-unetplusplus &     # on a 2-core CPU: one process per
    python benchmarks/kvasir_own_models.py --archs monai-unet; wait       #   architecture (train + measure),
    python benchmarks/kvasir_own_models.py                                #   then the report from what they kept
    (``--stage measure --measure clean`` certifies a finished clean model while another process still
    trains the Gaussian one; ``--measure gaussian`` the other: one process per model for the certification)
    OMP_NUM_THREADS=1 python benchmarks/kvasir_own_models.py --train-limit 16 --budget-cpu-minutes 0.5 \\
        --certify-images 1 --clean-images 4 --out /tmp/ownmodels-smoke --results /tmp/ownmodels-smoke.txt   # smoke

Protocol (issue 16's benchmark text: "clean and Gaussian-trained smp UNet++ against
the MONAI UNet of the same training budget: clean Dice, certified Dice at sigma
0.25 / 0.5, forward time per batch"):

* Data: Kvasir-SEG (``kvasir-seg`` plugin, ``--root``) resized to ``--size`` (128),
  seeded split 70 / 10 / 20 % (seed 0). ``--train-limit N`` keeps the first N train
  and N val images (smoke runs only).
* Networks, both 3 input channels / 2 classes, built through the plugin registry:
  the MONAI UNet of ``kvasir_segmenters.py`` (channels 16-32-64-128, strides 2-2-2,
  one residual unit, no input normalisation) and smp ``UnetPlusPlus`` with a
  ``resnet18`` encoder from random weights (``weights="random"``, no encoder
  weights: nothing is downloaded) and the smp plugin's default input normalisation
  ``normalize="imagenet"`` (ImageNet mean/std, applied inside the segmenter after the
  noise, so radii stay in [0, 1] pixel units).
* Training (:func:`certframe.training.segmenter.train_segmenter`: Dice + CE, Adam lr 1e-3,
  batch 16, h-flip, best epoch by validation Dice kept): the SAME budget of
  ``--budget-cpu-minutes`` (20) CPU minutes per model (``--budget-clock wall`` for
  wall-clock minutes instead, e.g. on a GPU, where the process's CPU time only tracks
  the time the Python thread drives the device). The budget is checked after each
  epoch, so a run overshoots it by at most one epoch (the table gives the actual
  seconds); patience (``--patience`` 5) and ``--max-epochs`` (200) may end a run
  first. The clean models start from random weights; the Gaussian-trained ones
  (``--gaussian-sigma`` 0.5, Cohen et al. 2019) are fine-tuned from the same
  architecture's clean checkpoint with a budget of their own (so 2x the budget in
  all); their validation Dice is on one fixed noisy copy of each val image.
* Measures on the test split: clean Dice (mean foreground Dice, per image then
  averaged) on all test images (or the first ``--clean-images``); certified Dice of
  the smoothed model (SegCertify, Holm, n0 = 10, n = 100, alpha = 0.001, tau = 0.75,
  no denoiser, :func:`certframe.run.certify_dataset`) at sigma 0.25 and 0.5 on the
  first ``--certify-images`` (50), with abstain rate and seconds per image; forward
  time per batch of 16 at 128 x 128 (median of ``--repeats`` calls after two warm-up
  calls, same threads and device) and one training step per batch of 16 (forward,
  backward, Adam) for each architecture, the UNet++ / UNet ratios, parameter counts.
* The other half of issue 16's benchmark, the overhead of the nnU-Net and
  TorchScript wrappers against the bare network's forward (target <= 1.05x), is
  ``benchmarks/own_models.py`` (results in ``benchmarks/results/own_models.txt``),
  not repeated here.

Measurements are kept beside each checkpoint (``own-<arch>-<kind>-measured-k<K>.json``:
the clean Dice per image and each sigma's certified Dice per image, with the
checkpoint's SHA-256 and the protocol they were measured under), written as each
sigma finishes: a rerun, or the report run after ``--archs`` runs, reuses them and
measures only what is missing or was measured on another checkpoint or protocol.
The speed table is timed only in a run that covers every architecture (the one
that writes the report). The report ends with the paired bootstrap 95 % CI over
images of UNet++ minus UNet certified Dice at each sigma.

Checkpoints go to ``--out`` (default ``benchmarks/out/kvasir/``, git-ignored) as
``own-<arch>-clean.safetensors`` and ``own-<arch>-noise<sigma>.safetensors`` (``-first<N>``
added with ``--train-limit``); a finished
model (its JSON holds the budget and why it stopped) is reused when the budget, the
epoch cap, patience and train limit are the same, an interrupted one resumes from its
``.resume/`` state. One intra-op thread by default (``--threads``). The report is
printed and written to ``--results`` (default ``benchmarks/results/kvasir_own_models.txt``)
with the command line at the top. Timings are wall-clock on the machine that ran it
(shared, noisy), with the process's CPU seconds beside the speed figures; nothing here
asserts.

Cost on this project's CPU (x86_64, one thread per process), measured in the run of
``benchmarks/results/kvasir_own_models.txt``: smp UNet++ forward 1.9 s per batch of 16
(0.12 s/sample), training step 5.6 s; MONAI UNet 0.095 s and 0.26 s (UNet++ / UNet: 20x and 22x,
parameters 16.0 M vs 0.21 M). A UNet++ epoch (44 steps + validation on 100 images) took
about 260 CPU s, so the 20 CPU minutes bought it 5 epochs, while the UNet stopped by
patience after 32 (clean) and 24 (Gaussian) epochs, in 368 and 275 CPU s: on a CPU the
comparison is budget-bound for UNet++. Certification: 16 s per image for UNet++, 0.8 s
for the UNet (110 draws at 128 px). In all about 1.9 CPU hours (training 53 min,
UNet++ certification 54 min); with one process per architecture and the UNet++
certification split per model (see the commands above) it took 80 minutes of wall
time on the 2-core machine. On a GPU: ``--device cuda`` (there the same budget buys far
more epochs, and ``--budget-clock wall`` budgets device time more directly).
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from _kvasir import Report, kvasir_splits, paired_bootstrap_ci

HERE = Path(__file__).resolve().parent
# beside the main checkout (as the other Kvasir benchmarks), else the project machine's shared copy (worktrees)
DEFAULT_ROOT = next((r for r in (HERE.parent.parent / "shared" / "data" / "Kvasir-SEG",
                                 Path("/work/shared/data/Kvasir-SEG")) if r.is_dir()),
                    HERE.parent.parent / "shared" / "data" / "Kvasir-SEG")
UNET_NETWORK = {"channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 1}
ARCHS = {  # key: (label, registry name, options)
    "monai-unet": ("MONAI UNet", "monai", {"arch": "unet", "network": UNET_NETWORK}),
    "smp-unetplusplus": ("smp UNet++ r18", "smp", {"arch": "UnetPlusPlus", "encoder": "resnet18"}),
}
SIGMAS = (0.25, 0.5)
N0, N, ALPHA, TAU = 10, 100, 0.001, 0.75


class BudgetSpent(Exception):
    """Raised from ``on_epoch`` once a run has used its budget (after the epoch's files are written)."""


class FirstItems:
    """The first ``n`` items of a segmentation data set (``--train-limit``): what
    :func:`train_segmenter` and the :class:`~certframe.interfaces.SegmentationDataset`
    interface use (len, items, class names, channels, identity, ids)."""

    def __init__(self, base, n: int):
        self.base, self.n = base, min(int(n), len(base))
        self.class_names, self.in_channels = base.class_names, base.in_channels

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        if index < 0:
            index += self.n
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for the first {self.n} items")
        return self.base[index]

    def __iter__(self):
        return (self[i] for i in range(self.n))

    def identity(self) -> dict:
        return {**self.base.identity(), "len": self.n, "first_items": self.n}

    def item_ids(self) -> list[str]:
        return self.base.item_ids()[:self.n]


def checkpoint_path(out: Path, arch: str, sigma: float, limit: int | None) -> Path:
    kind = "clean" if sigma == 0 else f"noise{sigma:g}"
    return out / f"own-{arch}-{kind}{f'-first{limit}' if limit else ''}.safetensors"


def budget_settings(args) -> dict:
    """What a reused checkpoint must have been trained with."""
    return {"seconds": args.budget_cpu_minutes * 60, "clock": args.budget_clock, "max_epochs": args.max_epochs,
            "patience": args.patience, "train_limit": args.train_limit, "lr": args.lr, "batch_size": 16}


def read_json(path: Path) -> dict:
    side = path.with_suffix(".json")
    return json.loads(side.read_text()) if side.is_file() else {}


def finish_record(path: Path, stopped_by: str, args) -> dict:
    """Write the whole run's totals (from the resume state) and the budget record into ``path``'s JSON."""
    from certframe.training.segmenter import load_resume_state

    state = load_resume_state(path)
    info = read_json(path)
    info.setdefault("training", {}).update({
        "epochs_run": len(state["history"]), "stopped_early": stopped_by == "patience",
        "total_seconds": state["seconds"], "total_cpu_seconds": state["cpu_seconds"]})
    info["budget"] = {**budget_settings(args), "stopped_by": stopped_by}
    path.with_suffix(".json").write_text(json.dumps(info, indent=2))
    return info


def train_model(arch: str, sigma: float, init: Path | None, data, args, device, log) -> Path:
    """Train (clean, from random weights) or fine-tune (Gaussian, from ``init``) one model within the budget."""
    from certframe.registry import get_registry
    from certframe.training.segmenter import load_resume_state, resume_dir, train_segmenter

    path = checkpoint_path(args.out, arch, sigma, args.train_limit)
    info = read_json(path)
    if path.is_file() and "budget" in info:
        recorded = {k: v for k, v in info["budget"].items() if k != "stopped_by"}
        if recorded != budget_settings(args):
            raise SystemExit(f"{path} was trained with {recorded}, this run asks {budget_settings(args)}: "
                             f"delete it (and its .json / .resume) or pass another --out")
        log(f"{path.name}: reusing the finished training")
        return path
    resume = (resume_dir(path) / "state.json").is_file()
    clock = "cpu_seconds" if args.budget_clock == "cpu" else "seconds"
    budget = args.budget_cpu_minutes * 60
    if resume and load_resume_state(path)[clock] >= budget:  # interrupted after the budget stop
        finish_record(path, "budget", args)
        log(f"{path.name}: its budget was spent in an earlier run (interrupted before the record was written)")
        return path
    label, plugin, options = ARCHS[arch]
    torch.manual_seed(args.seed)
    registry = get_registry()
    if init is None:
        model = registry.create("segmenter", plugin, weights="random", in_channels=3, num_classes=2, **options)
    else:
        model = registry.create("segmenter", plugin, weights=str(init))
    config = {**model.config, "class_names": list(data["train"].class_names), "dataset": "kvasir-seg",
              "dataset_options": {"size": args.size, "seed": args.seed}, "dataset_identity": data["train"].identity()}
    if init is not None:
        config["init"] = {"weights": str(init)}

    def on_epoch(record):
        spent = load_resume_state(path)[clock]  # written just before this call, resumes included
        print(f"  {path.name} epoch {record['epoch'] + 1}: loss {record['loss']:.4f} val Dice "
              f"{record['val_dice']:.4f} ({spent:.0f} of {budget:.0f} {args.budget_clock} s)", flush=True)
        if spent >= budget:
            raise BudgetSpent

    log(f"{path.name}: {'resuming' if resume else 'training'} {label} at train sigma {sigma}"
        f"{' from ' + init.name if init is not None else ' from random weights'} on {device}")
    try:
        res = train_segmenter(model, data["train"], data["val"], epochs=args.max_epochs, batch_size=16, lr=args.lr,
                              noise_sigma=sigma, seed=args.seed, device=device, checkpoint=path, config=config,
                              resume=resume, patience=args.patience, on_epoch=on_epoch)
        stopped_by = "patience" if res.stopped_early else "max epochs"
    except BudgetSpent:  # the best checkpoint and the resume state of this epoch are already written
        stopped_by = "budget"
    meta = finish_record(path, stopped_by, args)["training"]
    log(f"{path.name}: stopped by {stopped_by} after {meta['epochs_run']} epochs ({meta['total_cpu_seconds']:.0f} "
        f"CPU s, {meta['total_seconds']:.0f} s), best val Dice {meta['val_dice']:.4f} "
        f"at epoch {meta['best_epoch'] + 1}")
    return path


def training_row(path: Path) -> dict:
    info = read_json(path)
    meta = info["training"]
    return {"epochs": meta["epochs_run"], "best_epoch": meta["best_epoch"] + 1, "val_dice": meta["val_dice"],
            "cpu_s": meta["total_cpu_seconds"], "wall_s": meta["total_seconds"],
            "stopped_by": info["budget"]["stopped_by"], "init": "clean ckpt" if info.get("init") else "random"}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats: int, warmup: int) -> tuple[float, float]:
    """Median wall and CPU (this process) seconds of ``fn()`` over ``repeats`` calls after ``warmup`` calls."""
    wall, cpu = [], []
    for i in range(warmup + repeats):
        sync(device)
        t, c = time.perf_counter(), time.process_time()
        fn()
        sync(device)
        if i >= warmup:
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def forward_seconds(model, device, size: int, repeats: int, batch: int = 16) -> tuple[float, float]:
    """Median wall and CPU seconds of one inference forward of a batch of ``batch`` images (after 2 warm-ups)."""
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    model = model.to(device).eval()
    with torch.inference_mode():
        return timed(lambda: model(x), device, repeats, warmup=2)


def train_step_seconds(model, device, size: int, repeats: int, batch: int = 16) -> tuple[float, float]:
    """Median wall and CPU seconds of one training step (forward, Dice+CE, backward, Adam) on a copy of ``model``."""
    from monai.losses import DiceCELoss

    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, size, size, generator=g).to(device)
    y = (torch.rand(batch, 1, size, size, generator=g) > 0.7).long().to(device)
    net = copy.deepcopy(model).to(device).train()
    optim, loss_fn = torch.optim.Adam(net.parameters(), lr=1e-3), DiceCELoss(to_onehot_y=True, softmax=True)

    def step():
        optim.zero_grad()
        loss_fn(net(x), y).backward()
        optim.step()

    return timed(step, device, repeats, warmup=1)


def clean_dice(model, test, count: int, device, sigma: float = 0.0, seed: int = 0) -> list[float]:
    """Per-image mean foreground Dice of ``model`` (the base model, not smoothed) on the first ``count`` test
    images; with ``sigma`` > 0 on one noisy copy ``x + N(0, sigma^2 I)`` of each (CPU generator seeded with
    ``seed``): how well the base model keeps its prediction under the noise the smoothing adds."""
    from certframe.core import metrics
    from certframe.interfaces import class_labels

    model = model.to(device).eval()
    gen = torch.Generator().manual_seed(seed)
    scores = []
    with torch.inference_mode():
        for i in range(0, count, 16):
            items = [test[j] for j in range(i, min(i + 16, count))]
            x = torch.stack([s.image for s in items])
            if sigma > 0:
                x = x + sigma * torch.randn(x.shape, generator=gen)
            pred = class_labels(model(x.to(device))).cpu()
            scores += [metrics.mean_dice(p, s.mask, 2) for p, s in zip(pred, items)]
    return scores


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget-cpu-minutes", type=float, default=20.0, help="training budget per model")
    p.add_argument("--budget-clock", choices=["cpu", "wall"], default="cpu",
                   help="what the budget counts: the process's CPU time (default) or wall time")
    p.add_argument("--max-epochs", type=int, default=200)
    p.add_argument("--patience", type=int, default=5, help="stop once val Dice has not improved for this many epochs")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--gaussian-sigma", type=float, default=0.5, help="noise sigma of the Gaussian-trained models")
    p.add_argument("--train-limit", type=int, default=None, help="first N train and N val images only (smoke runs)")
    p.add_argument("--certify-images", type=int, default=50)
    p.add_argument("--clean-images", type=int, default=None, help="clean Dice on the first N test images (default all)")
    p.add_argument("--batch-size", type=int, default=55, help="noise draws per forward pass when certifying")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per forward / training-step median")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto: training, certification and timings")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--archs", default=",".join(ARCHS),
                   help="comma list of the architectures this process trains and measures (default all; two "
                        "processes, one per architecture, use both cores; the report needs all of them)")
    p.add_argument("--stage", choices=["all", "train", "measure"], default="all",
                   help="train: stop after training; measure: train nothing, measure the finished checkpoints "
                        "that --measure names (while another process still trains the rest)")
    p.add_argument("--measure", default="clean,gaussian",
                   help="comma list: which trained models this process measures (clean, gaussian; default both): "
                        "after training, one process per model uses both cores for the certification")
    p.add_argument("--out", type=Path, default=HERE / "out" / "kvasir")
    p.add_argument("--results", type=Path, default=HERE / "results" / "kvasir_own_models.txt")
    args = p.parse_args(argv)

    from certframe.registry import get_registry
    from certframe.run import Names, certify_dataset
    from certframe.run.build import resolve_device
    from certframe.run.provenance import file_identity

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    unknown = [a for a in archs if a not in ARCHS]
    if unknown or not archs:
        raise SystemExit(f"--archs: expected a comma list of {', '.join(ARCHS)}, got {args.archs!r}")
    measure = [m.strip() for m in args.measure.split(",") if m.strip()]
    if not measure or set(measure) - {"clean", "gaussian"}:
        raise SystemExit(f"--measure: expected a comma list of clean, gaussian, got {args.measure!r}")
    if not args.root.is_dir():
        raise SystemExit(f"Kvasir-SEG not found at {args.root} (pass --root)")
    log = Report("kvasir_own_models.py", argv)

    total_start = time.perf_counter()
    registry = get_registry()
    data = kvasir_splits(registry, args.root, args.size, args.seed, args.out)
    full = {s: len(d) for s, d in data.items()}
    if args.train_limit:
        data["train"] = FirstItems(data["train"], args.train_limit)
        data["val"] = FirstItems(data["val"], args.train_limit)
    log(f"Kvasir-SEG at {args.size}x{args.size}: {full['train']} train / {full['val']} val / {full['test']} test "
        f"images (seeded split, seed {args.seed})"
        + (f"; SMOKE RUN: training on the first {len(data['train'])} train / {len(data['val'])} val images"
           if args.train_limit else ""))
    log(f"torch {torch.__version__}, device {device}"
        f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
        f"{args.threads} intra-op thread(s), {platform.processor() or platform.machine()}")

    # ------------------------------------------------------------------ training
    budget_min = args.budget_cpu_minutes
    paths: dict[tuple[str, float], Path] = {}
    for arch in archs:
        if args.stage == "measure":  # finished checkpoints only: another process may be training the others
            for sigma, kind in ((0.0, "clean"), (args.gaussian_sigma, "gaussian")):
                path = checkpoint_path(args.out, arch, sigma, args.train_limit)
                if kind in measure:
                    if "budget" not in read_json(path):
                        raise SystemExit(f"--stage measure: {path} is not finished training")
                    paths[(arch, sigma)] = path
            continue
        paths[(arch, 0.0)] = train_model(arch, 0.0, None, data, args, device, log)
        paths[(arch, args.gaussian_sigma)] = train_model(arch, args.gaussian_sigma, paths[(arch, 0.0)], data, args,
                                                         device, log)

    if args.stage == "train":
        log(f"--stage train: trained {', '.join(archs)}; run again without it to measure")
        return

    # ------------------------------------------------------------------ speed
    models = {key: registry.create("segmenter", ARCHS[key[0]][1], weights=str(path)) for key, path in paths.items()}
    speed = {}
    report_run = set(archs) == set(ARCHS) and set(measure) == {"clean", "gaussian"}
    for arch in archs if report_run else ():  # timed in the run that writes the report
        model = models[(arch, 0.0)]
        speed[arch] = {"params": sum(p.numel() for p in model.parameters()),
                       "forward": forward_seconds(model, device, args.size, args.repeats),
                       "step": train_step_seconds(model, device, args.size, max(2, args.repeats // 2))}
        print(f"  {arch}: forward {speed[arch]['forward'][0]:.3f} s, training step {speed[arch]['step'][0]:.3f} s "
              f"per batch of 16 (wall)", flush=True)

    # ------------------------------------------------------------------ Dice
    test = data["test"]
    k = min(args.certify_images, len(test))
    n_clean = min(args.clean_images or len(test), len(test))
    certifier = registry.create("certifier", "segcertify")
    rows = []
    for (arch, train_sigma), model in models.items():
        if ("clean" if train_sigma == 0 else "gaussian") not in measure:
            continue
        label = f"{ARCHS[arch][0]} {'clean' if train_sigma == 0 else f'Gauss {train_sigma:g}'}"
        cache_path = paths[(arch, train_sigma)].with_name(paths[(arch, train_sigma)].stem + f"-measured-k{k}.json")
        settings = {"checkpoint_sha256": file_identity(paths[(arch, train_sigma)])["sha256"], "n0": N0, "n": N,
                    "alpha": ALPHA,
                    "tau": TAU, "batch_size": args.batch_size, "seed": args.seed, "size": args.size,
                    "certify_images": k, "clean_images": n_clean, "device": device.type}
        cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
        if cache.get("settings") != settings:  # another checkpoint or protocol: measure again
            cache = {"settings": settings, "rows": {}}
        if "clean" not in cache:
            cache["clean"] = clean_dice(model, test, max(n_clean, k), device)
            cache_path.write_text(json.dumps(cache, indent=1))
        clean = cache["clean"]
        for sigma in SIGMAS:
            if f"{sigma:g}" not in cache.setdefault("noisy", {}):
                cache["noisy"][f"{sigma:g}"] = clean_dice(model, test, k, device, sigma=sigma, seed=args.seed)
                cache_path.write_text(json.dumps(cache, indent=1))
            noisy = sum(cache["noisy"][f"{sigma:g}"]) / k
            if f"{sigma:g}" in cache["rows"]:
                rows.append({**cache["rows"][f"{sigma:g}"], "noisy": noisy})
                print(f"  {label} at sigma {sigma}: certified Dice {rows[-1]['certified']:.4f} (measured earlier, "
                      f"{cache_path.name})", flush=True)
                continue
            start = time.perf_counter()
            res = list(certify_dataset(test, model, None, certifier, sigma=sigma, n0=N0, n=N, alpha=ALPHA,
                                       taus=(TAU,), batch_size=args.batch_size, seed=args.seed, device=device,
                                       names=Names(segmenter=label), indices=range(k)))
            seconds = time.perf_counter() - start
            mean = lambda key: sum(r[key] for r in res) / len(res)  # noqa: E731
            rows.append({"label": label, "arch": arch, "train_sigma": train_sigma, "sigma": sigma,
                         "clean_all": sum(clean[:n_clean]) / n_clean, "clean_k": sum(clean[:k]) / k,
                         "noisy": noisy, "certified": mean("certified_dice"), "abstain": mean("abstain_rate"),
                         "radius": res[0]["radius"], "per_image": seconds / k,
                         "certified_per_image": [r["certified_dice"] for r in res]})
            cache["rows"][f"{sigma:g}"] = rows[-1]  # kept at once: an interrupted run measures only what is left
            cache_path.write_text(json.dumps(cache, indent=1))
            print(f"  {label} at sigma {sigma}: certified Dice {rows[-1]['certified']:.4f} ({seconds:.0f} s)",
                  flush=True)
    if set(archs) != set(ARCHS) or set(measure) != {"clean", "gaussian"}:
        log(f"measured {', '.join(measure)} of {', '.join(archs)} (kept beside the checkpoints in {args.out}); the "
            f"report needs every model: run again without --archs / --measure, which reuses what is measured")
        return

    # ------------------------------------------------------------------ report
    log("")
    unet, upp = speed["monai-unet"], speed["smp-unetplusplus"]
    smp_model = models[("smp-unetplusplus", 0.0)]
    log("Networks (3 input channels, 2 classes, built through the segmenter registry):")
    log(f"  MONAI UNet {json.dumps(UNET_NETWORK)}: {unet['params']:,} parameters; inputs used as they are "
        f"([0, 1], no normalisation)")
    log(f"  smp UnetPlusPlus, encoder resnet18 from random weights (no encoder weights, nothing downloaded): "
        f"{upp['params']:,} parameters; normalize={smp_model.config['normalize']!r} (the smp plugin's default: "
        f"ImageNet mean/std inside the segmenter, after the noise)")
    log("")
    clock = "CPU" if args.budget_clock == "cpu" else "wall-clock"
    log(f"Training: Dice+CE, Adam lr {args.lr}, batch 16, h-flip, best epoch by val Dice kept; the same budget of "
        f"{budget_min:g} {clock} min per model (checked after each epoch: a run overshoots by at most one epoch), at "
        f"most {args.max_epochs} epochs, patience {args.patience}. Clean models from random weights; Gaussian-"
        f"trained (sigma {args.gaussian_sigma:g}) fine-tuned from the same architecture's clean checkpoint with a "
        f"budget of their own (2x in all); their val Dice is on noisy val images.")
    log(f"{'model':<26} {'train sigma':>11} {'init':>10} {'epochs':>6} {'best ep.':>8} {'best val Dice':>13} "
        f"{'CPU s':>7} {'wall s':>7}  stopped by")
    for (arch, train_sigma), path in paths.items():
        t = training_row(path)
        log(f"{ARCHS[arch][0]:<26} {train_sigma:>11.2f} {t['init']:>10} {t['epochs']:>6d} {t['best_epoch']:>8d} "
            f"{t['val_dice']:>13.4f} {t['cpu_s']:>7.0f} {t['wall_s']:>7.0f}  {t['stopped_by']}")
    log("")
    log(f"Speed, batch of 16 at {args.size}x{args.size} on {device}, {args.threads} thread(s), median of "
        f"{args.repeats} forwards / {max(2, args.repeats // 2)} training steps:")
    log(f"{'architecture':<26} {'parameters':>11} {'forward s/batch':>15} {'s/sample':>9} {'forward CPU s':>13} "
        f"{'train step s/batch':>18} {'step CPU s':>10}")
    for arch, s in speed.items():
        log(f"{ARCHS[arch][0]:<26} {s['params']:>11,} {s['forward'][0]:>15.4f} {s['forward'][0] / 16:>9.4f} "
            f"{s['forward'][1]:>13.4f} {s['step'][0]:>18.4f} {s['step'][1]:>10.4f}")
    log(f"UNet++ / MONAI UNet: forward {upp['forward'][0] / unet['forward'][0]:.2f}x (CPU time "
        f"{upp['forward'][1] / unet['forward'][1]:.2f}x), training step {upp['step'][0] / unet['step'][0]:.2f}x "
        f"(CPU time {upp['step'][1] / unet['step'][1]:.2f}x), parameters {upp['params'] / unet['params']:.2f}x")
    log("(wall seconds; CPU seconds of this process beside them: on a busy shared CPU the wall time also holds "
        "the waits for a core)")
    log("")
    log(f"Test split ({len(test)} images): clean Dice on the first {n_clean}; certified Dice on the first {k} "
        f"(SegCertify, Holm, n0={N0}, n={N}, alpha={ALPHA}, tau={TAU}, no denoiser)")
    log(f"{'model':<26} {'train sigma':>11} {'clean Dice':>10} {'clean Dice':>10} {'sigma':>6} {'noisy Dice':>10} "
        f"{'radius':>7} {'cert. Dice':>10} {'abstain':>8} {'s/image':>8}")
    log(f"{'':<26} {'':>11} {f'(first {n_clean})':>10} {f'(first {k})':>10} {'':>6} {f'(first {k})':>10}")
    for r in rows:
        log(f"{r['label']:<26} {r['train_sigma']:>11.2f} {r['clean_all']:>10.4f} {r['clean_k']:>10.4f} "
            f"{r['sigma']:>6.2f} {r['noisy']:>10.4f} {r['radius']:>7.4f} {r['certified']:>10.4f} "
            f"{r['abstain']:>8.4f} {r['per_image']:>8.2f}")
    log(f"(noisy Dice: the base model, not smoothed, on one noisy copy of each image at that sigma, seed {args.seed})")
    log("")
    log(f"UNet++ minus MONAI UNet, certified Dice over the same {k} images (paired bootstrap 95 % CI, "
        f"10,000 resamples):")
    for train_sigma in sorted({r["train_sigma"] for r in rows}):
        for sigma in SIGMAS:
            pair = {r["arch"]: r for r in rows if r["train_sigma"] == train_sigma and r["sigma"] == sigma}
            mean, lo, hi = paired_bootstrap_ci(pair["smp-unetplusplus"]["certified_per_image"],
                                               pair["monai-unet"]["certified_per_image"])
            kind = "clean" if train_sigma == 0 else f"Gauss {train_sigma:g}"
            log(f"  {kind:<10} sigma {sigma:.2f}: {mean:+.4f} [{lo:+.4f}, {hi:+.4f}]")
    if k < 50 or args.train_limit:
        smoke = ("smoke settings (--train-limit, few images): the Dice figures mean nothing; "
                 if args.train_limit else "")
        fewer = ", fewer than the protocol's 50" if k < 50 else ""
        log(f"NOTE: {smoke}{k} certified test images{fewer}")
    log("")
    log("Wrapper overhead (nnU-Net and TorchScript wrappers against the bare network's forward, target <= 1.05x): "
        "not re-measured here; see benchmarks/own_models.py and benchmarks/results/own_models.txt.")
    for (arch, train_sigma), path in paths.items():
        shown = path.relative_to(HERE.parent) if path.is_relative_to(HERE.parent) else path
        log(f"checkpoint {ARCHS[arch][0]} train sigma {train_sigma:g}: {shown}")
    log(f"total wall time {time.perf_counter() - total_start:.0f} s")
    log.write(args.results)


if __name__ == "__main__":
    main()
