"""Writing files so that a reader sees the old version or the new one, never half of one."""

import contextlib
import errno
import fcntl
import os
import re
import shutil
import socket
import uuid

# What every scratch file or directory of this project starts with: `<PREFIX><host>@<pid>-<token>-<name>`.
# The host and pid of its writer let a sweep tell a killed writer's leftovers from a live writer's work.
PREFIX = ".tmp-"


def scratch_path(directory: str, name: str) -> str:
    """A fresh path in `directory` for this process to write `name`'s next version at, before it is moved.

    It ends in `name`, so a writer that picks a format by extension (Keras's
    `.keras`) still does, and it carries this writer's host and pid for
    `sweep_leftovers`.
    """
    return os.path.join(directory, f"{PREFIX}{socket.gethostname()}@{os.getpid()}-{uuid.uuid4().hex[:8]}-{name}")


def remove(path: str) -> None:
    """Deletes a file or a directory tree; nothing when it is gone already."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


@contextlib.contextmanager
def atomic_path(path: str):
    """Yields a scratch path beside `path`; renames it over `path` when the block ends, removes it on failure.

    The block writes the scratch path (a file, or with a rename-capable file
    system a directory; for directories on Cloud Storage FUSE see
    `replace_dir`). A reader of `path` sees the old version or the new one,
    and a killed writer leaves only a scratch entry that `sweep_leftovers`
    removes. The directory of `path` must exist.
    """
    scratch = scratch_path(os.path.dirname(path) or ".", os.path.basename(path))
    try:
        yield scratch
        os.replace(scratch, path)
    except OSError as e:
        if e.filename == scratch and e.errno is not None:  # Name the file the user asked for, not the scratch.
            raise OSError(e.errno, e.strerror, path) from e
        raise
    finally:
        if os.path.lexists(scratch):
            remove(scratch)


def check_dir_path(path: str, what: str) -> None:
    """Raises ValueError unless `path` is a directory or one can be made there (its nearest existing parent is a
    directory): said before any work, instead of an OSError "File exists" at the end of it."""
    if not path.strip():  # A path of spaces would make a directory named " " in the working directory.
        raise ValueError(f"{what}: expected a directory, found {'an empty path' if not path else repr(path)}")
    existing = os.path.abspath(path)
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if os.path.islink(existing) and not os.path.exists(existing):
        raise ValueError(f"{what}: expected a directory, or a path where one can be made, found a symlink to a "
                         f"missing target: {existing} -> {os.readlink(existing)}")
    if not os.path.isdir(existing):
        raise ValueError(f"{what}: expected a directory, or a path where one can be made, found a file: {existing}")


@contextlib.contextmanager
def made_dir(path: str):
    """Makes directory `path` and its missing parents; when the block fails, removes those of them still empty.

    For a step that may find bad input only after making its output directory
    (bad data, a setting that does not fit the data): its failure leaves no
    empty directory behind, and never removes one it did not make or one that
    something was written to. Yields the directories it made, the deepest first.
    """
    missing, parent = [], os.path.abspath(path)
    while not os.path.isdir(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    os.makedirs(path, exist_ok=True)
    try:
        yield list(missing)
    except BaseException:
        for directory in missing:  # The deepest first.
            try:
                os.rmdir(directory)
            except OSError:  # Not empty (or gone): what is above it stays too.
                break
        raise


def atomic_write_text(path: str, text: str) -> None:
    """Writes `text` to `path` atomically (see `atomic_path`), creating its directory when missing."""
    atomic_write_texts({path: text})


def atomic_write_texts(texts: dict[str, str]) -> None:
    """Writes each text to its path; all are written before any replaces its file, so a full disk leaves every
    path as it was (a new metrics.json beside the old model's report would misdescribe both)."""
    with contextlib.ExitStack() as renames:
        for path, text in texts.items():
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            try:
                with open(renames.enter_context(atomic_path(path)), "w") as f:
                    f.write(text)
            except OSError as e:
                if e.filename is None and e.errno is not None:  # A write or close (a full disk) names no file.
                    raise OSError(e.errno, e.strerror, path) from e
                raise


def _writer(entry: str) -> int | None:
    """The pid of the writer on this host that named `entry` (see `scratch_path`), or None when it is not one."""
    mine = f"{PREFIX}{socket.gethostname()}@"  # '@' is never part of a host name, so no other host matches.
    if not entry.startswith(mine):
        return None
    pid = entry[len(mine):].partition("-")[0]
    return int(pid) if pid.isdigit() else None


def dead_writers_entry(entry: str) -> bool:
    """Whether `entry` is a scratch entry (see `scratch_path`) of a writer on this host that no longer runs.

    Call it before this process writes scratch entries of its own there: an entry with this process's own pid
    is taken for a dead writer's. That is a container restarted on the same host, where the new process often
    gets the old one's pid (the first few of a new PID namespace).
    """
    pid = _writer(entry)
    if pid is None:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # Alive, under another user.
    return False


def sweep_leftovers(directory: str, every_writer: bool = False) -> None:
    """Deletes the scratch entries (see `scratch_path`) in `directory` whose writer no longer runs.

    A killed process cannot clean up after itself, so the next one to write
    there does. Entries of live processes are left alone, and so are those of
    other hosts, which may share the directory and whose pids mean nothing here.

    Args:
      directory: Where to look; nothing happens when it does not exist.
      every_writer: Delete every scratch entry, whoever wrote it: for callers
        that know no other writer can be at work there (the chief before it
        trains into its own directories).
    """
    if not os.path.isdir(directory):
        return
    for entry in os.listdir(directory):
        if entry.startswith(PREFIX) and (every_writer or dead_writers_entry(entry)):
            remove(os.path.join(directory, entry))  # Another sweeper may have removed it first: no matter.


LOCK_FILE = ".lock"


@contextlib.contextmanager
def only_writer(directory: str, what: str):
    """While the block runs, holds `directory` against another process asking for it the same way.

    An advisory lock (flock) on `directory/.lock`: it goes with its holder, so a killed process never leaves
    it taken, and the file is removed when the block ends. Where the file system has no locks (Cloud Storage
    FUSE), nothing is held: there Vertex AI runs one job at a time per directory. Yields the lock file's path
    when the block's end removes it, else None.

    Raises:
      ValueError: another process holds it (named by its pid and host).
    """
    path = os.path.join(directory, LOCK_FILE)
    created = not os.path.lexists(path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:  # A read-only or full disk: the run's own first write will name it in its error.
        fd = None
    held = False
    if fd is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = True
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ValueError(f"{what} {directory}: expected no other run writing it, found one at work ({holder}); "
                             "wait for it to end, or use another directory") from None
        except OSError as e:
            if e.errno not in (errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOLCK):
                os.close(fd)
                raise
        if held:
            with contextlib.suppress(OSError):  # Who holds it, for a refused newcomer's message; a full disk may not.
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
    try:
        yield path if fd is not None and (held or created) else None
    finally:
        # Removed while still held (a newcomer that opened it just before takes an orphan: rare, harmless), or,
        # where nothing could be locked, when this run made it.
        if fd is not None and (held or created):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        if fd is not None:
            os.close(fd)


# Where Vertex AI mounts Cloud Storage in its containers (Cloud Storage FUSE): gs://BUCKET/PATH is /gcs/BUCKET/PATH.
GCS_FUSE_MOUNT = "/gcs"

# Cloud Storage bucket names (https://cloud.google.com/storage/docs/buckets#naming): 3-63 of [a-z0-9._-] starting
# and ending with a letter or digit; up to 222 when dotted, each dotted part at most 63; not starting with "goog",
# not containing "google" (or its misspelling "g00gle"), not an IP address in dotted-decimal form. One rule for
# every bucket the project is handed (sources, Vertex AI's gs:// directories, submit's roots): a name Cloud Storage
# would refuse is refused before anything runs, not after retries or once a job's machines are up.
_BUCKET_PART = r"[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?"
_BUCKET = re.compile(rf"[a-z0-9][a-z0-9_-]{{1,61}}[a-z0-9]|{_BUCKET_PART}(?:\.{_BUCKET_PART})+")
_IP_ADDRESS = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+")
BUCKET_RULE = ("a Cloud Storage bucket name (3-63 of [a-z0-9_-], or dotted parts of up to 63 each, not starting "
               "with 'goog', not containing 'google', not an IP address)")


def is_bucket_name(bucket: str) -> bool:
    """Whether Cloud Storage would take `bucket` as a bucket's name (BUCKET_RULE)."""
    return (bool(_BUCKET.fullmatch(bucket)) and len(bucket) <= 222 and not bucket.startswith("goog")
            and "google" not in bucket and "g00gle" not in bucket and not _IP_ADDRESS.fullmatch(bucket))


def local_path(uri: str, what: str) -> str:
    """`uri` as a path this process can open: gs://BUCKET/PATH becomes /gcs/BUCKET/PATH, other values stay.

    Vertex AI hands out gs:// URIs (AIP_CHECKPOINT_DIR, AIP_TENSORBOARD_LOG_DIR)
    and mounts Cloud Storage at /gcs with Cloud Storage FUSE, so the files are
    written through the mount with plain file operations.

    Args:
      uri: a local path or a gs:// URI.
      what: the flag or variable it came from, for the error message.

    Raises:
      ValueError: a blank value, or a gs:// URI where no Cloud Storage FUSE mount exists.
    """
    if not uri.strip():  # Blank spaces made a directory of that name in the working directory.
        raise ValueError(f"{what}: expected a path or a gs:// URI, found {uri!r}")
    if not uri.startswith("gs://"):
        return uri
    if not is_bucket_name(uri[len("gs://"):].split("/")[0]):
        # gs:///x would join to /x, outside the mount: the outputs would stay on the container's disk.
        raise ValueError(f"{what}: expected gs://BUCKET[/PATH], BUCKET {BUCKET_RULE}, found {uri!r}")
    if ".." in uri[len("gs://"):].split("/"):
        # gs://b/../../tmp/x joined to /tmp/x: the VM's own disk, gone when the job ends; or another bucket.
        raise ValueError(f"{what}: expected gs://BUCKET[/PATH] with no '..' part, found {uri!r}")
    if not os.path.ismount(GCS_FUSE_MOUNT):
        # A mount, not a directory: a local /gcs (made by a /gcs/... path on a machine without the mount) would
        # take the outputs onto this machine's disk.
        raise ValueError(f"{what}: expected a local path, or a gs:// URI where Cloud Storage FUSE is mounted at "
                         f"{GCS_FUSE_MOUNT} (as on Vertex AI), found {uri} and nothing mounted at {GCS_FUSE_MOUNT}")
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
