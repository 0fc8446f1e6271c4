"""Graceful stop: the first SIGTERM/SIGINT drains the flow, the second exits at once.

Bytewax has no "stop now, keep state" call, so a stop request makes every
source partition end its input. The dataflow then finishes its epoch the normal
way: stateful steps snapshot, sinks commit and close. Feature shards check the
flag so that this end of input does not finalize open windows the way the end
of a bounded run does; the next run resumes them from the recovery store.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType

log = logging.getLogger(__name__)

_STOP = threading.Event()
_ON_STOP: list[Callable[[], None]] = []


def on_stop(callback: Callable[[], None]) -> None:
    """Also call ``callback`` on the first stop signal (e.g. to forward it to children)."""
    _ON_STOP.append(callback)


def stop_requested() -> bool:
    """Whether a graceful stop was asked for in this process."""
    return _STOP.is_set()


def request_stop() -> None:
    """Ask the flow to drain and stop (what the first signal does)."""
    _STOP.set()


def reset() -> None:
    """Forget a stop request (tests run several flows in one process)."""
    _STOP.clear()


def _handler(signum: int, _frame: FrameType | None) -> None:
    if _STOP.is_set():
        sys.stderr.write("kappa: second signal, exiting now\n")
        os._exit(128 + signum)
    sys.stderr.write("kappa: stopping: finishing the epoch, committing sinks "
                     "(signal again to exit at once)\n")
    _STOP.set()
    for callback in _ON_STOP:
        callback()


def install_signal_handlers() -> None:
    """Route SIGTERM and SIGINT to the graceful stop (main thread only)."""
    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
