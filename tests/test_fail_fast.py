"""Failing fast and clearly on the data path: no network, full or read-only disks, mirror fallbacks, private buckets.

Everything here is real: hosts that do not resolve, ports where nothing
listens, a network namespace with no network at all (`unshare -n`), small
tmpfs mounts that fill up, the real commands as subprocesses. The mounts and
the namespace need root, which CI has; without it these tests fail, they never
skip. The one stand-in is the loopback server of the private-bucket tests,
which plays Google's token endpoint and a bucket that answers 403, since
nothing real that refuses access can run here.
"""

import contextlib
import errno
import http.server
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

from mnistkit import fetch, idx, sources
from mnistkit.commands import cli
from tests.conftest import REPO, free_port, serve_directory
from tests.test_images import cpu_image  # noqa: F401  (the fixture: the CPU image, built once per session)

LABELS = (idx.TRAIN.labels, idx.TEST.labels)  # The small real files.
NO_HOST = "https://mnist.invalid/"  # .invalid never resolves (RFC 2606).


def run_command(*args, timeout=120, env=None, prefix=()) -> tuple[subprocess.CompletedProcess, float]:
    """Runs `python ARGS` from the repository; returns the result and the seconds it took."""
    started = time.monotonic()
    result = subprocess.run([*prefix, sys.executable, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                            timeout=timeout, env=env)
    return result, time.monotonic() - started


def error_line(result, prog) -> str:
    """The one error line `prog` printed; fails unless it exited 1 with exactly that and no traceback."""
    assert result.returncode == 1, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith(f"{prog}: error: ")]
    assert len(lines) == 1, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == lines[0]
    return lines[0]


def attempts_logged(result, source) -> int:
    return sum(1 for line in result.stderr.splitlines() if "attempt" in line and f"from {source} failed" in line)


@contextlib.contextmanager
def tmpfs(path, size: str, read_only: bool = False):
    """A real tmpfs of `size` mounted at `path` (root only: fails, never skips, without it)."""
    os.makedirs(path, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True,
                            text=True)
    if result.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (these tests need root, as CI has): {result.stderr.strip()}")
    try:
        yield str(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def remount(path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


# --- No network, for real. ----------------------------------------------------------


def test_a_host_that_does_not_resolve_fails_in_seconds_naming_it(tmp_path):
    result, seconds = run_command("-m", "mnistkit.commands.download", "--data_dir", tmp_path / "d", "--source", NO_HOST)
    line = error_line(result, "mnist-download")
    assert seconds < 20, seconds
    assert line.startswith(f"mnist-download: error: {idx.TRAIN.images}: could not reach {NO_HOST} "
                           "(mnist.invalid: name does not resolve), so it was not retried; "), line
    assert "give --source a local directory holding the four files, or another mirror" in line
    assert attempts_logged(result, NO_HOST) == 1  # Not retried: another attempt cannot help.
    assert os.listdir(tmp_path / "d") == []


def test_a_port_where_nothing_listens_fails_in_seconds_naming_it(tmp_path):
    source = f"http://127.0.0.1:{free_port()}/"
    result, seconds = run_command("-m", "mnistkit.commands.download", "--data_dir", tmp_path / "d", "--source", source)
    line = error_line(result, "mnist-download")
    assert seconds < 20, seconds
    assert f"could not reach {source} (127.0.0.1: connection refused, nothing listens there)" in line, line
    assert attempts_logged(result, source) == 1
    assert os.listdir(tmp_path / "d") == []


def test_a_mirror_that_accepts_and_never_answers_is_bounded_by_timeout_seconds(tmp_path):
    """A proxy or firewall that swallows connections: each attempt waits --timeout_seconds, not a minute."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))  # Accepts (the kernel's backlog) and never answers.
    source = f"http://127.0.0.1:{listener.getsockname()[1]}/"
    try:
        result, seconds = run_command("-m", "mnistkit.commands.download", "--data_dir", tmp_path / "d", "--source",
                                      source, "--attempts", "2", "--timeout_seconds", "1")
    finally:
        listener.close()
    line = error_line(result, "mnist-download")
    assert f"could not fetch a verified copy from {source} after 2 attempts; last error: timed out" in line, line
    assert attempts_logged(result, source) == 2
    assert seconds < 30, seconds  # Two attempts of a second, a second of backoff, and the start-up.
    assert os.listdir(tmp_path / "d") == []


def test_a_gcs_host_that_does_not_resolve_fails_in_seconds_naming_it(tmp_path):
    # One attempt layer: google-cloud-storage's own retry (a 120 s deadline) is off, only ours remains.
    env = {**os.environ, "STORAGE_EMULATOR_HOST": "http://storage.mnist.invalid:9023"}
    result, seconds = run_command("-m", "mnistkit.commands.download", "--data_dir", tmp_path / "d",
                                  "--source", "gs://cvdf-datasets/mnist/", env=env)
    line = error_line(result, "mnist-download")
    assert seconds < 20, seconds
    assert "could not reach gs://cvdf-datasets/mnist/ (storage.mnist.invalid: name does not resolve)" in line, line
    assert attempts_logged(result, "gs://cvdf-datasets/mnist/") == 1


@pytest.mark.privileged
def test_with_no_network_at_all_the_default_mirrors_fail_in_seconds(tmp_path):
    # A new network namespace has no network at all: no route, no DNS. Every default mirror is tried once.
    env = {k: v for k, v in os.environ.items() if k != "STORAGE_EMULATOR_HOST"}
    result, seconds = run_command("-m", "mnistkit.commands.download", "--data_dir", tmp_path / "d", env=env,
                                  prefix=("unshare", "--net"))
    line = error_line(result, "mnist-download")
    assert seconds < 20, seconds
    assert line.startswith(f"mnist-download: error: {idx.TRAIN.images}: could not fetch it from any of the 3 mirrors "
                           "tried: gs://cvdf-datasets/mnist/: could not reach it (storage.googleapis.com: "), line
    for source in fetch.DEFAULT_SOURCES:
        assert f"{source}: could not reach it" in line
        assert attempts_logged(result, source) == 1  # And not again for the three other files.
    assert "ossci-datasets.s3.amazonaws.com" in line and line.endswith("separated by commas)")


@pytest.mark.privileged
def test_run_local_with_no_network_ends_in_seconds_with_the_step_and_its_reason(tmp_path):
    # `make run` on a machine with no network: the default mirrors, in a namespace with no network.
    env = {k: v for k, v in os.environ.items() if k != "STORAGE_EMULATOR_HOST"}
    result, seconds = run_command("pipelines/run_local.py", "--pipeline_root", tmp_path / "root", env=env,
                                  prefix=("unshare", "--net"), timeout=120)
    line = error_line(result, "run_local.py")
    assert seconds < 60, seconds
    assert line.startswith(f"run_local.py: error: step download-data failed: FetchError: {idx.TRAIN.images}: "
                           "could not fetch it from any of the 3 mirrors tried: "), line
    assert "storage.googleapis.com: name does not resolve" in line


def test_run_local_names_the_failed_step_and_its_reason(tmp_path):
    result, seconds = run_command("pipelines/run_local.py", "--source", NO_HOST, "--pipeline_root", tmp_path / "root")
    line = error_line(result, "run_local.py")
    assert seconds < 60, seconds
    assert line.startswith(f"run_local.py: error: step download-data failed: FetchError: {idx.TRAIN.images}: "
                           f"could not reach {NO_HOST} (mnist.invalid: name does not resolve)"), line
    # The later steps never ran.
    (run_dir,) = os.listdir(tmp_path / "root")
    assert "train-model" not in os.listdir(tmp_path / "root" / run_dir)


@pytest.mark.docker
def test_run_local_with_docker_names_the_failed_step_and_its_reason(cpu_image, tmp_path):
    # In the step's container nothing listens on this port either.
    source = f"http://127.0.0.1:{free_port()}/"
    result, seconds = run_command("pipelines/run_local.py", "--runner", "docker", "--source", source,
                                  "--pipeline_root", tmp_path / "root", timeout=600)
    line = error_line(result, "run_local.py")
    assert line.startswith(f"run_local.py: error: step download-data failed: FetchError: {idx.TRAIN.images}: "
                           f"could not reach {source} (127.0.0.1: connection refused"), line
    assert f"Found image {cpu_image!r}" in result.stdout  # The step really ran in the image just built.


def test_step_log_keeps_each_steps_last_error_line(capsys):
    """StepLog against output shaped as kfp.local prints it (colour codes, indented step output)."""
    from pipelines import run_local

    with run_local.capture_step_errors() as steps:
        print("13:55:28.100 - INFO - Executing task \x1b[96m'download-data'\x1b[0m")
        print("    [KFP Executor 2026-11-25 13:55:28,876 WARNING]: a.gz: attempt 1 of 4 failed: HTTP Error 500")
        print("    Traceback (most recent call last):\n      raise FetchError(...)")
        print("    mnistkit.fetch.FetchError: a.gz: could not fetch it")
        print("13:55:29.000 - INFO - Executing task \x1b[96m'train-model'\x1b[0m")
        print("    mnist-train: error: /m: No space left on device; the disk is full")
        print("    ", end="")  # A partial line is kept until it ends.
    failed = RuntimeError("Pipeline \x1b[95m'mnist-training'\x1b[0m finished with status \x1b[91mFAILURE\x1b[0m. "
                          "Inner task failed: \x1b[96m'download-data'\x1b[0m.")
    assert steps.reason(failed) == "step download-data failed: FetchError: a.gz: could not fetch it"
    assert steps.errors["train-model"] == "mnist-train: error: /m: No space left on device; the disk is full"
    assert "Executing task" in capsys.readouterr().out  # Everything still reaches the console.


def test_a_slow_but_alive_mirror_is_still_retried_with_backoff(tmp_path, mnist_dir):
    requests, release = [], threading.Event()

    class StallsTwice(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            if len(requests) <= 2:
                release.wait(5)  # Longer than the client's timeout: it gives up on this attempt.
                return
            super().do_GET()

    sleeps = []
    with serve_directory(mnist_dir, StallsTwice) as url:
        try:
            sums = fetch.download(fetch.DownloadConfig(data_dir=str(tmp_path / "d"), source=url,
                                                       files=(idx.TEST.labels,), timeout_seconds=0.5),
                                  sleep=sleeps.append)
        finally:
            release.set()
    assert sums == {idx.TEST.labels: idx.SHA256[idx.TEST.labels]}
    assert len(requests) == 3 and sleeps == [1.0, 2.0]


# --- The fallback list. ---------------------------------------------------------------


def test_first_mirror_dead_second_serves_the_files_and_the_switch_is_logged(tmp_path, mnist_dir):
    dead = f"http://127.0.0.1:{free_port()}/"
    data_dir = tmp_path / "d"
    with serve_directory(mnist_dir) as alive:
        result, _ = run_command("-m", "mnistkit.commands.download", "--data_dir", data_dir,
                                "--source", f"{dead},{alive}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(os.listdir(data_dir)) == sorted(idx.FILES)
    for name in idx.FILES:
        assert fetch.sha256_of(data_dir / name) == idx.SHA256[name]
    assert f"{idx.TRAIN.images}: could not reach {dead} (127.0.0.1: connection refused" in result.stderr
    assert f"{idx.TRAIN.images}: trying the next mirror, {alive}" in result.stderr
    assert f"{idx.TRAIN.images}: fetched 9.9 MB from {alive}" in result.stderr
    assert attempts_logged(result, dead) == 1  # Found dead once, skipped for the other three files.


def test_a_mirror_missing_one_file_gives_way_to_the_next_for_that_file(tmp_path, mnist_dir):
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copyfile(os.path.join(mnist_dir, idx.TRAIN.labels), partial / idx.TRAIN.labels)
    requests = []

    class Counting(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path.lstrip("/"))
            super().do_GET()

    data_dir = tmp_path / "d"
    with serve_directory(mnist_dir, Counting) as full:
        sums = fetch.download(fetch.DownloadConfig(data_dir=str(data_dir), source=f"{partial},{full}", files=LABELS))
    assert sums == {name: idx.SHA256[name] for name in LABELS}
    assert requests == [idx.TEST.labels]  # The first mirror had the train labels.


def test_every_mirror_failing_lists_each_with_its_error(tmp_path, mnist_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    dead = f"http://127.0.0.1:{free_port()}/"
    with pytest.raises(fetch.FetchError) as failure:
        fetch.download(fetch.DownloadConfig(data_dir=str(tmp_path / "d"), source=f"{empty}, {dead}",
                                            files=(idx.TEST.labels,)))
    assert str(failure.value) == (
        f"{idx.TEST.labels}: could not fetch it from any of the 2 mirrors tried: {empty}: could not fetch it from it, "
        "which answered that it is missing or refused, so it was not retried; error: [Errno 2] No such file or "
        f"directory: '{empty / idx.TEST.labels}' | {dead}: could not reach it (127.0.0.1: connection refused, "
        f"nothing listens there), so it was not retried; {fetch._NO_NETWORK_HINT}")
    assert os.listdir(tmp_path / "d") == []


def test_an_empty_mirror_in_the_list_is_refused(tmp_path):
    with pytest.raises(ValueError, match="expected one source or several separated by commas, found an empty one"):
        fetch.download(fetch.DownloadConfig(data_dir=str(tmp_path / "d"), source=f"{tmp_path},"))
    assert not (tmp_path / "d").exists()


def test_the_pipeline_default_is_the_fallback_list():
    from pipelines import pipeline

    assert pipeline.DEFAULT_SOURCE == fetch.DEFAULT_SOURCE == ",".join(fetch.DEFAULT_SOURCES)
    assert fetch.DEFAULT_SOURCES[:2] == ("gs://cvdf-datasets/mnist/",
                                         "https://storage.googleapis.com/cvdf-datasets/mnist/")
    assert len(fetch.DEFAULT_SOURCES) >= 3


# --- Errors of the machine: not retried, one line, nothing half-written. -----------


@pytest.mark.privileged
def test_a_full_disk_ends_mnist_download_in_one_line_and_a_later_run_resumes(tmp_path, mnist_dir):
    requests = []

    class Counting(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path.lstrip("/"))
            super().do_GET()

        def handle(self):
            with contextlib.suppress(ConnectionError):  # The client hangs up once its disk is full.
                super().handle()

    with tmpfs(tmp_path / "disk", "1m") as disk, serve_directory(mnist_dir, Counting) as url:
        data_dir = os.path.join(disk, "data")
        os.makedirs(data_dir)
        # A file verified by an earlier run: it must survive the failure and not be fetched again.
        shutil.copyfile(os.path.join(mnist_dir, idx.TEST.labels), os.path.join(data_dir, idx.TEST.labels))
        kept = os.stat(os.path.join(data_dir, idx.TEST.labels)).st_mtime_ns
        result, seconds = run_command("-m", "mnistkit.commands.download", "--data_dir", data_dir, "--source", url)
        line = error_line(result, "mnist-download")
        assert line == (f"mnist-download: error: {data_dir}: No space left on device (while writing "
                        f"{idx.TRAIN.images}); the disk is full: free some space or choose another directory")
        assert requests == [idx.TRAIN.images]  # Not retried: another attempt cannot help.
        assert seconds < 20, seconds
        # No partial file, under a real name or a hidden one.
        assert os.listdir(data_dir) == [idx.TEST.labels]

        remount(disk, "16m")
        result, _ = run_command("-m", "mnistkit.commands.download", "--data_dir", data_dir, "--source", url)
        assert result.returncode == 0, result.stderr[-3000:]
        assert sorted(os.listdir(data_dir)) == sorted(idx.FILES)
        assert f"{idx.TEST.labels}: present and verified, not fetched again" in result.stderr
        assert os.stat(os.path.join(data_dir, idx.TEST.labels)).st_mtime_ns == kept
        assert idx.TEST.labels not in requests
        for name in idx.FILES:
            assert fetch.sha256_of(os.path.join(data_dir, name)) == idx.SHA256[name]


@pytest.mark.privileged
def test_a_full_disk_during_a_gcs_download_is_not_retried(tmp_path, gcs_mnist):
    with tmpfs(tmp_path / "disk", "1m") as disk:
        data_dir = os.path.join(disk, "data")
        with pytest.raises(OSError) as failure:
            fetch.download(fetch.DownloadConfig(data_dir=data_dir, source=gcs_mnist, backoff_seconds=30))
        assert failure.value.errno == errno.ENOSPC and failure.value.filename == data_dir
        assert cli.describe_os_error(failure.value) == (
            f"{data_dir}: No space left on device (while writing {idx.TRAIN.images}); the disk is full: "
            "free some space or choose another directory")
        assert os.listdir(data_dir) == []


@pytest.mark.privileged
def test_a_read_only_data_dir_ends_mnist_download_in_one_line(tmp_path, mnist_dir):
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as disk:
        result, _ = run_command("-m", "mnistkit.commands.download", "--data_dir", os.path.join(disk, "data"),
                                "--source", mnist_dir)
        assert error_line(result, "mnist-download") == (
            f"mnist-download: error: {os.path.join(disk, 'data')}: Read-only file system; the file system is "
            "read-only: choose a writable directory")
        assert os.listdir(disk) == []


def test_a_data_dir_that_vanishes_mid_download_is_not_retried(tmp_path, mnist_dir):
    data_dir = tmp_path / "d"
    data_dir.mkdir()
    calls = []

    def copy_after_the_dir_vanished(name, dest):
        calls.append(name)
        shutil.rmtree(data_dir)
        shutil.copyfile(os.path.join(mnist_dir, name), dest)

    with pytest.raises(OSError) as failure:
        fetch.fetch_file(copy_after_the_dir_vanished, idx.TEST.labels,
                         fetch.DownloadConfig(data_dir=str(data_dir)), sleep=pytest.fail)
    assert failure.value.errno == errno.ENOENT and failure.value.filename == str(data_dir)
    assert calls == [idx.TEST.labels]


@pytest.mark.parametrize("code, hint", [
    (errno.EMFILE, "the process ran out of file descriptors: raise the limit (ulimit -n) and run again"),
    (errno.EACCES, "this user may not read or write there: fix its permissions or choose another path"),
    (errno.ENOENT, "it does not exist, or vanished while the command ran"),
])
def test_every_command_prints_an_error_of_the_machine_as_path_cause_and_hint(code, hint, tmp_path):
    # cli.run is what every mnist-* command runs its main through; a tiny command shows its contract.
    script = tmp_path / "probe.py"  # Run as a script, it is called mnist-probe.
    script.write_text(f"import os\nfrom mnistkit.commands import cli\n\n"
                      f"def main(argv):\n    raise OSError({code}, os.strerror({code}), '/some/dir')\n\n"
                      f"cli.run(main)\n")
    result, _ = run_command(script, env={**os.environ, "PYTHONPATH": REPO})
    assert error_line(result, "mnist-probe") == f"mnist-probe: error: /some/dir: {os.strerror(code)}; {hint}"


# --- A progress line for large downloads. --------------------------------------------


def test_a_large_download_logs_its_bytes_and_rate(tmp_path, mnist_dir, caplog):
    with serve_directory(mnist_dir) as url, caplog.at_level(logging.INFO, logger="mnistkit"):
        fetch.download(fetch.DownloadConfig(data_dir=str(tmp_path / "d"), source=url, files=(idx.TRAIN.images,),
                                            progress_seconds=0))
    progress = [r.getMessage() for r in caplog.records if " MB/s" in r.getMessage() and "fetched" not in r.getMessage()]
    assert progress, caplog.text
    assert progress[0].startswith(f"{idx.TRAIN.images}: ") and " of 9.9 MB (" in progress[0]
    assert progress[-1].startswith(f"{idx.TRAIN.images}: 9.9 of 9.9 MB (100%) at ")
    assert f"{idx.TRAIN.images}: fetched 9.9 MB from {url} in " in caplog.text


# --- Private buckets: Application Default Credentials, then anonymous access. --------


class TokenAndRefusingBucket(http.server.BaseHTTPRequestHandler):
    """Plays Google's OAuth token endpoint (POST /token) and a bucket that refuses every read with 403."""

    authorizations: list = []

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._reply(200, {"access_token": "token-from-loopback", "expires_in": 3600, "token_type": "Bearer"})

    def do_GET(self):
        if self.path.startswith("/download/"):  # The client may also read the bucket's metadata first.
            self.authorizations.append(self.headers.get("Authorization"))
        self._reply(403, {"error": {"code": 403, "message": "caller does not have storage.objects.get access"}})

    def _reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def loopback_google():
    """Yields (base URL, handler class) of a TokenAndRefusingBucket server on 127.0.0.1."""
    handler = type("Handler", (TokenAndRefusingBucket,), {"authorizations": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


def service_account_key(path, token_uri: str) -> str:
    """Writes a service-account key file (a fresh RSA key) whose tokens come from `token_uri`; returns its email."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    email = "mnist-reader@mnistkit-test.iam.gserviceaccount.com"
    path.write_text(json.dumps({"type": "service_account", "project_id": "mnistkit-test", "private_key_id": "1",
                                "private_key": pem, "client_email": email, "client_id": "1", "token_uri": token_uri}))
    return email


@pytest.fixture
def no_adc(monkeypatch, tmp_path):
    """No Application Default Credentials: no key file named, and an empty gcloud configuration."""
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))


def test_gcs_uses_application_default_credentials_when_there_are_some(no_adc, monkeypatch, tmp_path, gcs_mnist,
                                                                       loopback_google):
    token_server, _ = loopback_google
    key = tmp_path / "key.json"
    email = service_account_key(key, f"{token_server}/token")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    clients = sources.gcs_clients()
    assert [description for description, _ in clients] == [
        f"Application Default Credentials (service account {email}, from GOOGLE_APPLICATION_CREDENTIALS={key})",
        "anonymous access"]
    assert clients[0][1]._credentials.service_account_email == email
    # The ADC client really downloads (from the emulator, with a token from the loopback token endpoint).
    sums = fetch.download(fetch.DownloadConfig(data_dir=str(tmp_path / "d"), source=gcs_mnist, files=LABELS))
    assert sums == {name: idx.SHA256[name] for name in LABELS}


def test_credentials_whose_token_server_is_out_of_reach_give_way_to_anonymous_access(no_adc, monkeypatch, tmp_path,
                                                                                      gcs_mnist):
    key = tmp_path / "key.json"
    service_account_key(key, "https://oauth2.mnist.invalid/token")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    sums = fetch.download(fetch.DownloadConfig(data_dir=str(tmp_path / "d"), source=gcs_mnist, files=LABELS))
    assert sums == {name: idx.SHA256[name] for name in LABELS}


def test_gcs_without_credentials_is_anonymous(no_adc):
    from google.auth.credentials import AnonymousCredentials

    clients = sources.gcs_clients()
    assert [description for description, _ in clients] == [
        "anonymous access (no Application Default Credentials found)"]
    assert isinstance(clients[0][1]._credentials, AnonymousCredentials)


def test_a_refused_private_bucket_names_every_credential_tried(no_adc, monkeypatch, tmp_path, loopback_google):
    url, handler = loopback_google
    key = tmp_path / "key.json"
    email = service_account_key(key, f"{url}/token")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
    with pytest.raises(fetch.FetchError) as failure:
        fetch.download(fetch.DownloadConfig(data_dir=str(tmp_path / "d"), source="gs://team-private/mnist",
                                            files=(idx.TEST.labels,)), sleep=pytest.fail)
    message = str(failure.value)
    assert message.startswith(
        f"{idx.TEST.labels}: could not fetch it from gs://team-private/mnist, which answered that it is missing or "
        f"refused, so it was not retried; error: gs://team-private/mnist/{idx.TEST.labels}: access refused with "
        f"every credential tried: Application Default Credentials (service account {email}, from "
        f"GOOGLE_APPLICATION_CREDENTIALS={key}): 403; anonymous access: 403; use an account that may read the "
        "bucket (gcloud auth application-default login, or GOOGLE_APPLICATION_CREDENTIALS=KEY.json)"), message
    # First with the service account's token, then without any.
    assert handler.authorizations == ["Bearer token-from-loopback", None]
    assert os.listdir(tmp_path / "d") == []


def test_a_refused_private_bucket_without_credentials_says_so(no_adc, monkeypatch, tmp_path, loopback_google):
    url, handler = loopback_google
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
    result, _ = run_command("-m", "mnistkit.commands.download", "--data_dir", tmp_path / "d",
                            "--source", "gs://team-private/mnist/", env=dict(os.environ))
    line = error_line(result, "mnist-download")
    assert (f"gs://team-private/mnist/{idx.TRAIN.images}: access refused with every credential tried: anonymous "
            "access (no Application Default Credentials found): 403; use an account that may read the bucket") in line
    assert handler.authorizations == [None]
