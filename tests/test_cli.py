"""The commands as users run them: real subprocesses, exit codes, one-line errors, the seed's saved_model_cli line."""

import http.server
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from mnistkit import fetch, idx
from tests import synthetic
from tests.conftest import REPO, serve_directory

BIN = os.path.dirname(sys.executable)


def _run(module: str, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    """Runs `python -m mnistkit.commands.MODULE ARGS` the way a user or a container would."""
    return subprocess.run([sys.executable, "-m", f"mnistkit.commands.{module}", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def _error_line(result: subprocess.CompletedProcess) -> str:
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("command, flags", [("mnist-download", ["--data_dir", "--source", "--verify_checksums"]),
                                            ("mnist-train", ["--data_dir", "--batch_size", "--stop_threshold"])])
def test_each_commands_help_lists_its_own_flags(command, flags):
    """absl lists the flags of sys.argv[0]'s module, the console script's wrapper: `--help` listed none."""
    result = subprocess.run([os.path.join(BIN, command), "--help"], capture_output=True, text=True, timeout=120)
    listed = ["--" + name for name in re.findall(r"^  --(?:\[no\])?(\w+):", result.stdout, re.MULTILINE)]
    assert set(flags) <= set(listed), result.stdout[:2000]


# --- mnist-download. ---------------------------------------------------------------


def test_download_from_the_default_source(tmp_path, gcs_mnist):
    # No --source: the CVDF mirror gs://cvdf-datasets/mnist/, here served by the emulator.
    data_dir = tmp_path / "data"
    result = _run("download", "--data_dir", data_dir)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(data_dir)) == sorted(idx.FILES)
    for name, digest in idx.SHA256.items():
        assert f"{digest}  {name}" in result.stderr
        assert fetch.sha256_of(data_dir / name) == digest


def test_download_refuses_unknown_data_in_one_line(tmp_path):
    source = synthetic.write_dataset(tmp_path / "mirror", n_train=20, n_test=10)
    data_dir = tmp_path / "data"
    result = _run("download", "--data_dir", data_dir, "--source", source)
    assert result.returncode == 1
    line = _error_line(result)
    # A local directory gives the same bytes every time: one attempt, however many --attempts allows.
    assert line.startswith(f"mnist-download: error: train-images-idx3-ubyte.gz: the copy in {source} failed its "
                           f"check, so it was not retried")
    assert f"sha256 expected {idx.SHA256['train-images-idx3-ubyte.gz']}, found " in line
    assert "Traceback" not in result.stderr
    assert os.listdir(data_dir) == []


def test_download_noverify_checksums_accepts_synthetic_data_loudly(tmp_path):
    source = synthetic.write_dataset(tmp_path / "mirror", n_train=20, n_test=10)
    data_dir = tmp_path / "data"
    result = _run("download", "--data_dir", data_dir, "--source", source, "--noverify_checksums")
    assert result.returncode == 0, result.stderr
    assert "CHECKSUMS NOT VERIFIED" in result.stderr
    assert sorted(os.listdir(data_dir)) == sorted(idx.FILES)


def test_download_bad_source_and_missing_flag(tmp_path):
    result = _run("download", "--data_dir", tmp_path / "d", "--source", "ftp://example.com/mnist")
    assert result.returncode == 1
    assert _error_line(result) == ("mnist-download: error: --source 'ftp://example.com/mnist': expected gs://..., "
                                   "http(s)://... or a local directory")
    result = _run("download")
    assert result.returncode == 1
    assert _error_line(result) == "mnist-download: error: --data_dir: expected a value, found none"


@pytest.mark.parametrize("timeout", ["nan", "inf", "1e12"])
def test_download_refuses_a_timeout_that_is_no_number_of_seconds(tmp_path, timeout):
    """absl's lower bound let NaN through; every file then failed after four attempts. So did 1e12 (a socket's
    timeout overflows), and the mirror was blamed."""
    result = _run("download", "--data_dir", tmp_path / "d", "--source", tmp_path, "--timeout_seconds", timeout)
    assert result.returncode == 1
    assert _error_line(result) == (f"mnist-download: error: --timeout_seconds: expected a number of seconds above 0 "
                                   f"and at most 86,400 (a day), found {float(timeout)}")
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("output", ["metrics/", " "])
def test_evaluate_refuses_an_output_that_is_no_file_path_before_evaluating(trained, synthetic_data, tmp_path,
                                                                        output):
    """'metrics/' failed only after the whole evaluation, with a bare 'Not a directory' and an empty directory."""
    result = _run("evaluate", "--model_dir", trained, "--data_dir", synthetic_data, "--output", output)
    assert result.returncode == 1
    assert _error_line(result) == f"mnist-evaluate: error: --output: expected a path of a file to write, found " \
                                  f"{output!r}"
    assert not os.path.exists(os.path.join(REPO, output))


def test_export_refuses_an_export_dir_of_spaces(trained):
    result = _run("export", "--model_dir", trained, "--export_dir", " ")
    assert result.returncode == 1
    assert _error_line(result) == "mnist-export: error: --export_dir: expected a directory to export into, found ' '"
    assert not os.path.exists(os.path.join(REPO, " "))


def test_train_help_shows_every_default_a_flag_has():
    """--seed's default of 0 went unsaid (0 == False)."""
    result = _run("train", "--helpfull")
    assert re.search(r"--seed: Seed [^\n]*\(default: 0\)", " ".join(result.stdout.split())), result.stdout[-3000:]


@pytest.mark.parametrize("flag, value, said", [("batch_size", "0x10", "expected a decimal integer"),
                                               ("batch_size", "1_000", "expected a decimal integer"),
                                               ("learning_rate", "1_0e-3", "expected a number in ASCII digits")])
def test_train_reads_numbers_as_the_pipeline_does(synthetic_data, tmp_path, flag, value, said):
    """absl took 0x10 as 16 and Python took 1_000; the pipeline's parameters refuse both."""
    result = _run("train", "--data_dir", synthetic_data, "--model_dir", tmp_path / "m", f"--{flag}", value)
    assert result.returncode == 1
    assert _error_line(result) == f"mnist-train: error: --{flag}: {said}, found {value!r}"
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("args, says", [
    # absl's own errors, in the words of every other error: "--NAME: expected ..., found ...", one line, exit 1.
    (["--attempts", "0"], "--attempts: expected a positive integer, found 0"),
    (["--attempts", "0x10"], "--attempts: expected a decimal integer, found '0x10'"),  # absl read it as 16.
    (["--timeout_seconds", "1_0"], "--timeout_seconds: expected a number in ASCII digits, found '1_0'"),  # Python's 10.
    (["--timeout_seconds", "0"], "--timeout_seconds: expected a number >= 0.1, found 0.0"),
    (["--verify_checksums=maybe"], "--verify_checksums: expected true or false (or --verify_checksums and "
                                   "--noverify_checksums), found 'maybe'"),
    (["--atempts", "3"], "--atempts: no such flag (--help lists this command's); did you mean --attempts?"),
    # A word no flag takes was ignored: `--noverify_checksums false` still skipped the checksums.
    (["--noverify_checksums", "false"], "expected flags only (--name=value; a true/false flag as --name or "
                                        "--noname), found the argument 'false'"),
])
def test_download_flag_errors_are_one_line_naming_the_flag(tmp_path, args, says):
    result = _run("download", "--data_dir", tmp_path / "d", "--source", tmp_path, *args)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"mnist-download: error: {says}"]
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("args, says", [
    (["--precision", "fp16"], "--precision: expected one of <auto|float32|mixed_bfloat16>, found 'fp16'"),
    (["--learning_rate="], "--learning_rate: expected a number, found ''"),
    (["--flagfile=/no/such/flags"], "--flagfile: expected a readable file of flags, found [Errno 2] No such file or "
                                    "directory: '/no/such/flags'"),
    (["--nesterov", "false"], "expected flags only (--name=value; a true/false flag as --name or --noname), found "
                              "the argument 'false'"),
])
def test_train_flag_errors_are_one_line_and_a_stray_word_is_not_ignored(synthetic_data, tmp_path, args, says):
    """`--nesterov false` turned Nesterov on and left 'false' unread: the run trained with what it was told not to."""
    result = _run("train", "--data_dir", synthetic_data, "--model_dir", tmp_path / "m", *args)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"mnist-train: error: {says}"]
    assert not (tmp_path / "m").exists()


def test_train_help_gives_each_number_its_range():
    text = " ".join(_run("train", "--helpfull").stdout.split())
    for flag, allowed in (("batch_size", "at least 1"), ("beta_2", "in (0, 1)"), ("stop_threshold", "in [0, 1]"),
                          ("label_smoothing", "in [0, 0.5]"), ("learning_rate", "above 0")):
        assert re.search(rf"--{flag}: [^\n]*? Allowed: {re.escape(allowed)}\.", text), flag


def test_sigterm_during_a_download_leaves_no_partial_file(tmp_path):
    release = threading.Event()

    class Stalling(http.server.SimpleHTTPRequestHandler):
        """Sends the headers and the first kilobyte, then stalls like a dying connection."""

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            self.wfile.write(b"\x1f\x8b" + bytes(1022))
            self.wfile.flush()
            release.wait(60)

    data_dir = tmp_path / "data"
    with serve_directory(str(tmp_path), Stalling) as url:
        try:
            proc = subprocess.Popen([sys.executable, "-m", "mnistkit.commands.download", f"--data_dir={data_dir}",
                                     f"--source={url}"], cwd=REPO, stderr=subprocess.PIPE, text=True)
            deadline = time.time() + 60
            while not (data_dir.exists() and any(n.startswith(".tmp-") for n in os.listdir(data_dir))):
                assert time.time() < deadline and proc.poll() is None, "no partial file ever appeared"
                time.sleep(0.05)
            time.sleep(0.5)  # Let the client get into its read of the stalled body.
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=30)
        finally:
            release.set()
    assert proc.returncode == 143, stderr
    assert os.listdir(data_dir) == []


# --- mnist-validate. ---------------------------------------------------------------


def test_validate_writes_json_and_markdown_reports(synthetic_data, tmp_path):
    # The console script, as installed by setup.cfg.
    result = subprocess.run([os.path.join(BIN, "mnist-validate"), f"--data_dir={synthetic_data}",
                             f"--report_dir={tmp_path}", "--nocanonical"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["splits"]["train"]["examples"] == 600 and report["splits"]["test"]["examples"] == 200
    assert report["splits"]["test"]["class_counts"] == [20] * 10
    assert set(report["sha256"]) == set(idx.FILES)
    assert "| test | 200 |" in (tmp_path / "report.md").read_text()


def test_validate_refuses_a_subset_as_canonical(synthetic_data, tmp_path):
    result = _run("validate", "--data_dir", synthetic_data, "--report_dir", tmp_path)
    assert result.returncode == 1
    assert _error_line(result) == (f"mnist-validate: error: {os.path.join(synthetic_data, idx.TRAIN.images)}: "
                                   "count: expected 60000, found 600")
    assert os.listdir(tmp_path) == []  # No report for bad data.


def test_validate_names_a_bad_label(tmp_path):
    data_dir = synthetic.write_dataset(tmp_path / "data", n_train=20, n_test=10)
    labels = synthetic.digits(10, 1)[1]
    labels[7] = 12
    idx.write_idx(os.path.join(data_dir, idx.TEST.labels), labels)
    result = _run("validate", "--data_dir", data_dir, "--nocanonical")
    assert result.returncode == 1
    assert _error_line(result) == (f"mnist-validate: error: {os.path.join(data_dir, idx.TEST.labels)}: label: "
                                   "expected values in 0..9, found 12 at index 7")


# --- mnist-train, mnist-evaluate, mnist-export and the seed's saved_model_cli line. -


@pytest.fixture(scope="module")
def trained(synthetic_data, tmp_path_factory) -> str:
    model_dir = tmp_path_factory.mktemp("cli-model")
    result = _run("train", "--data_dir", synthetic_data, "--model_dir", model_dir, "--train_epochs=1",
                  "--batch_size=20", "--max_train_examples=200", "--stop_threshold=0.5")
    assert result.returncode == 0, result.stderr
    return str(model_dir)


def test_train_writes_history_and_model(trained):
    history = json.loads(open(os.path.join(trained, "history.json")).read())
    assert history["epochs"] == 1
    assert history["evaluations"][0]["accuracy"] >= 0.9
    assert os.path.exists(os.path.join(trained, "model.keras"))
    config = json.loads(open(os.path.join(trained, "train_config.json")).read())
    assert (config["batch_size"], config["train_epochs"], config["stop_threshold"]) == (20, 1, 0.5)


def test_evaluate_writes_metrics(trained, synthetic_data, tmp_path):
    output = tmp_path / "metrics.json"
    result = _run("evaluate", "--model_dir", trained, "--data_dir", synthetic_data, "--output", output)
    assert result.returncode == 0, result.stderr
    metrics = json.loads(output.read_text())
    assert np.array(metrics["confusion_matrix"]).sum() == 200
    assert metrics["accuracy"] >= 0.9 and len(metrics["precision"]) == len(metrics["recall"]) == 10


def test_export_and_the_seeds_saved_model_cli_line(trained, synthetic_data, tmp_path):
    export_dir = tmp_path / "export"
    result = _run("export", "--model_dir", trained, "--export_dir", export_dir)
    assert result.returncode == 0, result.stderr
    path = result.stdout.strip().splitlines()[-1]
    assert os.path.dirname(path) == str(export_dir) and os.path.basename(path).isdigit()
    assert os.listdir(export_dir) == [os.path.basename(path)]

    # The README's line that makes examples.npy, run as it is but for the data directory.
    with open(os.path.join(REPO, "README.md")) as f:
        (make,) = [line for line in f if line.startswith('python -c "import numpy as np; from mnistkit import idx')]
    code = shlex.split(make)[2].replace("'work/data'", repr(str(synthetic_data))).replace("x[:2]", "x[:6]")
    made = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    images, labels = idx.load_split(synthetic_data, idx.TEST)
    np.testing.assert_array_equal(np.load(tmp_path / "examples.npy"), (images[:6] / 255.0).astype(np.float32))
    # The line from the seed's README, verbatim but for the paths.
    result = subprocess.run([os.path.join(BIN, "saved_model_cli"), "run", "--dir", path, "--tag_set", "serve",
                             "--signature_def", "classify", "--inputs", "image=examples.npy"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    found = re.search(r"Result for output key classes:\s*\[([\d\s]+)\]", result.stdout)
    assert found, result.stdout
    assert [int(c) for c in found.group(1).split()] == labels[:6].tolist()
    assert "Result for output key probabilities:" in result.stdout


def test_an_export_whose_reader_went_away_still_succeeds_once(trained, tmp_path):
    """`mnist-export ... | head -0`: the SavedModel was written, then the print of its path failed and the
    command exited 1, so a script that retried wrote a second version."""
    export_dir = tmp_path / "export"
    read, write = os.pipe()
    os.close(read)  # No reader: the print meets a broken pipe.
    result = subprocess.run([sys.executable, "-m", "mnistkit.commands.export", "--model_dir", trained,
                             "--export_dir", str(export_dir)], cwd=REPO, stdout=write, stderr=subprocess.PIPE,
                            text=True, timeout=300)
    os.close(write)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Broken pipe" not in result.stderr and len(os.listdir(export_dir)) == 1


def test_running_out_of_memory_is_one_line(synthetic_data, tmp_path):
    """Under an address-space limit (ulimit -v, a container's memory) numpy's allocation failed in a traceback.

    The limit is real; the allocation past it is put in place of the statistics, since how far a real run gets
    under a given limit varies from machine to machine."""
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30)); "
            "from mnistkit import validation; validation.pixel_statistics = lambda *a, **k: bytearray(1 << 31); "
            "from mnistkit.commands import validate; validate.run()")
    result = subprocess.run([sys.executable, "-c", code, "--data_dir", synthetic_data, "--report_dir",
                             str(tmp_path / "r")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]
    assert re.fullmatch(r"\S+: error: out of memory \(.*\); free memory or raise the process's limit "
                        r"\(ulimit -v, the container's memory\) and run again", _error_line(result)), result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "r").exists()


def test_train_rejects_a_bad_threshold_in_one_line(synthetic_data, tmp_path):
    result = _run("train", "--data_dir", synthetic_data, "--model_dir", tmp_path / "m", "--stop_threshold=2")
    assert result.returncode == 1
    assert _error_line(result) == "mnist-train: error: --stop_threshold: expected in [0, 1], found 2.0"


def test_export_of_a_missing_model_in_one_line(tmp_path):
    export_dir = tmp_path / "export"
    result = _run("export", "--model_dir", tmp_path / "none", "--export_dir", export_dir)
    assert result.returncode == 1
    assert _error_line(result) == (f"mnist-export: error: {tmp_path / 'none'}: expected a trained model "
                                   "(model.keras written by mnist-train), found none")
    assert not export_dir.exists()
