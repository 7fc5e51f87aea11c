"""Reading and writing MNIST's IDX files, with errors that say what is wrong.

IDX is the format of the four MNIST files: a big-endian header (two zero
bytes, a type code, the number of dimensions, then each dimension as an
unsigned 32-bit integer) followed by the raw values. MNIST ships them gzipped.
"""

from __future__ import annotations

import dataclasses
import errno
import gzip
import math
import os
import stat
import struct
import zlib

import numpy as np

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions.
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension.
IMAGE_SIZE = 28
NUM_CLASSES = 10

GZIP_MAGIC = b"\x1f\x8b"
# Deflate's largest expansion: a 258-byte match coded in 2 bits. A gzip file of N
# bytes so holds at most this times N bytes, which bounds what a header may declare.
MAX_GZIP_RATIO = 1032


class DataError(ValueError):
    """Bad data: names the file, the field, what was expected and what was found."""

    def __init__(self, path: str | os.PathLike, field: str, expected, found):
        self.path = os.fspath(path)
        self.field = field
        self.expected = expected
        self.found = found
        # An empty path is shown as '' : a message starting ': data directory' named nothing.
        super().__init__(f"{self.path or repr(self.path)}: {field}: expected {expected}, found {found}")


@dataclasses.dataclass(frozen=True)
class Split:
    """One split of the data set: the file names of its images and labels."""

    name: str
    images: str
    labels: str
    size: int  # Examples in the canonical MNIST split.


TRAIN = Split("train", "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60_000)
TEST = Split("test", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10_000)
SPLITS = (TRAIN, TEST)
FILES = tuple(name for split in SPLITS for name in (split.images, split.labels))

# SHA-256 of the files the CVDF mirror serves (the original MNIST files).
SHA256 = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}

# Their sizes in bytes: a mirror that sends more is not sending the file (see sources.Unacceptable).
SIZES = {
    "train-images-idx3-ubyte.gz": 9_912_422,
    "train-labels-idx1-ubyte.gz": 28_881,
    "t10k-images-idx3-ubyte.gz": 1_648_877,
    "t10k-labels-idx1-ubyte.gz": 4_542,
}


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


_IDX_TYPES = {0x08: "unsigned bytes", 0x09: "signed bytes", 0x0B: "16-bit integers", 0x0C: "32-bit integers",
              0x0D: "32-bit floats", 0x0E: "64-bit floats"}


def describe_magic(value: int) -> str:
    """A magic number as printed in errors: the number, then what its four bytes are.

    2051 -> '2051 (0x00000803: an images file)'; a gzip stream inside the
    gzip file -> '529205256 (first bytes 1f 8b 08 08: gzip data, the file gzipped twice?)'.
    """
    head = value.to_bytes(4, "big", signed=True)
    if value in (IMAGES_MAGIC, LABELS_MAGIC):
        return f"{value} (0x{head.hex()}: {'an images' if value == IMAGES_MAGIC else 'a labels'} file)"
    if head[:2] == b"\0\0" and head[2] in _IDX_TYPES:
        unusual = "" if head[2] == 0x08 else ", not unsigned bytes"
        dimensions = f"{head[3]} dimension{'s' * (head[3] != 1)}"
        return f"{value} (0x{head.hex()}: IDX {_IDX_TYPES[head[2]]} in {dimensions}{unusual})"
    if head[:2] == GZIP_MAGIC:
        return f"{value} (first bytes {head.hex(' ')}: gzip data, the file gzipped twice?)"
    if all(32 <= byte < 127 for byte in head):
        return f"{value} (text {head.decode()!r}: not IDX data)"
    return f"{value} (first bytes {head.hex(' ')}: not IDX data)"


def not_regular(path: str | os.PathLike) -> str | None:
    """What is at `path` instead of a regular file ("no such file", "a FIFO (named pipe)"...), or None.

    Reading a FIFO or a device could block forever or never end, so callers
    check this before opening.
    """
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return "no such file"
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a loop of symbolic links"
        raise
    if stat.S_ISREG(mode):
        return None
    return next((kind for is_kind, kind in _KINDS if is_kind(mode)), "not a regular file")


def not_a_directory(path: str | os.PathLike) -> str:
    """What is at `path`, which is not a directory: "no such directory", "a file", "a FIFO (named pipe)"..."""
    found = not_regular(path)
    return "no such directory" if found == "no such file" else found or "a file"


def _open_gzip(path: str | os.PathLike):
    """Opens a gzipped IDX file for streaming, after checking it is a regular file that starts like gzip."""
    found = not_regular(path)
    if found:
        raise DataError(path, "file", "an existing file", found)
    with open(path, "rb") as f:
        start = f.read(2)
    if not start:
        raise DataError(path, "size", "a gzipped IDX file", "an empty file (0 bytes)")
    if start != GZIP_MAGIC:
        raise DataError(path, "format", "gzip data (first bytes 1f 8b)", f"first bytes {start.hex(' ')}")
    return gzip.open(path, "rb")


def _read(stream, path, size: int) -> bytes:
    """Reads up to `size` decompressed bytes, turning a broken gzip stream into a DataError."""
    try:
        return stream.read(size)
    except (EOFError, OSError, zlib.error) as e:
        raise DataError(path, "gzip stream", "a complete gzip stream", f"a broken one ({e})") from e


def iter_idx(path: str | os.PathLike, magic: int, chunk_bytes: int = 1 << 22):
    """Streams a gzipped IDX file of unsigned bytes: yields its shape first, then its values in chunks.

    Memory stays at one chunk whatever the file's size; the header and the
    length are checked exactly as `read_idx` checks them (the length once the
    stream ends), so a caller sees the same DataError either way.
    """
    with _open_gzip(path) as stream:
        head = _read(stream, path, 4)
        if len(head) < 4:
            raise DataError(path, "header", "at least 4 bytes", f"{len(head)} bytes")
        (found_magic,) = struct.unpack(">i", head)
        if found_magic != magic:
            raise DataError(path, "magic number", describe_magic(magic), describe_magic(found_magic))
        ndim = head[3]
        dims = _read(stream, path, 4 * ndim)
        if len(dims) < 4 * ndim:
            raise DataError(path, "header", f"{4 + 4 * ndim} bytes for {ndim} dimensions", f"{4 + len(dims)} bytes")
        shape = struct.unpack(f">{ndim}I", dims)
        header = 4 + 4 * ndim
        expected = math.prod(shape)  # Python ints: three dimensions of 2**32 - 1 overflow int64.
        # Refused before anyone allocates for it: a lying header must not cost memory.
        size = os.path.getsize(path)
        if header + expected > MAX_GZIP_RATIO * size:
            raise DataError(path, "length", f"at most {MAX_GZIP_RATIO * size} bytes (a gzip file of {size} bytes "
                            "holds no more)", f"a header declaring {header + expected} bytes for shape {shape}")
        yield shape
        seen = 0
        while chunk := _read(stream, path, chunk_bytes):
            seen += len(chunk)
            # Past the header's length, only count what is left (in chunks, for memory) to report it.
            if seen <= expected:
                yield np.frombuffer(chunk, dtype=np.uint8)
        if seen != expected:
            raise DataError(path, "length", f"{header + expected} bytes for shape {tuple(shape)}",
                            f"{header + seen} bytes")


def read_idx(path: str | os.PathLike, magic: int) -> np.ndarray:
    """Reads a gzipped IDX file of unsigned bytes and checks its header.

    Args:
      path: the `.gz` file.
      magic: IMAGES_MAGIC or LABELS_MAGIC; also fixes the number of dimensions.

    Returns:
      A uint8 array with the shape the header gives.

    Raises:
      DataError: the file is missing, not gzip, truncated, or its header does
        not match what `magic` asks for.
    """
    chunks = iter_idx(path, magic)
    shape = next(chunks)
    try:
        values = np.empty(math.prod(shape), dtype=np.uint8)
    except MemoryError:
        # More than this process may allocate (ulimit -v, a container's limit), though within what the gzip file
        # could hold. Read what is there instead: a header that lies is then refused by its length, naming the
        # file, and a file that truly holds that much runs out of memory below, as it must.
        return np.concatenate(list(chunks)).reshape(shape)
    filled = 0
    for chunk in chunks:
        values[filled:filled + len(chunk)] = chunk
        filled += len(chunk)
    return values.reshape(shape)


def read_shape(path: str | os.PathLike, magic: int) -> tuple[int, ...]:
    """The shape a gzipped IDX file's header gives, checked as `read_idx` checks it, without reading the values.

    The length is not checked (that takes reading the whole file): this is a
    quick look before a long job, not validation.
    """
    chunks = iter_idx(path, magic)
    try:
        return next(chunks)
    finally:
        chunks.close()


def read_images(path: str | os.PathLike) -> np.ndarray:
    """Reads an images file: uint8 [N, 28, 28]."""
    images = read_idx(path, IMAGES_MAGIC)
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(path, "image size", f"{IMAGE_SIZE}x{IMAGE_SIZE}", "x".join(map(str, images.shape[1:])))
    return images


def read_labels(path: str | os.PathLike) -> np.ndarray:
    """Reads a labels file: uint8 [N] with values in 0..9."""
    labels = read_idx(path, LABELS_MAGIC)
    if labels.size and labels.max() >= NUM_CLASSES:
        bad = int(np.argmax(labels >= NUM_CLASSES))
        raise DataError(path, "label", f"values in 0..{NUM_CLASSES - 1}", f"{int(labels[bad])} at index {bad}")
    return labels


def load_split(data_dir: str | os.PathLike, split: Split) -> tuple[np.ndarray, np.ndarray]:
    """Reads one split's images and labels and checks that their counts agree."""
    if not os.path.isdir(data_dir):
        raise DataError(data_dir, "data directory", "an existing directory", not_a_directory(data_dir))
    images_path = os.path.join(data_dir, split.images)
    images = read_images(images_path)
    labels = read_labels(os.path.join(data_dir, split.labels))
    if len(images) != len(labels):
        raise DataError(images_path, "count", f"{len(labels)} images, as many as {split.labels} has labels", len(images))
    if not len(images):  # Training or evaluating on nothing would "succeed" with a NaN accuracy.
        raise DataError(images_path, "count", "at least 1 example", 0)
    return images, labels


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Writes a uint8 array as a gzipped IDX file (tests and subsets use it)."""
    array = np.asarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    # mtime=0 keeps the bytes, and so the checksum, the same from run to run.
    with open(path, "wb") as f:
        f.write(gzip.compress(header + array.tobytes(), mtime=0))
