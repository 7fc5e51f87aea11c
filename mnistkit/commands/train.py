"""`mnist-train`: train the seed's CNN, evaluating every few epochs, stopping at a threshold."""

import dataclasses
import sys

from absl import flags, logging

from mnistkit import tf_settings, train_config
from mnistkit.commands import cli
from mnistkit.recipes import RECIPES

RECIPE = flags.DEFINE_enum("recipe", "fast", list(RECIPES),
                           "Hyperparameter set: 'seed' is tensorflow/models r1 (Adam 1e-4, batch 100, 40 "
                           "epochs); 'fast' reaches its accuracy in a few epochs. Flags below override it.")


def define_flags(config_class=train_config.TrainConfig, flag_values=flags.FLAGS) -> list[str]:
    """One flag per field of `config_class`, typed, ranged and described by its declaration; returns their names."""
    for field in train_config.fields(config_class):
        help = field.help
        if field.kind in (int, float) and any(b is not None for b in (field.low, field.high, field.above,
                                                                         field.below)):
            help += f" Allowed: {train_config.expected_range(field)}."
        if field.name in RECIPES["fast"]:  # None: the recipe decides.
            help += " (recipe: " + ", ".join(f"{r} {v[field.name]}" for r, v in RECIPES.items()) + ")"
        elif field.default is not None and field.default is not dataclasses.MISSING and field.default is not False:
            help += f" (default: {field.default})"
        required = field.default is dataclasses.MISSING
        # Every flag defaults to None (a boolean no recipe sets: to its default), so that from_recipe() keeps the
        # recipe's or TrainConfig's.
        if field.choices is not None:
            flags.DEFINE_enum(field.name, None, list(field.choices), help, flag_values=flag_values)
        elif field.kind is bool:
            default = None if field.name in RECIPES["fast"] else field.default
            flags.DEFINE_boolean(field.name, default, help, flag_values=flag_values)
        elif field.kind is str:
            flags.DEFINE_string(field.name, None, help, required=required, flag_values=flag_values)
        else:
            parser = cli.DecimalInteger() if field.kind is int else cli.DecimalFloat()
            flags.DEFINE(parser, field.name, None, help, required=required, flag_values=flag_values)
    return [field.name for field in train_config.fields(config_class)]


_FLAGS = define_flags()


def main(argv):
    del argv
    config = train_config.TrainConfig.from_recipe(RECIPE.value, **{f: flags.FLAGS[f].value for f in _FLAGS})
    config.check()  # A value out of range is one line before TensorFlow loads (seconds), not after.
    from mnistkit import training  # TensorFlow loads here.

    try:
        result = training.train(config)
    except training.Interrupted as e:
        logging.warning("%s", e)
        sys.exit(143)  # 128 + SIGTERM, as if the signal had ended the process.
    except training.PeerFailure as e:
        logging.error("%s", e)
        sys.exit(1)
    except training.Diverged as e:  # Not a bad input, yet as final as one: one line, exit 1.
        print(f"{cli.prog_name()}: error: {e}", file=sys.stderr)
        sys.exit(1)
    logging.info("trained %d epochs; evaluations: %s", result["epochs"], result["evaluations"])


def run():
    tf_settings.apply()  # Before anything loads TensorFlow.
    cli.run(main)


if __name__ == "__main__":
    run()
