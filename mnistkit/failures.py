"""How training fails: its error types, and the TensorFlow errors that mean a lost peer or a refused write."""

from __future__ import annotations

import contextlib
import errno
import os
import re

import tensorflow as tf


class Interrupted(Exception):
    """Training stopped on SIGTERM after saving a checkpoint; rerun to resume."""


class PeerFailure(RuntimeError):
    """A multi-worker run lost a peer (it died or stopped answering); rerun every worker to resume."""


class Diverged(RuntimeError):
    """The training loss became NaN or infinite; nothing was saved from the diverged steps."""


# What a collective raises when a peer dies (Unavailable: connection reset),
# hangs past the collective timeout (DeadlineExceeded) or was aborted.
PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError,
               tf.errors.AbortedError)

# What the machine, not the input, can refuse while a file is written; TF reports them as text.
_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.ENOENT, errno.ENOTDIR, errno.EMFILE, errno.ENFILE,
                errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG)


@contextlib.contextmanager
def disk_errors(path: str):
    """Re-raises a failed write under `path` as OSError(errno, strerror, path), however it was reported.

    Python's own writes often leave the file name out, and TensorFlow raises
    OpErrors (ResourceExhaustedError for a full disk, PermissionDeniedError
    for a read-only one, ...) whose message ends in the C library's strerror:
    the errno is recovered from that text so callers can print one line.

    Args:
      path: The file or directory being written, named in the OSError.
    """
    try:
        yield
    except OSError as e:
        # Python's writes may name no file, or a temporary sibling that is gone by now: name the real one.
        if e.errno is None or e.filename == path:
            raise
        raise OSError(e.errno, e.strerror, path) from e
    except PEER_ERRORS:
        raise
    except tf.errors.OpError as e:
        message = re.sub(r"\s*\[Op:\w+\]\s*$", "", e.message)
        for code in _DISK_ERRNOS:
            if message.endswith(os.strerror(code)) or f"; {os.strerror(code)}" in message:
                raise OSError(code, os.strerror(code), path) from e
        raise


def first_line(e: BaseException) -> str:
    """The first line of an error's message, without TF's decorations ({{function_node ...}}, [Op:...])."""
    text = re.sub(r"\s*\[Op:\w+\]", "", re.sub(r"\{\{function_node [^}]*\}\}\s*", "", str(e)))
    return (text.strip().splitlines() or [type(e).__name__])[0]
