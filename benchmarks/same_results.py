"""Compare two folders written by benchmarks/same_results.sh: every number must be identical.

    python benchmarks/same_results.py OLD NEW

Compared exactly: every CSV (results.csv, report.csv; wall-time columns dropped), every JSON's
numbers and strings (summaries, quality, training records; times, dates, versions, paths and
commits dropped), every .npz certificate array and every .safetensors tensor. Figures, logs and
HTML are not compared (they hold times). Prints one line per file and exits 1 on any difference;
a file present on one side only is a difference.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

IGNORED_KEYS = {"seconds", "started", "finished", "created", "time", "elapsed", "elapsed_seconds", "versions",
                "package_versions", "host", "hostname", "commit", "git", "output", "path", "wall_seconds",
                "cpu_seconds", "date", "cuda", "torch", "python", "platform", "written", "updated",
                "last_saved", "command", "argv", "source", "folder", "weights", "sha256", "hash"}
TIME_COLUMNS = {"seconds", "wall_seconds", "cpu_seconds", "time", "seconds_per_image"}  # the report's mean wall time


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items()
                if k not in IGNORED_KEYS and k not in TIME_COLUMNS and not k.endswith("_seconds")}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    if isinstance(value, str) and ("/tmp/" in value or value.startswith("/")):
        return "<path>"
    return value


def compare(a: Path, b: Path) -> str | None:
    """None when the two files agree, else what differs."""
    if a.suffix == ".csv":
        x, y = pd.read_csv(a), pd.read_csv(b)
        drop = [c for c in x.columns if c in TIME_COLUMNS or c.endswith("_seconds")]
        x, y = (d.drop(columns=drop, errors="ignore").map(_strip) for d in (x, y))   # paths as <path>, as in JSON
        if list(x.columns) != list(y.columns):
            return f"columns {list(x.columns)} != {list(y.columns)}"
        try:
            pd.testing.assert_frame_equal(x, y, check_exact=True)
        except AssertionError as err:
            return str(err).splitlines()[0]
        return None
    if a.suffix == ".json":
        x, y = _strip(json.loads(a.read_text())), _strip(json.loads(b.read_text()))
        return None if x == y else "JSON differs"
    if a.suffix == ".npz":
        with np.load(a) as x, np.load(b) as y:
            if sorted(x.files) != sorted(y.files):
                return f"members {sorted(x.files)} != {sorted(y.files)}"
            bad = [k for k in x.files if not np.array_equal(x[k], y[k])]
        return f"arrays differ: {bad}" if bad else None
    if a.suffix == ".safetensors":
        from safetensors.numpy import load_file
        x, y = load_file(a), load_file(b)
        if sorted(x) != sorted(y):
            return "tensor names differ"
        bad = [k for k in x if not np.array_equal(x[k], y[k])]
        return f"tensors differ: {bad[:5]}" if bad else None
    return None


def main(old: str, new: str) -> int:
    old_root, new_root = Path(old), Path(new)
    kinds = (".csv", ".json", ".npz", ".safetensors")
    files = sorted({p.relative_to(old_root) for p in old_root.rglob("*") if p.suffix in kinds}
                   | {p.relative_to(new_root) for p in new_root.rglob("*") if p.suffix in kinds})
    failures = 0
    for rel in files:
        a, b = old_root / rel, new_root / rel
        if not (a.exists() and b.exists()):
            problem = f"only in {'old' if a.exists() else 'new'}"
        else:
            problem = compare(a, b)
        failures += problem is not None
        print(f"{'DIFFERS' if problem else 'same':8s} {rel}" + (f": {problem}" if problem else ""))
    print(f"{len(files)} files compared, {failures} differ")
    return 1 if failures or not files else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
