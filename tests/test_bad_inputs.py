"""Bad inputs through the real commands: each exits non-zero with one line naming the input, expected and found."""

import gzip
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from mnistkit import idx
from tests import synthetic
from tests.conftest import REPO, free_port

LABELS = os.path.join("{d}", idx.TRAIN.labels)
IMAGES = os.path.join("{d}", idx.TRAIN.images)


def run(*args, timeout=120):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def error_line(result, prog) -> str:
    """The one error line a command printed; fails unless it exited 1 with exactly that and no traceback."""
    assert result.returncode == 1, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith(f"{prog}: error: ")]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


def write_raw(path, payload: bytes, compress=True):
    with open(path, "wb") as f:
        f.write(gzip.compress(payload, mtime=0) if compress else payload)


def truncate(path, size):
    with open(path, "r+b") as f:
        f.truncate(size)


def idx_bytes(array) -> bytes:
    """The uncompressed IDX encoding of `array` (as write_idx would gzip it)."""
    array = np.asarray(array, dtype=np.uint8)
    return (bytes([0, 0, 8, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape) + array.tobytes())


# Each case breaks one file of a good data directory; the message must name
# the file, the field, what was expected and what was found.
CASES = {
    "wrong magic": (lambda d: write_raw(LABELS.format(d=d), idx_bytes(np.zeros((600, 28, 28)))),
                    idx.TRAIN.labels, "magic number: expected 2049 (0x00000801: a labels file), found 2051 "
                    "(0x00000803: an images file)"),
    "truncated idx": (lambda d: write_raw(IMAGES.format(d=d), idx_bytes(np.zeros((600, 28, 28)))[:-100]),
                      idx.TRAIN.images, "length: expected 470416 bytes for shape (600, 28, 28), found 470316 bytes"),
    "truncated gzip": (lambda d: truncate(IMAGES.format(d=d), 500),
                       idx.TRAIN.images, "gzip stream: expected a complete gzip stream, found a broken one"),
    "not gzip": (lambda d: write_raw(LABELS.format(d=d), idx_bytes(np.zeros(600)), compress=False),
                 idx.TRAIN.labels, "format: expected gzip data (first bytes 1f 8b), found first bytes 00 00"),
    "label out of range": (lambda d: write_raw(LABELS.format(d=d), idx_bytes([3] * 599 + [12])),
                           idx.TRAIN.labels, "label: expected values in 0..9, found 12 at index 599"),
    "counts disagree": (lambda d: write_raw(LABELS.format(d=d), idx_bytes([1] * 500)),
                        idx.TRAIN.images, "count: expected 500 images, as many as train-labels-idx1-ubyte.gz has "
                        "labels, found 600"),
    "wrong image size": (lambda d: write_raw(IMAGES.format(d=d), idx_bytes(np.zeros((600, 20, 20)))),
                         idx.TRAIN.images, "image size: expected 28x28, found 20x20"),
    "empty file": (lambda d: write_raw(LABELS.format(d=d), b"", compress=False),
                   idx.TRAIN.labels, "size: expected a gzipped IDX file, found an empty file (0 bytes)"),
    "missing file": (lambda d: os.remove(IMAGES.format(d=d)),
                     idx.TRAIN.images, "file: expected an existing file, found no such file"),
    "no data dir": (lambda d: shutil.rmtree(d), "", "data directory: expected an existing directory, "
                    "found no such directory"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_data_is_refused_by_mnist_validate(case, tmp_path):
    data_dir = synthetic.write_dataset(tmp_path / "data")
    breaks, name, message = CASES[case]
    breaks(data_dir)
    line = error_line(run("-m", "mnistkit.commands.validate", "--data_dir", data_dir, "--nocanonical", "--report_dir",
                          str(tmp_path / "report")), "mnist-validate")
    named = os.path.join(data_dir, name) if name else data_dir
    assert line.startswith(f"mnist-validate: error: {named}: {message}"), line
    assert not (tmp_path / "report").exists()  # Nothing half-written.


def test_bad_data_is_refused_by_mnist_train_before_any_output(tmp_path):
    data_dir = synthetic.write_dataset(tmp_path / "data")
    write_raw(LABELS.format(d=data_dir), idx_bytes([3] * 599 + [12]))
    model_dir = tmp_path / "model"
    line = error_line(run("-m", "mnistkit.commands.train", "--data_dir", data_dir, "--model_dir", str(model_dir)),
                      "mnist-train")
    assert f"{LABELS.format(d=data_dir)}: label: expected values in 0..9, found 12 at index 599" in line
    assert not model_dir.exists()


@pytest.mark.parametrize("flag, value, message", [
    ("--train_epochs", "0", "train_epochs: expected at least 1, found 0"),
    ("--batch_size", "0", "batch_size: expected at least 1, found 0"),
    ("--stop_threshold", "1.5", "stop_threshold: expected in [0, 1], found 1.5"),
    # Values whose arithmetic overflowed, or which ran out of memory, or which silently meant something else.
    ("--learning_rate", "inf", "learning_rate: expected a finite number, found inf"),
    ("--epoch_fraction", "inf", "epoch_fraction: expected a finite number, found inf"),
    ("--epoch_fraction", "1e30", "epoch_fraction: expected in (0, 100], found 1e+30"),
    ("--warmup_epochs", "inf", "warmup_epochs: expected a finite number, found inf"),
    ("--max_train_examples", "-1", "max_train_examples: expected at least 1, found -1"),
    ("--seed", "-1", "seed: expected in [0, 4294967295], found -1"),
    ("--num_gpus", "-1", "num_gpus: expected at least 0, found -1"),
    ("--collective_timeout_seconds", "0", "collective_timeout_seconds: expected above 0, found 0.0"),
])
def test_training_parameters_out_of_range(flag, value, message, synthetic_data, tmp_path):
    line = error_line(run("-m", "mnistkit.commands.train", "--data_dir", synthetic_data, "--model_dir",
                          str(tmp_path / "model"), flag, value), "mnist-train")
    assert line == f"mnist-train: error: --{message}"  # The library's setting, named as the command's flag.


def test_clean_deletes_nothing_until_the_data_reads(synthetic_data, tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.keras").write_text("the previous run's model")
    line = error_line(run("-m", "mnistkit.commands.train", "--data_dir", str(tmp_path / "typo"), "--model_dir",
                          str(model_dir), "--clean"), "mnist-train")
    assert "typo: data directory: expected an existing directory, found no such directory" in line
    assert (model_dir / "model.keras").read_text() == "the previous run's model"
    # A model_dir that holds the data is never deleted.
    line = error_line(run("-m", "mnistkit.commands.train", "--data_dir", synthetic_data, "--model_dir",
                          os.path.dirname(synthetic_data), "--clean"), "mnist-train")
    assert line == (f"mnist-train: error: --clean: expected a --model_dir that does not hold the data, found "
                    f"--data_dir {synthetic_data} inside {os.path.dirname(synthetic_data)}")
    assert sorted(os.listdir(synthetic_data)) == sorted(idx.FILES)


def test_a_checkpoint_of_another_model_is_refused(synthetic_data, tmp_path):
    import tensorflow as tf

    from mnistkit.model import keras

    model_dir = tmp_path / "model"
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    saved = tf.train.CheckpointManager(tf.train.Checkpoint(model=other), str(model_dir / "checkpoints"), 1).save()
    line = error_line(run("-m", "mnistkit.commands.train", "--data_dir", synthetic_data, "--model_dir", str(model_dir)),
                      "mnist-train")
    assert line.startswith(f"mnist-train: error: {model_dir}: expected a checkpoint of this model to resume from, "
                           f"found {saved}, which does not match it"), line
    assert line.endswith("use --clean or another --model_dir")
    assert not (model_dir / "model.keras").exists()


def test_a_tpu_that_is_not_there_is_one_line_not_a_traceback(synthetic_data, tmp_path):
    """A TPU template run where no TPU is (this machine has none) fails at once, naming --tpu, writing nothing."""
    result = run("-m", "mnistkit.commands.train", "--data_dir", synthetic_data, "--model_dir", str(tmp_path / "model"),
                 "--tpu", "local")
    line = error_line(result, "mnist-train")
    assert line.startswith("mnist-train: error: --tpu local: expected a TPU this machine can reach, found none ("), line
    assert line.endswith("leave --tpu unset to train on the CPU or GPUs"), line
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "model").exists()  # Nothing written, not even an empty model_dir.


@pytest.mark.parametrize("tpu", ["local", "no-such-tpu"])
def test_a_tpu_name_no_one_answers_is_one_line_too(synthetic_data, tmp_path, tpu):
    line = error_line(run("-m", "mnistkit.commands.train", "--data_dir", synthetic_data, "--model_dir",
                          str(tmp_path / "model"), "--tpu", tpu), "mnist-train")
    assert line.startswith(f"mnist-train: error: --tpu {tpu}: expected a TPU this machine can reach, found none ("), line
    assert not (tmp_path / "model").exists()


def test_a_tpu_address_where_nothing_listens_is_one_line_at_once(synthetic_data, tmp_path):
    """TensorFlow retried the connection to a grpc:// address with no bound: the run hung for good."""
    port = free_port()  # Nothing listens there.
    started = time.monotonic()
    line = error_line(run("-m", "mnistkit.commands.train", "--data_dir", synthetic_data, "--model_dir",
                          str(tmp_path / "model"), "--tpu", f"grpc://127.0.0.1:{port}", timeout=90), "mnist-train")
    assert line == (f"mnist-train: error: --tpu grpc://127.0.0.1:{port}: expected a TPU this machine can reach, found "
                    f"none (nothing answers at 127.0.0.1:{port}: Connection refused); leave --tpu unset to train on "
                    "the CPU or GPUs")
    assert time.monotonic() - started < 60
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize("tpu, missing", [("grpc://10.0.0.2", "port number"), ("grpc://:8470", "host"),
                                          ("grpc://10.0.0.2:tpu", "port number")])
def test_a_tpu_address_without_host_or_port_is_named(synthetic_data, tmp_path, tpu, missing):
    line = error_line(run("-m", "mnistkit.commands.train", "--data_dir", synthetic_data, "--model_dir",
                          str(tmp_path / "model"), "--tpu", tpu), "mnist-train")
    assert line == f"mnist-train: error: --tpu {tpu}: expected grpc://HOST:PORT, a TPU name or 'local', found no " \
                   f"{missing} in it"
    assert not (tmp_path / "model").exists()


def test_a_tpu_address_that_accepts_but_never_answers_ends_the_run_within_its_bound(synthetic_data, tmp_path):
    """A listener that is no TPU worker: TensorFlow waits for it inside C++ holding the GIL and deaf to SIGTERM.
    The watchdog ends it after twice --collective_timeout_seconds, and model_dir was not made yet."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)  # Connections queue in the backlog, accepted by the kernel; nothing ever replies.
        address = "grpc://127.0.0.1:%d" % listener.getsockname()[1]
        started = time.monotonic()
        result = run("-m", "mnistkit.commands.train", "--data_dir", synthetic_data, "--model_dir",
                     str(tmp_path / "model"), "--tpu", address, "--collective_timeout_seconds", "3", timeout=90)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        f"mnist-train: error: --tpu {address}: expected a TPU this machine can reach, found none that answered "
        "within 6 s (twice --collective_timeout_seconds); check that the address is a TPU worker's (port 8470), or "
        "leave --tpu unset to train on the CPU or GPUs"), result.stderr[-2000:]
    assert time.monotonic() - started < 60
    assert not (tmp_path / "model").exists()


@pytest.mark.privileged  # A PID namespace of its own needs root.
def test_a_bounded_wait_ends_the_run_also_where_it_is_pid_1_which_sigkill_from_inside_cannot_end(synthetic_data,
                                                                                                  tmp_path):
    """`docker run IMAGE mnist-train ...` without an init: the kernel drops the watchdog's SIGKILL to its
    namespace's first process, and the run hung past its bound. faulthandler's timer thread ends it instead."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        address = "grpc://127.0.0.1:%d" % listener.getsockname()[1]
        # --kill-child: should the test time out, the run goes with unshare (whose SIGKILL comes from outside).
        result = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", sys.executable, "-m",
                                 "mnistkit.commands.train", "--data_dir", synthetic_data, "--model_dir",
                                 str(tmp_path / "model"), "--tpu", address, "--collective_timeout_seconds", "2"],
                                cwd=REPO, capture_output=True, text=True, timeout=90)
    assert error_line(result, "mnist-train").startswith(
        f"mnist-train: error: --tpu {address}: expected a TPU this machine can reach, found none that answered "
        "within 4 s"), result.stderr[-2000:]
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize("tf_config, message", [
    ("[]", "$TF_CONFIG: expected a JSON object with 'cluster' and 'task' objects, found []"),
    ('{"cluster": ["a"]}', """$TF_CONFIG: expected a JSON object with 'cluster' and 'task' objects, found """
                           """{"cluster": ["a"]}"""),
    ("{bad", "$TF_CONFIG: expected a JSON object, found text that does not parse (Expecting property name enclosed "
             "in double quotes: line 1 column 2 (char 1))"),
    # Roles this trainer does not play, or a task outside the cluster: each trained alone and exited 0.
    ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "worker", "index": 1}}',
     "$TF_CONFIG: expected a task that names one of the cluster's tasks (worker 0-0), found {'type': 'worker', "
     "'index': 1}"),
    ('{"cluster": {"chief": ["h:1"], "worker": ["h:2"]}, "task": {"type": "worker", "index": "0"}}',
     "$TF_CONFIG: expected a task that names one of the cluster's tasks (chief 0-0, worker 0-0), found "
     "{'type': 'worker', 'index': '0'}"),
    ('{"cluster": {"chief": ["h:1"], "evaluator": ["h:2"]}, "task": {"type": "evaluator", "index": 0}}',
     "$TF_CONFIG: expected a cluster of 'chief' and 'worker' tasks, found evaluator"),
    ('{"cluster": {"master": ["h:1"], "worker": ["h:2"]}, "task": {"type": "worker", "index": 0}}',
     "$TF_CONFIG: expected 'chief' for the first task of a multi-worker cluster (MultiWorkerMirroredStrategy takes "
     "no 'master'), found master"),
    # A bare address counted its 15 characters as tasks: a multi-worker strategy for one task, then a traceback.
    ('{"cluster": {"chief": "127.0.0.1:23470"}, "task": {"type": "chief", "index": 0}}',
     "$TF_CONFIG: expected each job of 'cluster' to be a list of host:port addresses, found chief: "
     '"127.0.0.1:23470"'),
    ('{"cluster": {"chief": ["h:1"], "worker": []}, "task": {"type": "chief", "index": 0}}',
     "$TF_CONFIG: expected each job of 'cluster' to be a list of host:port addresses, found worker: []"),
    ('{"task": {"type": "worker", "index": 0}}',
     """$TF_CONFIG: expected a 'cluster' of host:port addresses beside its 'task', found none in """
     """{"task": {"type": "worker", "index": 0}}"""),
    ('{"cluster": {"chief": ["h:1", "h:2"], "worker": ["h:3"]}, "task": {"type": "chief", "index": 1}}',
     "$TF_CONFIG: expected one 'chief' task, found 2 (h:1, h:2); list the others as 'worker'"),
])
def test_a_malformed_tf_config_names_it(synthetic_data, tmp_path, tf_config, message):
    result = subprocess.run([sys.executable, "-m", "mnistkit.commands.train", "--data_dir", synthetic_data,
                             "--model_dir", str(tmp_path / "model")], cwd=REPO, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "TF_CONFIG": tf_config})
    assert error_line(result, "mnist-train") == f"mnist-train: error: {message}"


@pytest.mark.parametrize("strategy", ["off", "one_device", "mirrored"])
def test_a_one_process_strategy_under_a_multi_task_tf_config_is_refused(synthetic_data, tmp_path, strategy):
    """Each task trained alone on all the data; the worker exited 0 with an empty model_dir."""
    tf_config = {"cluster": {"chief": ["127.0.0.1:1"], "worker": ["127.0.0.1:2"]}, "task": {"type": "worker",
                                                                                        "index": 0}}
    result = subprocess.run([sys.executable, "-m", "mnistkit.commands.train", "--data_dir", synthetic_data,
                             "--model_dir", str(tmp_path / "model"), "--distribution_strategy", strategy],
                            cwd=REPO, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "TF_CONFIG": json.dumps(tf_config)})
    assert error_line(result, "mnist-train") == (
        f"mnist-train: error: --distribution_strategy: expected default or multi_worker_mirrored where $TF_CONFIG "
        f"names 2 tasks, found {strategy!r}, which would train each task alone")
    assert not (tmp_path / "model").exists()


def test_vertex_cluster_spec_without_tf_config_is_refused_not_trained_alone_on_every_replica(synthetic_data,
                                                                                             tmp_path):
    """Vertex AI sets TF_CONFIG beside its CLUSTER_SPEC; a container that lost it would make every replica a chief."""
    spec = {"cluster": {"workerpool0": ["cmle-training-workerpool0-1-0:2222"],
                        "workerpool1": ["cmle-training-workerpool1-1-0:2222"]},
            "environment": "cloud", "task": {"type": "workerpool1", "index": 0}}
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    result = subprocess.run([sys.executable, "-m", "mnistkit.commands.train", "--data_dir", synthetic_data,
                             "--model_dir", str(tmp_path / "model")], cwd=REPO, capture_output=True, text=True,
                            timeout=120, env={**env, "CLUSTER_SPEC": json.dumps(spec)})
    assert error_line(result, "mnist-train") == (
        "mnist-train: error: $TF_CONFIG: expected the cluster TensorFlow reads (Vertex AI sets it beside "
        "$CLUSTER_SPEC), found it unset while $CLUSTER_SPEC names 2 replicas; each would train alone")
    assert not (tmp_path / "model").exists()


VERTEX_TWO_REPLICAS = {"cluster": {"workerpool0": ["cmle-training-workerpool0-1-0:2222"],
                                   "workerpool1": ["cmle-training-workerpool1-1-0:2222"]},
                       "environment": "cloud", "task": {"type": "workerpool1", "index": 0}}


@pytest.mark.parametrize("cluster_spec, tf_config, message", [
    # Vertex AI's own account of the job, unreadable: it was ignored, and every replica trained as the chief.
    ("{not json", None, "$CLUSTER_SPEC: expected Vertex AI's JSON object whose 'cluster' lists each worker pool's "
                        "addresses, found {not json"),
    ('{"cluster": "workerpool0"}', None, "$CLUSTER_SPEC: expected Vertex AI's JSON object whose 'cluster' lists each "
                                         """worker pool's addresses, found {"cluster": "workerpool0"}"""),
    # TF_CONFIG rewritten in the container: Vertex AI made this replica worker 0, TF_CONFIG makes it the chief.
    (VERTEX_TWO_REPLICAS, {"cluster": {"chief": ["127.0.0.1:1"], "worker": ["127.0.0.1:2"]},
                           "task": {"type": "chief", "index": 0}},
     "$TF_CONFIG: expected the task $CLUSTER_SPEC names (workerpool1 0, which TensorFlow calls worker 0), found "
     "{'type': 'chief', 'index': 0}; leave TF_CONFIG as Vertex AI sets it"),
    # ... or names a cluster of another size: a peer that never comes, or one left out.
    (VERTEX_TWO_REPLICAS, {"cluster": {"chief": ["127.0.0.1:1"]}, "task": {"type": "chief", "index": 0}},
     "$TF_CONFIG: expected the 2 replicas $CLUSTER_SPEC names, found 1 tasks; leave TF_CONFIG as Vertex AI sets it"),
])
def test_a_vertex_cluster_spec_that_is_malformed_or_contradicts_tf_config_is_named(synthetic_data, tmp_path,
                                                                                   cluster_spec, tf_config, message):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "CLUSTER_SPEC")}
    env["CLUSTER_SPEC"] = cluster_spec if isinstance(cluster_spec, str) else json.dumps(cluster_spec)
    if tf_config:
        env["TF_CONFIG"] = json.dumps(tf_config)
    result = subprocess.run([sys.executable, "-m", "mnistkit.commands.train", "--data_dir", synthetic_data,
                             "--model_dir", str(tmp_path / "model")], cwd=REPO, capture_output=True, text=True,
                            timeout=120, env=env)
    assert error_line(result, "mnist-train") == f"mnist-train: error: {message}"
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize("flag, variable", [("--tensorboard_dir", None), ("--checkpoint_dir", None),
                                            (None, "AIP_TENSORBOARD_LOG_DIR"), (None, "AIP_CHECKPOINT_DIR")])
def test_a_blank_training_directory_is_named_not_made_in_the_working_directory(synthetic_data, tmp_path, flag,
                                                                                variable):
    """A directory named by blanks was made where the run started (Vertex AI: the container's working directory,
    gone with the job), and the summaries or checkpoints with it."""
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIP_")}
    env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")])
    if variable:
        env[variable] = "  "
    result = subprocess.run([sys.executable, "-m", "mnistkit.commands.train", "--data_dir", synthetic_data,
                             "--model_dir", str(tmp_path / "model"), *([flag, "  "] if flag else [])],
                            cwd=work, capture_output=True, text=True, timeout=120, env=env)
    assert error_line(result, "mnist-train") == f"mnist-train: error: {flag or variable}: expected a path or a gs:// URI, found '  '"
    assert os.listdir(work) == []
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize("flag", ["--model_dir", "--checkpoint_dir", "--tensorboard_dir"])
def test_a_file_where_a_training_directory_goes_is_named_before_training(synthetic_data, tmp_path, flag):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    paths = {"--model_dir": str(tmp_path / "model"), flag: str(a_file / "sub")}
    result = run("-m", "mnistkit.commands.train", "--data_dir", synthetic_data, *[x for kv in paths.items() for x in kv])
    what = {"--model_dir": "--model_dir", "--checkpoint_dir": "the checkpoint directory",
            "--tensorboard_dir": "the TensorBoard directory"}[flag]
    assert error_line(result, "mnist-train") == \
        f"mnist-train: error: {what}: expected a directory, or a path where one can be made, found a file: {a_file}"
    assert sorted(os.listdir(tmp_path)) == ["a-file"]  # Not even an empty model_dir.


def test_a_history_that_mnist_train_did_not_write_is_named(synthetic_data, tmp_path):
    model_dir = tmp_path / "model"
    first = run("-m", "mnistkit.commands.train", "--data_dir", synthetic_data, "--model_dir", str(model_dir),
                "--train_epochs", "1", "--batch_size", "20")
    assert first.returncode == 0, first.stderr[-2000:]
    (model_dir / "history.json").write_text('{"foo": 1}')
    line = error_line(run("-m", "mnistkit.commands.train", "--data_dir", synthetic_data, "--model_dir",
                          str(model_dir), "--train_epochs", "2", "--batch_size", "20"), "mnist-train")
    assert line == (f"mnist-train: error: {model_dir / 'history.json'}: expected training's history "
                    "({'evaluations': [{'epoch', 'loss', 'accuracy'}, ...]}), found unreadable content (KeyError: "
                    "'evaluations'); use --clean or another --model_dir")


def test_evaluate_checks_where_it_writes_before_it_evaluates(synthetic_data, tmp_path):
    from mnistkit.model import create_model

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    create_model("channels_last").save(model_dir / "model.keras")
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    evaluate = ("-m", "mnistkit.commands.evaluate", "--data_dir", synthetic_data, "--model_dir")
    assert error_line(run(*evaluate, str(model_dir), "--output", str(tmp_path)), "mnist-evaluate") == \
        f"mnist-evaluate: error: --output: expected a file to write, found a directory: {tmp_path}"
    assert error_line(run(*evaluate, str(model_dir), "--report_dir", str(a_file / "report")), "mnist-evaluate") == \
        (f"mnist-evaluate: error: --report_dir: expected a directory, or a path where one can be made, found a "
         f"file: {a_file}")
    (tmp_path / "taken" / "report.html").mkdir(parents=True)
    assert error_line(run(*evaluate, str(model_dir), "--report_dir", str(tmp_path / "taken")), "mnist-evaluate") == \
        (f"mnist-evaluate: error: --report_dir: expected {tmp_path / 'taken' / 'report.html'} to be a file to write, "
         f"found a directory")
    (model_dir / "history.json").write_text('{"evaluations": [{"epoch": 1e400, "loss": 1, "accuracy": 0.5}]}')
    line = error_line(run(*evaluate, str(model_dir), "--report_dir", str(tmp_path / "report")), "mnist-evaluate")
    assert line.startswith(f"mnist-evaluate: error: {model_dir / 'history.json'}: expected training's history"), line
    (model_dir / "history.json").unlink()
    assert sorted(os.listdir(model_dir)) == ["model.keras"]  # No metrics.json from a run that failed.
    # --model_dir naming the model file: the metrics go beside it.
    done = run(*evaluate, str(model_dir / "model.keras"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(os.listdir(model_dir)) == ["metrics.json", "model.keras"]


@pytest.mark.parametrize("command, flag", [("download", "--data_dir"), ("validate", "--data_dir"),
                                           ("validate", "--report_dir"), ("evaluate", "--report_dir"),
                                           ("evaluate", "--output")])
def test_an_empty_path_names_its_flag(command, flag, tmp_path):
    """An optional path given empty (`--report_dir=$DIR`, DIR unset) was taken for none: no report, exit 0."""
    required = {"download": ["--data_dir", tmp_path / "d"], "validate": ["--data_dir", tmp_path / "d"],
                "evaluate": ["--data_dir", tmp_path / "d", "--model_dir", tmp_path / "m"]}[command]
    kind = "a file path" if flag == "--output" else "a directory"
    assert error_line(run("-m", f"mnistkit.commands.{command}", *map(str, required), f"{flag}="),
                      f"mnist-{command}") == f"mnist-{command}: error: {flag}: expected {kind}, found an empty path"
    assert not os.listdir(tmp_path)


def test_an_export_dir_that_cannot_be_created_is_refused(tmp_path):
    from mnistkit.model import create_model

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    create_model("channels_last").save(model_dir / "model.keras")
    # Tests run as root, for whom chmod does not make a directory read-only:
    # a path under a regular file cannot be created by anyone.
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    export_dir = blocker / "export"
    line = error_line(run("-m", "mnistkit.commands.export", "--model_dir", str(model_dir),
                          "--export_dir", str(export_dir)),
                      "mnist-export")
    assert line == (f"mnist-export: error: {export_dir}: expected a writable export directory, found that it "
                    "cannot be created (Not a directory)")


@pytest.mark.parametrize("command, flags, flag", [
    ("export", ["--model_dir", "model", "--export_dir", "gs://bucket/exports"], "--export_dir"),
    ("train", ["--data_dir", "data", "--model_dir", "gs://bucket/model"], "--model_dir"),
    ("evaluate", ["--model_dir", "model", "--data_dir", "data", "--output", "gs://bucket/metrics.json"], "--output"),
    ("validate", ["--data_dir", "gs://bucket/data"], "--data_dir"),
    ("download", ["--data_dir", "gs://bucket/data", "--source", "data"], "--data_dir"),
])
def test_a_gs_path_without_the_fuse_mount_is_one_line_and_creates_nothing(tmp_path, command, flags, flag):
    # The commands write gs:// paths through Cloud Storage FUSE at /gcs, as on Vertex AI; this machine has none.
    assert not os.path.exists("/gcs")
    result = subprocess.run([sys.executable, "-m", f"mnistkit.commands.{command}", *flags], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    uri = flags[flags.index(flag) + 1]
    assert error_line(result, f"mnist-{command}") == (
        f"mnist-{command}: error: {flag}: expected a local path, or a gs:// URI where Cloud Storage FUSE is mounted "
        f"at /gcs (as on Vertex AI), found {uri} and nothing mounted at /gcs")
    assert os.listdir(tmp_path) == []  # Not a relative directory named "gs:".


# --- Pipeline and submission parameters (pipelines/compile.py, pipelines/submit.py). -----------------------


@pytest.mark.parametrize("args, message", [
    (["--hardware", "quantum"], "--hardware: expected one of cpu, gpu, multiworker, tpu, found 'quantum'"),
    (["--hardware", "gpu", "--accelerator_type", "NVIDIA_TESLA_Z9"],
     "--accelerator_type: expected one of NVIDIA_L4, "),
])
def test_compile_refuses_unknown_hardware(args, message, tmp_path):
    output = tmp_path / "pipeline.yaml"
    line = error_line(run("pipelines/compile.py", "--output", str(output), *args), "compile.py")
    assert line.startswith(f"compile.py: error: {message}"), line
    assert not os.listdir(tmp_path)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    path = tmp_path_factory.mktemp("template") / "pipeline.yaml"
    result = run("pipelines/compile.py", "--output", str(path))
    assert result.returncode == 0, result.stderr[-3000:]
    return str(path)


@pytest.mark.parametrize("args, message", [
    (["--pipeline_root", "/tmp/artifacts"], "--pipeline_root: expected gs://BUCKET[/PATH]"),
    (["--pipeline_root", "s3://bucket/root"], "--pipeline_root: expected gs://BUCKET[/PATH]"),
    (["--param", "train_epochs=-3"], "parameter train_epochs: expected at least 0, found -3"),
    (["--param", "batch_size=-1"], "parameter batch_size: expected at least 0, found -1"),
    (["--param", "stop_threshold=1.5"], "parameter stop_threshold: expected a value in [0.0, 1.0], found 1.5"),
    (["--param", "stop_threshold=-0.1"], "parameter stop_threshold: expected a value in [0.0, 1.0], found -0.1"),
    (["--param", "train_epochs=5_000"], "parameter train_epochs: expected an integer, found '5_000'"),
    (["--param", "learning_rate=1e-400"], "parameter learning_rate: expected a number a double holds without "
     "rounding it to 0, found '1e-400'"),
    (["--param", "stop_threshold=0.5"], "parameter stop_threshold: expected at least min_accuracy 0.98 (training "
     "would stop before the export gate's accuracy), found 0.5"),
    (["--service_account", "nobody"], "--service_account: expected an e-mail"),
])
def test_submit_refuses_bad_parameters_before_contacting_anything(args, message, template):
    # Unroutable endpoints: a submission that got past the checks would fail differently.
    line = error_line(run("pipelines/submit.py", "--template", template, "--project", "my-project-1",
                          "--region", "us-central1", "--pipeline_root", "gs://my-bucket/root",
                          "--service_account", "trainer@my-project-1.iam.gserviceaccount.com",
                          "--api_endpoint", "http://127.0.0.1:9", *args), "submit.py")
    assert line.startswith(f"submit.py: error: {message}"), line
