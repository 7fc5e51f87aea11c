"""What every `mnist-*` command shares: clean errors instead of tracebacks."""

import os
import sys

from absl import app


class UserError(Exception):
    """An input a user gave is wrong; the message says which and why."""


def run(main) -> None:
    """Runs an absl `main`, turning errors about inputs into one line and exit 1."""
    from mnistkit import fetch, idx  # Light modules: no TensorFlow.

    expected = (UserError, idx.DataError, fetch.FetchError, ValueError, FileNotFoundError, PermissionError)

    def guarded(argv):
        try:
            return main(argv)
        except expected as e:
            prog = os.path.basename(sys.argv[0])
            print(f"{prog}: error: {e}", file=sys.stderr)
            sys.exit(1)

    app.run(guarded)
