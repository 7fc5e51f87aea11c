"""The serving image: chosen from aiplatform's own list, and able to serve what this project's TensorFlow exports."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mnistkit import registry
from pipelines import pipeline

# A throwaway venv with the serving image's TensorFlow, kept between runs (pip takes a minute or two).
TF_VENV = "/tmp/mnistkit-tf{}"


def test_default_serving_image_is_the_newest_tensorflow_cpu_image_aiplatform_lists():
    from google.cloud.aiplatform import helpers
    from google.cloud.aiplatform.constants import prediction

    versions = []
    for uri in prediction.TF_CONTAINER_URIS:
        match = prediction.CONTAINER_URI_PATTERN.match(uri)
        if match and (match["framework"], match["accelerator"], match["region"]) == ("tf2", "cpu", "us"):
            versions.append(tuple(int(n) for n in match["version"].split("-")))
    newest = ".".join(map(str, max(versions)))
    # aiplatform's own helper names the same image for that version.
    assert pipeline.DEFAULT_SERVING_IMAGE == helpers.get_prebuilt_prediction_container_uri(
        "tensorflow", newest, region="us-central1", accelerator="cpu")
    assert registry.serving_tensorflow_version(pipeline.DEFAULT_SERVING_IMAGE) == newest
    assert [v for v, _ in registry.tensorflow_serving_images()] == sorted(versions, reverse=True)


def test_serving_tensorflow_version_refuses_other_images():
    with pytest.raises(ValueError, match="serving image: expected a Vertex AI tf2-cpu.X-Y or tf2-gpu.X-Y image"):
        registry.serving_tensorflow_version("us-docker.pkg.dev/vertex-ai/prediction/sklearn-cpu.1-3:latest")


def _serving_python(version: str) -> str:
    """The python of a venv holding tensorflow-cpu==`version`.*, made (or repaired) from the package registry."""
    venv = TF_VENV.format(version.replace(".", ""))
    python = os.path.join(venv, "bin", "python")
    probe = [python, "-c", "import tensorflow as tf; print(tf.__version__)"]
    if os.path.exists(python):
        done = subprocess.run(probe, capture_output=True, text=True, timeout=300)
        if done.returncode == 0 and done.stdout.strip().startswith(version + "."):
            return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", venv], check=True, timeout=300)
    installed = subprocess.run([python, "-m", "pip", "install", "-q", f"tensorflow-cpu=={version}.*"],
                               capture_output=True, text=True, timeout=1800)
    assert installed.returncode == 0, f"pip install tensorflow-cpu=={version}.* failed:\n{installed.stderr[-3000:]}"
    return python


@pytest.mark.slow
def test_an_export_of_this_tensorflow_answers_in_the_serving_images_tensorflow(synthetic_data, tmp_path):
    """Writes a SavedModel with this project's TensorFlow, then loads it in the serving image's TensorFlow
    (from aiplatform's list, e.g. 2.15) in a separate venv and calls both signatures there."""
    import tensorflow as tf

    from mnistkit import exporting, idx, training

    version = registry.serving_tensorflow_version(pipeline.DEFAULT_SERVING_IMAGE)
    python = _serving_python(version)
    model_dir = str(tmp_path / "model")
    training.train(training.TrainConfig(data_dir=synthetic_data, model_dir=model_dir, batch_size=20,
                                        train_epochs=1, max_train_examples=200))
    export = exporting.export(model_dir, str(tmp_path / "export"))
    images, labels = idx.load_split(synthetic_data, idx.TEST)
    batch = (images[:20] / 255.0).astype(np.float32)
    np.save(tmp_path / "batch.npy", batch)
    here = tf.saved_model.load(export).signatures["classify"](image=tf.constant(batch))

    script = (
        "import json, sys\n"
        "import numpy as np, tensorflow as tf\n"
        "loaded = tf.saved_model.load(sys.argv[1])\n"
        "batch = tf.constant(np.load(sys.argv[2]))\n"
        "out = {'version': tf.__version__}\n"
        "for name in ('classify', 'serving_default'):\n"
        "    result = loaded.signatures[name](image=batch)\n"
        "    out[name] = {k: v.numpy().tolist() for k, v in result.items()}\n"
        "empty = loaded.signatures['classify'](image=tf.zeros([0, 28, 28]))\n"
        "out['empty'] = {k: v.shape.as_list() for k, v in empty.items()}\n"
        "try:\n"
        "    loaded.signatures['classify'](image=batch * 255)\n"
        "except tf.errors.InvalidArgumentError as e:\n"
        "    out['unscaled'] = e.message\n"
        "print(json.dumps(out))\n")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ""}
    done = subprocess.run([python, "-c", script, export, str(tmp_path / "batch.npy")], capture_output=True,
                          text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    there = json.loads(done.stdout.strip().splitlines()[-1])
    assert there["version"].startswith(version + ".")
    for name in ("classify", "serving_default"):
        assert set(there[name]) == set(here), name
        np.testing.assert_array_equal(there[name]["classes"], here["classes"].numpy())
        np.testing.assert_allclose(there[name]["probabilities"], here["probabilities"].numpy(), atol=1e-5)
    assert np.mean(np.array(there["classify"]["classes"]) == labels[:20]) >= 0.5
    assert there["empty"] == {"classes": [0], "probabilities": [0, 10]}  # A batch of 0 answers, empty.
    # Pixels left in 0-255 are refused there too, in the message TF Serving returns to the caller.
    assert "image: expected pixels in [0, 1] (0-255 values divided by 255), found" in there.get("unscaled", "")
