"""Overhead of the model-route wrappers: forward time per batch against the bare network's forward.

    python benchmarks/own_models.py [--size 128] [--batch 16] [--repeats 15] [--threads 1]

For each route the wrapper (what ``certframe certify`` calls) and the bare network
(the same weights, called directly on an input prepared outside the timing) run
alternately, ``repeats`` times each, after a warm-up; the figures are medians.
Target: wrapper / bare <= 1.05. One intra-op thread by default: on a shared machine a
second thread turns each small element-wise op into a wait for a busy core (40 ms
instead of 0.07 ms for an 8 x 128 x 128 affine map, measured here), which measures
the scheduler, not the wrapper.

* torchscript: the bundled-size MONAI UNet traced with ``torch.jit.trace``; bare = the
  ScriptModule itself; the wrapper adds the shape checks.
* nnunet: a PlainConvUNet results folder written in nnU-Net's format (patch = image
  size, so one pass); bare = the network on an already normalised input; the wrapper
  adds nnU-Net's CT normalisation (clip, shift, scale). The sliding-window case
  (image twice the patch) is printed apart: it is more computation, not overhead.
* smp (when installed): a U-Net/resnet18; the wrapper adds the ImageNet normalisation.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def timed(fn, x) -> float:
    t = time.perf_counter()
    with torch.inference_mode():
        fn(x)
    return time.perf_counter() - t


def compare(name: str, wrapper, bare, x, x_bare, repeats: int, own_work=None) -> float:
    """Median times of wrapper(x) and bare(x_bare), interleaved; ``own_work(x)``: what the wrapper adds
    (timed alone over 50 calls: the end-to-end ratio moves by several percent with the machine's load,
    the wrapper's own work does not)."""
    for _ in range(2):
        timed(wrapper, x), timed(bare, x_bare)
    w, b = [], []
    for _ in range(repeats):  # interleaved, so load changes hit both alike
        w.append(timed(wrapper, x))
        b.append(timed(bare, x_bare))
    mw, mb = statistics.median(w), statistics.median(b)
    line = (f"[{name}] batch {tuple(x.shape)}: wrapper {mw * 1e3:.1f} ms, bare network {mb * 1e3:.1f} ms; "
            f"ratio {mw / mb:.3f} (target <= 1.05)")
    if own_work is not None:
        e = statistics.median(timed(own_work, x) for _ in range(50))
        line += f"; the wrapper's own work {e * 1e3:.2f} ms, ratio from parts {(mb + e) / mb:.4f}"
    print(line)
    return mw / mb


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    S, B = args.size, args.batch
    x = torch.rand(B, 1, S, S) + 0.25 * torch.randn(B, 1, S, S)
    from certframe.plugins.segmenters.monai_segmenter import MonaiSegmenter
    from certframe.plugins.segmenters.torchscript import TorchScriptSegmenter

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        net = MonaiSegmenter(weights="synthetic-lung").net.eval()
        torch.jit.trace(net, torch.rand(1, 1, S, S)).save(str(tmp / "unet.pt"))
        ts = TorchScriptSegmenter(path=str(tmp / "unet.pt")).eval()
        # the wrapper adds only shape checks here (no normalisation): its ratio is the timing noise, so
        # it gets three times the repeats of the others
        compare("torchscript", ts, ts.net, x, x, 3 * args.repeats)

        try:
            from nnunet_fixture import arch_kwargs, make_results_folder

            from certframe.plugins.segmenters.nnunet import NNUNetSegmenter

            folder = make_results_folder(tmp / "nnunet", patch=(S, S), kwargs=arch_kwargs((16, 32, 64, 128)))
            nn_seg = NNUNetSegmenter(model=str(folder)).eval()
            with torch.inference_mode():
                z = nn_seg.normalize(x)
            compare("nnunet", nn_seg, nn_seg.net, x, z, args.repeats, own_work=nn_seg.normalize)
            big = torch.rand(max(1, B // 4), 1, 2 * S, 2 * S)
            with torch.inference_mode():
                zb = nn_seg.normalize(big)
            sw = statistics.median(timed(nn_seg, big) for _ in range(3))
            one = statistics.median(timed(nn_seg.net, zb) for _ in range(3))
            print(f"[nnunet sliding window] batch {tuple(big.shape)}, patch {S}x{S}, tile step 0.5 (9 windows): "
                  f"{sw * 1e3:.1f} ms; one full-image pass of the bare network {one * 1e3:.1f} ms; ratio "
                  f"{sw / one:.2f} (more computation by design, not overhead)")
        except ImportError as err:
            print(f"[nnunet] skipped: {err}")

        try:
            from certframe.plugins.segmenters.smp_segmenter import SMPSegmenter

            sm = SMPSegmenter(weights="random").eval()
            with torch.inference_mode():
                z = (x - sm.mean) / sm.std
            compare("smp", sm, sm.net, x, z, args.repeats, own_work=lambda t: (t - sm.mean) / sm.std)
        except ImportError as err:
            print(f"[smp] skipped: {err}")


if __name__ == "__main__":
    main()
