"""Holding off Ctrl-C and SIGTERM while cleanup runs, without passing the hold on to the processes it starts.

A signal set to SIG_IGN stays ignored across fork and exec, so every process a cleanup started under SIG_IGN
would ignore SIGINT and SIGTERM too (an ssh not multiplexed over a master connection then stops only at
`kill -9`). A handled signal is reset to its default at exec: these helpers therefore hold signals with Python
handlers, never with SIG_IGN.
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
    """Run the block without SIGINT / SIGTERM interrupting its Python code; a signal that came meanwhile is
    delivered again to the handler that was in place before, once the block is done (so Ctrl-C still stops the
    program, after the cleanup; where that handler is SIG_DFL, the process ends then, as it would have at once).
    Child processes the block starts are not protected by this (see remote(detached=True) for SSH cleanup).
    Only the main thread can set handlers: elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = tuple(sig for sig in signals if signal.getsignal(sig) is not None)  # a C-level handler: left alone
    came: list[int] = []
    # blocked while handlers are swapped, so a signal cannot find half of them swapped
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        saved = {sig: signal.signal(sig, lambda signum, frame: came.append(signum)) for sig in signals}
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, signals)
        try:
            for sig, handler in saved.items():
                signal.signal(sig, handler)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)
        for sig in dict.fromkeys(came):
            signal.raise_signal(sig)
