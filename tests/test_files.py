"""The one way to write a path atomically, the one sweep of dead writers' leftovers, and explicit TF settings."""

import os
import socket
import subprocess
import sys

import pytest

from mnistkit import files
from tests.conftest import REPO


def _dead_pid() -> int:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # Its pid names a writer that no longer runs.
    return gone.pid


def test_atomic_path_replaces_the_file_only_when_the_block_succeeds(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("old")
    with files.atomic_path(str(path)) as scratch:
        with open(scratch, "w") as f:
            f.write("new")
        assert path.read_text() == "old"  # A reader meanwhile sees the old version.
        # Beside the target, named after its writer, and ending in the target's name (Keras picks formats by it).
        assert os.path.dirname(scratch) == str(tmp_path)
        assert os.path.basename(scratch).startswith(f"{files.PREFIX}{socket.gethostname()}@{os.getpid()}-")
        assert scratch.endswith("-metrics.json")
    assert path.read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["metrics.json"]


def test_atomic_path_keeps_the_old_file_and_removes_the_scratch_on_failure(tmp_path):
    path = tmp_path / "model.keras"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="half written"):
        with files.atomic_path(str(path)) as scratch:
            os.mkdir(scratch)  # A directory too: whatever the block left is removed.
            (tmp_path / os.path.basename(scratch) / "part").write_text("half")
            raise RuntimeError("half written")
    assert path.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["model.keras"]


def test_atomic_write_text_creates_the_directory(tmp_path):
    path = tmp_path / "new" / "report.md"
    files.atomic_write_text(str(path), "# report\n")
    assert path.read_text() == "# report\n"
    assert os.listdir(path.parent) == ["report.md"]


def test_made_dir_removes_on_failure_only_the_empty_directories_it_made(tmp_path):
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(RuntimeError), files.made_dir(str(existing / "a" / "b")):
        assert (existing / "a" / "b").is_dir()
        raise RuntimeError("bad data")
    assert os.listdir(existing) == []  # Both of the directories it made are gone, the one it found is not.

    with pytest.raises(RuntimeError), files.made_dir(str(existing / "c" / "d")):
        (existing / "c" / "written").write_text("x")
        raise RuntimeError("bad data")
    assert os.listdir(existing / "c") == ["written"]  # d was empty and went; c holds a file and stays.

    with pytest.raises(RuntimeError), files.made_dir(str(existing)):
        raise RuntimeError("bad data")
    assert existing.is_dir()  # Found, not made: kept, empty or not.

    with files.made_dir(str(tmp_path / "kept")):
        pass
    assert (tmp_path / "kept").is_dir()


def test_sweep_removes_dead_writers_leftovers_and_nothing_else(tmp_path):
    host = socket.gethostname()
    dead = _dead_pid()
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # A live writer.
    dead_file = tmp_path / f".tmp-{host}@{dead}-abc123-train-images-idx3-ubyte.gz"
    dead_dir = tmp_path / f".tmp-{host}@{dead}-def456-1700000000"
    alive = tmp_path / f".tmp-{host}@{writer.pid}-abc123-model.keras"
    # This process's own pid before it wrote anything there: a restarted container's predecessor, same pid.
    restarted = tmp_path / f".tmp-{host}@{os.getpid()}-abc123-report.json"
    other_host = tmp_path / f".tmp-{host}-2@{dead}-abc123-model.keras"  # Another host whose name starts like ours.
    unnamed = tmp_path / ".tmp-written-by-someone-else"
    ours = tmp_path / "model.keras"
    for path in (dead_file, alive, restarted, other_host, unnamed, ours):
        path.write_text("x")
    (dead_dir / "variables").mkdir(parents=True)

    try:
        files.sweep_leftovers(str(tmp_path))
    finally:
        writer.kill()
        writer.wait()
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in (alive, other_host, unnamed, ours))

    files.sweep_leftovers(str(tmp_path), every_writer=True)  # No writer can be at work: every scratch entry goes.
    assert os.listdir(tmp_path) == ["model.keras"]
    files.sweep_leftovers(str(tmp_path / "missing"))  # Nothing to sweep, no error.


def _child(code: str, env: dict) -> str:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          check=True, timeout=120).stdout.strip()


def test_importing_mnistkit_changes_no_tensorflow_setting_and_apply_does():
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    probe = "import os, mnistkit, mnistkit.fetch, mnistkit.files; print(os.environ.get('TF_ENABLE_ONEDNN_OPTS'))"
    assert _child(probe, env) == "None"
    apply = ("import os; from mnistkit import tf_settings; tf_settings.apply(); "
             "print(os.environ['TF_ENABLE_ONEDNN_OPTS'])")
    assert _child(apply, env) == "1"
    assert _child(apply, {**env, "TF_ENABLE_ONEDNN_OPTS": "0"}) == "0"  # An explicit choice wins.


@pytest.mark.parametrize("command, flags", [("train", "'--model_dir=m', '--data_dir=d'"),
                                           ("evaluate", "'--model_dir=m', '--data_dir=d'"),
                                           ("export", "'--model_dir=m', '--export_dir=e'")])
def test_commands_that_load_tensorflow_apply_the_settings_before_main(command, flags):
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    code = (f"import os, sys\nfrom mnistkit.commands import {command} as c\n"
            f"sys.argv = ['x', {flags}]\n"
            "c.main = lambda argv: print('in main:', os.environ.get('TF_ENABLE_ONEDNN_OPTS'), "
            "'tensorflow' in sys.modules)\n"
            "c.run()\n")
    assert _child(code, env) == "in main: 1 False"


def test_a_dangling_symlink_where_a_directory_goes_is_named_as_one(tmp_path):
    """It was called "a file"."""
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "gone")
    with pytest.raises(ValueError) as e:
        files.check_dir_path(str(link / "sub"), "--report_dir")
    assert str(e.value) == (f"--report_dir: expected a directory, or a path where one can be made, found a symlink "
                            f"to a missing target: {link} -> {tmp_path / 'gone'}")


@pytest.mark.parametrize("uri", ["gs:///tmp/elsewhere", "gs://", "gs:////x", "gs://-bucket/x", "gs://Bucket/x",
                                 "gs://goog-runs/x", "gs://runs-google/x", "gs://10.0.0.1/x", "gs://ab/x"])
def test_a_gs_uri_without_a_bucket_name_is_refused_not_mapped_outside_the_mount(tmp_path, monkeypatch, uri):
    """gs:///tmp/x joined to /tmp/x: on Vertex AI the outputs stayed on the container's disk, exit 0. Names Cloud
    Storage refuses (the same rule as submit.py's and mnist-download's) name no mounted bucket either."""
    monkeypatch.setattr(files, "GCS_FUSE_MOUNT", str(tmp_path))
    with pytest.raises(ValueError) as e:
        files.local_path(uri, "--model_dir")
    assert str(e.value) == f"--model_dir: expected gs://BUCKET[/PATH], BUCKET {files.BUCKET_RULE}, found {uri!r}"


@pytest.mark.parametrize("uri", ["gs://bkt/../../tmp/ck", "gs://bkt/ck/../../other-bucket/ck", "gs://bkt/.."])
def test_a_gs_uri_that_climbs_out_of_its_bucket_is_refused(tmp_path, monkeypatch, uri):
    """gs://b/../../tmp/ck joined to the VM's own /tmp/ck (gone when the job ended), or another bucket's path."""
    monkeypatch.setattr(files, "GCS_FUSE_MOUNT", str(tmp_path))
    with pytest.raises(ValueError) as e:
        files.local_path(uri, "--checkpoint_dir")
    assert str(e.value) == f"--checkpoint_dir: expected gs://BUCKET[/PATH] with no '..' part, found {uri!r}"


@pytest.mark.parametrize("path, found", [(" ", "' '"), ("\t\n", "'\\t\\n'"), ("", "an empty path")])
def test_a_path_of_spaces_where_a_directory_goes_is_refused(path, found):
    """`--model_dir ' '` trained into a directory named ' ' in the working directory."""
    with pytest.raises(ValueError) as e:
        files.check_dir_path(path, "--model_dir")
    assert str(e.value) == f"--model_dir: expected a directory, found {found}"


def test_an_error_in_an_atomic_path_block_that_names_no_file_is_passed_on_as_it_is(tmp_path):
    """A network error while a download wrote its file (ssl.SSLError, errno 1) once became a PermissionError
    naming the data file, and the download stopped retrying it."""
    import ssl

    with pytest.raises(ssl.SSLError):
        with files.atomic_path(str(tmp_path / "train-labels-idx1-ubyte.gz")) as scratch:
            open(scratch, "w").close()
            raise ssl.SSLError(1, "[SSL: DECRYPTION_FAILED_OR_BAD_RECORD_MAC]")
    assert os.listdir(tmp_path) == []
