"""`python pipelines/run_local.py`: run the whole mnist-training pipeline on this machine with kfp.local.

By default each step runs as a subprocess in the current Python environment
(kfp.local.SubprocessRunner); `--runner docker` runs each step in its image
through kfp.local.DockerRunner. Artifacts land under `--pipeline_root`; the
final metrics and the SavedModel's path are printed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import re
import signal
import sys
import time
import uuid
import warnings

from mnistkit import files, sources
from mnistkit.registry import resolve_project_and_location
from pipelines import parameters
from pipelines.pipeline import DEFAULT_SOURCE

RUNNERS = ("subprocess", "docker")
# Under --runner docker, every step's container carries this label, valued by run: how SIGTERM finds them.
CONTAINER_LABEL = "mnistkit.run_local"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# A step's own last word: a command's one-line error, or the last line of a Python traceback.
_ERROR_LINE = re.compile(r"^(mnist-[\w-]+: error: .*"
                         r"|(?:[A-Za-z_][\w.]*\.)?(?P<type>[A-Za-z_]\w*(?:Error|Exception|Exit|Failure)|Interrupted"
                         r"|Diverged)"
                         r"(?:: (?P<message>.*))?)$")


class StepLog:
    """Stands in for sys.stdout during a kfp.local run: passes everything on and keeps each step's last error line.

    Both of kfp.local's runners print a step's output (its stdout and stderr,
    or the container's log) line by line in this process, after logging
    "Executing task 'NAME'"; kfp's own error names only the failed task. This
    is where the step's reason can still be read, whichever runner ran it.
    """

    def __init__(self, stream):
        self._stream, self._pending, self._task = stream, "", None
        self._reader_gone = False
        self.errors: dict[str, str] = {}

    def write(self, text: str) -> int:
        self._forward(self._stream.write, text)
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._see(_ANSI.sub("", line).strip())
        return len(text)

    def _see(self, line: str) -> None:
        started = re.search(r"Executing task '([^']+)'", line)
        if started:
            if _STOPPING["sigterm"]:  # The step that got SIGTERM has ended: no next one.
                _stop()
            self._task = started.group(1)
            return
        # kfp's executor prefixes its log lines: '[KFP Executor 2026-... ERROR]: ...'.
        line = re.sub(r"^\[KFP Executor [^]]*\]: ", "", line)
        found = _ERROR_LINE.match(line)
        if self._task and found:
            self.errors[self._task] = (f"{found.group('type')}: {found.group('message')}"
                                       if found.group("type") and found.group("message") else line)

    def flush(self) -> None:
        self._forward(self._stream.flush)

    def _forward(self, call, *args) -> None:
        """Passes output on while someone reads it. When the reader went away (`| head`), the run goes on
        quietly: stdout then points at /dev/null, rather than kfp's logging failing in every step."""
        if self._reader_gone:
            return
        try:
            call(*args)
        except BrokenPipeError:
            self._reader_gone = True
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)

    def __getattr__(self, name):  # encoding, isatty, fileno...: the real stream's.
        return getattr(self._stream, name)

    def reason(self, error: Exception) -> str:
        """kfp's error about a failed run, as one line naming the failed step and that step's own error."""
        message = _ANSI.sub("", str(error))
        failed = re.search(r"Inner task failed: '([^']+)'", message)
        task = failed.group(1) if failed else None
        if task is None and self.errors:
            task = list(self.errors)[-1]
        if task is None:
            return message
        return f"step {task} failed: {self.errors.get(task, 'no error line in its output; see the log above')}"


@contextlib.contextmanager
def capture_step_errors():
    """Yields a StepLog that sys.stdout writes through while the block runs."""
    log = StepLog(sys.stdout)
    sys.stdout = log
    try:
        yield log
    finally:
        sys.stdout = log._stream


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run_local.py", description=__doc__.splitlines()[0])
    p.add_argument("--runner", default="subprocess", help=f"One of {', '.join(RUNNERS)} (default %(default)s).")
    p.add_argument("--source", default=DEFAULT_SOURCE,
                   help="MNIST mirror: gs://BUCKET/PREFIX, http(s):// base URL or a directory; several, separated "
                        "by commas, are tried in order (default %(default)s).")
    p.add_argument("--pipeline_root", default="local_runs", help="Where artifacts go (default ./%(default)s).")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="Override a pipeline parameter, e.g. --param train_epochs=1 (repeatable).")
    p.add_argument("--registry", help="Image registry for --runner docker (default $MNISTKIT_IMAGE_REGISTRY or "
                   "localhost; see components/images.py).")
    p.add_argument("--tag", help="Image tag for --runner docker (default $MNISTKIT_IMAGE_TAG or the mnistkit "
                   "version).")
    return p


def pipeline_parameters(registry: str | None = None, tag: str | None = None) -> dict[str, dict]:
    """The parameters of the CPU pipeline, as submit.py sees them in its compiled template.

    Raises:
      ValueError: a malformed image registry or tag.
    """
    from pipelines import pipeline

    return parameters.pipeline_parameters(pipeline.build(registry=registry, tag=tag))


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
    mnist_training = pipeline.build(registry=registry, tag=tag)
    parameters.check_values(arguments, parameters.pipeline_parameters(mnist_training))
    for source in sources.split_sources(arguments["source"]):
        sources.source_copier(source)  # A malformed source, or a local directory that is not there: refused now.
    if arguments.get("checkpoint_root"):  # Where the train step will look: a gs:// root needs /gcs, as on Vertex AI.
        files.check_dir_path(files.local_path(arguments["checkpoint_root"], "parameter checkpoint_root"),
                             "parameter checkpoint_root")
    if arguments.get("register"):
        # The Registry steps run last; where they would find no project or region, say so before training.
        try:
            resolve_project_and_location(arguments.get("project", ""), arguments.get("region", ""))
        except ValueError as e:
            raise ValueError(f"register=true: {e}") from None
    if runner == "docker":
        _check_docker_engine()
    files.check_dir_path(pipeline_root, "--pipeline_root")
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
    if runner == "docker":
        _STOPPING["run_label"] = uuid.uuid4().hex
    local.init(runner=local.SubprocessRunner(use_venv=False) if runner == "subprocess"
               else local.DockerRunner(user=f"{os.getuid()}:{os.getgid()}",
                                       labels={CONTAINER_LABEL: _STOPPING["run_label"]}),
               pipeline_root=pipeline_root)
    task = mnist_training(**arguments)
    verdict = task.outputs["verdict"]
    with open(verdict.path) as f:
        verdict_text = f.read().strip()
    # The gate always runs, so its output locates the run: <root>/<pipeline>-<time>/<task>/<output>.
    run_dir = os.path.dirname(os.path.dirname(verdict.path))
    found = sorted(glob.glob(os.path.join(run_dir, "export-model", "saved_model", "*", "saved_model.pb")))
    return {"metrics": dict(task.outputs["metrics"].metadata), "verdict": verdict_text, "run_dir": run_dir,
            "saved_model": os.path.dirname(found[-1]) if found else None}


def _check_docker_engine() -> None:
    """Raises RuntimeError in one line when no docker engine answers; kfp's DockerRunner would end in a traceback."""
    import docker

    where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    try:
        docker.from_env(timeout=10).ping()
    except docker.errors.DockerException as e:
        # The socket's own reason ('Connection refused', 'No such file or directory'), not urllib3's wrapping.
        found = re.search(r"\[Errno \d+\] ([^\"')]+)|Error\(\d+, '([^']+)'\)", str(e))
        cause = (found[1] or found[2]) if found else str(e)
        raise RuntimeError(f"--runner docker: expected a docker engine answering at {where} ($DOCKER_HOST), "
                           f"found none ({cause})") from None


def _step_processes() -> list[int]:
    """The pids of the step in progress: this process's descendants, less the shell kfp.local wraps it in.

    kfp.local's SubprocessRunner runs a step as `sh -c '... python3 -m kfp.dsl.executor_main ...'`; the step's
    own process is the shell's child. A shell given SIGTERM would die at once and leave its child running.
    """
    parents, names = {}, {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                name, rest = f.read().rsplit(")", 1)
        except (OSError, ValueError):  # Not a process, or it ended.
            continue
        state, ppid = rest.split()[:2]
        if state != "Z":
            parents[int(entry)], names[int(entry)] = int(ppid), name.partition("(")[2]
    found, frontier = [], [os.getpid()]
    while frontier:
        children = [pid for pid, ppid in parents.items() if ppid in frontier]
        found += children
        frontier = children
    steps = [pid for pid in found if names[pid] not in ("sh", "dash", "bash")]
    return steps or found


# Set by the SIGTERM handler: the run stops once the step in progress has ended.
# resumes: checkpoint_root given, which a rerun reads; run_label: this run's CONTAINER_LABEL (--runner docker);
# steps: the step processes SIGTERM was passed on to, which this process may have adopted.
_STOPPING = {"sigterm": False, "resumes": False, "run_label": "", "steps": []}
_STOPPED_LINE = "run_local.py: stopped by SIGTERM; the step in progress was told to save and stop: "


def _stop_steps_on_sigterm() -> None:
    """On SIGTERM, passes it on to the step in progress and stops the run when that step ends (exit 143).

    Python's default would end this process alone: the step it had started (training, say) ran on with no
    parent, and a rerun raced with it. A step given SIGTERM saves what it can (training: a checkpoint at the
    current step) and ends; kfp.local goes on reading its output meanwhile, and StepLog stops the run before
    the next step starts. With no step running, the run stops at once.
    """

    def handle(signum, frame):
        _STOPPING["sigterm"] = True
        steps = _step_processes()
        _STOPPING["steps"] += steps
        for pid in steps:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        if not steps and not (_STOPPING["run_label"] and _signal_step_containers(_STOPPING["run_label"])):
            print("run_local.py: stopped by SIGTERM; no step of this run was running", file=sys.stderr)
            raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handle)
    _adopt_orphaned_steps()


def _adopt_orphaned_steps() -> None:
    """Makes this process the parent of its orphaned descendants (Linux's PR_SET_CHILD_SUBREAPER).

    A SIGTERM to the whole process group (what `timeout` and many CI runners send) also reaches the `sh -c`
    wrapper kfp.local starts each step in. The wrapper dies at once; its step, saving a checkpoint, would be
    re-parented out of this process's reach, and the run would end at once, saying no step was running, while
    the step went on unseen. Elsewhere than Linux a signal to this process alone still works.
    """
    import ctypes

    pr_set_child_subreaper = 36  # From <linux/prctl.h>.
    with contextlib.suppress(OSError, AttributeError):  # No libc prctl: not Linux.
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_child_subreaper, 1, 0, 0, 0)


def _signal_step_containers(run_label: str) -> int:
    """Passes SIGTERM to the step in each running container of this run (--runner docker); returns how many.

    A container's first process is kfp's `sh -ec` wrapper, and the step is its child. As the container's init,
    that shell ignores SIGTERM (so `docker stop` would wait, then kill the step with nothing saved): the signal
    is sent from inside the container to every process there but the first.
    """
    import docker

    try:
        client = docker.from_env(timeout=10)
        running = client.containers.list(filters={"label": f"{CONTAINER_LABEL}={run_label}"})
    except docker.errors.DockerException:  # The engine went away: its containers went with it.
        return 0
    for container in running:
        with contextlib.suppress(docker.errors.DockerException):  # It ended meanwhile.
            container.exec_run(["sh", "-c", "kill -TERM -1"])
    return len(running)


def _reap_adopted_steps(seconds: float) -> None:
    """Waits up to `seconds` for the step processes SIGTERM was passed on to that this process adopted
    (_adopt_orphaned_steps: their wrapper died before them), and reaps them. Called once kfp.local has waited
    for the wrappers; a step that is not this process's child (its wrapper waited for it) is left alone."""
    deadline = time.monotonic() + seconds
    for pid in _STOPPING["steps"]:
        while True:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # Not a child of this process, or already reaped.
                break
            if done or time.monotonic() >= deadline:
                break
            time.sleep(0.05)  # Still saving.


def _stop() -> None:
    # Without checkpoint_root the checkpoints stay in this run's directory, and a rerun makes a new one.
    print(_STOPPED_LINE + ("rerun the same command to resume" if _STOPPING["resumes"] else
                           "a rerun starts over (its checkpoints are in this run's directory); give "
                           "--param checkpoint_root=DIR to runs that should resume"), file=sys.stderr)
    _reap_adopted_steps(seconds=60)
    raise SystemExit(128 + signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if any(item.partition("=")[0].strip() == "source" for item in args.param):
            raise ValueError("parameter source: give it as --source, not --param")
        params = pipeline_parameters(args.registry, args.tag)
        arguments = {"source": args.source, **parameters.parse_overrides(args.param, params)}
        _STOPPING["resumes"] = bool(arguments.get("checkpoint_root"))
        with capture_step_errors() as steps:
            try:
                result = run(args.pipeline_root, arguments, args.runner, args.registry, args.tag)
            except RuntimeError as e:
                raise RuntimeError(steps.reason(e)) from e
        # kfp names the evaluate step's HTML artifact `report`; a browser shows a file
        # without the .html suffix as text, so the page is copied next to the steps, whole or not at all.
        report = os.path.join(result["run_dir"], "report.html")
        with open(os.path.join(result["run_dir"], "evaluate-model", "report")) as page:
            files.atomic_write_text(report, page.read())
    except (ValueError, RuntimeError) as e:
        print(f"run_local.py: error: {e}", file=sys.stderr)
        if _STOPPING["sigterm"]:
            _stop()
        return 1
    except OSError as e:  # This machine's: a read-only or full pipeline root.
        from mnistkit.commands.cli import describe_os_error

        print(f"run_local.py: error: {describe_os_error(e)}", file=sys.stderr)
        return 1
    metrics = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) and k != "examples" else f"{k} {v:g}"
                        for k, v in sorted(result["metrics"].items()))
    print(f"\nrun: {result['run_dir']}\nmetrics: {metrics}\ngate: {result['verdict']}")
    print(f"SavedModel: {result['saved_model']}" if result["saved_model"] else "SavedModel: none (not exported)")
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    _stop_steps_on_sigterm()
    sys.exit(main())
