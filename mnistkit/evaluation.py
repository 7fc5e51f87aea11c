"""Evaluating a trained model on the test split: accuracy, per-class figures, confusion matrix."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from mnistkit import idx
from mnistkit.model import for_inference
from mnistkit.models_io import load_model

# Test images per model call, here and in the trainer's evaluations. 200 divides
# the 10,000 test images and splits evenly over 1, 2, 4 or 8 replicas. Against
# 1000 it saved about 0.35 CPU-s of the trainer's first evaluation (0.6 CPU-s
# against 0.9-1.0, 2-core Xeon with AMX, scratch phase timer, seeds 1 and 2),
# the larger batches' first call paying for buffers it touches once; for
# mnist-evaluate the two measured the same (2.1 CPU-s).
EVAL_BATCH = 200


def evaluate(model_dir: str, data_dir: str, batch_size: int = EVAL_BATCH, errors: int = 16) -> dict:
    """Evaluates the model in `model_dir` on the test split of `data_dir`.

    Args:
      model_dir: Directory that training wrote.
      data_dir: Directory holding the four MNIST files.
      batch_size: Test images per model call.
      errors: How many of the most confidently misclassified test images to list.

    Returns:
      loss, accuracy, per-class precision and recall (None where a digit
      has no test example, or is never predicted), the 10x10 confusion
      matrix (rows: true label, columns: predicted label), and
      most_confident_errors: up to `errors` misclassified test images, highest
      predicted probability first, each as its index in the test split, true
      label, predicted label and the probability given to the prediction.
    """
    model = for_inference(load_model(model_dir))
    images, labels = idx.load_split(data_dir, idx.TEST)
    # One traced function over fixed-size batches (the last one shorter):
    # Keras' `predict` took twice as long for the 10,000 test images.
    logits_of = tf.function(lambda x: model(x, training=False),
                            input_signature=[tf.TensorSpec([None, 28, 28], tf.float32)])
    logits = np.concatenate([logits_of(images[i:i + batch_size].astype(np.float32) / 255.0).numpy()
                             for i in range(0, len(images), batch_size)])
    loss = tf.keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    predicted = np.argmax(logits, axis=1)
    confusion = np.zeros((idx.NUM_CLASSES, idx.NUM_CLASSES), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    true_positives = np.diag(confusion).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = true_positives / confusion.sum(axis=0)
        recall = true_positives / confusion.sum(axis=1)
    mean_loss = float(np.mean(loss))
    if not np.isfinite(mean_loss):
        raise ValueError(f"{model_dir}: expected a finite test loss, found {mean_loss}: the model's logits "
                         "overflow float32 on the test images, so it cannot serve")
    return {
        "examples": int(len(labels)),
        "loss": mean_loss,
        "accuracy": float(true_positives.sum() / len(labels)),
        # 0 / 0 is no figure, not 0: a digit the test split lacks has no recall, one never predicted no precision.
        "precision": [None if np.isnan(v) else float(v) for v in precision],
        "recall": [None if np.isnan(v) else float(v) for v in recall],
        "confusion_matrix": confusion.tolist(),
        "most_confident_errors": _most_confident_errors(logits, labels, predicted, errors),
    }


def _most_confident_errors(logits: np.ndarray, labels: np.ndarray, predicted: np.ndarray, count: int) -> list[dict]:
    """The `count` misclassified examples whose wrong prediction had the highest probability."""
    probabilities = tf.nn.softmax(logits.astype(np.float32)).numpy()
    confidence = probabilities[np.arange(len(labels)), predicted]
    wrong = np.flatnonzero(predicted != labels)
    # Stable sort: among equal probabilities the lower index comes first, so reruns list the same images.
    chosen = wrong[np.argsort(-confidence[wrong], kind="stable")][:count]
    return [{"index": int(i), "label": int(labels[i]), "predicted": int(predicted[i]),
             "probability": float(confidence[i])} for i in chosen]
