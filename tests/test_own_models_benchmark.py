"""benchmarks/own_models.py runs end to end at a tiny size (the figures themselves are not asserted)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "own_models.py"


def test_wrapper_overhead_benchmark_runs(capsys):
    spec = importlib.util.spec_from_file_location("own_models", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--size", "32", "--batch", "1", "--repeats", "1"])
    out = capsys.readouterr().out
    assert out.startswith("[torchscript] batch (1, 1, 32, 32): wrapper ")
    for route in ("nnunet", "smp"):
        assert f"[{route}] batch (1, 1, 32, 32)" in out and "ratio from parts" in out or f"[{route}] skipped" in out
