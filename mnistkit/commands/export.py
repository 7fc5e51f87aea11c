"""`mnist-export`: write a SavedModel with the seed's `classify` signature under EXPORT_DIR/<timestamp>."""

from absl import flags, logging

from mnistkit import sigterm, tf_settings
from mnistkit.commands import cli

MODEL_DIR = flags.DEFINE_string("model_dir", None, "Directory that mnist-train wrote.", required=True)
EXPORT_DIR = flags.DEFINE_string("export_dir", None, "Receives a timestamped SavedModel directory.",
                                 required=True)


def main(argv):
    del argv
    sigterm.exit_on_sigterm()
    from mnistkit import exporting

    path = exporting.export(MODEL_DIR.value, EXPORT_DIR.value)
    logging.info("exported %s", path)
    cli.say(path)


def run():
    tf_settings.apply()  # Before anything loads TensorFlow.
    cli.run(main)


if __name__ == "__main__":
    run()
