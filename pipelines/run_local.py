"""`python pipelines/run_local.py`: run the whole mnist-training pipeline on this machine with kfp.local.

By default each step runs as a subprocess in the current Python environment
(kfp.local.SubprocessRunner); `--runner docker` runs each step in its image
through kfp.local.DockerRunner. Artifacts land under `--pipeline_root`; the
final metrics and the SavedModel's path are printed at the end.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import tempfile
import warnings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from pipelines import parameters  # noqa: E402
from pipelines.pipeline import DEFAULT_SOURCE  # noqa: E402

RUNNERS = ("subprocess", "docker")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run_local.py", description=__doc__.splitlines()[0])
    p.add_argument("--runner", default="subprocess", help=f"One of {', '.join(RUNNERS)} (default %(default)s).")
    p.add_argument("--source", default=DEFAULT_SOURCE,
                   help="MNIST mirror: gs://BUCKET/PREFIX, http(s):// base URL or a directory (default %(default)s).")
    p.add_argument("--pipeline_root", default="local_runs", help="Where artifacts go (default ./%(default)s).")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="Override a pipeline parameter, e.g. --param train_epochs=1 (repeatable).")
    p.add_argument("--registry", help="Image registry for --runner docker (see components/images.py).")
    p.add_argument("--tag", help="Image tag for --runner docker (default: the mnistkit version).")
    return p


def pipeline_parameters(registry: str | None = None, tag: str | None = None) -> dict[str, dict]:
    """The parameters of the compiled CPU pipeline, as submit.py sees them in a template."""
    from pipelines import compile as compile_module
    from pipelines import hardware

    with tempfile.TemporaryDirectory() as tmp:
        path = compile_module.compile_pipeline(os.path.join(tmp, "pipeline.yaml"), hardware.Hardware(), registry, tag)
        return parameters.template_parameters(path)


def run(pipeline_root: str, arguments: dict, runner: str = "subprocess", registry: str | None = None,
        tag: str | None = None) -> dict:
    """Runs the CPU pipeline through kfp.local with checked `arguments`.

    Returns:
      metrics (the evaluation's), verdict (the gate's sentence), run_dir, and
      saved_model: the SavedModel directory, or None when the gate refused.

    Raises:
      ValueError: an unknown runner or a bad argument.
      RuntimeError: a step failed (kfp.local names it).
    """
    from kfp import local

    from pipelines import pipeline

    if runner not in RUNNERS:
        raise ValueError(f"--runner: expected one of {', '.join(RUNNERS)}, found {runner!r}")
    parameters.check_values(arguments, pipeline_parameters(registry, tag))
    pipeline_root = os.path.abspath(pipeline_root)
    os.makedirs(pipeline_root, exist_ok=True)
    # install_kfp_package=False in every component, so nothing is pip-installed;
    # use_venv=False runs the steps with this interpreter and its packages.
    # The images hold this same package, so running their steps in this
    # environment is what is meant; kfp's warning about it is noise here.
    warnings.filterwarnings("ignore", message="You may be attemping to run a task that uses custom",
                            category=RuntimeWarning)
    # The images run as a non-root user that cannot write into a pipeline root
    # this user created; running the containers as this user can, and leaves
    # the artifacts owned by them.
    local.init(runner=local.SubprocessRunner(use_venv=False) if runner == "subprocess"
               else local.DockerRunner(user=f"{os.getuid()}:{os.getgid()}"),
               pipeline_root=pipeline_root)
    task = pipeline.build(registry=registry, tag=tag)(**arguments)
    verdict = task.outputs["verdict"]
    with open(verdict.path) as f:
        verdict_text = f.read().strip()
    # The gate always runs, so its output locates the run: <root>/<pipeline>-<time>/<task>/<output>.
    run_dir = os.path.dirname(os.path.dirname(verdict.path))
    found = sorted(glob.glob(os.path.join(run_dir, "export-model", "saved_model", "*", "saved_model.pb")))
    return {"metrics": dict(task.outputs["metrics"].metadata), "verdict": verdict_text, "run_dir": run_dir,
            "saved_model": os.path.dirname(found[-1]) if found else None}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if any(item.partition("=")[0].strip() == "source" for item in args.param):
            raise ValueError("parameter source: give it as --source, not --param")
        params = pipeline_parameters(args.registry, args.tag)
        arguments = {"source": args.source, **parameters.parse_overrides(args.param, params)}
        result = run(args.pipeline_root, arguments, args.runner, args.registry, args.tag)
    except (ValueError, RuntimeError) as e:
        print(f"run_local.py: error: {e}", file=sys.stderr)
        return 1
    metrics = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) and k != "examples" else f"{k} {v:g}"
                        for k, v in sorted(result["metrics"].items()))
    print(f"\nrun: {result['run_dir']}\nmetrics: {metrics}\ngate: {result['verdict']}")
    print(f"SavedModel: {result['saved_model']}" if result["saved_model"] else "SavedModel: none (not exported)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
