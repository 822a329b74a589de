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
"""
from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import hashlib
import io
import json
import os
import platform
import queue
import threading
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

FORMAT = "certframe-run/1"
MANIFEST, RESULTS, RESULTS_PARQUET, SUMMARY = "manifest.json", "results.csv", "results.parquet", "summary.json"
CERTIFICATES = "certificates"
SUMMARY_KEYS = ["segmenter", "denoiser", "certifier", "sigma", "tau", "radius"]
REQUIRED_COLUMNS = ["image_id", "index", "segmenter", "denoiser", "certifier", "sigma", "tau", "radius",
                    "certified_dice", "clean_dice", "abstain_rate", "seconds"]
WALL_TIME_COLUMNS = ("seconds",)
_VERSIONED = ("certframe", "torch", "numpy", "scipy", "monai", "diffusers", "torchattacks", "pandas",
              "pyarrow")


_HELD: dict[str, Any] = {}  # run folders this process holds the lock of -> open lock file


class RunError(ValueError):
    """A run folder is missing, corrupt, or does not match what was asked."""


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types (tuples -> lists, paths and other objects -> str)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def dataset_identity(dataset) -> dict:
    """The data set's ``identity()`` plus ``items`` (count) and ``sha256``.

    ``sha256`` hashes the identity's canonical JSON and the item ids in order, so two
    runs on the same files in the same order share it, and a changed file list or
    split does not.
    """
    ident = jsonable(dataset.identity())
    ids = list(dataset.item_ids())
    h = hashlib.sha256(json.dumps(ident, sort_keys=True).encode())
    for i in ids:
        h.update(b"\n" + str(i).encode())
    return {**ident, "items": len(ids), "sha256": h.hexdigest()}


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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


def provenance_diff(old: dict | None, new: dict | None) -> list[str]:
    """What differs between the ``provenance`` of two manifests (model state hashes, file hashes).

    A manifest without provenance (written before it was recorded) compares as unknown: no difference.
    """
    if not old or not new:
        return []
    diffs = []
    for kind in sorted(set(old) | set(new)):
        a, b = old.get(kind) or {}, new.get(kind) or {}
        ha, hb = ((x.get("model") or {}).get("state_sha256") for x in (a, b))
        if ha != hb:
            diffs.append(f"the {kind}'s weights differ (state sha256 {str(ha)[:12]} in the run, {str(hb)[:12]} now)")
        files_a, files_b = a.get("files") or {}, b.get("files") or {}
        for key in sorted(set(files_a) | set(files_b)):
            fa, fb = files_a.get(key) or {}, files_b.get(key) or {}
            if fa.get("sha256") != fb.get("sha256"):
                diffs.append(f"the {kind} file {key}={fb.get('path') or fa.get('path')} changed (sha256 "
                             f"{str(fa.get('sha256'))[:12]} in the run, {str(fb.get('sha256'))[:12]} now)")
    return diffs


def _config_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _config_diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} in the run, {b!r} now")
    return out


class RunFolder:
    """One run folder on disk (see the module docstring for its layout)."""

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

    # -- writing
    def start(self, manifest: dict, *, resume: bool = False, overwrite: bool = False,
              rows_per_image: int | None = None) -> dict[int, str]:
        """Create the folder, write ``manifest``; return ``{index: image id}`` of images done.

        rows_per_image: rows each image appends (default: one per tau of
        ``manifest["config"]["taus"]``); recorded in the manifest.

        ``manifest["config"]`` is what must match on resume (plus the data set's hash,
        ``manifest["dataset"]["sha256"]``). A folder that already holds results needs
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
            diff = _config_diff(old.get("config", {}), manifest["config"])
            old_hash = old.get("dataset", {}).get("sha256")
            new_hash = manifest.get("dataset", {}).get("sha256")
            if old_hash != new_hash:
                diff.append(f"data set identity: {old_hash} in the run, {new_hash} now")
            # numerical precision changes results: fp32 rows and bf16 rows must not mix
            old_prec, new_prec = (((m.get("execution") or {}).get("accelerate") or {}).get("precision")
                                  for m in (old, manifest))
            if old_prec and new_prec and old_prec != new_prec:
                diff.append(f"precision: {old_prec!r} in the run, {new_prec!r} now")
            diff += provenance_diff(old.get("provenance"), manifest.get("provenance"))
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


_CLOSE = object()


class RunWriter:
    """Writes the files of certified images in a background thread, in the order they were submitted.

    ``submit(index, rows, certificate)`` queues one image: ``certificate`` (None, or the keyword
    arguments of :meth:`RunFolder.save_certificate`) and its result rows. The thread takes every
    image waiting at once (a group), saves their certificates (atomic, fsync'ed), appends their
    rows in order and fsyncs results.csv once for the group. When the disk keeps up a group is one
    image, as before; when it falls behind, the images share one fsync. Either way the loop that
    certifies does not wait for compression or the disk, unless ``depth`` images are waiting.

    Why resume stays exact: a row reaches results.csv only after its image's certificate file
    is durable, and results.csv is fsync'ed after every group, so what a crash can leave is a
    tail of rows not yet durable (cut off or missing), which :meth:`RunFolder.repair` drops,
    and images never written, which a resumed run certifies again with the same draws.
    On leaving the ``with`` block, normally or by an exception (Ctrl-C included), every image
    already submitted is written first: an interrupted run loses nothing it computed. A write
    error (a full disk, say) stops the writing and is raised by the next :meth:`submit` or
    by :meth:`close`. ``threaded=False`` writes each image in :meth:`submit` instead (no thread;
    one image per group), as a run folder was written before.
    """

    def __init__(self, run: RunFolder, depth: int = 4, *, threaded: bool = True):
        self.run = run
        self._queue: queue.Queue = queue.Queue(maxsize=max(int(depth), 1))
        self._error: BaseException | None = None
        self._thread = None
        if threaded:
            self._thread = threading.Thread(target=self._work, name="certframe-writer", daemon=True)
            self._thread.start()

    def submit(self, index: int, rows: list[dict], certificate: dict | None = None) -> None:
        """Queue one image's certificate and rows (waits while ``depth`` images are waiting)."""
        self._raise()
        if self._thread is None:
            self._write([(index, rows, certificate)])
        else:
            self._queue.put((index, rows, certificate))

    def close(self) -> None:
        """Write everything submitted, stop the thread; raise the first write error, if any."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(_CLOSE)
            self._thread.join()
        self._raise()

    def __enter__(self) -> "RunWriter":
        return self

    def __exit__(self, kind, err, tb) -> None:
        if kind is None:
            self.close()
        else:   # write what was certified, then let the original error go on
            try:
                self.close()
            except Exception:
                pass

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _work(self) -> None:
        while True:
            group = [self._queue.get()]
            while group[-1] is not _CLOSE:
                try:
                    group.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            images = [item for item in group if item is not _CLOSE]
            if images and self._error is None:
                try:
                    self._write(images)
                except BaseException as err:  # handed to the caller's thread
                    self._error = err
            if group[-1] is _CLOSE:
                return

    def _write(self, images: list) -> None:
        for index, _, certificate in images:
            if certificate is not None:
                self.run.save_certificate(index, **certificate)
        for _, rows, _ in images:
            self.run.append(rows, sync=False)
        self.run.sync_results()


def write_parquet(df: pd.DataFrame, path: Path) -> bool:
    """Write ``df`` to ``path`` as Parquet when pyarrow is installed (an optional extra); True if written."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    df.to_parquet(path, index=False)
    return True


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Per (segmenter, denoiser, certifier, sigma, tau, radius): mean over images of every
    metric column (same name; a hierarchical certifier's ``cig`` and ``level<l>_rate`` too) and of
    ``num_samples`` (noise draws per image: n0 + n, or fewer for an adaptive certifier), ``*_std``
    (population std, ddof=0, as ``numpy.std``) of certified and clean Dice, ``empty_truth_images``
    (images whose mask has no foreground: by :data:`certframe.core.metrics.EMPTY_DICE` they score 1.0 when
    nothing is certified as foreground, an all-ABSTAIN map included, so they are counted apart) and
    ``images`` (count)."""
    keys = [k for k in SUMMARY_KEYS if k in df.columns]
    values = sorted({c for c in df.columns if c.endswith("dice") or c.startswith("certified_dice")
                     or c in ("abstain_rate", "certified_accuracy", "seconds", "num_samples", "cig")
                     or (c.startswith("level") and c.endswith("_rate"))})
    g = df.groupby(keys, dropna=False, sort=False)
    summary = g[values].mean()
    for c in ("certified_dice", "clean_dice"):
        if c in df.columns:
            summary[f"{c}_std"] = g[c].std(ddof=0)
    if "empty_truth" in df.columns:  # images without foreground: Dice 1.0 when nothing is certified there
        summary["empty_truth_images"] = g["empty_truth"].apply(lambda v: int(v.astype(bool).sum()))
    summary["images"] = g.size()
    return summary.reset_index()


def compare_results(a: pd.DataFrame, b: pd.DataFrame, ignore: Iterable[str] = WALL_TIME_COLUMNS) -> None:
    """Assert two result tables are equal in every column but the wall-time ones."""
    drop = [c for c in ignore if c in a.columns]
    pd.testing.assert_frame_equal(a.drop(columns=drop).reset_index(drop=True),
                                  b.drop(columns=[c for c in ignore if c in b.columns]).reset_index(drop=True))
