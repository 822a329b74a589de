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


def test_diffusion_benchmark_is_the_study_in_its_format(monkeypatch, tmp_path):
    """benchmarks/kvasir_diffusion.py is a thin use of ``certframe study`` (issue 24): run on the synthetic study,
    its table carries the study's own figures (tests/test_study.py's golden values), then a rerun reuses
    every stage and prints the same table."""
    import importlib.util
    import re

    from test_study import GOLDEN

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("kvasir_diffusion", ROOT / "benchmarks" / "kvasir_diffusion.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    study, folder = ROOT / "examples" / "studies" / "synthetic.toml", tmp_path / "study"
    texts = []
    for name in ("first.txt", "again.txt"):
        bench.main(["--study", str(study), "--output", str(folder), "--results", str(tmp_path / name)])
        texts.append((tmp_path / name).read_text())
    assert texts[0].splitlines()[0] == (f"command: python benchmarks/kvasir_diffusion.py --study {study} --output "
                                        f"{folder} --results {tmp_path / 'first.txt'}")
    assert "12 stages run, 0 reused" in texts[0] and "0 stages run, 12 reused" in texts[1]
    rows = {"Gaussian-trained": "gaussian", "clean UNet + DDPM": "ddpm", "UNet fine-tuned": "finetuned"}
    found = {}
    for text in texts:
        for line in text.splitlines():
            m = re.match(r"(.+?)\s+(0\.\d+)\s+(\d\.\d{3})\s+(\d\.\d{4})\s+(\d\.\d{3})\s+(\d+)", line)
            if m and any(m[1].startswith(k) for k in rows):
                row = next(v for k, v in rows.items() if m[1].startswith(k))
                found.setdefault((row, float(m[2])), set()).add((float(m[4]), float(m[5])))
    assert set(found) == set(GOLDEN)
    for key, (dice, abstain, *_rest) in GOLDEN.items():
        assert found[key] == {(round(dice, 4), round(abstain, 3))}, key  # both calls, the study's figures
    table = [t.split("Certified Dice")[1].split("stages' own time")[0] for t in texts]
    assert table[0] == table[1]
    assert "goal +0.10 NOT reached" in texts[0]


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
