"""Shared helpers of the benchmark sections: timing, summaries, machine description."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Timer:
    """Wall and CPU seconds of a block; CPU seconds are steadier on a shared machine.

    `cpu` is this process's own (all its threads); `children_cpu` is that of
    the child processes the block waited for, with the descendants those
    waited for (kfp.local's step processes, for one).
    """

    def __enter__(self):
        self._wall, self._cpu, self._children = time.perf_counter(), time.process_time(), _children_cpu()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu
        self.children_cpu = _children_cpu() - self._children
        return False


def worker_env(**overrides) -> dict:
    """The environment of a measuring worker: this one's, with the repo importable, without what would carry
    another run's state into it (Vertex AI's checkpoint and TensorBoard directories: a second run resumed the
    first one's finished checkpoints and trained nothing), and with `overrides` (None removes a variable)."""
    env = dict(os.environ)
    for name in ("AIP_CHECKPOINT_DIR", "AIP_TENSORBOARD_LOG_DIR"):
        env.pop(name, None)
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH")]))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def summary(values: list[float]) -> dict:
    """Median, min, max and count of `values` (floats, rounded for the report)."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values),
            "values": list(values)}


def machine() -> dict:
    """What ran the figures: CPU model, cores, SIMD flags that matter, load when measured."""
    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("unknown", "", platform.machine()):
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return {"cpu": model, "cores": os.cpu_count(), "simd": simd, "python": platform.python_version(),
            "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
