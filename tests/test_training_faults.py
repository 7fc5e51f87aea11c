"""Training that fails fails fast and says why: a diverging loss, a full disk, checkpoints that no longer read."""

import contextlib
import json
import logging
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import tensorflow as tf

from mnistkit import checkpoints, model, training
from tests import conftest
from tests.test_bad_inputs import error_line, run

# 8 steps an epoch on the synthetic digits (0.8 of 200 at batch 20), pinned so that tuning the recipe does
# not move the step counts these tests name.
TINY = ["--batch_size", "20", "--max_train_examples", "200", "--epoch_fraction", "0.8"]


def train_cmd(data_dir, model_dir, *flags):
    return run("-m", "mnistkit.commands.train", "--data_dir", data_dir, "--model_dir", str(model_dir), *TINY, *flags)


def latest_checkpoint(model_dir) -> str | None:
    return tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))


def checkpoint_weights_finite(path) -> bool:
    reader = tf.train.load_checkpoint(path)
    return all(np.isfinite(reader.get_tensor(name)).all() for name, dtype in
               reader.get_variable_to_dtype_map().items() if dtype.is_floating)


def leftovers(directory) -> list[str]:
    """Temporary names a failed write could leave: `.tmp-*` files and TF's `*_temp` checkpoint directories."""
    return [os.path.join(root, n) for root, dirs, names in os.walk(directory) for n in dirs + names
            if n.startswith(".tmp-") or n.endswith("_temp") or ".tempstate" in n]


# --- A diverging loss. ----------------------------------------------------------------------------


def test_a_diverging_run_stops_at_once_keeping_the_last_good_checkpoint_and_model(synthetic_data, tmp_path):
    model_dir = tmp_path / "model"
    constant = ("--schedule", "constant", "--precision", "float32")
    first = train_cmd(synthetic_data, model_dir, "--train_epochs", "1", "--learning_rate", "1e-3", *constant)
    assert first.returncode == 0, first.stderr[-3000:]
    good_model = (model_dir / training.MODEL_FILE).read_bytes()
    good_history = (model_dir / training.HISTORY_FILE).read_text()
    ckpt1 = latest_checkpoint(model_dir)

    # Adam at 1e6 blows the weights up in a few steps: the loss is Inf, then NaN. (The resumed run takes this
    # run's rate, not the one the checkpoint holds, or it would not diverge.)
    line = error_line(train_cmd(synthetic_data, model_dir, "--train_epochs", "3", "--learning_rate", "1e6", *constant),
                      "mnist-train")
    assert re.fullmatch(r"mnist-train: error: training diverged at epoch 2, steps 1-8 of 8: the loss became "
                        r"(NaN|infinite) at learning rate 1e\+06 \(--learning_rate 1e\+06, precision float32\); "
                        rf"no model was written and a rerun resumes from {re.escape(ckpt1)}, the last checkpoint "
                        r"before it; try a lower --learning_rate \(e\.g\. 100000\)", line), line
    # Nothing from the NaN weights was saved: the checkpoint, the model and the history are the first run's.
    assert latest_checkpoint(model_dir) == ckpt1 and checkpoint_weights_finite(ckpt1)
    assert (model_dir / training.MODEL_FILE).read_bytes() == good_model
    assert (model_dir / training.HISTORY_FILE).read_text() == good_history
    # Kept, but not taken for the diverged run's model unless named itself.
    with pytest.raises(ValueError, match="found an earlier run's: that run did not finish"):
        training.load_model(str(model_dir))
    training.load_model(str(model_dir / training.MODEL_FILE))

    # As the line says: a lower rate resumes from that checkpoint and trains on.
    again = train_cmd(synthetic_data, model_dir, "--train_epochs", "2", "--learning_rate", "1e-3", *constant)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from {ckpt1} at epoch 1, step 0" in again.stderr
    assert json.loads((model_dir / training.HISTORY_FILE).read_text())["epochs"] == 2
    training.load_model(str(model_dir))  # Finite weights, or it raises.


def test_a_run_that_diverges_before_any_checkpoint_writes_nothing(synthetic_data, tmp_path):
    model_dir = tmp_path / "model"
    config = training.TrainConfig(data_dir=synthetic_data, model_dir=str(model_dir), batch_size=20,
                                  max_train_examples=200, epoch_fraction=0.8, train_epochs=1, learning_rate=1e6,
                                  schedule="constant", precision="mixed_bfloat16", steps_per_loop=2)
    with pytest.raises(training.Diverged) as e:
        training.train(config)
    message = str(e.value)
    assert re.match(r"training diverged at epoch 1, steps \d+-\d+ of 8: the loss became (NaN|infinite)", message)
    assert "no model was written and no checkpoint was saved before it" in message
    assert "--precision float32" in message  # The hint for a bfloat16 run.
    assert latest_checkpoint(model_dir) is None
    assert not (model_dir / training.MODEL_FILE).exists() and not (model_dir / training.HISTORY_FILE).exists()


def test_weights_that_go_bad_in_an_epochs_last_update_are_caught_too(synthetic_data, tmp_path):
    """A step's loss is computed before its update, so the last update of an epoch is only seen by the weights
    check and the evaluation: here one step at 1e10 leaves finite weights whose test loss is NaN."""
    model_dir = tmp_path / "model"
    line = error_line(train_cmd(synthetic_data, model_dir, "--train_epochs", "1", "--batch_size", "100",
                                "--max_train_examples", "200", "--epoch_fraction", "0.5", "--learning_rate", "1e10",
                                "--schedule", "constant", "--precision", "float32"), "mnist-train")
    assert line == ("mnist-train: error: training diverged by epoch 1: the test loss became NaN at learning rate "
                    "1e+10 (--learning_rate 1e+10, precision float32); no model was written and the checkpoint of "
                    "epoch 1 holds these weights, so rerun with --clean; try a lower --learning_rate (e.g. 1e+09)")
    assert not (model_dir / training.MODEL_FILE).exists() and not (model_dir / training.HISTORY_FILE).exists()


def test_weights_that_are_not_finite_are_never_checkpointed(synthetic_data, tmp_path):
    trainer = training.Trainer(training.TrainConfig(data_dir=synthetic_data, model_dir=str(tmp_path / "model"),
                                                    batch_size=100, max_train_examples=200, epoch_fraction=1.0,
                                                    precision="float32", schedule="constant", learning_rate=1e-3))
    trainer.model.trainable_variables[0].assign(tf.fill(trainer.model.trainable_variables[0].shape, np.inf))
    with pytest.raises(training.Diverged) as e:
        trainer.train_epoch()  # Steps on Inf weights: the loss check or, at the latest, the weights check.
    assert re.match(r"training diverged at epoch 1, steps 1-2 of 2: the (loss became NaN|loss became infinite|"
                    r"weights became NaN or infinite)", str(e.value)), str(e.value)
    assert latest_checkpoint(tmp_path / "model") is None


@pytest.fixture()
def nan_model_dir(tmp_path):
    """A model dir whose model.keras has NaN weights, as a diverged run without the check would have left."""
    model_dir = tmp_path / "nan-model"
    model_dir.mkdir()
    nan = model.create_model("channels_last")
    weights = nan.get_weights()
    weights[0][...] = np.nan
    nan.set_weights(weights)
    nan.save(model_dir / training.MODEL_FILE)
    return model_dir


def test_evaluate_and_export_refuse_a_model_with_nan_weights(nan_model_dir, synthetic_data, tmp_path):
    path = nan_model_dir / training.MODEL_FILE
    # 5x5x1x32: the first convolution's kernel, all NaN.
    expected = (rf"{re.escape(str(path))}: expected finite weights, found 800 NaN or infinite values in "
                r"(\w+/)?conv2d(_\d+)?/kernel; the training that wrote it diverged: retrain with a lower "
                r"--learning_rate")
    line = error_line(run("-m", "mnistkit.commands.evaluate", "--model_dir", str(nan_model_dir), "--data_dir", synthetic_data),
                      "mnist-evaluate")
    assert re.fullmatch(f"mnist-evaluate: error: {expected}", line), line
    assert not (nan_model_dir / "metrics.json").exists()
    export_dir = tmp_path / "export"
    line = error_line(run("-m", "mnistkit.commands.export", "--model_dir", str(nan_model_dir), "--export_dir", str(export_dir)),
                      "mnist-export")
    assert re.fullmatch(f"mnist-export: error: {expected}", line), line
    assert not export_dir.exists()


def test_evaluate_refuses_a_model_whose_finite_weights_give_an_infinite_loss(synthetic_data, tmp_path):
    """Finite weights, logits that overflow: metrics.json would hold 'Infinity', which JSON readers reject."""
    model_dir = tmp_path / "overflow"
    model_dir.mkdir()
    overflow = model.create_model("channels_last")
    weights = overflow.get_weights()
    weights[-1][:] = [3e38 if d % 2 else -3e38 for d in range(10)]  # The output bias: finite, at float32's edge.
    overflow.set_weights(weights)
    overflow.save(model_dir / training.MODEL_FILE)
    line = error_line(run("-m", "mnistkit.commands.evaluate", "--model_dir", str(model_dir), "--data_dir",
                          synthetic_data), "mnist-evaluate")
    assert line == (f"mnist-evaluate: error: {model_dir}: expected a finite test loss, found inf: the model's "
                    "logits overflow float32 on the test images, so it cannot serve"), line
    assert not (model_dir / "metrics.json").exists()


# --- A full disk, for real. -----------------------------------------------------------------------


@pytest.fixture()
def tmpfs(tmp_path):
    """Yields (setup, remount): setup(size) mounts a tmpfs and returns its path; remount(options) changes it.

    Mounting needs root, as CI runs; without it the test fails in CI and skips elsewhere.
    """
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()

    def mount(*options):
        return subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(mount_point)],
                              capture_output=True, text=True)

    def remount(option):
        result = mount("remount", option)
        assert result.returncode == 0, result.stderr

    def setup(size):
        result = mount(f"size={size}")
        if result.returncode != 0:
            conftest.missing(f"cannot mount a tmpfs (root needed): {result.stderr.strip()}")
        return mount_point

    yield setup, remount
    subprocess.run(["umount", str(mount_point)], capture_output=True)


# A checkpoint with Adam's two slots is 39.3 MB, model.keras 13.1 MB. In 50 MiB
# the first checkpoint fits and the second does not; in 45 MiB the checkpoint
# fits and model.keras does not.
@pytest.mark.parametrize("size, epochs, failed_path", [("50m", "2", "checkpoints"), ("45m", "1", training.MODEL_FILE)])
def test_a_full_disk_ends_with_one_line_and_a_later_run_with_room_resumes(
        tmpfs, synthetic_data, size, epochs, failed_path):
    setup, remount = tmpfs
    model_dir = setup(size) / "model"
    flags = ("--train_epochs", epochs, "--precision", "float32")
    line = error_line(train_cmd(synthetic_data, model_dir, *flags), "mnist-train")
    assert line.startswith(f"mnist-train: error: {model_dir / failed_path}: No space left on device"), line
    assert leftovers(model_dir) == []
    ckpt1 = latest_checkpoint(model_dir)
    assert ckpt1.endswith("ckpt-1") and checkpoint_weights_finite(ckpt1)
    assert [h["epoch"] for h in json.loads((model_dir / training.HISTORY_FILE).read_text())["evaluations"]] == [1]
    assert not (model_dir / training.MODEL_FILE).exists()

    remount("size=200m")
    again = train_cmd(synthetic_data, model_dir, *flags)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from {ckpt1} at epoch 1, step 0" in again.stderr
    assert "epoch 1: step" not in again.stderr  # Epoch 1 was not trained again.
    assert training.load_model(str(model_dir)).count_params() == model.NUM_PARAMETERS
    assert leftovers(model_dir) == []


def test_a_disk_that_fills_at_the_checkpoints_index_leaves_nothing_that_stops_the_rerun(tmpfs):
    """TensorFlow had renamed the data file out and created an empty index when the disk filled: the rerun
    with room then refused to start, "found only unreadable ones: ckpt-1"."""
    mount_point = tmpfs[0]("16m")
    weights = tf.train.Checkpoint(v=tf.Variable(tf.zeros([1_000_000])))
    size_of = tf.train.CheckpointManager(weights, str(mount_point / "measure"), max_to_keep=2)
    data_bytes = os.path.getsize(size_of.save() + ".data-00000-of-00001")
    shutil.rmtree(mount_point / "measure")
    free = os.statvfs(mount_point).f_bavail * os.statvfs(mount_point).f_frsize
    room = -(-data_bytes // 4096) * 4096 + 4096  # The data file and one page more: not its index as well.
    (mount_point / "filler").write_bytes(b"\0" * (free - room))
    directory = str(mount_point / "checkpoints")
    with pytest.raises(OSError) as e:
        checkpoints.save(tf.train.CheckpointManager(tf.train.Checkpoint(v=weights.v), directory, max_to_keep=2))
    assert (e.value.errno, e.value.filename) == (28, directory)
    assert os.listdir(directory) == []

    (mount_point / "filler").unlink()
    checkpoints.repair_state(directory)
    assert checkpoints.restore_newest(tf.train.Checkpoint(v=weights.v), directory, "model") is None  # Starts over.


def test_a_save_cut_short_by_a_full_disk_keeps_the_checkpoints_before_it_even_with_the_state_unreadable(tmpfs):
    """The cleanup once went by the state file; unreadable at that moment (TF then reads it as absent), every
    checkpoint would have gone. It removes only what the failed save made."""
    mount_point = tmpfs[0]("24m")
    directory = mount_point / "checkpoints"
    weights = tf.train.Checkpoint(v=tf.Variable(tf.zeros([1_000_000])))
    manager = tf.train.CheckpointManager(weights, str(directory), max_to_keep=2)
    first = checkpoints.save(manager)
    good = sorted(os.listdir(directory))
    (directory / "checkpoint").write_text("not a state file {")
    free = os.statvfs(mount_point).f_bavail * os.statvfs(mount_point).f_frsize
    data_bytes = os.path.getsize(first + ".data-00000-of-00001")
    (mount_point / "filler").write_bytes(b"\0" * (free - (-(-data_bytes // 4096) * 4096 + 4096)))
    with pytest.raises(OSError) as e:
        checkpoints.save(manager)
    assert e.value.errno == 28
    assert sorted(os.listdir(directory)) == good
    (mount_point / "filler").unlink()
    checkpoints.repair_state(str(directory))
    assert checkpoints.restore_newest(tf.train.Checkpoint(v=weights.v), str(directory), "model") == first


def test_outputs_written_together_on_a_full_disk_are_left_as_they_were_and_the_error_names_the_file(tmpfs):
    """mnist-evaluate wrote the new metrics.json, then failed on report.html: the old model's report stayed
    beside the new model's metrics. The error named no file ("No space left on device")."""
    from mnistkit import files

    mount_point = tmpfs[0]("64k")
    metrics, page = mount_point / "metrics.json", mount_point / "report" / "report.html"
    files.atomic_write_texts({str(metrics): "old metrics", str(page): "old report"})
    fd = os.open(mount_point / "filler", os.O_WRONLY | os.O_CREAT)
    with contextlib.suppress(OSError):
        while True:  # Until ENOSPC, and then a page more is freed: room for the small file, not the large one.
            os.write(fd, b"\0" * 4096)
    os.ftruncate(fd, os.fstat(fd).st_size - 4096)
    os.close(fd)
    with pytest.raises(OSError) as e:
        files.atomic_write_texts({str(metrics): "new metrics", str(page): "new report " * 2000})
    assert (e.value.errno, e.value.filename) == (28, str(page))  # ENOSPC
    assert (metrics.read_text(), page.read_text()) == ("old metrics", "old report")
    assert sorted(os.listdir(mount_point)) == ["filler", "metrics.json", "report"]
    assert os.listdir(page.parent) == ["report.html"]


def test_a_disk_full_before_the_first_json_is_an_oserror_naming_that_file(tmpfs, synthetic_data):
    setup, _ = tmpfs
    mount_point = setup("1m")
    model_dir = mount_point / "model"
    model_dir.mkdir()
    fd = os.open(mount_point / "filler", os.O_WRONLY | os.O_CREAT)
    with contextlib.suppress(OSError):
        while True:  # Until ENOSPC: not a byte is left.
            os.write(fd, b"\0" * 4096)
    os.close(fd)
    with pytest.raises(OSError) as e:
        training.train(training.TrainConfig(data_dir=synthetic_data, model_dir=str(model_dir), batch_size=20,
                                            max_train_examples=200, precision="float32"))
    assert (e.value.errno, e.value.filename) == (28, str(model_dir / training.CONFIG_FILE))  # ENOSPC
    assert leftovers(mount_point) == [] and not (model_dir / training.CONFIG_FILE).exists()


def test_a_read_only_disk_is_an_oserror_naming_the_checkpoint_dir(tmpfs, synthetic_data):
    setup, remount = tmpfs
    model_dir = setup("100m") / "model"
    trainer = training.Trainer(training.TrainConfig(data_dir=synthetic_data, model_dir=str(model_dir), batch_size=20,
                                                    max_train_examples=200, precision="float32"))
    trainer.save_checkpoint()
    remount("ro")
    with pytest.raises(OSError) as e:
        trainer.save_checkpoint()
    assert (e.value.errno, e.value.strerror, e.value.filename) == (
        30, "Read-only file system", str(model_dir / "checkpoints"))  # EROFS, from TF's PermissionDeniedError.
    assert latest_checkpoint(model_dir).endswith("ckpt-1")


# --- Checkpoints that no longer read. ---------------------------------------------------------------


def _truncate(path, size=1000):
    with open(path, "r+b") as f:
        f.truncate(size)


def _flip_bytes(path, offset=20_000_000):
    with open(path, "r+b") as f:
        f.seek(offset)
        chunk = f.read(64)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in chunk))


CORRUPTIONS = {
    "data cut short": lambda prefix: _truncate(prefix + ".data-00000-of-00001"),
    "data bytes flipped": lambda prefix: _flip_bytes(prefix + ".data-00000-of-00001"),
    "index cut short": lambda prefix: _truncate(prefix + ".index", 500),
    "data missing": lambda prefix: os.remove(prefix + ".data-00000-of-00001"),
}


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory, synthetic_data):
    """A model dir trained two epochs (ckpt-1 and ckpt-2), to copy and damage."""
    model_dir = tmp_path_factory.mktemp("two-epochs") / "model"
    training.train(training.TrainConfig(data_dir=synthetic_data, model_dir=str(model_dir), batch_size=20,
                                        max_train_examples=200, train_epochs=2, precision="float32"))
    return model_dir


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_an_unreadable_newest_checkpoint_resumes_from_the_one_before(corruption, two_epochs, synthetic_data,
                                                                     tmp_path, caplog):
    model_dir = tmp_path / "model"
    shutil.copytree(two_epochs, model_dir)
    ckpt1, ckpt2 = str(model_dir / "checkpoints" / "ckpt-1"), str(model_dir / "checkpoints" / "ckpt-2")
    CORRUPTIONS[corruption](ckpt2)

    trainer = training.Trainer(training.TrainConfig(data_dir=synthetic_data, model_dir=str(model_dir), batch_size=20,
                                                    max_train_examples=200, train_epochs=2, precision="float32"))
    with caplog.at_level(logging.WARNING, logger=checkpoints.__name__):
        result = trainer.train()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(w.startswith(f"{ckpt2}: cannot be read") for w in warnings), warnings
    assert f"resuming from {ckpt1}: the newer ckpt-2 could not be read (up to an epoch more to train)" in warnings
    # Epoch 2 was trained again from ckpt-1's state and its checkpoint rewritten whole.
    assert int(trainer.optimizer.iterations) == 2 * trainer.steps_per_epoch
    assert [h["epoch"] for h in result["evaluations"]] == [1, 2]
    assert latest_checkpoint(model_dir) == ckpt2 and checkpoint_weights_finite(ckpt2)


@pytest.mark.parametrize("damage", ["cut short", "emptied", "deleted"])
def test_a_broken_state_file_is_rebuilt_from_the_checkpoints_beside_it(damage, two_epochs, synthetic_data, tmp_path,
                                                                       caplog):
    """Cut short, TF would ignore the state file and start over; emptied, CheckpointManager would not start."""
    model_dir = tmp_path / "model"
    shutil.copytree(two_epochs, model_dir)
    state = model_dir / "checkpoints" / "checkpoint"
    text = state.read_text()
    if damage == "deleted":
        state.unlink()
    else:
        state.write_text(text[:30] if damage == "cut short" else "")

    with caplog.at_level(logging.WARNING, logger=checkpoints.__name__):
        result = training.train(training.TrainConfig(data_dir=synthetic_data, model_dir=str(model_dir), batch_size=20,
                                                     max_train_examples=200, train_epochs=3, precision="float32"))
    assert f"{state}: cannot be read" in caplog.text and "from the checkpoints there: ckpt-1, ckpt-2" in caplog.text
    assert result["epochs"] == 3 and [h["epoch"] for h in result["evaluations"]] == [1, 2, 3]
    # Resumed from ckpt-2, and the rebuilt list still rotates: only the newest two are kept.
    assert sorted(n for n in os.listdir(model_dir / "checkpoints") if n.endswith(".index")) == [
        "ckpt-2.index", "ckpt-3.index"]


def test_only_unreadable_checkpoints_end_with_one_line_naming_them(two_epochs, synthetic_data, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(two_epochs, model_dir)
    CORRUPTIONS["data cut short"](str(model_dir / "checkpoints" / "ckpt-2"))
    CORRUPTIONS["index cut short"](str(model_dir / "checkpoints" / "ckpt-1"))
    before = (model_dir / training.MODEL_FILE).read_bytes()
    line = error_line(train_cmd(synthetic_data, model_dir, "--train_epochs", "3"), "mnist-train")
    assert re.fullmatch(rf"mnist-train: error: {re.escape(str(model_dir / 'checkpoints'))}: expected a readable "
                        r"checkpoint to resume from, found only unreadable ones: ckpt-2 \(.+\); ckpt-1 \(.+\); "
                        r"use --clean to start over", line), line
    assert (model_dir / training.MODEL_FILE).read_bytes() == before


def test_what_killed_saves_and_rotations_leave_is_removed_and_the_checkpoints_stay(tmp_path):
    """TensorFlow's own scratch: a save's ckpt-N_temp/, the state file's checkpoint.tmp<hex>, and the data
    files of a checkpoint whose index a killed save never wrote (or a killed rotation already deleted)."""
    variable = tf.Variable([1.0, 2.0])
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=variable), str(tmp_path), max_to_keep=2)
    manager.save()
    manager.save()
    kept = sorted(os.listdir(tmp_path))
    (tmp_path / "ckpt-3_temp").mkdir()
    (tmp_path / "ckpt-3_temp" / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"x")
    (tmp_path / "checkpoint.tmp0123abcd").write_text("model_checkpoint_path: 'ckpt-3'\n")
    (tmp_path / "ckpt-3.data-00000-of-00001").write_bytes(b"x" * 100)  # Its index was never written.
    checkpoints.remove_unfinished(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == kept
    variable.assign([0.0, 0.0])
    tf.train.Checkpoint(v=variable).restore(manager.latest_checkpoint).assert_consumed()
    assert variable.numpy().tolist() == [1.0, 2.0]


def test_a_checkpoint_written_before_the_random_state_was_kept_still_resumes(synthetic_data, tmp_path, caplog):
    """Checkpoints of an earlier version of the project hold no random_state: an upgrade must not refuse them."""
    config = training.TrainConfig(data_dir=synthetic_data, model_dir=str(tmp_path / "model"), batch_size=20,
                                  max_train_examples=200, train_epochs=2, precision="float32")
    trainer = training.Trainer(config)
    trainer.epoch.assign(1)
    name, older = trainer._older_checkpoint
    old = tf.train.CheckpointManager(older, trainer.checkpoint_dir, max_to_keep=2).save()
    assert not [n for n, _ in tf.train.list_variables(old) if n.startswith(f"{name}/")]
    with caplog.at_level(logging.WARNING, logger=checkpoints.__name__):
        result = training.Trainer(config).train()
    assert f"{old}: written before checkpoints held random_state; resuming without it" in caplog.messages
    assert [h["epoch"] for h in result["evaluations"]] == [1, 2] and result["epochs"] == 2


def test_checkpoints_kept_by_settings_say_when_a_changed_setting_starts_over(synthetic_data, tmp_path, caplog):
    """With --checkpoint_dir a changed setting finds no checkpoint of its own and starts over: it says so."""
    base = dict(data_dir=synthetic_data, model_dir=str(tmp_path / "model"), checkpoint_dir=str(tmp_path / "ckpt"),
                max_train_examples=200, train_epochs=1, precision="float32")
    training.train(training.TrainConfig(batch_size=20, **base))
    with caplog.at_level(logging.WARNING, logger=training.__name__):
        training.train(training.TrainConfig(batch_size=40, **base))
    assert any(m.startswith(f"starting over in {tmp_path / 'ckpt'}/run-") and "batch_size 20 -> 40" in m
               and "its model will be replaced" in m for m in caplog.messages), caplog.messages


@pytest.mark.parametrize("clean, advice", [(False, "rerun to resume"), (True, "rerun without --clean to resume")])
def test_an_interrupted_run_advises_the_rerun_that_resumes(synthetic_data, tmp_path, clean, advice):
    config = training.TrainConfig(data_dir=synthetic_data, model_dir=str(tmp_path / "model"), batch_size=20,
                                  max_train_examples=200, train_epochs=1, precision="float32", clean=clean,
                                  steps_per_loop=2)
    trainer = training.Trainer(config)

    class Raised:
        raised = True  # SIGTERM arrived before the first steps returned.

    with pytest.raises(training.Interrupted) as e:
        trainer.train_epoch(Raised())
    assert re.fullmatch(rf"SIGTERM at epoch 1, step 2: saved .*ckpt-1; {advice}", str(e.value)), str(e.value)
