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
