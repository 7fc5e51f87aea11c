"""Section 2: time to 99.0% test accuracy: the project's recipe against plain Keras `fit`, per seed.

Both contenders train the seed's CNN on the real data and are scored on the
full 10,000 test images. The project side is the trainer with a recipe
(default 'fast'); the plain side is what a user would write with Keras alone:
the same layers from `keras.layers` (Dense, not the project's transposed
kernels), float32, Adam 1e-3, batch 128, `fit` with the test split as
validation data, TensorFlow's own defaults. Every run of either contender is
a fresh process of its own, so nothing the project sets leaks into plain
`fit` and no run starts warmer than another. Both clocks start after
TensorFlow is imported (data loading, model building and tracing count) and
stop at the end of the evaluation that first reaches TARGET. For each seed the
two run back to back, so load on a shared machine falls on both alike.

The trainer evaluates at its training precision (mixed_bfloat16 where the CPU
has bfloat16); the evaluate step, the export gate and serving run the model in
float32. So after each of its evaluations the recipe's worker also scores the
same weights in float32, off the clock, and the section reports both.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time

from benchmarks.common import Timer, summary, worker_env

TARGET = 0.99
PLAIN = dict(batch_size=128, learning_rate=1e-3, precision="float32")


def _recipe_worker(data_dir: str, seed: int, recipe: str, overrides: dict) -> None:
    """Trains the project's recipe with `seed`; prints one JSON line."""
    from mnistkit import tf_settings

    tf_settings.apply()  # As mnist-train does, before TensorFlow loads.
    import tensorflow  # noqa: F401  Loaded before the clock starts, as for plain `fit`.

    from mnistkit import training

    from mnistkit import idx

    marks, float32, off_clock = [], {}, {"wall": 0.0, "cpu": 0.0}

    def mark(evaluation):
        """Notes when each evaluation is done (wall and CPU seconds since the run began), then scores float32."""
        marks.append((time.perf_counter() - start - off_clock["wall"],
                      time.process_time() - cpu_start - off_clock["cpu"]))
        with Timer() as scoring:
            float32[evaluation["epoch"]] = _float32_accuracy(trainer.model, test_images, test_labels)
        off_clock["wall"] += scoring.wall
        off_clock["cpu"] += scoring.cpu

    test_images, test_labels = idx.load_split(data_dir, idx.TEST)  # Before the clock: only the float32 score reads it.
    with tempfile.TemporaryDirectory(prefix="mnistkit-bench-recipe-") as model_dir:
        config = training.TrainConfig.from_recipe(recipe, data_dir=data_dir, model_dir=model_dir, seed=seed,
                                                  **overrides)
        start, cpu_start = time.perf_counter(), time.process_time()
        trainer = training.Trainer(config, on_evaluation=mark)
        history = trainer.train()["evaluations"]
        total = time.perf_counter() - start - off_clock["wall"]
        total_cpu = time.process_time() - cpu_start - off_clock["cpu"]
    outcome = _outcome(seed, history, marks, total, total_cpu)
    outcome["float32_accuracy_by_epoch"] = float32
    print(json.dumps(outcome), flush=True)


def _float32_accuracy(model, images, labels) -> float:
    """The test accuracy of `model`'s weights in float32, as the evaluate step, the export gate and serving see them."""
    from mnistkit.model import for_inference

    logits = for_inference(model).predict(images.astype("float32") / 255.0, batch_size=500, verbose=0)
    return float((logits.argmax(axis=1) == labels).mean())


def _outcome(seed: int, history: list[dict], marks: list[tuple[float, float]], total: float,
             total_cpu: float) -> dict:
    reached = [(h["epoch"], t) for h, t in zip(history, marks) if h["accuracy"] >= TARGET]
    return {"seed": seed, "accuracy_by_epoch": {h["epoch"]: h["accuracy"] for h in history},
            "final_accuracy": history[-1]["accuracy"], "epochs": history[-1]["epoch"],
            "epoch_to_target": reached[0][0] if reached else None,
            "seconds_to_target": reached[0][1][0] if reached else None,
            "cpu_seconds_to_target": reached[0][1][1] if reached else None, "total_seconds": total,
            "total_cpu_seconds": total_cpu}


def plain_keras_model(keras):
    """The seed's CNN as a user would write it with stock Keras layers (3,274,634 parameters)."""
    conv = dict(kernel_size=5, padding="same", activation="relu")
    return keras.Sequential([
        keras.Input((28, 28)), keras.layers.Reshape((28, 28, 1)),
        keras.layers.Conv2D(32, **conv), keras.layers.MaxPooling2D(2, 2, padding="same"),
        keras.layers.Conv2D(64, **conv), keras.layers.MaxPooling2D(2, 2, padding="same"),
        keras.layers.Flatten(), keras.layers.Dense(1024, activation="relu"), keras.layers.Dropout(0.4),
        keras.layers.Dense(10)])


def _plain_worker(data_dir: str, seed: int, max_epochs: int, max_train_examples: int | None) -> None:
    """Trains the plain contender until TARGET or `max_epochs`; prints one JSON line."""
    import tensorflow as tf  # Before anything of the project: TensorFlow's own defaults.

    from mnistkit import idx

    keras = tf.keras
    start, cpu_start = time.perf_counter(), time.process_time()
    (x, y), (x_test, y_test) = idx.load_split(data_dir, idx.TRAIN), idx.load_split(data_dir, idx.TEST)
    # float32, as the model computes: `x / 255.0` alone gives float64, which fit then converts batch by batch.
    x, y = (x[:max_train_examples] / 255.0).astype("float32"), y[:max_train_examples]
    x_test = (x_test / 255.0).astype("float32")
    keras.utils.set_random_seed(seed)
    model = plain_keras_model(keras)
    model.compile(optimizer=keras.optimizers.Adam(PLAIN["learning_rate"]),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    history, marks = [], []

    class Marks(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            marks.append((time.perf_counter() - start, time.process_time() - cpu_start))
            history.append({"epoch": epoch + 1, "accuracy": float(logs["val_accuracy"])})
            if history[-1]["accuracy"] >= TARGET:  # Enough for the figure; further epochs only cost time.
                self.model.stop_training = True

    model.fit(x, y, batch_size=PLAIN["batch_size"], epochs=max_epochs, validation_data=(x_test, y_test),
              callbacks=[Marks()], verbose=0)
    outcome = _outcome(seed, history, marks, time.perf_counter() - start, time.process_time() - cpu_start)
    print(json.dumps(outcome), flush=True)


def _run(contender: str, label: str, seed: int, **arguments) -> dict:
    """Runs one contender's worker in a fresh process; returns the outcome it prints."""
    # tf_settings.apply() set TF_ENABLE_ONEDNN_OPTS here; plain Keras gets TensorFlow's own default.
    env = worker_env(TF_ENABLE_ONEDNN_OPTS=None) if contender == "plain" else worker_env()
    proc = subprocess.run([sys.executable, "-m", "benchmarks.recipe", contender,
                           json.dumps(dict(seed=seed, **arguments))], env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{label}, seed {seed}: exit {proc.returncode}: "
                           f"{(proc.stderr.strip().splitlines() or ['(no output)'])[-1]}")
    outcome = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("accuracy_by_epoch", "float32_accuracy_by_epoch"):  # JSON keys are text.
        if key in outcome:
            outcome[key] = {int(e): a for e, a in outcome[key].items()}
    return outcome


def _summarize(runs: list[dict]) -> dict:
    epochs = sorted({e for r in runs for e in r["accuracy_by_epoch"]})
    result = {"runs": runs, "final_accuracy": summary([r["final_accuracy"] for r in runs]),
              "total_seconds": summary([r["total_seconds"] for r in runs]),
              "total_cpu_seconds": summary([r["total_cpu_seconds"] for r in runs]),
              "accuracy_by_epoch": {e: summary([r["accuracy_by_epoch"][e] for r in runs
                                                if e in r["accuracy_by_epoch"]]) for e in epochs}}
    if all("float32_accuracy_by_epoch" in r for r in runs):
        result["float32_accuracy_by_epoch"] = {e: summary([r["float32_accuracy_by_epoch"][e] for r in runs
                                                           if e in r["float32_accuracy_by_epoch"]]) for e in epochs}
    reached = [r for r in runs if r["seconds_to_target"] is not None]
    result["reached_target"] = f"{len(reached)} of {len(runs)}"
    if "float32_accuracy_by_epoch" in result:  # Where training's evaluation first read TARGET: float32 there too?
        held = [r for r in reached if r["float32_accuracy_by_epoch"][r["epoch_to_target"]] >= TARGET]
        result["float32_at_target"] = f"{len(held)} of {len(reached)}"
    for key in ("seconds_to_target", "cpu_seconds_to_target", "epoch_to_target"):
        result[key] = summary([r[key] for r in reached]) if reached else None
    return result


def measure(data_dir: str, seeds: tuple[int, ...] = (0, 1, 2), recipe: str = "fast", plain: bool = True,
            plain_epochs: int = 6, plain_examples: int | None = None, **overrides) -> dict:
    """Trains the recipe once per seed (all its epochs, no stop threshold), and plain Keras `fit` beside it.

    Args:
      data_dir: the four MNIST files.
      seeds: one run of each contender per seed.
      recipe: the project's recipe.
      plain: also run the plain Keras `fit` contender.
      plain_epochs: the plain contender stops at TARGET or after this many epochs.
      plain_examples: the plain contender trains on this many examples (default: all of them).
      **overrides: TrainConfig fields that replace the recipe's; they do not touch the plain contender.

    Returns the per-seed runs and summaries; with `plain`, `speedup` is the
    plain contender's seconds to TARGET over the recipe's, seed by seed (only
    seeds where both reached it).
    """
    runs, plain_runs = [], []
    for seed in seeds:
        runs.append(_run("recipe", f"recipe {recipe}", seed, data_dir=data_dir, recipe=recipe, overrides=overrides))
        if plain:
            plain_runs.append(_run("plain", "plain Keras fit", seed, data_dir=data_dir,
                                   max_epochs=plain_epochs, max_train_examples=plain_examples))
    result = {"recipe": recipe, "overrides": overrides, "target": TARGET, **_summarize(runs)}
    if plain:
        result["plain_keras_fit"] = {**PLAIN, "max_epochs": plain_epochs, "max_train_examples": plain_examples,
                                     **_summarize(plain_runs)}
        pairs = [(p["seconds_to_target"], r["seconds_to_target"], p["cpu_seconds_to_target"],
                  r["cpu_seconds_to_target"]) for r, p in zip(runs, plain_runs)
                 if r["seconds_to_target"] is not None and p["seconds_to_target"] is not None]
        result["speedup"] = summary([a / b for a, b, _, _ in pairs]) if pairs else None
        result["cpu_speedup"] = summary([c / d for _, _, c, d in pairs]) if pairs else None
    return result


if __name__ == "__main__":
    {"recipe": _recipe_worker, "plain": _plain_worker}[sys.argv[1]](**json.loads(sys.argv[2]))
