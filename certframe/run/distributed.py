"""Certify a data set over many processes, GPUs and nodes (torch.distributed).

``torchrun --nproc-per-node N -m certframe certify ...`` (one node or several, with
``--nnodes``/``--rdzv-endpoint``) or ``srun python -m certframe certify ...`` under
SLURM (see ``examples/slurm/certify.sbatch``) starts one process per GPU (or CPU
worker). Each process:

1. reads its rank from the environment (:func:`dist_env`: torchrun's ``RANK``,
   ``WORLD_SIZE``, ``LOCAL_RANK``; else SLURM's ``SLURM_PROCID``, ``SLURM_NTASKS``,
   ``SLURM_LOCALID``); with one process nothing below happens;
2. joins the process group (``gloo`` on every device: the group only holds a barrier, no
   tensor crosses it, and gloo lets several ranks share one GPU where NCCL refuses; the
   rendezvous address is ``MASTER_ADDR``/``MASTER_PORT``, which torchrun sets and a SLURM
   script exports), and uses GPU ``LOCAL_RANK mod (GPUs on the node)``: one GPU each when
   there are enough, else ranks share them (``torchrun --nproc-per-node 2`` on one GPU);
3. certifies its shard of the images, ``indices[rank::world_size]``, into its own run
   folder ``OUTPUT/ranks/rank{r}/`` (a normal run folder: it resumes on its own);
4. waits at a barrier; rank 0 then merges the parts into ``OUTPUT`` (manifest,
   ``results.csv`` sorted by (index, tau), Parquet, ``summary.json``, certificates).

Every noise draw is fixed by (seed, image id, phase, draw index), never by the
process or batch, so the merged results equal those of a single-process run with the
same seed in every column but the wall-time one (``seconds``) (on the same device type
and precision). The shards must see the same files (a shared file system).
"""
from __future__ import annotations

import atexit
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd
import torch

from certframe.run.folder import RunFolder
from certframe.run.layout import CERTIFICATES, RunError

log = logging.getLogger("certframe.run.distributed")

RANKS_DIR = "ranks"


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: ``rank`` in ``0..world_size-1``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launcher: str = "single"

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def dist_env(environ: Mapping[str, str] | None = None) -> DistEnv:
    """Rank, world size and local rank from torchrun's or SLURM's variables (torchrun's win)."""
    env = os.environ if environ is None else environ
    for keys, launcher in ((("RANK", "WORLD_SIZE", "LOCAL_RANK"), "torchrun"),
                           (("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"), "slurm")):
        if keys[0] in env and keys[1] in env:
            try:
                rank, world = int(env[keys[0]]), int(env[keys[1]])
                local = int(env.get(keys[2], rank))
            except ValueError as err:
                raise ValueError(f"{'/'.join(keys)} must be integers, got "
                                 f"{[env.get(k) for k in keys]}") from err
            if not (world >= 1 and 0 <= rank < world and local >= 0):
                raise ValueError(f"inconsistent {launcher} environment: {keys[0]}={rank}, "
                                 f"{keys[1]}={world}, {keys[2]}={local}")
            return DistEnv(rank, world, local, launcher)
    return DistEnv()


def shard(indices: Sequence[int], rank: int, world_size: int) -> list[int]:
    """Round-robin shard ``indices[rank::world_size]`` (balanced when image cost varies slowly)."""
    return list(indices)[rank::world_size]


def rank_folder(output: str | Path, rank: int) -> Path:
    return Path(output) / RANKS_DIR / f"rank{rank}"


def rank_device(device: str, env: DistEnv) -> str:
    """``auto``/``cuda`` become ``cuda:(LOCAL_RANK mod GPUs)`` when CUDA is used; other devices stay."""
    from certframe.run.build import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None:
        return f"cuda:{env.local_rank % max(torch.cuda.device_count(), 1)}"
    return str(dev)


def init_process_group(env: DistEnv, device: str) -> str | None:
    """Join the default process group (once), ``gloo`` (see the module docstring).

    Returns the backend, or None with one process. ``MASTER_ADDR``/``MASTER_PORT`` must be
    set (torchrun does; under SLURM the batch script exports them).
    """
    import torch.distributed as dist

    if not env.distributed:
        return None
    if dist.is_initialized():
        return dist.get_backend()
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"{env.launcher} says world size {env.world_size} but {', '.join(missing)} "
                           f"is not set: export the address and a free port of the rank-0 node "
                           f"(see examples/slurm/certify.sbatch)")
    backend = "gloo"        # a barrier only; NCCL would refuse two ranks on one GPU
    if torch.device(device).type == "cuda":
        torch.cuda.set_device(torch.device(device))
    os.environ.setdefault("RANK", str(env.rank))
    os.environ.setdefault("WORLD_SIZE", str(env.world_size))
    os.environ.setdefault("LOCAL_RANK", str(env.local_rank))
    dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size)
    atexit.register(_destroy)
    log.info("rank %d of %d joined the %s process group", env.rank, env.world_size, backend)
    return backend


def _destroy():
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def merge_runs(output: str | Path, world_size: int, expected: Sequence[int], *,
               overwrite: bool = True) -> pd.DataFrame:
    """Merge ``OUTPUT/ranks/rank*/`` into the run folder ``OUTPUT``; return its summary.

    Checks that every image index of ``expected`` is present exactly once across the
    parts. The merged manifest is rank 0's, with ``execution.world_size`` and
    ``execution.ranks``. Certificates are hard-linked (copied where links fail).
    """
    output = Path(output)
    parts = [RunFolder(rank_folder(output, r)) for r in range(world_size)]
    frames = [p.results(require_complete=False) for p in parts if p.results_path.exists()]  # a shard may be empty
    df = pd.concat([f for f in frames if len(f)], ignore_index=True) if any(len(f) for f in frames) \
        else frames[0]
    seen = df["index"].astype(int)
    dup = sorted(set(seen[df.duplicated(["index", "tau"])]))       # one row per (image, tau)
    missing = sorted(set(int(i) for i in expected) - set(seen))
    if dup or missing:
        raise RunError(f"cannot merge the {world_size} parts in {output / RANKS_DIR}: image indices "
                       f"{missing[:5]} missing, {dup[:5]} certified twice (expected each of "
                       f"{len(expected)} images once)")
    manifest = parts[0].manifest()
    manifest["execution"] = {**manifest.get("execution", {}), "world_size": world_size,
                             "ranks": [str(p.path.relative_to(output)) for p in parts]}
    merged = RunFolder(output)
    merged.start({k: v for k, v in manifest.items() if k not in ("status", "finished", "resumed")},
                 overwrite=overwrite)
    df = df.sort_values(["index", "tau"], kind="stable")
    merged.results_path.write_text(df.to_csv(index=False, lineterminator="\n"))
    for part in parts:
        src = part.path / CERTIFICATES
        if src.is_dir():
            (output / CERTIFICATES).mkdir(exist_ok=True)
            for f in src.glob("*.npz"):
                dst = output / CERTIFICATES / f.name
                dst.unlink(missing_ok=True)
                try:
                    os.link(f, dst)
                except OSError:
                    shutil.copy2(f, dst)
    return merged.finish()


__all__ = ["DistEnv", "dist_env", "shard", "rank_folder", "init_process_group", "merge_runs",
           "barrier"]
