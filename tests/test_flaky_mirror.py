"""A flaky mirror on 127.0.0.1 (HTTP server, GCS emulator): retries, verified files or a clear error, no debris."""

import http.server
import os
import socket
import subprocess
import sys
import threading

import pytest

from mnistkit import fetch, idx
from tests import synthetic
from tests.conftest import REPO, serve_directory, upload_dir

LABEL_FILES = (idx.TRAIN.labels, idx.TEST.labels)  # The small real files: fast to serve again and again.


class FlakyHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a directory, but answers each file's first requests as its `plan` says.

    Modes: 'ok', '500', 'short' (announces the full Content-Length, sends half,
    hangs up) and 'wrong' (the right length of the wrong bytes).
    """

    plan: dict = {}
    requests: dict = {}
    lock = threading.Lock()

    def do_GET(self):
        name = self.path.lstrip("/")
        with self.lock:
            count = self.requests.get(name, 0)
            self.requests[name] = count + 1
        modes = self.plan.get(name, [])
        mode = modes[count] if count < len(modes) else (modes[-1] if modes and modes[-1] == "always" else "ok")
        if mode == "always":
            mode = modes[-2]
        if mode == "ok":
            return super().do_GET()
        if mode == "500":
            return self.send_error(500, "mirror having a bad day")
        with open(os.path.join(self.directory, name), "rb") as f:
            body = f.read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "short":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
        else:  # 'wrong'
            self.wfile.write(bytes(b ^ 0xFF for b in body))


@pytest.fixture
def mirror(mnist_dir):
    """Yields (base URL, handler class); set `plan` on the class to make files misbehave."""
    handler = type("Handler", (FlakyHandler,), {"plan": {}, "requests": {}})
    with serve_directory(mnist_dir, handler) as url:
        yield url, handler


def left_in(data_dir) -> list[str]:
    return sorted(os.listdir(data_dir))


def config(data_dir, source, **kwargs) -> fetch.DownloadConfig:
    return fetch.DownloadConfig(data_dir=str(data_dir), source=source, files=LABEL_FILES, backoff_seconds=0.01,
                                **kwargs)


def test_500s_and_cut_bodies_are_retried_until_verified(mirror, tmp_path):
    url, handler = mirror
    handler.plan = {idx.TRAIN.labels: ["500", "short", "500"], idx.TEST.labels: ["short", "short"]}
    sums = fetch.download(config(tmp_path, url))
    assert sums == {name: idx.SHA256[name] for name in LABEL_FILES}
    assert handler.requests == {idx.TRAIN.labels: 4, idx.TEST.labels: 3}
    assert left_in(tmp_path) == sorted(LABEL_FILES)
    for name in LABEL_FILES:
        assert fetch.sha256_of(tmp_path / name) == idx.SHA256[name]


@pytest.mark.parametrize("mode, error", [
    ("wrong", f"sha256 expected {idx.SHA256[idx.TEST.labels]}, found "),
    ("500", "HTTP Error 500: mirror having a bad day"),
    ("short", "body ended after 2271 of the 4542 bytes announced"),
])
def test_a_file_that_never_arrives_whole_fails_naming_it_and_leaves_nothing(mode, error, mirror, tmp_path):
    url, handler = mirror
    handler.plan = {idx.TEST.labels: [mode, "always"]}
    with pytest.raises(fetch.FetchError) as failure:
        fetch.download(config(tmp_path, url, attempts=3))
    message = str(failure.value)
    assert message.startswith(f"{idx.TEST.labels}: could not fetch a verified copy from {url} after 3 attempts; "
                              "last error: "), message
    assert error in message, message
    assert handler.requests[idx.TEST.labels] == 3
    # The good file is in place and verified; of the bad one there is no trace, not even a hidden partial.
    assert left_in(tmp_path) == [idx.TRAIN.labels]


def test_an_unverified_file_already_in_data_dir_is_replaced(mirror, tmp_path):
    url, _ = mirror
    (tmp_path / idx.TRAIN.labels).write_bytes(b"left by someone else")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # Its pid names a writer that no longer runs.
    (tmp_path / f".tmp-{socket.gethostname()}@{gone.pid}-abc123-{idx.TEST.labels}").write_bytes(
        b"left by a killed download")
    fetch.download(config(tmp_path, url))
    assert left_in(tmp_path) == sorted(LABEL_FILES)
    assert fetch.sha256_of(tmp_path / idx.TRAIN.labels) == idx.SHA256[idx.TRAIN.labels]


def test_mnist_download_reports_the_file_it_could_not_verify(mirror, tmp_path):
    url, handler = mirror
    handler.plan = {name: ["wrong", "always"] for name in idx.FILES}
    data_dir = tmp_path / "data"
    result = subprocess.run(
        [sys.executable, "-m", "mnistkit.commands.download", "--data_dir", str(data_dir), "--source", url,
         "--attempts", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("mnist-download: error: ")]
    assert errors == [f"mnist-download: error: {idx.TRAIN.images}: could not fetch a verified copy from {url} after "
                      f"2 attempts; last error: {idx.TRAIN.images}: sha256 expected {idx.SHA256[idx.TRAIN.images]}, "
                      f"found {errors[0].rsplit(' ', 1)[-1]}"], result.stderr[-3000:]
    assert left_in(data_dir) == []


def test_gcs_object_with_wrong_bytes_under_the_real_name_is_refused(gcs_emulator, mnist_dir, tmp_path):
    # A mirror bucket whose label files are well-formed IDX files, just not MNIST's.
    fake = synthetic.write_dataset(tmp_path / "fake")
    for name in idx.FILES:
        if name not in LABEL_FILES:
            os.remove(os.path.join(fake, name))
    source = upload_dir("tampered-mirror", "mnist", fake)
    data_dir = tmp_path / "data"
    with pytest.raises(fetch.FetchError) as failure:
        fetch.download(config(data_dir, source, attempts=2))
    assert str(failure.value).startswith(f"{idx.TRAIN.labels}: could not fetch a verified copy from {source} after "
                                         f"2 attempts; last error: {idx.TRAIN.labels}: sha256 expected "
                                         f"{idx.SHA256[idx.TRAIN.labels]}, found "), failure.value
    assert left_in(data_dir) == []


def test_gcs_missing_object_fails_naming_it_and_the_real_mirror_verifies(gcs_mnist, tmp_path):
    missing = fetch.DownloadConfig(data_dir=str(tmp_path / "a"), source="gs://cvdf-datasets/elsewhere/",
                                   files=(idx.TEST.labels,), attempts=2, backoff_seconds=0.01)
    with pytest.raises(fetch.FetchError, match=rf"^{idx.TEST.labels}: could not fetch it from "
                                                r"gs://cvdf-datasets/elsewhere/, which answered that it is missing "
                                                r"or refused, so it was not retried; error: 404"):
        fetch.download(missing)
    assert left_in(tmp_path / "a") == []
    sums = fetch.download(config(tmp_path / "b", gcs_mnist))
    assert sums == {name: idx.SHA256[name] for name in LABEL_FILES}
    assert left_in(tmp_path / "b") == sorted(LABEL_FILES)
