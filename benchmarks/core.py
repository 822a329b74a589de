"""Core benchmarks: statistics speed, pipeline overhead, memory vs n.

    python benchmarks/core.py            # all three, prints figures and ratios
    python benchmarks/core.py stats      # or one of: stats, overhead, memory

Figures are measured in one run on whatever machine runs it (this one is shared
and noisy): read the ratios, not the absolute times. Nothing here asserts.

1. stats: SegCertify's decisions for one 256x256 image at n=1000 — certframe's
   vectorised path (one p-value table + Holm by sorting) vs a per-pixel loop of
   ``scipy.stats.binomtest`` calls, the way the reference implementation does it.
2. overhead: ``certify`` wall time divided by the time of the same number of raw
   denoiser+segmenter forward passes at the same batch sizes (the physical limit
   of the method: everything else, noise, labels, votes, statistics, is overhead).
   Target <= 1.10 on CPU. Also times the label step alone: ``argmax(dim=1)`` vs
   ``max(dim=1).indices`` (what :func:`certframe.interfaces.class_labels` uses).
3. memory: peak resident memory added while certifying one image at n=500, 2000
   and 8000 (each in a fresh process; Linux /proc accounting). Target ratio ~1
   between the largest and the smallest n: the votes are counts, so memory must not
   grow with n. n=100 is printed too but left out of the ratio: with batches of 50 it
   runs two batches and never reaches the steady state (one batch in the model while
   the next batch's noise is drawn), so it reads 10-30% lower (an earlier version of
   this benchmark compared n=100 with n=2000 and read that as growth).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import torch


def bench_stats(side: int = 256, n: int = 1000, tau: float = 0.75, alpha: float = 0.001, loop_pixels=None):
    from scipy.stats import binomtest

    from certframe.core.statistics import binomial_pvalues, holm_reject

    rng = np.random.default_rng(0)
    k = rng.binomial(n, rng.uniform(0.6, 1.0, size=(side, side)))
    t0 = time.perf_counter()
    p = binomial_pvalues(k, n, tau)
    holm_reject(p, alpha)
    vec = time.perf_counter() - t0
    flat = k.ravel()
    m = flat.size if loop_pixels is None else min(loop_pixels, flat.size)
    t0 = time.perf_counter()
    loop_p = [binomtest(int(flat[i]), n, tau, alternative="greater").pvalue for i in range(m)]
    loop = (time.perf_counter() - t0) * flat.size / m
    assert np.allclose(loop_p, p.ravel()[:m])
    extra = "" if m == flat.size else f" (loop timed on {m} pixels, scaled to {flat.size})"
    print(f"[stats] {side}x{side} image, n={n}: vectorised {vec * 1e3:.1f} ms, "
          f"per-pixel scipy loop {loop:.2f} s{extra}; speed-up {loop / vec:.0f}x")
    return loop / vec


def _timed(f) -> float:
    with torch.inference_mode():
        t0 = time.perf_counter()
        f()
        return time.perf_counter() - t0


def bench_overhead(side: int = 256, n0: int = 10, n: int = 100, batch_size: int = 32, repeats: int = 5):
    from certframe.core.smoothing import SmoothedSegmenter
    from certframe.interfaces import NoiseKey
    from certframe.plugins.certifiers.segcertify import SegCertify
    from certframe.plugins.denoisers.none import NoDenoiser
    from certframe.plugins.segmenters.monai_segmenter import MonaiSegmenter

    seg, den = MonaiSegmenter(weights="synthetic-lung"), NoDenoiser()
    x = torch.rand(1, side, side)
    sizes = [min(batch_size, n0 - i) for i in range(0, n0, batch_size)] + \
            [min(batch_size, n - i) for i in range(0, n, batch_size)]
    batches = [torch.rand(b, 1, side, side) for b in sizes]
    smoothed = SmoothedSegmenter(seg, den, 0.25)

    def raw():  # the physical limit: denoiser + segmenter forward passes, nothing else
        with torch.inference_mode():
            for b in batches:
                seg(den(b, 0.25))

    def certify():
        smoothed.certify(x, SegCertify(), key=NoiseKey(0, "bench"), n0=n0, n=n, alpha=0.001,
                         batch_size=batch_size)

    logits = torch.randn(batch_size, 2, side, side)
    t_argmax = min(_timed(lambda: logits.argmax(dim=1)) for _ in range(3))
    t_max = min(_timed(lambda: logits.max(dim=1).indices) for _ in range(3))
    print(f"[labels] {batch_size}x2x{side}x{side} logits: argmax(dim=1) {t_argmax * 1e3:.1f} ms, "
          f"max(dim=1).indices {t_max * 1e3:.1f} ms ({t_argmax / t_max:.0f}x); one forward pass "
          f"{min(_timed(lambda: seg(batches[1])) for _ in range(2)) * 1e3:.0f} ms")
    raw(), certify()  # warm-up
    raw_t, cert_t = [], []
    for _ in range(repeats):  # interleave, keep the best of each (least disturbed by other load)
        t0 = time.perf_counter()
        raw()
        raw_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        certify()
        cert_t.append(time.perf_counter() - t0)
    ratio = min(cert_t) / min(raw_t)
    print(f"[overhead] {side}x{side}, n0={n0}, n={n}, batch {batch_size}: raw forward passes "
          f"{min(raw_t):.2f} s, certify {min(cert_t):.2f} s; ratio {ratio:.3f} (target <= 1.10)")
    return ratio


_MEMORY_CHILD = r"""
import json, sys, torch
from certframe.plugins.certifiers.segcertify import SegCertify
from certframe.plugins.segmenters.monai_segmenter import MonaiSegmenter
from certframe.core.smoothing import SmoothedSegmenter
from certframe.interfaces import NoiseKey
def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1])
n, side = int(sys.argv[1]), int(sys.argv[2])
s = SmoothedSegmenter(MonaiSegmenter(weights='synthetic-lung'), None, 0.25)
x = torch.rand(1, side, side)
s.certify(x, SegCertify(), key=NoiseKey(0, 'memory'), n0=10, n=10, alpha=0.001, batch_size=50)   # warm-up allocations
before = status('VmRSS:')
open('/proc/self/clear_refs', 'w').write('5')                          # reset the peak (VmHWM)
s.certify(x, SegCertify(), key=NoiseKey(0, 'memory'), n0=10, n=n, alpha=0.001, batch_size=50)
print(json.dumps({'added_kib': status('VmHWM:') - before}))
"""


def bench_memory(side: int = 128, sizes=(100, 500, 2000, 8000)):
    added = {}
    for n in sizes:
        out = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, str(n), str(side)], capture_output=True,
                             text=True, check=True)
        added[n] = max(json.loads(out.stdout.strip().splitlines()[-1])["added_kib"], 1)
    steady = [n for n in sizes if n >= 500]
    ratio = added[steady[-1]] / added[steady[0]]
    figures = ", ".join(f"n={n} {added[n] / 1024:.1f} MiB" for n in sizes)
    print(f"[memory] {side}x{side}, batch 50: peak memory added {figures}; "
          f"ratio n={steady[-1]}/n={steady[0]} {ratio:.2f} (target ~1)")
    return ratio


if __name__ == "__main__":
    torch.manual_seed(0)
    which = sys.argv[1:] or ["stats", "overhead", "memory"]
    for name in which:
        {"stats": bench_stats, "overhead": bench_overhead, "memory": bench_memory}[name]()
