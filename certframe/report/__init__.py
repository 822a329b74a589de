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
from certframe.report.report import TABLE_COLUMNS, Run, comparison_table, find_runs, load_runs, runs_table
from certframe.run.folder import MANIFEST, RunFolder

DEFAULT_REPORTERS = ("table", "figures", "html")


def split_runs(paths: Sequence[str | Path]) -> tuple[list[Path], list[Path]]:
    """The certify run folders and the attack run folders among ``paths`` (see :func:`find_runs`)."""
    certify, attack = [], []
    for path in find_runs(paths):
        kind = RunFolder(path).manifest().get("kind") if (Path(path) / MANIFEST).exists() else None
        (attack if kind == "attack" else certify).append(Path(path))
    return certify, attack


def attack_figures(path: Path, output: Path) -> list[Path]:
    """For an attack run: the empirical (minimal-norm) radius against the certified radius per
    attacked pixel (``pixels.csv`` of the falsification job), as ``figures/<run>-radius.png``."""
    from certframe.report.figures import empirical_vs_certified_radius
    from certframe.run.attack import PIXELS, read_pixels

    if not (path / PIXELS).exists():
        return []
    pixels = read_pixels(path)
    if pixels.empty:
        return []
    figure = empirical_vs_certified_radius(pixels)
    target = output / "figures" / f"{path.name}-radius.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=120, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return [target]


def make_report(paths: Sequence[str | Path], output: str | Path, *, reporters: Sequence[str] = DEFAULT_REPORTERS,
                reporter_options: dict | None = None, allow_incomplete: bool = False,
                registry=None) -> tuple[pd.DataFrame, list[Path]]:
    """Load and check the runs, build the comparison table, run each reporter.

    reporter_options: passed to every reporter factory that accepts them (e.g.
    ``overlay_images``). Returns (comparison table, files written).
    """
    from certframe.registry import get_registry

    registry = registry or get_registry()
    # every check before anything is written: a bad path, an unfinished run or an unknown reporter leaves no
    # output folder behind
    certify_paths, attack_paths = split_runs(paths)
    runs = load_runs(certify_paths, allow_incomplete=allow_incomplete) if certify_paths else []
    made = []
    for name in reporters if certify_paths else ():
        entry = registry.get("reporter", name)
        accepted = entry.options()
        opts = {k: v for k, v in (reporter_options or {}).items()
                if k in accepted or entry.accepts_any_option()}
        made.append(registry.create("reporter", name, **opts))
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    written: list[Path] = [p for a in attack_paths for p in attack_figures(a, output)]
    if not certify_paths:
        return pd.DataFrame(columns=TABLE_COLUMNS), written
    table = comparison_table(runs)
    for reporter in made:
        written += list(reporter.write(runs, table, output))
    return table, written


__all__ = ["Reporter", "Run", "comparison_table", "load_runs", "runs_table", "make_report", "DEFAULT_REPORTERS"]
