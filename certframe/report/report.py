"""Compare run folders: load them, check them, and build the comparison table.

The table has one row per (data set, method, certifier, sigma, tau) with, over the
images of that run: ``certified_dice`` (mean) and ``certified_dice_std``
(population std, ddof=0), ``abstain_rate`` (mean fraction of abstained pixels),
``clean_dice`` (mean Dice of the base segmenter on clean images) and its std,
``seconds_per_image`` (mean wall time to certify one image at all taus), the
``radius`` sigma * Phi^-1(tau), the number of ``images`` and the ``run`` folder. When a run's
certifier is hierarchical (its rows hold ``cig``), the table gains ``cig`` (mean certified
information gain; :mod:`certframe.core.hierarchy_metrics`), empty for the other runs; its
``abstain_rate`` counts the pixels certified at no level and ``certified_dice`` is the fine level's.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from certframe.run.folder import MANIFEST, RunError, RunFolder

TABLE_COLUMNS = ["dataset", "method", "certifier", "sigma", "tau", "radius", "images", "certified_dice",
                 "certified_dice_std", "abstain_rate", "clean_dice", "clean_dice_std", "seconds_per_image",
                 "run"]
OPTIONAL_COLUMNS = ["cig"]
"""Columns added after :data:`TABLE_COLUMNS` when some run has them."""


@dataclass
class Run:
    """A loaded, checked run folder."""

    folder: RunFolder
    manifest: dict
    results: pd.DataFrame
    method: str

    @property
    def path(self) -> Path:
        return self.folder.path

    @property
    def config(self) -> dict:
        return self.manifest["config"]

    @property
    def dataset(self) -> str:
        return str(self.config.get("dataset", "?"))

    @property
    def class_names(self) -> list[str]:
        """Class names from the manifest (runs made before they were recorded: binary)."""
        return list(self.manifest.get("classes") or ["background", "foreground"])


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run folders named by ``paths``: a run folder itself, or a folder whose sub-folders
    (any depth) hold run folders. A path that is neither is an error."""
    out: list[Path] = []
    for p in map(Path, paths):
        if (p / MANIFEST).exists() or not p.is_dir():
            out.append(p)  # RunFolder.manifest() reports a missing folder clearly
            continue
        found = sorted(m.parent for m in p.rglob(MANIFEST))
        # a run folder's own sub-runs (e.g. the per-rank parts of a distributed run) are not runs
        found = [f for f in found if not any((a / MANIFEST).exists() for a in f.parents if p in a.parents or a == p)]
        if not found:
            raise RunError(f"{p} is not a certframe run folder ({MANIFEST} is missing) and holds none")
        out.extend(found)
    return out


def load_runs(paths: Sequence[str | Path], *, allow_incomplete: bool = False) -> list[Run]:
    """Load and check every run (see :meth:`RunFolder.results`); name each run's method.

    The method is the run's label (``--label`` or the [[runs]] name of an experiment
    file); two runs whose (data set, method, certifier, sigma) coincide get their
    folder name appended so no row of the table hides another.
    """
    runs = []
    for path in find_runs(paths):
        folder = RunFolder(path)
        manifest = folder.manifest()
        results = folder.results(require_complete=not allow_incomplete)
        if results.empty:
            raise RunError(f"{path}: results.csv holds no rows")
        label = manifest.get("label") or str(results["segmenter"].iloc[0])
        runs.append(Run(folder, manifest, results, label))
    keys = {}
    for run in runs:
        key = (run.dataset, run.method, tuple(run.results["certifier"].unique()),
               tuple(sorted(run.results["sigma"].unique())))
        keys.setdefault(key, []).append(run)
    for same in keys.values():
        if len(same) > 1:
            for run in same:
                run.method = f"{run.method} ({run.path.name})"
    return runs


def comparison_table(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per (data set, method, certifier, sigma, tau); see the module docstring."""
    frames = []
    for run in runs:
        df = run.results
        g = df.groupby(["certifier", "sigma", "tau"], sort=True)
        t = pd.DataFrame({
            "radius": g["radius"].first(),
            "images": g["image_id"].nunique(),
            "certified_dice": g["certified_dice"].mean(),
            "certified_dice_std": g["certified_dice"].std(ddof=0),
            "abstain_rate": g["abstain_rate"].mean(),
            "clean_dice": g["clean_dice"].mean(),
            "clean_dice_std": g["clean_dice"].std(ddof=0),
            "seconds_per_image": g["seconds"].mean(),
        }).reset_index()
        if "cig" in df.columns:
            t["cig"] = g["cig"].mean().to_numpy()
        t.insert(0, "method", run.method)
        t.insert(0, "dataset", run.dataset)
        t["run"] = str(run.path)
        frames.append(t)
    table = pd.concat(frames, ignore_index=True)
    table = table[TABLE_COLUMNS + [c for c in OPTIONAL_COLUMNS if c in table.columns]]
    return table.sort_values(["dataset", "method", "certifier", "sigma", "tau"], kind="stable",
                             ignore_index=True)


def runs_table(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per run: where it is and how it was made (for the HTML report)."""
    rows = []
    for run in runs:
        m, c = run.manifest, run.config
        plugins = m.get("plugins", {})
        rows.append({
            "run": str(run.path), "method": run.method, "dataset": run.dataset,
            "segmenter": _plugin(plugins.get("segmenter"), c.get("segmenter")),
            "denoiser": _plugin(plugins.get("denoiser"), c.get("denoiser")),
            "certifier": _plugin(plugins.get("certifier"), c.get("certifier")),
            "sigma": c.get("sigma"), "n0": c.get("n0"), "n": c.get("n"), "alpha": c.get("alpha"),
            "taus": ", ".join(f"{t:g}" for t in c.get("taus", [])), "seed": c.get("seed"),
            "device": m.get("device"), "images": int(run.results["index"].nunique()),
            "data set sha256": str(m.get("dataset", {}).get("sha256", ""))[:12],
            "status": m.get("status"), "finished": m.get("finished"),
        })
    return pd.DataFrame(rows)


def _plugin(entry: dict | None, name) -> str:
    if not entry:
        return str(name)
    opts = ", ".join(f"{k}={v}" for k, v in entry.get("options", {}).items() if v not in (None, {}, []))
    return f"{entry['name']} {entry.get('version', '')}".strip() + (f" ({opts})" if opts else "")
