"""Certification's fixed cost per image: everything a certify run does that is not a forward pass.

    python benchmarks/fixed_cost.py                      # 128 and 256 px, n0 10, n 100 and n 1000
    python benchmarks/fixed_cost.py --sizes 128 --n 100  # one setting
    python benchmarks/fixed_cost.py --profile 256        # add a cProfile of the 256-px noise-free run
    python benchmarks/fixed_cost.py --unet               # add: the bundled UNet, certify vs its forward passes

The real path of ``certframe certify``: :func:`certframe.run.certify.run_certify` with a run
folder (manifest, results.csv appended image by image, one certificate file per image, the
finish step), SegCertify (Holm), no denoiser, batch size 32, one torch thread, on the CPU.
The segmenter replays precomputed logits (:class:`ConstantSegmenter`: no arithmetic), so a
forward pass costs nothing and what remains is the fixed cost; their labels vary from pixel
to pixel, so the statistics, the metrics and the certificate files see realistic maps.
The data set is synthetic-lung at the size asked, generated before the clock starts (a
real data set's loading is its own cost, overlapped by ``--prefetch`` on a GPU).

Per setting, three timings of the same run:

* ``wall``: the per-image loop as the user runs it (first image's load to the last
  image's results row, divided by the images), median over ``--repeats`` runs.
* ``no noise``: the same with the noise generator replaced by zeros (the votes of a
  constant model do not depend on the noise, so the run does the same work otherwise).
  It is the fixed cost without the noise stage, which is being rewritten apart
  (certframe/core/sampler.py, certframe/core/philox.py): ``wall - no noise`` is what the noise
  costs the run; ``noise`` in the breakdown is the time spent inside the generator
  (on the CPU in a helper thread, overlapping the vote loop).
* the breakdown: one more run per variant with every stage wrapped in a timer (wall time
  and the CPU time of the thread that ran it, children subtracted; per image). Stages marked
  ``*`` ran (partly) in another thread (the CPU noise helper, the run folder's writer) and
  overlap the rest; ``other`` is the main thread's untimed rest of the wall.
* CPU per image: the main thread's CPU time and every thread's, over the loop; less
  disturbed than wall time when other jobs share the machine.

Per run (not per image): start (manifest, plugin records, hashes) and finish (sort, Parquet,
summary) are printed apart. Nothing here asserts: figures and ratios, no verdicts. The
machine is shared and noisy: compare figures of one run, repeat, take medians.

``--unet`` adds the issue's own figure: the same run with the bundled MONAI UNet
(synthetic-lung weights) divided by the time of the same forward passes alone (the n0 + n
draws in the same batches; the clean prediction's pass is not in it), as the ratio the
issue's goal is stated in (<= 1.15 at n 100, <= 1.05 at n 1000). On a CPU the forward
passes dominate and the ratio says little; it is meant for a GPU.

``--device cuda`` runs the same on a GPU (stage timers then measure the host's time,
launches included; ``--sync-debug`` counts host synchronisations per image with
``torch.cuda.set_sync_debug_mode``). Results of runs: benchmarks/results/fixed_cost.txt.
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import inspect
import io
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from certframe.interfaces import Sample, SegmentationDataset, Segmenter


class ConstantSegmenter(Segmenter):
    """Logits ``[B, K, H, W]`` that ignore the input: precomputed tensors replayed in turn (cost nothing).

    For each batch size it holds ``POOL`` fixed logits tensors and returns the next one at
    each call: no arithmetic, so a forward pass costs nothing. Their labels are drawn once
    per element with P(class 1) 0.97 inside a disc, 0.03 outside and 0.6 on a ring at its
    border, so the votes vary from pixel to pixel as a real model's do: Holm sorts real
    p-values, pixels abstain, the certificate files hold real maps. The tensors are
    contiguous, as a real model's output is (an expanded view would make the checks and
    the label step read it up to 7x slower). The replay order is fixed, so a run's results
    are the same every time, noise or not.
    """

    num_classes = 2
    in_channels = 1
    POOL = 3

    def __init__(self, size: int):
        super().__init__()
        yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        r = ((yy - size / 2) ** 2 + (xx - size / 2.2) ** 2).sqrt() / (size / 3.5)
        prob = torch.where(r < 0.9, 0.97, torch.where(r < 1.1, 0.6, 0.03))
        self.register_buffer("prob", prob)
        self._pool: dict = {}
        self.calls = 0

    def forward(self, images):
        key = (images.shape[0], images.device)
        if key not in self._pool:
            gen = torch.Generator().manual_seed(images.shape[0])
            pool = []
            for _ in range(self.POOL):
                ones = torch.rand((images.shape[0], *self.prob.shape), generator=gen) < self.prob.cpu()
                logit = torch.where(ones, 2.0, -2.0)
                pool.append(torch.stack([-logit, logit], dim=1).contiguous().to(images.device))
            self._pool[key] = pool
        self.calls += 1
        return self._pool[key][self.calls % self.POOL]


class MemoryDataset(SegmentationDataset):
    """Samples generated once (synthetic-lung at ``size``), served from memory."""

    class_names = ("background", "lungs")
    in_channels = 1

    def __init__(self, count: int, size: int):
        from certframe.plugins.datasets.synthetic import SyntheticLung

        source = SyntheticLung(count=count, size=size)
        self.items = [source[i] for i in range(count)]
        self.size = size

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        s = self.items[index]
        return Sample(s.image.clone(), s.mask.clone(), s.id)

    def identity(self):
        return {"class": type(self).__name__, "size": self.size, "count": len(self.items)}

    def item_ids(self):
        return [s.id for s in self.items]


class Stages:
    """Wall and CPU time (of the thread that ran it) per named stage, nested: a stage's children
    are subtracted from it (per thread)."""

    def __init__(self):
        self.own: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.threads: dict[str, set] = defaultdict(set)
        self._local = threading.local()
        self._undo: list = []
        self.active = False         # set by Clock: count only inside the per-image loop

    def _stack(self) -> list:
        if not hasattr(self._local, "stack"):
            self._local.stack = []
        return self._local.stack

    def timed(self, name: str, fn):
        def wrapper(*args, **kwargs):
            stack = self._stack()
            stack.append([0.0, 0.0])
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                dt, dc = time.perf_counter() - t0, time.thread_time() - c0
                children = stack.pop()
                if self.active:
                    self.own[name] += dt - children[0]
                    self.cpu[name] += dc - children[1]
                    self.calls[name] += 1
                    self.threads[name].add(threading.current_thread().name)
                if stack:
                    stack[-1][0] += dt
                    stack[-1][1] += dc
        return wrapper

    def wrap(self, owner, attr: str, name: str) -> None:
        raw = inspect.getattr_static(owner, attr)
        if isinstance(raw, staticmethod):
            new = staticmethod(self.timed(name, raw.__func__))
        else:
            new = self.timed(name, getattr(owner, attr) if inspect.ismodule(owner) else raw)
        self._undo.append((owner, attr, raw))
        setattr(owner, attr, new)

    def undo(self) -> None:
        for owner, attr, raw in reversed(self._undo):
            setattr(owner, attr, raw)
        self._undo.clear()


# (owner, attribute, stage): the stages of one image's path through run_certify
def stage_points():
    from rich.progress import Progress

    import certframe.core.metrics as metrics
    import certframe.core.sampler as sampler
    import certframe.core.smoothing as smoothing
    import certframe.plugins.certifiers.segcertify as segcertify
    import certframe.run.folder as runs
    import certframe.run.step as step
    import certframe.run.writer as writer
    from certframe.validation import BatchChecks

    return [
        (MemoryDataset, "__getitem__", "data"),
        (step, "validate_sample", "validation"),
        (smoothing, "validate_image", "validation"),
        (smoothing.SmoothedSegmenter, "voter", "votes: voter setup"),
        (sampler.NoiseVoter, "counts", "votes: loop (rest)"),
        (sampler.NoiseVoter, "_noise", "noise (generator)"),
        (ConstantSegmenter, "forward", "model forward (constant)"),
        (smoothing.SmoothedSegmenter, "base_logits", "votes: output checks"),
        (smoothing.SmoothedSegmenter, "base_labels", "votes: labels"),
        (sampler, "accumulate_votes", "votes: accumulate"),
        (BatchChecks, "raise_pending", "votes: read flags (sync)"),
        (segcertify.SegCertify, "certify", "certifier: argmax/gather"),
        (segcertify, "certificates_from_counts", "certifier: certificates"),
        (segcertify, "binomial_pvalues", "certifier: p-values"),
        (segcertify, "reject", "certifier: Holm"),
        (segcertify, "holm_reject_counts", "certifier: Holm"),
        (step.CertifyStep, "clean_prediction", "clean prediction"),
        (step.CertifyStep, "__call__", "rows (step rest)"),
        (metrics, "metric_row", "metrics"),
        (metrics, "mean_dice", "metrics"),
        (metrics, "abstain_rate", "metrics"),
        (metrics, "certified_accuracy", "metrics"),
        (runs.RunFolder, "save_certificate", "certificate file: rest"),
        (np, "savez_compressed", "certificate file: npz"),
        (runs, "savez_compressed", "certificate file: npz"),
        (runs, "atomic_write", "certificate file: write"),
        (runs.RunFolder, "append", "results.csv"),
        (writer.RunWriter, "submit", "hand-off to the writer"),
        (writer.RunWriter, "close", "writer: drain at the end"),
        (os, "fsync", "fsync"),
        (Progress, "advance", "progress bar"),
    ]


class Clock:
    """The per-image loop's window: from ``samples()`` (the first image's load) to the last results row.

    Stage timers count only inside the window (the manifest's and the finish step's
    writes are per run, not per image).
    """

    def __init__(self):
        self.start = None
        self.ends: list[float] = []
        self.cpu = {}                   # main thread / whole process CPU seconds over the window

    def install(self, stages: Stages) -> None:
        import certframe.run.certify as certify
        from certframe.run.folder import RunFolder

        samples, append, repair = certify.samples, RunFolder.append, RunFolder.repair

        def first(*args, **kwargs):
            self.start = time.perf_counter()
            self._cpu0 = time.thread_time(), time.process_time()
            stages.active = True
            return samples(*args, **kwargs)

        def mark(run, rows, **kwargs):
            append(run, rows, **kwargs)
            self.ends.append(time.perf_counter())

        def after(run, *args, **kwargs):
            stages.active = False
            self.cpu = {"main": time.thread_time() - self._cpu0[0], "process": time.process_time() - self._cpu0[1]}
            return repair(run, *args, **kwargs)

        stages._undo += [(certify, "samples", samples), (RunFolder, "append", append),
                         (RunFolder, "repair", repair)]
        certify.samples, RunFolder.append, RunFolder.repair = first, mark, after

    def per_image(self) -> float:
        return (self.ends[-1] - self.start) / len(self.ends)

    def cpu_per_image(self, which: str) -> float:
        return self.cpu[which] / len(self.ends)


def wall_time(fn, *args, **kwargs):
    """``(fn(*args, **kwargs), its wall time in seconds)``."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def zero_noise():
    """Replace NoiseVoter._noise by zeros of the same shape (undo with the returned function)."""
    from certframe.core.sampler import NoiseVoter

    raw = NoiseVoter._noise

    def _noise(self, phase, start, count):
        return torch.zeros((count, *self.x.shape), dtype=self.x.dtype, device=self.x.device)

    NoiseVoter._noise = _noise
    return lambda: setattr(NoiseVoter, "_noise", raw)


def one_run(dataset, segmenter, *, n0, n, batch_size, device, folder, noise=True, stages: Stages | None = None,
            profile: cProfile.Profile | None = None, certificates=True):
    """One run_certify over the whole data set; returns (per-image loop seconds, run seconds)."""
    from certframe.plugins.certifiers.segcertify import SegCertify
    from certframe.registry import get_registry
    from certframe.run.build import Plugins
    from certframe.run.certify import run_certify
    from certframe.run.spec import RunSpec

    spec = RunSpec(dataset="synthetic-lung", dataset_options={"size": dataset.size}, segmenter="monai",
                   denoiser="none",
                   sigma=0.25, n0=n0, n=n, alpha=0.001, taus=(0.75,), batch_size=batch_size, seed=0,
                   device=device, certificates=certificates)
    segmenter.calls = 0                 # the same replay order in every run
    plugins = Plugins(dataset, segmenter, None, SegCertify())
    shutil.rmtree(folder, ignore_errors=True)
    holder = stages or Stages()
    clock = Clock()
    restore = zero_noise() if not noise else (lambda: None)
    if stages is not None:
        for owner, attr, name in stage_points():
            if owner is not None and hasattr(owner, attr):   # else a stage this version does not have
                stages.wrap(owner, attr, name)
    clock.install(holder)
    try:
        with profile if profile is not None else contextlib.nullcontext():
            _, total = wall_time(run_certify, spec, folder, quiet=True, registry=get_registry(), plugins=plugins)
    finally:
        holder.undo()
        restore()
    return clock.per_image(), total, clock


def breakdown(stages: Stages, images: int) -> list[tuple[str, float, float, bool]]:
    """``(stage, wall seconds per image, CPU seconds per image, ran only in the main thread)`` in path order."""
    order = [name for _, _, name in stage_points()]
    out, seen = [], set()
    for name in order:
        if name in seen or name not in stages.own:
            continue
        seen.add(name)
        out.append((name, stages.own[name] / images, stages.cpu[name] / images,
                    stages.threads[name] == {"MainThread"}))
    return out


def timed_run(dataset, segmenter, kw: dict, *, noise: bool) -> dict:
    """One run's per-image loop wall time (``wall``), whole-run wall time (``total``) and CPU seconds per
    image of the main thread (``main``) and of every thread (``process``)."""
    per, total, clock = one_run(dataset, segmenter, **kw, noise=noise)
    return {"wall": per, "total": total, "main": clock.cpu_per_image("main"),
            "process": clock.cpu_per_image("process")}


def staged_run(dataset, segmenter, kw: dict, *, noise: bool) -> tuple[Stages, float]:
    """One run with every stage timed: ``(the stages, per-image loop wall time)``."""
    stages = Stages()
    per, _, _ = one_run(dataset, segmenter, **kw, stages=stages, noise=noise)
    return stages, per


def measure(size, n, *, n0, images, repeats, batch_size, device, tmp, profile_out=None, sync_debug=False):
    dataset = MemoryDataset(images, size)
    segmenter = ConstantSegmenter(size)
    folder = Path(tmp) / f"run-{size}-{n}"
    kw = dict(n0=n0, n=n, batch_size=batch_size, device=device, folder=folder)
    # warm-up: imports, caches, the allocator, the segmenter's logits for every batch size
    one_run(MemoryDataset(2, size), segmenter, **{**kw, "folder": Path(tmp) / "warm"})
    one_run(MemoryDataset(2, size), segmenter, **{**kw, "folder": Path(tmp) / "warm"}, noise=False)
    noisy, quiet = [], []
    for _ in range(repeats):            # interleaved: the same load on both
        noisy.append(timed_run(dataset, segmenter, kw, noise=True))
        quiet.append(timed_run(dataset, segmenter, kw, noise=False))
    stages, staged = staged_run(dataset, segmenter, kw, noise=True)
    quiet_stages, quiet_staged = staged_run(dataset, segmenter, kw, noise=False)
    syncs = None
    if sync_debug and str(device).startswith("cuda"):
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            one_run(dataset, segmenter, **kw)
        torch.cuda.set_sync_debug_mode(0)
        syncs = sum("synchroniz" in str(w.message) for w in caught) / images
    if profile_out is not None:
        prof = cProfile.Profile()
        one_run(dataset, segmenter, **kw, noise=False, profile=prof)
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(25)
        profile_out.append((size, n, buf.getvalue()))
    median = lambda runs, key: statistics.median(r[key] for r in runs)  # noqa: E731
    cpu = {"main": median(noisy, "main"), "process": median(noisy, "process"),
           "quiet main": median(quiet, "main"), "quiet process": median(quiet, "process")}
    return {"size": size, "n": n, "n0": n0, "images": images, "wall": median(noisy, "wall"),
            "walls": [r["wall"] for r in noisy], "no_noise": median(quiet, "wall"),
            "quiets": [r["wall"] for r in quiet], "per_run": median(noisy, "total") - median(noisy, "wall") * images,
            "cpu": cpu, "stages": breakdown(stages, images), "staged_wall": staged,
            "quiet_stages": breakdown(quiet_stages, images), "quiet_staged_wall": quiet_staged, "syncs": syncs}


def unet_overhead(size, n, *, n0, images, repeats, batch_size, device, tmp) -> str:
    """Certify with the bundled UNet, per image, against the same forward passes alone."""
    from certframe.registry import get_registry

    segmenter = get_registry().create("segmenter", "monai", weights="synthetic-lung").to(device).eval()
    dataset = MemoryDataset(images, size)
    kw = dict(n0=n0, n=n, batch_size=batch_size, device=device, folder=Path(tmp) / f"unet-{size}-{n}")
    sizes = [min(batch_size, n0 - i) for i in range(0, n0, batch_size)] + \
            [min(batch_size, n - i) for i in range(0, n, batch_size)]
    batches = [torch.rand(b, 1, size, size, device=device) for b in sizes]

    def passes():
        with torch.inference_mode():
            for b in batches:
                segmenter(b)
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()

    one_run(MemoryDataset(2, size), segmenter, **{**kw, "folder": Path(tmp) / "warm-unet"})
    passes()
    walls, raw = [], []
    for _ in range(repeats):
        walls.append(one_run(dataset, segmenter, **kw)[0])
        raw += [wall_time(passes)[1] for _ in range(3)]
    wall, forward = statistics.median(walls), statistics.median(raw)
    return (f"[unet {size} px, n0 {n0}, n {n}, {images} images] certify {wall * 1e3:.2f} ms/image "
            f"(runs {', '.join(f'{w * 1e3:.2f}' for w in walls)}), the same forward passes {forward * 1e3:.2f} ms "
            f"({len(sizes)} batches); ratio {wall / forward:.3f}, fixed cost {(wall - forward) * 1e3:.2f} ms/image")


def report(r) -> str:
    ms = lambda s: f"{s * 1e3:7.2f}"  # noqa: E731
    lines = [f"[{r['size']} px, n0 {r['n0']}, n {r['n']}, {r['images']} images] per image: wall {ms(r['wall'])} ms "
             f"(runs {', '.join(ms(w).strip() for w in r['walls'])}), no noise {ms(r['no_noise'])} ms "
             f"(runs {', '.join(ms(w).strip() for w in r['quiets'])}); noise costs the run "
             f"{ms(r['wall'] - r['no_noise'])} ms/image ({(r['wall'] - r['no_noise']) / r['wall']:.0%} of wall); "
             f"per run (start + finish) {r['per_run'] * 1e3:.0f} ms"]
    c = r["cpu"]
    lines.append(f"    CPU per image: main thread {ms(c['main'])} ms, all threads {ms(c['process'])} ms; "
                 f"no noise: main thread {ms(c['quiet main'])} ms, all threads {ms(c['quiet process'])} ms "
                 f"(medians; CPU time is less disturbed by other load than wall time)")
    if r["syncs"] is not None:
        lines.append(f"    host synchronisations per image (sync debug mode): {r['syncs']:.1f}")
    for title, stages, wall in (("with noise", r["stages"], r["staged_wall"]),
                                ("noise replaced by zeros", r["quiet_stages"], r["quiet_staged_wall"])):
        main_sum = sum(v for _, v, _, main in stages if main)
        lines.append(f"  breakdown, {title} (timed run: wall {ms(wall)} ms/image; per image: wall ms, CPU ms of "
                     f"its thread, share of the wall; * = partly in another thread (noise helper, run-folder "
                     f"writer), overlapping the rest):")
        for name, v, c, main in stages:
            lines.append(f"    {name + ('' if main else ' *'):<32} {ms(v)} {ms(c)}  {v / wall:6.1%}")
        rest = wall - main_sum
        lines.append(f"    {'other (main thread, untimed)':<32} {ms(rest)} {'':7}  {rest / wall:6.1%}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    p.add_argument("--n", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--n0", type=int, default=10)
    p.add_argument("--images", type=int, default=None, help="images per run (default: 20 at n 100, 4 at n 1000)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--profile", type=int, nargs="*", default=None, help="sizes to profile (noise-free run, n 100)")
    p.add_argument("--sync-debug", action="store_true")
    p.add_argument("--unet", action="store_true", help="also: the bundled UNet, certify vs its forward passes")
    p.add_argument("--sync-writer", action="store_true",
                   help="write each image's files in the loop (RunWriter threaded=False), not in the writer thread")
    args = p.parse_args(argv)
    if args.sync_writer:
        from certframe.run.folder import RunFolder
        from certframe.run.writer import RunWriter

        RunFolder.writer = lambda self, depth=4: RunWriter(self, depth, threaded=False)
    torch.set_num_threads(args.threads)
    profiles = []
    print(f"# python benchmarks/fixed_cost.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"# device {args.device}, torch threads {args.threads}, batch size {args.batch_size}, "
          f"{'files written in the loop' if args.sync_writer else 'files written by the writer thread if any'}, "
          f"load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.n:
            for size in args.sizes:
                images = args.images or (20 if n <= 100 else 4)
                prof = profiles if args.profile is not None and size in (args.profile or args.sizes) and n == min(
                    args.n) else None
                r = measure(size, n, n0=args.n0, images=images, repeats=args.repeats, batch_size=args.batch_size,
                            device=args.device, tmp=tmp, profile_out=prof, sync_debug=args.sync_debug)
                print(report(r), flush=True)
                if args.unet:
                    print(unet_overhead(size, n, n0=args.n0, images=images, repeats=args.repeats,
                                        batch_size=args.batch_size, device=args.device, tmp=tmp), flush=True)
    for size, n, text in profiles:
        print(f"\n# cProfile, {size} px, n {n}, noise replaced by zeros (top 25 by own time)")
        print("\n".join(line for line in text.splitlines() if line.strip())[:6000])


if __name__ == "__main__":
    main()
