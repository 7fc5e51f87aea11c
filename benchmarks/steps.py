"""Section 6: each step of the pipeline run on its own, with its wall time, CPU time and peak memory.

The steps run one after the other as child processes, in the pipeline's
order, each doing the work its component does: download, validate (with its
report), train, evaluate (with the HTML report the pipeline keeps), the
export gate, export. They run as the project's commands, so kfp's executor,
which wraps each step in the pipeline (its import and its output files), is
not counted. Peak memory is the step's maximum resident set size as the
kernel reports it to `wait4` (what `/usr/bin/time -v` prints), so it includes
the Python interpreter and, for train, evaluate and export, TensorFlow itself
(about 300-400 MB of it before any data).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

from benchmarks.common import summary, worker_env

STEPS = ("download", "validate", "train", "evaluate", "gate", "export")
# The export gate has no command of its own; this is the work of its component (components/model.py).
_GATE = ("from mnistkit import gates; import sys; "
         "print(gates.export_verdict(float(sys.argv[1]), float(sys.argv[2]))[1])")


# Linux copies the RSS high-water mark of a process into its rusage when it calls exec, so a child forked
# from this process (hundreds of MB with TensorFlow loaded) would report at least this process's size. The
# command is therefore forked from a small launcher, as /usr/bin/time does, which reports the rusage.
_LAUNCHER = r"""
import json, os, sys
pid = os.fork()
if pid == 0:
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(json.dumps({"exit": os.waitstatus_to_exitcode(status), "cpu_s": usage.ru_utime + usage.ru_stime,
                  "maxrss_kb": usage.ru_maxrss}))
"""


def run_measured(args: list[str], env: dict | None = None) -> dict:
    """Runs `args` to completion; returns wall seconds, CPU seconds and peak resident MB of that command.

    Raises:
      RuntimeError: the command failed; the message holds its last stderr line.
    """
    import json

    start = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        # -S: no site imports, so the launcher itself stays a few MB.
        proc = subprocess.run([sys.executable, "-S", "-c", _LAUNCHER, *args], env=env, stdout=subprocess.PIPE,
                              stderr=err, text=True)
        wall = time.perf_counter() - start
        lines = proc.stdout.strip().splitlines()
        report = json.loads(lines[-1]) if proc.returncode == 0 and lines else {"exit": proc.returncode}
        if report["exit"]:
            err.seek(0)
            said = err.read().decode(errors="replace").strip().splitlines() or ["(no output)"]
            raise RuntimeError(f"{' '.join(args[:3])}: exit {report['exit']}: {said[-1]}")
    # Linux reports ru_maxrss in KiB.
    return {"wall_s": wall, "cpu_s": report["cpu_s"], "peak_mb": report["maxrss_kb"] / 1024}


def measure(data_dir: str, rounds: int = 1, train_args: tuple[str, ...] = ("--train_epochs=1",)) -> dict:
    """Wall and CPU seconds and peak resident MB of each command, `rounds` times over.

    Args:
      data_dir: the MNIST mirror mnist-download copies from (a local directory).
      rounds: how many times the steps run, in order.
      train_args: extra flags of mnist-train (default: one epoch of the default recipe).
    """
    from benchmarks.download import _is_real_mnist

    # Synthetic data (--quick) has neither MNIST's checksums nor its sizes.
    checks = [] if _is_real_mnist(data_dir) else ["--noverify_checksums"]
    env = worker_env()
    runs = {step: [] for step in STEPS}
    for _ in range(rounds):
        root = tempfile.mkdtemp(prefix="mnistkit-bench-steps-")
        data, model = os.path.join(root, "data"), os.path.join(root, "model")
        commands = {
            "download": ["--data_dir", data, "--source", data_dir, *checks],
            "validate": ["--data_dir", data, "--report_dir", os.path.join(root, "report"),
                         *(["--nocanonical"] if checks else [])],
            "train": ["--data_dir", data, "--model_dir", model, *train_args],
            "evaluate": ["--model_dir", model, "--data_dir", data, "--report_dir", os.path.join(root, "evaluation")],
            "export": ["--model_dir", model, "--export_dir", os.path.join(root, "export")],
        }
        try:
            for step in STEPS:
                if step == "gate":  # Its inputs are two numbers; what they are does not change its cost.
                    args = [sys.executable, "-c", _GATE, "0.99", "0.98"]
                else:
                    args = [sys.executable, "-m", f"mnistkit.commands.{step}", *commands[step]]
                runs[step].append(run_measured(args, env))
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return {"train_args": list(train_args), "rounds": rounds, "real_mnist": not checks,
            **{step: {k: summary([r[k] for r in runs[step]]) for k in ("wall_s", "cpu_s", "peak_mb")}
               for step in STEPS}}
