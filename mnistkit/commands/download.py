"""`mnist-download`: fetch the four MNIST files from a mirror and verify them."""

from absl import flags, logging

from mnistkit import fetch, files, sigterm
from mnistkit.commands import cli

FLAGS = flags.DEFINE_string("data_dir", None, "Directory that receives the four files.", required=True)
SOURCE = flags.DEFINE_string(
    "source", fetch.DEFAULT_SOURCE,
    "Where to fetch the files: gs://bucket/prefix, an http(s):// base URL or a local directory; several, "
    "separated by commas, are tried in order for each file (the default: the CVDF bucket, its HTTPS form, "
    "then torchvision's mirror). gs:// uses Application Default Credentials when found, else anonymous access.")
VERIFY = flags.DEFINE_boolean(
    "verify_checksums", True,
    "Check each file's SHA-256 against the original MNIST files. --noverify_checksums accepts other "
    "well-formed IDX data (a subset, another mirror) and says loudly that checksums were not checked.")
ATTEMPTS = cli.define_integer(
    "attempts", 4, "Tries per file and mirror before the next mirror; a mirror that cannot be reached is not retried.",
    lower_bound=1)
TIMEOUT = cli.define_float(
    "timeout_seconds", 60.0, "Seconds to connect to a mirror, and to wait for each read from it, before the attempt "
    "fails (and is retried): lower it where a proxy or firewall swallows connections.", lower_bound=0.1)


def main(argv):
    del argv
    sigterm.exit_on_sigterm()
    files.check_dir_path(FLAGS.value, "--data_dir")
    sums = fetch.download(fetch.DownloadConfig(
        data_dir=FLAGS.value, source=SOURCE.value, verify_checksums=VERIFY.value, attempts=ATTEMPTS.value,
        timeout_seconds=TIMEOUT.value))
    for name, digest in sums.items():
        logging.info("%s  %s", digest, name)


def run():
    cli.run(main)


if __name__ == "__main__":
    run()
