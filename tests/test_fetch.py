"""Download: every kind of source, checksums, atomic writes, retries with backoff, no refetching."""

import http.server
import logging
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from mnistkit import fetch, files, idx
from tests import synthetic
from tests.conftest import serve_directory, upload_dir

LABELS = ("train-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte.gz")  # The small real files.


def _counting_handler(requests: list, fail=None):
    """An HTTP handler that records each GET and may answer `fail(name, nth_request_for_name)` as an error status."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            name = self.path.split("?")[0].rsplit("/", 1)[-1]
            requests.append(name)
            status = fail(name, requests.count(name)) if fail else None
            if status:
                self.send_error(status)
            else:
                super().do_GET()

    return Handler


def _leftovers(data_dir) -> list[str]:
    return sorted(os.listdir(data_dir)) if os.path.isdir(data_dir) else []


@pytest.fixture()
def labels_source(tmp_path, mnist_dir) -> str:
    """A local mirror holding only the two (small) real label files."""
    source = tmp_path / "mirror"
    source.mkdir()
    for name in LABELS:
        shutil.copyfile(os.path.join(mnist_dir, name), source / name)
    return str(source)


def _assert_all_four_verified(data_dir, sums):
    assert sums == idx.SHA256
    assert _leftovers(data_dir) == sorted(idx.FILES)
    for name in idx.FILES:
        assert fetch.sha256_of(os.path.join(data_dir, name)) == idx.SHA256[name]


def test_local_directory_source(tmp_path, mnist_dir):
    data_dir = tmp_path / "data"
    sums = fetch.download(fetch.DownloadConfig(data_dir=str(data_dir), source=mnist_dir))
    _assert_all_four_verified(data_dir, sums)


def test_file_url_source(tmp_path, labels_source):
    data_dir = tmp_path / "data"
    sums = fetch.download(fetch.DownloadConfig(data_dir=str(data_dir), source="file://" + labels_source,
                                               files=LABELS))
    assert sums == {name: idx.SHA256[name] for name in LABELS}


def test_http_source(tmp_path, mnist_dir):
    data_dir = tmp_path / "data"
    requests = []
    with serve_directory(mnist_dir, _counting_handler(requests)) as url:
        sums = fetch.download(fetch.DownloadConfig(data_dir=str(data_dir), source=url))
    _assert_all_four_verified(data_dir, sums)
    assert sorted(requests) == sorted(idx.FILES)


def test_gcs_source_through_the_emulator(tmp_path, gcs_mnist):
    assert gcs_mnist == "gs://cvdf-datasets/mnist/"
    data_dir = tmp_path / "data"
    sums = fetch.download(fetch.DownloadConfig(data_dir=str(data_dir), source=gcs_mnist))
    _assert_all_four_verified(data_dir, sums)


def test_gcs_source_without_a_trailing_slash_or_prefix(tmp_path, gcs_emulator, labels_source):
    upload_dir("mnistkit-test-flat", "deep/prefix", labels_source)
    data_dir = tmp_path / "data"
    sums = fetch.download(fetch.DownloadConfig(data_dir=str(data_dir), source="gs://mnistkit-test-flat/deep/prefix",
                                               files=LABELS))
    assert sums == {name: idx.SHA256[name] for name in LABELS}


def test_gcs_missing_object_names_file_and_source(tmp_path, gcs_emulator, labels_source):
    upload_dir("mnistkit-test-partial", "mnist", labels_source)
    data_dir = tmp_path / "data"
    sleeps = []
    with pytest.raises(fetch.FetchError) as e:
        fetch.download(fetch.DownloadConfig(data_dir=str(data_dir), source="gs://mnistkit-test-partial/mnist/",
                                            attempts=2), sleep=sleeps.append)
    message = str(e.value)
    assert message.startswith("train-images-idx3-ubyte.gz: could not fetch it from gs://mnistkit-test-partial/mnist/, "
                              "which answered that it is missing or refused, so it was not retried; error: 404")
    assert sleeps == []  # A missing object is not worth a backoff.
    assert _leftovers(data_dir) == []


def test_synthetic_data_fails_checksums_and_leaves_nothing(tmp_path):
    source = synthetic.write_dataset(tmp_path / "mirror", n_train=20, n_test=10)
    data_dir = tmp_path / "data"
    with pytest.raises(fetch.FetchError) as e:
        fetch.download(fetch.DownloadConfig(data_dir=str(data_dir), source=source, attempts=1))
    message = str(e.value)
    assert message.startswith("train-images-idx3-ubyte.gz:")
    assert f"sha256 expected {idx.SHA256['train-images-idx3-ubyte.gz']}, found " in message
    assert source in message
    assert _leftovers(data_dir) == []


def test_noverify_checksums_accepts_synthetic_data_and_warns_loudly(tmp_path, caplog):
    source = synthetic.write_dataset(tmp_path / "mirror", n_train=20, n_test=10)
    data_dir = tmp_path / "data"
    with caplog.at_level(logging.WARNING, logger="mnistkit.fetch"):
        sums = fetch.download(fetch.DownloadConfig(data_dir=str(data_dir), source=source, verify_checksums=False))
    assert "CHECKSUMS NOT VERIFIED" in caplog.text
    assert source in caplog.text
    assert sums == {name: fetch.sha256_of(os.path.join(source, name)) for name in idx.FILES}
    assert _leftovers(data_dir) == sorted(idx.FILES)


def test_noverify_checksums_still_rejects_files_that_are_not_idx(tmp_path):
    source = tmp_path / "mirror"
    source.mkdir()
    (source / "t10k-labels-idx1-ubyte.gz").write_bytes(b"<html>not found</html>")
    data_dir = tmp_path / "data"
    with pytest.raises(fetch.FetchError) as e:
        fetch.download(fetch.DownloadConfig(data_dir=str(data_dir), source=str(source), verify_checksums=False,
                                            files=("t10k-labels-idx1-ubyte.gz",), attempts=1))
    assert "t10k-labels-idx1-ubyte.gz: not a valid IDX file" in str(e.value)
    assert "format: expected gzip data" in str(e.value)
    assert _leftovers(data_dir) == []


@pytest.mark.parametrize("name, bad, said", [
    (idx.TEST.labels, np.array([3, 10, 1], np.uint8), "label: expected values in 0..9, found 10 at index 1"),
    (idx.TEST.images, np.zeros((2, 27, 28), np.uint8), "image size: expected 28x28, found 27x28"),
])
def test_noverify_checksums_refuses_what_every_other_command_refuses(tmp_path, name, bad, said):
    """Without checksums a download took labels of 10 and 27x28 images, which validate and train then refused;
    and its messages named the hidden scratch file the bytes were in, which the user never sees."""
    source = tmp_path / "mirror"
    source.mkdir()
    idx.write_idx(source / name, bad)
    with pytest.raises(fetch.FetchError) as e:
        fetch.download(fetch.DownloadConfig(data_dir=str(tmp_path / "data"), source=str(source),
                                            verify_checksums=False, files=(name,)))
    assert f"error: {name}: not a valid IDX file ({said})" in str(e.value)
    assert ".tmp-" not in str(e.value)
    assert _leftovers(tmp_path / "data") == []


def test_a_swapped_file_is_named_by_its_checksum(tmp_path, mnist_dir):
    source = tmp_path / "mirror"
    source.mkdir()
    shutil.copyfile(os.path.join(mnist_dir, idx.TEST.labels), source / idx.TRAIN.labels)
    with pytest.raises(fetch.FetchError) as e:
        fetch.download(fetch.DownloadConfig(data_dir=str(tmp_path / "data"), source=str(source),
                                            files=(idx.TRAIN.labels,)))
    assert (f"found {idx.SHA256[idx.TEST.labels]} (the checksum of MNIST's {idx.TEST.labels}: files swapped or "
            "renamed?)") in str(e.value)


def test_a_loop_of_symbolic_links_in_a_local_mirror_is_not_retried(tmp_path, labels_source):
    name = LABELS[0]
    odd = tmp_path / "odd"
    odd.mkdir()
    os.symlink(odd / "b", odd / "a")
    os.symlink(odd / "a", odd / "b")
    os.symlink(odd / "a", odd / name)
    sleeps = []
    with pytest.raises(fetch.FetchError) as e:
        fetch.download(fetch.DownloadConfig(data_dir=str(tmp_path / "data"), source=str(odd), files=(name,)),
                       sleep=sleeps.append)
    assert f"{odd / name}: expected a regular file, found a loop of symbolic links" in str(e.value)
    assert sleeps == []


def test_present_and_verified_file_is_not_fetched_again(tmp_path, labels_source):
    data_dir = tmp_path / "data"
    requests = []
    with serve_directory(labels_source, _counting_handler(requests)) as url:
        fetch.download(fetch.DownloadConfig(data_dir=str(data_dir), source=url, files=LABELS))
        assert sorted(requests) == sorted(LABELS)
        mtimes = {n: os.stat(data_dir / n).st_mtime_ns for n in LABELS}
        sums = fetch.download(fetch.DownloadConfig(data_dir=str(data_dir), source=url, files=LABELS))
    assert sorted(requests) == sorted(LABELS), "the second download asked the mirror again"
    assert sums == {name: idx.SHA256[name] for name in LABELS}
    assert {n: os.stat(data_dir / n).st_mtime_ns for n in LABELS} == mtimes


def test_present_file_works_after_the_source_lost_it(tmp_path, labels_source):
    data_dir = tmp_path / "data"
    fetch.download(fetch.DownloadConfig(data_dir=str(data_dir), source=labels_source, files=LABELS))
    for name in LABELS:
        os.remove(os.path.join(labels_source, name))
    sums = fetch.download(fetch.DownloadConfig(data_dir=str(data_dir), source=labels_source, files=LABELS, attempts=1))
    assert sums == {name: idx.SHA256[name] for name in LABELS}


def test_present_but_corrupt_file_is_fetched_again(tmp_path, labels_source):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    name = LABELS[1]
    (data_dir / name).write_bytes(b"garbage")
    sums = fetch.download(fetch.DownloadConfig(data_dir=str(data_dir), source=labels_source, files=(name,)))
    assert sums == {name: idx.SHA256[name]}
    assert fetch.sha256_of(data_dir / name) == idx.SHA256[name]


def test_wrong_bytes_are_retried_with_backoff_then_fail_leaving_nothing(tmp_path, labels_source):
    name = LABELS[1]
    # The mirror serves a well-formed labels file with the wrong contents.
    idx.write_idx(os.path.join(labels_source, name), synthetic.digits(10)[1])
    data_dir = tmp_path / "data"
    requests, sleeps = [], []
    with serve_directory(labels_source, _counting_handler(requests)) as url:
        with pytest.raises(fetch.FetchError) as e:
            fetch.download(fetch.DownloadConfig(data_dir=str(data_dir), source=url, files=(name,), attempts=4,
                                                backoff_seconds=0.5), sleep=sleeps.append)
    assert requests == [name] * 4
    assert sleeps == [0.5, 1.0, 2.0]
    message = str(e.value)
    assert message.startswith(f"{name}: could not fetch a verified copy from {url} after 4 attempts")
    assert f"sha256 expected {idx.SHA256[name]}" in message
    assert _leftovers(data_dir) == []


def test_wrong_bytes_in_a_local_directory_are_not_retried(tmp_path, labels_source):
    name = LABELS[1]
    idx.write_idx(os.path.join(labels_source, name), synthetic.digits(10)[1])  # The same bytes every time.
    data_dir, sleeps = tmp_path / "data", []
    with pytest.raises(fetch.FetchError) as e:
        fetch.download(fetch.DownloadConfig(data_dir=str(data_dir), source=labels_source, files=(name,),
                                            attempts=4, backoff_seconds=0.5), sleep=sleeps.append)
    assert sleeps == []
    assert str(e.value).startswith(f"{name}: the copy in {labels_source} failed its check, so it was not retried; "
                                   f"error: {name}: sha256 expected {idx.SHA256[name]}")
    assert _leftovers(data_dir) == []


def test_transient_http_errors_are_retried_until_the_file_arrives(tmp_path, labels_source):
    data_dir = tmp_path / "data"
    requests, sleeps = [], []
    handler = _counting_handler(requests, fail=lambda name, n: 503 if n <= 2 else None)
    with serve_directory(labels_source, handler) as url:
        sums = fetch.download(fetch.DownloadConfig(data_dir=str(data_dir), source=url, files=LABELS,
                                                   backoff_seconds=0.25), sleep=sleeps.append)
    assert sums == {name: idx.SHA256[name] for name in LABELS}
    assert requests == [LABELS[0]] * 3 + [LABELS[1]] * 3
    assert sleeps == [0.25, 0.5, 0.25, 0.5]  # The backoff starts over for each file.
    assert _leftovers(data_dir) == sorted(LABELS)


def test_http_404_names_the_file_and_the_source_and_is_not_retried(tmp_path, labels_source):
    data_dir = tmp_path / "data"
    requests, sleeps = [], []
    with serve_directory(labels_source, _counting_handler(requests)) as url:
        with pytest.raises(fetch.FetchError) as e:
            fetch.download(fetch.DownloadConfig(data_dir=str(data_dir), source=url, attempts=4), sleep=sleeps.append)
    message = str(e.value)
    assert message.startswith(f"train-images-idx3-ubyte.gz: could not fetch it from {url}, which answered that it "
                              "is missing or refused, so it was not retried; error: HTTP Error 404")
    assert requests == ["train-images-idx3-ubyte.gz"] and sleeps == []
    assert _leftovers(data_dir) == []


def test_a_truncated_http_body_is_retried_and_never_lands(tmp_path, labels_source):
    name = LABELS[0]
    requests = []

    class Truncating(http.server.SimpleHTTPRequestHandler):
        """Announces the whole file but closes the connection halfway through it, every time."""

        def do_GET(self):
            requests.append(name)
            body = open(os.path.join(labels_source, name), "rb").read()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True

    data_dir = tmp_path / "data"
    with serve_directory(labels_source, Truncating) as url:
        with pytest.raises(fetch.FetchError) as e:
            fetch.download(fetch.DownloadConfig(data_dir=str(data_dir), source=url, files=(name,), attempts=3),
                           sleep=lambda s: None)
    assert len(requests) == 3
    assert name in str(e.value)
    assert _leftovers(data_dir) == []


class _Endless(http.server.SimpleHTTPRequestHandler):
    """Answers every GET with a gzip start and then zeros that never end, announcing `length` bytes if set."""

    length = None
    requests: list = []

    def do_GET(self):
        self.requests.append(self.path)
        self.send_response(200)
        if self.length is not None:
            self.send_header("Content-Length", str(self.length))
        self.end_headers()
        try:
            self.wfile.write(b"\x1f\x8b")
            while True:
                self.wfile.write(bytes(1 << 16))
        except OSError:  # The client hung up.
            pass


@pytest.mark.parametrize("length", [None, 10**12], ids=["no length", "a length of 1 TB"])
def test_a_mirror_sending_more_than_the_file_is_left_for_the_next(tmp_path, labels_source, length):
    """A body longer than the file's known size is refused as soon as it passes that size (or announces more), not
    written until the disk is full; the mirror is not retried, and the next mirror delivers."""
    name = LABELS[0]
    handler = type("Endless", (_Endless,), {"length": length, "requests": []})
    data_dir = tmp_path / "data"
    with serve_directory(labels_source, handler) as url:
        sums = fetch.download(fetch.DownloadConfig(data_dir=str(data_dir), source=f"{url},{labels_source}",
                                                   files=(name,)), sleep=lambda s: None)
        with pytest.raises(fetch.FetchError) as e:
            fetch.download(fetch.DownloadConfig(data_dir=str(tmp_path / "alone"), source=url, files=(name,)),
                           sleep=lambda s: None)
    assert sums == {name: idx.SHA256[name]}
    assert _leftovers(data_dir) == [name]
    assert len(handler.requests) == 2  # Once per download: not retried.
    found = "found more" if length is None else f"found a Content-Length of {length:,}"
    assert f"{url}{name}: size: expected at most {idx.SIZES[name]:,} bytes, {found}" in str(e.value)
    assert "so it was not retried" in str(e.value)
    assert _leftovers(tmp_path / "alone") == []


def test_without_checksums_a_download_still_has_a_bound(tmp_path, labels_source, monkeypatch):
    monkeypatch.setattr(fetch, "MAX_UNVERIFIED_BYTES", 1 << 20)
    handler = type("Endless", (_Endless,), {"requests": []})
    with serve_directory(labels_source, handler) as url:
        with pytest.raises(fetch.FetchError, match=r"size: expected at most 1,048,576 bytes, found more"):
            fetch.download(fetch.DownloadConfig(data_dir=str(tmp_path / "data"), source=url, files=LABELS[:1],
                                                verify_checksums=False), sleep=lambda s: None)
    assert _leftovers(tmp_path / "data") == []


def test_a_local_mirror_whose_file_is_not_a_regular_file_is_left_for_the_next(tmp_path, labels_source):
    """A link to /dev/zero in a local source used to be copied until the disk was full."""
    name = LABELS[0]
    odd = tmp_path / "odd"
    odd.mkdir()
    os.symlink("/dev/zero", odd / name)
    data_dir = tmp_path / "data"
    sums = fetch.download(fetch.DownloadConfig(data_dir=str(data_dir), source=f"{odd},{labels_source}",
                                               files=(name,)), sleep=lambda s: None)
    assert sums == {name: idx.SHA256[name]}
    with pytest.raises(fetch.FetchError) as e:
        fetch.download(fetch.DownloadConfig(data_dir=str(tmp_path / "alone"), source=str(odd), files=(name,)))
    assert f"{odd / name}: expected a regular file, found a character device" in str(e.value)
    assert _leftovers(tmp_path / "alone") == []


def test_a_gcs_object_larger_than_the_file_is_refused(tmp_path, gcs_emulator, labels_source):
    name = LABELS[0]
    big = tmp_path / "big"
    big.mkdir()
    (big / name).write_bytes(b"\x1f\x8b" + bytes(idx.SIZES[name] + 5000))
    upload_dir("mnistkit-test-big", "mnist", str(big))
    with pytest.raises(fetch.FetchError) as e:
        fetch.download(fetch.DownloadConfig(data_dir=str(tmp_path / "data"), source="gs://mnistkit-test-big/mnist",
                                            files=(name,)), sleep=lambda s: None)
    assert (f"gs://mnistkit-test-big/mnist/{name}: size: expected at most {idx.SIZES[name]:,} bytes, found more"
            in str(e.value))
    assert "so it was not retried" in str(e.value)
    assert _leftovers(tmp_path / "data") == []


def test_the_known_sizes_are_the_real_files(mnist_dir):
    assert {name: os.path.getsize(os.path.join(mnist_dir, name)) for name in idx.FILES} == idx.SIZES


def test_an_interrupted_attempt_leaves_no_partial_file(tmp_path, labels_source):
    name = LABELS[0]
    data_dir = tmp_path / "data"
    data_dir.mkdir()

    def copy_then_interrupt(n, dest):
        # Half a file on disk, then the user presses Ctrl-C.
        with open(dest, "wb") as f:
            f.write(open(os.path.join(labels_source, n), "rb").read()[:1000])
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fetch.fetch_file(copy_then_interrupt, name, fetch.DownloadConfig(data_dir=str(data_dir)))
    assert _leftovers(data_dir) == []


def test_partials_left_by_a_killed_run_are_removed(tmp_path, labels_source):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # Its pid names a writer that no longer runs.
    (data_dir / f".tmp-{socket.gethostname()}@{gone.pid}-abc123-t10k-labels-idx1-ubyte.gz").write_bytes(b"half")
    fetch.download(fetch.DownloadConfig(data_dir=str(data_dir), source=labels_source, files=LABELS))
    assert _leftovers(data_dir) == sorted(LABELS)


def test_a_pipeline_step_clears_what_a_killed_attempt_on_another_host_left(tmp_path, labels_source):
    """The step's data artifact is its own: a retry on a new pod removes the partial a preempted pod left."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    partial = data_dir / ".tmp-pod-before-retry@12-abc123-t10k-labels-idx1-ubyte.gz"
    partial.write_bytes(b"half")
    fetch.download(fetch.DownloadConfig(data_dir=str(data_dir), source=labels_source, files=LABELS))
    assert partial.exists()  # From the command line: another host's file may be live work, so it stays.
    fetch.download(fetch.DownloadConfig(data_dir=str(data_dir), source=labels_source, files=LABELS,
                                        sole_writer=True))
    assert _leftovers(data_dir) == sorted(LABELS)


@pytest.mark.parametrize("source, expected", [
    ("gs://", f"expected gs://BUCKET[/PREFIX], BUCKET {files.BUCKET_RULE}, found no bucket name"),
    ("gs:// bucket/mnist", f"expected gs://BUCKET[/PREFIX], BUCKET {files.BUCKET_RULE}, found ' bucket'"),
    # Names of the right characters that Cloud Storage refuses: they too failed only after four attempts.
    ("gs://my-google-bucket/mnist", f"expected gs://BUCKET[/PREFIX], BUCKET {files.BUCKET_RULE}, "
                                    "found 'my-google-bucket'"),
    ("gs://goog-mirror", f"expected gs://BUCKET[/PREFIX], BUCKET {files.BUCKET_RULE}, found 'goog-mirror'"),
    ("gs://192.168.1.1/mnist", f"expected gs://BUCKET[/PREFIX], BUCKET {files.BUCKET_RULE}, found '192.168.1.1'"),
    ("gs://" + "a" * 64, f"expected gs://BUCKET[/PREFIX], BUCKET {files.BUCKET_RULE}, found {'a' * 64!r}"),
    # A URL with no host failed only after four attempts ("no host given").
    ("https://", "expected http(s)://HOST[/PATH], found no host"),
    ("http:///mnist", "expected http(s)://HOST[/PATH], found no host"),
    ("https://exa mple.com/mnist", "expected http(s)://HOST[/PATH], found 'exa mple.com', not a host"),
    ("ftp://example.com/mnist", "expected gs://..., http(s)://... or a local directory"),
    ("/no/such/mirror", "expected an existing local directory, found none"),
])
def test_bad_source_is_refused_before_anything_is_written(tmp_path, source, expected):
    data_dir = tmp_path / "data"
    with pytest.raises(ValueError) as e:
        fetch.download(fetch.DownloadConfig(data_dir=str(data_dir), source=source))
    assert f"--source {source!r}: {expected}" in str(e.value)
    assert not data_dir.exists()


def test_attempts_below_one_is_refused(tmp_path, labels_source):
    with pytest.raises(ValueError, match="attempts: expected at least 1, found 0"):
        fetch.download(fetch.DownloadConfig(data_dir=str(tmp_path / "d"), source=labels_source, attempts=0))


def test_data_dir_that_is_a_file_is_refused(tmp_path, labels_source):
    data_dir = tmp_path / "data"
    data_dir.write_text("in the way")
    with pytest.raises(ValueError) as e:
        fetch.download(fetch.DownloadConfig(data_dir=str(data_dir), source=labels_source))
    assert str(e.value) == f"--data_dir {str(data_dir)!r}: expected a directory, found a file"
    assert data_dir.read_text() == "in the way"
