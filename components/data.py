"""The data steps: fetch the MNIST files from a mirror, then check them. Neither loads TensorFlow."""

from kfp.dsl import Dataset, Input, Markdown, Output


def download_data(source: str, data: Output[Dataset], verify_checksums: bool = True):
    """Fetches the four MNIST files from a mirror, verified, into the `data` artifact.

    Args:
      source: gs://BUCKET/PREFIX, an http(s):// base URL or a local directory
        holding the four gzipped IDX files; several, separated by commas, are
        tried in order for each file.
      verify_checksums: Require the SHA-256 of MNIST's own files; False accepts
        any well-formed IDX files.
      data: The directory with the four files.
    """
    from mnistkit import fetch, sigterm

    sigterm.exit_on_sigterm()  # A preempted step removes its partial file before it exits.
    # The artifact is this step's alone: a retry clears what a killed attempt left, on any host.
    digests = fetch.download(fetch.DownloadConfig(data_dir=data.path, source=source,
                                                  verify_checksums=verify_checksums, sole_writer=True))
    data.metadata.update({"source": source, "checksums_verified": verify_checksums, "sha256": digests})


def validate_data(data: Input[Dataset], report: Output[Markdown], canonical: bool = True) -> int:
    """Checks the IDX headers, counts and labels of both splits and writes a report.

    Args:
      data: The directory download_data filled.
      canonical: Also require MNIST's sizes (60,000 training and 10,000 test examples).
      report: A Markdown table of examples, pixel statistics and class counts per split.

    Returns:
      The number of training examples.
    """
    from mnistkit import validation

    result = validation.validate(data.path, canonical=canonical)
    validation.write_report(result, markdown_path=report.path)
    return result["splits"]["train"]["examples"]
