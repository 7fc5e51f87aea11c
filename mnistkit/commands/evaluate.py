"""`mnist-evaluate`: accuracy, per-class figures and the confusion matrix as JSON, optionally an HTML report."""

import json
import os

from absl import flags, logging

from mnistkit import files, sigterm, tf_settings
from mnistkit.commands import cli

MODEL_DIR = flags.DEFINE_string("model_dir", None, "Directory that mnist-train wrote.", required=True)
DATA_DIR = flags.DEFINE_string("data_dir", None, "Directory holding the four MNIST files.", required=True)
OUTPUT = flags.DEFINE_string("output", None, "Where metrics.json goes (default: MODEL_DIR/metrics.json).")
REPORT_DIR = flags.DEFINE_string("report_dir", None, "Also write the HTML report (figures inline) as "
                                 "REPORT_DIR/report.html, the page the pipeline's evaluate step writes.")


def main(argv):
    del argv
    # Checked before TensorFlow loads and the model runs, so a wrong flag fails in a moment, with nothing written.
    # --model_dir may also name the model file itself: metrics.json then goes beside it.
    model_dir = os.path.dirname(MODEL_DIR.value) if os.path.isfile(MODEL_DIR.value) else MODEL_DIR.value
    output = OUTPUT.value or os.path.join(model_dir, "metrics.json")
    if not os.path.basename(output).strip():  # 'metrics/' or ' ': it failed only after the whole evaluation.
        raise cli.UserError(f"--output: expected a path of a file to write, found {output!r}")
    if os.path.isdir(output):
        raise cli.UserError(f"--output: expected a file to write, found a directory: {output}")
    files.check_dir_path(os.path.dirname(output) or ".", "--output's directory")
    if REPORT_DIR.value:
        files.check_dir_path(REPORT_DIR.value, "--report_dir")
        from mnistkit import report

        page = os.path.join(REPORT_DIR.value, report.REPORT_FILE)
        if os.path.isdir(page):
            raise cli.UserError(f"--report_dir: expected {page} to be a file to write, found a directory")
        report.load_history(model_dir)  # What the report plots: a broken history.json is refused now.
        report.class_counts(DATA_DIR.value)  # Its histogram reads both splits' labels: a missing one, now.
    sigterm.exit_on_sigterm()
    for directory in {os.path.dirname(output) or "."} | ({REPORT_DIR.value} if REPORT_DIR.value else set()):
        files.sweep_leftovers(directory)  # A killed run's half-written metrics or report.
    from mnistkit import evaluation

    metrics = evaluation.evaluate(MODEL_DIR.value, DATA_DIR.value)
    texts = {output: json.dumps(metrics, indent=2) + "\n"}
    if REPORT_DIR.value:
        from mnistkit import report

        page = os.path.join(REPORT_DIR.value, report.REPORT_FILE)
        texts[page] = report.page_of(model_dir, DATA_DIR.value, metrics)
    files.atomic_write_texts(texts)  # Both or neither: never the new metrics beside the old model's report.
    logging.info("accuracy %.4f, loss %.4f -> %s", metrics["accuracy"], metrics["loss"], output)
    if REPORT_DIR.value:
        cli.say(f"report: {os.path.abspath(page)}")


def run():
    tf_settings.apply()  # Before anything loads TensorFlow.
    cli.run(main)


if __name__ == "__main__":
    run()
