"""Where a training run writes besides model_dir: TensorBoard summaries, and a non-chief worker's scratch."""

from __future__ import annotations

import os
import tempfile

import tensorflow as tf

from mnistkit import files
from mnistkit.train_config import TrainConfig

# What Vertex AI sets when the custom job names a TensorBoard (the pinned aiplatform lists it in
# google/cloud/aiplatform/training_utils/environment_variables.py); Vertex AI TensorBoard uploads from it.
TENSORBOARD_DIR_ENV = "AIP_TENSORBOARD_LOG_DIR"
WORKER_DIR_NAME = "mnistkit-worker"  # Ends a non-chief's private directory for its saves, under the temp dir.


def tensorboard_dirs(config: TrainConfig) -> list[str]:
    """Where the chief writes TensorBoard summaries: model_dir/logs, and `config.tensorboard_dir` or
    $AIP_TENSORBOARD_LOG_DIR (which Vertex AI TensorBoard uploads from) when set."""
    dirs = [os.path.join(config.model_dir, "logs")]
    for what, value in (("tensorboard_dir", config.tensorboard_dir),
                        (TENSORBOARD_DIR_ENV, os.environ.get(TENSORBOARD_DIR_ENV))):
        if value:
            path = files.local_path(value, what)
            if os.path.abspath(path) != os.path.abspath(dirs[0]):
                dirs.append(path)
            break
    return dirs


def write_summaries(writers: list, step: int, values: dict) -> None:
    """Writes scalars to every writer, flushed so that Vertex AI TensorBoard can upload them mid-run."""
    for writer in writers:
        with writer.as_default():
            for name, value in values.items():
                tf.summary.scalar(name, value, step=step)
        writer.flush()


def inside(path: str, directory: str) -> bool:
    """Whether `path` is `directory` or lies under it."""
    path, directory = os.path.abspath(path), os.path.abspath(directory)
    return os.path.commonpath([path, directory]) == directory


def worker_dir() -> str:
    """A new private directory for a non-chief's saves; first deletes those that killed workers on this host left."""
    files.sweep_leftovers(tempfile.gettempdir())
    path = files.scratch_path(tempfile.gettempdir(), WORKER_DIR_NAME)
    os.mkdir(path, 0o700)
    return path
