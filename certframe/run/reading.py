"""A run folder read back: its manifest, its results checked line by line, its certificates.

:class:`RunFolderReader` is the reading half of :class:`certframe.run.folder.RunFolder` (the
layout is described there): what ``certframe report``, a study or a resumed run reads. A results
table is checked as it is read: the required columns, whole lines, one row per tau (or per job
and tau) for every image, the rows of an image together. A partially written trailing image is
reported, and :meth:`RunFolderReader.repair` drops it so that a resumed run certifies it again.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from certframe.run.layout import CERTIFICATES, MANIFEST, REQUIRED_COLUMNS, RESULTS, RunError


class RunFolderReader:
    """One run folder on disk, read (see :mod:`certframe.run.folder` for its layout)."""

    def __init__(self, path: str | Path, required_columns: Sequence[str] = REQUIRED_COLUMNS):
        """required_columns: columns a results table must have (other commands, e.g. attack
        runs, pass their own)."""
        self.path = Path(path)
        self.required_columns = list(dict.fromkeys(["image_id", "index", *required_columns]))

    # -- paths
    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def results_path(self) -> Path:
        return self.path / RESULTS

    def certificate_path(self, index: int) -> Path:
        return self.path / CERTIFICATES / f"{int(index):06d}.npz"

    # -- reading
    def manifest(self) -> dict:
        if not self.path.is_dir():
            raise RunError(f"{self.path} is not a run folder: no such directory")
        if not self.manifest_path.exists():
            raise RunError(f"{self.path} is not a certframe run folder: {MANIFEST} is missing "
                           f"(expected a folder written by `certframe certify`)")
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except json.JSONDecodeError as err:
            raise RunError(f"{self.manifest_path} is not valid JSON: {err}") from err
        if not isinstance(manifest, dict) or not isinstance(manifest.get("config"), dict):
            raise RunError(f"{self.manifest_path} has no 'config' object; it was not written by certframe")
        return manifest

    def header(self) -> list[str]:
        with self.results_path.open(newline="") as f:
            return next(csv.reader(f), [])

    def _scan(self, rows_per_image: int) -> tuple[pd.DataFrame, int, str | None]:
        """Parse results.csv; return (complete rows, byte offset where they end, problem or None)."""
        data = self.results_path.read_bytes()
        lines = data.split(b"\n")
        problem = None
        if lines and lines[-1] != b"":
            problem = f"its last line is cut off ({lines[-1][:40]!r}...)"
        lines = lines[:-1]  # the tail after the last newline: empty or partial
        if not lines:
            return pd.DataFrame(), 0, problem or "it is empty"
        header = next(csv.reader([lines[0].decode()]))
        missing = [c for c in self.required_columns if c not in header]
        if missing:
            raise RunError(f"{self.results_path} lacks the column(s) {missing}; expected at least "
                           f"{self.required_columns}, found {header}")
        offsets = np.cumsum([len(line) + 1 for line in lines])  # end of each line
        parsed = list(csv.reader([line.decode() for line in lines[1:]]))
        good = len(parsed)
        for i, fields in enumerate(parsed):
            if len(fields) != len(header):
                if i == len(parsed) - 1:
                    problem, good = f"line {i + 2} has {len(fields)} fields, the header {len(header)}", i
                    break
                raise RunError(f"{self.results_path} is corrupt: line {i + 2} has {len(fields)} fields, "
                               f"the header has {len(header)}")
        df = pd.read_csv(io.StringIO("\n".join(line.decode() for line in lines[:good + 1]) + "\n"),
                         dtype={"image_id": str})
        if len(df):
            # rows of one image are consecutive; a short group may only be the last one
            groups = (df["index"] != df["index"].shift()).cumsum()
            sizes = df.groupby(groups, sort=False).size()
            if len(sizes) != df["index"].nunique():
                dup = df["index"][df["index"].duplicated()].iloc[0]
                raise RunError(f"{self.results_path} is corrupt: the rows of image index {int(dup)} "
                               f"appear in two places")
            short = sizes[sizes != rows_per_image]
            if len(short):
                first = short.index[0]
                if first != sizes.index[-1] or sizes.iloc[-1] > rows_per_image:
                    idx = df.loc[groups == first, "index"].iloc[0]
                    raise RunError(f"{self.results_path} is corrupt: image index {idx} has "
                                   f"{int(short.iloc[0])} rows, expected {rows_per_image} (one per tau)")
                keep = int((groups != first).sum())
                problem = problem or (f"its last image (index {int(df['index'].iloc[-1])}) has "
                                      f"{int(sizes.iloc[-1])} of {rows_per_image} rows")
                df, good = df.iloc[:keep], keep
        return df, int(offsets[good]), problem

    def repair(self, rows_per_image: int) -> dict[int, str]:
        """Drop a partially written trailing image; return ``{index: image id}`` of complete ones."""
        df, end, _ = self._scan(rows_per_image)
        if end < self.results_path.stat().st_size:
            with self.results_path.open("r+b") as f:
                f.truncate(end)
                f.flush()
                os.fsync(f.fileno())
        if not len(df):
            return {}
        return dict(zip(df["index"].astype(int), df["image_id"]))

    def results(self, *, require_complete: bool = True) -> pd.DataFrame:
        """The results table, checked: columns, whole lines, one row per tau for every image.

        require_complete: the manifest must say the run finished (else: how to resume it).
        """
        manifest = self.manifest()
        if not self.results_path.exists():
            raise RunError(f"{self.path} holds no {RESULTS}: the run has not certified any image yet")
        rows_per_image = manifest.get("rows_per_image") or len(manifest["config"].get("taus") or [0])
        df, _, problem = self._scan(int(rows_per_image))
        if manifest.get("kind") == "attack":
            how = (f"`certframe attack --resume --output {self.path}` with the options of its "
                   f"{MANIFEST} (config)")
        else:
            how = f"`certframe certify --resume --from-manifest {self.manifest_path} --output {self.path}`"
        if problem is not None:
            raise RunError(f"{self.results_path} is truncated: {problem}; continue the run with {how}")
        if require_complete and manifest.get("status") != "complete":
            why = f": {manifest['error']}" if manifest.get("error") else ""
            raise RunError(f"{self.path} is incomplete (status {manifest.get('status')!r}{why}; "
                           f"{df['index'].nunique()} images done); continue it with {how}")
        return df

    def certificate(self, index: int) -> dict[str, np.ndarray]:
        path = self.certificate_path(index)
        if not path.exists():
            raise RunError(f"{path} is missing: the run was made with --no-certificates or the file was deleted")
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}


__all__ = ["RunFolderReader"]
