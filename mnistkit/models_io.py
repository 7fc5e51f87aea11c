"""Saving and loading the trained model (model.keras), refusing a diverged one, and fingerprinting its weights."""

from __future__ import annotations

import hashlib
import os

import numpy as np

from mnistkit import files
from mnistkit.failures import disk_errors
from mnistkit.model import keras

MODEL_FILE = "model.keras"  # What training writes into model_dir.


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
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: expected a trained model ({MODEL_FILE} written by mnist-train), found none")
    try:
        model = keras.models.load_model(path)
    except Exception as e:
        raise ValueError(f"{path}: expected a Keras model saved by mnist-train, found one that does not load ({e})")
    # A model of NaN weights would evaluate to 10% and export a classifier that answers class 0 for everything.
    for weight in model.weights:
        values = keras.ops.convert_to_numpy(weight)
        if not np.isfinite(values).all():
            raise ValueError(f"{path}: expected finite weights, found {np.size(values) - np.isfinite(values).sum()} "
                             f"NaN or infinite values in {weight.path}; the training that wrote it diverged: "
                             "retrain with a lower --learning_rate")
    return model


def weights_digest(model: keras.Model) -> str:
    """SHA-256 over every weight's bytes, in order: equal digests mean identical weights."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()
