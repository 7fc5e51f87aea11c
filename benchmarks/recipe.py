"""Section 2: the default recipe on the real data: time to 99.0% test accuracy and final accuracy, per seed."""

from __future__ import annotations

import tempfile
import time

from benchmarks.common import summary

TARGET = 0.99


def _run_one(data_dir: str, seed: int, recipe: str, overrides: dict) -> dict:
    from mnistkit import training

    marks = []

    class TimedTrainer(training.Trainer):
        """Notes when each evaluation finishes, seconds since the run began."""

        def evaluate(self):
            result = super().evaluate()
            marks.append(time.perf_counter() - start)
            return result

    with tempfile.TemporaryDirectory(prefix="mnistkit-bench-recipe-") as model_dir:
        config = training.TrainConfig.from_recipe(recipe, data_dir=data_dir, model_dir=model_dir, seed=seed,
                                                  **overrides)
        start = time.perf_counter()
        history = TimedTrainer(config).train()["evaluations"]
        total = time.perf_counter() - start
    reached = [(h["epoch"], t) for h, t in zip(history, marks) if h["accuracy"] >= TARGET]
    return {"seed": seed, "accuracy_by_epoch": {h["epoch"]: h["accuracy"] for h in history},
            "final_accuracy": history[-1]["accuracy"], "epochs": history[-1]["epoch"],
            "epoch_to_target": reached[0][0] if reached else None,
            "seconds_to_target": reached[0][1] if reached else None, "total_seconds": total}


def measure(data_dir: str, seeds: tuple[int, ...] = (0, 1, 2), recipe: str = "fast", **overrides) -> dict:
    """Trains the recipe once per seed (all its epochs, no stop threshold) and summarizes the runs.

    Seconds count from building the trainer (data loading, model, tracing)
    to the end of the evaluation that first reached TARGET; TensorFlow's
    import is not included.
    """
    runs = [_run_one(data_dir, seed, recipe, overrides) for seed in seeds]
    epochs = sorted({e for r in runs for e in r["accuracy_by_epoch"]})
    result = {"recipe": recipe, "overrides": overrides, "target": TARGET, "runs": runs,
              "final_accuracy": summary([r["final_accuracy"] for r in runs]),
              "total_seconds": summary([r["total_seconds"] for r in runs]),
              "accuracy_by_epoch": {e: summary([r["accuracy_by_epoch"][e] for r in runs
                                                if e in r["accuracy_by_epoch"]]) for e in epochs}}
    times = [r["seconds_to_target"] for r in runs if r["seconds_to_target"] is not None]
    result["reached_target"] = f"{len(times)} of {len(runs)}"
    result["seconds_to_target"] = summary(times) if times else None
    return result
