"""Sharded certification over processes: environment parsing, sharding, 2 gloo processes == 1 process."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from certframe.cli import main
from certframe.run.distributed import DistEnv, dist_env, rank_device, rank_folder, shard
from certframe.run.folder import RunFolder
from certframe.run.layout import RunError
from certframe.run.tables import compare_results


def test_environment_of_torchrun_and_slurm():
    assert dist_env({}) == DistEnv(0, 1, 0, "single")
    assert dist_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == DistEnv(3, 4, 1, "torchrun")
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1"}
    assert dist_env(slurm) == DistEnv(5, 8, 1, "slurm")
    # torchrun inside a SLURM allocation: torchrun's variables win
    assert dist_env({**slurm, "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}).launcher == "torchrun"
    with pytest.raises(ValueError, match="inconsistent torchrun environment: RANK=4, WORLD_SIZE=4"):
        dist_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(ValueError, match="must be integers"):
        dist_env({"SLURM_PROCID": "x", "SLURM_NTASKS": "2"})
    assert not dist_env({"RANK": "0", "WORLD_SIZE": "1"}).distributed


def test_shards_cover_every_image_once():
    parts = [shard(range(11), r, 3) for r in range(3)]
    assert parts == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]
    assert sorted(sum(parts, [])) == list(range(11))
    assert shard([5], 1, 2) == []
    assert str(rank_folder("runs/x", 2)).endswith(os.path.join("runs", "x", "ranks", "rank2"))
    # auto: CUDA where present (GPU LOCAL_RANK mod the GPUs), else the CPU; either way gloo
    on_cuda = f"cuda:{1 % max(torch.cuda.device_count(), 1)}"
    assert rank_device("auto", DistEnv(1, 2, 1)) == (on_cuda if torch.cuda.is_available() else "cpu")
    assert rank_device("cpu", DistEnv(1, 2, 1)) == "cpu"


def test_rank_device_spreads_ranks_over_the_gpus(monkeypatch):
    """The CUDA branch of rank_device, checked on any machine: torch.device("cuda:N") is only a name."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [rank_device("auto", DistEnv(r, 4, r)) for r in range(4)] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert rank_device("cuda", DistEnv(3, 4, 3)) == "cuda:1"
    assert rank_device("cuda:0", DistEnv(3, 4, 3)) == "cuda:0"      # an explicit index stays
    assert rank_device("cpu", DistEnv(3, 4, 3)) == "cpu"


def test_one_process_runs_unsharded(tmp_path, monkeypatch):
    """Without a launcher (or with world size 1) the sharded entry point is run_certify itself."""
    import certframe.run.certify as certify_module
    from certframe.run import RunSpec, run_certify_sharded

    calls = []
    monkeypatch.setattr(certify_module, "run_certify", lambda spec, output, **kw: calls.append(output) or "s")
    spec = RunSpec(segmenter_options={"weights": "synthetic-lung"})
    for env in ({}, {"RANK": "0", "WORLD_SIZE": "1"}):
        assert run_certify_sharded(spec, tmp_path / "x", environ=env) == ("s", 1)
    assert calls == [tmp_path / "x"] * 2


ARGS = ["certify", "--dataset", "synthetic-lung", "--dataset-option", "count=5", "--dataset-option", "size=32",
        "--segmenter-option", "weights=synthetic-lung", "--certifier", "adaptive",
        "--certifier-option", "min_look=8", "--n0", "4", "-n", "32", "--tau", "0.75", "--tau", "0.9",
        "--alpha", "0.01", "--batch-size", "12", "--seed", "7", "--device", "cpu", "--quiet"]


def test_two_gloo_processes_give_the_results_of_one(tmp_path, one_thread):
    """The in-process run uses one torch thread like the two ranks (OMP_NUM_THREADS=1), whatever this machine's
    core count: the certificates are compared bit for bit (see conftest.one_thread)."""
    single, sharded_out = tmp_path / "single", tmp_path / "sharded"
    result = CliRunner().invoke(main, ARGS + ["--output", str(single)])
    assert result.exit_code == 0, result.output
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        env.pop(k, None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "certframe", *ARGS, "--output", str(sharded_out)],
                          env=env, capture_output=True, text=True, timeout=600)  # a hang guard
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    a, b = RunFolder(single), RunFolder(sharded_out)
    assert b.manifest()["status"] == "complete"
    assert b.manifest()["execution"]["world_size"] == 2
    df = b.results()
    assert len(df) == 10 and sorted(df["index"].unique()) == [0, 1, 2, 3, 4]
    compare_results(a.results(), df)                     # every column but `seconds`
    for part, indices in ((0, [0, 2, 4]), (1, [1, 3])):
        part_df = RunFolder(rank_folder(sharded_out, part)).results(require_complete=False)
        assert sorted(part_df["index"].unique()) == indices
    for i in range(5):
        ca, cb = a.certificate(i), b.certificate(i)
        assert all(np.array_equal(ca[k], cb[k]) for k in ca)
    assert (a.path / "summary.json").read_text() != "" and (b.path / "summary.json").exists()


def test_merge_refuses_incomplete_parts(tmp_path):
    from certframe.run.distributed import merge_runs

    result = CliRunner().invoke(main, ARGS[:-1] + ["--limit", "2", "--output", str(rank_folder(tmp_path, 0))])
    assert result.exit_code == 0, result.output
    with pytest.raises(RunError, match=r"image indices \[2, 3\] missing"):
        merge_runs(tmp_path, 1, range(4))
