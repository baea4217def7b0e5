"""SIGINT and SIGTERM during a run: the first asks the run to stop cleanly, a second ends it at once.

A clean stop finishes the current training step, writes a checkpoint of the last epoch boundary and
marks the run interrupted (the trainer does that on seeing `StopRequest.requested`). A second signal
raises at once (KeyboardInterrupt for SIGINT, SystemExit(143) for SIGTERM), except while the clean stop
writes its checkpoint and marker (`StopRequest.shield`), which takes a moment and must not be cut short;
every results file is written atomically, so none is left half-written either way.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

EXIT_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}


class StopRequest:
    """Set by the first SIGINT / SIGTERM; the training loop polls it after every step."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.shielded = False

    @contextmanager
    def shield(self) -> Iterator[None]:
        """While held, further signals are ignored (the clean stop is already under way)."""
        self.shielded = True
        try:
            yield
        finally:
            self.shielded = False

    @property
    def requested(self) -> bool:
        """Whether a stop was asked for."""
        return self.signum is not None

    @property
    def signal_name(self) -> str:
        """SIGINT or SIGTERM."""
        return signal.Signals(self.signum).name if self.signum is not None else ""

    @property
    def exit_status(self) -> int:
        """130 for SIGINT, 143 for SIGTERM."""
        return EXIT_STATUS.get(signal.Signals(self.signum), 1) if self.signum is not None else 0

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None and self.shielded:
            return
        if self.signum is not None:  # the second signal: stop now
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(EXIT_STATUS[signal.Signals(signum)])
        self.signum = signum


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Catch SIGINT and SIGTERM for the duration (main thread only; elsewhere nothing is installed)."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {s: signal.signal(s, request._handle) for s in EXIT_STATUS}
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
