"""Reports over run folders: comparison tables, figures, a self-contained HTML page.

:func:`make_report` is the library function behind ``certframe report``; the pieces
are :mod:`certframe.report.report` (load, check, tabulate), :mod:`.figures`
(matplotlib) and :mod:`.html`; reporters are plugins (:class:`Reporter`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from certframe.report.base import Reporter
from certframe.report.report import Run, comparison_table, load_runs, runs_table

DEFAULT_REPORTERS = ("table", "figures", "html")


def make_report(paths: Sequence[str | Path], output: str | Path, *, reporters: Sequence[str] = DEFAULT_REPORTERS,
                reporter_options: dict | None = None, allow_incomplete: bool = False,
                registry=None) -> tuple[pd.DataFrame, list[Path]]:
    """Load and check the runs, build the comparison table, run each reporter.

    reporter_options: passed to every reporter factory that accepts them (e.g.
    ``overlay_images``). Returns (comparison table, files written).
    """
    from certframe.registry import get_registry

    registry = registry or get_registry()
    runs = load_runs(paths, allow_incomplete=allow_incomplete)
    table = comparison_table(runs)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name in reporters:
        entry = registry.get("reporter", name)
        accepted = entry.options()
        opts = {k: v for k, v in (reporter_options or {}).items()
                if k in accepted or entry.accepts_any_option()}
        reporter = registry.create("reporter", name, **opts)
        written += list(reporter.write(runs, table, output))
    return table, written


__all__ = ["Reporter", "Run", "comparison_table", "load_runs", "runs_table", "make_report", "DEFAULT_REPORTERS"]
