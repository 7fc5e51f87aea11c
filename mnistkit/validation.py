"""Checking a data directory and writing a report of what it holds."""

from __future__ import annotations

import json
import os

import numpy as np

from mnistkit import fetch, files, idx


def validate(data_dir: str, canonical: bool = True) -> dict:
    """Checks both splits in `data_dir` and returns a report of them.

    Args:
      data_dir: holds the four gzipped IDX files.
      canonical: also require MNIST's own sizes (60,000 and 10,000 examples).

    Raises:
      idx.DataError: naming the file, field, expected and found value.
    """
    report = {"data_dir": os.path.abspath(data_dir), "canonical": canonical, "splits": {}, "sha256": {}}
    for split in idx.SPLITS:
        images, labels = idx.load_split(data_dir, split)
        if canonical and len(images) != split.size:
            raise idx.DataError(os.path.join(data_dir, split.images), "count", split.size, len(images))
        if not len(images):
            raise idx.DataError(os.path.join(data_dir, split.images), "count", "at least 1 example", 0)
        pixels = images.astype(np.float64) / 255.0
        report["splits"][split.name] = {
            "examples": int(len(images)),
            "class_counts": np.bincount(labels, minlength=idx.NUM_CLASSES).tolist(),
            "pixel_mean": float(pixels.mean()),
            "pixel_std": float(pixels.std()),
        }
        for name in (split.images, split.labels):
            report["sha256"][name] = fetch.sha256_of(os.path.join(data_dir, name))
    return report


def to_markdown(report: dict) -> str:
    """A short table of the report, for people (and KFP's Markdown viewer)."""
    lines = ["| split | examples | pixel mean | pixel std | examples per class 0-9 |",
             "|---|---:|---:|---:|---|"]
    for name, s in report["splits"].items():
        counts = ", ".join(str(c) for c in s["class_counts"])
        lines.append(f"| {name} | {s['examples']:,} | {s['pixel_mean']:.4f} | {s['pixel_std']:.4f} | {counts} |")
    lines += ["", "| file | sha256 |", "|---|---|"]
    lines += [f"| {name} | `{digest}` |" for name, digest in report["sha256"].items()]
    return "\n".join(lines) + "\n"


def write_report(report: dict, json_path: str | None = None, markdown_path: str | None = None) -> None:
    for path, text in ((json_path, json.dumps(report, indent=2) + "\n"), (markdown_path, to_markdown(report))):
        if path:
            files.atomic_write_text(path, text)
