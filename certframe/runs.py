"""Run folders: a manifest, results written as they are produced, a summary.

Layout of a run folder::

    manifest.json   resolved configuration (plugins and options, sigma, n0, n, alpha,
                    taus, seed, device, package versions, data set identity)
    results.csv     one row per (image, tau), appended image by image
    summary.json    means over images per (method, sigma, tau), written at the end

An interrupted run continues with ``resume=True``: images already in results.csv
are skipped, so the final results equal those of an uninterrupted run (every
noise draw is fixed by the seed and the image id).
"""
from __future__ import annotations

import csv
import json
import platform
from importlib import metadata
from pathlib import Path

import pandas as pd

MANIFEST, RESULTS, SUMMARY = "manifest.json", "results.csv", "summary.json"
_VERSIONED = ("certframe", "torch", "numpy", "scipy", "monai", "diffusers", "torchattacks", "pandas")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


class RunFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def start(self, config: dict, *, resume: bool = False, overwrite: bool = False) -> set[str]:
        """Create the folder and write the manifest; return image ids already done.

        A folder that already holds results needs ``resume`` (same configuration)
        or ``overwrite``; otherwise it is an error, so nothing computed is lost.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        manifest = self.path / MANIFEST
        results = self.path / RESULTS
        if results.exists() and not (resume or overwrite):
            raise FileExistsError(f"{self.path} already holds results; pass --resume to continue that run "
                                  f"or --overwrite to start again")
        if resume and manifest.exists():
            old = json.loads(manifest.read_text()).get("config")
            if old != config:
                diff = sorted(k for k in set(old or {}) | set(config) if (old or {}).get(k) != config.get(k))
                raise ValueError(f"cannot resume {self.path}: its configuration differs in {diff}")
        if overwrite:
            for name in (RESULTS, SUMMARY):
                (self.path / name).unlink(missing_ok=True)
        manifest.write_text(json.dumps({"config": config, "versions": package_versions()}, indent=2) + "\n")
        return self.done_ids(len(config.get("taus", [0]))) if resume else set()

    def done_ids(self, rows_per_image: int = 1) -> set[str]:
        results = self.path / RESULTS
        if not results.exists() or results.stat().st_size == 0:
            return set()
        df = pd.read_csv(results, dtype={"image_id": str})
        counts = df.groupby("image_id").size()
        return set(counts[counts >= rows_per_image].index)

    def append(self, rows: list[dict]) -> None:
        """Append the rows of one image; the file is flushed so a kill loses at most that image."""
        if not rows:
            return
        results = self.path / RESULTS
        new = not results.exists() or results.stat().st_size == 0
        if not new:
            with results.open() as f:
                header = next(csv.reader(f))
            if list(rows[0]) != header:
                raise ValueError(f"{results} has columns {header}, new rows have {list(rows[0])}")
        with results.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            if new:
                writer.writeheader()
            writer.writerows(rows)
            f.flush()

    def results(self) -> pd.DataFrame:
        return pd.read_csv(self.path / RESULTS, dtype={"image_id": str})

    def write_summary(self) -> pd.DataFrame:
        df = self.results()
        keys = ["segmenter", "denoiser", "certifier", "sigma", "tau", "radius"]
        values = [c for c in df.columns if c.endswith("dice") or c.startswith("certified_dice")
                  or c in ("abstain_rate", "certified_accuracy", "seconds")]
        summary = df.groupby(keys, dropna=False)[sorted(set(values))].mean().reset_index()
        summary["images"] = df.groupby(keys, dropna=False).size().values
        (self.path / SUMMARY).write_text(summary.to_json(orient="records", indent=2) + "\n")
        return summary
