"""Run folders: a manifest, results written as they are produced, certificates, a summary.

Layout of a run folder::

    manifest.json        what was run: the configuration (``config``: plugin names and
                         the options given, sigma, n0, n, alpha, taus, seed, batch size,
                         device asked for, limit), every plugin with its resolved options
                         (defaults filled in), distribution and version, the data set's
                         identity (its ``identity()`` plus a SHA-256 of that JSON and the
                         item ids), the device used, package versions, the status
                         (``running`` / ``complete``) and the time stamps.
    results.csv          one row per (image, tau), appended image by image (fsync'ed, see
                         Resume); sorted by (index, tau) once the run is complete.
    results.parquet      the same table, written at the end where pyarrow is installed.
    summary.json         mean and std over images per (method, sigma, tau, radius).
    certificates/        one ``NNNNNN.npz`` per image (numpy, no pickle): ``labels``
                         int16 ``[T, H, W]`` (the certified class per tau, -1 = ABSTAIN),
                         ``taus`` ``[T]``, ``mask`` ``[H, W]``, ``clean`` ``[H, W]`` (the
                         base segmenter's prediction), ``image`` uint8 ``[C, H, W]``; a
                         hierarchical certifier's also ``levels`` and ``nodes`` int16
                         ``[T, H, W]`` (the certified level and node per pixel, -1 = abstain).

Resume: an interrupted run (Ctrl-C, ``kill -9``, power loss) continues with
``resume=True``. Rows of one image are written in one call and fsync'ed after its
certificate file is, so a row on disk means its image is complete; a partially
written trailing image (fewer rows than taus, or a cut-off line) is dropped and
certified again. ``certframe certify`` writes through a :class:`RunWriter`: a
background thread that writes the images in order while the next ones are
certified, and fsyncs results.csv once per group of images it finds waiting
(one image when the disk keeps up). Ctrl-C (or any error) first lets it write
every image already certified, so nothing computed is lost; a ``kill -9`` or a
power loss can lose the images still queued (at most ``depth``, 4, plus the group
being written), which are certified again on resume, as an image whose rows were
never written always is. Every noise draw is fixed by (seed, image id, draw
index), so the final results equal those of an uninterrupted run in every column
but the wall-time ones (``seconds``).

The run folder's parts, one module each: :mod:`certframe.run.layout` (file names, required
columns, :class:`RunError`), :mod:`certframe.run.records` (the manifest's values and what a
resumed run must share), :mod:`certframe.run.reading` (:class:`RunFolderReader`: the manifest,
the results checked, the certificates read back), this module (:class:`RunFolder`: the reader
plus the writing), :mod:`certframe.run.writer` (:class:`RunWriter`, the writer thread) and
:mod:`certframe.run.tables` (summary, comparison, Parquet). Every name they define that was
imported from here before is still importable from here.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from certframe.files import atomic_write
from certframe.run.layout import (
    CERTIFICATES,
    FORMAT,
    MANIFEST,
    REQUIRED_COLUMNS,
    RESULTS,
    RESULTS_PARQUET,
    SUMMARY,
    RunError,
)
from certframe.run.reading import RunFolderReader
from certframe.run.records import dataset_identity, jsonable, now, package_versions, provenance_diff, resume_conflicts
from certframe.run.tables import SUMMARY_KEYS, WALL_TIME_COLUMNS, compare_results, summarize, write_parquet
from certframe.run.writer import RunWriter

_HELD: dict[str, Any] = {}  # run folders this process holds the lock of -> open lock file

CERTIFICATE_COMPRESSION = 1
"""zlib level of the certificate files: level 1 writes a 256 x 256 certificate 2.3x faster than
numpy's ``savez_compressed`` (level 6) for files about 10% larger (``benchmarks/fixed_cost.py``)."""


def savez_compressed(file, **arrays: np.ndarray) -> None:
    """``numpy.savez_compressed`` at zlib level :data:`CERTIFICATE_COMPRESSION`: the same npz (a zip of
    ``.npy`` members, deflated), read back by ``numpy.load`` to the same arrays."""
    with zipfile.ZipFile(file, "w", compression=zipfile.ZIP_DEFLATED,
                         compresslevel=CERTIFICATE_COMPRESSION) as zf:
        for name, array in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


class RunFolder(RunFolderReader):
    """One run folder on disk (see the module docstring for its layout): read it
    (:class:`~certframe.run.reading.RunFolderReader`: ``RunFolder(path, required_columns)``) and write it."""

    # -- writing
    def start(self, manifest: dict, *, resume: bool = False, overwrite: bool = False,
              rows_per_image: int | None = None) -> dict[int, str]:
        """Create the folder, write ``manifest``; return ``{index: image id}`` of images done.

        rows_per_image: rows each image appends (default: one per tau of
        ``manifest["config"]["taus"]``); recorded in the manifest.

        ``manifest["config"]`` is what must match on resume (plus the data set's hash,
        ``manifest["dataset"]["sha256"]``, the precision and the inputs' content hashes:
        :func:`~certframe.run.records.resume_conflicts`). A folder that already holds results needs
        ``resume`` (same configuration) or ``overwrite``; otherwise it is an error,
        so nothing computed is lost.
        """
        if resume and overwrite:
            raise RunError("--resume and --overwrite exclude each other")
        self.path.mkdir(parents=True, exist_ok=True)
        self.lock()
        rows_per_image = int(rows_per_image or len(manifest["config"].get("taus") or [0]))
        manifest = {**manifest, "rows_per_image": rows_per_image}
        has_results = self.results_path.exists() and self.results_path.stat().st_size > 0
        if has_results and not (resume or overwrite):
            raise RunError(f"{self.path} already holds results; pass --resume to continue that run "
                           f"or --overwrite to start again")
        done: dict[int, str] = {}
        if resume and self.manifest_path.exists():
            old = self.manifest()
            diff = resume_conflicts(old, manifest)
            if diff:
                raise RunError(f"cannot resume {self.path}: its configuration differs: " + "; ".join(diff)
                               + " (use another --output, or --overwrite to start again)")
            manifest = {**manifest, "created": old.get("created", manifest.get("created")),
                        "resumed": old.get("resumed", 0) + 1}
            if has_results:
                done = self.repair(rows_per_image=rows_per_image)
        elif resume and has_results:
            raise RunError(f"cannot resume {self.path}: results.csv exists but manifest.json is missing")
        if overwrite:
            for name in (RESULTS, RESULTS_PARQUET, SUMMARY, "pixels.csv", "robustness.json"):
                (self.path / name).unlink(missing_ok=True)
            cert_dir = self.path / CERTIFICATES
            if cert_dir.is_dir():
                for f in cert_dir.glob("*.npz"):
                    f.unlink()
        self.write_manifest({**manifest, "status": "running"})
        return done

    def lock(self) -> None:
        """Hold an exclusive lock on the folder (``.lock``, flock) until :meth:`unlock` or exit.

        A second process writing the same run folder (say, ``--resume`` while the first
        still runs) gets a clear error instead of interleaved rows. The OS drops the
        lock when the process dies, so a killed run leaves nothing stale behind. Within
        one process the lock is shared (a failed call does not block a retry). No-op
        where ``fcntl`` is unavailable (Windows).
        """
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return
        key = str(self.path.resolve())
        if key in _HELD:
            return
        f = (self.path / ".lock").open("a")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            f.close()
            raise RunError(f"another process is writing the run folder {self.path}; wait for it or "
                           f"stop it before resuming") from err
        _HELD[key] = f

    def unlock(self) -> None:
        f = _HELD.pop(str(self.path.resolve()), None)
        if f is not None:
            f.close()

    @contextlib.contextmanager
    def recording_failure(self):
        """Mark the manifest ``failed`` (or ``interrupted`` on Ctrl-C) with the reason if the block raises.

        The rows already appended stay; the folder is unlocked and the error re-raised, so the
        command can say what went wrong and ``--resume`` continues the run.
        """
        try:
            yield
        except BaseException as err:
            status = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
            reason = (str(err).strip().splitlines() or [""])[0]
            try:
                self.update_manifest(status=status, error=f"{type(err).__name__}: {reason}"[:500],
                                     stopped=now())
            except Exception:  # the folder itself may be what failed (disk full, permissions)
                pass
            self.unlock()
            raise

    def write_manifest(self, manifest: dict) -> None:
        atomic_write(self.manifest_path, (json.dumps(jsonable(manifest), indent=2) + "\n").encode())

    def update_manifest(self, **fields) -> dict:
        manifest = {**self.manifest(), **fields}
        self.write_manifest(manifest)
        return manifest

    def append(self, rows: list[dict], *, sync: bool = True) -> None:
        """Append the rows of one image in one write, then flush and (``sync``) fsync.

        A kill loses at most this image; :meth:`repair` drops its partial rows. ``sync=False``
        leaves the fsync to a later :meth:`sync_results` (the :class:`RunWriter` does one per group).
        """
        if not rows:
            return
        results = self.results_path
        new = not results.exists() or results.stat().st_size == 0
        columns = list(rows[0])
        if not new:
            header = self.header()
            if columns != header:
                raise RunError(f"{results} has columns {header}, the new rows have {columns}")
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        if new:
            writer.writeheader()
        writer.writerows(rows)
        with results.open("a", newline="") as f:
            f.write(buf.getvalue())
            f.flush()
            if sync:
                os.fsync(f.fileno())

    def sync_results(self) -> None:
        """fsync results.csv (what :meth:`append` wrote with ``sync=False`` becomes durable)."""
        if self.results_path.exists():
            with self.results_path.open("ab") as f:
                os.fsync(f.fileno())

    def writer(self, depth: int = 4, *, threaded: bool = True) -> "RunWriter":
        """A :class:`RunWriter` for this folder (use it as a context manager)."""
        return RunWriter(self, depth, threaded=threaded)

    def save_certificate(self, index: int, *, labels: np.ndarray, taus: Sequence[float], mask: np.ndarray,
                         clean: np.ndarray, image: np.ndarray, levels: np.ndarray | None = None,
                         nodes: np.ndarray | None = None) -> Path:
        """Write one image's label maps (``labels [T, H, W]``, -1 = ABSTAIN) as a compressed npz.

        ``image`` float ``[C, H, W]`` in [0, 1] is stored as uint8 (for figures only). ``levels`` and
        ``nodes`` ``[T, H, W]`` (a hierarchical certificate's, :func:`certframe.core.certificate.hierarchy_maps`)
        are stored when given.
        """
        extra = {key: np.asarray(value, dtype=np.int16) for key, value in (("levels", levels), ("nodes", nodes))
                 if value is not None}
        path = self.certificate_path(index)
        path.parent.mkdir(exist_ok=True)
        buf = io.BytesIO()
        savez_compressed(buf, labels=np.asarray(labels, dtype=np.int16), taus=np.asarray(taus, dtype=np.float64),
                         mask=np.asarray(mask, dtype=np.int16), clean=np.asarray(clean, dtype=np.int16),
                         image=np.round(np.clip(np.asarray(image, dtype=np.float32), 0, 1) * 255).astype(np.uint8),
                         **extra)
        atomic_write(path, buf.getvalue())
        return path

    def finish(self) -> pd.DataFrame:
        """Sort the results by (index, tau), write Parquet and the summary; mark the run complete."""
        df = self.results(require_complete=False)
        df = df.sort_values([c for c in ("index", "tau") if c in df.columns], kind="stable").reset_index(drop=True)
        atomic_write(self.results_path, df.to_csv(index=False, lineterminator="\n").encode())
        write_parquet(df, self.path / RESULTS_PARQUET)
        summary = summarize(df)
        atomic_write(self.path / SUMMARY,
                      (summary.to_json(orient="records", indent=2, double_precision=15) + "\n").encode())
        self.update_manifest(status="complete", finished=now(), images=int(df["index"].nunique()))
        self.unlock()
        return summary


__all__ = ["RunFolder", "RunFolderReader", "RunWriter", "RunError", "savez_compressed", "CERTIFICATE_COMPRESSION",
           # defined in certframe.run.layout, .records, .tables; importable from here as before
           "FORMAT", "MANIFEST", "RESULTS", "RESULTS_PARQUET", "SUMMARY", "CERTIFICATES", "REQUIRED_COLUMNS",
           "SUMMARY_KEYS", "WALL_TIME_COLUMNS", "package_versions", "jsonable", "dataset_identity", "now",
           "provenance_diff", "summarize", "compare_results", "write_parquet", "atomic_write"]
