"""A training setting is declared once, in TrainConfig: flags, pipeline parameters, ranges and docs follow."""

import dataclasses
import inspect

import pytest
from absl import flags
from google.protobuf import json_format

from mnistkit import train_config
from mnistkit.commands import train as train_command
from mnistkit.recipes import RECIPES
from mnistkit.train_config import TrainConfig, hyper
from pipelines import parameters, pipeline


@dataclasses.dataclass
class WithExampleKnob(TrainConfig):
    """TrainConfig plus one hyperparameter, declared the way a newcomer adds one: a single `hyper` line."""

    # Named so that no real setting a user adds (a weight decay, say) collides with it.
    example_knob: float = hyper(0.0, "An example knob.", low=0, high=1, pipeline=0.1)


def test_a_declared_field_becomes_a_checked_flag():
    values = flags.FlagValues()
    names = train_command.define_flags(WithExampleKnob, values)
    assert names[-1] == "example_knob" and "example_knob" in values
    values(["mnist-train", "--data_dir=/d", "--model_dir=/m", "--example_knob=0.25"])
    # Its range, worded as its error words it, and a default of 0 is said too.
    assert values["example_knob"].help == "An example knob. Allowed: in [0, 1]. (default: 0.0)"
    config = WithExampleKnob.from_recipe("seed", **{name: values[name].value for name in names})
    assert (config.example_knob, config.batch_size, config.learning_rate) == (0.25, 100, 1e-4)
    config.example_knob = 1.5
    with pytest.raises(ValueError, match=r"^example_knob: expected in \[0, 1\], found 1.5$"):
        config.check()


def test_a_declared_field_becomes_a_described_ranged_pipeline_parameter_that_reaches_training(tmp_path):
    built = pipeline.build(config_class=WithExampleKnob)
    params = parameters.pipeline_parameters(built)
    assert params["example_knob"] == {"parameterType": "NUMBER_DOUBLE", "defaultValue": 0.1,
                                         "isOptional": True, "description": "An example knob."}
    rules = pipeline.parameter_rules(WithExampleKnob)
    assert rules["example_knob"] == (0.0, 1.0, None)
    parameters.PARAMETER_RULES, saved = rules, parameters.PARAMETER_RULES
    try:
        with pytest.raises(parameters.ParameterError,
                           match=r"^parameter example_knob: expected a value in \[0.0, 1.0\], found 1.5$"):
            parameters.parse_overrides(["example_knob=1.5"], params)
    finally:
        parameters.PARAMETER_RULES = saved
    # The training task receives it in `overrides` with no edit to the component or the pipeline body ...
    task = built.pipeline_spec.root.dag.tasks["train-model"]
    overrides = json_format.MessageToDict(task.inputs.parameters["overrides"].runtime_value.constant)
    assert overrides["example_knob"] == "{{$.inputs.parameters['pipelinechannel--example_knob']}}"
    # ... and the component's conversion turns the text the backend fills in into the field's value.
    config = train_config.from_pipeline("fast", {**overrides, "example_knob": "0.2", "batch_size": "0.0",
                                                 "train_epochs": "0", "learning_rate": "0.0",
                                                 "epochs_between_evals": "1.0", "stop_threshold": "0.99",
                                                 "max_train_examples": "0.0"},
                                        WithExampleKnob, data_dir="/d", model_dir="/m")
    assert config.example_knob == 0.2


def test_every_field_has_a_flag_of_its_type_and_recipe_fields_leave_the_recipe_in_charge():
    for field in train_config.fields():
        flag = flags.FLAGS[field.name]
        assert field.help in flag.help, field.name
        kinds = {int: "int", float: "float", bool: "bool", str: "string"}
        kind = "string enum" if field.choices is not None else kinds[field.kind]
        assert flag.flag_type() == kind, field.name
        if field.name in RECIPES["fast"]:
            assert flag.default is None, field.name
        if field.choices is not None:
            assert tuple(flag.parser.enum_values) == tuple(field.choices), field.name


def test_the_pipeline_exposes_its_training_fields_in_declaration_order_after_recipe():
    names = list(parameters.pipeline_parameters(pipeline.build()))
    exposed = [f.name for f in train_config.pipeline_fields()]
    assert exposed == ["batch_size", "train_epochs", "epochs_between_evals", "stop_threshold", "learning_rate",
                       "max_train_examples"]
    signature = list(inspect.signature(pipeline.build().pipeline_func).parameters)
    assert signature[signature.index("recipe") + 1:][:len(exposed)] == exposed
    assert set(exposed) <= set(names)


def test_pipeline_text_is_converted_by_field_type_and_unset_means_the_recipes():
    seed = train_config.from_pipeline(
        "seed", {"batch_size": "0.0", "train_epochs": "0", "learning_rate": "0.0", "stop_threshold": "0.0",
                 "epochs_between_evals": "2.0", "max_train_examples": "600.0"}, data_dir="/d", model_dir="/m")
    assert (seed.batch_size, seed.train_epochs, seed.learning_rate) == (100, 40, 1e-4)
    # 0 is a real threshold (stop after the first evaluation): only declared `unset` values step aside.
    assert (seed.stop_threshold, seed.epochs_between_evals, seed.max_train_examples) == (0.0, 2, 600)
    typed = train_config.from_pipeline("fast", {"batch_size": 32, "learning_rate": 1e-3, "max_train_examples": 0},
                                       data_dir="/d", model_dir="/m")
    assert (typed.batch_size, typed.learning_rate, typed.max_train_examples) == (32, 1e-3, None)
    # An integer's text is read exactly: through a float, 2**53 + 1 came back as 2**53.
    exact = train_config.from_pipeline("fast", {"max_train_examples": "9007199254740993"}, data_dir="/d",
                                       model_dir="/m")
    assert exact.max_train_examples == 2**53 + 1


@pytest.mark.parametrize("overrides, message", [
    ({"batch_size": "12.5"}, "overrides: batch_size: expected int, found '12.5'"),
    ({"learning_rate": "fast"}, "overrides: learning_rate: expected float, found 'fast'"),
    ({"train_epochs": True}, "overrides: train_epochs: expected int, found True"),
    ({"schedule": "constant"}, "overrides: unknown field 'schedule'; expected some of batch_size, train_epochs, "
                               "epochs_between_evals, stop_threshold, learning_rate, max_train_examples"),
])
def test_pipeline_overrides_of_the_wrong_type_or_name_are_refused_by_name(overrides, message):
    with pytest.raises(ValueError) as raised:
        train_config.from_pipeline("fast", overrides, data_dir="/d", model_dir="/m")
    assert str(raised.value) == message


def test_a_command_line_setting_is_typed_as_its_field():
    """`python -m benchmarks --set NAME=VALUE`: each value as its field's type, the same words as the pipeline's."""
    assert train_config.parse_setting("epoch_fraction=0.6") == ("epoch_fraction", 0.6)
    assert train_config.parse_setting("batch_size=128") == ("batch_size", 128)
    assert train_config.parse_setting("nesterov=false") == ("nesterov", False)
    assert train_config.parse_setting("schedule=constant") == ("schedule", "constant")
    assert train_config.parse_setting("example_knob=0.5", WithExampleKnob) == ("example_knob", 0.5)


@pytest.mark.parametrize("text, message", [
    ("batch_size=12.5", "batch_size: expected int, found '12.5'"),
    # As mnist-train's flags and the pipeline's parameters read numbers: not 1_000, not other scripts' digits.
    ("batch_size=1_000", "batch_size: expected int, found '1_000'"),
    ("learning_rate=1_0e-3", "learning_rate: expected float, found '1_0e-3'"),
    ("train_epochs=\u0663", "train_epochs: expected int, found '\u0663'"),
    ("nesterov=maybe", "nesterov: expected bool, found 'maybe'"),
    ("batch_size", "expected name=value with a field of TrainConfig, found 'batch_size'"),
    ("example_knob=0.1", "expected name=value with a field of TrainConfig, found 'example_knob=0.1'"),
])
def test_a_command_line_setting_of_the_wrong_type_or_name_is_refused_by_name(text, message):
    with pytest.raises(ValueError) as raised:
        train_config.parse_setting(text)
    assert str(raised.value) == message


def test_an_exclusive_upper_bound_is_refused_for_a_pipeline_parameter():
    # The pipeline's rules know inclusive upper bounds only: such a bound would go unchecked there.
    with pytest.raises(ValueError, match="below: pipeline parameters take inclusive upper bounds only"):
        hyper(0.5, "A share.", below=1, pipeline=0.5)


def test_a_recipes_setting_in_the_pipeline_without_unset_is_refused_where_it_is_declared():
    """Without `unset`, the pipeline's default reached training as a real value: the fast recipe's setting was
    replaced in every pipeline run, and mnist-train and the pipeline trained differently."""

    @dataclasses.dataclass
    class Overridden(TrainConfig):
        beta_2: float = hyper(0.95, "Adam's beta_2.", above=0, high=0.9999, pipeline=0.999)

    with pytest.raises(ValueError, match=r"^Overridden.beta_2: a recipe's setting in the pipeline needs "
                                         r"hyper\(..., unset=...\), the value meaning 'the recipe's'; without it "
                                         r"every pipeline run trains with pipeline=0.999, whatever the recipe$"):
        train_config.fields(Overridden)


def test_a_pipeline_default_is_the_fields_own_unless_it_says_otherwise():
    """epochs_between_evals carried its default twice (hyper(1, ..., pipeline=1)): a change to one left the
    pipeline training differently from mnist-train, and no test noticed."""
    defaults = {name: p["defaultValue"] for name, p in parameters.pipeline_parameters(pipeline.build()).items()}
    for field in train_config.pipeline_fields():
        if field.unset is not None:  # The recipe's, written as `unset`.
            assert defaults[field.name] == field.unset, field.name
        elif field.name != "stop_threshold":  # None in mnist-train; the pipeline stops at 0.99 (see README).
            assert defaults[field.name] == field.default, field.name

    @dataclasses.dataclass
    class Evaluating(TrainConfig):
        epochs_between_evals: int = hyper(2, "Evaluate every this many epochs.", low=1,
                                          pipeline=train_config.DEFAULT)

    (field,) = [f for f in train_config.pipeline_fields(Evaluating) if f.name == "epochs_between_evals"]
    assert field.pipeline == 2


def test_every_recipe_sets_the_same_settings():
    from mnistkit import recipes

    recipes.check_recipes(RECIPES)
    with pytest.raises(ValueError, match=r"^recipe seed: expected the settings every recipe sets, a, b; found a$"):
        recipes.check_recipes({"fast": {"a": 1, "b": 2}, "seed": {"a": 1}})
