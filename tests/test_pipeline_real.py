"""The whole pipeline on the real MNIST files, read from gs://cvdf-datasets/mnist/ on the GCS emulator."""

import os

import numpy as np
import pytest

from pipelines import run_local

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:You may be attemping to run a task:RuntimeWarning")]


def test_short_training_on_real_data_reaches_98_percent_and_is_exported(gcs_mnist, mnist_dir, tmp_path):
    import tensorflow as tf

    from mnistkit import idx

    assert gcs_mnist == "gs://cvdf-datasets/mnist/"
    # One epoch of the fast recipe; checksums and canonical sizes are checked as for users.
    result = run_local.run(str(tmp_path), {"source": gcs_mnist, "train_epochs": 1, "min_accuracy": 0.98})
    assert result["metrics"]["examples"] == 10_000
    assert result["metrics"]["accuracy"] >= 0.98, result
    assert result["verdict"].startswith("**Exported**")
    with open(os.path.join(result["run_dir"], "validate-data", "report")) as f:
        assert "| train | 60,000 |" in f.read()
    classify = tf.saved_model.load(result["saved_model"]).signatures["classify"]
    images, labels = idx.load_split(mnist_dir, idx.TEST)
    out = classify(image=tf.constant(images[:500].astype(np.float32) / 255.0))
    assert np.mean(out["classes"].numpy() == labels[:500]) >= 0.97
