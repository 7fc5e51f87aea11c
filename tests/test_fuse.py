"""Outputs on Vertex AI's Cloud Storage FUSE mount: no directory renames, gs:// paths, checkpoints outside the
model artifact (AIP_CHECKPOINT_DIR, --checkpoint_dir) and a second TensorBoard directory (AIP_TENSORBOARD_LOG_DIR)."""

import dataclasses
import errno
import json
import os
import socket
import subprocess
import sys

import pytest

from mnistkit import checkpoints, exporting, files, training
from tests import synthetic
from tests.test_fail_fast import tmpfs

SAVED_MODEL = "saved_model.pb"


@pytest.fixture
def no_directory_renames(monkeypatch):
    """Stands in for Cloud Storage FUSE, which renames files (copy, then delete) but refuses to rename a
    directory unless mounted with --rename-dir-limit (and then not one holding subdirectories).

    Python's renames are patched to fail with ENOSYS, as gcsfuse answers, when the source is a directory.
    TensorFlow's own C++ writes are not intercepted: traced with strace (TF 2.21), a checkpoint save and
    tf.saved_model.save rename only files (`ckpt-N_temp/` and `variables_temp/` are filled, their files renamed
    out, then removed) and Keras writes model.keras in place. Yields the directory renames refused.
    """
    refused = []
    real_rename, real_replace = os.rename, os.replace

    def guard(real):
        def rename(src, dst, *args, **kwargs):
            if os.path.isdir(src):
                refused.append((str(src), str(dst)))
                raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS), str(src))
            return real(src, dst, *args, **kwargs)
        return rename

    monkeypatch.setattr(os, "rename", guard(real_rename))
    monkeypatch.setattr(os, "replace", guard(real_replace))
    yield refused


def config(data_dir, model_dir, **overrides):
    return training.TrainConfig(**{"data_dir": data_dir, "model_dir": str(model_dir), "batch_size": 20,
                                   "train_epochs": 1, "max_train_examples": 200, "precision": "float32",
                                   **overrides})


def test_training_and_export_need_no_directory_rename(no_directory_renames, synthetic_data, tmp_path):
    import tensorflow as tf

    model_dir, export_dir = tmp_path / "model", tmp_path / "export"
    training.train(config(synthetic_data, model_dir))
    assert no_directory_renames == []  # Training renamed no directory.
    training.load_model(str(model_dir))
    reader = tf.train.load_checkpoint(str(model_dir / "checkpoints"))
    assert int(reader.get_tensor("epoch/.ATTRIBUTES/VARIABLE_VALUE")) == 1

    path = exporting.export(str(model_dir), str(export_dir))
    # The one directory rename of an export was refused, and the files were moved in one by one instead.
    assert len(no_directory_renames) == 1 and no_directory_renames[0][1] == path
    assert os.listdir(export_dir) == [os.path.basename(path)]  # No partial directory left beside it.
    assert tf.saved_model.contains_saved_model(path)
    out = tf.saved_model.load(path).signatures[exporting.SIGNATURE](image=tf.zeros([2, 28, 28]))
    assert out["probabilities"].shape == (2, 10)


def test_replace_dir_moves_the_marker_file_last(no_directory_renames, tmp_path, monkeypatch):
    src = tmp_path / "src"
    (src / "variables").mkdir(parents=True)
    (src / "assets").mkdir()
    for name in (SAVED_MODEL, "fingerprint.pb", "variables/variables.index", "variables/variables.data-0"):
        (src / name).write_text(name)
    moved = []
    guarded = os.replace  # The stand-in's: it refuses directories and passes files on.

    def record(a, b):
        moved.append(os.path.relpath(b, tmp_path / "dst"))
        return guarded(a, b)

    monkeypatch.setattr(os, "replace", record)
    files.replace_dir(str(src), str(tmp_path / "dst"), last=SAVED_MODEL)
    assert moved[-1] == SAVED_MODEL and sorted(moved) == sorted(
        [SAVED_MODEL, "fingerprint.pb", "variables/variables.index", "variables/variables.data-0"])
    assert not src.exists() and (tmp_path / "dst" / "assets").is_dir()
    assert (tmp_path / "dst" / "variables" / "variables.index").read_text() == "variables/variables.index"


def test_a_move_that_fails_midway_leaves_no_version(no_directory_renames, tmp_path, monkeypatch):
    src = tmp_path / "src"
    (src / "variables").mkdir(parents=True)
    for name in (SAVED_MODEL, "variables/variables.index"):
        (src / name).write_text(name)
    guarded = os.replace

    def fail_on_the_marker(a, b):  # The mount fails (e.g. quota) on the last file.
        if os.path.basename(a) == SAVED_MODEL:
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), a)
        return guarded(a, b)

    monkeypatch.setattr(os, "replace", fail_on_the_marker)
    with pytest.raises(OSError, match="quota"):
        files.replace_dir(str(src), str(tmp_path / "dst"), last=SAVED_MODEL)
    assert not (tmp_path / "dst").exists()


def test_an_export_killed_during_the_move_is_swept_by_the_next(synthetic_data, tmp_path, monkeypatch):
    """A killed move leaves `<stamp>/` without saved_model.pb beside its dead writer's partial directory: the
    next export deletes the pair. A version whose writer still runs (its `.tmp-<host>@<pid>-...-<stamp>` is
    there) is left alone, and so is any directory no writer of this project left (tests/test_export_faults.py)."""
    model_dir = tmp_path / "model"
    training.train(config(synthetic_data, model_dir))
    export_dir = tmp_path / "export"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # Its pid names a writer that no longer runs.
    host = socket.gethostname()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # A writer still at work.
    killed, running = export_dir / "1700000000", export_dir / "1700000001"
    for version, writer in ((killed, gone.pid), (running, live.pid)):
        (version / "variables").mkdir(parents=True)
        (version / "variables" / "variables.index").write_text("half")
        (export_dir / f".tmp-{host}@{writer}-abc123-{version.name}" / "variables").mkdir(parents=True)
    try:
        path = exporting.export(str(model_dir), str(export_dir))
    finally:
        live.kill()
        live.wait()
    assert sorted(os.listdir(export_dir)) == sorted(
        [running.name, f".tmp-{host}@{live.pid}-abc123-{running.name}", os.path.basename(path)])


# --- gs:// and the mount. --------------------------------------------------------------


@pytest.mark.privileged
def test_gs_uris_map_to_the_fuse_mount_and_are_refused_without_one(tmp_path, monkeypatch):
    """A plain directory where the mount goes is no mount: a local /gcs, made by a /gcs/... path on a machine
    without Cloud Storage FUSE, took the outputs onto that machine's disk. (A tmpfs stands in for the mount.)"""
    assert files.local_path("/data/x", "checkpoint_dir") == "/data/x"
    mount = tmp_path / "gcs"
    monkeypatch.setattr(files, "GCS_FUSE_MOUNT", str(mount))
    for step in ("none", "a directory"):
        with pytest.raises(ValueError) as e:
            files.local_path("gs://bucket/ckpt", "AIP_CHECKPOINT_DIR")
        assert str(e.value) == (f"AIP_CHECKPOINT_DIR: expected a local path, or a gs:// URI where Cloud Storage FUSE "
                                f"is mounted at {mount} (as on Vertex AI), found gs://bucket/ckpt and nothing mounted "
                                f"at {mount}"), step
        mount.mkdir(exist_ok=True)
    with tmpfs(mount, "1m"):
        assert files.local_path("gs://bucket/ckpt/", "x") == str(mount / "bucket" / "ckpt") + "/"
        assert files.local_path("gs://my-bucket.x_1/runs", "--model_dir") == str(mount / "my-bucket.x_1" / "runs")
        assert files.local_path("gs://bkt/a..b", "--checkpoint_dir") == str(mount / "bkt" / "a..b")


@pytest.mark.privileged
def test_a_command_given_a_gs_uri_writes_through_the_mount(tmp_path):
    """`mnist-export --export_dir gs://...` as a step on Vertex AI runs it: the SavedModel lands under the mount
    (a tmpfs stands in for it here), and nothing named "gs:" appears where the command ran."""
    from mnistkit.model import create_model

    model_dir, mount, cwd = tmp_path / "model", tmp_path / "gcs", tmp_path / "cwd"
    for d in (model_dir, mount, cwd):
        d.mkdir()
    create_model("channels_last").save(model_dir / "model.keras")
    code = ("import sys; from mnistkit import files; files.GCS_FUSE_MOUNT = sys.argv.pop(1); "
            "from mnistkit.commands import export; export.run()")
    with tmpfs(mount, "64m"):
        done = subprocess.run([sys.executable, "-c", code, str(mount), "--model_dir", str(model_dir),
                               "--export_dir", "gs://bucket/exports"], cwd=cwd, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        (version,) = os.listdir(mount / "bucket" / "exports")
        assert done.stdout.strip() == str(mount / "bucket" / "exports" / version)
        assert (mount / "bucket" / "exports" / version / "saved_model.pb").is_file()
    assert os.listdir(cwd) == []


@pytest.mark.privileged
def test_vertex_variables_send_checkpoints_and_summaries_to_the_mount(synthetic_data, tmp_path, monkeypatch):
    """AIP_CHECKPOINT_DIR and AIP_TENSORBOARD_LOG_DIR as Vertex AI sets them (gs:// URIs), read through a
    stand-in for the /gcs mount (a tmpfs)."""
    mount = tmp_path / "gcs"
    monkeypatch.setattr(files, "GCS_FUSE_MOUNT", str(mount))
    monkeypatch.setenv("AIP_CHECKPOINT_DIR", "gs://bucket/job/checkpoints/")
    monkeypatch.setenv("AIP_TENSORBOARD_LOG_DIR", "gs://bucket/job/logs/")
    model_dir = tmp_path / "model"
    cfg = config(synthetic_data, model_dir)
    with tmpfs(mount, "512m"):
        training.train(cfg)
        run_dir = mount / "bucket" / "job" / "checkpoints" / checkpoints.trajectory_key(cfg)
        assert {"checkpoint", "ckpt-1.index", "history.json"} <= set(os.listdir(run_dir))
        assert [e for e in os.listdir(mount / "bucket" / "job" / "logs") if e.startswith("events.out.tfevents.")]
    assert sorted(os.listdir(model_dir)) == ["history.json", "logs", "model.keras", "train_config.json"]
    assert [e for e in os.listdir(model_dir / "logs") if e.startswith("events.out.tfevents.")]


def test_a_resubmitted_run_resumes_from_the_shared_checkpoint_dir(synthetic_data, tmp_path, caplog):
    """A new run (a new, empty model directory) with the same settings and checkpoint_dir picks up where the
    first stopped, with the first run's evaluations; other settings start afresh in their own subdirectory."""
    shared = str(tmp_path / "checkpoints")
    first = config(synthetic_data, tmp_path / "run1", checkpoint_dir=shared, train_epochs=1)
    training.train(first)
    assert not (tmp_path / "run1" / "checkpoints").exists()
    with open(tmp_path / "run1" / "history.json") as f:
        epoch1 = json.load(f)["evaluations"]

    caplog.set_level("INFO", logger="mnistkit.training")
    resumed = training.train(config(synthetic_data, tmp_path / "run2", checkpoint_dir=shared, train_epochs=2))
    assert f"resumed from {shared}/{checkpoints.trajectory_key(first)}/ckpt-1 at epoch 1, step 0" in caplog.text
    assert "epoch 1: step" not in caplog.text  # Epoch 1 was not trained again.
    assert resumed["epochs"] == 2 and resumed["evaluations"][0] == epoch1[0]

    caplog.clear()
    other = config(synthetic_data, tmp_path / "run3", checkpoint_dir=shared, learning_rate=3e-4)
    assert checkpoints.trajectory_key(other) != checkpoints.trajectory_key(first)
    training.train(other)
    assert "resumed from" not in caplog.text
    assert len(os.listdir(shared)) == 2


def test_clean_also_deletes_the_checkpoints_outside_model_dir(synthetic_data, tmp_path, caplog):
    shared = tmp_path / "checkpoints"
    training.train(config(synthetic_data, tmp_path / "model", checkpoint_dir=str(shared)))
    caplog.set_level("INFO", logger="mnistkit.training")
    training.train(config(synthetic_data, tmp_path / "model", checkpoint_dir=str(shared), clean=True))
    assert "resumed from" not in caplog.text
    (run_dir,) = os.listdir(shared)
    assert sorted(e for e in os.listdir(shared / run_dir) if e.endswith(".index")) == ["ckpt-1.index"]


def test_a_gs_checkpoint_dir_without_a_mount_is_refused_before_training(synthetic_data, tmp_path, monkeypatch):
    monkeypatch.setattr(files, "GCS_FUSE_MOUNT", str(tmp_path / "no-gcs"))
    with pytest.raises(ValueError, match=r"^checkpoint_dir: expected a local path, or a gs:// URI"):
        training.train(config(synthetic_data, tmp_path / "model", checkpoint_dir="gs://bucket/ckpt"))
    assert not (tmp_path / "model").exists()


def test_every_setting_is_either_in_the_trajectory_key_or_named_as_not_shaping_it():
    # A new TrainConfig field has to be sorted here: left out of the key by oversight, a resubmitted run
    # with a different value of it would resume the other run's checkpoints.
    outside = {"data_dir", "model_dir", "train_epochs", "epochs_between_evals", "stop_threshold",
               "distribution_strategy", "num_gpus", "tpu", "clean", "steps_per_loop", "collective_timeout_seconds",
               "checkpoint_dir", "tensorboard_dir"}
    fields = {f.name for f in dataclasses.fields(training.TrainConfig)}
    assert fields - outside == set(checkpoints.TRAJECTORY_FIELDS)
    base = training.TrainConfig(data_dir="/a", model_dir="/b")
    assert checkpoints.trajectory_key(base) != checkpoints.trajectory_key(
        dataclasses.replace(base, nesterov=not base.nesterov))


def test_the_trajectory_key_follows_the_datas_contents_not_where_they_are(tmp_path):
    """A run over other data sharing a checkpoint root resumed the first run's finished checkpoint, trained
    nothing, and exported the first run's model (exit 0)."""
    first, copy, other = (synthetic.write_dataset(tmp_path / name, n_train=50, n_test=20, seed=seed)
                          for name, seed in (("first", 0), ("copy", 0), ("other", 7)))
    key = lambda data_dir: checkpoints.trajectory_key(training.TrainConfig(data_dir=data_dir, model_dir="/m"))  # noqa
    assert key(first) == key(copy) != key(other)


def test_the_data_is_hashed_once_per_process_until_a_file_changes(tmp_path, monkeypatch):
    """With --checkpoint_dir the checkpoint key and train_config.json both want the data's checksum: one read."""
    data_dir = synthetic.write_dataset(tmp_path / "data", n_train=50, n_test=20, seed=3)
    reads = []
    real = checkpoints.fetch.sha256_of
    monkeypatch.setattr(checkpoints.fetch, "sha256_of", lambda path: reads.append(path) or real(path))
    first = checkpoints.data_fingerprint(data_dir)
    assert checkpoints.data_fingerprint(data_dir) == first
    assert len(reads) == 4
    labels = os.path.join(data_dir, "t10k-labels-idx1-ubyte.gz")
    synthetic.write_dataset(tmp_path / "other", n_train=50, n_test=20, seed=4)
    os.replace(os.path.join(tmp_path, "other", "t10k-labels-idx1-ubyte.gz"), labels)  # Another file, same name.
    assert checkpoints.data_fingerprint(data_dir) != first
    assert len(reads) == 8


def test_the_trajectory_key_ignores_what_does_not_change_the_training():
    base = training.TrainConfig(data_dir="/a", model_dir="/b", schedule="constant")
    same = training.TrainConfig(data_dir="/c", model_dir="/d", schedule="constant", train_epochs=9,
                                stop_threshold=0.5, epochs_between_evals=3)
    assert checkpoints.trajectory_key(base) == checkpoints.trajectory_key(same)
    assert checkpoints.trajectory_key(base) != checkpoints.trajectory_key(
        training.TrainConfig(data_dir="/a", model_dir="/b", schedule="constant", batch_size=base.batch_size * 2))
    cosine = training.TrainConfig(data_dir="/a", model_dir="/b", schedule="cosine")
    assert checkpoints.trajectory_key(cosine) != checkpoints.trajectory_key(
        training.TrainConfig(data_dir="/a", model_dir="/b", schedule="cosine", train_epochs=cosine.train_epochs + 1))

