"""SIGINT and SIGTERM during a sweep: the first one raises ``Interrupted`` in the main thread (the
sweep stops its workers, writes its table and manifest and says how far it got); a signal that
arrives while the results are being written waits until they are, and any later one is ignored,
so the stop itself is never cut short."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """A stop asked for by a signal (a BaseException, like KeyboardInterrupt: not a failure)."""

    def __init__(self, signum: int):
        self.signum = signum
        self.exit_code = 128 + signum  # the shell's status for a process the signal ended
        super().__init__(signal.Signals(signum).name)


class _State:
    deferring = 0
    pending: int | None = None  # a signal that arrived while deferring
    stopping = False  # Interrupted already raised: later signals change nothing


def _handler(signum: int, frame) -> None:
    if _State.stopping:
        return
    if _State.deferring:
        _State.pending = _State.pending or signum
        return
    _State.stopping = True
    raise Interrupted(signum)


@contextmanager
def on_signals() -> Iterator[None]:
    """Within: SIGINT and SIGTERM raise ``Interrupted`` (main thread only)."""
    previous = {s: signal.signal(s, _handler) for s in SIGNALS}
    _State.deferring, _State.pending, _State.stopping = 0, None, False
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextmanager
def deferred() -> Iterator[None]:
    """Within: a signal is held, not raised (writing a record or the results)."""
    _State.deferring += 1
    try:
        yield
    finally:
        _State.deferring -= 1


def take_pending() -> int | None:
    """The signal held by ``deferred`` and not yet acted on (then counted as acted on)."""
    signum, _State.pending = _State.pending, None
    if signum is not None:
        _State.stopping = True
    return signum


def pending_raise() -> None:
    """Raise ``Interrupted`` for a signal held by ``deferred``, if one was."""
    signum = take_pending()
    if signum is not None:
        raise Interrupted(signum)
