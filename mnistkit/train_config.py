"""The settings of one training run (TrainConfig) and the compute precision they resolve to."""

from __future__ import annotations

import dataclasses
import math
import re
import typing

from mnistkit.recipes import PRECISIONS, RECIPES, SCHEDULES


NOT_IN_PIPELINE = object()  # hyper(pipeline=...) default: the pipeline does not expose the field.
DEFAULT = object()  # hyper(pipeline=DEFAULT): the pipeline parameter's default is the field's, not a copy of it.


def hyper(default, help: str, *, low=None, high=None, above=None, below=None, choices=None,
          pipeline=NOT_IN_PIPELINE, unset=None, unset_means="the recipe's"):
    """Declares one TrainConfig field: everything the flags, the pipeline, the checks and the docs derive.

    Args:
      default: The value when neither the recipe nor the user sets one; dataclasses.MISSING: required.
      help: One sentence for the flag's help and the pipeline's docs.
      low: The least allowed value (inclusive). high: the greatest allowed value (inclusive).
      above: A bound the value must exceed (exclusive). below: a bound it must stay under (exclusive).
      choices: The allowed values of a string.
      pipeline: The pipeline parameter's default; DEFAULT: `default` itself; NOT_IN_PIPELINE keeps the field
        out of the pipeline.
      unset: The pipeline value meaning "not given: the recipe's, else the default" (0 or ""), since
        kfp.local refuses Optional parameters; None when every value of the parameter is a real value. A
        recipe's setting needs one, or every pipeline run would train with the pipeline's default instead.
      unset_means: What `unset` stands for, in the pipeline's docs.
    """
    if below is not None and pipeline is not NOT_IN_PIPELINE:
        raise ValueError("below: pipeline parameters take inclusive upper bounds only (high)")
    if pipeline is DEFAULT:
        pipeline = default
    metadata = dict(help=help, low=low, high=high, above=above, below=below, choices=choices, pipeline=pipeline,
                    unset=unset, unset_means=unset_means)
    return dataclasses.field(default=default, metadata=metadata)


def _recipe(name: str):
    """A recipe field's default: the first recipe's value."""
    return RECIPES["fast"][name]


@dataclasses.dataclass
class TrainConfig:
    """One training run. Defaults are the 'fast' recipe; see `from_recipe`.

    The one place a training setting is declared: add a field here (with `hyper`) and use it in training;
    `mnist-train`'s flags, the pipeline's parameters, their checks and docs follow from it.
    """

    data_dir: str = hyper(dataclasses.MISSING, "Directory holding the four MNIST files.")
    model_dir: str = hyper(dataclasses.MISSING,
                           "model.keras, history.json, summaries and (by default) checkpoints go here.")
    batch_size: int = hyper(_recipe("batch_size"), "Global batch size.", low=1, pipeline=0, unset=0)
    train_epochs: int = hyper(_recipe("train_epochs"), "Epochs to train at most.", low=1, pipeline=0, unset=0)
    epochs_between_evals: int = hyper(1, "Evaluate on the test split every this many epochs.", low=1,
                                      pipeline=DEFAULT)
    epoch_fraction: float = hyper(_recipe("epoch_fraction"), "An epoch's length as a share of the training split: "
                                  "epochs are cut from an endless stream of shuffled passes over it, and each ends "
                                  "with a checkpoint (and, every epochs_between_evals, an evaluation).", above=0,
                                  high=100)
    stop_threshold: float | None = hyper(None, "Stop once test accuracy reaches this (0 to 1).", low=0, high=1,
                                         pipeline=0.99)
    learning_rate: float = hyper(_recipe("learning_rate"), "Adam's (peak) learning rate.", above=0, pipeline=0.0,
                                 unset=0.0)
    schedule: str = hyper(_recipe("schedule"), "Learning-rate schedule.", choices=SCHEDULES)
    warmup_epochs: float = hyper(_recipe("warmup_epochs"), "Epochs of linear learning-rate warmup.", low=0,
                                 high=10_000)
    precision: str = hyper(_recipe("precision"), "Compute precision.", choices=PRECISIONS)
    label_smoothing: float = hyper(_recipe("label_smoothing"), "Label smoothing of the training loss (0: none).",
                                   low=0, high=0.5)
    normalize_inputs: bool = hyper(_recipe("normalize_inputs"), "Standardize the pixels inside the model with the "
                                   "training split's mean and standard deviation.")
    nesterov: bool = hyper(_recipe("nesterov"), "Adam's Nesterov form: each update uses the momentum one step "
                           "ahead (the seed's Adam does not).")
    beta_2: float = hyper(_recipe("beta_2"), "Adam's beta_2, the decay rate of its mean of squared gradients (the "
                          "seed's Adam: 0.999).", above=0, below=1)
    data_format: str | None = hyper(None, "Tensor layout; by default channels_first on GPUs, channels_last "
                                    "elsewhere.", choices=("channels_first", "channels_last"))
    distribution_strategy: str = hyper("default", "tf.distribute strategy; 'default' chooses from the hardware "
                                       "and TF_CONFIG.", choices=("default", "off", "one_device", "mirrored",
                                                                  "multi_worker_mirrored", "tpu"))
    num_gpus: int | None = hyper(None, "GPUs to use (default: all visible).", low=0)
    tpu: str | None = hyper(None, "TPU name or address for the cluster resolver; 'local' on a TPU VM.")
    clean: bool = hyper(False, "Delete model_dir before training instead of resuming from it.")
    seed: int = hyper(0, "Seed of the initial weights and the shuffling.", low=0, high=2**32 - 1)
    steps_per_loop: int = hyper(50, "Training steps per compiled call; SIGTERM is honoured between calls.", low=1)
    max_train_examples: int | None = hyper(None, "Train on only this many examples (quick looks).", low=1,
                                           pipeline=0, unset=0, unset_means="all")
    collective_timeout_seconds: float | None = hyper(
        300.0, "Multi-worker: fail when a peer does not answer a collective within this many seconds, or when "
        "the cluster's tasks have not all started within twice as long. TPU: fail when the TPU has not "
        "answered within twice as long.", above=0)
    # Outside model_dir, where a restarted worker, a retried task or a resubmitted run finds them.
    checkpoint_dir: str | None = hyper(
        None, "Checkpoints go here (a path or gs://, read through Cloud Storage FUSE at /gcs), in a "
        "subdirectory per training settings, so a rerun with the same settings resumes; default "
        "$AIP_CHECKPOINT_DIR when Vertex AI sets it, else MODEL_DIR/checkpoints.")
    tensorboard_dir: str | None = hyper(
        None, "Also write TensorBoard summaries here (MODEL_DIR/logs always has them); default "
        "$AIP_TENSORBOARD_LOG_DIR when Vertex AI sets it.")

    @classmethod
    def from_recipe(cls, recipe: str, **overrides) -> "TrainConfig":
        """The config of `recipe` (see mnistkit/recipes.py) with the `overrides` that are not None."""
        if recipe not in RECIPES:
            raise ValueError(f"recipe: expected one of {', '.join(RECIPES)}, found {recipe!r}")
        return cls(**{**RECIPES[recipe], **{k: v for k, v in overrides.items() if v is not None}})

    def epoch_examples(self, train_examples: int) -> int:
        """The examples of one epoch over a training split of `train_examples` (before max_train_examples).

        Raises:
          ValueError: the batch is larger than an epoch.
        """
        used = min(train_examples, self.max_train_examples or train_examples)
        epoch = max(1, round(self.epoch_fraction * used))
        if self.batch_size > epoch:
            raise ValueError(f"batch_size: expected at most the {epoch} training examples of an epoch, found "
                             f"{self.batch_size} (an epoch is epoch_fraction {self.epoch_fraction:g} of the {used} "
                             "training examples)")
        return epoch

    def check(self) -> None:
        """Raises ValueError naming the first field out of its declared range."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{field.name}: expected a finite number, found {value!r}")
            if value is not None and not _within(value, field.metadata):
                raise ValueError(f"{field.name}: expected {_expected(field.metadata)}, found {value!r}")


def _within(value, rule) -> bool:
    if rule.get("choices") is not None:
        return value in rule["choices"]
    return ((rule.get("low") is None or value >= rule["low"]) and (rule.get("high") is None or value <= rule["high"])
            and (rule.get("above") is None or value > rule["above"])
            and (rule.get("below") is None or value < rule["below"]))


def _expected(rule) -> str:
    if rule.get("choices") is not None:
        return f"one of {', '.join(rule['choices'])}"
    low, high, above, below = (rule.get(k) for k in ("low", "high", "above", "below"))
    lower = f"[{low}" if low is not None else f"({above}" if above is not None else None
    upper = f"{high}]" if high is not None else f"{below})" if below is not None else None
    if lower and upper:
        return f"in {lower}, {upper}"
    if lower:
        return f"at least {low}" if low is not None else f"above {above}"
    return f"at most {high}" if high is not None else f"below {below}"


def expected_range(field: "Field") -> str:
    """The field's allowed values as its errors word them: 'at least 1', 'in [0, 1]', 'in (0, 1)'."""
    return _expected(dict(low=field.low, high=field.high, above=field.above, below=field.below,
                          choices=field.choices))


@dataclasses.dataclass(frozen=True)
class Field:
    """One TrainConfig field as a flag or a pipeline parameter sees it.

    Attributes:
      name: The field's name. kind: int, float, bool or str. help: Its sentence. default: TrainConfig's default.
      low, high, above, below, choices: Its range (see `hyper`). pipeline: The pipeline parameter's default, or
        NOT_IN_PIPELINE. unset: The pipeline value meaning "not given", or None; unset_means: what it means.
    """

    name: str
    kind: type
    help: str
    default: object
    low: object = None
    high: object = None
    above: object = None
    below: object = None
    choices: tuple | None = None
    pipeline: object = NOT_IN_PIPELINE
    unset: object = None
    unset_means: str = "the recipe's"


def fields(config_class=TrainConfig) -> list[Field]:
    """Every field of `config_class` (TrainConfig or a subclass declaring more), in declaration order."""
    hints = typing.get_type_hints(config_class)
    result = []
    for f in dataclasses.fields(config_class):
        kind = next(a for a in typing.get_args(hints[f.name]) or (hints[f.name],) if a is not type(None))
        result.append(Field(f.name, kind, default=f.default, **f.metadata))
        if f.name in RECIPES["fast"] and f.metadata["pipeline"] is not NOT_IN_PIPELINE and \
                f.metadata["unset"] is None:
            raise ValueError(f"{config_class.__name__}.{f.name}: a recipe's setting in the pipeline needs "
                             f"hyper(..., unset=...), the value meaning 'the recipe's'; without it every pipeline "
                             f"run trains with pipeline={f.metadata['pipeline']!r}, whatever the recipe")
    return result


def pipeline_fields(config_class=TrainConfig) -> list[Field]:
    """The fields the pipeline exposes as parameters."""
    return [f for f in fields(config_class) if f.pipeline is not NOT_IN_PIPELINE]


def pipeline_rule(field: Field) -> tuple:
    """(minimum, maximum, choices) of the pipeline parameter: the field's range, widened to take `unset`."""
    low = field.unset if field.unset is not None else (field.low if field.low is not None else field.above)
    cast = field.kind if field.kind in (int, float) else (lambda v: v)
    return (None if low is None else cast(low), None if field.high is None else cast(field.high), field.choices)


def pipeline_help(field: Field) -> str:
    """The pipeline parameter's description: the field's help, and what its `unset` value means."""
    if field.unset is None:
        return field.help
    return f"{field.help.rstrip('.')}; {field.unset:g}: {field.unset_means}." if field.kind in (int, float) else \
        f"{field.help.rstrip('.')}; empty: {field.unset_means}."


def from_pipeline(recipe: str, overrides: dict, config_class=TrainConfig, **given) -> TrainConfig:
    """The config a pipeline run asks for: `recipe`, then the `overrides` that are not `unset`, then `given`.

    Args:
      recipe: A name in RECIPES.
      overrides: Pipeline parameter name -> value, as the component receives them: typed values, or the strings
        kfp.local and Vertex AI substitute into a dict of parameters ("100.0" for an int, "true" for a bool).
      config_class: TrainConfig or a subclass declaring more fields.
      **given: Further field values (data_dir, model_dir, ...); None is "not given".

    Raises:
      ValueError: an unknown name, or a value not of its field's type, named in one line.
    """
    known = {f.name: f for f in pipeline_fields(config_class)}
    values = {}
    for name, raw in overrides.items():
        if name not in known:
            raise ValueError(f"overrides: unknown field {name!r}; expected some of {', '.join(known)}")
        value = _typed(name, raw, known[name].kind)
        if value != known[name].unset:
            values[name] = value
    return config_class.from_recipe(recipe, **values, **given)


# Numbers as --help and JSON write them, ASCII digits only: Python's int() and float() also read "5_000",
# "0x10" (absl's integer flags) and other scripts' digits, which one entry point took and another refused.
INTEGER_TEXT = re.compile(r"[+-]?[0-9]+")
NUMBER_TEXT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def parse_setting(text: str, config_class=TrainConfig) -> tuple[str, object]:
    """'name=value' from a command line as a field's name and its value, typed as the field is.

    Raises:
      ValueError: no '=', a name that is not a field, or a value not of the field's type, named in one line.
    """
    name, sep, raw = text.partition("=")
    known = {f.name: f for f in fields(config_class)}
    if not sep or name not in known:
        raise ValueError(f"expected name=value with a field of {config_class.__name__}, found {text!r}")
    return name, _typed(name, raw, known[name].kind, where="")


def _typed(name: str, raw, kind: type, where: str = "overrides: "):
    """`raw` (a value or its text) as `kind`; ValueError naming `name` (after `where`) otherwise."""
    try:
        value = raw
        if isinstance(raw, str) and kind is not str:
            if kind is bool:
                if raw.strip().lower() not in ("true", "false"):
                    raise ValueError
                return raw.strip().lower() == "true"
            if kind is int and re.fullmatch(r"\s*[+-]?[0-9]+\s*", raw):
                return int(raw)  # Exactly: through float, 9007199254740993 came back as ...992.
            if "_" in raw or not raw.isascii():  # float() reads 1_000 and other scripts' digits; mnist-train not.
                raise ValueError
            value = float(raw)  # The backend writes an integer parameter as "100.0".
        if kind is int:
            if isinstance(value, bool) or float(value) != int(value):
                raise ValueError
            return int(value)
        if kind is float and not isinstance(value, bool):
            return float(value)
        if isinstance(value, kind):
            return value
        raise ValueError
    except (ValueError, TypeError, OverflowError):
        raise ValueError(f"{where}{name}: expected {kind.__name__}, found {raw!r}") from None


def resolve_precision(precision: str, tpu: str | None = None) -> str:
    """'auto' means bfloat16 compute only where the hardware does it natively.

    On a CPU without AVX512_BF16 or AMX, bfloat16 is emulated and training in
    mixed_bfloat16 is several times slower than in float32 (measured on the
    project's AVX2-only machines; figures in docs/performance.md).
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
