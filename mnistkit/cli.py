"""What every `mnist-*` command shares: clean errors instead of tracebacks."""

import os
import signal
import sys

from absl import app


class UserError(Exception):
    """An input a user gave is wrong; the message says which and why."""


def prog_name() -> str:
    """The command's name as users know it: `mnist-download` also under `python -m mnistkit.download`."""
    name = os.path.basename(sys.argv[0])
    return f"mnist-{name[:-3]}" if name.endswith(".py") else name


def exit_on_sigterm() -> None:
    """Makes SIGTERM unwind the stack (exit 143) so that `finally` blocks remove temporary files.

    Python's default on SIGTERM ends the process on the spot, which would leave
    a half-written download or export behind.
    """

    def handle(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handle)


def run(main) -> None:
    """Runs an absl `main`, turning errors about inputs into one line and exit 1."""
    from mnistkit import fetch, idx  # Light modules: no TensorFlow.

    expected = (UserError, idx.DataError, fetch.FetchError, ValueError, FileNotFoundError, PermissionError)

    def guarded(argv):
        try:
            return main(argv)
        except expected as e:
            print(f"{prog_name()}: error: {e}", file=sys.stderr)
            sys.exit(1)

    app.run(guarded)
