"""Data that must cost neither a usable file, the memory, nor a hang: each case refused in one line by the commands."""

import os
import resource
import shutil
import stat
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest

from mnistkit import fetch, idx
from tests import synthetic
from tests.conftest import REPO
from tests.test_bad_inputs import error_line, run, write_raw

UNREACHABLE = "http://127.0.0.1:9/"  # Nothing listens on the discard port: an offline run.
# Bytes of address space: enough for a command, not for a file's worth of lies. TensorFlow reserves more
# address space than it uses, so commands that load it get a wider cap, still far below the 3 TiB lied about.
MEMORY_LIMIT = {"validate": 1_500_000_000, "train": 16_000_000_000}


def run_capped(*args):
    """Runs a Python command with its address space capped, so that a large allocation fails it."""
    limit = MEMORY_LIMIT[args[1].rsplit(".", 1)[-1]]

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120,
                          preexec_fn=cap)


def test_an_offline_download_keeps_a_present_file_until_a_verified_one_replaces_it(tmp_path, mnist_dir):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for name in idx.FILES:
        shutil.copyfile(os.path.join(mnist_dir, name), data_dir / name)
    name = idx.TEST.labels
    idx.write_idx(data_dir / name, synthetic.digits(50)[1])  # Well-formed, not MNIST's: a subset kept on purpose.
    ours = (data_dir / name).read_bytes()

    result = run("-m", "mnistkit.commands.download", "--data_dir", str(data_dir), "--source", UNREACHABLE)
    line = error_line(result, "mnist-download")
    assert line.startswith(f"mnist-download: error: {name}: could not reach {UNREACHABLE}"), line
    assert f"{name}: present but bad" in result.stderr
    assert (data_dir / name).read_bytes() == ours
    assert sorted(os.listdir(data_dir)) == sorted(idx.FILES)  # No partial download left either.

    # With a mirror in reach, the verified copy is renamed over it.
    fetch.download(fetch.DownloadConfig(data_dir=str(data_dir), source=mnist_dir))
    assert fetch.sha256_of(data_dir / name) == idx.SHA256[name]
    assert sorted(os.listdir(data_dir)) == sorted(idx.FILES)


@pytest.mark.parametrize("command, dims", [
    ("train", (0xFFFFFFFF, 28, 28)),  # Allocating what the header says would take 3 TiB.
    ("validate", (0xFFFFFFFF,) * 3),  # More than int64 holds: the size must not wrap.
])
def test_a_header_declaring_more_than_its_gzip_can_hold(command, dims, tmp_path):
    data_dir = synthetic.write_dataset(tmp_path / "data", n_train=20, n_test=10)
    path = os.path.join(data_dir, idx.TEST.images)
    write_raw(path, struct.pack(">i3I", idx.IMAGES_MAGIC, *dims))
    size = os.path.getsize(path)
    model_dir = tmp_path / "model"
    flags = ["--model_dir", str(model_dir)] if command == "train" else ["--nocanonical"]
    result = run_capped("-m", f"mnistkit.commands.{command}", "--data_dir", data_dir, *flags)
    declared = 16 + dims[0] * dims[1] * dims[2]
    assert error_line(result, f"mnist-{command}") == (
        f"mnist-{command}: error: {path}: length: expected at most {idx.MAX_GZIP_RATIO * size} bytes (a gzip file "
        f"of {size} bytes holds no more), found a header declaring {declared} bytes for shape {dims}")
    assert not model_dir.exists()


def test_a_header_lying_within_the_bound_is_named_where_memory_is_capped(tmp_path):
    """A header may declare up to MAX_GZIP_RATIO times its file; where the process may not allocate that much, the
    file's real length names the lie, where it said "out of memory ... raise the process's limit"."""
    data_dir = synthetic.write_dataset(tmp_path / "data", n_train=20, n_test=10)
    path = os.path.join(data_dir, idx.TRAIN.images)
    noise = np.random.default_rng(0).integers(0, 256, 20 << 20, dtype=np.uint8).tobytes()  # Incompressible.
    count = 22_000_000  # 17 GB declared: within the 20 MB file's bound, above the train command's cap.
    write_raw(path, struct.pack(">i3I", idx.IMAGES_MAGIC, count, 28, 28) + noise)
    assert 16 + count * 784 < idx.MAX_GZIP_RATIO * os.path.getsize(path)
    assert 16 + count * 784 > MEMORY_LIMIT["train"]
    result = run_capped("-m", "mnistkit.commands.train", "--data_dir", data_dir, "--model_dir", str(tmp_path / "m"))
    assert error_line(result, "mnist-train") == (
        f"mnist-train: error: {path}: length: expected {16 + count * 784} bytes for shape {(count, 28, 28)}, "
        f"found {16 + len(noise)} bytes")
    assert not (tmp_path / "m").exists()


def test_the_most_compressed_honest_file_is_within_the_bound(tmp_path):
    labels = np.zeros(10_000_000, dtype=np.uint8)
    path = tmp_path / "zeros.gz"
    write_raw(path, struct.pack(">iI", idx.LABELS_MAGIC, len(labels)) + labels.tobytes())  # Level 9: ~1030:1.
    assert os.path.getsize(path) * idx.MAX_GZIP_RATIO < 10_000_008 * 1.01  # Close to the bound indeed.
    np.testing.assert_array_equal(idx.read_labels(path), labels)


def test_a_file_far_longer_than_its_header_is_measured_in_bounded_memory(tmp_path):
    data_dir = synthetic.write_dataset(tmp_path / "data", n_train=20, n_test=10)
    path = os.path.join(data_dir, idx.TEST.labels)
    labels = synthetic.digits(10, 1)[1]
    excess = 1 << 30  # A GiB of zeros after the labels: more than the memory limit leaves to read it at once.
    gzip_stream = zlib.compressobj(1, zlib.DEFLATED, 31)  # wbits 31: a gzip header and trailer.
    with open(path, "wb") as f:
        f.write(gzip_stream.compress(struct.pack(">iI", idx.LABELS_MAGIC, 10) + labels.tobytes()))
        block = bytes(1 << 24)
        for _ in range(excess // len(block)):
            f.write(gzip_stream.compress(block))
        f.write(gzip_stream.flush())
    result = run_capped("-m", "mnistkit.commands.validate", "--data_dir", data_dir, "--nocanonical")
    assert error_line(result, "mnist-validate") == (
        f"mnist-validate: error: {path}: length: expected 18 bytes for shape (10,), found {18 + excess} bytes")


@pytest.mark.parametrize("command", ["download", "validate"])
def test_a_fifo_under_a_data_file_name_is_refused_without_hanging(command, tmp_path):
    data_dir = synthetic.write_dataset(tmp_path / "data", n_train=20, n_test=10)
    path = os.path.join(data_dir, idx.TRAIN.images)  # The first file either command opens.
    os.remove(path)
    os.mkfifo(path)
    flags = ["--source", UNREACHABLE] if command == "download" else ["--nocanonical"]
    line = error_line(run("-m", f"mnistkit.commands.{command}", "--data_dir", data_dir, *flags, timeout=30),
                      f"mnist-{command}")
    expected = "expected a regular file" if command == "download" else "file: expected an existing file"
    assert line == f"mnist-{command}: error: {path}: {expected}, found a FIFO (named pipe)"
    assert stat.S_ISFIFO(os.stat(path).st_mode)  # Left as it was.


@pytest.mark.parametrize("command", ["train", "evaluate", "validate"])
def test_an_empty_split_is_refused_the_same_way_by_each_command(command, tmp_path):
    data_dir = synthetic.write_dataset(tmp_path / "data", n_train=20, n_test=10)
    path = os.path.join(data_dir, idx.TEST.images)
    idx.write_idx(path, np.zeros((0, 28, 28)))
    idx.write_idx(os.path.join(data_dir, idx.TEST.labels), np.zeros(0))
    model_dir = tmp_path / "model"
    flags = {"train": ["--model_dir", str(model_dir)], "validate": ["--nocanonical"],
             "evaluate": ["--model_dir", str(model_dir)]}[command]
    if command == "evaluate":
        from mnistkit.model import create_model

        model_dir.mkdir()
        create_model("channels_last").save(model_dir / "model.keras")
    line = error_line(run("-m", f"mnistkit.commands.{command}", "--data_dir", data_dir, *flags), f"mnist-{command}")
    assert line == f"mnist-{command}: error: {path}: count: expected at least 1 example, found 0"
    if command == "evaluate":
        assert os.listdir(model_dir) == ["model.keras"]  # No metrics.json written.
    else:
        assert not model_dir.exists()
