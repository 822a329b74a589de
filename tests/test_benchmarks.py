"""Pure functions of the benchmark scripts (they are not imported by the package)."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_paired_bootstrap_ci_of_the_benchmark(monkeypatch):
    import importlib.util

    # the script imports its sibling ``_kvasir`` as ``python benchmarks/kvasir_diffusion.py`` would find it
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("kvasir_diffusion", ROOT / "benchmarks" / "kvasir_diffusion.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    ci = bench.paired_bootstrap_ci
    assert ci([0.3, 0.5, 0.7], [0.3, 0.5, 0.7]) == (0.0, 0.0, 0.0)
    assert ci([0.6, 0.8], [0.5, 0.7]) == pytest.approx((0.1, 0.1, 0.1))  # a constant difference
    mean, lo, hi = ci([1, 0, 1, 0], [0, 0, 0, 0], n_boot=20_000)
    assert mean == 0.5 and lo == 0.0 and hi == 1.0  # resampling 4 Bernoulli pairs spans 0..1 at 95 %
    mean, lo, hi = ci(list(range(100)), [0] * 100)
    assert lo < mean == 49.5 < hi and hi - lo < 15  # standard error 2.9: CI about +-5.7
    with pytest.raises(ValueError, match="equal-length"):
        ci([1, 2], [1])


def test_resolution_ceiling_of_the_diffusion_benchmark(monkeypatch):
    """The round trip through a DDPM's resolution: lossless at the same size, lossy for fine detail."""
    import importlib.util

    import torch

    from certframe.interfaces import Sample

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("kvasir_diffusion", ROOT / "benchmarks" / "kvasir_diffusion.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    # one 16x16 image: a 2-pixel checkerboard in the left half (fine detail), flat on the right
    image = torch.zeros(1, 16, 16)
    image[0, :, :8] = ((torch.arange(16)[:, None] // 2 + torch.arange(8)[None] // 2) % 2).float()
    mask = (image[0] > 0.5).long()
    data = [Sample(image, mask, "a")]

    def threshold(x):  # a "segmenter": logits [B, 2, H, W] of pixel > 0.5
        fg = (x[:, :1] > 0.5).float()
        return torch.cat([1 - fg, fg], 1)

    trip_psnr, dice_x, dice_trip = bench.resolution_ceiling(data, threshold, (16, 16), 1)
    assert trip_psnr == float("inf") and dice_x == dice_trip == 1.0
    trip_psnr, dice_x, dice_trip = bench.resolution_ceiling(data, threshold, (4, 4), 1)
    assert dice_x == 1.0 and dice_trip < 0.5 and trip_psnr < 10  # 4x4 averages the checkerboard away


def test_hierarchical_benchmark_compares_flat_and_hierarchical_on_the_same_draws():
    import importlib.util

    from certframe.registry import get_registry

    spec = importlib.util.spec_from_file_location("hierarchical_bench", ROOT / "benchmarks" / "hierarchical.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    reg = get_registry(load_entrypoints=False)
    data = reg.create("dataset", "synthetic-tumour", count=2, size=32)
    seg = reg.create("segmenter", "monai", weights="synthetic-tumour-noise0.25").eval()
    res = bench.compare(data, seg, 0.5)
    flat, hier = res["flat"], res["hierarchical"]
    assert res["identical_fine"] == 2 and flat["fine_dice"] == hier["fine_dice"]   # step 3 is SegCertify
    assert flat["coarse"] == 0 and hier["abstain"] + hier["coarse"] == pytest.approx(flat["abstain"])
    assert hier["cig"] >= flat["cig"]
    line = bench.report("synthetic-tumour", 0.5, res)[2]
    assert "fine labels identical in 2/2 items" in line
