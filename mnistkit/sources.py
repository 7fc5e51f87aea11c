"""Sources of the MNIST files: parse one, and copy one named object from gs://, http(s):// or a directory.

Each source only knows how to copy one object to a local path and raises on
any failure; `fetch` chooses among mirrors, retries and verifies. The helpers
at the end tell an unreachable source from one that answered.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import socket
import time
import urllib.parse
import urllib.request
from typing import Callable

from mnistkit import files
from mnistkit.idx import not_regular

_GCS_HOST = "storage.googleapis.com"
_READ_ONLY_SCOPE = "https://www.googleapis.com/auth/devstorage.read_only"

log = logging.getLogger(__name__)


class Refused(Exception):
    """A mirror refused access with every set of credentials tried; `code` is the HTTP status."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


class Unacceptable(Exception):
    """What a mirror holds under the name cannot be the file: larger than the file can be, or not a regular file.

    Another attempt at the same mirror would get the same, so the next mirror is tried. Without such a bound a
    mirror that sends an endless body, or a local source whose file is a link to /dev/zero, wrote until the disk
    was full, and the error then blamed the disk.
    """


def _too_large(where: str, name: str, limit: int, found: str) -> Unacceptable:
    return Unacceptable(f"{where}: size: expected at most {limit:,} bytes, found {found}; not {name}")


# --- Progress of a large download. -------------------------------------------------


class ProgressWriter:
    """A file-like sink that counts what it writes and logs bytes and rate every `interval` seconds."""

    def __init__(self, out, name: str, total: int | None = None, interval: float = 5.0, where: str = "",
                 limit: int | None = None):
        """`limit`: the most bytes `name` may have (raises Unacceptable past it); `where`: its source, for that."""
        self._out, self._name, self.total, self._interval = out, name, total, interval
        self._where, self._limit = where or name, limit
        self.written = 0
        self.started = self._last = time.monotonic()

    def write(self, data) -> int:
        if self._limit is not None and self.written + len(data) > self._limit:
            raise _too_large(self._where, self._name, self._limit,
                             f"more (at least {self.written + len(data):,})")
        count = self._out.write(data)
        self.written += len(data)
        now = time.monotonic()
        if now - self._last >= self._interval:
            self._last = now
            log.info("%s: %s", self._name, self.describe())
        return count

    def describe(self) -> str:
        """E.g. '4.2 of 9.9 MB (42%) at 2.1 MB/s'."""
        elapsed = max(time.monotonic() - self.started, 1e-6)
        done = f"{self.written / 1e6:.1f} MB"
        if self.total:
            done = f"{self.written / 1e6:.1f} of {self.total / 1e6:.1f} MB ({100 * self.written // self.total}%)"
        return f"{done} at {self.written / 1e6 / elapsed:.1f} MB/s"

    def flush(self) -> None:
        self._out.flush()

    def tell(self) -> int:
        return self._out.tell()


# --- Copying one object to a local path. ------------------------------------------


def _copy_local(base: str, name: str, dest: str, limit: int | None) -> None:
    path = os.path.join(base, name)
    found = not_regular(path)
    if found and found != "no such file":  # A missing file is a FileNotFoundError below, as the other mirrors' 404.
        raise Unacceptable(f"{path}: expected a regular file, found {found}")
    if not found and limit is not None and os.path.getsize(path) > limit:
        raise _too_large(path, name, limit, f"{os.path.getsize(path):,}")
    shutil.copyfile(path, dest)


def _copy_http(base: str, name: str, dest: str, progress_seconds: float, timeout_seconds: float,
               limit: int | None) -> None:
    url = urllib.parse.urljoin(base if base.endswith("/") else base + "/", name)
    with urllib.request.urlopen(url, timeout=timeout_seconds) as response, open(dest, "wb") as out:
        expected = response.headers.get("Content-Length")
        if expected and expected.isdigit() and limit is not None and int(expected) > limit:
            raise _too_large(url, name, limit, f"a Content-Length of {int(expected):,}")
        sink = ProgressWriter(out, name, int(expected) if expected else None, progress_seconds, url, limit)
        # http.client's read(amt) returns a short body without complaint when
        # the server hangs up early (seen on Python 3.11), so count the bytes;
        # the checksum catches what a lying Content-Length would hide.
        shutil.copyfileobj(response, sink, 1 << 20)
        if expected is not None and out.tell() != int(expected):
            raise OSError(f"{url}: body ended after {out.tell()} of the {expected} bytes announced")


def _describe_credentials(credentials) -> str:
    """Which Application Default Credentials google.auth found, in words a user can act on."""
    where = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    where = f"GOOGLE_APPLICATION_CREDENTIALS={where}" if where else "gcloud's application-default login or this VM"
    email = getattr(credentials, "service_account_email", None)
    kind = f"service account {email}" if email and email != "default" else type(credentials).__name__
    return f"Application Default Credentials ({kind}, from {where})"


def gcs_clients() -> list[tuple[str, object]]:
    """The storage clients to try in order, each with a description of its credentials.

    Application Default Credentials come first when google.auth finds any, so a
    team's private mirror works; anonymous access always follows, so a public
    bucket like CVDF's needs no account (and broken credentials do not stop it).
    The clients honour STORAGE_EMULATOR_HOST, which is how tests point them at
    a local emulator.
    """
    import google.auth  # Imported here: HTTP and local sources do not need it.
    from google.auth import exceptions
    from google.cloud import storage

    clients = []
    try:
        credentials, project = google.auth.default(scopes=[_READ_ONLY_SCOPE])
    except exceptions.DefaultCredentialsError:
        pass
    else:
        clients.append((_describe_credentials(credentials),
                        storage.Client(project=project or "<none>", credentials=credentials)))
    clients.append(("anonymous access" + ("" if clients else " (no Application Default Credentials found)"),
                    storage.Client.create_anonymous_client()))
    return clients


def _copy_gcs(base: str, name: str, dest: str, progress_seconds: float, timeout_seconds: float,
              clients: list, limit: int | None) -> None:
    from google.auth import exceptions

    bucket_name, _, prefix = base[len("gs://") :].partition("/")
    blob_name = f"{prefix.rstrip('/')}/{name}" if prefix.strip("/") else name
    refusals = []
    for description, client in clients:
        try:
            with open(dest, "wb") as out:
                sink = ProgressWriter(out, name, None, progress_seconds, f"gs://{bucket_name}/{blob_name}", limit)
                # retry=None: the client's own retry (a 120 s deadline) inside
                # our attempts would multiply them; only fetch_file retries.
                client.bucket(bucket_name).blob(blob_name).download_to_file(
                    sink, retry=None, timeout=(timeout_seconds, timeout_seconds))
            return
        except (exceptions.RefreshError, exceptions.TransportError) as e:
            # No token (refused, or its server out of reach): the next credentials may still read a public bucket.
            refusals.append(f"{description}: could not get a token ({unreachable(e, 'oauth2') or e})")
        except Exception as e:
            if getattr(e, "code", None) not in (401, 403):
                raise
            refusals.append(f"{description}: {e.code}")
    raise Refused(f"{base}{'' if base.endswith('/') else '/'}{name}: access refused with every credential tried: "
                   f"{'; '.join(refusals)}; use an account that may read the bucket "
                   "(gcloud auth application-default login, or GOOGLE_APPLICATION_CREDENTIALS=KEY.json)", 403)


def source_copier(source: str, progress_seconds: float = 5.0, timeout_seconds: float = 60.0,
                  limit_of: Callable[[str], int | None] = lambda name: None) -> Callable[[str, str], None]:
    """Returns the function that copies object `name` of one `source` (not a list) to a path.

    Args:
      source: gs://BUCKET[/PREFIX], an http(s):// base URL or a local directory.
      progress_seconds: How often a download in progress logs its bytes and rate.
      timeout_seconds: How long to wait to connect, and for each read.
      limit_of: The most bytes object `name` may have (None: no bound); past it the copy raises Unacceptable.
    """
    if source.startswith("gs://"):
        bucket = source[len("gs://") :].split("/")[0]
        if not files.is_bucket_name(bucket):  # Refused now, not after four attempts.
            raise ValueError(f"--source {source!r}: expected gs://BUCKET[/PREFIX], BUCKET {files.BUCKET_RULE}, found "
                             f"{'no bucket name' if not bucket else f'{bucket!r}'}")
        clients = []  # Made on first use: finding credentials is not free, and a list may never reach this source.

        def copy_gcs(name, dest):
            if not clients:
                clients.extend(gcs_clients())
            _copy_gcs(source, name, dest, progress_seconds, timeout_seconds, clients, limit_of(name))

        return copy_gcs
    if source.startswith(("http://", "https://")):
        host = urllib.parse.urlsplit(source).netloc
        if not host or re.search(r"\s", host):  # Refused now: urlopen failed on it four times ("no host given").
            raise ValueError(f"--source {source!r}: expected http(s)://HOST[/PATH], found "
                             f"{f'{host!r}, not a host' if host else 'no host'}")
        return lambda name, dest: _copy_http(source, name, dest, progress_seconds, timeout_seconds, limit_of(name))
    path = source[len("file://") :] if source.startswith("file://") else source
    if "://" in path:
        raise ValueError(f"--source {source!r}: expected gs://..., http(s)://... or a local directory")
    if not os.path.isdir(path):
        raise ValueError(f"--source {source!r}: expected an existing local directory, found none")
    return lambda name, dest: _copy_local(path, name, dest, limit_of(name))


def split_sources(source: str) -> list[str]:
    """The mirrors of a `--source` value: one source, or several separated by commas."""
    sources = [s.strip() for s in source.split(",")]
    if not all(sources):
        raise ValueError(f"--source {source!r}: expected one source or several separated by commas, "
                         "found an empty one")
    return sources


# --- Whether a source could be reached at all. -----------------------------------


def causes(error: BaseException):
    """`error` and everything it wraps: causes, contexts, urllib's and urllib3's `reason`, requests' first arg."""
    seen, todo = [], [error]
    while todo:
        e = todo.pop(0)
        if not isinstance(e, BaseException) or any(e is s for s in seen):
            continue
        seen.append(e)
        todo += [e.__cause__, e.__context__, getattr(e, "reason", None), *(e.args[:1] if e.args else ())]
    return seen


def _source_host(source: str) -> str:
    """The host a source's requests go to."""
    if not source.startswith("gs://"):
        return urllib.parse.urlparse(source).hostname or source
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    if not emulator:
        return _GCS_HOST
    return urllib.parse.urlparse(emulator if "://" in emulator else f"http://{emulator}").hostname or emulator


def unreachable(error: BaseException, source: str) -> str | None:
    """Why `source` cannot be reached at all ('HOST: name does not resolve'), or None when it can."""
    for e in causes(error):
        if isinstance(e, socket.gaierror):
            why = "name does not resolve"
        elif isinstance(e, ConnectionRefusedError):
            why = "connection refused, nothing listens there"
        elif isinstance(e, OSError) and e.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            why = "network unreachable"
        else:
            continue
        # urllib3 names the host it tried (perhaps an auth server rather than the mirror).
        host = next((m.group(1) for c in causes(error) for m in [re.search(r"host='([^']+)'", str(c))] if m), None)
        return f"{host or _source_host(source)}: {why}"
    return None
