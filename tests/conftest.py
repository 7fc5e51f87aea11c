"""Fixtures shared by the test tiers: synthetic data, the real MNIST mirror, a GCS emulator, an HTTP mirror."""

import contextlib
import os
import socket
import subprocess
import sys
import time

import pytest

from mnistkit import tf_settings
from tests import synthetic
from tests.servers import serve_directory  # noqa: F401  (tests import it from here)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# google-auth must never probe a metadata server from a test.
os.environ.setdefault("GCE_METADATA_HOST", "127.0.0.1:9")
os.environ.setdefault("GCE_METADATA_IP", "127.0.0.1:9")
os.environ.setdefault("NO_GCE_CHECK", "true")

# The tests train in this process as the commands do: with the project's TensorFlow settings, applied before
# any test module loads TensorFlow (child processes inherit them).
tf_settings.apply()


IN_CI = os.environ.get("CI", "").lower() == "true"


def pytest_collection_modifyitems(items):
    """Tests that mount a tmpfs through the `tmpfs` fixture need root: they carry the `privileged` marker."""
    for item in items:
        if "tmpfs" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.privileged)


def missing(what: str):
    """Something a test needs is not on this machine: the test fails in CI (.ci/run installs it all), else skips."""
    if IN_CI:
        pytest.fail(what)
    pytest.skip(what)


def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> str:
    """A data directory with the four file names and small learnable contents (600 train, 200 test)."""
    return synthetic.write_dataset(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="session")
def mnist_dir() -> str:
    """The real MNIST files (../shared/data/mnist, or $MNIST_DATA_DIR). Missing data fails, never skips."""
    path = os.environ.get("MNIST_DATA_DIR") or os.path.join(os.path.dirname(REPO), "shared", "data", "mnist")
    missing = [n for n in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz")
               if not os.path.exists(os.path.join(path, n))]
    if missing:
        pytest.fail(f"real MNIST data not found in {path}: missing {missing}; set MNIST_DATA_DIR to a directory "
                    "holding the four files, or run `make test`, which downloads them into .cache/mnist")
    return path


@pytest.fixture(scope="session")
def gcs_emulator():
    """A local GCS emulator; sets STORAGE_EMULATOR_HOST so the real client talks to it. Yields its URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gcp_storage_emulator", "start", "--host=127.0.0.1", f"--port={port}", "--in-memory"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("the GCS emulator (gcp-storage-emulator) did not start")
            time.sleep(0.2)
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = url
    yield url
    if previous is None:
        os.environ.pop("STORAGE_EMULATOR_HOST", None)
    else:
        os.environ["STORAGE_EMULATOR_HOST"] = previous
    proc.terminate()
    proc.wait(timeout=10)


def upload_dir(bucket_name: str, prefix: str, directory: str) -> str:
    """Uploads every file of `directory` to gs://bucket/prefix/ on the emulator; returns that URL."""
    from google.cloud import storage

    client = storage.Client.create_anonymous_client()
    bucket = client.bucket(bucket_name)
    if not bucket.exists():
        bucket = client.create_bucket(bucket_name)
    for name in sorted(os.listdir(directory)):
        if name.endswith(".gz"):
            bucket.blob(f"{prefix}/{name}").upload_from_filename(os.path.join(directory, name))
    return f"gs://{bucket_name}/{prefix}/"


@pytest.fixture(scope="session")
def gcs_mnist(gcs_emulator, mnist_dir) -> str:
    """The real MNIST files on the emulator as gs://cvdf-datasets/mnist/, like the CVDF mirror."""
    return upload_dir("cvdf-datasets", "mnist", mnist_dir)
