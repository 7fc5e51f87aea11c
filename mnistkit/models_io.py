"""Saving and loading the trained model (model.keras), refusing a diverged one, and fingerprinting its weights."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile

import numpy as np

from mnistkit import files
from mnistkit.failures import disk_errors
from mnistkit.model import create_model, keras

MODEL_FILE = "model.keras"  # What training writes into model_dir.
CONFIG_FILE = "train_config.json"  # Its settings, written as it starts and again once model.keras is written,
FINISHED_KEY = "finished"  # with this true (false: that run did not finish; a model.keras is an earlier run's).


def save_model(model: keras.Model, path: str) -> None:
    """Writes `model` to `path` atomically: a reader sees the old file or the new one, never half of one."""
    with disk_errors(path), files.atomic_path(path) as scratch:
        model.save(scratch)  # The scratch name ends in `.keras` too, which Keras needs to pick the format.


def load_model(model_dir: str) -> keras.Model:
    """Loads the trained model that training wrote into `model_dir` (or the model file itself).

    Raises:
      FileNotFoundError: there is no model file.
      ValueError: the file does not load, or holds NaN or infinite weights.
    """
    path = os.path.join(model_dir, MODEL_FILE) if os.path.isdir(model_dir) else model_dir
    unfinished = os.path.isdir(model_dir) and not _finished(model_dir)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: expected a trained model ({MODEL_FILE} written by mnist-train), found none"
                                + ("; the last mnist-train there did not finish (rerun it to resume)" if unfinished
                                   else ""))
    if unfinished:
        raise ValueError(f"{path}: expected the model of the last mnist-train in {model_dir}, found an earlier "
                         f"run's: that run did not finish ({CONFIG_FILE}); rerun it to resume, or name the file "
                         "itself to use this one")
    expected = f"{path}: expected a Keras model saved by mnist-train, found"
    # Keras calls any file that is not a zip archive "File not found"; say what is there instead.
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(4)
        size = os.path.getsize(path)
        if not head:
            found = "an empty file"
        elif head == b"PK\x03\x04":  # A zip's first entry, without the directory a zip ends in.
            found = f"a zip archive cut short at {size} bytes"
        else:
            found = f"{size} bytes that are not a zip archive, as a .keras file is"
        raise ValueError(f"{expected} one that does not load ({found})")
    try:
        model = keras.models.load_model(path)
    except Exception as e:
        raise ValueError(f"{expected} one that does not load ({e})")
    # Another architecture loads fine and fails later in set_weights with Keras' words and no path. Weight
    # shapes do not depend on the data format, precision or input normalization that training chose.
    cnn = [tuple(w.shape) for w in create_model("channels_last").weights]
    shapes = [tuple(w.shape) for w in model.weights]
    if shapes != cnn:
        if len(shapes) != len(cnn):
            what = f"{len(shapes)} weights where this project's CNN has {len(cnn)}"
        else:
            i = next(i for i, (a, b) in enumerate(zip(shapes, cnn)) if a != b)
            what = f"weight {model.weights[i].path} shaped {shapes[i]} where this project's CNN has {cnn[i]}"
        raise ValueError(f"{expected} a model of another architecture ({model.name!r}: {what})")
    # A model of NaN weights would evaluate to 10% and export a classifier that answers class 0 for everything.
    for weight in model.weights:
        values = keras.ops.convert_to_numpy(weight)
        if not np.isfinite(values).all():
            raise ValueError(f"{path}: expected finite weights, found {np.size(values) - np.isfinite(values).sum()} "
                             f"NaN or infinite values in {weight.path}; the training that wrote it diverged: "
                             "retrain with a lower --learning_rate")
    return model


def _finished(model_dir: str) -> bool:
    """False when model_dir's train_config.json says its run did not finish; True otherwise (no file, a file
    from before the flag, or one that does not read: the model's own checks still apply)."""
    try:
        with open(os.path.join(model_dir, CONFIG_FILE)) as f:
            settings = json.load(f)
    except (OSError, ValueError):
        return True
    return not isinstance(settings, dict) or settings.get(FINISHED_KEY) is not False


def weights_digest(model: keras.Model) -> str:
    """SHA-256 over every weight's bytes, in order: equal digests mean identical weights."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()
