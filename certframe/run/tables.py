"""Result tables of runs: the summary per method and tau, their comparison, their Parquet copy."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pandas as pd

SUMMARY_KEYS = ["segmenter", "denoiser", "certifier", "sigma", "tau", "radius"]
WALL_TIME_COLUMNS = ("seconds",)


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


__all__ = ["summarize", "compare_results", "write_parquet", "SUMMARY_KEYS", "WALL_TIME_COLUMNS"]
