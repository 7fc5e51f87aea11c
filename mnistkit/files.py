"""Writing files so that a reader sees the old version or the new one, never half of one."""

import contextlib
import errno
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


# Where Vertex AI mounts Cloud Storage in its containers (Cloud Storage FUSE): gs://BUCKET/PATH is /gcs/BUCKET/PATH.
GCS_FUSE_MOUNT = "/gcs"


def local_path(uri: str, what: str) -> str:
    """`uri` as a path this process can open: gs://BUCKET/PATH becomes /gcs/BUCKET/PATH, other values stay.

    Vertex AI hands out gs:// URIs (AIP_CHECKPOINT_DIR, AIP_TENSORBOARD_LOG_DIR)
    and mounts Cloud Storage at /gcs with Cloud Storage FUSE, so the files are
    written through the mount with plain file operations.

    Args:
      uri: a local path or a gs:// URI.
      what: the flag or variable it came from, for the error message.

    Raises:
      ValueError: a gs:// URI where no Cloud Storage FUSE mount exists.
    """
    if not uri.startswith("gs://"):
        return uri
    if not os.path.isdir(GCS_FUSE_MOUNT):
        raise ValueError(f"{what}: expected a local path, or a gs:// URI where Cloud Storage FUSE is mounted at "
                         f"{GCS_FUSE_MOUNT} (as on Vertex AI), found {uri} and no {GCS_FUSE_MOUNT}")
    return os.path.join(GCS_FUSE_MOUNT, uri[len("gs://"):])


# How a file system refuses to rename a directory. Cloud Storage FUSE answers ENOSYS or ENOTSUP unless it is
# mounted with --rename-dir-limit, and even then refuses a directory that holds subdirectories.
_DIR_RENAME_REFUSED = (errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EPERM)


def replace_dir(src: str, dst: str, last: str) -> None:
    """Moves the directory `src` to `dst`, which must not exist; a reader never sees half of it.

    One rename where the file system renames directories (atomic on a local
    disk). Where it refuses (Cloud Storage FUSE on Vertex AI), `dst` is made
    and the files are moved into it one at a time, since file renames work
    there, with `last` (a path relative to `src`) moved after all the others:
    a reader that trusts `dst` only once `last` is in it sees the whole
    directory or nothing. If a move fails, `dst` is removed again.
    """
    try:
        os.rename(src, dst)
        return
    except OSError as e:
        if e.errno not in _DIR_RENAME_REFUSED:
            raise
    os.mkdir(dst)  # FileExistsError rather than mixing two directories.
    try:
        moves = []
        for root, _, names in os.walk(src):
            relative = os.path.relpath(root, src)
            os.makedirs(os.path.join(dst, relative), exist_ok=True)
            moves += [os.path.normpath(os.path.join(relative, name)) for name in names]
        for name in sorted(moves, key=lambda m: m == os.path.normpath(last)):
            os.replace(os.path.join(src, name), os.path.join(dst, name))
    except BaseException:
        shutil.rmtree(dst, ignore_errors=True)
        raise
    shutil.rmtree(src, ignore_errors=True)


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
