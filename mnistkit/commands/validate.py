"""`mnist-validate`: check the IDX files and write a JSON and Markdown report."""

import os

from absl import flags, logging

from mnistkit import files, sigterm, validation
from mnistkit.commands import cli

DATA_DIR = flags.DEFINE_string("data_dir", None, "Directory holding the four files.", required=True)
REPORT_DIR = flags.DEFINE_string(
    "report_dir", None, "Where report.json and report.md go (default: the data directory).")
CANONICAL = flags.DEFINE_boolean(
    "canonical", True, "Require MNIST's own sizes; --nocanonical accepts subsets.")


def main(argv):
    del argv
    report_dir = REPORT_DIR.value or DATA_DIR.value
    files.check_dir_path(report_dir, "--report_dir" if REPORT_DIR.value else "--data_dir")
    sigterm.exit_on_sigterm()
    files.sweep_leftovers(report_dir)  # A killed run's half-written report files.
    report = validation.validate(DATA_DIR.value, canonical=CANONICAL.value)
    validation.write_report(report, os.path.join(report_dir, "report.json"), os.path.join(report_dir, "report.md"))
    logging.info("valid:\n%s", validation.to_markdown(report))


def run():
    cli.run(main)


if __name__ == "__main__":
    run()
