"""Real data: the CVDF mirror (a GCS emulator with the real files) to a 98% model, and the default recipe run whole."""

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


@pytest.mark.slow
def test_the_fast_recipe_reaches_99_2_percent_within_its_three_epochs(mnist_dir, tmp_path):
    """Issue 14's floor under the speed work: the default recipe, run whole, still ends at 99.2% or more."""
    config = training.TrainConfig.from_recipe("fast", data_dir=mnist_dir, model_dir=str(tmp_path / "model"))
    assert (config.train_epochs, config.stop_threshold) == (3, None)
    result = training.train(config)
    accuracies = [e["accuracy"] for e in result["evaluations"]]
    assert [e["epoch"] for e in result["evaluations"]] == [1, 2, 3]
    assert accuracies[-1] >= 0.992, f"test accuracy by epoch: {accuracies}"
