"""Interrupt a real ``certframe`` process at a known point, not after a guessed time.

:func:`start_paused` runs ``certframe ARGS`` in a subprocess exactly as ``python -m certframe``
does, except that the process stops in the middle of image 1 (at image 1's first forward
pass through the base model, once image 0's rows have been appended to ``results.csv``),
writes a marker file, and waits there. ``certframe certify`` appends rows in its writer
thread (:class:`certframe.run.writer.RunWriter`), so image 1 may start before image 0's rows are
written: the pause then waits for them before it writes the marker. The test waits for the marker
(:func:`wait_for_pause`) and only then sends its signal: SIGKILL, or SIGINT (what Ctrl-C
sends; the wait is a ``time.sleep`` that the signal interrupts with KeyboardInterrupt, as
it would interrupt the model's forward pass). So the signal always lands mid-run, whether
the machine is idle or busy (a busy machine could otherwise finish a small run before a
signal sent after a fixed time arrived), and the command's own Ctrl-C handling is what
runs. Every wait is bounded only to guard against a hang.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HANG_GUARD = 600.0
"""Seconds after which a wait gives up: a hang, never the expected path."""

PAUSED = """
import os, sys, time
from pathlib import Path

from certframe.run.step import CertifyStep
from certframe.run.folder import RunFolder
from certframe.core.smoothing import SmoothedSegmenter

marker, appended, started = Path(os.environ["CERTFRAME_TEST_MARKER"]), [], []
append, base_logits, step = RunFolder.append, SmoothedSegmenter.base_logits, CertifyStep.__call__
deadline = time.monotonic() + float(os.environ["CERTFRAME_TEST_HANG_GUARD"])


def appending(self, rows, *args, **kwargs):
    append(self, rows, *args, **kwargs)
    appended.append(len(rows))


def stepping(self, index, sample):      # certify runs (an attack run's step has its own __call__)
    started.append(index)
    return step(self, index, sample)


def pausing(self, noisy, *args, **kwargs):
    if (appended or len(started) > 1) and not marker.exists():   # image 1's first forward pass
        while not appended and time.monotonic() < deadline:     # image 0's rows, from the writer thread
            time.sleep(0.01)
        marker.write_text(str(os.getpid()))
        while time.monotonic() < deadline:  # the test's signal ends this (SIGINT: KeyboardInterrupt)
            time.sleep(1)
        sys.exit("paused run: no signal came")
    return base_logits(self, noisy, *args, **kwargs)


RunFolder.append, SmoothedSegmenter.base_logits, CertifyStep.__call__ = appending, pausing, stepping
from certframe.cli import main

main(prog_name="certframe")
"""


def start_paused(args: list, marker: Path) -> subprocess.Popen:
    """``certframe *args`` in a subprocess (one torch thread) that pauses in image 1 and writes ``marker``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CERTFRAME_TEST_MARKER": str(marker),
           "CERTFRAME_TEST_HANG_GUARD": str(HANG_GUARD)}
    # SIGINT at its default in the child, as in a terminal: a test run started as a background job (``pytest &``
    # in a script, ``nohup``) ignores SIGINT, and a child inherits an ignored signal, so Ctrl-C would never land
    return subprocess.Popen([sys.executable, "-c", PAUSED, *[str(a) for a in args]], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for_pause(marker: Path, proc: subprocess.Popen) -> None:
    """Return once ``proc`` has written ``marker``; fail if it ends first (or, on a hang, after HANG_GUARD s)."""
    start = time.monotonic()
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc {proc.returncode}) before it reached the pause in image 1: "
                        f"{proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() - start > HANG_GUARD:
            proc.kill()
            pytest.fail(f"the run did not reach the pause in image 1 in {HANG_GUARD:.0f} s")
        time.sleep(0.01)


def interrupt(proc: subprocess.Popen, sig: int) -> None:
    """Send ``sig`` to the paused ``proc`` and wait for it to end (bounded only against a hang)."""
    proc.send_signal(sig)
    proc.wait(timeout=HANG_GUARD)
