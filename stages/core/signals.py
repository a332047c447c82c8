"""Holding off Ctrl-C and SIGTERM while cleanup runs, without passing the hold on to the processes it starts.

A signal set to SIG_IGN stays ignored across fork and exec, so an ssh started during cleanup under SIG_IGN could
only be stopped with `kill -9`. A handled signal is reset to its default at exec: these helpers therefore hold
signals with Python handlers, never with SIG_IGN.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

HELD = (signal.SIGINT, signal.SIGTERM)


def hold(signum, frame) -> None:
    """A handler that does nothing: the process goes on; children it starts get the default action."""


@contextmanager
def deferred(signals: tuple[int, ...] = HELD) -> Iterator[None]:
    """Run the block without SIGINT / SIGTERM cutting it short; a signal that came meanwhile is delivered again
    to the handler that was in place before, once the block is done (so Ctrl-C still stops the program, after
    the cleanup). Only the main thread can set handlers: elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []
    saved = {sig: signal.signal(sig, lambda signum, frame: came.append(signum)) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(came):
            signal.raise_signal(sig)
