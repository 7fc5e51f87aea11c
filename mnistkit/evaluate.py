"""`mnist-evaluate`: accuracy, per-class precision and recall, and the confusion matrix, as JSON."""

import json
import os

from absl import flags, logging

from mnistkit import cli, files

MODEL_DIR = flags.DEFINE_string("model_dir", None, "Directory that mnist-train wrote.", required=True)
DATA_DIR = flags.DEFINE_string("data_dir", None, "Directory holding the four MNIST files.", required=True)
OUTPUT = flags.DEFINE_string("output", None, "Where metrics.json goes (default: MODEL_DIR/metrics.json).")


def main(argv):
    del argv
    from mnistkit import evaluation

    metrics = evaluation.evaluate(MODEL_DIR.value, DATA_DIR.value)
    output = OUTPUT.value or os.path.join(MODEL_DIR.value, "metrics.json")
    files.atomic_write_text(output, json.dumps(metrics, indent=2) + "\n")
    logging.info("accuracy %.4f, loss %.4f -> %s", metrics["accuracy"], metrics["loss"], output)


def run():
    cli.run(main)


if __name__ == "__main__":
    run()
