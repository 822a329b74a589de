"""benchmarks/gpu.sh and its checks: what a GPU owner runs (CI runs it with --device cpu --quick)."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_floor_makes_the_passes_certification_makes():
    passes = load("certify_throughput").pass_sizes
    assert passes(10, 100, 32) == [10, 32, 32, 32, 4]
    assert passes(10, 1000, 512) == [10, 512, 488]
    assert sum(passes(7, 33, 5)) == 40


def summary_of(out: Path) -> str:
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_checks.py"), "summary", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_the_summary_says_not_run_for_what_did_not_run(tmp_path):
    """An empty folder: every part reads "not run", and no figure appears (never a 0 for "not tested")."""
    text = summary_of(tmp_path)
    for part in ("pytest: not run", "certify: not run", "training: not run", "noise CPU vs device: not run",
                 "torchrun 2 processes vs 1: not run"):
        assert part in text
    assert "0.00" not in text and "True" not in text


def test_the_summary_reads_the_steps_files(tmp_path):
    (tmp_path / "pytest.txt").write_text("....\n==== 640 passed, 2 skipped in 50.1s ====\n")
    (tmp_path / "noise.json").write_text(json.dumps({"status": "not measured", "why": "no CUDA device"}))
    (tmp_path / "torchrun.json").write_text(json.dumps({"status": "measured", "results_equal": False,
                                                        "certificates_equal": True, "rows": 8, "world_size": 2,
                                                        "device": "cuda"}))
    (tmp_path / "certify.json").write_text(json.dumps([{
        "device": "X", "denoiser": "none", "size": 128, "n": 100, "batch": 100, "precision": "bf16",
        "floor_ms": 9.5, "certify_ms": 10.2, "overhead": 10.2 / 9.5, "paper_ms": 600.0, "speedup_vs_paper": 58.8,
        "agreement_fp32_vs_auto": None, "certified_dice": 0.9}]))
    text = summary_of(tmp_path)
    assert "pytest: 640 passed, 2 skipped in 50.1s" in text
    assert "noise CPU vs device: not measured no CUDA device" in text
    assert "results equal: False, certificates equal: True" in text       # a failing comparison shows
    assert "1.07" in text and "58.8x" in text and "not measured" in text


def test_gpu_sh_refuses_a_missing_folder_and_a_missing_gpu(tmp_path):
    run = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh")], capture_output=True, text=True)
    assert run.returncode == 2 and "give an output folder" in run.stderr
    run = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--bogus", str(tmp_path)],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "unknown option --bogus" in run.stderr
    if not torch.cuda.is_available():
        run = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), str(tmp_path / "out")],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 2 and "torch sees no CUDA device (use --device cpu)" in run.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU answer of the noise check")
def test_the_noise_check_is_not_a_number_without_cuda(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_checks.py"), "noise", str(tmp_path),
                          "--device", "cpu"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "noise.json").read_text())["status"] == "not measured"
