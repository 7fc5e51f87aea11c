"""Section 1: the project's trainer against plain Keras `fit`, same model, batch and data, interleaved.

Each contender lives in its own worker process, so each gets the TensorFlow
settings it would have on its own: plain `fit` runs with TensorFlow's
defaults, the trainer with the ones `import mnistkit` sets (oneDNN kernels
on), and a third worker runs `fit` with oneDNN on too, to show how much of the
gap is kernels and how much is the loop. The parent asks the workers for one
epoch each in turn, round after round, so other load on a shared machine falls
on all alike; the first round traces and builds everything and is not counted.
The trainer's epochs include its per-epoch checkpoint; `fit` gets no metrics
and no validation, the cheapest plain baseline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from benchmarks.common import summary

CONTENDERS = ("trainer", "keras_fit", "keras_fit_onednn")


class _NoSigterm:
    raised = False


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    """Float32 matmul GFLOP/s that TensorFlow reaches in this process (median of `repeats`)."""
    import time

    import numpy as np
    import tensorflow as tf

    a, b = tf.random.normal([size, size]), tf.random.normal([size, size])
    product = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
    product().numpy()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        product().numpy()
        times.append(time.perf_counter() - start)
    return 2 * size**3 / float(np.median(times)) / 1e9


def _worker(kind: str, data_dir: str, examples: int, recipe: str, overrides: dict) -> None:
    """Runs one epoch per line read from stdin; answers each with a JSON line of wall and CPU seconds."""
    onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "TensorFlow default")
    if kind == "trainer":
        onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1")  # What `import mnistkit` leaves it at.
        import mnistkit  # noqa: F401  (sets the project's TensorFlow options before TensorFlow loads)
    import tensorflow as tf  # Before mnistkit for `fit`: plain `fit` keeps TensorFlow's own defaults.

    import time

    import numpy as np

    from mnistkit import training
    from mnistkit.model import create_model, keras

    out = sys.stdout
    sys.stdout = sys.stderr  # Keep the answer channel clean of library prints.
    with tempfile.TemporaryDirectory(prefix="mnistkit-bench-") as model_dir:
        config = training.TrainConfig.from_recipe(recipe, data_dir=data_dir, model_dir=model_dir,
                                                  max_train_examples=examples, **overrides)
        if kind == "trainer":
            trainer = training.Trainer(config)
            count, epoch = trainer.steps_per_epoch * config.batch_size, 0
            precision = trainer.precision

            def run_epoch():
                nonlocal epoch
                trainer._train_epoch(epoch, _NoSigterm())
                epoch += 1
        else:
            (images, labels), _ = training.load_data(config)
            count = len(images) // config.batch_size * config.batch_size
            x, y = images[:count].astype(np.float32) / 255.0, labels[:count]
            keras.utils.set_random_seed(config.seed)
            precision = training.resolve_precision(config.precision, config.tpu)
            model = create_model(config.data_format, precision)
            model.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))

            def run_epoch():
                model.fit(x, y, batch_size=config.batch_size, epochs=1, shuffle=True, verbose=0)
        hello = {"examples": count, "batch_size": config.batch_size, "precision": precision,
                 "onednn": onednn, "tf": tf.__version__}
        print(json.dumps(hello), file=out, flush=True)
        for _ in sys.stdin:
            wall, cpu = time.perf_counter(), time.process_time()
            run_epoch()
            print(json.dumps({"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}),
                  file=out, flush=True)


def _start(kind: str, data_dir: str, examples: int, recipe: str, overrides: dict) -> subprocess.Popen:
    env = dict(os.environ)
    env.pop("TF_ENABLE_ONEDNN_OPTS", None)
    if kind == "keras_fit_onednn":
        env["TF_ENABLE_ONEDNN_OPTS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                      env.get("PYTHONPATH")]))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = [sys.executable, "-m", "benchmarks.throughput", kind, data_dir, str(examples), recipe,
            json.dumps(overrides)]
    return subprocess.Popen(args, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)


def _ask(proc: subprocess.Popen, line: str | None) -> dict:
    if line is not None:
        proc.stdin.write(line)
        proc.stdin.flush()
    answer = proc.stdout.readline()
    if not answer:
        raise RuntimeError(f"throughput worker {proc.args[3]} died (exit {proc.wait()})")
    return json.loads(answer)


def measure(data_dir: str, examples: int = 12_800, rounds: int = 3, recipe: str = "fast",
            contenders: tuple[str, ...] = CONTENDERS, **overrides) -> dict:
    """Examples/s of each contender: `rounds` counted rounds after one warm-up round.

    Args:
      data_dir: the four MNIST files (real or synthetic).
      examples: training examples per epoch (a prefix of the training split).
      rounds: counted rounds; each runs one epoch of each contender.
      recipe: the recipe whose batch size, learning rate and precision all use.
      contenders: which of CONTENDERS to run; 'trainer' and 'keras_fit' give the ratio.
      **overrides: TrainConfig fields that replace the recipe's.
    """
    procs = {kind: _start(kind, data_dir, examples, recipe, overrides) for kind in contenders}
    try:
        info = {kind: _ask(proc, None) for kind, proc in procs.items()}
        wall = {kind: [] for kind in procs}
        cpu = {kind: [] for kind in procs}
        for r in range(rounds + 1):
            for kind, proc in procs.items():
                t = _ask(proc, "epoch\n")
                if r:
                    wall[kind].append(info[kind]["examples"] / t["wall"])
                    cpu[kind].append(info[kind]["examples"] / t["cpu"])
    finally:
        for proc in procs.values():
            proc.stdin.close()
            proc.wait(timeout=60)
    result = {"recipe": recipe, "overrides": overrides, "rounds": rounds, "contenders": info}
    for kind in procs:
        result[kind] = {"examples_per_s": summary(wall[kind]), "examples_per_cpu_s": summary(cpu[kind])}
    for kind in procs:
        if kind != "trainer" and "trainer" in procs:
            result[f"ratio_vs_{kind}"] = summary([a / b for a, b in zip(wall["trainer"], wall[kind])])
            result[f"cpu_ratio_vs_{kind}"] = summary([a / b for a, b in zip(cpu["trainer"], cpu[kind])])
    return result


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], json.loads(sys.argv[5]))
