"""Section 4: fetching the four files from a local mirror and validating them, timed.

Two mirrors: a local directory, and the same directory over HTTP from a
loopback server in this process. Each round fetches into an empty directory
(checksums verified) and runs the validation that the pipeline's second step
runs. No TensorFlow is imported here, as the pipeline's data steps import none.
CPU-seconds are this process's, so over HTTP they include the loopback
server's thread: both ends of the transfer.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from benchmarks.common import Timer, summary
from tests.servers import serve_directory


def _is_real_mnist(data_dir: str) -> bool:
    from mnistkit import fetch, idx

    return all(os.path.exists(os.path.join(data_dir, n)) and fetch.sha256_of(os.path.join(data_dir, n)) == h
               for n, h in idx.SHA256.items())


def measure(data_dir: str, rounds: int = 3) -> dict:
    """Seconds and CPU-seconds to download (verified when the files are MNIST's) and validate, per mirror kind."""
    from mnistkit import fetch, validation

    real = _is_real_mnist(data_dir)
    results = {"real_mnist": real, "checksums_verified": real, "bytes": sum(
        os.path.getsize(os.path.join(data_dir, n)) for n in os.listdir(data_dir) if n.endswith(".gz"))}
    with serve_directory(data_dir) as url:
        for kind, source in (("local_dir", data_dir), ("http_loopback", url)):
            download_s, validate_s, total_s, total_cpu = [], [], [], []
            for _ in range(rounds):
                target = tempfile.mkdtemp(prefix="mnistkit-bench-data-")
                try:
                    with Timer() as fetched:
                        fetch.download(fetch.DownloadConfig(data_dir=target, source=source, verify_checksums=real,
                                                            attempts=1))
                    with Timer() as validated:
                        validation.validate(target, canonical=real)
                finally:
                    shutil.rmtree(target, ignore_errors=True)
                download_s.append(fetched.wall)
                validate_s.append(validated.wall)
                total_s.append(fetched.wall + validated.wall)
                total_cpu.append(fetched.cpu + validated.cpu)
            results[kind] = {"download_s": summary(download_s), "validate_s": summary(validate_s),
                             "total_s": summary(total_s), "total_cpu_s": summary(total_cpu)}
    return results
