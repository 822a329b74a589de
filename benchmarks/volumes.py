"""Volumes (issue 18): sizing, overhead, memory and certified Dice on the 3-D phantom, the 2-D lungs as reference.

    OMP_NUM_THREADS=1 python benchmarks/volumes.py                 # everything (~10 CPU minutes, one thread)
    OMP_NUM_THREADS=1 python benchmarks/volumes.py overhead memory # or some of: sizing overhead memory dice
    options: --volumes 64 (phantom test volumes for the Dice table), --images 64 (lung test images),
             --repeats 9 (interleaved overhead repetitions), --threads 1

Everything goes through the library: the registry builds the data sets
(``synthetic-volume`` 32^3 phantom, ``synthetic-lung`` 64x64 reference) and the
bundled models (``monai`` with weights ``synthetic-volume`` / ``synthetic-volume-noise0.25``
and ``synthetic-lung`` / ``synthetic-lung-noise0.25``); certification is
``SmoothedSegmenter.certify`` (what ``benchmarks/core.py`` times) and
:func:`certframe.run.certify_dataset` (the Dice tables). Figures are measured in one
run on whatever machine runs it (a shared, noisy one here): read the ratios, not the
absolute times. Nothing here asserts.

1. sizing: :func:`certframe.run.accelerate.certification_cost` (docs/volumes.md) for the
   phantom and a CT-sized case, checked against the window passes counted (a forward
   pre-hook on the network) while certifying a 48^3 phantom volume with the bundled
   32^3-patch model (sliding window, 8 windows per draw).
2. overhead: ``certify`` (SegCertify, n0=10, n=100, batch 32) against the bare segmenter
   forward passes on the same number of noisy copies at the same batch sizes, the two
   interleaved ``--repeats`` times; wall time (``perf_counter``) and CPU time of the whole
   process (``process_time``, so the noise thread's work counts) with the ratio of the
   best of each. Target <= 1.10 on CPU. The certify-only parts (noise, labels + votes,
   statistics) are also timed alone in CPU time, for a ratio from parts that the
   machine's load moves less.
3. memory: peak resident memory added while certifying one item at n=100 and n=2000
   (the method of ``benchmarks/core.py memory``: a fresh process per n, a warm-up
   certificate, then VmHWM after resetting it via /proc/self/clear_refs, minus VmRSS
   before). Batch 32: n=100 runs three full batches, so it reaches the steady state
   (core.py's n=100 at batch 50 did not). Target ratio n=2000/n=100 <= 1.1.
4. dice: certified Dice (SegCertify, Holm, n0=10, n=100, alpha=0.001, tau=0.75) at
   sigma 0.25 and 0.5 for the clean and the Gaussian-trained (sigma 0.25) bundled models,
   with the base model's clean Dice, the abstain rate and CPU seconds per item.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

N0, N, ALPHA, TAU, BATCH = 10, 100, 0.001, 0.75, 32
CASES = {  # name: (data set, its options, clean weights, Gaussian-trained weights)
    "phantom": ("synthetic-volume", {}, "synthetic-volume", "synthetic-volume-noise0.25"),
    "lungs": ("synthetic-lung", {}, "synthetic-lung", "synthetic-lung-noise0.25"),
}


def registry():
    from certframe.registry import get_registry

    return get_registry()


def clock():
    return time.perf_counter(), time.process_time()


def since(start):
    wall, cpu = clock()
    return wall - start[0], cpu - start[1]


def first_item(case: str, **options):
    name, opts, _, _ = CASES[case]
    return registry().create("dataset", name, split="test", **{**opts, **options})[0]


# ------------------------------------------------------------------ sizing
def bench_sizing():
    from certframe.core.smoothing import SmoothedSegmenter
    from certframe.interfaces import NoiseKey
    from certframe.plugins.certifiers.segcertify import SegCertify
    from certframe.run import Names, certify_dataset
    from certframe.run.accelerate import certification_cost

    print("[sizing] certframe.run.accelerate.certification_cost (docs/volumes.md): window passes = (n0 + n) x windows")
    print(f"  {'case':44s} {'roi, overlap':16s} {'windows/draw':>12s} {'n0 + n':>7s} {'window passes':>14s}")
    cases = [("phantom 32^3 (bundled model, roi 32^3)", (32, 32, 32), (32, 32, 32)),
             ("phantom 48^3 (bundled model, roi 32^3)", (48, 48, 48), (32, 32, 32)),
             ("CT 96 x 192 x 192 (D, H, W)", (96, 192, 192), (64, 64, 64))]
    for label, size, roi in cases:
        for n0, n in ((10, 100), (10, 1000)):
            c = certification_cost(size, n0=n0, n=n, roi_size=roi, overlap=0.25)
            print(f"  {label:44s} {str(roi[0]) + '^3, 0.25':16s} {c['windows']:12d} {c['draws']:7d} "
                  f"{c['window_passes']:14,d}")

    seg = registry().create("segmenter", "monai", weights="synthetic-volume")
    seen: list[int] = []
    hook = seg.net.register_forward_pre_hook(lambda module, args: seen.append(int(args[0].shape[0])))
    sample = first_item("phantom", size=48)
    smoothed = SmoothedSegmenter(seg, None, 0.25)
    expected = certification_cost(tuple(sample.image.shape[1:]), n0=N0, n=N, roi_size=seg.roi_size,
                                  overlap=seg.overlap)
    start = clock()
    smoothed.certify(sample.image, SegCertify(), key=NoiseKey(0, sample.id), n0=N0, n=N, alpha=ALPHA,
                     taus=(TAU,), batch_size=BATCH)
    wall, cpu = since(start)
    # MONAI runs the windows of every item of a batch, sw_batch_size windows per network call
    batches = [min(BATCH, N0 - i) for i in range(0, N0, BATCH)] + [min(BATCH, N - i) for i in range(0, N, BATCH)]
    calls = sum(-(-b * expected["windows"] // seg.sw_batch_size) for b in batches)
    print(f"  measured, phantom volume {tuple(sample.image.shape)} with the bundled model (roi {seg.roi_size}, "
          f"overlap {seg.overlap}, sw_batch_size {seg.sw_batch_size}), SmoothedSegmenter.certify n0={N0}, n={N}, "
          f"batch {BATCH}:")
    print(f"    window passes: counted {sum(seen):,d}, certification_cost {expected['window_passes']:,d}; network "
          f"calls: counted {len(seen)}, expected {calls} (ceil(batch x windows / sw_batch_size) per batch); "
          f"{cpu:.1f} CPU s ({cpu / sum(seen) * 1e3:.1f} ms per 32^3 window pass)")
    seen.clear()
    data = registry().create("dataset", "synthetic-volume", split="test", size=48, count=1)
    list(certify_dataset(data, seg, None, SegCertify(), sigma=0.25, n0=N0, n=N, alpha=ALPHA, taus=(TAU,), seed=0,
                         batch_size=BATCH, device="cpu", names=Names(segmenter="synthetic-volume")))
    plus_clean = (expected["draws"] + 1) * expected["windows"]
    print(f"    the same volume through certframe.run.certify_dataset: counted {sum(seen):,d} window passes, "
          f"(n0 + n + 1) x {expected['windows']} = {plus_clean:,d}: a run also predicts the clean volume once "
          f"(clean Dice, overlay), which certification_cost leaves out")
    hook.remove()

    net = seg.net
    x = torch.rand(seg.sw_batch_size, 1, 64, 64, 64)
    with torch.inference_mode():
        net(x)
        best = min(_cpu(lambda: net(x)) for _ in range(3)) / seg.sw_batch_size
    ct = certification_cost((96, 192, 192), n0=10, n=100, roi_size=(64, 64, 64), overlap=0.25)
    ct2 = certification_cost((96, 192, 192), n0=10, n=1000, roi_size=(64, 64, 64), overlap=0.25)
    print(f"  CT estimate with the bundled 8-16-32-64 UNet (a CT model is much larger): one 64^3 window pass "
          f"{best * 1e3:.0f} ms CPU (batch {seg.sw_batch_size}, best of 3), so {ct['window_passes']:,d} passes "
          f"= {ct['window_passes'] * best / 60:.1f} CPU min per volume at n0 + n = 110, "
          f"{ct2['window_passes'] * best / 60:.0f} CPU min at 1010 (one thread)")


def _cpu(f) -> float:
    t = time.process_time()
    f()
    return time.process_time() - t


# ---------------------------------------------------------------- overhead
def bench_overhead(case: str, repeats: int):
    from certframe.core.sampler import accumulate_votes, gaussian_noise
    from certframe.core.smoothing import SmoothedSegmenter
    from certframe.interfaces import CertifyRequest, NoiseKey, class_labels
    from certframe.plugins.certifiers.segcertify import SegCertify, certificates_from_counts

    _, _, weights, _ = CASES[case]
    seg = registry().create("segmenter", "monai", weights=weights)
    sample = first_item(case)
    x, key = sample.image, NoiseKey(0, sample.id)
    sizes = [min(BATCH, N0 - i) for i in range(0, N0, BATCH)] + [min(BATCH, N - i) for i in range(0, N, BATCH)]
    g = torch.Generator().manual_seed(0)
    batches = [x + 0.25 * torch.randn((b, *x.shape), generator=g) for b in sizes]
    smoothed = SmoothedSegmenter(seg, None, 0.25)

    def raw():  # the physical limit: the segmenter's forward passes on as many noisy copies, nothing else
        with torch.inference_mode():
            for b in batches:
                seg(b)

    def certify():
        smoothed.certify(x, SegCertify(), key=key, n0=N0, n=N, alpha=ALPHA, taus=(TAU,), batch_size=BATCH)

    raw(), certify()  # warm-up
    times = {"raw": [], "certify": []}
    for _ in range(repeats):  # interleaved, so load changes hit both alike
        for name, f in (("raw", raw), ("certify", certify)):
            start = clock()
            f()
            times[name].append(since(start))
    best = {k: (min(w for w, _ in v), min(c for _, c in v)) for k, v in times.items()}
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in times.items()}
    draws = N0 + N
    (rw, rc), (cw, cc) = best["raw"], best["certify"]
    what = "volume" if x.dim() == 4 else "image"
    print(f"[overhead] {case} {what} {tuple(x.shape)}, n0={N0}, n={N}, batch {BATCH}, {repeats} interleaved repeats, "
          f"best (median):")
    print(f"  bare forward passes: wall {rw:.3f} s ({med['raw'][0]:.3f}), CPU {rc:.3f} s ({med['raw'][1]:.3f})")
    print(f"  certify:             wall {cw:.3f} s ({med['certify'][0]:.3f}), CPU {cc:.3f} s ({med['certify'][1]:.3f})"
          f"; per {what} {cw:.3f} s wall / {cc:.3f} s CPU, per draw {cw / draws * 1e3:.2f} ms wall / "
          f"{cc / draws * 1e3:.2f} ms CPU")
    print(f"  ratio certify / bare: wall {cw / rw:.3f} (median {med['certify'][0] / med['raw'][0]:.3f}), "
          f"CPU {cc / rc:.3f} (median {med['certify'][1] / med['raw'][1]:.3f}) (target <= 1.10)")

    # what certify adds, each part alone (CPU, best of 3)
    with torch.inference_mode():
        outs = [seg(b) for b in batches]

    def noise():
        for phase, (start, count) in zip(["selection"] + ["estimation"] * (len(sizes) - 1),
                                         [(0, sizes[0])] + [(sum(sizes[1:i]), sizes[i]) for i in range(1, len(sizes))]):
            gaussian_noise(tuple(x.shape), 0.25, key=key, phase=phase, start=start, count=count,
                           device=torch.device("cpu"))

    def votes():
        counts = torch.zeros((seg.num_classes, *x.shape[1:]), dtype=torch.int64)
        for out in outs:
            accumulate_votes(counts, class_labels(out))

    counts = torch.zeros((seg.num_classes, *x.shape[1:]), dtype=torch.int64)
    for out in outs[1:]:
        accumulate_votes(counts, class_labels(out))
    c_hat = counts.argmax(dim=0)
    k = counts.gather(0, c_hat.unsqueeze(0)).squeeze(0)
    request = CertifyRequest(sigma=0.25, n0=N0, n=N, alpha=ALPHA, taus=(TAU,))

    def stats():
        certificates_from_counts(c_hat, k, request, "holm", "segcertify")

    with torch.inference_mode():
        parts = {name: min(_cpu(f) for _ in range(3)) for name, f in
                 (("noise", noise), ("labels + votes", votes), ("statistics", stats))}
    added = sum(parts.values())
    print("  certify's own work alone (CPU, best of 3): " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in parts.items())
          + f"; ratio from parts (bare + parts) / bare {(rc + added) / rc:.3f} (the noise is drawn in a helper "
          f"thread while the model runs, so on an idle second core it overlaps)")
    return cw / rw, cc / rc


# ------------------------------------------------------------------ memory
_MEMORY_CHILD = r"""
import json, sys, torch
torch.set_num_threads(1)
from certframe.registry import get_registry
from certframe.plugins.certifiers.segcertify import SegCertify
from certframe.core.smoothing import SmoothedSegmenter
from certframe.interfaces import NoiseKey
def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1])
dataset, weights, n, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
reg = get_registry()
x = reg.create('dataset', dataset, split='test')[0].image
s = SmoothedSegmenter(reg.create('segmenter', 'monai', weights=weights), None, 0.25)
s.certify(x, SegCertify(), key=NoiseKey(0, 'memory'), n0=10, n=2 * batch, alpha=0.001, batch_size=batch)  # warm-up
before = status('VmRSS:')
open('/proc/self/clear_refs', 'w').write('5')                          # reset the peak (VmHWM)
s.certify(x, SegCertify(), key=NoiseKey(0, 'memory'), n0=10, n=n, alpha=0.001, batch_size=batch)
print(json.dumps({'added_kib': status('VmHWM:') - before}))
"""


def bench_memory(case: str, sizes=(100, 2000), runs: int = 3):
    name, _, weights, _ = CASES[case]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    added: dict[int, list[float]] = {n: [] for n in sizes}
    for _ in range(runs):
        for n in sizes:
            out = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, name, weights, str(n), str(BATCH)],
                                 capture_output=True, text=True, check=True, env=env)
            added[n].append(max(json.loads(out.stdout.strip().splitlines()[-1])["added_kib"], 1) / 1024)
    shape = tuple(first_item(case).image.shape)
    lo, hi = sizes[0], sizes[-1]
    figures = "; ".join(f"n={n} " + ", ".join(f"{v:.1f}" for v in added[n]) + " MiB" for n in sizes)
    ratios = [high / low for high, low in zip(added[hi], added[lo])]
    print(f"[memory] {case} {tuple(shape)}, batch {BATCH}, fresh process per figure, {runs} runs: peak memory added "
          f"{figures}; ratio n={hi}/n={lo} " + ", ".join(f"{r:.2f}" for r in ratios)
          + f"; of the medians {statistics.median(added[hi]) / statistics.median(added[lo]):.2f} (target <= 1.1)")


# -------------------------------------------------------------------- dice
def bench_dice(case: str, count: int):
    from certframe.plugins.certifiers.segcertify import SegCertify
    from certframe.run import Names, certify_dataset

    name, opts, clean, noisy = CASES[case]
    data = registry().create("dataset", name, split="test", **{**opts, "count": count})
    items = "volumes" if data[0].image.dim() == 4 else "images"
    print(f"[dice] {case}: {len(data)} test {items} {tuple(data[0].image.shape)}, SegCertify (Holm), n0={N0}, n={N}, "
          f"alpha={ALPHA}, tau={TAU}, batch {BATCH}, seed 0; means over {items}")
    extra = [c for c in data.class_names[1:]] if data.num_classes > 2 else []
    head = (f"  {'model':28s} {'sigma':>5s} {'radius':>6s} {'clean Dice':>10s} {'cert. Dice':>10s} "
            + "".join(f" {'cert. ' + c:>14s}" for c in extra)
            + f" {'abstain':>7s} {'CPU s/item':>10s} {'wall s/item':>11s}")
    print(head)
    table = []
    for weights in (clean, noisy):
        seg = registry().create("segmenter", "monai", weights=weights)
        for sigma in (0.25, 0.5):
            start = clock()
            rows = list(certify_dataset(data, seg, None, SegCertify(), sigma=sigma, n0=N0, n=N, alpha=ALPHA,
                                        taus=(TAU,), seed=0, batch_size=BATCH, device="cpu",
                                        names=Names(segmenter=weights)))
            wall, cpu = since(start)

            def mean(key):
                return sum(r[key] for r in rows) / len(rows)

            per_class = "".join(f" {mean('certified_dice_' + c):14.4f}" for c in extra)
            print(f"  {weights:28s} {sigma:5.2f} {rows[0]['radius']:6.3f} {mean('clean_dice'):10.4f} "
                  f"{mean('certified_dice'):10.4f}{per_class} {mean('abstain_rate'):7.4f} "
                  f"{cpu / len(rows):10.2f} {wall / len(rows):11.2f}", flush=True)
            table.append((weights, sigma, mean("certified_dice")))
    return table


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("parts", nargs="*", help="some of: sizing overhead memory dice (default: all)")
    p.add_argument("--volumes", type=int, default=64, help="phantom test volumes in the Dice table")
    p.add_argument("--images", type=int, default=64, help="lung test images in the Dice table")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    parts = args.parts or ["sizing", "overhead", "memory", "dice"]
    unknown = sorted(set(parts) - {"sizing", "overhead", "memory", "dice"})
    if unknown:
        p.error(f"unknown part(s) {unknown}: choose from sizing, overhead, memory, dice")
    load = os.getloadavg()
    print(f"# python benchmarks/volumes.py {' '.join(argv if argv is not None else sys.argv[1:])}   "
          f"(torch {torch.__version__}, {torch.get_num_threads()} intra-op thread(s), OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, {os.cpu_count()} CPU cores, load average "
          f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f} at the start)", flush=True)
    start = clock()
    for part in parts:
        t0 = clock()
        if part == "sizing":
            bench_sizing()
        elif part == "overhead":
            for case in ("phantom", "lungs"):
                bench_overhead(case, args.repeats)
        elif part == "memory":
            for case in ("phantom", "lungs"):
                bench_memory(case)
        elif part == "dice":
            bench_dice("phantom", args.volumes)
            bench_dice("lungs", args.images)
        wall, cpu = since(t0)
        print(f"  ({part}: {wall:.0f} s wall, {cpu:.0f} s CPU in this process)", flush=True)
    wall, cpu = since(start)
    print(f"# total {wall / 60:.1f} min wall, {cpu / 60:.1f} CPU min in this process (memory children not counted)")


if __name__ == "__main__":
    main()
