"""The project's TensorFlow settings, applied by each entry point before TensorFlow loads."""

import os


def apply() -> None:
    """Sets the environment TensorFlow reads when it loads; call it before anything imports TensorFlow.

    TensorFlow turns its oneDNN kernels on by default only on CPUs with
    AVX-512 VNNI/BF16 or AMX; on AVX2-only CPUs they train this CNN markedly
    faster per CPU-second than the default kernels (figures in
    benchmarks/results.md). The variable is read once, when TensorFlow loads,
    so a call after that changes nothing. An explicit TF_ENABLE_ONEDNN_OPTS=0
    in the environment still wins.
    """
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
