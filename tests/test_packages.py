"""`pipelines` and `components` are installed packages: their commands run by path or with -m, from anywhere.

No file edits sys.path. `make venv` installs the checkout (`pip install -e .`),
so `python pipelines/compile.py` finds the package `pipelines` although the
script's own folder is first on sys.path. Cloud Build runs the same commands
in the CPU image, which installs mnistkit only, with the checkout on
PYTHONPATH.
"""

import ast
import glob
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from pipelines import compile as compile_module
from pipelines import hardware, parameters, run_local
from tests.conftest import REPO
from tests.test_cloudbuild import commands
from tests.test_images import _docker, cpu_image  # noqa: F401  (a fixture)


def _sys_path_uses(path: str) -> list[int]:
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    return [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Attribute) and node.attr == "path"
            and isinstance(node.value, ast.Name) and node.value.id == "sys"]


def test_no_file_of_the_packages_or_the_image_script_touches_sys_path():
    paths = glob.glob(os.path.join(REPO, "pipelines", "*.py")) + glob.glob(os.path.join(REPO, "components", "*.py")) \
        + glob.glob(os.path.join(REPO, "images", "*.py"))
    assert len(paths) >= 10
    found = {os.path.relpath(p, REPO): lines for p in paths if (lines := _sys_path_uses(p))}
    assert found == {}


def _python(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("how", ["path", "module"])
def test_compile_runs_by_path_and_as_a_module_from_outside_the_checkout(tmp_path, how):
    """The installed package, not the working directory, makes `pipelines` and `components` importable."""
    output = tmp_path / "mnist_pipeline.yaml"
    command = [os.path.join(REPO, "pipelines", "compile.py")] if how == "path" else ["-m", "pipelines.compile"]
    result = _python(*command, "--output", str(output), "--hardware", "gpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"wrote {output} (training on gpu")
    spec = yaml.safe_load(output.read_text())
    assert spec["pipelineInfo"]["name"] == "mnist-training"
    assert "localhost/mnistkit-gpu:" in output.read_text()


# images/ is a folder of scripts, not a package: its script runs by path only.
@pytest.mark.parametrize("script,how", [("pipelines/run_local.py", "path"), ("pipelines/run_local.py", "module"),
                                        ("pipelines/submit.py", "path"), ("pipelines/submit.py", "module"),
                                        ("images/build.py", "path")])
def test_every_command_starts_by_path_and_as_a_module_from_outside_the_checkout(tmp_path, script, how):
    command = [os.path.join(REPO, script)] if how == "path" else ["-m", script[:-3].replace("/", ".")]
    result = _python(*command, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {os.path.basename(script)}")


def test_run_local_reads_the_parameters_from_the_pipeline_as_the_compiled_template_has_them(tmp_path):
    """run_local.py checks overrides without compiling; what it sees is what submit.py reads from the YAML."""
    template = compile_module.compile_pipeline(str(tmp_path / "p.yaml"), hardware.Hardware())
    in_memory = run_local.pipeline_parameters()
    assert in_memory == parameters.template_parameters(template)
    assert in_memory["batch_size"]["parameterType"] == "NUMBER_INTEGER"
    assert in_memory["source"]["parameterType"] == "STRING"


def test_run_local_refuses_a_bad_image_tag_in_one_line(capsys):
    code = run_local.main(["--source", "/nowhere", "--tag", "bad/tag", "--pipeline_root", "/nonexistent/root"])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["run_local.py: error: image tag: expected 1-128 of [A-Za-z0-9_.-] not starting with '.' or '-', "
                   "found 'bad/tag'"]


def test_a_bad_image_variable_is_named_and_does_not_stop_submit_or_an_explicit_tag(tmp_path, capsys, monkeypatch):
    """Importing the pipeline built it with $MNISTKIT_IMAGE_TAG: submit.py, run_local.py and compile.py ended in a
    traceback on a bad value, even with --tag given."""
    monkeypatch.setenv("MNISTKIT_IMAGE_TAG", "bad tag")
    output = tmp_path / "p.yaml"
    code = subprocess.run([sys.executable, "pipelines/compile.py", "--output", str(output), "--tag", "ok"], cwd=REPO,
                          env={**os.environ}, capture_output=True, text=True, timeout=300)
    assert code.returncode == 0, code.stderr[-2000:]
    assert "mnistkit-cpu:ok" in output.read_text()
    assert run_local.main(["--source", "/nowhere", "--pipeline_root", str(tmp_path / "root")]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "run_local.py: error: $MNISTKIT_IMAGE_TAG: expected 1-128 of [A-Za-z0-9_.-] not starting with '.' or '-', "
        "found 'bad tag'"]


def _cloud_build_steps() -> tuple[dict, dict[str, dict]]:
    with open(os.path.join(REPO, "cloudbuild.yaml")) as f:
        build = yaml.safe_load(f)
    return build, {step["id"]: step for step in build["steps"]}


def test_cloud_build_steps_that_run_the_checkouts_python_put_it_on_pythonpath():
    """The images install mnistkit only (their Dockerfiles COPY no pipelines/ or components/)."""
    for dockerfile in glob.glob(os.path.join(REPO, "images", "*", "Dockerfile")):
        with open(dockerfile) as f:
            copied = [line.split()[1:] for line in f if line.startswith("COPY ")]
        assert not any(p.startswith(("pipelines", "components")) for args in copied for p in args), dockerfile
    build, steps = _cloud_build_steps()
    running = [step for step in steps.values()
               if any(line[:1] == ["python"] and line[1:2] != ["-c"] for line in commands(step, build, mode=""))]
    assert {step["id"] for step in running} == {"test", "compile", "upload"}
    for step in running:
        assert "PYTHONPATH=/workspace" in step.get("env", []), step["id"]


@pytest.mark.docker
def test_cloud_build_compile_step_runs_in_the_cpu_image_as_written(cpu_image, tmp_path):  # noqa: F811
    """The compile step's own command and env, in the CPU image, on a copy of the checkout's packages at /workspace.

    Cloud Build's working directory is /workspace; the step's image is this commit's CPU image.
    """
    build, steps = _cloud_build_steps()
    step = steps["compile"]
    workspace = tmp_path / "workspace"
    for package in ("pipelines", "components"):
        shutil.copytree(os.path.join(REPO, package), workspace / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    (workspace / "out").mkdir()
    os.chmod(workspace / "out", 0o777)  # The image's user (uid 1000) writes there, as on Cloud Build.
    (line,) = commands(step, build)
    env = [arg for pair in step.get("env", []) for arg in ("-e", pair)]
    result = _docker("run", "--rm", "-v", f"{workspace}:/workspace", "-w", "/workspace", *env, cpu_image, *line,
                     check=False, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    template = (workspace / "out" / "mnist_pipeline.yaml").read_text()
    assert yaml.safe_load(template)["pipelineInfo"]["name"] == "mnist-training"
    assert "us-central1-docker.pkg.dev/my-project/mnistkit/mnistkit-cpu:abc1234" in template
