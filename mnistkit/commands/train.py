"""`mnist-train`: train the seed's CNN, evaluating every few epochs, stopping at a threshold."""

import sys

from absl import flags, logging

from mnistkit import tf_settings
from mnistkit.commands import cli
from mnistkit.recipes import PRECISIONS, RECIPES, SCHEDULES

RECIPE = flags.DEFINE_enum("recipe", "fast", list(RECIPES),
                           "Hyperparameter set: 'seed' is tensorflow/models r1 (Adam 1e-4, batch 100, 40 "
                           "epochs); 'fast' reaches its accuracy in a few epochs. Flags below override it.")
flags.DEFINE_string("data_dir", None, "Directory holding the four MNIST files.", required=True)
flags.DEFINE_string("model_dir", None, "model.keras, history.json, summaries and (by default) checkpoints go here.",
                    required=True)
flags.DEFINE_integer("batch_size", None, "Global batch size (recipe: seed 100).")
flags.DEFINE_integer("train_epochs", None, "Epochs to train at most (recipe: seed 40).")
flags.DEFINE_integer("epochs_between_evals", 1, "Evaluate on the test split every this many epochs.")
flags.DEFINE_float("stop_threshold", None, "Stop once test accuracy reaches this (0 to 1).")
flags.DEFINE_float("learning_rate", None, "Adam's (peak) learning rate (recipe: seed 1e-4).")
flags.DEFINE_enum("schedule", None, list(SCHEDULES), "Learning-rate schedule.")
flags.DEFINE_enum("precision", None, list(PRECISIONS), "Compute precision.")
flags.DEFINE_enum("data_format", None, ["channels_first", "channels_last"],
                  "Tensor layout; by default channels_first on GPUs, channels_last elsewhere.")
flags.DEFINE_enum("distribution_strategy", "default",
                  ["default", "off", "one_device", "mirrored", "multi_worker_mirrored", "tpu"],
                  "tf.distribute strategy; 'default' chooses from the hardware and TF_CONFIG.")
flags.DEFINE_integer("num_gpus", None, "GPUs to use (default: all visible).")
flags.DEFINE_string("tpu", None, "TPU name or address for the cluster resolver; 'local' on a TPU VM.")
flags.DEFINE_boolean("clean", False, "Delete model_dir before training instead of resuming from it.")
flags.DEFINE_integer("seed", 0, "Seed of the initial weights and the shuffling.")
flags.DEFINE_integer("max_train_examples", None, "Train on only this many examples (quick looks).")
flags.DEFINE_integer("steps_per_loop", None, "Training steps per compiled call; SIGTERM is honoured between calls.")
flags.DEFINE_float("collective_timeout_seconds", None,
                   "Multi-worker: fail when a peer does not answer a collective within this many seconds "
                   "(default 300).")
flags.DEFINE_string("checkpoint_dir", None,
                    "Checkpoints go here (a path or gs://, read through Cloud Storage FUSE at /gcs), in a "
                    "subdirectory per training settings, so a rerun with the same settings resumes; default "
                    "$AIP_CHECKPOINT_DIR when Vertex AI sets it, else MODEL_DIR/checkpoints.")
flags.DEFINE_string("tensorboard_dir", None,
                    "Also write TensorBoard summaries here (MODEL_DIR/logs always has them); default "
                    "$AIP_TENSORBOARD_LOG_DIR when Vertex AI sets it.")

_FIELDS = ("data_dir", "model_dir", "batch_size", "train_epochs", "epochs_between_evals", "stop_threshold",
           "learning_rate", "schedule", "precision", "data_format", "distribution_strategy", "num_gpus",
           "tpu", "clean", "seed", "max_train_examples", "steps_per_loop", "collective_timeout_seconds",
           "checkpoint_dir", "tensorboard_dir")


def main(argv):
    del argv
    from mnistkit import training  # TensorFlow loads here, after flags are parsed.

    config = training.TrainConfig.from_recipe(RECIPE.value, **{f: flags.FLAGS[f].value for f in _FIELDS})
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
