"""Validation: the report's figures (JSON and Markdown) and the refusal of data that is not MNIST's."""

import gzip
import hashlib
import json
import os
import shutil
import struct

import numpy as np
import pytest

from mnistkit import fetch, idx, validation
from tests import synthetic

# From ../shared/data/mnist/README.md.
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_report_of_synthetic_data(synthetic_data):
    report = validation.validate(synthetic_data, canonical=False)
    assert report["data_dir"] == os.path.abspath(synthetic_data)
    assert report["canonical"] is False
    for split, n, seed in ((idx.TRAIN, 600, 0), (idx.TEST, 200, 1)):
        images, labels = synthetic.digits(n, seed)
        figures = report["splits"][split.name]
        assert figures["examples"] == n
        assert figures["class_counts"] == [n // 10] * 10
        assert figures["pixel_mean"] == pytest.approx(images.mean() / 255.0, rel=1e-9)
        assert figures["pixel_std"] == pytest.approx((images / 255.0).std(), rel=1e-9)
    assert report["sha256"] == {name: fetch.sha256_of(os.path.join(synthetic_data, name)) for name in idx.FILES}


def test_report_of_the_real_data_is_canonical(mnist_dir):
    report = validation.validate(mnist_dir, canonical=True)
    assert report["splits"]["train"]["examples"] == 60_000
    assert report["splits"]["test"]["examples"] == 10_000
    assert report["splits"]["train"]["class_counts"] == TRAIN_COUNTS
    assert report["splits"]["test"]["class_counts"] == TEST_COUNTS
    # The normalisation constants every MNIST tutorial quotes.
    assert report["splits"]["train"]["pixel_mean"] == pytest.approx(0.1307, abs=1e-4)
    assert report["splits"]["train"]["pixel_std"] == pytest.approx(0.3081, abs=1e-4)
    assert report["sha256"] == idx.SHA256 and report["original_mnist"] is True
    assert report["splits"]["test"]["images_also_in_train"] == 0  # MNIST's splits share no image.
    markdown = validation.to_markdown(report)
    assert "| train | 60,000 | 0.1307 | 0.3081 |" in markdown and "| test | 10,000 |" in markdown
    assert all(f"| {name} | `{idx.SHA256[name]}` | yes |" in markdown.splitlines() for name in idx.FILES)


def test_json_and_markdown_reports(synthetic_data, tmp_path):
    report = validation.validate(synthetic_data, canonical=False)
    json_path, md_path = tmp_path / "r" / "report.json", tmp_path / "r" / "report.md"
    validation.write_report(report, str(json_path), str(md_path))

    assert json.loads(json_path.read_text()) == report
    markdown = md_path.read_text()
    lines = markdown.splitlines()
    assert lines[0].startswith("| split | examples | pixel mean | pixel std |")
    train = report["splits"]["train"]
    assert (f"| train | 600 | {train['pixel_mean']:.4f} | {train['pixel_std']:.4f} | "
            + ", ".join(["60"] * 10) + " |") in lines
    assert any(line.startswith("| test | 200 |") for line in lines)
    for name, digest in report["sha256"].items():
        assert f"| {name} | `{digest}` | no |" in lines  # Synthetic data: not the original MNIST files.
    assert report["original_mnist"] is False
    assert sorted(os.listdir(tmp_path / "r")) == ["report.json", "report.md"]  # No temporary files left.


@pytest.mark.parametrize("value", [0, 255])
def test_images_of_one_value_are_refused_in_either_mode(synthetic_data, tmp_path, value):
    """Well-formed files of blank images passed every structural check, and the report said valid."""
    data_dir = tmp_path / "data"
    shutil.copytree(synthetic_data, data_dir)
    images, _ = synthetic.digits(200, 1)
    idx.write_idx(data_dir / idx.TEST.images, np.full_like(images, value))
    with pytest.raises(idx.DataError) as e:
        validation.validate(str(data_dir), canonical=False)
    assert str(e.value) == (f"{data_dir / idx.TEST.images}: pixels: expected images that are not all one value, "
                            f"found every pixel of all 200 images {value}")


def test_canonical_refuses_labels_without_every_digit(tmp_path, mnist_dir):
    data_dir = tmp_path / "data"
    shutil.copytree(mnist_dir, data_dir)
    labels = idx.read_labels(os.path.join(mnist_dir, idx.TRAIN.labels))
    idx.write_idx(data_dir / idx.TRAIN.labels, np.where(np.isin(labels, (3, 7)), 0, labels).astype(np.uint8))
    with pytest.raises(idx.DataError) as e:
        validation.validate(str(data_dir), canonical=True)
    assert str(e.value) == f"{data_dir / idx.TRAIN.labels}: labels: expected every digit 0-9 at least once, found no 3, 7"
    assert validation.validate(str(data_dir), canonical=False)["original_mnist"] is False  # A subset may lack one.


def test_a_data_dir_that_is_a_file_or_a_link_loop_says_so(tmp_path, mnist_dir):
    """It said "found no such directory" of a file; a link loop gave the bare OS message."""
    path = os.path.join(mnist_dir, idx.TRAIN.labels)
    with pytest.raises(idx.DataError, match=r"data directory: expected an existing directory, found a file$"):
        validation.validate(path)
    with pytest.raises(idx.DataError, match=r"data directory: expected an existing directory, found a file$"):
        idx.load_split(path, idx.TEST)
    data_dir = tmp_path / "data"
    shutil.copytree(mnist_dir, data_dir)
    os.remove(data_dir / idx.TEST.labels)
    os.symlink(data_dir / idx.TEST.labels, data_dir / idx.TEST.labels)
    with pytest.raises(idx.DataError) as e:
        validation.validate(str(data_dir))
    assert str(e.value) == f"{data_dir / idx.TEST.labels}: file: expected an existing file, found a loop of symbolic links"


def test_canonical_refuses_a_subset(synthetic_data):
    with pytest.raises(idx.DataError) as e:
        validation.validate(synthetic_data, canonical=True)
    assert e.value.path == os.path.join(synthetic_data, idx.TRAIN.images)
    assert e.value.field == "count"
    assert str(e.value).endswith("count: expected 60000, found 600")


def test_canonical_refuses_a_short_test_split(tmp_path, mnist_dir):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for name in idx.TRAIN.images, idx.TRAIN.labels:
        shutil.copyfile(os.path.join(mnist_dir, name), data_dir / name)
    images, labels = synthetic.digits(10_001)
    idx.write_idx(data_dir / idx.TEST.images, images)
    idx.write_idx(data_dir / idx.TEST.labels, labels)
    with pytest.raises(idx.DataError) as e:
        validation.validate(str(data_dir))
    assert str(e.value) == f"{data_dir / idx.TEST.images}: count: expected 10000, found 10001"


def test_empty_split_is_refused_even_without_canonical(tmp_path):
    synthetic.write_dataset(tmp_path, n_train=10, n_test=10)
    idx.write_idx(tmp_path / idx.TEST.images, np.zeros((0, 28, 28), np.uint8))
    idx.write_idx(tmp_path / idx.TEST.labels, np.zeros((0,), np.uint8))
    with pytest.raises(idx.DataError) as e:
        validation.validate(str(tmp_path), canonical=False)
    assert str(e.value) == f"{tmp_path / idx.TEST.images}: count: expected at least 1 example, found 0"


@pytest.mark.parametrize("breakage, field", [
    ("bad_label", "label"),
    ("count_mismatch", "count"),
    ("missing", "file"),
    ("not_gzip", "format"),
])
def test_bad_data_names_the_file_and_field(tmp_path, breakage, field):
    synthetic.write_dataset(tmp_path, n_train=20, n_test=10)
    target = tmp_path / idx.TEST.labels
    if breakage == "bad_label":
        idx.write_idx(target, np.full(10, 11, np.uint8))
    elif breakage == "count_mismatch":
        idx.write_idx(target, np.zeros(9, np.uint8))
        target = tmp_path / idx.TEST.images
    elif breakage == "missing":
        target.unlink()
    else:
        target.write_bytes(b"plain text")
    with pytest.raises(idx.DataError) as e:
        validation.validate(str(tmp_path), canonical=False)
    assert e.value.path == str(target)
    assert e.value.field == field


@pytest.mark.parametrize("chunk_bytes", [1, 783, 1 << 22])
def test_streamed_pixel_statistics_are_exact_whatever_the_chunk(synthetic_data, chunk_bytes):
    """Validation streams the images in chunks; the figures must not depend on where chunks end."""
    path = os.path.join(synthetic_data, idx.TEST.images)
    images = idx.read_images(path).astype(np.int64)
    n = images.size
    # The exact figures, from integer sums (numpy's float64 mean may differ in the 17th digit).
    mean = images.sum() / (n * 255)
    std = np.sqrt(float((images ** 2).sum()) / (n * 255 * 255) - mean ** 2)
    examples, found_mean, found_std = validation.pixel_statistics(path, chunk_bytes=chunk_bytes)
    assert examples == 200
    assert found_mean == pytest.approx(mean, rel=1e-15)
    assert found_std == pytest.approx(std, rel=1e-12)


@pytest.mark.parametrize("chunk_bytes", [1, 783, 1 << 22])
def test_image_digests_do_not_depend_on_where_chunks_end(synthetic_data, chunk_bytes):
    path = os.path.join(synthetic_data, idx.TEST.images)
    expected = [hashlib.blake2b(image.tobytes(), digest_size=16).digest() for image in idx.read_images(path)]
    digests = []
    validation.pixel_statistics(path, chunk_bytes=chunk_bytes, digests=digests)
    assert digests == expected and len(set(digests)) == 200


def _test_split_of(data, images, labels):
    idx.write_idx(data / idx.TEST.images, images)
    idx.write_idx(data / idx.TEST.labels, labels)


def _with_test_split_from_train(data, train_slice) -> tuple[int, int]:
    """The test split made of `train_slice` of the training images, topped up to 200 with its own; (shared, all)."""
    synthetic.write_dataset(data)
    train_images, train_labels = idx.load_split(str(data), idx.TRAIN)
    test_images, test_labels = idx.load_split(str(data), idx.TEST)
    shared = len(train_images[train_slice])
    own = max(0, 200 - shared)
    idx.write_idx(data / idx.TEST.images, np.concatenate([train_images[train_slice], test_images[:own]]))
    idx.write_idx(data / idx.TEST.labels, np.concatenate([train_labels[train_slice], test_labels[:own]]))
    return shared, shared + own


@pytest.mark.parametrize("train_slice", [slice(0, 600), slice(100, 300), slice(0, 3)])
def test_a_test_split_taken_from_the_training_split_is_refused(tmp_path, train_slice):
    """The training files copied as the test split, or a slice of them: the accuracy would score memory."""
    shared, examples = _with_test_split_from_train(tmp_path, train_slice)
    with pytest.raises(idx.DataError) as e:
        validation.validate(str(tmp_path), canonical=False)
    assert str(e.value) == (
        f"{tmp_path / idx.TEST.images}: images: expected a test split apart from the training split (at most 1% of "
        f"its images also in train-images-idx3-ubyte.gz), found {shared} of its {examples} images in it "
        f"({shared / examples:.1%}): the training files copied, or a slice of them?")


def test_a_few_images_in_both_splits_are_let_through_and_counted(tmp_path):
    _with_test_split_from_train(tmp_path, slice(0, 2))  # 1% of 200.
    report = validation.validate(str(tmp_path), canonical=False)
    assert report["splits"]["test"]["images_also_in_train"] == 2
    assert "Test images also in the training split: 2." in validation.to_markdown(report)


def test_streamed_validation_refuses_a_file_longer_than_its_header(tmp_path):
    synthetic.write_dataset(tmp_path, n_train=20, n_test=10)
    target = tmp_path / idx.TEST.images
    images = idx.read_images(target)
    header = struct.pack(">HBB", 0, 0x08, 3) + struct.pack(">3I", 10, 28, 28)
    target.write_bytes(gzip.compress(header + images.tobytes() + b"\0" * 100))
    with pytest.raises(idx.DataError) as e:
        validation.validate(str(tmp_path), canonical=False)
    assert str(e.value) == f"{target}: length: expected {16 + 7840} bytes for shape (10, 28, 28), found {16 + 7940} bytes"
