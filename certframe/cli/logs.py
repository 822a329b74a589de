"""Logging for the command line: one :class:`rich.logging.RichHandler` on the ``certframe`` logger.

Library modules log through ``logging.getLogger("certframe.<area>")`` and never
configure logging themselves; the CLI group calls :func:`setup_logging` once.
Commands with ``--quiet`` raise the level to WARNING.
"""
from __future__ import annotations

import logging

from rich.console import Console
from rich.logging import RichHandler

_MARK = "_certframe_rich_handler"


def setup_logging(level: int = logging.INFO) -> logging.Logger:
    """Attach a RichHandler (to stderr) to the ``certframe`` logger, once; set its level.

    Each call gives the handler a new console: a rich Console reads the terminal width
    (``COLUMNS``) when it is made, so one kept from an earlier command in the same process
    (tests, notebooks) would keep that command's width.
    """
    logger = logging.getLogger("certframe")
    for handler in logger.handlers:
        if getattr(handler, _MARK, False):
            handler.console = Console(stderr=True)
    if not any(getattr(h, _MARK, False) for h in logger.handlers):
        handler = RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=False,
                              log_time_format="[%X]")
        setattr(handler, _MARK, True)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level)
    return logger
