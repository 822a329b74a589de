"""The checks and the summary of ``benchmarks/gpu.sh`` (see there).

    python benchmarks/gpu_checks.py env OUT            # versions and devices -> OUT/env.json
    python benchmarks/gpu_checks.py noise OUT          # CPU-vs-device noise for a few keys -> OUT/noise.json
    python benchmarks/gpu_checks.py torchrun OUT --device cuda [--quick]
                                                       # 2 processes vs 1 -> OUT/torchrun.json
    python benchmarks/gpu_checks.py summary OUT        # the table, from the files in OUT

A check that did not run is reported as "not run" or "not measured", never as a number.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch


def write(out: Path, name: str, record: dict) -> None:
    (out / name).write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))


def env(out: Path, args) -> None:
    import certframe
    from certframe.core.philox_cpu import AVAILABLE as numba_loop
    from certframe.core.sampler import NOISE_STREAM

    cuda = torch.cuda.is_available()
    write(out, "env.json", {
        "python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0) if cuda else "CPU", "gpus": torch.cuda.device_count(),
        "cpu_cores": os.cpu_count(), "certframe": getattr(certframe, "__version__", "?"),
        "noise_stream": NOISE_STREAM, "numba_cpu_loop": numba_loop,
        "bf16_supported": bool(cuda and torch.cuda.is_bf16_supported())})


def noise(out: Path, args) -> None:
    """Words bit for bit and normals to rounding, CPU against the device, for a few keys."""
    from certframe.core import philox
    from certframe.core.sampler import gaussian_noise
    from certframe.interfaces import NoiseKey

    device = torch.device(args.device)
    if device.type == "cpu":
        write(out, "noise.json", {"status": "not measured", "why": "no CUDA device: nothing to compare the CPU with"})
        return
    keys = [(0, "lung-test-0000", "estimation"), (7, "img", "selection"), (2 ** 64 - 1, "a b/c", "estimation")]
    words_equal, max_diff = [], 0.0
    for seed, image_id, phase in keys:
        key = philox.stream_key(seed, image_id, phase)
        for start in (0, 12345, 2 ** 40 + 7):
            words_equal.append(bool(torch.equal(philox.words(key, start, 4, 4099),
                                                philox.words(key, start, 4, 4099, device=device).cpu())))
        a = gaussian_noise((3, 128, 128), 1.0, key=NoiseKey(seed, image_id), phase=phase, start=3, count=16,
                           device="cpu")
        b = gaussian_noise((3, 128, 128), 1.0, key=NoiseKey(seed, image_id), phase=phase, start=3, count=16,
                           device=device)
        max_diff = max(max_diff, float((a - b.cpu()).abs().max()))
    write(out, "noise.json", {"status": "measured", "keys": len(keys), "word_blocks_compared": len(words_equal),
                              "words_equal": all(words_equal), "normals_max_abs_diff": max_diff})


def torchrun(out: Path, args) -> None:
    """``torchrun --nproc-per-node 2`` on one device against one process: every column but ``seconds``."""
    import pandas as pd

    from certframe.run.folder import RunFolder

    size, count, n = (32, 2, 20) if args.quick else (128, 8, 100)
    base = [sys.executable, "-m", "certframe", "certify", "--dataset", "synthetic-lung", "--dataset-option",
            f"count={count}", "--dataset-option", f"size={size}", "--segmenter", "monai", "--segmenter-option",
            "weights=synthetic-lung-noise0.25", "--denoiser", "none", "--sigma", "0.25", "--n0", "10", "-n", str(n),
            "--alpha", "0.001", "--tau", "0.75", "--seed", "0", "--device", args.device, "--quiet"]
    envs = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        envs.pop(k, None)
    work = out / "torchrun-runs"
    # both at once (their start-up, importing torch, is most of the time); each has its own folder
    procs = [subprocess.Popen(command, env=envs, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for command in (base + ["--output", str(work / "one"), "--overwrite"],
                             [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                              *base[1:], "--output", str(work / "two"), "--overwrite"])]
    outputs = [p.communicate() for p in procs]
    one, two = (subprocess.CompletedProcess(p.args, p.returncode, out, err) for p, (out, err) in zip(procs, outputs))
    record = {"status": "measured", "device": args.device, "images": count, "size": size, "n": n,
              "rc_one": one.returncode, "rc_two": two.returncode}
    if one.returncode or two.returncode:
        record.update(status="failed", stderr=(one.stderr + two.stderr)[-3000:])
    else:
        a, b = RunFolder(work / "one").results(), RunFolder(work / "two").results()
        cols = [c for c in a.columns if c != "seconds"]
        same = a[cols].reset_index(drop=True).equals(b[cols].reset_index(drop=True))
        certs = all(all((RunFolder(work / "one").certificate(i)[k] == RunFolder(work / "two").certificate(i)[k]).all()
                        for k in RunFolder(work / "one").certificate(i)) for i in range(count))
        record.update(rows=len(a), results_equal=bool(same), certificates_equal=bool(certs),
                      world_size=RunFolder(work / "two").manifest()["execution"].get("world_size"))
        if not same:
            diff = pd.concat([a[cols], b[cols]]).drop_duplicates(keep=False)
            record["differing_rows"] = diff.head(6).to_dict("records")
    write(out, "torchrun.json", record)


def _pytest_line(out: Path) -> str:
    path = out / "pytest.txt"
    if not path.exists():
        return "not run"
    lines = [ln for ln in path.read_text().splitlines() if re.search(r"\d+ (passed|failed|error)", ln)]
    return lines[-1].strip("= ") if lines else "no closing line (see pytest.txt)"


def _load(out: Path, name: str):
    try:
        return json.loads((out / name).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def summary(out: Path, args) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console(width=140)
    e = _load(out, "env.json") or {}
    console.print(f"[bold]certframe GPU check[/] on {e.get('device', '?')} (torch {e.get('torch', '?')}, "
                  f"CUDA {e.get('cuda')}, {e.get('cpu_cores', '?')} CPU cores), noise stream {e.get('noise_stream')}")
    steps = (out / "steps.txt").read_text().splitlines() if (out / "steps.txt").exists() else []
    console.print("steps: " + "; ".join(steps))
    console.print(f"pytest: {_pytest_line(out)}")
    rows = _load(out, "certify.json")
    t = Table(title="certify: ms per image, overhead = certify / forward floor", box=box.SIMPLE)
    for col in ("denoiser", "size", "n", "batch", "precision", "floor", "certify", "overhead", "paper",
                "speed-up", "fp32 = auto", "cert. Dice"):
        t.add_column(col, justify="right")
    for r in rows or []:
        def f(v, fmt):
            return "-" if v is None else fmt.format(v)
        agreement = r["agreement_fp32_vs_auto"]
        t.add_row(r["denoiser"], str(r["size"]), str(r["n"]), str(r["batch"]), r["precision"],
                  f(r["floor_ms"], "{:.1f}"), f(r["certify_ms"], "{:.1f}"), f(r["overhead"], "{:.2f}"),
                  f(r["paper_ms"], "{:.1f}"), f(r["speedup_vs_paper"], "{:.1f}x"),
                  "not measured" if agreement is None else f"{100 * agreement:.3f}%",
                  f(r["certified_dice"], "{:.4f}"))
    console.print(t if rows else "certify: not run (see certify.txt)")
    train = _load(out, "training.json")
    if train:
        t = Table(title="training", box=box.SIMPLE)
        for col in ("trainer", "device", "precision", "steps/s", "CPU s per wall s", "steps"):
            t.add_column(col, justify="right")
        for r in train if isinstance(train, list) else train.get("rows", []):
            t.add_row(str(r.get("trainer")), str(r.get("device")), str(r.get("precision")),
                      f"{r.get('steps_per_second', float('nan')):.2f}", f"{r.get('cpu_per_wall', float('nan')):.2f}",
                      str(r.get("steps")))
        console.print(t)
    else:
        console.print("training: not run (see training.txt)")
    nz = _load(out, "noise.json") or {"status": "not run"}
    console.print("noise CPU vs device: " + (
        f"words equal: {nz['words_equal']} ({nz['word_blocks_compared']} draws compared); normals max |diff| "
        f"{nz['normals_max_abs_diff']:.2e}" if nz.get("status") == "measured"
        else f"{nz['status']} {nz.get('why', '')}"))
    tr = _load(out, "torchrun.json") or {"status": "not run"}
    console.print("torchrun 2 processes vs 1: " + (
        f"results equal: {tr['results_equal']}, certificates equal: {tr['certificates_equal']} "
        f"({tr['rows']} rows, world size {tr['world_size']}, {tr['device']})" if tr.get("status") == "measured"
        else f"{tr['status']} (see torchrun.json)"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("env", "noise", "torchrun", "summary"))
    parser.add_argument("out", type=Path)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    {"env": env, "noise": noise, "torchrun": torchrun, "summary": summary}[args.what](args.out, args)


if __name__ == "__main__":
    main()
