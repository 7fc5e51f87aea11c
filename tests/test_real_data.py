"""The one real-data test: the CVDF mirror (a GCS emulator holding the real files) to a model of 98% accuracy."""

import os

import numpy as np
import pytest

from mnistkit import evaluation, fetch, idx, training, validation


@pytest.mark.slow
def test_download_validate_train_one_epoch_reaches_98_percent(gcs_mnist, tmp_path):
    data_dir, model_dir = str(tmp_path / "data"), str(tmp_path / "model")

    sums = fetch.download(fetch.DownloadConfig(data_dir=data_dir, source=gcs_mnist))
    assert sums == idx.SHA256

    report = validation.validate(data_dir, canonical=True)
    assert report["splits"]["train"]["examples"] == 60_000
    assert report["splits"]["test"]["examples"] == 10_000

    # The default recipe, one epoch: 36,000 examples, 0.6 of the split.
    config = training.TrainConfig.from_recipe("fast", data_dir=data_dir, model_dir=model_dir, train_epochs=1)
    assert config.max_train_examples is None
    result = training.train(config)
    assert result["epochs"] == 1
    accuracy = result["evaluations"][-1]["accuracy"]
    assert accuracy >= 0.98, f"test accuracy after one epoch: {accuracy:.4f}"

    metrics = evaluation.evaluate(model_dir, data_dir)
    assert metrics["examples"] == 10_000
    assert np.array(metrics["confusion_matrix"]).sum() == 10_000
    # The trainer's own evaluation and mnist-evaluate agree on the same model.
    assert metrics["accuracy"] == pytest.approx(accuracy, abs=2e-4)
    assert min(metrics["recall"]) >= 0.95
    assert os.path.exists(os.path.join(model_dir, training.MODEL_FILE))
