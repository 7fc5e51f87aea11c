"""Section 5: the exported SavedModel on CPU: batch-1 latency and batch-1000 throughput.

The export is loaded with `tf.saved_model.load` in a fresh process, as a
serving process would, and called through its `classify` signature. That
process imports mnistkit first, so it runs with the project's TensorFlow
settings (oneDNN kernels on).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from benchmarks.common import Timer, summary, worker_env


def measure(export_path: str, data_dir: str, single_calls: int = 500, large_calls: int = 10, rounds: int = 3) -> dict:
    """`measure_here` in a fresh process: nothing of the caller's TensorFlow state (threads, traces) carries over."""
    env = worker_env()
    args = [sys.executable, "-m", "benchmarks.serving", export_path, data_dir, str(single_calls), str(large_calls),
            str(rounds)]
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"serving benchmark failed (exit {done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_here(export_path: str, data_dir: str, single_calls: int, large_calls: int, rounds: int) -> dict:
    """Latency percentiles and CPU-milliseconds of batch-1 calls; examples/s and per CPU-second of batch-1000 calls.

    Args:
      export_path: a SavedModel written by `mnistkit.exporting.export`.
      data_dir: test images are taken from here (real or synthetic).
      single_calls: batch-1 calls per round.
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
    p50, p99, single_cpu, rate, cpu_rate = [], [], [], [], []
    for _ in range(rounds):
        latencies = []
        with Timer() as all_singles:
            for x in singles:
                with Timer() as t:
                    out = classify(image=x)
                    out["classes"].numpy()
                latencies.append(t.wall * 1000)
        p50.append(float(np.percentile(latencies, 50)))
        p99.append(float(np.percentile(latencies, 99)))
        single_cpu.append(all_singles.cpu * 1000 / len(singles))
        with Timer() as t:
            for _ in range(large_calls):
                classify(image=large)["classes"].numpy()
        rate.append(1000 * large_calls / t.wall)
        cpu_rate.append(1000 * large_calls / t.cpu)
    return {"batch1_p50_ms": summary(p50), "batch1_p99_ms": summary(p99), "batch1_cpu_ms": summary(single_cpu),
            "batch1000_examples_per_s": summary(rate), "batch1000_examples_per_cpu_s": summary(cpu_rate)}


if __name__ == "__main__":
    from mnistkit import tf_settings

    tf_settings.apply()  # The project's TensorFlow settings, before TensorFlow loads.

    path, data, singles, large, n = sys.argv[1:6]
    print(json.dumps(measure_here(path, data, int(singles), int(large), int(n))))
