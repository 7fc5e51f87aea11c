"""Checking a data directory and writing a report of what it holds."""

from __future__ import annotations

import fractions
import hashlib
import json
import math
import os

import numpy as np

from mnistkit import fetch, files, idx


# A test split that shares more than this fraction of its images with the training split measures
# memory, not generalization: a copy of the training files, or a slice of them. MNIST's splits share
# none; a few shared images (blank ones, say) in data of one's own are let through.
MAX_SHARED_TEST_IMAGES = 0.01


def pixel_statistics(path: str, chunk_bytes: int = 1 << 22,
                     digests: list[bytes] | None = None) -> tuple[int, float, float]:
    """Streams an images file; returns (examples, mean, standard deviation) of its pixels scaled to [0, 1].

    The file is never held in memory: each chunk only adds to a histogram of
    the 256 byte values, from which the mean and the population standard
    deviation follow exactly (integer sums, one rounding at the end). Given
    `digests`, a 16-byte digest of each image is appended to it, in order.

    Raises:
      idx.DataError: as idx.read_images would, for the same file.
    """
    chunks = idx.iter_idx(path, idx.IMAGES_MAGIC, chunk_bytes)
    shape = next(chunks)
    if tuple(shape[1:]) != (idx.IMAGE_SIZE, idx.IMAGE_SIZE):
        raise idx.DataError(path, "image size", f"{idx.IMAGE_SIZE}x{idx.IMAGE_SIZE}", "x".join(map(str, shape[1:])))
    histogram = np.zeros(256, dtype=np.int64)
    partial = b""  # The start of an image the last chunk cut off.
    for chunk in chunks:
        histogram += np.bincount(chunk, minlength=256)
        if digests is not None:
            partial = _digest_images(memoryview(chunk), partial, digests)
    count = int(histogram.sum())
    if not count:
        return int(shape[0]), float("nan"), float("nan")
    values = np.arange(256, dtype=object)  # Python integers: the sums below are exact.
    total = int((histogram.astype(object) * values).sum())
    squares = int((histogram.astype(object) * values * values).sum())
    mean = fractions.Fraction(total, count * 255)
    variance = fractions.Fraction(squares, count * 255 * 255) - mean * mean
    return int(shape[0]), float(mean), math.sqrt(variance)


def _digest_images(chunk: memoryview, partial: bytes, digests: list[bytes]) -> bytes:
    """Appends the digest of each image `partial` + `chunk` completes; returns the start of the next one.

    Chunks end anywhere, so an image cut in two is finished from the next
    chunk. The chunk itself is only viewed, never copied.
    """
    image_bytes = idx.IMAGE_SIZE * idx.IMAGE_SIZE
    start = 0
    if partial:
        start = min(image_bytes - len(partial), len(chunk))
        partial += bytes(chunk[:start])
        if len(partial) < image_bytes:
            return partial
        digests.append(hashlib.blake2b(partial, digest_size=16).digest())
    whole = start + (len(chunk) - start) // image_bytes * image_bytes
    digests.extend(hashlib.blake2b(chunk[i:i + image_bytes], digest_size=16).digest()
                   for i in range(start, whole, image_bytes))
    return bytes(chunk[whole:])


def validate(data_dir: str, canonical: bool = True) -> dict:
    """Checks both splits in `data_dir` and returns a report of them.

    Images are streamed (pixel_statistics), so memory stays far below the
    size of the data: about 70 MB for MNIST's 47 MB of pixels.

    Args:
      data_dir: holds the four gzipped IDX files.
      canonical: also require MNIST's own sizes (60,000 and 10,000 examples).

    Raises:
      idx.DataError: naming the file, field, expected and found value.
    """
    if not os.path.isdir(data_dir):
        raise idx.DataError(data_dir, "data directory", "an existing directory", idx.not_a_directory(data_dir))
    report = {"data_dir": os.path.abspath(data_dir), "canonical": canonical, "splits": {}, "sha256": {}}
    digests = {}
    for split in idx.SPLITS:
        images_path = os.path.join(data_dir, split.images)
        digests[split.name] = []
        examples, mean, std = pixel_statistics(images_path, digests=digests[split.name])
        labels = idx.read_labels(os.path.join(data_dir, split.labels))
        if examples != len(labels):
            raise idx.DataError(images_path, "count", f"{len(labels)} images, as many as {split.labels} has labels",
                                examples)
        if canonical and examples != split.size:
            raise idx.DataError(images_path, "count", split.size, examples)
        if not examples:
            raise idx.DataError(images_path, "count", "at least 1 example", 0)
        if std == 0:  # Well-formed files of blank images (or all one grey) pass every structural check.
            raise idx.DataError(images_path, "pixels", "images that are not all one value",
                                f"every pixel of all {examples:,} images {round(mean * 255)}")
        counts = np.bincount(labels, minlength=idx.NUM_CLASSES)
        if canonical and not counts.all():  # MNIST's splits hold each digit 892 times or more.
            missing = ", ".join(str(digit) for digit in np.flatnonzero(counts == 0))
            raise idx.DataError(os.path.join(data_dir, split.labels), "labels", "every digit 0-9 at least once",
                                f"no {missing}")
        report["splits"][split.name] = {
            "examples": examples,
            "class_counts": counts.tolist(),
            "pixel_mean": mean,
            "pixel_std": std,
        }
        for name in (split.images, split.labels):
            report["sha256"][name] = fetch.sha256_of(os.path.join(data_dir, name))
    seen = set(digests[idx.TRAIN.name])
    shared = sum(digest in seen for digest in digests[idx.TEST.name])
    report["splits"][idx.TEST.name]["images_also_in_train"] = shared
    tested = report["splits"][idx.TEST.name]["examples"]
    if shared > MAX_SHARED_TEST_IMAGES * tested:
        raise idx.DataError(os.path.join(data_dir, idx.TEST.images), "images",
                            f"a test split apart from the training split (at most {MAX_SHARED_TEST_IMAGES:.0%} of its "
                            f"images also in {idx.TRAIN.images})",
                            f"{shared:,} of its {tested:,} images in it ({shared / tested:.1%}): the training files "
                            "copied, or a slice of them?")
    # Other bytes can be the same data (gzipped again, say), so a difference is reported, not refused; the
    # download step refuses it unless told --noverify_checksums.
    report["original_mnist"] = all(report["sha256"][name] == idx.SHA256[name] for name in idx.FILES)
    return report


def to_markdown(report: dict) -> str:
    """A short table of the report, for people (and KFP's Markdown viewer)."""
    lines = ["| split | examples | pixel mean | pixel std | examples per class 0-9 |",
             "|---|---:|---:|---:|---|"]
    for name, s in report["splits"].items():
        counts = ", ".join(str(c) for c in s["class_counts"])
        lines.append(f"| {name} | {s['examples']:,} | {s['pixel_mean']:.4f} | {s['pixel_std']:.4f} | {counts} |")
    shared = report["splits"].get(idx.TEST.name, {}).get("images_also_in_train")
    if shared is not None:  # Reports written before it was counted have none.
        lines += ["", f"Test images also in the training split: {shared:,}."]
    lines += ["", "| file | sha256 | the original MNIST file's |", "|---|---|---|"]
    lines += [f"| {name} | `{digest}` | {'yes' if digest == idx.SHA256.get(name) else 'no'} |"
              for name, digest in report["sha256"].items()]
    return "\n".join(lines) + "\n"


def write_report(report: dict, json_path: str | None = None, markdown_path: str | None = None) -> None:
    texts = ((json_path, json.dumps(report, indent=2) + "\n"), (markdown_path, to_markdown(report)))
    files.atomic_write_texts({path: text for path, text in texts if path})  # Both or neither.
