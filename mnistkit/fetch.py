"""Fetching the four MNIST files from a mirror: verified, atomic, retried.

A source is a `gs://bucket/prefix`, an `http(s)://` base URL or a local
directory; each one only knows how to copy one named object to a local path.
Everything else (checksums, temporary files, retries) is shared.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable

from mnistkit import idx

DEFAULT_SOURCE = "gs://cvdf-datasets/mnist/"
_PARTIAL_PREFIX = ".partial-"

log = logging.getLogger(__name__)


class FetchError(RuntimeError):
    """A file could not be fetched and verified; names the file and the source."""


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- Sources: copy one object to a local path, raise on any failure. -------------


def _copy_local(base: str, name: str, dest: str) -> None:
    shutil.copyfile(os.path.join(base, name), dest)


def _copy_http(base: str, name: str, dest: str, timeout: float = 60.0) -> None:
    url = urllib.parse.urljoin(base if base.endswith("/") else base + "/", name)
    with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
        # http.client's read(amt) returns a short body without complaint when
        # the server hangs up early (seen on Python 3.11), so count the bytes;
        # the checksum catches what a lying Content-Length would hide.
        shutil.copyfileobj(response, out, 1 << 20)
        expected = response.headers.get("Content-Length")
        if expected is not None and out.tell() != int(expected):
            raise OSError(f"{url}: body ended after {out.tell()} of the {expected} bytes announced")


def _copy_gcs(base: str, name: str, dest: str) -> None:
    from google.cloud import storage  # Imported here: HTTP and local sources do not need it.

    bucket_name, _, prefix = base[len("gs://") :].partition("/")
    # The CVDF mirror is public: an anonymous client needs no account. The
    # client honours STORAGE_EMULATOR_HOST, which is how tests point it at a
    # local emulator.
    client = storage.Client.create_anonymous_client()
    blob_name = f"{prefix.rstrip('/')}/{name}" if prefix.strip("/") else name
    client.bucket(bucket_name).blob(blob_name).download_to_filename(dest)


def source_copier(source: str) -> Callable[[str, str], None]:
    """Returns the function that copies object `name` of `source` to a path."""
    if source.startswith("gs://"):
        if not source[len("gs://") :].split("/")[0]:
            raise ValueError(f"--source {source!r}: expected gs://BUCKET[/PREFIX], found no bucket name")
        return lambda name, dest: _copy_gcs(source, name, dest)
    if source.startswith(("http://", "https://")):
        return lambda name, dest: _copy_http(source, name, dest)
    path = source[len("file://") :] if source.startswith("file://") else source
    if "://" in path:
        raise ValueError(f"--source {source!r}: expected gs://..., http(s)://... or a local directory")
    if not os.path.isdir(path):
        raise ValueError(f"--source {source!r}: expected an existing local directory, found none")
    return lambda name, dest: _copy_local(path, name, dest)


# --- The shared part. -------------------------------------------------------------


@dataclasses.dataclass
class DownloadConfig:
    """What to fetch and how hard to try."""

    data_dir: str
    source: str = DEFAULT_SOURCE
    verify_checksums: bool = True
    attempts: int = 4
    backoff_seconds: float = 1.0  # Doubles after each failed attempt.
    files: tuple[str, ...] = idx.FILES


def _check(path: str, name: str, verify_checksums: bool) -> None:
    """Raises unless `path` holds what `name` should hold."""
    if verify_checksums:
        expected = idx.SHA256.get(name)
        if expected is None:
            raise FetchError(f"{name}: no known checksum; pass --noverify_checksums for other data")
        found = sha256_of(path)
        if found != expected:
            raise FetchError(f"{name}: sha256 expected {expected}, found {found}")
    else:
        # Without checksums, at least the IDX structure must hold.
        magic = idx.IMAGES_MAGIC if "images" in name else idx.LABELS_MAGIC
        try:
            idx.read_idx(path, magic)
        except idx.DataError as e:
            raise FetchError(f"{name}: not a valid IDX file ({e})") from e


def _remove_stale_partials(data_dir: str) -> None:
    for entry in os.listdir(data_dir):
        if entry.startswith(_PARTIAL_PREFIX):
            os.remove(os.path.join(data_dir, entry))


def _is_permanent(error: Exception) -> bool:
    """Whether another attempt cannot help: the mirror said the object is missing or refused (4xx but 408/429)."""
    if isinstance(error, (FileNotFoundError, IsADirectoryError, PermissionError)):
        return True  # A local source without the file.
    # urllib's HTTPError and google.api_core's errors both carry the HTTP status as `code`.
    code = getattr(error, "code", None)
    return isinstance(code, int) and 400 <= code < 500 and code not in (408, 429)


def fetch_file(copy: Callable[[str, str], None], name: str, config: DownloadConfig,
               sleep: Callable[[float], None] = time.sleep) -> str:
    """Fetches one file into `config.data_dir`, verified, or raises FetchError.

    The bytes go to a hidden temporary file beside the target and are renamed
    into place only once checked, so a reader never sees a partial file.
    """
    target = os.path.join(config.data_dir, name)
    if os.path.exists(target):
        try:
            _check(target, name, config.verify_checksums)
            log.info("%s: present and verified, not fetched again", name)
            return target
        except FetchError as e:
            log.warning("%s: present but bad (%s); fetching it again", name, e)
            os.remove(target)
    delay = config.backoff_seconds
    for attempt in range(1, config.attempts + 1):
        fd, partial = tempfile.mkstemp(prefix=f"{_PARTIAL_PREFIX}{name}.", dir=config.data_dir)
        os.close(fd)
        try:
            copy(name, partial)
            _check(partial, name, config.verify_checksums)
            os.chmod(partial, 0o644)
            os.replace(partial, target)
            log.info("%s: fetched from %s (attempt %d)", name, config.source, attempt)
            return target
        except Exception as e:  # Any other failure of a source is worth another try.
            error = e
            log.warning("%s: attempt %d of %d from %s failed: %s", name, attempt, config.attempts, config.source, e)
        finally:
            if os.path.exists(partial):
                os.remove(partial)
        if _is_permanent(error):
            raise FetchError(f"{name}: could not fetch it from {config.source}, which answered that it is missing "
                             f"or refused, so it was not retried; error: {error}") from error
        if attempt < config.attempts:
            sleep(delay)
            delay *= 2
    raise FetchError(
        f"{name}: could not fetch a verified copy from {config.source} after {config.attempts} attempts; "
        f"last error: {error}") from error


def download(config: DownloadConfig, sleep: Callable[[float], None] = time.sleep) -> dict[str, str]:
    """Fetches every file of `config` into `config.data_dir`.

    Returns:
      The SHA-256 of each file, by name.
    """
    if config.attempts < 1:
        raise ValueError(f"attempts: expected at least 1, found {config.attempts}")
    if os.path.exists(config.data_dir) and not os.path.isdir(config.data_dir):
        raise ValueError(f"--data_dir {config.data_dir!r}: expected a directory, found a file")
    copy = source_copier(config.source)
    os.makedirs(config.data_dir, exist_ok=True)
    _remove_stale_partials(config.data_dir)
    if not config.verify_checksums:
        log.warning("CHECKSUMS NOT VERIFIED: accepting any well-formed IDX files from %s", config.source)
    return {name: sha256_of(fetch_file(copy, name, config, sleep)) for name in config.files}

