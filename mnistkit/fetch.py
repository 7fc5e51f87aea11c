"""Fetching the four MNIST files from a list of mirrors: verified, atomic, retried only when it can help.

A source (`mnistkit.sources`) is a `gs://bucket/prefix`, an `http(s)://` base
URL or a local directory; each one only knows how to copy one named object to a
local path. `--source` takes one source or several separated by commas, tried
in order for each file. Everything else (checksums, temporary files, retries,
the choice of the next mirror) is here.

Failures fall in four kinds, each handled once, here:
  * the machine's (full disk, read-only or vanished directory, too many open
    files): raised at once as an OSError naming the data directory;
  * an unreachable mirror (its name does not resolve, nothing listens): not
    retried, the next mirror is tried and this one is skipped for later files;
  * a mirror that answers that the file is missing or refused (4xx): the next
    mirror is tried for that file;
  * anything else (5xx, cut bodies, timeouts, wrong bytes): retried with
    backoff, then the next mirror.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import hashlib
import logging
import math
import os
import socket
import time
from typing import Callable

from mnistkit import files, idx, sources

# The CVDF bucket, its HTTPS form, and the mirror torchvision lists first. The
# checksums make any mirror as good as the original.
DEFAULT_SOURCES = (
    "gs://cvdf-datasets/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
)
# One string, so that it is also a single pipeline parameter.
DEFAULT_SOURCE = ",".join(DEFAULT_SOURCES)
# Errors of this machine, whatever the path: no other attempt or mirror can help.
_MACHINE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EMFILE, errno.ENFILE, errno.EDQUOT, errno.EFBIG, errno.EIO}
# Errors of this machine when they concern the data directory (elsewhere they are a local mirror's).
_PATH_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOTDIR}

log = logging.getLogger(__name__)


class FetchError(RuntimeError):
    """A file could not be fetched and verified; names the file and the source."""


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- Telling the kinds of failure apart. ------------------------------------------


def _machine_error(error: BaseException, data_dir: str) -> OSError | None:
    """The OSError of this machine inside `error` (full disk, vanished data dir...), or None."""
    data_dir = os.path.abspath(data_dir)
    for e in sources.causes(error):
        if not isinstance(e, OSError) or isinstance(e, socket.gaierror) or e.errno is None:
            continue
        if e.errno in _MACHINE_ERRNOS:
            return e
        if e.errno in _PATH_ERRNOS and e.filename and os.path.abspath(str(e.filename)).startswith(data_dir + os.sep):
            return e
    return None


def _is_permanent(error: Exception) -> bool:
    """Whether another attempt cannot help: the mirror said the object is missing or refused (4xx but 408/429),
    or what it holds cannot be the file."""
    if isinstance(error, (FileNotFoundError, IsADirectoryError, PermissionError)):
        return True  # A local source without the file.
    if any(isinstance(e, sources.Unacceptable) for e in sources.causes(error)):
        return True
    # urllib's HTTPError and google.api_core's errors both carry the HTTP status as `code`.
    code = getattr(error, "code", None)
    return isinstance(code, int) and 400 <= code < 500 and code not in (408, 429)


# --- The shared part. -------------------------------------------------------------


@dataclasses.dataclass
class DownloadConfig:
    """What to fetch and how hard to try."""

    data_dir: str
    source: str = DEFAULT_SOURCE  # One source, or several separated by commas.
    verify_checksums: bool = True
    attempts: int = 4  # Per file and mirror.
    backoff_seconds: float = 1.0  # Doubles after each failed attempt.
    files: tuple[str, ...] = idx.FILES
    progress_seconds: float = 5.0  # How often a download in progress logs its bytes and rate.
    timeout_seconds: float = 60.0  # To connect, and for each read; a mirror slower than that is retried.
    # No one else writes data_dir (a pipeline step's own output): every scratch file in it is a killed attempt's,
    # whatever host wrote it. Otherwise only those of dead writers on this host are removed.
    sole_writer: bool = False


# The most bytes a file may have when its checksum is not verified: 1 GiB of gzip holds millions of 28x28
# images, far more than any data set in MNIST's format, and stops a mirror that never stops sending.
MAX_UNVERIFIED_BYTES = 1 << 30
MAX_TIMEOUT_SECONDS = 86_400  # The longest timeout_seconds: a day.


def max_bytes(name: str, verify_checksums: bool = True) -> int:
    """The most bytes file `name` may have on a mirror: its own size when it is checked against its checksum."""
    return idx.SIZES.get(name, MAX_UNVERIFIED_BYTES) if verify_checksums else MAX_UNVERIFIED_BYTES


def _check(path: str, name: str, verify_checksums: bool) -> None:
    """Raises unless `path` holds what `name` should hold."""
    if verify_checksums:
        expected = idx.SHA256.get(name)
        if expected is None:
            raise FetchError(f"{name}: no known checksum; pass --noverify_checksums for other data")
        found = sha256_of(path)
        if found != expected:
            other = next((other for other, digest in idx.SHA256.items() if digest == found), None)
            said = f" (the checksum of MNIST's {other}: files swapped or renamed?)" if other else ""
            raise FetchError(f"{name}: sha256 expected {expected}, found {found}{said}")
    else:
        # Without checksums, at least what every other command checks of one file must hold: the IDX structure,
        # 28x28 images, labels 0-9. Said of `name`: `path` is a hidden scratch file the user never sees.
        read = idx.read_images if "images" in name else idx.read_labels
        try:
            read(path)
        except idx.DataError as e:
            raise FetchError(f"{name}: not a valid IDX file ({e.field}: expected {e.expected}, found {e.found})") from e


class _MirrorFailed(Exception):
    """One mirror could not deliver one file; `unreachable` when it could not be reached at all.

    `template` names the mirror as {mirror}: the mirror's URL when the message
    stands alone, 'it' in a list that already names each mirror.
    """

    def __init__(self, template: str, source: str, error: Exception, unreachable: bool = False):
        self.template, self.error, self.unreachable = template, error, unreachable
        super().__init__(self.say(source))

    def say(self, mirror: str) -> str:
        return self.template.format(mirror=mirror, error=self.error)


def _from_mirror(copy: Callable[[str, str], None], source: str, name: str, config: DownloadConfig,
                 sleep: Callable[[float], None]) -> str:
    """Fetches `name` from one mirror into `config.data_dir`, verified; raises _MirrorFailed or the machine's OSError.

    The bytes go to a hidden temporary file beside the target and are renamed
    into place only once checked, so a reader never sees a partial file.
    """
    target = os.path.join(config.data_dir, name)
    delay = config.backoff_seconds
    for attempt in range(1, config.attempts + 1):
        started = time.monotonic()
        try:
            with files.atomic_path(target) as partial:
                copy(name, partial)
                _check(partial, name, config.verify_checksums)
                os.chmod(partial, 0o644)
            seconds = time.monotonic() - started
            size = os.path.getsize(target)
            log.info("%s: fetched %.1f MB from %s in %.1f s (%.1f MB/s, attempt %d)", name, size / 1e6, source,
                     seconds, size / 1e6 / max(seconds, 1e-6), attempt)
            return target
        except Exception as e:  # Sorted below: the machine's, unreachable, refused, or worth another try.
            error = e
            machine = _machine_error(e, config.data_dir)
            if machine is not None:
                # Named after the data directory: the partial file's name means nothing to a user.
                raise OSError(machine.errno, f"{machine.strerror or os.strerror(machine.errno)} "
                                             f"(while writing {name})", config.data_dir) from e
            log.warning("%s: attempt %d of %d from %s failed: %s", name, attempt, config.attempts, source, e)
        unreachable = sources.unreachable(error, source)
        if unreachable:
            raise _MirrorFailed(f"could not reach {{mirror}} ({unreachable}), so it was not retried", source, error,
                                unreachable=True) from error
        if _is_permanent(error):
            raise _MirrorFailed("could not fetch it from {mirror}, which answered that it is missing "
                                "or refused, so it was not retried; error: {error}", source, error) from error
        if isinstance(error, FetchError) and "://" not in source:
            # A local directory gives the same bytes every time: another attempt would fail the same check.
            raise _MirrorFailed("the copy in {mirror} failed its check, so it was not retried; error: {error}",
                                source, error) from error
        if attempt < config.attempts:
            sleep(delay)
            delay *= 2
    raise _MirrorFailed(f"could not fetch a verified copy from {{mirror}} after {config.attempts} attempts; "
                        "last error: {error}", source, error) from error


def _present(name: str, config: DownloadConfig) -> str | None:
    """The path of `name` when it is already in the data dir and verified, else None.

    A bad copy stays until a verified one replaces it (`_from_mirror` renames over
    it): with every mirror out of reach, a usable non-canonical file is not lost.
    """
    target = os.path.join(config.data_dir, name)
    if os.path.exists(target):
        found = idx.not_regular(target)
        if found:  # Hashing a FIFO would wait forever for a writer.
            raise FetchError(f"{target}: expected a regular file, found {found}")
        try:
            _check(target, name, config.verify_checksums)
            log.info("%s: present and verified, not fetched again", name)
            return target
        except FetchError as e:
            log.warning("%s: present but bad (%s); fetching it again", name, e)
    return None


_NO_NETWORK_HINT = ("no network? give --source a local directory holding the four files, or another mirror "
                    "(several may be given, separated by commas)")


def fetch_from(mirrors: list[tuple[str, Callable[[str, str], None]]], name: str, config: DownloadConfig,
               sleep: Callable[[float], None] = time.sleep, dead: dict | None = None) -> str:
    """Fetches one file from the first of `mirrors` that delivers it verified; returns its path.

    Args:
      mirrors: (source, copy) pairs, tried in order.
      name: The file's name, on the mirrors and in `config.data_dir`.
      config: The data dir, checksums, attempts and backoff.
      sleep: Waits between attempts (tests pass a recorder).
      dead: Mirrors found unreachable, with their failure; filled here and
        skipped, so that later files do not try them again.

    Raises:
      FetchError: no mirror delivered; names each mirror tried and its error.
      OSError: an error of this machine (full disk...); filename is the data dir.
    """
    present = _present(name, config)
    if present:
        return present
    dead = {} if dead is None else dead
    failures = []
    for i, (source, copy) in enumerate(mirrors):
        if source in dead:
            failures.append((source, dead[source]))
            continue
        if failures:
            log.warning("%s: trying the next mirror, %s", name, source)
        try:
            return _from_mirror(copy, source, name, config, sleep)
        except _MirrorFailed as e:
            if e.unreachable:
                dead[source] = e
            failures.append((source, e))
            if i + 1 < len(mirrors):
                log.warning("%s: %s", name, e)
    hint = f"; {_NO_NETWORK_HINT}" if any(source in dead for source, _ in mirrors) else ""
    if len(mirrors) == 1:
        raise FetchError(f"{name}: {failures[0][1].say(failures[0][0])}{hint}")
    listed = " | ".join(f"{source}: {failure.say('it')}" for source, failure in failures)
    raise FetchError(f"{name}: could not fetch it from any of the {len(mirrors)} mirrors tried: {listed}{hint}")


def fetch_file(copy: Callable[[str, str], None], name: str, config: DownloadConfig,
               sleep: Callable[[float], None] = time.sleep) -> str:
    """Fetches one file from the single mirror `config.source` through `copy`, verified.

    Raises:
      FetchError: the mirror did not deliver a verified copy.
      OSError: an error of this machine (full disk...); filename is the data dir.
    """
    return fetch_from([(config.source, copy)], name, config, sleep)


def download(config: DownloadConfig, sleep: Callable[[float], None] = time.sleep) -> dict[str, str]:
    """Fetches every file of `config` into `config.data_dir`, each from the first mirror that has it.

    Returns:
      The SHA-256 of each file, by name.

    Raises:
      ValueError: a bad source, data dir or number of attempts.
      FetchError: a file no mirror delivered; names every mirror and its error.
      OSError: an error of this machine (full disk...); filename is the data dir.
    """
    if config.attempts < 1:
        raise ValueError(f"attempts: expected at least 1, found {config.attempts}")
    # NaN too: absl's lower bound lets it through. Past about 9.2e9 s a socket's timeout overflows, and every
    # attempt failed with the mirror blamed; a day is far beyond any wait worth making.
    if not 0 < config.timeout_seconds <= MAX_TIMEOUT_SECONDS:
        raise ValueError(f"timeout_seconds: expected a number of seconds above 0 and at most {MAX_TIMEOUT_SECONDS:,} "
                         f"(a day), found {config.timeout_seconds}")
    if os.path.exists(config.data_dir) and not os.path.isdir(config.data_dir):
        raise ValueError(f"--data_dir {config.data_dir!r}: expected a directory, found a file")
    limit_of = functools.partial(max_bytes, verify_checksums=config.verify_checksums)
    mirrors = [(source, sources.source_copier(source, config.progress_seconds, config.timeout_seconds, limit_of))
               for source in sources.split_sources(config.source)]
    os.makedirs(config.data_dir, exist_ok=True)
    files.sweep_leftovers(config.data_dir, every_writer=config.sole_writer)  # What killed downloads left.
    if not config.verify_checksums:
        log.warning("CHECKSUMS NOT VERIFIED: accepting any well-formed IDX files from %s", config.source)
    dead: dict[str, _MirrorFailed] = {}
    return {name: sha256_of(fetch_from(mirrors, name, config, sleep, dead)) for name in config.files}
