"""The run folder's writer thread: the files of certified images written while the next ones are certified.

``certframe certify`` writes its run folder through a :class:`RunWriter`
(:meth:`certframe.run.folder.RunFolder.writer`); why resume stays exact is in the class's docstring
and in :mod:`certframe.run.folder`.
"""
from __future__ import annotations

import queue
import threading

_CLOSE = object()


class RunWriter:
    """Writes the files of certified images in a background thread, in the order they were submitted.

    ``submit(index, rows, certificate)`` queues one image: ``certificate`` (None, or the keyword
    arguments of :meth:`RunFolder.save_certificate`) and its result rows. The thread takes every
    image waiting at once (a group), saves their certificates (atomic, fsync'ed), appends their
    rows in order and fsyncs results.csv once for the group. When the disk keeps up a group is one
    image, as before; when it falls behind, the images share one fsync. Either way the loop that
    certifies does not wait for compression or the disk, unless ``depth`` images are waiting.

    Why resume stays exact: a row reaches results.csv only after its image's certificate file
    is durable, and results.csv is fsync'ed after every group, so what a crash can leave is a
    tail of rows not yet durable (cut off or missing), which :meth:`RunFolder.repair` drops,
    and images never written, which a resumed run certifies again with the same draws.
    On leaving the ``with`` block, normally or by an exception (Ctrl-C included), every image
    already submitted is written first: an interrupted run loses nothing it computed. A write
    error (a full disk, say) stops the writing and is raised by the next :meth:`submit` or
    by :meth:`close`. ``threaded=False`` writes each image in :meth:`submit` instead (no thread;
    one image per group), as a run folder was written before.
    """

    def __init__(self, run, depth: int = 4, *, threaded: bool = True):
        """run: the :class:`~certframe.run.folder.RunFolder` written; depth: images that may wait."""
        self.run = run
        self._queue: queue.Queue = queue.Queue(maxsize=max(int(depth), 1))
        self._error: BaseException | None = None
        self._thread = None
        if threaded:
            self._thread = threading.Thread(target=self._work, name="certframe-writer", daemon=True)
            self._thread.start()

    def submit(self, index: int, rows: list[dict], certificate: dict | None = None) -> None:
        """Queue one image's certificate and rows (waits while ``depth`` images are waiting)."""
        self._raise()
        if self._thread is None:
            self._write([(index, rows, certificate)])
        else:
            self._queue.put((index, rows, certificate))

    def close(self) -> None:
        """Write everything submitted, stop the thread; raise the first write error, if any."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(_CLOSE)
            self._thread.join()
        self._raise()

    def __enter__(self) -> "RunWriter":
        return self

    def __exit__(self, kind, err, tb) -> None:
        if kind is None:
            self.close()
        else:   # write what was certified, then let the original error go on
            try:
                self.close()
            except Exception:
                pass

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _work(self) -> None:
        while True:
            group = [self._queue.get()]
            while group[-1] is not _CLOSE:
                try:
                    group.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            images = [item for item in group if item is not _CLOSE]
            if images and self._error is None:
                try:
                    self._write(images)
                except BaseException as err:  # handed to the caller's thread
                    self._error = err
            if group[-1] is _CLOSE:
                return

    def _write(self, images: list) -> None:
        for index, _, certificate in images:
            if certificate is not None:
                self.run.save_certificate(index, **certificate)
        for _, rows, _ in images:
            self.run.append(rows, sync=False)
        self.run.sync_results()


__all__ = ["RunWriter"]
