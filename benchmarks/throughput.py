"""Section 1: the project's trainer against plain Keras `fit`, same batch, data and precision, interleaved.

Each contender lives in its own worker process, so each gets the TensorFlow
settings it would have on its own. The contenders:
- `trainer`: the project's trainer, with the settings `tf_settings.apply()`
  makes (oneDNN kernels on);
- `keras_fit_stock`: plain `fit` on the seed's CNN as a user writes it with
  stock Keras layers (conv-ReLU-pool, `Dense`) and Keras' Adam, TensorFlow's
  defaults: the plain `fit` a user would compare against;
- `keras_fit`: plain `fit` on the project's own model (transposed dense
  kernels, pools before ReLUs) with Keras' Adam, TensorFlow's defaults: what
  the loop and the fused Adam alone are worth;
- `keras_fit_onednn`: the same with oneDNN forced on, to show how much of the
  gap is kernels (TensorFlow leaves oneDNN off on AVX2-only CPUs).
The parent asks the workers for one epoch each in turn, round after round, so
other load on a shared machine falls on all alike; the first round traces and
builds everything and is not counted. The trainer's epochs include its
per-epoch checkpoint; `fit` gets no metrics and no validation, the cheapest
plain baseline.

`isa="avx2"` runs every contender as on an AVX2-only CPU, on whatever CPU this
is: oneDNN capped at AVX2 (ONEDNN_MAX_CPU_ISA), float32 (what 'auto' picks
there), and oneDNN off for the contenders on TensorFlow's defaults (TensorFlow
turns it on by itself only for CPUs with AVX-512 VNNI/BF16 or AMX). It is a
stand-in: the kernels are AVX2's, the caches and memory are this machine's.

How close the trainer runs to the machine's limit: after each of its epochs
the trainer's worker times a square matmul at the precision the model
computes in, and the trainer's rate (examples/s times the FLOPs of a training
example, counted from the model's layers) is divided by it round by round, so
both sides of each quotient see the same load.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile

from benchmarks.common import summary, worker_env

CONTENDERS = ("trainer", "keras_fit_stock", "keras_fit", "keras_fit_onednn")
ISAS = ("native", "avx2")


def matmul_gflops(size: int = 2048, repeats: int = 5, dtype: str = "float32") -> float:
    """Matmul GFLOP/s that TensorFlow reaches in this process at `dtype` (median of `repeats`)."""
    return matmul_rates(size, repeats, dtype)[0]


def matmul_rates(size: int = 2048, repeats: int = 5, dtype: str = "float32") -> tuple[float, float]:
    """A square matmul's GFLOP per wall second and per CPU-second (medians of `repeats`) at `dtype`."""
    import time

    import numpy as np
    import tensorflow as tf

    a = tf.cast(tf.random.normal([size, size]), dtype)
    b = tf.cast(tf.random.normal([size, size]), dtype)
    product = tf.function(lambda: tf.reduce_sum(tf.cast(tf.matmul(a, b), tf.float32)))
    product().numpy()
    wall, cpu = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        product().numpy()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu_start)
    return 2 * size**3 / float(np.median(wall)) / 1e9, 2 * size**3 / float(np.median(cpu)) / 1e9


def training_flops_per_example(model) -> float:
    """Floating-point operations of one training example (forward, backward, no optimizer), from the layers.

    Counts the multiply-adds of convolutions and dense layers, two FLOPs each:
    the forward pass once, the backward pass twice (the gradient with respect
    to the weights and with respect to the input), except that the first
    layer needs no input gradient. About 82 MFLOP for the seed's CNN.
    """
    macs = []
    for layer in model.layers:
        kernel = getattr(layer, "kernel", None)
        if kernel is None:
            continue
        weights = math.prod(int(n) for n in kernel.shape)
        if len(kernel.shape) == 4:  # A convolution: each kernel weight is used once per output position.
            out = layer.output.shape
            positions = out[1] * out[2] if layer.data_format == "channels_last" else out[2] * out[3]
            macs.append(weights * positions)
        else:
            macs.append(weights)
    return 2.0 * (3 * sum(macs) - macs[0])


def _onednn_in_use() -> bool | None:
    """Whether this process's TensorFlow runs oneDNN's kernels: TensorFlow's own answer, which follows
    TF_ENABLE_ONEDNN_OPTS and, unset, this CPU's features. A private module, read only to label the rows: with
    oneDNN already TensorFlow's default, the 'oneDNN on' contender runs what plain `fit` runs. None if it moved."""
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:
        return None
    return bool(_pywrap_util_port.IsMklEnabled())


def _worker(kind: str, data_dir: str, examples: int, recipe: str, overrides: dict) -> None:
    """Runs one epoch per line read from stdin; answers each with a JSON line of wall and CPU seconds."""
    onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "TensorFlow default")
    onednn_isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "native")
    if kind == "trainer":
        from mnistkit import tf_settings

        tf_settings.apply()  # The project's TensorFlow options, before TensorFlow loads.
        onednn = os.environ["TF_ENABLE_ONEDNN_OPTS"]
    import tensorflow as tf  # Before mnistkit for `fit`: plain `fit` keeps TensorFlow's own defaults.

    import time

    import numpy as np

    from mnistkit import inputs, training
    from mnistkit.model import create_model, keras

    out = sys.stdout
    sys.stdout = sys.stderr  # Keep the answer channel clean of library prints.
    with tempfile.TemporaryDirectory(prefix="mnistkit-bench-") as model_dir:
        # Whole passes (epoch_fraction 1), so that a turn of each contender trains the same examples.
        config = training.TrainConfig.from_recipe(recipe, data_dir=data_dir, model_dir=model_dir,
                                                  max_train_examples=examples, **{"epoch_fraction": 1.0, **overrides})
        if kind == "trainer":
            trainer = training.Trainer(config)
            count = trainer.steps_per_epoch * config.batch_size
            precision = trainer.precision
            run_epoch = trainer.train_epoch  # Each call trains the next epoch and saves its checkpoint.
        else:
            (images, labels), _ = inputs.load_data(config)
            count = len(images) // config.batch_size * config.batch_size
            x, y = images[:count].astype(np.float32) / 255.0, labels[:count]
            keras.utils.set_random_seed(config.seed)
            precision = training.resolve_precision(config.precision, config.tpu)
            if kind == "keras_fit_stock":
                from benchmarks.recipe import plain_keras_model

                # The Keras mixed-precision guide's way: a global policy, float32 logits for the loss.
                keras.mixed_precision.set_global_policy(precision)
                model = keras.Sequential([plain_keras_model(keras), keras.layers.Activation("linear", dtype="float32")])
            else:
                model = create_model(config.data_format, precision)
            model.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))

            def run_epoch():
                model.fit(x, y, batch_size=config.batch_size, epochs=1, shuffle=True, verbose=0)
        hello = {"examples": count, "batch_size": config.batch_size, "precision": precision,
                 "onednn": onednn, "onednn_in_use": _onednn_in_use(), "onednn_isa": onednn_isa, "tf": tf.__version__}
        if kind == "trainer":
            hello["flops_per_example"] = training_flops_per_example(trainer.model)
        print(json.dumps(hello), file=out, flush=True)
        for line in sys.stdin:
            if line.startswith("matmul"):
                # The machine's limit at the precision the model computes in, right after an epoch.
                size = int(line.split()[1])
                dtype = "bfloat16" if precision == "mixed_bfloat16" else "float32"
                gflops, per_cpu_s = matmul_rates(size, dtype=dtype)
                print(json.dumps({"gflops": gflops, "gflops_per_cpu_s": per_cpu_s, "dtype": dtype}), file=out,
                      flush=True)
                continue
            wall, cpu = time.perf_counter(), time.process_time()
            run_epoch()
            print(json.dumps({"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}),
                  file=out, flush=True)


def _start(kind: str, data_dir: str, examples: int, recipe: str, overrides: dict, isa: str) -> subprocess.Popen:
    env = worker_env(TF_ENABLE_ONEDNN_OPTS=None, ONEDNN_MAX_CPU_ISA=None)
    if isa == "avx2":
        env["ONEDNN_MAX_CPU_ISA"] = "AVX2"
        if kind != "trainer":
            env["TF_ENABLE_ONEDNN_OPTS"] = "0"  # TensorFlow's own default on an AVX2-only CPU.
    if kind == "keras_fit_onednn":
        env["TF_ENABLE_ONEDNN_OPTS"] = "1"
    args = [sys.executable, "-m", "benchmarks.throughput", kind, data_dir, str(examples), recipe,
            json.dumps(overrides)]
    # The worker's stderr goes to a file, not a pipe nobody reads while it runs: its last line says why it died.
    errors = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(args, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, text=True)
    proc.errors = errors
    return proc


def _ask(proc: subprocess.Popen, line: str | None) -> dict:
    if line is not None:
        proc.stdin.write(line)
        proc.stdin.flush()
    answer = proc.stdout.readline()
    if not answer:
        code = proc.wait()
        proc.errors.seek(0)
        last = (proc.errors.read().strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"throughput worker {proc.args[3]} died (exit {code}): {last}")
    return json.loads(answer)


def measure(data_dir: str, examples: int = 12_800, rounds: int = 3, recipe: str = "fast",
            contenders: tuple[str, ...] = CONTENDERS, matmul_size: int = 2048, isa: str = "native",
            **overrides) -> dict:
    """Examples/s of each contender: `rounds` counted rounds after one warm-up round.

    Args:
      data_dir: the four MNIST files (real or synthetic).
      examples: training examples per epoch (a prefix of the training split).
      rounds: counted rounds; each runs one epoch of each contender.
      recipe: the recipe whose batch size, learning rate and precision all use.
      contenders: which of CONTENDERS to run; with 'trainer', each other contender gives a ratio.
      matmul_size: after each of its epochs the trainer's worker times a square matmul of this size at the
        model's compute precision; the trainer's GFLOP/s over that rate, round by round, is `matmul_fraction`.
      isa: 'native', or 'avx2' to run every contender as on an AVX2-only CPU (see the module's docstring).
      **overrides: TrainConfig fields that replace the recipe's.
    """
    if isa not in ISAS:
        raise ValueError(f"isa: expected one of {', '.join(ISAS)}, found {isa!r}")
    if isa == "avx2":
        overrides = {"precision": "float32", **overrides}  # What 'auto' resolves to without AVX512_BF16 or AMX.
    procs = {kind: _start(kind, data_dir, examples, recipe, overrides, isa) for kind in contenders}
    try:
        info = {kind: _ask(proc, None) for kind, proc in procs.items()}
        wall = {kind: [] for kind in procs}
        cpu = {kind: [] for kind in procs}
        matmul, matmul_cpu, matmul_dtype = [], [], None
        for r in range(rounds + 1):
            for kind, proc in procs.items():
                t = _ask(proc, "epoch\n")
                if r:
                    wall[kind].append(info[kind]["examples"] / t["wall"])
                    cpu[kind].append(info[kind]["examples"] / t["cpu"])
                if r and kind == "trainer":
                    m = _ask(proc, f"matmul {matmul_size}\n")
                    matmul.append(m["gflops"])
                    matmul_cpu.append(m["gflops_per_cpu_s"])
                    matmul_dtype = m["dtype"]
    finally:
        for proc in procs.values():
            proc.stdin.close()
            proc.wait(timeout=60)
            proc.errors.close()
    result = {"recipe": recipe, "overrides": overrides, "rounds": rounds, "isa": isa, "contenders": info}
    for kind in procs:
        result[kind] = {"examples_per_s": summary(wall[kind]), "examples_per_cpu_s": summary(cpu[kind])}
    if matmul:
        flops = info["trainer"]["flops_per_example"]
        gflops = [e * flops / 1e9 for e in wall["trainer"]]
        gflops_cpu = [e * flops / 1e9 for e in cpu["trainer"]]
        result["trainer_gflops"] = summary(gflops)
        result["trainer_gflops_per_cpu_s"] = summary(gflops_cpu)
        result["matmul"] = {"size": matmul_size, "dtype": matmul_dtype, "gflops": summary(matmul),
                            "gflops_per_cpu_s": summary(matmul_cpu)}
        result["matmul_fraction"] = summary([g / m for g, m in zip(gflops, matmul)])
        # Per CPU-second both sides are steadier on a shared machine: a stolen slice costs wall time, not CPU.
        result["matmul_fraction_per_cpu_s"] = summary([g / m for g, m in zip(gflops_cpu, matmul_cpu)])
    for kind in procs:
        if kind != "trainer" and "trainer" in procs:
            result[f"ratio_vs_{kind}"] = summary([a / b for a, b in zip(wall["trainer"], wall[kind])])
            result[f"cpu_ratio_vs_{kind}"] = summary([a / b for a, b in zip(cpu["trainer"], cpu[kind])])
    return result


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], json.loads(sys.argv[5]))
