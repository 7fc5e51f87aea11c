"""Writing files so that a reader sees the old version or the new one, never half of one."""

import contextlib
import os
import shutil
import socket
import tempfile


def atomic_write_text(path: str, text: str) -> None:
    """Writes `text` to a temporary file beside `path`, then renames it over `path`."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def writer_suffix() -> str:
    """'-<host>-<pid>': ends the name of a scratch file or directory, so a later run can tell whose it is."""
    return f"-{socket.gethostname()}-{os.getpid()}"


def remove_dead_writers_leftovers(directory: str, prefix: str) -> None:
    """Deletes `directory`'s entries named `<prefix>...<writer_suffix()>` whose writer no longer runs.

    A killed process cannot clean up after itself, so the next one to write
    there does. Entries of live processes are left alone, and so are those of
    other hosts, which may share the directory and whose pids mean nothing here.
    """
    host = socket.gethostname()
    for entry in os.listdir(directory):
        rest, _, pid = entry.rpartition("-")
        if not (entry.startswith(prefix) and rest.endswith(f"-{host}") and pid.isdigit()):
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            path = os.path.join(directory, entry)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):  # Another writer swept it first.
                    os.remove(path)
        except PermissionError:
            pass  # Alive, under another user.
