"""The study folder: its manifest (``study.json``), the record beside each stage's output, and output digests.

Layout of a study folder (every output is the ordinary one, so ``certframe report`` and the other
commands read them as they would read their own)::

    study.json                     the manifest: kind, name, the study file (path, SHA-256, its text)
    models/ddpm/                   a diffusers DDPM folder (``certframe train denoiser``); ddpm.resume/
    models/clean.safetensors       segmenters (+ .json, + .resume/), as ``certframe train segmenter``
    models/gaussian-sigma0.5.safetensors, models/finetuned-sigma0.5.safetensors, ...
    quality/denoiser.json          ``certframe evaluate denoiser --output``
    runs/<row>-sigma<s>/           run folders (``certframe certify``)
    attacks/<row>-sigma<s>/        run folders (``certframe attack``), with an [attack] table
    report/                        the study report (report.html, table.csv, dice_vs_sigma.png, report.txt)

Beside each output ``X`` lies ``X.stage.json`` (:func:`stamp_path`): the stage's key, its settings,
its inputs (each input stage's key and its output's digest), status (``running``, ``interrupted``,
``failed``, ``complete``), wall / CPU seconds summed over attempts and the device.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path

from certframe.files import atomic_write_json, file_sha256, update_digest
from certframe.study.spec import StudyError

MANIFEST = "study.json"
KIND = "certframe-study/1"
IGNORED = ("train.log",)
"""Files of an output folder that do not count in its digest (they change on every run)."""


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def stamp_path(output: Path) -> Path:
    """``models/clean.safetensors`` -> ``models/clean.stage.json``; ``runs/x`` -> ``runs/x.stage.json``."""
    output = Path(output)
    stem = output.stem if output.suffix in (".safetensors", ".json") else output.name
    return output.with_name(stem + ".stage.json")


def read_stamp(output: Path) -> dict | None:
    path = stamp_path(output)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_stamp(output: Path, record: dict) -> None:
    path = stamp_path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, record)


def digest(path: Path) -> str | None:
    """SHA-256 of a file, or of a folder's files (names and bytes, sorted; :data:`IGNORED` and stage records
    left out); None when ``path`` does not exist."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    if not path.is_dir():
        return None
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        if f.name in IGNORED or f.name.endswith(".stage.json") or f.name.startswith("."):
            continue
        h.update(str(f.relative_to(path)).encode() + b"\0")
        update_digest(h, f)
    return "sha256:" + h.hexdigest()


def check_study_folder(folder: Path, name: str) -> dict | None:
    """``folder`` may hold this study (its manifest, returned), nothing, or not exist yet; another study or
    other files are refused (:class:`StudyError`) before anything is written."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise StudyError(f"--output {str(folder)!r} is an existing file; a study folder is expected (the file is "
                         f"left as it is)")
    manifest = folder / MANIFEST
    if manifest.is_file():
        try:
            record = json.loads(manifest.read_text())
        except ValueError:
            record = {}
        if record.get("kind") != KIND:
            raise StudyError(f"--output {str(folder)!r} holds a {MANIFEST} that is not a study manifest; choose "
                             f"another folder")
        if record.get("name") != name:
            raise StudyError(f"--output {str(folder)!r} holds another study, {record.get('name')!r} (from "
                             f"{record.get('source', {}).get('path')}), not {name!r}: choose another folder "
                             f"(--output) or delete that one")
        return record
    if folder.is_dir() and any(folder.iterdir()):
        raise StudyError(f"--output {str(folder)!r} is not empty and holds no study ({MANIFEST} missing): choose "
                         f"a new or empty folder")
    return None


def write_manifest(folder: Path, study, stages: list, created: str | None = None) -> dict:
    """Write ``study.json``: what the study is (its file, name, title), its stages and outputs."""
    source = Path(study.path)
    record = {"kind": KIND, "name": study.name, "title": study.title,
              "source": {"path": str(source.resolve()), "sha256": file_sha256(source) if source.is_file() else None,
                         "text": source.read_text() if source.is_file() else None},
              "rows": list(study.rows), "baseline": study.baseline, "sigmas": list(study.sigmas),
              "stages": [{"name": s.name, "kind": s.kind, "output": str(s.output.relative_to(folder)),
                          "inputs": list(s.inputs)} for s in stages],
              "created": created or now(), "updated": now()}
    from certframe import __version__

    record["certframe"] = __version__
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / MANIFEST, record)
    return record


def read_manifest(folder: Path) -> dict | None:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except ValueError:
        return None
    return record if record.get("kind") == KIND else None


def stage_status(stage: dict | None) -> str:
    """A stage's status as a report shows it: its record's ``status``, ``not run`` without a record.

    stage: ``{"record": read_stamp(output) or None, ...}`` as the reports read them, or None (not planned)."""
    if stage is None or stage["record"] is None:
        return "not run"
    return stage["record"].get("status", "not run")
