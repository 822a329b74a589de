"""benchmarks/fixed_cost.py runs end to end at a tiny size, and its premise holds: with the
constant segmenter the run's results do not depend on the noise, so "noise replaced by zeros"
does the same work, and the stage timers leave the code as they found it."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent


def load_benchmark():
    spec = importlib.util.spec_from_file_location("fixed_cost", ROOT / "benchmarks" / "fixed_cost.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_fixed_cost_benchmark_runs_and_its_noise_free_run_does_the_same_work(tmp_path, capsys, one_thread):
    from certframe.core.sampler import NoiseVoter
    from certframe.run.folder import RunFolder

    bench = load_benchmark()
    noise, append = NoiseVoter._noise, RunFolder.append
    bench.main(["--sizes", "32", "--n", "20", "--n0", "5", "--images", "2", "--repeats", "1", "--batch-size", "8"])
    out = capsys.readouterr().out
    assert "[32 px, n0 5, n 20, 2 images] per image: wall" in out and "certifier: Holm" in out
    assert "noise replaced by zeros" in out and "CPU per image: main thread" in out
    assert NoiseVoter._noise is noise and RunFolder.append is append      # every timer removed

    segmenter, data = bench.ConstantSegmenter(32), bench.MemoryDataset(3, 32)
    tables = []
    for noisy in (True, False):
        folder = tmp_path / f"noise-{noisy}"
        bench.one_run(data, segmenter, n0=5, n=100, batch_size=32, device="cpu", folder=folder, noise=noisy)
        tables.append(pd.read_csv(folder / "results.csv").drop(columns="seconds"))
    pd.testing.assert_frame_equal(*tables)
    assert 0 < tables[0]["abstain_rate"].mean() < 1              # the replayed votes vary: some pixels abstain
