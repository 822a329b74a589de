"""The ``figures`` reporter: PNG figures under ``figures/`` (see :mod:`certframe.report.figures`)."""
from __future__ import annotations

from pathlib import Path

from certframe.report.base import Reporter
from certframe.report.figures import all_figures, save_png


class FigureReporter(Reporter):
    """PNG figures: certified Dice and abstain rate vs radius, per-run overlays.

    Written to ``OUTPUT/figures/``; overlays show the first ``overlay_images``
    images of each run (0: none).
    """

    name = "figures"

    def __init__(self, overlay_images: int = 4):
        if int(overlay_images) < 0:
            raise ValueError(f"overlay_images must be >= 0, got {overlay_images}")
        self.overlay_images = int(overlay_images)

    def write(self, runs, table, output: Path) -> list[Path]:
        folder = output / "figures"
        folder.mkdir(exist_ok=True)
        return [save_png(fig, folder / name) for name, fig in
                all_figures(runs, table, self.overlay_images).items()]
