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
        self._installed = False
        self._previous = None

    def install(self) -> "SigtermFlag":
        """Takes SIGTERM from here on (once: installing again changes nothing); `uninstall` gives it back."""
        if not self._installed:
            try:
                self._previous = signal.signal(signal.SIGTERM, self._handle)
                self._installed = True
            except ValueError:  # Not the main thread: leave signals alone.
                pass
        return self

    def uninstall(self) -> None:
        # A handler installed outside Python (TensorFlow's preemption notifier) reads as None: it stays replaced.
        if self._installed and self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        self._installed = False

    def _handle(self, signum, frame):
        log.warning("SIGTERM: saving a checkpoint at the end of the current steps")
        self.raised = True

    def __enter__(self):
        return self.install()

    def __exit__(self, *exc):
        self.uninstall()
        return False


def exit_on_sigterm() -> None:
    """Makes SIGTERM unwind the stack (exit 143) so that `finally` blocks remove temporary files.

    Python's default on SIGTERM ends the process on the spot, which would leave
    a half-written download or export behind. For steps with no checkpoint to
    save: training uses SigtermFlag instead.
    """

    def handle(signum, frame):
        log.warning("SIGTERM: stopping, removing what this step had half written")
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handle)
