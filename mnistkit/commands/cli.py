"""What every `mnist-*` command shares: clean errors instead of tracebacks."""

import errno
import os
import sys

from absl import app, flags


class UserError(Exception):
    """An input a user gave is wrong; the message says which and why."""


def prog_name() -> str:
    """The command's name as users know it: `mnist-download` also under `python -m mnistkit.commands.download`."""
    name = os.path.basename(sys.argv[0])
    return f"mnist-{name[:-3]}" if name.endswith(".py") else name


# What to do about an error of the machine, by errno.
_HINTS = {
    errno.ENOSPC: "the disk is full: free some space or choose another directory",
    errno.EDQUOT: "the disk quota is used up: free some space or choose another directory",
    errno.EFBIG: "the file is larger than this file system allows: choose another directory",
    errno.EROFS: "the file system is read-only: choose a writable directory",
    errno.EACCES: "this user may not read or write there: fix its permissions or choose another path",
    errno.EPERM: "this user may not read or write there: fix its permissions or choose another path",
    errno.ENOENT: "it does not exist, or vanished while the command ran",
    errno.EMFILE: "the process ran out of file descriptors: raise the limit (ulimit -n) and run again",
    errno.ENFILE: "the system ran out of file descriptors: close other programs and run again",
    errno.EIO: "the device reported an input/output error: check the disk",
}


def say(text: str) -> None:
    """Prints a finished step's result (the path it wrote) on stdout; a reader that went away does not matter.

    The work is done: `mnist-export | head -0` failing at the print made a script that retries write a
    second version. Stdout then points at /dev/null, so that the interpreter's last flush stays quiet too.
    """
    try:
        print(text, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def describe_os_error(error: OSError) -> str:
    """'PATH: cause; what to do' for an error of the machine, or the error's own message when it has no cause."""
    if error.strerror is None:
        return str(error)  # A message written by this project, which already names the path.
    hint = _HINTS.get(error.errno)
    where = "" if error.filename is None else f"{error.filename}: "
    return f"{where}{error.strerror}" + (f"; {hint}" if hint else "")


# The flags that name a local path, in every command that has them. A gs:// value is read and written through
# Cloud Storage FUSE at /gcs, as Vertex AI mounts it (files.local_path); where no mount exists it is refused in
# one line before anything runs, rather than taken for a relative directory named "gs:".
PATH_FLAGS = ("data_dir", "model_dir", "export_dir", "output", "report_dir")


def _map_gcs_paths() -> None:
    from absl import flags

    from mnistkit import files

    for name in PATH_FLAGS:
        if name in flags.FLAGS and isinstance(flags.FLAGS[name].value, str):
            flags.FLAGS[name].value = files.local_path(flags.FLAGS[name].value, f"--{name}")


def run(main) -> None:
    """Runs an absl `main`, turning errors about inputs and of the machine into one line and exit 1.

    Errors of the machine (a full disk, a read-only or vanished directory, too
    many open files) arrive as OSError(errno, strerror, filename), whichever
    step of whichever command met them; they print as 'PATH: cause; hint'.
    """
    from mnistkit import fetch, idx  # Light modules: no TensorFlow.

    expected = (UserError, idx.DataError, fetch.FetchError, ValueError)

    def guarded(argv):
        try:
            _map_gcs_paths()
            return main(argv)
        except expected as e:
            print(f"{prog_name()}: error: {e}", file=sys.stderr)
            sys.exit(1)
        except OSError as e:
            print(f"{prog_name()}: error: {describe_os_error(e)}", file=sys.stderr)
            sys.exit(1)
        except MemoryError as e:  # An allocation past the address-space limit (ulimit -v, a container's memory).
            print(f"{prog_name()}: error: out of memory ({str(e) or 'MemoryError'}); free memory or raise the "
                  "process's limit (ulimit -v, the container's memory) and run again", file=sys.stderr)
            sys.exit(1)

    # absl's --help lists the flags of sys.argv[0]'s module: a console script's wrapper, which declares none.
    for flag in flags.FLAGS.get_key_flags_for_module(sys.modules[main.__module__]):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    app.run(guarded)
