"""Faults around `mnist-export` through the real commands: the user's directories, a full disk, wrong model files.

The full disk is a real tmpfs, as in test_fail_fast.py: it needs root, which
CI has; without it the test fails, it never skips.
"""

import os
import socket
import subprocess
import sys

import pytest

from mnistkit import models_io
from mnistkit.model import create_model, keras
from tests.conftest import REPO
from tests.test_fail_fast import error_line, tmpfs

ENOSPC = "No space left on device; the disk is full: free some space or choose another directory"


def run(command, *flags):
    return subprocess.run([sys.executable, "-m", f"mnistkit.commands.{command}", *map(str, flags)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def export(model_dir, export_dir):
    return run("export", "--model_dir", model_dir, "--export_dir", export_dir)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """An untrained CNN of this project: exports like a trained one."""
    path = tmp_path_factory.mktemp("model")
    create_model("channels_last").save(path / models_io.MODEL_FILE)
    return path


def tree(path) -> dict:
    """Every file under `path` (relative path -> bytes), and every directory (relative path -> None)."""
    found = {}
    for root, dirs, names in os.walk(path):
        for d in dirs:
            found[os.path.relpath(os.path.join(root, d), path)] = None
        for n in names:
            with open(os.path.join(root, n), "rb") as f:
                found[os.path.relpath(os.path.join(root, n), path)] = f.read()
    return found


# --- Only what a killed export left half-moved is removed. ---------------------------------


def test_an_export_keeps_the_users_digit_named_directories(model_dir, tmp_path):
    export_dir = tmp_path / "export"
    (export_dir / "1" / "variables").mkdir(parents=True)
    (export_dir / "1" / "saved_model.pbtxt").write_text("saved_model_schema_version: 1\n")
    (export_dir / "2024").mkdir()
    (export_dir / "2024" / "notes.txt").write_text("notes\n")
    (export_dir / "1700000000" / "variables").mkdir(parents=True)  # Looks half-moved, but no writer of ours.
    users = tree(export_dir)
    # What a writer killed in the middle of files.replace_dir leaves: saved_model.pb still in its scratch.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # Its pid names a writer that no longer runs.
    half = export_dir / "1700000001"
    scratch = export_dir / f".tmp-{socket.gethostname()}@{gone.pid}-abc123-{half.name}"
    for d in (half, scratch):
        (d / "variables").mkdir(parents=True)
    (half / "variables" / "variables.index").write_text("moved")
    (scratch / "saved_model.pb").write_text("not yet moved")

    result = export(model_dir, export_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    version = os.path.basename(result.stdout.strip())
    assert sorted(os.listdir(export_dir)) == sorted(["1", "2024", "1700000000", version])
    assert {k: v for k, v in tree(export_dir).items() if not k.startswith(version)} == users


@pytest.mark.parametrize("highest", [str(2**63 - 1), "99999999999999999999"])
def test_a_version_directory_at_the_end_of_int64_is_named_not_exported_past(model_dir, tmp_path, highest):
    """The next version would be one TF Serving cannot read (it takes versions as int64): exported, never served."""
    export_dir = tmp_path / "export"
    (export_dir / "1700000000").mkdir(parents=True)
    (export_dir / highest).mkdir()
    before = tree(export_dir)
    line = error_line(export(model_dir, export_dir), "mnist-export")
    assert line == (f"mnist-export: error: {export_dir}: expected version directories below {2**63 - 1} (TF Serving "
                    f"reads a version as a 64-bit integer), found {highest}; remove it or export elsewhere")
    assert tree(export_dir) == before  # Nothing written, no scratch left.
    (export_dir / highest).rmdir()
    below = export_dir / str(2**63 - 2)
    below.mkdir()
    result = export(model_dir, export_dir)  # The last version TF Serving reads is still free.
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith(str(2**63 - 1))


def test_the_pipeline_steps_export_ends_with_one_version_whatever_an_earlier_attempt_left(model_dir, tmp_path):
    """A retried export step (new pod, or the same pid in a restarted container) finds its artifact as the
    killed attempt left it: a whole version, a half-moved one, scratch of another host. It keeps one version."""
    from mnistkit import exporting

    export_dir = tmp_path / "saved_model"
    exporting.export(str(model_dir), str(export_dir))
    (export_dir / "1700000001" / "variables").mkdir(parents=True)  # Half-moved, no saved_model.pb.
    (export_dir / ".tmp-pod-before-retry@1-abc123-1700000001").mkdir()
    final = exporting.export(str(model_dir), str(export_dir), sole_writer=True)
    assert os.listdir(export_dir) == [os.path.basename(final)]  # The first attempt's version went too.
    assert os.path.exists(os.path.join(final, "saved_model.pb"))


def test_an_export_that_loses_its_second_to_another_export_takes_the_next(model_dir, tmp_path, monkeypatch):
    """Two exports into one directory in the same second: the loser's rename met the winner's version and
    failed with 'Directory not empty'. It moves on to the next stamp."""
    from mnistkit import exporting, files

    real, taken = files.replace_dir, []

    def another_export_lands_first(src, dst, last):
        if not taken:
            os.makedirs(os.path.join(dst, "variables"))
            with open(os.path.join(dst, "saved_model.pb"), "w") as f:
                f.write("the other export's")
            taken.append(dst)
        real(src, dst, last)

    monkeypatch.setattr(files, "replace_dir", another_export_lands_first)
    path = exporting.export(str(model_dir), str(tmp_path / "export"))
    assert int(os.path.basename(path)) == int(os.path.basename(taken[0])) + 1
    assert open(os.path.join(taken[0], "saved_model.pb")).read() == "the other export's"
    assert sorted(os.listdir(tmp_path / "export")) == sorted([os.path.basename(taken[0]), os.path.basename(path)])
    assert os.path.getsize(os.path.join(path, "saved_model.pb")) > 1000


# --- A full disk. -------------------------------------------------------------------------


@pytest.mark.privileged
def test_a_full_disk_ends_mnist_export_in_one_line_and_leaves_nothing(model_dir, tmp_path):
    with tmpfs(tmp_path / "disk", "3m") as disk:  # The SavedModel's variables alone are 13 MB.
        new = os.path.join(disk, "new", "exports")
        assert error_line(export(model_dir, new), "mnist-export") == f"mnist-export: error: {new}: {ENOSPC}"
        assert os.listdir(disk) == []  # The directories it made are gone again, the scratch too.

        kept = os.path.join(disk, "kept")
        os.mkdir(kept)
        with open(os.path.join(kept, "notes.txt"), "w") as f:
            f.write("the user's\n")
        assert error_line(export(model_dir, kept), "mnist-export") == f"mnist-export: error: {kept}: {ENOSPC}"
        assert os.listdir(disk) == ["kept"] and tree(kept) == {"notes.txt": b"the user's\n"}


# --- Model files that are not this project's model. -----------------------------------------


@pytest.mark.parametrize("how, found", [
    ("empty", "an empty file"),
    ("truncated", "a zip archive cut short at 100000 bytes"),
    ("garbage", "6000 bytes that are not a zip archive, as a .keras file is"),
])
def test_a_damaged_model_file_is_named_with_what_it_holds(model_dir, tmp_path, how, found):
    whole = (model_dir / models_io.MODEL_FILE).read_bytes()
    (tmp_path / "model").mkdir()
    path = tmp_path / "model" / models_io.MODEL_FILE
    path.write_bytes({"empty": b"", "truncated": whole[:100_000], "garbage": b"\x89PNG\r\n" * 1000}[how])
    line = error_line(export(tmp_path / "model", tmp_path / "export"), "mnist-export")
    assert line == (f"mnist-export: error: {path}: expected a Keras model saved by mnist-train, found one that "
                    f"does not load ({found})")
    assert not (tmp_path / "export").exists()


@pytest.mark.parametrize("command, flag", [("export", "--export_dir"), ("evaluate", "--data_dir")])
def test_a_model_of_another_architecture_is_named_as_such(tmp_path, command, flag):
    other = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(10)], name="other")
    other.save(tmp_path / models_io.MODEL_FILE)
    line = error_line(run(command, "--model_dir", tmp_path, flag, tmp_path / "out"), f"mnist-{command}")
    assert line == (f"mnist-{command}: error: {tmp_path / models_io.MODEL_FILE}: expected a Keras model saved by "
                    "mnist-train, found a model of another architecture ('other': 2 weights where this project's "
                    "CNN has 8)")
    assert os.listdir(tmp_path) == [models_io.MODEL_FILE]


def test_a_model_with_as_many_weights_of_other_shapes_is_refused(tmp_path):
    dense = [keras.layers.Dense(32, name=f"dense{i}") for i in range(3)] + [keras.layers.Dense(10, name="out")]
    keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(), *dense], name="mlp").save(tmp_path / "m.keras")
    with pytest.raises(ValueError) as e:
        models_io.load_model(str(tmp_path / "m.keras"))
    assert str(e.value).endswith("found a model of another architecture ('mlp': weight dense0/kernel shaped "
                                 "(784, 32) where this project's CNN has (5, 5, 1, 32))")
