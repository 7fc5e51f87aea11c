"""Two `mnist-train` processes on 127.0.0.1 training together under MultiWorkerMirroredStrategy."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

from mnistkit import run_dirs
from tests import synthetic
from tests.conftest import REPO, free_port

# 400 examples in global batches of 20 (10 per worker): 20 steps, logged
# every 5, so both workers report the same four progress lines.
STEPS_PER_EPOCH = 20


def start_cluster(data_dir, model_dir, tmp_path, train_epochs=1, collective_timeout=30, worker_data_dir=None,
                  worker_flags=(), worker_env=None, chief_env=None):
    """Starts a chief and a worker as Vertex AI would (TF_CONFIG); returns [(process, log path)]."""
    cluster = {"chief": [f"127.0.0.1:{free_port()}"], "worker": [f"127.0.0.1:{free_port()}"]}
    processes = []
    for task_type in ("chief", "worker"):
        scratch = tmp_path / f"tmp-{task_type}"
        scratch.mkdir()
        env = {**os.environ, "TMPDIR": str(scratch),
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": task_type, "index": 0}}),
               **((worker_env if task_type == "worker" else chief_env) or {})}
        log_path = tmp_path / f"{task_type}.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "mnistkit.commands.train", "--model_dir", model_dir,
                 "--data_dir", worker_data_dir if task_type == "worker" and worker_data_dir else data_dir,
                 "--distribution_strategy", "multi_worker_mirrored", "--recipe", "seed", "--learning_rate", "1e-3",
                 "--batch_size", "20", "--train_epochs", str(train_epochs), "--steps_per_loop", "5",
                 "--collective_timeout_seconds", str(collective_timeout),
                 *(worker_flags if task_type == "worker" else ())],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        processes.append((proc, log_path))
    return processes


def test_a_peer_that_never_starts_ends_the_other_within_twice_the_collective_timeout(tmp_path):
    """Creating the strategy waits for every task, in C++ and deaf to SIGTERM: without a bound it hung for good."""
    data_dir = synthetic.write_dataset(tmp_path / "data", n_train=400, n_test=100)
    chief, worker = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"  # Nothing will answer as the chief.
    env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": {"chief": [chief], "worker": [worker]},
                                                  "task": {"type": "worker", "index": 0}})}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "mnistkit.commands.train", "--data_dir", data_dir, "--model_dir",
                           str(tmp_path / "model"), "--collective_timeout_seconds", "3"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == (
        f"mnist-train: error: multi-worker training could not start: not every task of the cluster ($TF_CONFIG: "
        f"chief 0 ({chief}), worker 0 ({worker})) answered within 6 s (twice --collective_timeout_seconds); start "
        f"every task, or check that each reaches the others' addresses")
    assert time.monotonic() - started < 60
    assert not (tmp_path / "model").exists()  # The strategy starts before model_dir is made: nothing to remove.


def test_a_peer_that_fails_while_the_replicas_set_up_ends_the_other_in_one_line(tmp_path):
    """The worker's data is broken: it says so and exits; the chief, waiting for it in the first broadcast of the
    model's weights, ends with one line too, not a traceback."""
    data_dir = synthetic.write_dataset(tmp_path / "data", n_train=400, n_test=100)
    broken = synthetic.write_dataset(tmp_path / "broken", n_train=400, n_test=100)
    path = os.path.join(broken, "train-images-idx3-ubyte.gz")
    with open(path, "rb") as f:
        head = f.read(200)
    with open(path, "wb") as f:
        f.write(head)  # Cut short.
    processes = start_cluster(data_dir, str(tmp_path / "model"), tmp_path, worker_data_dir=broken)
    codes = wait_all(processes, timeout=180)
    logs = {log_path.stem: log_path.read_text() for _, log_path in processes}
    assert codes == [1, 1], {k: v[-3000:] for k, v in logs.items()}
    assert f"mnist-train: error: {path}" in logs["worker"], logs["worker"][-3000:]
    found = re.search(r"multi-worker training could not start: a peer died or stopped answering \((\w+Error: .+)\) "
                      r"while the replicas set up the model; restart every worker", logs["chief"])
    assert found, logs["chief"][-3000:]
    assert "/job:worker" in found[1]  # TensorFlow's reason names the peer.
    assert "Traceback" not in logs["chief"]


@pytest.mark.parametrize("worker_flags, differ", [
    (["--seed", "7"], "seed"),  # Part of the data unseen each pass; exited 0.
    (["--train_epochs", "2"], "train_epochs"),  # One stopped early; the other blamed a dead peer.
])
def test_replicas_that_differ_are_refused_alike_in_one_line(data_dir, tmp_path, worker_flags, differ):
    processes = start_cluster(data_dir, str(tmp_path / "model"), tmp_path, worker_flags=worker_flags)
    codes = wait_all(processes, timeout=180)
    logs = {log_path.stem: log_path.read_text() for _, log_path in processes}
    assert codes == [1, 1], {k: v[-3000:] for k, v in logs.items()}
    for log in logs.values():
        assert ("mnist-train: error: multi-worker training: expected every replica to train with the same "
                f"settings, data and checkpoint, found them differing in {differ}; give every task") in log, log[-3000:]
        assert "epoch 1: step" not in log  # Refused before any training.


def test_replicas_that_would_resume_from_different_checkpoints_are_refused(data_dir, tmp_path):
    """The worker cannot see the chief's checkpoints (its own disk, another --model_dir): it would start from
    fresh weights beside a chief at epoch 1, and the chief would write a worse model and exit 0."""
    model_dir = str(tmp_path / "model")
    (tmp_path / "first").mkdir()
    assert wait_all(start_cluster(data_dir, model_dir, tmp_path / "first"), timeout=240) == [0, 0]  # One epoch.
    processes = start_cluster(data_dir, model_dir, tmp_path, train_epochs=2,
                              worker_flags=["--model_dir", str(tmp_path / "elsewhere")])
    codes = wait_all(processes, timeout=180)
    logs = {log_path.stem: log_path.read_text() for _, log_path in processes}
    assert codes == [1, 1], {k: v[-3000:] for k, v in logs.items()}
    for log in logs.values():
        assert "found them differing in the checkpoint resumed from; give every task" in log, log[-3000:]


def test_a_peer_stuck_before_the_first_broadcast_ends_the_other_within_twice_the_timeout(data_dir, tmp_path):
    """The worker hangs reading its data (a stuck mount), alive and answering heartbeats: the chief waited in
    the broadcast of the model's first weights for good, deaf to SIGTERM."""
    stuck = tmp_path / "stuck"
    stuck.mkdir()
    # Only in the worker: its data never arrives.
    (stuck / "sitecustomize.py").write_text("import time\nfrom mnistkit import inputs\n"
                                             "inputs.load_data = lambda config: time.sleep(3600)\n")
    processes = start_cluster(data_dir, str(tmp_path / "model"), tmp_path, collective_timeout=5,
                              worker_env={"PYTHONPATH": os.pathsep.join([str(stuck), REPO])},
                              worker_flags=["--model_dir", str(tmp_path / "worker-model")])
    (chief, chief_log), (worker, _) = processes
    try:
        assert chief.wait(timeout=120) == -signal.SIGKILL, chief_log.read_text()[-3000:]
    finally:
        worker.kill()
        worker.wait()
    assert ("mnist-train: error: multi-worker training could not start: the replicas did not all read their data "
            "and set up the model within 10 s (twice --collective_timeout_seconds); a task is stuck or gone: "
            "restart every task") in chief_log.read_text()
    # The chief made model_dir and locked it; killed by its watchdog, it could not remove them itself.
    assert not (tmp_path / "model").exists(), os.listdir(tmp_path / "model")


def test_a_sigterm_to_one_replica_stops_every_replica_at_the_same_step_with_a_checkpoint(data_dir, tmp_path):
    """Vertex AI preempts a job's machines one after another. A replica that stopped alone left the chief in a
    collective until it gave up: exit 1 and no checkpoint, the epoch's steps lost. Now all stop together."""
    model_dir = str(tmp_path / "model")
    (tmp_path / "first").mkdir()
    processes = start_cluster(data_dir, model_dir, tmp_path / "first")
    (chief, chief_log), (worker, worker_log) = processes
    deadline = time.time() + 120
    while "epoch 1: step 5 of" not in worker_log.read_text() and time.time() < deadline:
        time.sleep(0.05)
    worker.send_signal(signal.SIGTERM)  # The worker only; the chief never gets one.
    codes = wait_all(processes, timeout=120)
    logs = {"chief": chief_log.read_text(), "worker": worker_log.read_text()}
    assert codes == [143, 143], {k: v[-3000:] for k, v in logs.items()}
    chief_says = re.search(r"SIGTERM to another task at epoch 1, step (\d+): saved \S*ckpt-\d+; rerun to resume",
                           logs["chief"])
    worker_says = re.search(r"SIGTERM at epoch 1, step (\d+): the chief saved a checkpoint in \S+; rerun to resume",
                            logs["worker"])
    assert chief_says and worker_says, {k: v[-3000:] for k, v in logs.items()}
    assert chief_says[1] == worker_says[1] and 5 < int(chief_says[1]) < STEPS_PER_EPOCH

    (tmp_path / "second").mkdir()
    again = start_cluster(data_dir, model_dir, tmp_path / "second")
    assert wait_all(again, timeout=240) == [0, 0]
    for _, log_path in again:
        assert re.search(rf"resumed from \S*ckpt-\d+ at epoch 0, step {chief_says[1]}\b", log_path.read_text())


def test_a_sigterm_while_the_replicas_set_up_stops_both_before_the_first_epoch(data_dir, tmp_path):
    """From the strategy's start TensorFlow's preemption notifier takes SIGTERM and only logs it: replicas
    preempted while they read their data trained the whole run and exited 0, until Vertex AI's SIGKILL."""
    slow = tmp_path / "slow"
    slow.mkdir()
    # Both replicas take 6 s to read their data, and say when they start to.
    (slow / "sitecustomize.py").write_text(
        "import time\nfrom mnistkit import inputs\nload = inputs.load_data\n"
        "def slow_load(config):\n    print('reading the data', flush=True)\n    time.sleep(6)\n"
        "    return load(config)\ninputs.load_data = slow_load\n")
    env = {"PYTHONPATH": os.pathsep.join([str(slow), REPO])}
    processes = start_cluster(data_dir, str(tmp_path / "model"), tmp_path, worker_env=env, chief_env=env)
    deadline = time.time() + 120
    while not all("reading the data" in log.read_text() for _, log in processes) and time.time() < deadline:
        time.sleep(0.05)
    processes[1][0].send_signal(signal.SIGTERM)  # The worker only: Vertex AI preempts one machine at a time.
    codes = wait_all(processes, timeout=120)
    logs = {log.stem: log.read_text() for _, log in processes}
    assert codes == [143, 143], {k: v[-3000:] for k, v in logs.items()}
    for log, says in [(logs["worker"], "SIGTERM"), (logs["chief"], "SIGTERM to another task")]:
        assert f"{says} before epoch 1: nothing lost since the last checkpoint; rerun to resume" in log, log[-3000:]
        assert "epoch 1: step" not in log


def wait_all(processes, timeout):
    deadline = time.time() + timeout
    codes = []
    for proc, log_path in processes:
        try:
            codes.append(proc.wait(timeout=max(deadline - time.time(), 1)))
        except subprocess.TimeoutExpired:
            for p, _ in processes:
                p.kill()
            pytest.fail(f"{log_path.stem} still running after {timeout} s:\n{log_path.read_text()[-3000:]}")
    return codes


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return synthetic.write_dataset(tmp_path_factory.mktemp("multiworker-data"), n_train=400, n_test=100)


def test_two_workers_train_in_step_and_only_the_chief_writes(data_dir, tmp_path):
    import tensorflow as tf

    from mnistkit import exporting

    model_dir = str(tmp_path / "model")
    processes = start_cluster(data_dir, model_dir, tmp_path)
    codes = wait_all(processes, timeout=240)
    logs = {log_path.stem: log_path.read_text() for _, log_path in processes}
    assert codes == [0, 0], {k: v[-3000:] for k, v in logs.items()}

    # Both took part: each ran every step and ended with bit-identical weights.
    for log in logs.values():
        assert "MultiWorkerMirroredStrategy with cluster_spec" in log and "num_workers = 2" in log
        steps = [int(s) for s in re.findall(rf"epoch 1: step (\d+) of {STEPS_PER_EPOCH}", log)]
        assert steps == [5, 10, 15, 20]
    digests = {name: re.search(r"trained weights sha256 ([0-9a-f]{64})", log).group(1) for name, log in logs.items()}
    assert digests["chief"] == digests["worker"], digests

    # Only the chief wrote model_dir; the worker's private copy is gone.
    assert sorted(os.listdir(model_dir)) == ["checkpoints", "history.json", "logs", "model.keras",
                                             "train_config.json"]
    assert os.listdir(tmp_path / "tmp-worker") == []
    with open(os.path.join(model_dir, "history.json")) as f:
        assert json.load(f)["epochs"] == 1

    # The chief's model exports and its `classify` signature answers.
    path = exporting.export(model_dir, str(tmp_path / "export"))
    images, labels = synthetic.digits(100, seed=1)
    out = tf.saved_model.load(path).signatures["classify"](image=tf.constant(images / 255.0, tf.float32))
    assert out["classes"].dtype == tf.int64 and out["probabilities"].shape == (100, 10)
    assert np.mean(out["classes"].numpy() == labels) > 0.9


@pytest.mark.parametrize("fault", ["dies", "hangs"])
def test_a_worker_that_dies_or_hangs_makes_the_chief_fail_clearly(data_dir, tmp_path, monkeypatch, fault):
    """A SIGKILLed worker closes its connections; a SIGSTOPped one (a frozen VM) keeps them open and never
    answers, so only the collective timeout can end the chief."""
    model_dir = str(tmp_path / "model")
    processes = start_cluster(data_dir, model_dir, tmp_path, train_epochs=20, collective_timeout=20)
    (chief, chief_log), (worker, worker_log) = processes
    deadline = time.time() + 180
    while "epoch 1: step 5 of" not in chief_log.read_text():
        if time.time() > deadline or chief.poll() is not None:
            wait_all(processes, timeout=1)
            pytest.fail(f"the cluster never started training:\n{chief_log.read_text()[-3000:]}")
        time.sleep(0.2)
    worker.send_signal(signal.SIGKILL if fault == "dies" else signal.SIGSTOP)
    killed_at = time.time()
    try:
        # Bounded: a dead or silent peer must end the chief within the collective timeout plus shutdown.
        assert wait_all([(chief, chief_log)], timeout=90) == [1]
        assert time.time() - killed_at < 90
    finally:
        worker.kill()  # A stopped process still dies on SIGKILL.
    log = chief_log.read_text()
    found = re.search(r"multi-worker training stopped in epoch \d+: a peer died or stopped answering "
                      r"\((\w+Error: .+)\); restart every worker to resume from the last checkpoint", log)
    assert found, log[-3000:]
    assert found[1] != "UnavailableError: Graph execution error:"  # TensorFlow's reason, not its header.
    assert "Traceback" not in log
    worker.wait(timeout=10)

    # The killed worker could not delete its scratch directory; the next worker on this host does.
    scratch = tmp_path / "tmp-worker"
    host = re.escape(socket.gethostname())

    def worker_dirs():
        return [e for e in os.listdir(scratch) if e.endswith(f"-{run_dirs.WORKER_DIR_NAME}")]

    left = worker_dirs()
    assert len(left) == 1 and re.fullmatch(rf"\.tmp-{host}@{worker.pid}-\w+-{run_dirs.WORKER_DIR_NAME}", left[0]), \
        os.listdir(scratch)
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    mine = run_dirs.worker_dir()
    assert worker_dirs() == [os.path.basename(mine)]
