"""What a run folder holds: its file names, the columns its results must have, and its error.

The layout itself (what each file contains, how a run resumes) is described in
:mod:`certframe.run.folder`; the folder is read back by :mod:`certframe.run.reading` and
written by :class:`certframe.run.folder.RunFolder`.
"""
from __future__ import annotations

FORMAT = "certframe-run/1"
MANIFEST, RESULTS, RESULTS_PARQUET, SUMMARY = "manifest.json", "results.csv", "results.parquet", "summary.json"
CERTIFICATES = "certificates"
REQUIRED_COLUMNS = ["image_id", "index", "segmenter", "denoiser", "certifier", "sigma", "tau", "radius",
                    "certified_dice", "clean_dice", "abstain_rate", "seconds"]


class RunError(ValueError):
    """A run folder is missing, corrupt, or does not match what was asked."""


__all__ = ["FORMAT", "MANIFEST", "RESULTS", "RESULTS_PARQUET", "SUMMARY", "CERTIFICATES", "REQUIRED_COLUMNS",
           "RunError"]
