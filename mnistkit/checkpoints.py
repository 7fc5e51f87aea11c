"""Training checkpoints: where they live, saving one, and resuming from the newest that still reads."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil

import tensorflow as tf

from mnistkit import fetch, files, idx
from mnistkit.failures import PEER_ERRORS, disk_errors, first_line
from mnistkit.train_config import TrainConfig

log = logging.getLogger(__name__)

# What Vertex AI sets when the custom job has a base_output_directory (the pinned aiplatform lists it in
# google/cloud/aiplatform/training_utils/environment_variables.py).
CHECKPOINT_DIR_ENV = "AIP_CHECKPOINT_DIR"
# The settings that shape the training trajectory: a checkpoint directory shared across runs keeps each
# combination apart, so a resubmitted run resumes its own checkpoints and never another run's.
TRAJECTORY_FIELDS = ("batch_size", "epoch_fraction", "learning_rate", "schedule", "warmup_epochs", "precision",
                     "label_smoothing", "normalize_inputs", "nesterov", "beta_2", "data_format", "seed",
                     "max_train_examples")


def checkpoint_dir(config: TrainConfig) -> str:
    """Where the run's checkpoints live, as a local path.

    `config.checkpoint_dir`, else $AIP_CHECKPOINT_DIR (set by Vertex AI from
    the custom job's base_output_directory), each in a subdirectory named
    after the settings that shape the training (see `TRAJECTORY_FIELDS`), else
    model_dir/checkpoints. gs:// URIs are read through the Cloud Storage FUSE
    mount (files.local_path).
    """
    for what, value in (("checkpoint_dir", config.checkpoint_dir),
                        (CHECKPOINT_DIR_ENV, os.environ.get(CHECKPOINT_DIR_ENV))):
        if value:
            return os.path.join(files.local_path(value, what), trajectory_key(config))
    return os.path.join(config.model_dir, "checkpoints")


def trajectory_key(config: TrainConfig) -> str:
    """'run-' and 12 hex digits that change with any setting of TRAJECTORY_FIELDS, with the data's contents
    (wherever they are read from), and with train_epochs under the 'cosine' schedule, whose decay spans all
    epochs."""
    fields = {f: getattr(config, f) for f in TRAJECTORY_FIELDS}
    # Without it, a run over other data (another mirror, a subset, corrected labels) sharing a checkpoint root
    # resumed the first run's finished checkpoint, trained nothing, and exported the first run's model.
    fields["data"] = data_fingerprint(config.data_dir)
    if config.schedule == "cosine":
        fields["train_epochs"] = config.train_epochs
    return "run-" + hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


# data_fingerprint's results by the files' identities: the checkpoint key and train_config.json both want it.
_fingerprints: dict[tuple, str] = {}


def data_fingerprint(data_dir: str) -> str:
    """The SHA-256 of the four MNIST files' contents together; a missing file counts as missing (training then
    refuses the data anyway). Read once per process while the files' device, inode, size and modification time
    stay the same."""
    paths = [os.path.join(data_dir, name) for name in idx.FILES]
    try:
        key = tuple((s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns) for s in map(os.stat, paths))
    except OSError:
        key = None  # A file missing: nothing to remember.
    if key in _fingerprints:
        return _fingerprints[key]
    digests = []
    for path, name in zip(paths, idx.FILES):
        try:
            digests.append(fetch.sha256_of(path))
        except OSError:
            digests.append(f"{name} unreadable")
    fingerprint = hashlib.sha256(" ".join(digests).encode()).hexdigest()
    if key is not None:
        _fingerprints[key] = fingerprint
    return fingerprint


def save(manager: tf.train.CheckpointManager) -> str:
    """Saves a checkpoint; a failure to write it is an OSError naming the directory, with no leftovers."""
    directory = manager.directory
    before = set(os.listdir(directory)) if os.path.isdir(directory) else set()
    try:
        with disk_errors(directory):
            return manager.save()
    except OSError:
        with contextlib.suppress(OSError):  # Cleaning up never hides why the save failed.
            # TF writes into `ckpt-N_temp` and renames it when complete; the last good checkpoint stays listed.
            remove_unfinished(directory)
            # A full disk can also stop it after the data files are renamed out, with an empty `ckpt-N.index`
            # that a rerun would stop at: the checkpoint files this save made go too, and only those.
            for entry in set(os.listdir(directory)) - before:
                if re.fullmatch(r".+-\d+(\.index|\.data-\d+-of-\d+)", entry):
                    files.remove(os.path.join(directory, entry))
        raise


def remove_unfinished(directory: str) -> None:
    """Deletes what saves and rotations that did not finish left: never part of a checkpoint that reads.

    TensorFlow writes a save into `ckpt-N_temp/`, renames its data files out to
    `ckpt-N.data-*`, then writes `ckpt-N.index`; it replaces the `checkpoint`
    state file through `checkpoint.tmp<hex>`; a rotation deletes an old index
    before its data. So a `_temp` directory, a `checkpoint.tmp*` file and data
    files without their index are a killed writer's.
    """
    entries = os.listdir(directory) if os.path.isdir(directory) else []
    for entry in entries:
        path = os.path.join(directory, entry)
        prefix, data, _ = entry.partition(".data-")
        if entry.endswith("_temp") and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        elif (entry.startswith("checkpoint.tmp") or data and f"{prefix}.index" not in entries) and \
                os.path.isfile(path):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)


def restore_newest(checkpoint: tf.train.Checkpoint, directory: str, model_dir: str,
                   older: tuple[str, tf.train.Checkpoint] | None = None) -> str | None:
    """Restores into `checkpoint` the newest checkpoint in `directory` that reads; returns its path (None: none).

    One cut short or corrupted on disk is skipped, with a warning, for the
    one before it (at most an epoch more to train). `older` is (name,
    checkpoint without it): a checkpoint file written before `checkpoint`
    held `name` is restored through that one.

    Raises:
      ValueError: one reads but belongs to another model (named with `model_dir`), or all of them are unreadable.
    """
    unreadable = []
    for path in newest_first(directory):
        try:
            target = checkpoint
            if older and not any(n.startswith(f"{older[0]}/") for n, _ in tf.train.list_variables(path)):
                log.warning("%s: written before checkpoints held %s; resuming without it", path, older[0])
                target = older[1]
            target.restore(path).assert_existing_objects_matched()
        except (AssertionError, ValueError) as e:
            raise ValueError(f"{model_dir}: expected a checkpoint of this model to resume from, found "
                             f"{path}, which does not match it ({first_line(e)}); "
                             "use --clean or another --model_dir") from e
        except PEER_ERRORS:
            raise
        except Exception as e:  # Truncated: IndexError; flipped bytes: DataLossError; bad index: OpError.
            log.warning("%s: cannot be read (%s: %s); trying the checkpoint before it", path, type(e).__name__,
                        first_line(e))
            unreadable.append((os.path.basename(path), first_line(e)))
            continue
        if unreadable:
            log.warning("resuming from %s: the newer %s could not be read (up to an epoch more to train)", path,
                        ", ".join(name for name, _ in unreadable))
        return path
    if unreadable:
        found = "; ".join(f"{name} ({why})" for name, why in unreadable)
        raise ValueError(f"{directory}: expected a readable checkpoint to resume from, found only unreadable "
                         f"ones: {found}; use --clean to start over")
    return None


def newest_first(directory: str) -> list[str]:
    """The checkpoints the state file of `directory` lists, newest first."""
    state = tf.train.get_checkpoint_state(directory)
    # TensorFlow has already joined relative entries with `directory` (joining them again broke every resume
    # from a relative --model_dir).
    return list(reversed(state.all_model_checkpoint_paths)) if state else []


def repair_state(directory: str) -> None:
    """Rebuilds a lost or broken checkpoint state file from the checkpoints found by name.

    TF ignores a state file that does not parse (cut short) and so would start
    over, overwriting the checkpoints; CheckpointManager refuses to start on an
    empty one. The checkpoints beside it may be whole: `restore_newest` skips
    those that are not.
    """
    if not os.path.isdir(directory):
        return
    numbered = filter(None, (re.fullmatch(r"(.+-(\d+))\.index", n) for n in os.listdir(directory)))
    names = [m[1] for m in sorted(numbered, key=lambda m: int(m[2]))]
    state = os.path.join(directory, "checkpoint")
    try:
        if tf.train.get_checkpoint_state(directory) is not None or not (names or os.path.exists(state)):
            return
        reason = "it does not parse" if os.path.exists(state) else "it is missing"
    except Exception as e:  # ValueError: "Invalid checkpoint state loaded from ...".
        reason = first_line(e)
    log.warning("%s: cannot be read (%s); rebuilding it from the checkpoints there: %s", state, reason,
                ", ".join(names) or "none")
    if names:
        # The CheckpointState text format, paths relative to the directory. Without timestamps later than
        # last_preserved_timestamp, CheckpointManager would keep these forever instead of rotating them out.
        stamps = [os.path.getmtime(os.path.join(directory, n + ".index")) for n in names]
        files.atomic_write_text(state, "".join(
            [f'model_checkpoint_path: "{names[-1]}"\n'] + [f'all_model_checkpoint_paths: "{n}"\n' for n in names]
            + [f"all_model_checkpoint_timestamps: {t}\n" for t in stamps]
            + [f"last_preserved_timestamp: {min(stamps) - 1}\n"]))
    else:
        os.remove(state)
