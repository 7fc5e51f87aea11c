"""Evaluation (metrics, confusion matrix) and export (a SavedModel with the seed's signatures)."""

import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from mnistkit import evaluation, exporting, idx, model, training


@pytest.fixture(scope="module")
def model_dir(synthetic_data, tmp_path_factory) -> str:
    """One tiny trained model shared by this module's tests (a few seconds of training)."""
    path = str(tmp_path_factory.mktemp("model"))
    training.train(training.TrainConfig(data_dir=synthetic_data, model_dir=path, batch_size=20,
                                        train_epochs=1, max_train_examples=200))
    return path


@pytest.fixture(scope="module")
def test_images(synthetic_data):
    images, labels = idx.load_split(synthetic_data, idx.TEST)
    return (images / 255.0).astype(np.float32), labels


# --- Evaluate. --------------------------------------------------------------------


def test_evaluate_returns_consistent_metrics(model_dir, synthetic_data, test_images):
    metrics = evaluation.evaluate(model_dir, synthetic_data)
    images, labels = test_images
    confusion = np.array(metrics["confusion_matrix"])
    assert confusion.shape == (10, 10)
    assert confusion.sum() == metrics["examples"] == 200
    assert confusion.sum(axis=1).tolist() == np.bincount(labels, minlength=10).tolist()  # Rows are true labels.
    assert metrics["accuracy"] == pytest.approx(np.trace(confusion) / 200)
    assert metrics["accuracy"] >= 0.9

    # The same figures, computed from the model's own predictions.
    logits = model.for_inference(training.load_model(model_dir)).predict(images, verbose=0)
    predicted = np.argmax(logits, axis=1)
    assert metrics["accuracy"] == pytest.approx(np.mean(predicted == labels))
    for c in range(10):
        assert metrics["recall"][c] == pytest.approx(np.mean(predicted[labels == c] == c))
        if (predicted == c).any():
            assert metrics["precision"][c] == pytest.approx(np.mean(labels[predicted == c] == c))
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    assert metrics["loss"] == pytest.approx(-np.mean(log_softmax[np.arange(200), labels]), rel=1e-4)


def test_evaluate_missing_model_and_missing_data(model_dir, synthetic_data, tmp_path):
    with pytest.raises(FileNotFoundError, match="expected a trained model"):
        evaluation.evaluate(str(tmp_path), synthetic_data)
    with pytest.raises(idx.DataError) as e:
        evaluation.evaluate(model_dir, str(tmp_path))
    assert e.value.path == str(tmp_path / idx.TEST.images)


# --- Export. ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(model_dir, tmp_path_factory):
    export_dir = tmp_path_factory.mktemp("export")
    before = int(time.time())
    path = exporting.export(model_dir, str(export_dir))
    return export_dir, path, before


def test_export_goes_to_a_timestamped_directory(exported):
    export_dir, path, before = exported
    assert os.path.dirname(path) == str(export_dir)
    stamp = os.path.basename(path)
    assert stamp.isdigit() and before <= int(stamp) <= time.time() + 1
    assert os.listdir(export_dir) == [stamp]  # Nothing half-written beside it.
    assert os.path.exists(os.path.join(path, "saved_model.pb"))


def test_export_signatures_have_the_exact_dtypes_and_shapes(exported):
    loaded = tf.saved_model.load(exported[1], tags=["serve"])
    assert set(loaded.signatures) == {"classify", "serving_default"}
    for name in ("classify", "serving_default"):
        signature = loaded.signatures[name]
        args, kwargs = signature.structured_input_signature
        assert args == ()
        assert set(kwargs) == {"image"}
        assert kwargs["image"].dtype == tf.float32 and kwargs["image"].shape.as_list() == [None, 28, 28]
        outputs = signature.structured_outputs
        assert set(outputs) == {"classes", "probabilities"}
        assert outputs["classes"].dtype == tf.int64 and outputs["classes"].shape.as_list() == [None]
        assert outputs["probabilities"].dtype == tf.float32
        assert outputs["probabilities"].shape.as_list() == [None, 10]


def test_exported_model_classifies_like_the_trained_one(exported, model_dir, test_images):
    images, labels = test_images
    classify = tf.saved_model.load(exported[1]).signatures["classify"]
    out = classify(image=tf.constant(images))
    classes, probabilities = out["classes"].numpy(), out["probabilities"].numpy()
    assert classes.shape == (200,) and probabilities.shape == (200, 10)
    np.testing.assert_array_equal(classes, np.argmax(probabilities, axis=1))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert (probabilities >= 0).all()
    keras_logits = training.load_model(model_dir).predict(images, verbose=0)
    np.testing.assert_array_equal(classes, np.argmax(keras_logits, axis=1))
    assert np.mean(classes == labels) >= 0.9
    # One image at a time works too (batch of 1, as online prediction sends).
    single = classify(image=tf.constant(images[:1]))
    assert single["classes"].numpy().tolist() == classes[:1].tolist()
    # And none at all: empty answers of the same dtypes, where the bare model fails on the CPU.
    empty = classify(image=tf.zeros([0, 28, 28]))
    assert empty["classes"].shape == (0,) and empty["classes"].dtype == tf.int64
    assert empty["probabilities"].shape == (0, 10) and empty["probabilities"].dtype == tf.float32


@pytest.mark.parametrize("how, first", [
    ("left in 0-255", "[255 0 128]"),
    ("NaN", "[nan 0 0]"),  # NaN compares false with both bounds: caught by the same test.
    ("infinite", "[inf -inf 0]"),
    ("slightly negative", "[-0.01 0 0]"),
])
def test_classify_refuses_pixels_outside_0_1_naming_the_input(exported, test_images, how, first):
    """Unscaled pixels gave confident answers (probabilities near 1), NaN gave NaN probabilities and class 0:
    a client's bug served as predictions. Refused in the error the caller sees, saved_model_cli or TF Serving."""
    images = test_images[0][:2].copy()
    images[0, 0, :3] = np.array(first.strip("[]").split(), dtype=np.float32)
    if how == "left in 0-255":
        images = np.round(images * 255)
        images[0, 0, :3] = [255, 0, 128]
    classify = tf.saved_model.load(exported[1]).signatures["classify"]
    with pytest.raises(tf.errors.InvalidArgumentError) as refused:
        classify(image=tf.constant(images))
    message = refused.value.message
    assert "image: expected pixels in [0, 1] (0-255 values divided by 255), found" in message, message
    outside = int(np.sum(~((images >= 0) & (images <= 1))))
    assert f"[{outside}] [pixels outside it, such as]" in message, message
    # The bounds themselves are pixels too.
    edges = np.zeros((1, 28, 28), np.float32)
    edges[0, 0, 0] = 1.0
    assert classify(image=tf.constant(edges))["classes"].shape == (1,)


def test_the_export_holds_each_weight_once(exported):
    """Its variables are the model's float32 weights once: an export is copied to Cloud Storage, the Model
    Registry and every serving replica, so a second copy of the 13 MB would double all of that."""
    reader = tf.train.load_checkpoint(os.path.join(exported[1], "variables", "variables"))
    dtypes = reader.get_variable_to_dtype_map()
    shapes = [shape for key, shape in reader.get_variable_to_shape_map().items() if dtypes[key] == tf.float32]
    assert sum(int(np.prod(shape)) for shape in shapes) == model.NUM_PARAMETERS  # The dropout's seed aside.
    data = sum(os.path.getsize(os.path.join(exported[1], "variables", f))
               for f in os.listdir(os.path.join(exported[1], "variables")) if ".data-" in f)
    assert 4 * model.NUM_PARAMETERS <= data < 4 * model.NUM_PARAMETERS + 100_000


def test_exporting_twice_gives_two_versions(model_dir, tmp_path):
    first = exporting.export(model_dir, str(tmp_path))
    second = exporting.export(model_dir, str(tmp_path))
    assert first != second
    assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(first), os.path.basename(second)])


def test_an_export_is_the_newest_version_even_when_the_clock_is_behind_the_versions_there(model_dir, tmp_path,
                                                                                          monkeypatch):
    """A host whose clock runs behind (or a version from one running ahead) gave the new export a lower
    number, and TF Serving went on serving the older model."""
    ahead = exporting.export(model_dir, str(tmp_path))
    monkeypatch.setattr(exporting.time, "time", lambda: 1_000_000_000.0)  # 2001.
    (tmp_path / "notes").mkdir()  # Not a version: not counted.
    behind = exporting.export(model_dir, str(tmp_path))
    assert int(os.path.basename(behind)) == int(os.path.basename(ahead)) + 1


def test_a_gpu_trained_mixed_precision_model_exports_for_cpu(tmp_path, test_images):
    # What a GPU run writes: channels_first, mixed_bfloat16. The export must serve on a CPU.
    trained = model.create_model("channels_first", "mixed_bfloat16")
    trained.save(tmp_path / training.MODEL_FILE)
    path = exporting.export(str(tmp_path), str(tmp_path / "export"))
    out = tf.saved_model.load(path).signatures["classify"](image=tf.constant(test_images[0][:8]))
    assert out["probabilities"].dtype == tf.float32
    expected = tf.nn.softmax(model.for_inference(trained)(test_images[0][:8])).numpy()
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-5)


def test_export_of_a_missing_model_leaves_nothing(tmp_path):
    export_dir = tmp_path / "export"
    with pytest.raises(FileNotFoundError, match="expected a trained model"):
        exporting.export(str(tmp_path / "no-model"), str(export_dir))
    assert not export_dir.exists() or os.listdir(export_dir) == []


def test_export_dir_that_is_a_file_is_a_clear_error(model_dir, tmp_path):
    export_dir = tmp_path / "export"
    export_dir.write_text("in the way")
    with pytest.raises(ValueError) as e:
        exporting.export(model_dir, str(export_dir))
    assert str(e.value) == f"{export_dir}: expected a directory to export into, found a file"


def test_a_failed_save_leaves_no_partial_directory(model_dir, tmp_path, monkeypatch):
    # Fault injection (no real way to make the SavedModel writer fail midway):
    # the real writer runs, then the disk "fills up" before the rename.
    real_save = tf.saved_model.save

    def save_then_fail(obj, export_path, signatures=None, **kwargs):
        real_save(obj, export_path, signatures=signatures, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tf.saved_model, "save", save_then_fail)
    export_dir = tmp_path / "export"
    with pytest.raises(OSError, match="No space left"):
        exporting.export(model_dir, str(export_dir))
    assert not export_dir.exists()  # The export made it, so the failed export removed it again.


def test_a_killed_writers_partial_export_is_removed_by_the_next_export(model_dir, tmp_path):
    export_dir = tmp_path / "export"
    host = socket.gethostname()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # Its pid names a writer that no longer runs.
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # A live writer.
    dead = export_dir / f".tmp-{host}@{gone.pid}-abc123-1700000000"
    alive = export_dir / f".tmp-{host}@{writer.pid}-abc123-1700000001"
    elsewhere = export_dir / ".tmp-another-host@1-abc123-1700000002"
    for partial in (dead, alive, elsewhere):
        (partial / "variables").mkdir(parents=True)
    try:
        path = exporting.export(model_dir, str(export_dir))
    finally:
        writer.kill()
        writer.wait()
    assert sorted(os.listdir(export_dir)) == sorted([os.path.basename(path), alive.name, elsewhere.name])
