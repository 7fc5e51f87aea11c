"""Container tier: the images' Dockerfiles, and the CPU image built and run with a real docker engine.

The engine tests (marked `docker`) need DOCKER_HOST pointing at a running
engine and, where no registry is reachable, MNISTKIT_BASE_IMAGE naming a local
base: `eval "$(.ci/docker.sh up)"` provides both, as .ci/run does. With CI=true
a missing engine fails them; elsewhere they skip and say why. The image is
built once per session through images/build.py, so it carries the names the
compiled pipeline uses; docker's layer cache makes later builds take seconds.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from components import images
from images import build
from mnistkit import idx
from tests import synthetic
from tests.conftest import REPO, serve_directory

KINDS = ("cpu", "gpu", "tpu")
IN_CI = os.environ.get("CI", "").lower() == "true"


def dockerfile(kind: str) -> str:
    with open(os.path.join(REPO, build.dockerfile(kind))) as f:
        return f.read()


def instructions(text: str) -> list[tuple[str, str]]:
    """A Dockerfile's (INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in joined.splitlines() if line.strip()]


def build_args(text: str) -> dict[str, str]:
    return dict(arg.split("=", 1) if "=" in arg else (arg, "") for op, arg in instructions(text) if op == "ARG")


def lock_pins() -> dict[str, str]:
    pins = {}
    with open(os.path.join(REPO, "requirements.lock")) as f:
        for line in f:
            name, sep, version = line.strip().partition("==")
            if sep and not line.startswith("#"):
                pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def requirement_names(kind: str) -> set[str]:
    """The distributions that the kind's Dockerfile asks images/requirements.py for."""
    run = next(arg for op, arg in instructions(dockerfile(kind)) if op == "RUN" and "requirements.py" in arg)
    argv = re.search(r"python3 requirements\.py ([^>]*)>", run).group(1).split()
    out = subprocess.run([sys.executable, os.path.join(REPO, "images", "requirements.py"), *argv],
                         cwd=REPO, check=True, capture_output=True, text=True).stdout
    return {re.sub(r"[-_.]+", "-", re.split(r"[\s<>=!~;\[]", line, maxsplit=1)[0]).lower()
            for line in out.splitlines() if line}


# --- The Dockerfiles, checked without an engine (the GPU and TPU images cannot be built or run here). ---


@pytest.mark.parametrize("kind", KINDS)
def test_dockerfile_builds_on_a_pinned_base_given_by_build_argument(kind):
    text = dockerfile(kind)
    ops = instructions(text)
    assert ops[0][0] == "ARG" and ops[0][1].startswith("BASE_IMAGE="), "BASE_IMAGE must come before FROM"
    assert ops[1] == ("FROM", "${BASE_IMAGE}")
    # A patch-level Python on a named Debian release, the same for every image.
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", build_args(text)["BASE_IMAGE"])
    assert build_args(text)["BASE_IMAGE"] == build_args(dockerfile("cpu"))["BASE_IMAGE"]


@pytest.mark.parametrize("kind", KINDS)
def test_dockerfile_installs_locked_dependencies_before_the_source_then_the_package(kind):
    ops = instructions(dockerfile(kind))
    runs = [i for i, (op, _) in enumerate(ops) if op == "RUN"]
    copy_source = next(i for i, (op, arg) in enumerate(ops) if op == "COPY" and arg.split()[0] == "mnistkit")
    deps = next(i for i in runs if "requirements.py" in ops[i][1])
    assert deps < copy_source, "dependencies must be installed before the source is copied (layer cache)"
    assert re.search(r"pip install .*-c (requirements\.lock|constraints\.txt) -r requirements\.txt", ops[deps][1])
    package = next(i for i in runs if "--no-deps ." in ops[i][1])
    assert package > copy_source and "pip check" in ops[package][1] and "-e " not in ops[package][1]
    # A venv on PATH, so `python3 -m kfp.dsl.executor_main` and the mnist-* commands are the installed ones.
    assert any(op == "RUN" and 'python3 -m venv "$VIRTUAL_ENV"' in arg for op, arg in ops)
    env = " ".join(arg for op, arg in ops if op == "ENV")
    assert "VIRTUAL_ENV=/opt/venv" in env and "PATH=/opt/venv/bin:$PATH" in env


@pytest.mark.parametrize("kind", KINDS)
def test_dockerfile_runs_as_a_non_root_user_and_bakes_no_credentials(kind):
    text = dockerfile(kind)
    ops = instructions(text)
    users = [arg.strip() for op, arg in ops if op == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0")
    secret = re.compile(r"TOKEN|PASSWORD|SECRET|CREDENTIAL|API_KEY|PRIVATE_KEY", re.IGNORECASE)
    for op, arg in ops:
        if op in ("ENV", "ARG"):
            assert not secret.search(arg), f"{kind}: {op} {arg}"
        if op in ("COPY", "ADD"):
            assert not re.search(r"\.json|\.pem|\.key|\.netrc|gcloud", arg), f"{kind}: {op} {arg}"
    # The proxy CA path is a build argument, never part of the image's environment.
    assert not any(op == "ENV" and "PIP_CERT" in arg for op, arg in ops)


@pytest.mark.parametrize("kind", KINDS)
def test_every_image_gets_the_same_package_and_step_dependencies(kind):
    """GPU and TPU images differ from the CPU one only in which TensorFlow they carry."""
    tensorflow = {"tensorflow-cpu", "tensorboard"}
    assert requirement_names(kind) - tensorflow == requirement_names("cpu") - tensorflow
    assert {"kfp", "absl-py", "google-cloud-storage", "google-cloud-aiplatform"} <= requirement_names(kind)
    package_steps = [(op, arg) for op, arg in instructions(dockerfile(kind))
                     if (op == "COPY" and arg.split()[0] in ("mnistkit", "pyproject.toml")) or "--no-deps ." in arg]
    cpu_steps = [(op, arg) for op, arg in instructions(dockerfile("cpu"))
                 if (op == "COPY" and arg.split()[0] in ("mnistkit", "pyproject.toml")) or "--no-deps ." in arg]
    assert package_steps == cpu_steps


def test_gpu_image_pins_cuda_tensorflow_of_the_locked_version():
    text = dockerfile("gpu")
    assert build_args(text)["TF_VERSION"] == lock_pins()["tensorflow-cpu"]
    assert 'tensorflow[and-cuda]==${TF_VERSION}' in text
    assert "tensorflow-cpu" not in requirement_names("gpu")


def test_tpu_image_pins_tensorflow_tpu_libtpu_and_a_matching_tensorboard():
    text = dockerfile("tpu")
    args = build_args(text)
    tpu, libtpu = args["TF_TPU_VERSION"], args["LIBTPU_VERSION"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", tpu) and re.fullmatch(r"\d+\.\d+\.\d+(\.\d+)?", libtpu)
    assert "tensorflow-tpu==${TF_TPU_VERSION}" in text and "libtpu==${LIBTPU_VERSION}" in text
    # The TPU build may lag the locked TensorFlow, never lead it; tensorboard must follow the TPU build.
    locked = tuple(int(x) for x in lock_pins()["tensorflow-cpu"].split(".")[:2])
    major_minor = tuple(int(x) for x in tpu.split(".")[:2])
    assert major_minor <= locked
    assert f"tensorboard~={major_minor[0]}.{major_minor[1]}.0" in text
    assert not {"tensorflow-cpu", "tensorboard"} & requirement_names("tpu")


def test_build_context_holds_what_the_dockerfiles_copy():
    with open(os.path.join(REPO, ".dockerignore")) as f:
        ignored = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    assert {".git", ".venv"} <= set(ignored)
    for kind in (*KINDS, "test"):
        for op, arg in instructions(dockerfile(kind)):
            if op != "COPY":
                continue
            for source in arg.split()[:-1]:
                assert os.path.exists(os.path.join(REPO, source)), f"{kind}: COPY {source}: no such file"
                assert not any(re.fullmatch(pattern.replace(".", r"\.").replace("*", ".*"), source)
                               for pattern in ignored), f"{kind}: COPY {source} is excluded by .dockerignore"


def test_build_script_tags_the_images_the_compiled_pipeline_names(tmp_path):
    """images/build.py and pipelines/compile.py name images through components/images.py alike."""
    import yaml

    from pipelines import compile as compile_module
    from pipelines import hardware

    for hw, kind in ((hardware.Hardware(), "cpu"), (hardware.resolve("tpu", None, None, None, None, None), "tpu")):
        path = compile_module.compile_pipeline(str(tmp_path / f"{kind}.yaml"), hw, "europe-west4-docker.pkg.dev/p/r",
                                               "abc1234")
        with open(path) as f:
            text = f.read()
        named = set(re.findall(r"europe-west4-docker\.pkg\.dev/p/r/mnistkit-\w+:abc1234", text))
        built = {build.build_command(k, images.image_uri(k, "europe-west4-docker.pkg.dev/p/r", "abc1234"))[5]
                 for k in ("cpu", kind)}
        assert named == built, f"{kind} pipeline names {named}, the build script tags {built}"
        assert yaml.safe_load(text)["deploymentSpec"]


def test_requirements_script_refuses_an_undeclared_extra():
    result = subprocess.run([sys.executable, "images/requirements.py", "tf", "gpu-extras"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip() == ("requirements.py: error: setup.cfg: extra 'gpu-extras' is not declared; "
                                     "expected one of tf, pipeline, test")
    assert result.stdout == ""


# --- The CPU image with a real engine. ---


def _docker(*args, check=True, timeout=600, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        pytest.fail(f"docker {' '.join(args)} exited {result.returncode}:\n{result.stdout[-3000:]}"
                    f"\n{result.stderr[-3000:]}")
    return result


def _require_engine() -> None:
    if shutil.which("docker") is None:
        reason = "no docker CLI on PATH"
    else:
        probe = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True,
                               text=True, timeout=30)
        reason = None if probe.returncode == 0 else (
            f"no docker engine answers (DOCKER_HOST={os.environ.get('DOCKER_HOST', 'unset')}): "
            f"{probe.stderr.strip()[-300:]}")
    if reason:
        hint = f"{reason}; start one with: eval \"$(.ci/docker.sh up)\""
        if IN_CI:
            pytest.fail(hint)
        pytest.skip(hint)


@pytest.fixture(scope="session")
def cpu_image() -> str:
    """The CPU image, built through images/build.py with the pipeline's own URI; returns that URI."""
    _require_engine()
    uri = images.image_uri("cpu")
    command = build.build_command("cpu", uri, os.environ.get("MNISTKIT_BASE_IMAGE", ""),
                                  os.environ.get("MNISTKIT_PIP_CERT", ""))
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=840)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(command)} exited {result.returncode}:\n{result.stdout[-4000:]}\n"
                    f"{result.stderr[-2000:]}")
    return uri


def _world_writable(path) -> str:
    """A host directory the image's user (uid 1000) may write, like the GCS mount on Vertex AI."""
    os.makedirs(path, exist_ok=True)
    os.chmod(path, 0o777)
    return str(path)


@pytest.mark.docker
def test_each_step_runs_as_a_docker_command_and_the_export_classifies(cpu_image, tmp_path):
    mirror = synthetic.write_dataset(tmp_path / "mirror")
    work = _world_writable(tmp_path / "work")

    def step(*command: str) -> str:
        # --network host: the container reaches the test's HTTP mirror on 127.0.0.1.
        return _docker("run", "--rm", "--network", "host", "-v", f"{work}:/work", cpu_image, *command).stdout

    with serve_directory(mirror) as url:
        step("mnist-download", "--data_dir", "/work/data", "--source", url, "--noverify_checksums")
    assert sorted(os.listdir(os.path.join(work, "data"))) == sorted(f for s in idx.SPLITS for f in (s.images, s.labels))

    step("mnist-validate", "--data_dir", "/work/data", "--report_dir", "/work/report", "--nocanonical")
    with open(os.path.join(work, "report", "report.json")) as f:
        report = json.load(f)
    assert report["splits"]["train"]["examples"] == 600 and report["splits"]["test"]["examples"] == 200

    step("mnist-train", "--data_dir", "/work/data", "--model_dir", "/work/model", "--train_epochs", "1",
         "--max_train_examples", "300", "--batch_size", "32")
    assert os.path.exists(os.path.join(work, "model", "model.keras"))

    step("mnist-evaluate", "--model_dir", "/work/model", "--data_dir", "/work/data", "--output", "/work/eval.json")
    with open(os.path.join(work, "eval.json")) as f:
        metrics = json.load(f)
    assert metrics["examples"] == 200 and metrics["accuracy"] > 0.5  # Chance is 0.1.

    exported = step("mnist-export", "--model_dir", "/work/model", "--export_dir", "/work/export").strip()
    container_path = exported.splitlines()[-1]
    assert re.fullmatch(r"/work/export/\d+", container_path)
    host_path = os.path.join(work, os.path.relpath(container_path, "/work"))

    import tensorflow as tf

    images_, labels = synthetic.digits(50, seed=1)  # Drawn like the test split.
    classify = tf.saved_model.load(host_path).signatures["classify"]
    out = classify(image=tf.constant(images_.astype(np.float32) / 255.0))
    assert out["classes"].dtype == tf.int64 and out["classes"].shape == (50,)
    assert np.allclose(out["probabilities"].numpy().sum(axis=1), 1.0, atol=1e-4)
    assert (out["classes"].numpy() == labels).mean() > 0.5


@pytest.mark.docker
def test_the_image_runs_as_a_non_root_user_and_as_any_uid_given(cpu_image, tmp_path):
    assert _docker("image", "inspect", "--format", "{{.Config.User}}", cpu_image).stdout.strip() == "mnistkit"
    assert _docker("run", "--rm", cpu_image, "id", "-u").stdout.strip() != "0"
    # `--user UID:GID` (the README's form on Linux, so outputs belong to the caller): a uid with no
    # account and no home directory must still run a step, and own what it writes.
    data = synthetic.write_dataset(tmp_path / "data", n_train=20, n_test=10)  # World-readable, unlike tmp_path.
    reports = _world_writable(tmp_path / "reports")
    _docker("run", "--rm", "--user", "4321:4321", "-v", f"{data}:/data:ro", "-v", f"{reports}:/reports",
            cpu_image, "mnist-validate", "--data_dir", "/data", "--report_dir", "/reports", "--nocanonical")
    assert os.stat(os.path.join(reports, "report.md")).st_uid == 4321


@pytest.mark.docker
def test_the_image_holds_the_kfp_and_package_of_this_checkout(cpu_image):
    """Components run with install_kfp_package=False: the image's kfp must be the one that compiles."""
    import kfp

    import mnistkit

    out = _docker("run", "--rm", cpu_image, "python3", "-c",
                  "import kfp, mnistkit, sys; print(kfp.__version__, mnistkit.__version__, sys.prefix)").stdout
    assert out.split() == [kfp.__version__, mnistkit.__version__, "/opt/venv"]
    # Installed, not a source checkout: the package lives in the venv's site-packages.
    location = _docker("run", "--rm", cpu_image, "python3", "-c", "import mnistkit; print(mnistkit.__file__)").stdout
    assert location.strip().startswith("/opt/venv/lib/python3.11/site-packages/mnistkit/")


@pytest.mark.docker
def test_bad_input_gives_the_same_one_line_error_inside_the_container(cpu_image, tmp_path):
    bad = tmp_path / "bad"
    synthetic.write_dataset(bad, n_train=20, n_test=10)
    train_images = next(s for s in idx.SPLITS if s.name == "train").images
    with open(bad / train_images, "wb") as f:
        f.write(b"not gzip at all")
    command = ["mnist-validate", "--data_dir", str(bad), "--report_dir", str(bad), "--nocanonical"]
    outside = subprocess.run([os.path.join(os.path.dirname(sys.executable), command[0]), *command[1:]],
                             capture_output=True, text=True, timeout=300)
    # The same absolute path inside, so the message can be compared word for word.
    inside = _docker("run", "--rm", "-v", f"{bad}:{bad}:ro", cpu_image, *command, check=False)
    for result in (outside, inside):
        assert result.returncode == 1
        assert "Traceback" not in result.stderr
    last = outside.stderr.strip().splitlines()[-1]
    assert last.startswith("mnist-validate: error: ") and train_images in last
    assert inside.stderr.strip().splitlines()[-1] == last
    assert not os.path.exists(bad / "report.json")


@pytest.mark.docker
def test_whole_pipeline_runs_in_the_image_with_kfp_docker_runner(cpu_image, tmp_path, capfd):
    from pipelines import run_local

    root = tmp_path / "root"
    # DockerRunner mounts only the pipeline root (at the same path), so the mirror lives inside it.
    mirror = synthetic.write_dataset(root / "mirror")
    result = run_local.run(str(root), {"source": mirror, "verify_checksums": False, "train_epochs": 1,
                                       "max_train_examples": 300, "batch_size": 32, "min_accuracy": 0.5},
                           runner="docker")
    captured = capfd.readouterr()
    # kfp says "Found image" for a local image and "Pulling image" otherwise: every step used the one just built.
    assert f"Found image {cpu_image!r}" in captured.out
    assert "Pulling image" not in captured.out
    assert result["metrics"]["accuracy"] > 0.5 and result["metrics"]["examples"] == 200
    assert result["verdict"].startswith("**Exported**")
    assert os.path.exists(os.path.join(result["saved_model"], "saved_model.pb"))
    # The artifacts belong to the caller, not to the image's user.
    assert os.stat(result["saved_model"]).st_uid == os.getuid()
