"""IDX files: a round trip, and every kind of bad file named with its field, expectation and finding."""

import gzip
import os
import struct

import numpy as np
import pytest

from mnistkit import idx
from tests import synthetic


def _write_raw(path, payload: bytes, compress: bool = True) -> str:
    with open(path, "wb") as f:
        f.write(gzip.compress(payload, mtime=0) if compress else payload)
    return str(path)


def _header(magic: int, *dims: int) -> bytes:
    return struct.pack(">i", magic) + struct.pack(f">{len(dims)}I", *dims)


def _assert_names(error: idx.DataError, path, field: str, expected, found) -> None:
    """The message a user sees names the file, the field, what was expected and what was found."""
    assert error.path == os.fspath(path)
    assert error.field == field
    message = str(error)
    assert message.startswith(os.fspath(path) + ": " + field + ": ")
    assert f"expected {expected}" in message, message
    assert f"found {found}" in message, message


def test_round_trip_keeps_values_shape_and_magic(tmp_path):
    images, labels = synthetic.digits(37, seed=3)
    idx.write_idx(tmp_path / "i.gz", images)
    idx.write_idx(tmp_path / "l.gz", labels)

    np.testing.assert_array_equal(idx.read_images(tmp_path / "i.gz"), images)
    np.testing.assert_array_equal(idx.read_labels(tmp_path / "l.gz"), labels)
    raw = gzip.decompress((tmp_path / "i.gz").read_bytes())
    assert struct.unpack(">iIII", raw[:16]) == (idx.IMAGES_MAGIC, 37, 28, 28)
    assert struct.unpack(">i", gzip.decompress((tmp_path / "l.gz").read_bytes())[:4]) == (idx.LABELS_MAGIC,)


def test_write_is_byte_for_byte_reproducible(tmp_path):
    images, _ = synthetic.digits(5)
    idx.write_idx(tmp_path / "a.gz", images)
    idx.write_idx(tmp_path / "b.gz", images)
    assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()


def test_load_split_reads_the_real_file_names(synthetic_data):
    images, labels = idx.load_split(synthetic_data, idx.TEST)
    assert images.shape == (200, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (200,) and set(labels.tolist()) == set(range(10))


def test_wrong_magic(tmp_path):
    images, _ = synthetic.digits(4)
    path = tmp_path / "labels.gz"
    idx.write_idx(path, images)  # An images file where labels belong.
    with pytest.raises(idx.DataError) as e:
        idx.read_labels(path)
    _assert_names(e.value, path, "magic number", idx.LABELS_MAGIC, idx.IMAGES_MAGIC)


@pytest.mark.parametrize("inside, found", [
    (gzip.compress(_header(idx.IMAGES_MAGIC, 1, 28, 28) + bytes(784)),
     "529205248 (first bytes 1f 8b 08 00: gzip data, the file gzipped twice?)"),
    (b"<!DOCTYPE html><title>404</title>", "1008813135 (text '<!DO': not IDX data)"),
    (_header(0x0D03, 1, 28, 28) + bytes(4 * 784), "3331 (0x00000d03: IDX 32-bit floats in 3 dimensions, not "
                                                  "unsigned bytes)"),
    (_header(0x0801, 784) + bytes(784), "2049 (0x00000801: a labels file)"),
], ids=["gzipped twice", "an HTML page", "float32 values", "a labels file"])
def test_a_wrong_magic_number_says_what_the_file_holds(tmp_path, inside, found):
    """The four bytes read as a number mean nothing to a reader; what they look like does."""
    path = _write_raw(tmp_path / "images.gz", inside)
    with pytest.raises(idx.DataError) as e:
        idx.read_images(path)
    assert str(e.value) == f"{path}: magic number: expected 2051 (0x00000803: an images file), found {found}"


def test_truncated_data_inside_a_complete_gzip_stream(tmp_path):
    path = _write_raw(tmp_path / "short.gz", _header(idx.IMAGES_MAGIC, 3, 28, 28) + bytes(2 * 28 * 28))
    with pytest.raises(idx.DataError) as e:
        idx.read_images(path)
    _assert_names(e.value, path, "length", f"{16 + 3 * 784} bytes for shape (3, 28, 28)", f"{16 + 2 * 784} bytes")


def test_truncated_gzip_stream(tmp_path):
    images, _ = synthetic.digits(20)
    idx.write_idx(tmp_path / "full.gz", images)
    full = (tmp_path / "full.gz").read_bytes()
    path = _write_raw(tmp_path / "cut.gz", full[: len(full) // 2], compress=False)
    with pytest.raises(idx.DataError) as e:
        idx.read_images(path)
    _assert_names(e.value, path, "gzip stream", "a complete gzip stream", "a broken one")


def test_truncated_header(tmp_path):
    path = _write_raw(tmp_path / "h.gz", _header(idx.IMAGES_MAGIC, 3, 28, 28)[:10])
    with pytest.raises(idx.DataError) as e:
        idx.read_images(path)
    _assert_names(e.value, path, "header", "16 bytes for 3 dimensions", "10 bytes")


def test_not_gzip(tmp_path):
    path = _write_raw(tmp_path / "plain.gz", _header(idx.LABELS_MAGIC, 1) + b"\x03", compress=False)
    with pytest.raises(idx.DataError) as e:
        idx.read_labels(path)
    _assert_names(e.value, path, "format", "gzip data (first bytes 1f 8b)", "first bytes 00 00")


def test_empty_file(tmp_path):
    path = _write_raw(tmp_path / "empty.gz", b"", compress=False)
    with pytest.raises(idx.DataError) as e:
        idx.read_labels(path)
    _assert_names(e.value, path, "size", "a gzipped IDX file", "an empty file (0 bytes)")


def test_missing_file(tmp_path):
    path = tmp_path / "nothing.gz"
    with pytest.raises(idx.DataError) as e:
        idx.read_images(path)
    _assert_names(e.value, path, "file", "an existing file", "no such file")


def test_a_directory_where_a_file_belongs(tmp_path):
    path = tmp_path / "dir.gz"
    path.mkdir()
    with pytest.raises(idx.DataError) as e:
        idx.read_images(path)
    _assert_names(e.value, path, "file", "an existing file", "a directory")


def test_missing_data_directory(tmp_path):
    path = tmp_path / "no-such-dir"
    with pytest.raises(idx.DataError) as e:
        idx.load_split(path, idx.TRAIN)
    _assert_names(e.value, path, "data directory", "an existing directory", "no such directory")


def test_labels_outside_0_to_9(tmp_path):
    labels = np.array([0, 9, 3, 10, 200], dtype=np.uint8)
    path = tmp_path / "labels.gz"
    idx.write_idx(path, labels)
    with pytest.raises(idx.DataError) as e:
        idx.read_labels(path)
    _assert_names(e.value, path, "label", "values in 0..9", "10 at index 3")


def test_image_and_label_counts_disagree(tmp_path):
    images, labels = synthetic.digits(12)
    idx.write_idx(tmp_path / idx.TEST.images, images)
    idx.write_idx(tmp_path / idx.TEST.labels, labels[:10])
    with pytest.raises(idx.DataError) as e:
        idx.load_split(tmp_path, idx.TEST)
    _assert_names(e.value, tmp_path / idx.TEST.images, "count",
                  f"10 images, as many as {idx.TEST.labels} has labels", "12")


def test_wrong_image_size(tmp_path):
    path = tmp_path / "big.gz"
    idx.write_idx(path, np.zeros((3, 32, 32), dtype=np.uint8))
    with pytest.raises(idx.DataError) as e:
        idx.read_images(path)
    _assert_names(e.value, path, "image size", "28x28", "32x32")



def test_an_empty_path_is_named_as_such():
    """`mnist-train --data_dir ""` said ': data directory: ...', naming nothing."""
    error = idx.DataError("", "data directory", "an existing directory", "no such directory")
    assert str(error) == "'': data directory: expected an existing directory, found no such directory"
