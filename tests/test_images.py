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
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from components import images
from images import build
from mnistkit import idx
from tests import conftest, synthetic
from tests.conftest import REPO, serve_directory

KINDS = ("cpu", "gpu", "tpu")


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


def test_build_without_docker_says_so_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "images/build.py", "--kind", "cpu"], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PATH": str(tmp_path)})  # No docker there.
    assert done.returncode == 1
    assert done.stderr == ("build.py: error: docker: expected the docker command on PATH, found none (install "
                           "docker, and see images/README.md for starting an engine)\n")


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
        conftest.missing(f"{reason}; start one with: eval \"$(.ci/docker.sh up)\"")


def _build_image(kind: str, timeout: float) -> str:
    """Builds the `kind` image through images/build.py's command with the pipeline's own URI; returns that URI."""
    _require_engine()
    uri = images.image_uri(kind)
    command = build.build_command(kind, uri, os.environ.get("MNISTKIT_BASE_IMAGE", ""),
                                  os.environ.get("MNISTKIT_PIP_CERT", ""))
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(command)} exited {result.returncode}:\n{result.stdout[-4000:]}\n"
                    f"{result.stderr[-2000:]}")
    return uri


@pytest.fixture(scope="session")
def cpu_image() -> str:
    """The CPU image, built through images/build.py with the pipeline's own URI; returns that URI."""
    return _build_image("cpu", timeout=840)


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


@pytest.mark.docker
def test_sigterm_to_a_docker_run_stops_the_step_in_its_container_which_saves(cpu_image, tmp_path):
    """SIGTERM ended run_local.py alone: the step's container trained on unseen, and a rerun raced with it."""
    root = tmp_path / "root"
    mirror = synthetic.write_dataset(root / "mirror")
    checkpoints = root / "checkpoints"  # Inside the pipeline root: the only host directory DockerRunner mounts.
    log_path = tmp_path / "run.log"
    with open(log_path, "w") as log:
        run = subprocess.Popen(
            [sys.executable, os.path.join(REPO, "pipelines", "run_local.py"), "--runner", "docker",
             "--source", mirror, "--pipeline_root", str(root), "--param", "verify_checksums=false",
             "--param", "batch_size=20", "--param", "train_epochs=30", "--param", "epochs_between_evals=30",
             "--param", "min_accuracy=0", "--param", f"checkpoint_root={checkpoints}"],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 300  # Until the train step's container has checkpointed its first epoch.
    while not list(checkpoints.glob("run-*/ckpt-1.index")) and run.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert run.poll() is None, log_path.read_text()[-3000:]
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=150) == 143, log_path.read_text()[-3000:]
    text = log_path.read_text()
    # The step in the container was told, saved at its step, and the run stopped with it: nothing runs on.
    assert re.search(r"run_local.py: error: step train-model failed: Interrupted: SIGTERM (at epoch \d+, step \d+: "
                     r"saved \S+ckpt-\d+|before epoch \d+: nothing lost since the last checkpoint); rerun to resume",
                     text), text[-3000:]
    assert text.strip().splitlines()[-1] == ("run_local.py: stopped by SIGTERM; the step in progress was told to "
                                             "save and stop: rerun the same command to resume")
    assert _docker("ps", "--quiet", "--filter", f"ancestor={cpu_image}").stdout.strip() == ""


# --- The TPU image's start-up hook (mnistkit/tpu_env.py), without an engine. ---


def _tree(root, files: dict[str, str]) -> str:
    """A stand-in /dev or /sys/bus/pci/devices tree: relative path -> contents."""
    os.makedirs(root, exist_ok=True)
    for rel, text in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    return str(root)


@pytest.mark.parametrize("dev, pci, tpu", [
    ({}, {}, False),
    # /dev/vfio/vfio is VFIO's control node on any host with VFIO; only numbered groups are devices.
    ({"vfio/vfio": ""}, {}, False),
    # A Google PCI function that is not a TPU (gVNIC, the network card of every Compute Engine VM).
    ({}, {"0000:00:04.0/vendor": "0x1ae0\n", "0000:00:04.0/device": "0x0042\n"}, False),
    ({"accel0": ""}, {}, True),  # TPU v2-v4 VMs.
    ({"vfio/0": "", "vfio/vfio": ""}, {}, True),  # TPU v5e, v5p, v6e VMs.
    ({}, {"0000:00:05.0/vendor": "0x1ae0\n", "0000:00:05.0/device": "0x0063\n"}, True),  # v5e seen in sysfs only.
], ids=["nothing", "vfio-control-node-only", "google-nic-only", "accel0", "vfio-group", "tpu-pci-function"])
def test_tpu_hook_turns_libtpu_off_only_where_no_tpu_device_is_found(tmp_path, dev, pci, tpu):
    import io

    from mnistkit import tpu_env

    environ, said = {"PATH": "/bin"}, io.StringIO()
    changed = tpu_env.configure(environ, _tree(tmp_path / "dev", dev), _tree(tmp_path / "pci", pci), said)
    if tpu:
        # A TPU VM: libtpu loads and asks the metadata server for its workers, as without the hook.
        assert not changed and environ == {"PATH": "/bin"} and said.getvalue() == ""
    else:
        assert changed and environ == {"PATH": "/bin", "TPU_LOAD_LIBRARY": "0", "TPU_SKIP_MDS_QUERY": "1"}
        assert said.getvalue().startswith("mnistkit: no TPU device found") and said.getvalue().count("\n") == 1


@pytest.mark.parametrize("name, value", [("TPU_LOAD_LIBRARY", "1"), ("TPU_SKIP_MDS_QUERY", "0")])
def test_tpu_hook_leaves_a_setting_made_before_it_alone(tmp_path, name, value):
    """The user's (or a parent process's) choice wins; children of a hooked process do not repeat the notice."""
    import io

    from mnistkit import tpu_env

    environ, said = {name: value}, io.StringIO()
    assert not tpu_env.configure(environ, _tree(tmp_path / "dev", {}), _tree(tmp_path / "pci", {}), said)
    assert environ == {name: value} and said.getvalue() == ""


def test_tpu_image_installs_the_hook_as_a_pth_file_that_python_runs_at_start(tmp_path):
    """The .pth line works under site.py (this host has no TPU), and the Dockerfile puts it in site-packages."""
    pth = os.path.join(REPO, "images", "tpu", "mnistkit_tpu_env.pth")
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    shutil.copy(pth, site_dir)
    env = {k: v for k, v in os.environ.items() if k not in ("TPU_LOAD_LIBRARY", "TPU_SKIP_MDS_QUERY")}
    env["PYTHONPATH"] = REPO
    out = subprocess.run([sys.executable, "-c", f"import os, site; site.addsitedir({str(site_dir)!r}); "
                          "print(os.environ.get('TPU_LOAD_LIBRARY'), os.environ.get('TPU_SKIP_MDS_QUERY'))"],
                         env=env, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["0", "1"]
    assert out.stderr.startswith("mnistkit: no TPU device found")
    ops = instructions(dockerfile("tpu"))
    copy = next(i for i, (op, arg) in enumerate(ops) if op == "COPY" and "mnistkit_tpu_env.pth" in arg)
    install = ops[copy + 1]
    assert install[0] == "RUN" and "sysconfig.get_paths()" in install[1] and '["purelib"]' in install[1]
    # After the package it imports is installed, before the image switches to its user.
    package = next(i for i, (op, arg) in enumerate(ops) if "--no-deps ." in arg)
    assert package < copy < next(i for i, (op, _) in enumerate(ops) if op == "USER")


# --- The GPU and TPU images, built and run on this machine's CPU (no GPU, no TPU here). ---
# Measured on 2 shared cores: the GPU image builds in about 2.5 min (7.2 GB), the TPU image in 1.3-3 min
# (2.4 GB); a short mnist-train runs in about 20 s in each (images/README.md).

ACCELERATOR_BUILD_SECONDS = 1500
# Without the hook the TPU image's mnist-train never ended (killed after 14 minutes); with it, about 20 s.
TPU_RUN_TIMEOUT = 300


@pytest.fixture(scope="session")
def gpu_image() -> str:
    return _build_image("gpu", timeout=ACCELERATOR_BUILD_SECONDS)


@pytest.fixture(scope="session")
def tpu_image() -> str:
    return _build_image("tpu", timeout=ACCELERATOR_BUILD_SECONDS)


def _run_bounded(image: str, command: list[str], docker_args: list[str], timeout: float):
    """`docker run` that ends within `timeout` seconds or fails the test, removing the container either way.

    --init: the container's process 1 is docker's init, which forwards signals; python as process 1 ignores
    SIGTERM, so a hung step could otherwise outlive the test. Returns (result, seconds taken).
    """
    name = f"mnistkit-test-{os.getpid()}-{time.monotonic_ns()}"
    start = time.monotonic()
    try:
        result = subprocess.run(["docker", "run", "--rm", "--init", "--name", name, *docker_args, image, *command],
                                capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        subprocess.run(["docker", "rm", "--force", name], capture_output=True, timeout=120)
        stderr = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        pytest.fail(f"{image} {' '.join(command)} did not end within {timeout} s; stderr ends:\n{stderr[-3000:]}")
    return result, time.monotonic() - start


def _train_in(image: str, tmp_path, timeout: float):
    """A short mnist-train on synthetic data in `image`; returns (result, seconds, history)."""
    data = synthetic.write_dataset(tmp_path / "data")  # World-readable, unlike tmp_path.
    out = _world_writable(tmp_path / "out")
    result, seconds = _run_bounded(
        image, ["mnist-train", "--data_dir", "/data", "--model_dir", "/out/model", "--train_epochs", "1",
                "--max_train_examples", "300", "--batch_size", "32"],
        ["-v", f"{data}:/data:ro", "-v", f"{out}:/out"], timeout)
    assert result.returncode == 0, f"mnist-train in {image} exited {result.returncode}:\n{result.stderr[-4000:]}"
    assert os.path.exists(os.path.join(out, "model", "model.keras"))
    with open(os.path.join(out, "model", "history.json")) as f:
        history = json.load(f)
    return result, seconds, history


# What an image's TensorFlow sees, as one JSON line (TensorFlow's own logs go to stderr).
_DEVICES = ("import json, os, kfp, mnistkit, tensorflow as tf; print(json.dumps(dict("
            "kfp=kfp.__version__, mnistkit=mnistkit.__version__, tensorflow=tf.__version__, "
            "cuda=tf.test.is_built_with_cuda(), "
            "devices=sorted({d.device_type for d in tf.config.list_physical_devices()}), "
            "switches=[os.environ.get(n) for n in ('TPU_LOAD_LIBRARY', 'TPU_SKIP_MDS_QUERY')])))")


def _devices(image: str, command: list[str], timeout: float) -> tuple[dict, str]:
    result, _ = _run_bounded(image, command, [], timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


@pytest.mark.docker
@pytest.mark.timeout(ACCELERATOR_BUILD_SECONDS + 600)
def test_gpu_image_holds_cuda_tensorflow_and_trains_on_the_cpu_when_no_gpu_is_found(gpu_image, tmp_path):
    import kfp

    import mnistkit

    seen, _ = _devices(gpu_image, ["python3", "-c", _DEVICES], timeout=300)
    # The CUDA build of the locked TensorFlow, the same kfp and package as the CPU image; no GPU on this host.
    assert seen == {"kfp": kfp.__version__, "mnistkit": mnistkit.__version__,
                    "tensorflow": lock_pins()["tensorflow-cpu"], "cuda": True, "devices": ["CPU"],
                    "switches": [None, None]}
    _, _, history = _train_in(gpu_image, tmp_path, timeout=600)
    assert history["epochs"] == 1 and history["evaluations"][-1]["accuracy"] > 0.5  # Chance is 0.1.


@pytest.mark.docker
@pytest.mark.timeout(ACCELERATOR_BUILD_SECONDS + 600)
def test_tpu_image_trains_on_the_cpu_without_asking_the_metadata_server_where_there_is_no_tpu(tpu_image, tmp_path):
    result, seconds, history = _train_in(tpu_image, tmp_path, timeout=TPU_RUN_TIMEOUT)
    assert history["epochs"] == 1 and history["evaluations"][-1]["accuracy"] > 0.5
    # The hook said so, once; TensorFlow saw the switch and did not load libtpu, which never asked for workers.
    notices = [line for line in result.stderr.splitlines() if line.startswith("mnistkit: no TPU device found")]
    assert len(notices) == 1 and result.stderr.startswith(notices[0])
    assert "TPU_LOAD_LIBRARY=0, not loading libtpu" in result.stderr
    assert "Failed to get TPU metadata" not in result.stderr and "TPU_WORKER_HOSTNAMES" not in result.stderr
    assert seconds < TPU_RUN_TIMEOUT / 2, f"took {seconds:.0f} s"


@pytest.mark.docker
@pytest.mark.timeout(ACCELERATOR_BUILD_SECONDS + 600)
def test_tpu_image_hook_covers_a_python3_started_by_sh_as_kfp_components_are(tpu_image):
    """kfp's components run `sh -ec '... python3 -m kfp.dsl.executor_main ...'`, replacing any entrypoint."""
    import kfp

    import mnistkit

    seen, stderr = _devices(tpu_image, ["sh", "-ec", f'exec python3 -u -c "{_DEVICES}"'], timeout=TPU_RUN_TIMEOUT)
    # tensorflow-tpu (it may lag the lock, see images/README.md) without CUDA; CPU only: with libtpu not loaded
    # there is no TPU_SYSTEM device either.
    assert seen["tensorflow"] == build_args(dockerfile("tpu"))["TF_TPU_VERSION"] and seen["cuda"] is False
    assert (seen["kfp"], seen["mnistkit"]) == (kfp.__version__, mnistkit.__version__)
    assert seen["devices"] == ["CPU"] and seen["switches"] == ["0", "1"]
    assert stderr.startswith("mnistkit: no TPU device found")


@pytest.mark.docker
@pytest.mark.timeout(ACCELERATOR_BUILD_SECONDS + 300)
def test_tpu_image_leaves_libtpu_and_its_metadata_query_alone_on_a_tpu_vm(tpu_image):
    """A stand-in for a TPU VM's chip: /dev/null mapped to /dev/accel0 (TensorFlow is not imported: it would
    look for the metadata server that a real TPU VM has)."""
    probe = "import os; print(os.environ.get('TPU_LOAD_LIBRARY'), os.environ.get('TPU_SKIP_MDS_QUERY'))"
    for device in ("/dev/accel0", "/dev/vfio/0"):
        result, _ = _run_bounded(tpu_image, ["python3", "-c", probe], ["--device", f"/dev/null:{device}"],
                                 timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.split() == ["None", "None"], device
        assert "no TPU device found" not in result.stderr
    # The same probe without the device: the hook acts.
    result, _ = _run_bounded(tpu_image, ["python3", "-c", probe], [], timeout=120)
    assert result.stdout.split() == ["0", "1"]


@pytest.mark.docker
@pytest.mark.timeout(ACCELERATOR_BUILD_SECONDS + 600)
def test_tpu_pipelines_training_replica_started_as_vertex_starts_it_ends_instead_of_hanging(tpu_image, tmp_path):
    """The chief's container command of `compile.py --hardware tpu`, from the CustomJob request GCPC's launcher
    sends (tests/vertex_request.py), run in the TPU image with /gcs as a plain mount (Cloud Storage FUSE on
    Vertex AI). With no TPU here the step must fail, quickly and saying so, rather than wait for a metadata
    server."""
    from pipelines import compile as compile_module
    from pipelines import hardware
    from tests import vertex_request

    spec = vertex_request.load(compile_module.compile_pipeline(str(tmp_path / "tpu.yaml"), hardware.resolve("tpu")))
    _, job, inputs = vertex_request.launcher_request(
        spec, {"train_epochs": 1, "max_train_examples": 300, "batch_size": 32})
    (chief, *others) = job["job_spec"]["worker_pool_specs"]
    assert not others and chief["container_spec"]["image_uri"] == tpu_image
    command = chief["container_spec"]["command"] + chief["container_spec"]["args"]
    assert any("python3 -m kfp.dsl.executor_main" in part for part in command)

    gcs = tmp_path / "gcs"
    data_uri = inputs["inputs"]["artifacts"]["data"]["artifacts"][0]["uri"]
    synthetic.write_dataset(gcs / data_uri.removeprefix("gs://"))
    # The task's outputs go under the run's directory, which the image's user must be able to create.
    output_uri = inputs["outputs"]["artifacts"]["model"]["artifacts"][0]["uri"]
    run_dir = gcs / output_uri.removeprefix("gs://").split("/mnist-training-")[0]
    _world_writable(run_dir)

    result, seconds = _run_bounded(tpu_image, command, ["-v", f"{gcs}:/gcs"], timeout=TPU_RUN_TIMEOUT)
    assert result.stderr.startswith("mnistkit: no TPU device found"), result.stderr[:500]
    assert "Failed to get TPU metadata" not in result.stderr
    # The compiled step asks for the TPU strategy (--tpu local), which has nothing to find on this machine.
    assert result.returncode != 0 and "TPU" in result.stderr.strip().splitlines()[-1], result.stderr[-2000:]
    assert seconds < TPU_RUN_TIMEOUT / 2, f"took {seconds:.0f} s"
