"""Reading and writing MNIST's IDX files, with errors that say what is wrong.

IDX is the format of the four MNIST files: a big-endian header (two zero
bytes, a type code, the number of dimensions, then each dimension as an
unsigned 32-bit integer) followed by the raw values. MNIST ships them gzipped.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import struct
import zlib

import numpy as np

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions.
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension.
IMAGE_SIZE = 28
NUM_CLASSES = 10

GZIP_MAGIC = b"\x1f\x8b"


class DataError(ValueError):
    """Bad data: names the file, the field, what was expected and what was found."""

    def __init__(self, path: str | os.PathLike, field: str, expected, found):
        self.path = os.fspath(path)
        self.field = field
        self.expected = expected
        self.found = found
        super().__init__(f"{self.path}: {field}: expected {expected}, found {found}")


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


def _read_bytes(path: str | os.PathLike) -> bytes:
    """Returns the decompressed contents of a gzipped IDX file."""
    if not os.path.isfile(path):
        raise DataError(path, "file", "an existing file", "a directory" if os.path.isdir(path) else "no such file")
    with open(path, "rb") as f:
        raw = f.read()
    if not raw:
        raise DataError(path, "size", "a gzipped IDX file", "an empty file (0 bytes)")
    if raw[:2] != GZIP_MAGIC:
        raise DataError(path, "format", "gzip data (first bytes 1f 8b)", f"first bytes {raw[:2].hex(' ')}")
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as e:
        raise DataError(path, "gzip stream", "a complete gzip stream", f"a broken one ({e})") from e


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
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(path, "header", "at least 4 bytes", f"{len(data)} bytes")
    (found_magic,) = struct.unpack(">i", data[:4])
    if found_magic != magic:
        raise DataError(path, "magic number", magic, found_magic)
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(path, "header", f"{header} bytes for {ndim} dimensions", f"{len(data)} bytes")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(data) != expected:
        raise DataError(path, "length", f"{expected} bytes for shape {tuple(shape)}", f"{len(data)} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


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
        raise DataError(data_dir, "data directory", "an existing directory", "no such directory")
    images_path = os.path.join(data_dir, split.images)
    images = read_images(images_path)
    labels = read_labels(os.path.join(data_dir, split.labels))
    if len(images) != len(labels):
        raise DataError(images_path, "count", f"{len(labels)} images, as many as {split.labels} has labels", len(images))
    return images, labels


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Writes a uint8 array as a gzipped IDX file (tests and subsets use it)."""
    array = np.asarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    # mtime=0 keeps the bytes, and so the checksum, the same from run to run.
    with open(path, "wb") as f:
        f.write(gzip.compress(header + array.tobytes(), mtime=0))
