"""The settings of one training run (TrainConfig) and the compute precision they resolve to."""

from __future__ import annotations

import dataclasses

from mnistkit.recipes import PRECISIONS, RECIPES, SCHEDULES


@dataclasses.dataclass
class TrainConfig:
    """One training run. Defaults are the 'fast' recipe; see `from_recipe`."""

    data_dir: str
    model_dir: str
    batch_size: int = RECIPES["fast"]["batch_size"]
    train_epochs: int = RECIPES["fast"]["train_epochs"]
    epochs_between_evals: int = 1
    stop_threshold: float | None = None
    learning_rate: float = RECIPES["fast"]["learning_rate"]
    schedule: str = RECIPES["fast"]["schedule"]
    warmup_epochs: float = RECIPES["fast"]["warmup_epochs"]
    precision: str = RECIPES["fast"]["precision"]
    data_format: str | None = None
    distribution_strategy: str = "default"
    num_gpus: int | None = None
    tpu: str | None = None
    clean: bool = False
    seed: int = 0
    steps_per_loop: int = 50  # Training steps per tf.function call.
    max_train_examples: int | None = None  # Train on a prefix of the data (tests, quick looks).
    collective_timeout_seconds: float | None = 300.0
    # Checkpoints outside model_dir, where a restarted worker, a retried task or a resubmitted run finds them
    # (a local path or gs://); None: $AIP_CHECKPOINT_DIR when Vertex AI sets it, else model_dir/checkpoints.
    checkpoint_dir: str | None = None
    # A second copy of the TensorBoard summaries (model_dir/logs always has one); None: $AIP_TENSORBOARD_LOG_DIR.
    tensorboard_dir: str | None = None

    @classmethod
    def from_recipe(cls, recipe: str, **overrides) -> "TrainConfig":
        """The config of `recipe` (see mnistkit/recipes.py) with the `overrides` that are not None."""
        if recipe not in RECIPES:
            raise ValueError(f"recipe: expected one of {', '.join(RECIPES)}, found {recipe!r}")
        return cls(**{**RECIPES[recipe], **{k: v for k, v in overrides.items() if v is not None}})

    def check(self) -> None:
        """Raises ValueError naming the first parameter out of range."""
        problems = [
            ("batch_size", self.batch_size, self.batch_size >= 1, "at least 1"),
            ("train_epochs", self.train_epochs, self.train_epochs >= 1, "at least 1"),
            ("epochs_between_evals", self.epochs_between_evals, self.epochs_between_evals >= 1, "at least 1"),
            ("learning_rate", self.learning_rate, self.learning_rate > 0, "above 0"),
            ("stop_threshold", self.stop_threshold,
             self.stop_threshold is None or 0 <= self.stop_threshold <= 1, "in [0, 1]"),
            ("schedule", self.schedule, self.schedule in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
            ("precision", self.precision, self.precision in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
            ("warmup_epochs", self.warmup_epochs, self.warmup_epochs >= 0, "at least 0"),
            ("steps_per_loop", self.steps_per_loop, self.steps_per_loop >= 1, "at least 1"),
        ]
        for name, value, ok, expected in problems:
            if not ok:
                raise ValueError(f"{name}: expected {expected}, found {value!r}")


def resolve_precision(precision: str, tpu: str | None = None) -> str:
    """'auto' means bfloat16 compute only where the hardware does it natively.

    On a CPU without AVX512_BF16 or AMX, bfloat16 is emulated: measured here
    on an AVX2-only EPYC, Keras `fit` ran 6x slower in mixed_bfloat16 than in
    float32 (99 vs 620 examples/s).
    """
    if precision != "auto":
        return precision
    if tpu:
        return "mixed_bfloat16"
    import tensorflow as tf  # Here, so that reading or checking a config does not load TensorFlow.

    for gpu in tf.config.list_physical_devices("GPU"):
        if tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0)) >= (8, 0):
            return "mixed_bfloat16"
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        flags = ""
    return "mixed_bfloat16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "float32"
