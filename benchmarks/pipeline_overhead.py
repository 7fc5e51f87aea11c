"""Section 3: the whole local pipeline (kfp.local, a subprocess per step) against the same steps in one process.

Both sides run download, validate, train, evaluate, the gate and export with
the same arguments, the one-process side by calling the library functions
that the components call. Each side is timed end to end, in seconds and in
the CPU-seconds of every process it ran (kfp.local's step processes included).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

from benchmarks.common import Timer, summary, worker_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_IN_PROCESS = r"""
import json, os, sys
from mnistkit import tf_settings
tf_settings.apply()  # As each of the pipeline's steps does.
from mnistkit import evaluation, exporting, fetch, training, validation
root, source, args = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
data = os.path.join(root, "data"); model = os.path.join(root, "model")
verify = args["verify_checksums"]
fetch.download(fetch.DownloadConfig(data_dir=data, source=source, verify_checksums=verify))
validation.write_report(validation.validate(data, canonical=verify), markdown_path=os.path.join(root, "report.md"))
# As the train component reads them: 0 means the recipe's value.
training.train(training.TrainConfig.from_recipe(
    args["recipe"], data_dir=data, model_dir=model, batch_size=args.get("batch_size") or None,
    train_epochs=args.get("train_epochs") or None, stop_threshold=args.get("stop_threshold"),
    learning_rate=args.get("learning_rate") or None, max_train_examples=args.get("max_train_examples") or None))
accuracy = evaluation.evaluate(model, data)["accuracy"]
if accuracy >= args["min_accuracy"]:
    exporting.export(model, os.path.join(root, "saved_model"))
"""


def available() -> bool:
    """Whether the local pipeline runner exists in this checkout yet."""
    return os.path.exists(os.path.join(REPO, "pipelines", "run_local.py"))


def measure(source: str, arguments: dict, rounds: int = 1) -> dict:
    """Seconds of the whole local pipeline run and of its steps in one process, alternating.

    Args:
      source: the MNIST mirror both sides download from (a local directory).
      arguments: pipeline parameters (recipe, train_epochs, ...) both sides use.
      rounds: runs of each side.
    """
    if not available():
        return {"status": "not yet measured: pipelines/run_local.py does not exist in this checkout"}
    import json

    # Both sides get every training argument spelled out, starting from the
    # pipeline's own defaults, and train the recipe's epochs in full: with the
    # pipeline's stop threshold (99.0%) the epoch count itself is chance, since
    # the fast recipe's first epoch lands within a tenth of a point of it and
    # runs are not bitwise repeatable, so one side could train twice the other.
    import inspect

    from pipelines import pipeline

    defaults = {k: v.default for k, v in inspect.signature(pipeline.build().pipeline_func).parameters.items()}
    shared = ("recipe", "verify_checksums", "batch_size", "train_epochs", "stop_threshold", "learning_rate",
              "max_train_examples")
    arguments = {**{k: defaults[k] for k in shared}, "stop_threshold": 1.0, "min_accuracy": 0.0, **arguments}
    params = [f"--param={k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in arguments.items()]
    pipeline_s, process_s, pipeline_cpu, process_cpu = [], [], [], []
    env = worker_env()
    for _ in range(rounds):
        root = tempfile.mkdtemp(prefix="mnistkit-bench-pipeline-")
        try:
            with Timer() as whole:
                subprocess.run([sys.executable, os.path.join(REPO, "pipelines", "run_local.py"), "--source", source,
                                "--pipeline_root", os.path.join(root, "runs"), *params],
                               check=True, env=env, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            with Timer() as single:
                subprocess.run([sys.executable, "-c", _IN_PROCESS, os.path.join(root, "one"), source,
                                json.dumps(arguments)], check=True, env=env, cwd=root,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        pipeline_s.append(whole.wall)
        process_s.append(single.wall)
        pipeline_cpu.append(whole.children_cpu)
        process_cpu.append(single.children_cpu)
    return {"arguments": arguments, "rounds": rounds, "pipeline_s": summary(pipeline_s),
            "one_process_s": summary(process_s),
            "ratio": summary([a / b for a, b in zip(pipeline_s, process_s)]),
            "overhead_s": summary([a - b for a, b in zip(pipeline_s, process_s)]),
            "pipeline_cpu_s": summary(pipeline_cpu), "one_process_cpu_s": summary(process_cpu),
            "cpu_ratio": summary([a / b for a, b in zip(pipeline_cpu, process_cpu)]),
            "cpu_overhead_s": summary([a - b for a, b in zip(pipeline_cpu, process_cpu)])}
