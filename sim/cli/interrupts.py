"""Ctrl-C and SIGTERM as exceptions: SIGINT raises ``KeyboardInterrupt`` (Python's default) and,
inside ``sigterm_raises()``, SIGTERM raises ``Terminated``, so one ``except STOPPED`` stops a run
either way (finished runs written, one line, exit 130 or 143: docs/architecture.md#exit-statuses).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Terminated(BaseException):
    """SIGTERM, raised wherever the program is (a ``BaseException``, as ``KeyboardInterrupt``:
    ``except Exception`` does not swallow it)."""


STOPPED = (KeyboardInterrupt, Terminated)


def exit_status(stop: BaseException) -> int:
    """130 for SIGINT, 143 for SIGTERM (128 + the signal number, as a shell reports it)."""
    return 128 + (signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT)


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within: SIGTERM raises ``Terminated`` in this process (a forked child gets the default
    action); the handler before is put back after.  Only the main thread can set it: elsewhere
    nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pid = os.getpid()

    def handler(signum, frame) -> None:
        if os.getpid() != pid:  # a child forked within: die as SIGTERM would have it
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
