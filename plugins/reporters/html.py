"""The ``html`` reporter: one self-contained ``report.html`` (tables, figures as data: URIs)."""
from __future__ import annotations

from pathlib import Path

from certframe.report.base import Reporter
from certframe.report.figures import all_figures, png_bytes
from certframe.report.html import render_html
from certframe.report.report import runs_table


class HtmlReporter(Reporter):
    """A self-contained report.html: tables and figures embedded as base64 PNG.

    Holds the comparison table, the figures and the runs' configurations;
    ``title`` defaults to the data sets compared.
    """

    name = "html"

    def __init__(self, overlay_images: int = 4, title: str | None = None):
        if int(overlay_images) < 0:
            raise ValueError(f"overlay_images must be >= 0, got {overlay_images}")
        self.overlay_images, self.title = int(overlay_images), title

    def write(self, runs, table, output: Path) -> list[Path]:
        figures = {name: png_bytes(fig) for name, fig in all_figures(runs, table, self.overlay_images).items()}
        title = self.title or "certframe report: " + ", ".join(sorted(table["dataset"].unique()))
        path = output / "report.html"
        path.write_text(render_html(title, table, runs_table(runs), figures), encoding="utf-8")
        return [path]
