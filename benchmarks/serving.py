"""Section 5: the exported SavedModel on CPU: batch-1 latency and batch-1000 throughput.

The export is loaded with `tf.saved_model.load` and called through its
`classify` signature, as a serving process would.
"""

from __future__ import annotations

import numpy as np

from benchmarks.common import Timer, summary


def measure(export_path: str, data_dir: str, single_calls: int = 500, large_calls: int = 10, rounds: int = 3) -> dict:
    """Latency percentiles of batch-1 calls and examples/s of batch-1000 calls.

    Args:
      export_path: a SavedModel written by `mnistkit.exporting.export`.
      data_dir: test images are taken from here (real or synthetic).
      single_calls: batch-1 calls per round (latencies pooled over rounds).
      large_calls: batch-1000 calls per round.
      rounds: rounds; each reports its own p50/p99 and throughput.
    """
    import tensorflow as tf

    from mnistkit import idx

    classify = tf.saved_model.load(export_path).signatures["classify"]
    images, _ = idx.load_split(data_dir, idx.TEST)
    images = images.astype(np.float32) / 255.0
    batch = np.resize(images, (1000, 28, 28))  # Repeats a small synthetic split up to 1,000.
    singles = [tf.constant(images[i % len(images)][None]) for i in range(single_calls)]
    large = tf.constant(batch)
    for _ in range(20):  # Warm-up: the first calls trace and allocate.
        classify(image=singles[0])
    classify(image=large)
    p50, p99, rate = [], [], []
    for _ in range(rounds):
        latencies = []
        for x in singles:
            with Timer() as t:
                out = classify(image=x)
                out["classes"].numpy()
            latencies.append(t.wall * 1000)
        p50.append(float(np.percentile(latencies, 50)))
        p99.append(float(np.percentile(latencies, 99)))
        with Timer() as t:
            for _ in range(large_calls):
                classify(image=large)["classes"].numpy()
        rate.append(1000 * large_calls / t.wall)
    return {"batch1_p50_ms": summary(p50), "batch1_p99_ms": summary(p99),
            "batch1000_examples_per_s": summary(rate)}
