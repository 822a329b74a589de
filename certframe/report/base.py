"""The reporter contract: loaded runs and their comparison table in, files out.

A reporter plugin registers a factory through the ``register_reporters`` hook::

    @hookimpl
    def register_reporters(register):
        register("latex", LatexReporter)      # LatexReporter(**options) -> Reporter

``certframe report RUN... --reporter latex`` then builds it and calls
:meth:`Reporter.write`.
"""
from __future__ import annotations

import abc
from pathlib import Path
from typing import Sequence

import pandas as pd


class Reporter(abc.ABC):
    """Writes a report of runs into a folder.

    ``write(runs, table, output)``: ``runs`` are :class:`certframe.report.report.Run`
    (manifest, checked results DataFrame, method name, run folder for certificates),
    ``table`` is :func:`certframe.report.report.comparison_table` of them; the
    reporter writes its files under ``output`` (which exists) and returns their paths.
    """

    name: str = "reporter"

    @abc.abstractmethod
    def write(self, runs: Sequence, table: pd.DataFrame, output: Path) -> list[Path]: ...
