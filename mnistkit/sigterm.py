"""SIGTERM as a flag the training loop checks between step batches, so that it can save before it stops."""

from __future__ import annotations

import logging
import signal

log = logging.getLogger(__name__)


class SigtermFlag:
    """A context manager: while inside it, SIGTERM sets `raised` instead of ending the process (main thread only).

    Elsewhere than the main thread signals cannot be handled and are left alone.
    """

    def __init__(self):
        self.raised = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # Not the main thread: leave signals alone.
            self._previous = None
        return self

    def _handle(self, signum, frame):
        log.warning("SIGTERM: saving a checkpoint at the end of the current steps")
        self.raised = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        return False
