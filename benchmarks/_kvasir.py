"""What the Kvasir-SEG benchmarks share: the report they print and write, the seeded splits and the paired bootstrap CI.

Imported by the scripts in this folder (``python benchmarks/NAME.py`` puts it on ``sys.path``).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


class Report:
    """Lines printed as they come and written to a results file, the command line first."""

    def __init__(self, script: str, argv=None):
        args = argv if argv is not None else sys.argv[1:]
        self.lines = [f"command: python benchmarks/{script} {' '.join(args)}".rstrip()]

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(self.lines) + "\n")


def kvasir_splits(registry, root: Path, size: int, seed: int, out: Path) -> dict:
    """The seeded train / val / test splits at ``size``; makes ``out`` (git-ignored under benchmarks/out)."""
    out.mkdir(parents=True, exist_ok=True)
    if out.is_relative_to(HERE / "out"):  # keep checkpoints out of git
        (HERE / "out" / ".gitignore").write_text("*\n")
    return {s: registry.create("dataset", "kvasir-seg", root=str(root), size=size, split=s, seed=seed)
            for s in ("train", "val", "test")}


def paired_bootstrap_ci(a, b, *, n_boot: int = 10_000, level: float = 0.95,
                        seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``a - b`` over images and its percentile bootstrap CI, resampling IMAGES (pairs kept together).

    a, b: per-image scores of two methods on the same images (equal length >= 1).
    Returns ``(mean difference, lower, upper)``.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"need two equal-length 1-D score lists, got shapes {a.shape} and {b.shape}")
    d = a - b
    idx = np.random.default_rng(seed).integers(0, len(d), size=(n_boot, len(d)))
    means = d[idx].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(d.mean()), float(lo), float(hi)
