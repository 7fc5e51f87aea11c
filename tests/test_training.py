"""The seed's model and the trainer: history, stop threshold, checkpoints, resume, --clean, bad model_dir."""

import json
import logging
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from benchmarks.recipe import plain_keras_model
from mnistkit import idx, model, training

keras = tf.keras

# 8 steps an epoch (0.8 of 200 examples at batch 20): a second or two. The epoch fraction is pinned so that
# tuning the recipe does not move the step counts these tests name.
TINY = dict(batch_size=20, max_train_examples=200, epoch_fraction=0.8)


def _config(data_dir, model_dir, **overrides) -> training.TrainConfig:
    return training.TrainConfig(data_dir=data_dir, model_dir=str(model_dir), **{**TINY, **overrides})


class EpochsRun(list):
    """The index of every epoch the trainer actually trains, recorded through its public `on_epoch` hook."""

    def __init__(self):
        super().__init__()
        self.records = []

    def hook(self, record: dict) -> None:
        self.records.append(record)
        self.append(record["epoch"] - 1)  # The record counts the epochs done: the one trained is one less.


@pytest.fixture()
def epochs_run() -> EpochsRun:
    """Pass `epochs_run.hook` as `on_epoch`; compare `epochs_run` to the list of epoch indices expected."""
    return EpochsRun()


# --- The model. -------------------------------------------------------------------


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("dtype_policy", ["float32", "mixed_bfloat16"])
def test_model_has_the_seeds_layers_and_parameter_count(data_format, dtype_policy):
    m = model.create_model(data_format, dtype_policy)
    assert m.count_params() == model.NUM_PARAMETERS == 3_274_634
    assert m.input_shape == (None, 28, 28)
    assert m.output_shape == (None, 10)
    convs = [layer for layer in m.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [(c.filters, c.kernel_size, c.padding) for c in convs] == [(32, (5, 5), "same"), (64, (5, 5), "same")]
    assert all(c.data_format == data_format for c in convs)
    # Each convolution is followed by its 2x2 pool and a ReLU (the seed's ReLU, moved after the pool).
    kinds = [type(layer).__name__ for layer in m.layers]
    assert kinds[:7] == ["Reshape", "Conv2D", "MaxPooling2D", "ReLU", "Conv2D", "MaxPooling2D", "ReLU"]
    dense = [layer for layer in m.layers if isinstance(layer, model.TransposedDense)]
    assert [(d.units, d.activation.__name__) for d in dense] == [(1024, "relu"), (10, "linear")]
    assert [d.rate for d in m.layers if isinstance(d, keras.layers.Dropout)] == [0.4]
    assert m.layers[-1].dtype_policy.compute_dtype == "float32"  # Logits in float32 whatever the policy.


@pytest.mark.parametrize("normalize", [False, True])
def test_model_computes_the_seeds_function_and_gradients(normalize):
    """Pool-then-ReLU is the seed's ReLU-then-pool: same logits, same gradients for the same weights."""
    # The seed's layer order in stock Keras layers (conv with ReLU, then pool), as the benchmarks' plain contender.
    ours, seeds = model.create_model("channels_last", normalize_inputs=normalize), plain_keras_model(keras)
    assert model.normalizes_inputs(ours) == normalize
    weights = ours.get_weights()
    seeds.set_weights([w.T if w.ndim == 2 else w for w in weights])  # Dense stores [inputs, units].
    images = np.random.default_rng(0).random((8, 28, 28), dtype=np.float32)
    images[:, :6] = 0.0  # Blank rows, as MNIST has: all-zero windows, where the two orders tie.
    # With normalize_inputs the seed's model gets the standardized pixels that our first layer computes.
    seeds_images = (images - model.PIXEL_MEAN) / model.PIXEL_STD if normalize else images
    labels = np.arange(8) % 10

    def loss_and_grads(m, x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, m(x), from_logits=True))
        return loss, tape.gradient(loss, m.trainable_variables)

    ours_loss, ours_grads = loss_and_grads(ours, images)
    seeds_loss, seeds_grads = loss_and_grads(seeds, seeds_images)
    np.testing.assert_allclose(ours_loss, seeds_loss, rtol=1e-5)
    for a, b in zip(ours_grads, seeds_grads):
        b = tf.transpose(b) if len(b.shape) == 2 else b
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_normalize_inputs_standardizes_pixels_inside_the_model():
    plain, normalized = model.create_model("channels_last"), model.create_model("channels_last", normalize_inputs=True)
    assert normalized.count_params() == model.NUM_PARAMETERS
    normalized.set_weights(plain.get_weights())
    images = np.random.default_rng(1).random((4, 28, 28), dtype=np.float32)
    np.testing.assert_allclose(normalized(images), plain((images - model.PIXEL_MEAN) / model.PIXEL_STD),
                               rtol=1e-4, atol=1e-5)
    copy = model.for_inference(normalized)  # Evaluation and export keep the standardization.
    assert model.normalizes_inputs(copy)
    np.testing.assert_allclose(copy(images), normalized(images), rtol=1e-5, atol=1e-6)


def test_label_smoothing_moves_probability_from_the_true_class_to_all():
    from mnistkit import compiled_steps

    logits = tf.constant(np.random.default_rng(2).normal(size=(6, 10)).astype(np.float32))
    labels = tf.constant([0, 1, 2, 3, 9, 5])
    log_p = tf.nn.log_softmax(logits).numpy()
    expected = -(0.9 * log_p[np.arange(6), labels.numpy()] + 0.1 * log_p.mean(axis=1))
    np.testing.assert_allclose(compiled_steps.cross_entropy(labels, logits, 0.1), expected, rtol=1e-5)
    np.testing.assert_allclose(compiled_steps.cross_entropy(labels, logits), -log_p[np.arange(6), labels.numpy()],
                               rtol=1e-5)


def test_transposed_dense_computes_what_keras_dense_computes():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 7)).astype(np.float32)
    kernel, bias = rng.normal(size=(7, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)
    theirs, ours = keras.layers.Dense(3, activation="relu"), model.TransposedDense(3, activation="relu")
    theirs.build((None, 7))
    ours.build((None, 7))
    theirs.set_weights([kernel, bias])
    ours.set_weights([kernel.T, bias])
    np.testing.assert_allclose(ours(x), theirs(x), rtol=1e-6, atol=1e-6)
    assert ours.compute_output_shape((None, 7)) == (None, 3)
    half = model.TransposedDense(3, dtype="mixed_bfloat16")
    assert half(x).dtype == tf.bfloat16 and half.kernel.dtype == "float32"


def test_dense_kernels_gradients_stay_bfloat16_unless_distributed():
    """In mixed_bfloat16 the dense kernels' gradients reach the optimizer in bfloat16 (FusedAdam casts them in its
    update) with the values tf.cast's gradient would give; under a strategy, which sums them across replicas,
    they are float32. The other weights' gradients are float32 either way."""
    m = model.create_model("channels_last", "mixed_bfloat16")
    images = np.random.default_rng(3).random((8, 28, 28), dtype=np.float32)
    labels = np.arange(8) % 10

    def gradients():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, m(images), from_logits=True))
        return tape.gradient(loss, m.trainable_variables)

    plain = gradients()
    with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
        distributed = gradients()
    kernels = [layer.kernel.path for layer in m.layers if isinstance(layer, model.TransposedDense)]
    assert len(kernels) == 2
    for variable, a, b in zip(m.trainable_variables, plain, distributed):
        assert a.dtype == (tf.bfloat16 if variable.path in kernels else tf.float32), variable.path
        assert b.dtype == tf.float32, variable.path
        np.testing.assert_array_equal(tf.cast(a, tf.float32), b)


def test_dense_bias_gradient_is_summed_in_float32_and_rounded_once():
    """In mixed_bfloat16 the dense layer's bias gradient is the batch's sum of bfloat16 gradients, rounded to
    bfloat16 once (TensorFlow's own BiasAddGrad, summing in bfloat16, was off by ~11 units in the last place)."""
    layer = model.TransposedDense(1024, dtype="mixed_bfloat16")
    rng = np.random.default_rng(4)
    x = rng.standard_normal((160, 64)).astype(np.float32)
    upstream = rng.standard_normal((160, 1024)).astype(np.float32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.cast(layer(x), tf.float32) * upstream)
    found = tape.gradient(loss, layer.bias).numpy().astype(np.float64)
    # The layer's output gradient is `upstream` in bfloat16; its exact sum, then one bfloat16 rounding.
    exact = tf.cast(tf.constant(upstream), tf.bfloat16).numpy().astype(np.float64).sum(axis=0)
    expected = tf.cast(tf.constant(exact, tf.float32), tf.bfloat16).numpy().astype(np.float64)
    half_ulp = np.spacing(np.abs(exact).astype(np.float32)) * 2.0 ** 15  # bfloat16 has 16 fewer mantissa bits
    assert np.all(np.abs(found - exact) <= half_ulp + 1e-12)
    assert np.mean(found == expected) > 0.99  # Ties aside (the float32 sum's order), the rounding of the exact sum.


def test_bad_data_format_is_refused():
    with pytest.raises(ValueError, match="data_format: expected 'channels_first' or 'channels_last', found 'NHWC'"):
        model.create_model("NHWC")


def test_for_inference_copies_weights_into_a_float32_channels_last_model():
    trained = model.create_model("channels_first", "mixed_bfloat16")
    copy = model.for_inference(trained)
    assert copy.layers[1].data_format == "channels_last"
    assert copy.dtype_policy.name == "float32"
    for a, b in zip(trained.get_weights(), copy.get_weights()):
        np.testing.assert_array_equal(a, b)


# --- Training. --------------------------------------------------------------------


def test_training_writes_model_history_checkpoints_and_summaries(synthetic_data, tmp_path, epochs_run):
    model_dir = tmp_path / "model"
    history_when_called = []

    def on_evaluation(record):
        history_when_called.append(json.loads((model_dir / training.HISTORY_FILE).read_text())["evaluations"])
        evaluations.append(record)

    evaluations = []
    result = training.train(_config(synthetic_data, model_dir, train_epochs=2), on_epoch=epochs_run.hook,
                            on_evaluation=on_evaluation)

    assert epochs_run == [0, 1]
    # The hooks see each epoch's loss and rate, and each evaluation once history.json already holds it.
    assert all(np.isfinite(r["loss"]) and r["loss"] > 0 and r["learning_rate"] >= 0 for r in epochs_run.records)
    assert evaluations == result["evaluations"]
    assert history_when_called == [result["evaluations"][:1], result["evaluations"]]
    assert result["epochs"] == 2 and result["stopped_early"] is False
    assert [h["epoch"] for h in result["evaluations"]] == [1, 2]
    assert result["evaluations"][-1]["accuracy"] >= 0.9  # The synthetic digits are easy to learn.
    assert json.loads((model_dir / training.HISTORY_FILE).read_text()) == result
    assert json.loads((model_dir / training.CONFIG_FILE).read_text())["train_epochs"] == 2
    assert tf.train.latest_checkpoint(str(model_dir / "checkpoints")).endswith("ckpt-2")
    loaded = training.load_model(str(model_dir))
    assert loaded.count_params() == model.NUM_PARAMETERS
    images, labels = idx.load_split(synthetic_data, idx.TEST)
    predicted = np.argmax(loaded.predict(images / 255.0, verbose=0), axis=1)
    assert np.mean(predicted == labels) == pytest.approx(result["evaluations"][-1]["accuracy"])
    assert not [n for n in os.listdir(model_dir) if n.startswith(".tmp")]

    tags = set()
    for root, _, names in os.walk(model_dir / "logs"):
        for name in names:
            for event in tf.compat.v1.train.summary_iterator(os.path.join(root, name)):
                tags.update(v.tag for v in event.summary.value)
    assert {"train/loss", "train/learning_rate", "eval/accuracy", "eval/loss"} <= tags


def test_epochs_are_cut_from_an_endless_stream_of_shuffled_passes():
    from mnistkit.inputs import epoch_order

    # A whole-split epoch is one pass in the order of (seed, epoch), as before epochs could be shorter.
    np.testing.assert_array_equal(epoch_order(200, 7, 3), np.random.default_rng([7, 3]).permutation(200))
    # Epochs of 150 of 200 examples: four epochs are exactly three passes, each pass every example once.
    stream = np.concatenate([epoch_order(200, 7, e, 150) for e in range(4)])
    assert len(stream) == 600
    for p in range(3):
        np.testing.assert_array_equal(np.sort(stream[p * 200:(p + 1) * 200]), np.arange(200))
        np.testing.assert_array_equal(stream[p * 200:(p + 1) * 200], epoch_order(200, 7, p))
    np.testing.assert_array_equal(epoch_order(200, 7, 1, 150), stream[150:300])  # Fixed by the seed: resumable.
    assert not np.array_equal(epoch_order(200, 8, 1, 150), stream[150:300])
    # Epochs longer than the split span passes too.
    np.testing.assert_array_equal(epoch_order(200, 7, 0, 500), np.concatenate([stream, epoch_order(200, 7, 3)])[:500])


def test_the_cpu_and_the_accelerator_input_pipelines_give_the_same_batches_in_the_same_order():
    """One thread for steps on this CPU, a parallel map for GPUs and TPUs: a resumed epoch must see the same batches."""
    from mnistkit.inputs import epoch_order, train_dataset

    images = tf.constant(np.arange(200 * 28 * 28, dtype=np.int64).reshape(200, 28, 28) % 251, tf.uint8)
    labels = tf.constant(np.arange(200, dtype=np.int32) % 10)
    strategy = tf.distribute.get_strategy()

    def batches(parallel, skip_steps=0):
        ds = train_dataset(strategy, images, labels, seed=7, epoch=1, global_batch=16, skip_steps=skip_steps,
                           epoch_examples=150, parallel=parallel)
        return [(x.numpy(), y.numpy()) for x, y in ds]

    serial, parallel = batches(False), batches(True)
    assert len(serial) == 150 // 16
    order = epoch_order(200, 7, 1, 150)
    for (x, y), (px, py), rows in zip(serial, parallel, np.split(order[:144], 9)):
        np.testing.assert_array_equal(x, images.numpy()[rows] * np.float32(1 / 255))  # to_float's arithmetic.
        np.testing.assert_array_equal(y, labels.numpy()[rows])
        np.testing.assert_array_equal(px, x)
        np.testing.assert_array_equal(py, y)
    resumed = batches(False, skip_steps=4)
    assert len(resumed) == 5
    for (x, _), (sx, _) in zip(resumed, serial[4:]):
        np.testing.assert_array_equal(x, sx)


def test_no_input_pipeline_runs_tf_datas_tuning_thread():
    """With it, deleting an epoch's iterator waited for the thread's next wake-up: up to seconds per epoch.

    How long that wait is depends on timing, so this holds the setting that removes it (inputs.py has the
    figures); with the default strategy each pipeline is the tf.data.Dataset itself.
    """
    from mnistkit.inputs import eval_dataset, train_dataset

    images, labels = tf.zeros([64, 28, 28], tf.uint8), tf.zeros([64], tf.int32)
    strategy = tf.distribute.get_strategy()
    pipelines = [train_dataset(strategy, images, labels, seed=0, epoch=0, global_batch=16, parallel=parallel)
                 for parallel in (False, True)]
    pipelines.append(eval_dataset(strategy, images.numpy(), labels.numpy(), 16))
    for ds in pipelines:
        assert ds.options().autotune.enabled is False
        assert sum(1 for _ in ds) == 4  # Still every batch.


def test_epoch_fraction_sets_the_steps_of_an_epoch(synthetic_data, tmp_path):
    trainer = training.Trainer(_config(synthetic_data, tmp_path / "model", epoch_fraction=0.5, train_epochs=2))
    assert (trainer.epoch_examples, trainer.steps_per_epoch) == (100, 5)
    trainer.train_epoch()
    assert int(trainer.optimizer.iterations) == 5 and int(trainer.epoch) == 1
    with pytest.raises(ValueError, match=r"^epoch_fraction: expected in \(0, 100\], found 0.0$"):
        training.Trainer(_config(synthetic_data, tmp_path / "other", epoch_fraction=0.0))
    with pytest.raises(ValueError, match=r"^batch_size: expected at most the 10 training examples of an epoch, "
                                         r"found 20 \(an epoch is epoch_fraction 0.05 of the 200 training examples\)$"):
        training.Trainer(_config(synthetic_data, tmp_path / "third", epoch_fraction=0.05))


def test_max_train_examples_past_the_split_says_so(synthetic_data, caplog):
    """--max_train_examples 100000 on 600 examples trained on the 600 without a word."""
    from mnistkit import inputs

    config = training.TrainConfig(data_dir=synthetic_data, model_dir="unused", max_train_examples=100_000)
    with caplog.at_level(logging.WARNING, logger="mnistkit"):
        (images, _), _ = inputs.load_data(config)
    assert len(images) == 600
    assert [r.getMessage() for r in caplog.records] == [
        "max_train_examples 100000: the training split has 600 examples; training on all of them"]


def test_stop_threshold_stops_before_train_epochs(synthetic_data, tmp_path, epochs_run):
    result = training.train(_config(synthetic_data, tmp_path, train_epochs=5, stop_threshold=0.9),
                            on_epoch=epochs_run.hook)
    assert epochs_run == [0]
    assert result["epochs"] == 1 and result["stopped_early"] is True
    assert len(result["evaluations"]) == 1 and result["evaluations"][0]["accuracy"] >= 0.9


def test_a_stop_threshold_of_exactly_the_accuracy_is_reached(synthetic_data, tmp_path):
    """Accuracy is a count over the test split, divided in float64: in float32, 9801 / 10000 is below 0.9801."""
    result = training.train(_config(synthetic_data, tmp_path / "first", train_epochs=1))
    accuracy = result["evaluations"][0]["accuracy"]
    correct = round(accuracy * 200)  # The synthetic test split's 200 examples.
    assert accuracy == correct / 200
    again = training.train(_config(synthetic_data, tmp_path / "again", train_epochs=3, stop_threshold=correct / 200))
    assert again["epochs"] == 1 and again["stopped_early"] is True


def test_the_trainers_adam_is_the_configs(synthetic_data, tmp_path):
    for nesterov, beta_2 in ((True, 0.9), (False, 0.999)):
        optimizer = training.Trainer(_config(synthetic_data, tmp_path / str(beta_2), nesterov=nesterov,
                                             beta_2=beta_2)).optimizer
        assert (optimizer.nesterov, optimizer.beta_2, optimizer.beta_1) == (nesterov, beta_2, 0.9)


def test_train_epoch_trains_one_epoch_at_a_time_and_checkpoints_it(synthetic_data, tmp_path):
    trainer = training.Trainer(_config(synthetic_data, tmp_path / "model", train_epochs=3))
    losses = [trainer.train_epoch(), trainer.train_epoch()]
    assert int(trainer.epoch) == 2 and int(trainer.step_in_epoch) == 0
    assert int(trainer.optimizer.iterations) == 2 * trainer.steps_per_epoch
    assert all(np.isfinite(loss) and loss > 0 for loss in losses)
    assert losses[1] < losses[0]  # The synthetic digits are easy: the second epoch's mean loss is lower.
    assert tf.train.latest_checkpoint(trainer.checkpoint_dir).endswith("ckpt-2")
    assert trainer.evaluate()["accuracy"] >= 0.9


def test_evaluations_every_n_epochs_and_after_the_last(synthetic_data, tmp_path):
    result = training.train(_config(synthetic_data, tmp_path, train_epochs=3, epochs_between_evals=2,
                                    max_train_examples=60))
    assert [h["epoch"] for h in result["evaluations"]] == [2, 3]


def test_resume_continues_from_the_saved_epoch(synthetic_data, tmp_path, epochs_run):
    model_dir = tmp_path / "model"
    first = training.train(_config(synthetic_data, model_dir, train_epochs=1), on_epoch=epochs_run.hook)
    assert epochs_run == [0]

    trainer = training.Trainer(_config(synthetic_data, model_dir, train_epochs=2), on_epoch=epochs_run.hook)
    second = trainer.train()
    assert epochs_run == [0, 1], "the second run should train epoch 2 only"
    assert int(trainer.optimizer.iterations) == 2 * trainer.steps_per_epoch
    assert second["epochs"] == 2
    # Epoch 1's evaluation is carried over from the first run, not redone.
    assert second["evaluations"][0] == first["evaluations"][0]
    assert [h["epoch"] for h in second["evaluations"]] == [1, 2]

    # A third run of a finished model_dir trains nothing and keeps the history.
    third = training.train(_config(synthetic_data, model_dir, train_epochs=2), on_epoch=epochs_run.hook)
    assert epochs_run == [0, 1]
    assert third["evaluations"] == second["evaluations"]


def test_clean_starts_over(synthetic_data, tmp_path, epochs_run):
    model_dir = tmp_path / "model"
    training.train(_config(synthetic_data, model_dir, train_epochs=1), on_epoch=epochs_run.hook)
    (model_dir / "stale.txt").write_text("from an older run")
    result = training.train(_config(synthetic_data, model_dir, train_epochs=1, clean=True), on_epoch=epochs_run.hook)
    assert epochs_run == [0, 0]
    assert result["epochs"] == 1
    assert not (model_dir / "stale.txt").exists()
    assert tf.train.latest_checkpoint(str(model_dir / "checkpoints")).endswith("ckpt-1")


def test_a_rerun_over_other_data_does_not_resume_the_old_run(synthetic_data, tmp_path, epochs_run):
    """Same model_dir, other data: it resumed the finished run, trained nothing and recorded the new data as its own."""
    from mnistkit import checkpoints
    from tests import synthetic

    other = synthetic.write_dataset(tmp_path / "other", n_train=300, n_test=100, seed=7)
    model_dir = tmp_path / "model"
    training.train(_config(synthetic_data, model_dir, train_epochs=1))
    kept = {name: (model_dir / name).read_bytes() for name in (training.MODEL_FILE, training.CONFIG_FILE)}
    assert json.loads(kept[training.CONFIG_FILE])["data_sha256"] == checkpoints.data_fingerprint(synthetic_data)

    with pytest.raises(ValueError) as e:
        training.train(_config(other, model_dir, train_epochs=1), on_epoch=epochs_run.hook)
    assert str(e.value) == (
        f"--data_dir: expected the data the checkpoints in {model_dir / 'checkpoints'} were trained on (files' "
        f"sha256 {checkpoints.data_fingerprint(synthetic_data)[:12]}...), found other data in {other} "
        f"({checkpoints.data_fingerprint(other)[:12]}...); --clean starts over, or use another --model_dir")
    assert epochs_run == [] and {name: (model_dir / name).read_bytes() for name in kept} == kept

    # A copy of the same data elsewhere is the same data: it resumes. --clean starts over on the other data.
    copy = shutil.copytree(synthetic_data, tmp_path / "copy")
    assert training.train(_config(str(copy), model_dir, train_epochs=1), on_epoch=epochs_run.hook)["epochs"] == 1
    assert epochs_run == []
    training.train(_config(other, model_dir, train_epochs=1, clean=True), on_epoch=epochs_run.hook)
    assert epochs_run == [0]


def test_checkpoint_of_another_model_is_a_clear_error(synthetic_data, tmp_path):
    model_dir = tmp_path / "model"
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    tf.train.CheckpointManager(tf.train.Checkpoint(model=other), str(model_dir / "checkpoints"), 1).save()

    with pytest.raises(ValueError) as e:
        training.train(_config(synthetic_data, model_dir, train_epochs=1))
    message = str(e.value)
    assert message.startswith(f"{model_dir}: expected a checkpoint of this model to resume from, found ")
    assert "ckpt-1" in message and "--clean" in message
    assert not (model_dir / training.MODEL_FILE).exists()


@pytest.mark.parametrize("overrides, message", [
    (dict(batch_size=0), "batch_size: expected at least 1, found 0"),
    (dict(train_epochs=0), "train_epochs: expected at least 1, found 0"),
    (dict(stop_threshold=1.5), "stop_threshold: expected in [0, 1], found 1.5"),
    (dict(learning_rate=-1.0), "learning_rate: expected above 0, found -1.0"),
    (dict(beta_2=1.0), "beta_2: expected in (0, 1), found 1.0"),
    (dict(batch_size=500), "batch_size: expected at most the 160 training examples of an epoch, found 500"),
])
def test_bad_parameters_are_refused(synthetic_data, tmp_path, overrides, message):
    with pytest.raises(ValueError) as e:
        training.train(_config(synthetic_data, tmp_path / "model", **overrides))
    assert message in str(e.value)
    assert not (tmp_path / "model").exists()  # Nothing left behind, not even an empty model_dir.


def test_recipes():
    seed = training.TrainConfig.from_recipe("seed", data_dir="d", model_dir="m")
    assert (seed.batch_size, seed.train_epochs, seed.learning_rate, seed.precision) == (100, 40, 1e-4, "float32")
    assert (seed.label_smoothing, seed.normalize_inputs) == (0.0, False)  # The seed's loss and inputs.
    assert (seed.nesterov, seed.beta_2) == (False, 0.999)  # The seed's Adam: TF 1's AdamOptimizer defaults.
    assert seed.epochs_between_evals == 1 and seed.stop_threshold is None
    overridden = training.TrainConfig.from_recipe("seed", data_dir="d", model_dir="m", batch_size=None,
                                                  train_epochs=2)
    assert (overridden.batch_size, overridden.train_epochs) == (100, 2)
    with pytest.raises(ValueError, match="recipe: expected one of fast, seed, found 'slow'"):
        training.TrainConfig.from_recipe("slow", data_dir="d", model_dir="m")


def test_missing_data_is_a_data_error(tmp_path):
    with pytest.raises(idx.DataError) as e:
        training.train(_config(str(tmp_path / "nowhere"), tmp_path / "model"))
    assert e.value.field == "data directory"


def test_load_model_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        training.load_model(str(tmp_path))
    assert str(e.value) == (f"{tmp_path / training.MODEL_FILE}: expected a trained model "
                            f"({training.MODEL_FILE} written by mnist-train), found none")
    (tmp_path / training.MODEL_FILE).write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="expected a Keras model saved by mnist-train, found one that does not load"):
        training.load_model(str(tmp_path))
