"""Preemption: `mnist-train` killed mid-epoch (SIGTERM, SIGKILL) resumes, and a kill never breaks an output."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest

from tests import synthetic
from tests.conftest import REPO

# 800 examples in batches of 40 with 2 steps per compiled call: an epoch
# lasts a few seconds here and logs ten progress lines, so a test can aim a
# signal at the middle of one.
STEPS_PER_EPOCH = 20
TRAIN_FLAGS = ["--recipe", "seed", "--learning_rate", "1e-3", "--batch_size", "40", "--train_epochs", "2",
               "--steps_per_loop", "2"]


class Trainer:
    """`python -m mnistkit.commands.train` as a child process whose log goes to a file the test reads."""

    def __init__(self, data_dir, model_dir, log_path, cwd=REPO, flags=()):
        self.log_path = log_path
        self.log_file = open(log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mnistkit.commands.train", "--data_dir", data_dir, "--model_dir", model_dir,
             *TRAIN_FLAGS, *flags], cwd=cwd, stdout=self.log_file, stderr=subprocess.STDOUT)

    def log(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def wait_for(self, pattern: str, timeout: float = 120) -> re.Match:
        deadline = time.time() + timeout
        while time.time() < deadline:
            match = re.search(pattern, self.log())
            if match:
                return match
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.proc.kill()
        pytest.fail(f"trainer never logged {pattern!r}; log:\n{self.log()[-3000:]}")

    def wait(self, timeout: float = 120) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"trainer did not finish in {timeout} s; log:\n{self.log()[-3000:]}")
        finally:
            self.log_file.close()


def history(model_dir) -> dict:
    with open(os.path.join(model_dir, "history.json")) as f:
        return json.load(f)


def checkpoint_position(model_dir) -> tuple[int, int]:
    """(epoch, step_in_epoch) stored in the newest checkpoint."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(os.path.join(model_dir, "checkpoints"))
    return (int(reader.get_tensor("epoch/.ATTRIBUTES/VARIABLE_VALUE")),
            int(reader.get_tensor("step_in_epoch/.ATTRIBUTES/VARIABLE_VALUE")))


def assert_checkpoint_restores(model_dir) -> None:
    """The newest checkpoint is whole: every tensor reads and it restores into a fresh trainer's objects."""
    import tensorflow as tf

    from mnistkit.model import create_model, keras

    latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    assert latest, f"no checkpoint in {model_dir}"
    reader = tf.train.load_checkpoint(latest)
    for name in reader.get_variable_to_shape_map():
        reader.get_tensor(name)
    model = create_model("channels_last")
    optimizer = keras.optimizers.Adam()
    optimizer.build(model.trainable_variables)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer,
                                     epoch=tf.Variable(0, dtype=tf.int64), step_in_epoch=tf.Variable(0, dtype=tf.int64))
    checkpoint.restore(latest).assert_existing_objects_matched()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return synthetic.write_dataset(tmp_path_factory.mktemp("preemption-data"), n_train=800, n_test=200)


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory) -> dict:
    """The history of a run nobody interrupted, to compare the others with."""
    model_dir = str(tmp_path_factory.mktemp("uninterrupted"))
    run = Trainer(data_dir, model_dir, os.path.join(model_dir, "..", "uninterrupted.log"))
    assert run.wait() == 0, run.log()[-3000:]
    return history(model_dir)


def assert_same_outcome(model_dir, uninterrupted):
    result = history(model_dir)
    assert result["epochs"] == uninterrupted["epochs"] == 2
    assert [h["epoch"] for h in result["evaluations"]] == [1, 2]
    # The same weights as the run nobody interrupted, so the same test loss to the last bit: the checkpoint holds
    # all the state training reads, the dropout layer's random state included.
    assert result["evaluations"][-1] == uninterrupted["evaluations"][-1], (result, uninterrupted)
    assert os.path.exists(os.path.join(model_dir, "model.keras"))


def test_sigterm_saves_mid_epoch_and_the_rerun_resumes_at_that_step(data_dir, tmp_path, uninterrupted):
    model_dir = str(tmp_path / "model")
    first = Trainer(data_dir, model_dir, tmp_path / "first.log")
    first.wait_for(r"epoch 1: step 6 of 20")
    first.proc.send_signal(signal.SIGTERM)
    assert first.wait(timeout=60) == 143, first.log()[-3000:]
    assert re.search(r"SIGTERM at epoch 1, step \d+: saved .*ckpt-\d+; rerun to resume", first.log())
    epoch, step = checkpoint_position(model_dir)
    assert epoch == 0 and 6 <= step < STEPS_PER_EPOCH, (epoch, step)

    second = Trainer(data_dir, model_dir, tmp_path / "second.log")
    assert second.wait() == 0, second.log()[-3000:]
    assert re.search(rf"resumed from .*ckpt-\d+ at epoch 0, step {step}\b", second.log())
    # It trained only the rest of epoch 1, not the whole of it again.
    first_step_logged = int(re.search(r"epoch 1: step (\d+) of", second.log()).group(1))
    assert first_step_logged > step
    assert_same_outcome(model_dir, uninterrupted)


def test_a_relative_model_dir_resumes_too(data_dir, tmp_path, uninterrupted):
    """--model_dir work/model, as the README writes it: the checkpoint state's relative entries must not be
    joined with the directory twice (that made every resume fail and advise --clean)."""
    first = Trainer(data_dir, os.path.join("work", "model"), tmp_path / "first.log", cwd=tmp_path)
    first.wait_for(r"epoch 1: step 6 of 20")
    first.proc.send_signal(signal.SIGTERM)
    assert first.wait(timeout=60) == 143, first.log()[-3000:]
    second = Trainer(data_dir, os.path.join("work", "model"), tmp_path / "second.log", cwd=tmp_path)
    assert second.wait() == 0, second.log()[-3000:]
    assert re.search(r"resumed from work/model/checkpoints/ckpt-\d+ at epoch 0, step \d+", second.log())
    assert "cannot be read" not in second.log()
    assert_same_outcome(str(tmp_path / "work" / "model"), uninterrupted)


def test_sigkill_mid_epoch_loses_at_most_that_epoch(data_dir, tmp_path, uninterrupted):
    model_dir = str(tmp_path / "model")
    first = Trainer(data_dir, model_dir, tmp_path / "first.log")
    first.wait_for(r"epoch 2: step 6 of 20")  # Epoch 1 is checkpointed and evaluated; epoch 2 is running.
    first.proc.kill()
    assert first.wait(timeout=30) == -signal.SIGKILL
    assert checkpoint_position(model_dir) == (1, 0)
    assert_checkpoint_restores(model_dir)
    epoch1 = history(model_dir)["evaluations"]
    assert [h["epoch"] for h in epoch1] == [1]

    second = Trainer(data_dir, model_dir, tmp_path / "second.log")
    assert second.wait() == 0, second.log()[-3000:]
    assert re.search(r"resumed from .*ckpt-\d+ at epoch 1, step 0\b", second.log())
    assert "epoch 1: step" not in second.log()  # Epoch 1 was not trained again.
    assert history(model_dir)["evaluations"][0] == epoch1[0]  # The evaluation before the kill is kept.
    assert_same_outcome(model_dir, uninterrupted)


def test_an_earlier_runs_model_is_not_taken_for_a_rerun_that_stopped_before_its_end(data_dir, tmp_path):
    """A finished model_dir trained again (here for one more epoch) and stopped: mnist-evaluate and mnist-export
    took the earlier run's model.keras for this one's, beside this run's train_config.json."""
    model_dir = str(tmp_path / "model")
    first = Trainer(data_dir, model_dir, tmp_path / "first.log")
    assert first.wait() == 0, first.log()[-3000:]
    path = os.path.join(model_dir, "model.keras")
    earlier = open(path, "rb").read()
    second = Trainer(data_dir, model_dir, tmp_path / "second.log", flags=["--train_epochs", "3"])
    second.wait_for(r"epoch 3: step 6 of 20")
    second.proc.send_signal(signal.SIGTERM)
    assert second.wait(timeout=60) == 143, second.log()[-3000:]

    def step(name, model, *flags):
        return subprocess.run([sys.executable, "-m", f"mnistkit.commands.{name}", "--model_dir", model, *flags],
                              cwd=REPO, capture_output=True, text=True, timeout=120)

    for name, flags in (("evaluate", ["--data_dir", data_dir]), ("export", ["--export_dir", str(tmp_path / "e")])):
        result = step(name, model_dir, *flags)
        assert result.returncode == 1, result.stderr[-3000:]
        assert result.stderr.strip().splitlines()[-1] == (
            f"mnist-{name}: error: {path}: expected the model of the last mnist-train in {model_dir}, found an "
            "earlier run's: that run did not finish (train_config.json); rerun it to resume, or name the file "
            "itself to use this one")
    assert not os.path.exists(tmp_path / "e") and not os.path.exists(os.path.join(model_dir, "metrics.json"))
    # The earlier model is kept, and usable when asked for by its own name.
    assert open(path, "rb").read() == earlier
    assert step("evaluate", path, "--data_dir", data_dir).returncode == 0
    third = Trainer(data_dir, model_dir, tmp_path / "third.log", flags=["--train_epochs", "3"])
    assert third.wait() == 0, third.log()[-3000:]
    assert history(model_dir)["epochs"] == 3
    assert step("evaluate", model_dir, "--data_dir", data_dir).returncode == 0


# Writes the trainer's outputs back to back, with the library's own functions,
# so that a kill at a random moment often lands inside a write.
WRITER = """
import itertools, os, sys
from mnistkit import exporting, models_io, training
data_dir, model_dir, export_dir = sys.argv[1:]
trainer = training.Trainer(training.TrainConfig.from_recipe(
    "seed", data_dir=data_dir, model_dir=model_dir, batch_size=40, max_train_examples=80, precision="float32"))
for cycle in itertools.count(1):
    trainer.step_in_epoch.assign(cycle)
    trainer.manager.save()
    models_io.save_model(trainer.model, os.path.join(model_dir, training.MODEL_FILE))
    exporting.export(model_dir, export_dir)
    print("cycle", cycle, flush=True)
"""


def test_a_kill_at_any_moment_leaves_outputs_that_load(data_dir, tmp_path):
    import tensorflow as tf

    from mnistkit import exporting, training

    model_dir, export_dir = str(tmp_path / "model"), str(tmp_path / "export")
    rng = random.Random(6)
    checked_exports = set()
    for attempt in range(3):
        log_path = tmp_path / f"writer{attempt}.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen([sys.executable, "-c", WRITER, data_dir, model_dir, export_dir], cwd=REPO,
                                    stdout=log, stderr=subprocess.STDOUT)
            deadline = time.time() + 120
            while "cycle 1\n" not in log_path.read_text():
                assert proc.poll() is None and time.time() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.1)
            time.sleep(rng.uniform(0, 3))  # A cycle takes a few seconds: anywhere inside one.
            proc.kill()
            proc.wait(timeout=30)
        assert_checkpoint_restores(model_dir)
        training.load_model(model_dir)
        for entry in sorted(os.listdir(export_dir)):
            if entry.startswith(".") or entry in checked_exports:
                continue  # Hidden: a SavedModel still being written; readers skip it.
            loaded = tf.saved_model.load(os.path.join(export_dir, entry))
            out = loaded.signatures[exporting.SIGNATURE](image=tf.zeros([1, 28, 28]))
            assert out["probabilities"].shape == (1, 10)
            checked_exports.add(entry)
    assert len(checked_exports) >= 3


@pytest.mark.parametrize("case", ["same model_dir", "same model_dir, --clean", "same --checkpoint_dir"])
def test_a_second_run_on_the_same_model_dir_is_refused_while_the_first_trains(data_dir, tmp_path, uninterrupted,
                                                                                case):
    """Two runs on one model_dir (or one checkpoint directory) mixed their checkpoints and models, and the second's
    start-up sweep or --clean deleted the first's save in progress; now the second is refused in one line and
    the first is untouched."""
    model_dir, checkpoint_dir = str(tmp_path / "model"), str(tmp_path / "checkpoints")
    shared = ["--checkpoint_dir", checkpoint_dir] if "checkpoint_dir" in case else []
    first = Trainer(data_dir, model_dir, tmp_path / "first.log", flags=shared)
    first.wait_for(r"epoch 1: step 6 of 20")
    first.proc.send_signal(signal.SIGSTOP)  # Held mid-run, whatever the machine's speed.
    try:
        second = subprocess.run([sys.executable, "-m", "mnistkit.commands.train", "--data_dir", data_dir,
                                 "--model_dir", str(tmp_path / "other") if shared else model_dir, *TRAIN_FLAGS,
                                 *shared, *(["--clean"] if "clean" in case else [])],
                                cwd=REPO, capture_output=True, text=True, timeout=120)
    finally:
        first.proc.send_signal(signal.SIGCONT)
    held = rf"the checkpoint directory {re.escape(checkpoint_dir)}/run-\w+" if shared else \
        f"--model_dir {re.escape(model_dir)}"
    assert second.returncode == 1
    assert re.fullmatch(rf"mnist-train: error: {held}: expected no other run writing it, found one at work "
                        rf"\(pid {first.proc.pid} on .+\); wait for it to end, or use another directory",
                        second.stderr.strip().splitlines()[-1]), second.stderr[-2000:]
    assert first.wait() == 0, first.log()[-3000:]
    assert_same_outcome(model_dir, uninterrupted)
    assert ".lock" not in os.listdir(model_dir)
