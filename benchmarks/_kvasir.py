"""What the Kvasir-SEG benchmarks share: the report they print and write, the seeded splits, and (re-exported)
the paired bootstrap CI of :mod:`certframe.study.bootstrap`.

Imported by the scripts in this folder (``python benchmarks/NAME.py`` puts it on ``sys.path``).
"""
from __future__ import annotations

import sys
from pathlib import Path

from certframe.study.bootstrap import paired_bootstrap_ci  # noqa: F401  (the library's; imported from here)

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
