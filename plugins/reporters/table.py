"""The ``table`` reporter: the comparison table as ``report.csv`` and ``report.json``."""
from __future__ import annotations

from pathlib import Path

from certframe.report.base import Reporter


class TableReporter(Reporter):
    """The comparison table as report.csv and report.json (full float precision).

    One row per data set x method x certifier x sigma x tau.
    """

    name = "table"

    def write(self, runs, table, output: Path) -> list[Path]:
        csv_path, json_path = output / "report.csv", output / "report.json"
        table.to_csv(csv_path, index=False)
        json_path.write_text(table.to_json(orient="records", indent=2, double_precision=15) + "\n")
        return [csv_path, json_path]
