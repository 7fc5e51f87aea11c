"""cloudbuild.yaml, checked here where Cloud Build cannot run: its files, substitutions, images and commands.

Each command a step runs is parsed by the project's own argument parsers
with the substitutions' defaults filled in, so the build cannot drift from
compile.py, submit.py, the Dockerfiles or the Makefile's test command.
"""

import configparser
import os
import re
import shlex

import pytest
import yaml

from components import images
from tests.conftest import REPO

# Cloud Build's own substitutions (https://cloud.google.com/build/docs/configuring-builds/substitute-variable-values).
BUILT_IN = {"PROJECT_ID", "PROJECT_NUMBER", "LOCATION", "BUILD_ID", "COMMIT_SHA", "SHORT_SHA", "REPO_NAME",
            "REPO_FULL_NAME", "BRANCH_NAME", "TAG_NAME", "REVISION_ID", "TRIGGER_NAME", "TRIGGER_BUILD_CONFIG_PATH",
            "SERVICE_ACCOUNT_EMAIL", "SERVICE_ACCOUNT", "_HEAD_BRANCH", "_BASE_BRANCH", "_HEAD_REPO_URL",
            "_PR_NUMBER"}
SAMPLE = {"PROJECT_ID": "my-project", "SHORT_SHA": "abc1234"}
VERSION = "0.1.0"
# `$VAR` or `${VAR}`, but not `$$` (Cloud Build's escape for a shell's own `$`).
SUBSTITUTION = re.compile(r"(?<!\$)\$(?:\{(\w+)\}|(\w+))")


@pytest.fixture(scope="module")
def build():
    with open(os.path.join(REPO, "cloudbuild.yaml")) as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def steps(build):
    return {step["id"]: step for step in build["steps"]}


def used_substitutions(value) -> set[str]:
    if isinstance(value, dict):
        return set().union(*(used_substitutions(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(used_substitutions(v) for v in value)) if value else set()
    if isinstance(value, str):
        return {a or b for a, b in SUBSTITUTION.findall(value)}
    return set()


def expand(text: str, build: dict, **shell: str) -> str:
    """Fills in Cloud Build's substitutions (their defaults, or SAMPLE) and the given shell variables."""
    values = {**SAMPLE, **{k: str(v) for k, v in build["substitutions"].items()}}
    for _ in range(5):  # Substitution defaults may name other substitutions.
        text = SUBSTITUTION.sub(lambda m: values[m.group(1) or m.group(2)], text)
    for name, value in shell.items():
        text = text.replace(f"$${name}", value)
    return text.replace("$$", "$")


def commands(step: dict, build: dict, **shell: str) -> list[list[str]]:
    """The command lines a step runs: its args, or each line of its `bash -c` script."""
    if step.get("entrypoint") == "bash":
        script = expand(step["args"][1], build, **shell).replace("\\\n", " ")
        return [shlex.split(line) for line in script.splitlines() if line.strip()]
    return [[expand(arg, build, **shell) for arg in step["args"]]]


def test_every_substitution_used_is_declared_and_every_declared_one_is_used(build):
    declared = set(build["substitutions"])
    used = used_substitutions(build["steps"]) | used_substitutions(build["images"]) | used_substitutions(
        build["substitutions"])
    assert all(name.startswith("_") for name in declared)
    assert used - declared - BUILT_IN == set(), "used but neither declared nor built in"
    assert declared - used == set(), "declared but never used"
    # A substitution defined from another one needs dynamic substitutions.
    assert build["options"]["dynamicSubstitutions"] is True
    for name in ("_REGION", "_REPOSITORY", "_KFP_REPOSITORY", "_SUBMIT"):
        assert name in declared


def test_every_file_a_step_names_exists(build):
    text = yaml.safe_dump(build["steps"])
    named = set(re.findall(r"(?<![\w/])((?:images|pipelines|components|mnistkit|tests|\.ci)/[\w./-]+)", text))
    assert any(path.endswith("Dockerfile") for path in named) and "pipelines/compile.py" in named
    for path in named:
        assert os.path.exists(os.path.join(REPO, path)), f"cloudbuild.yaml names {path}, which does not exist"


def test_steps_wait_for_steps_that_exist_and_only_tested_images_are_pushed(steps):
    for step in steps.values():
        for needed in step.get("waitFor", []):
            assert needed in steps, f"{step['id']} waits for unknown step {needed}"

    def ancestors(step_id):
        found = set()
        for needed in steps[step_id].get("waitFor", []):
            found |= {needed} | ancestors(needed)
        return found

    assert {"test", "build-cpu", "build-gpu", "build-tpu"} <= ancestors("push")
    assert "push" in ancestors("compile") and "compile" in ancestors("upload")


def docker_builds(build) -> dict[str, dict]:
    """Dockerfile -> {tags, build_args} of each `docker build` step."""
    found = {}
    for step in build["steps"]:
        args = step.get("args", [])
        if step["name"].endswith("cloud-builders/docker") and args[:1] == ["build"]:
            pairs = list(zip(args, args[1:]))
            found[dict(pairs)["-f"]] = {"tags": [b for a, b in pairs if a == "-t"],
                                        "build_args": [b for a, b in pairs if a == "--build-arg"],
                                        "cache_from": [b for a, b in pairs if a == "--cache-from"], "id": step["id"]}
    return found


def test_the_images_listed_are_the_ones_built_with_the_names_of_components_images(build):
    builds = docker_builds(build)
    assert set(builds) == {f"images/{kind}/Dockerfile" for kind in ("cpu", "gpu", "tpu", "test")}
    pushed = []
    for kind in ("cpu", "gpu", "tpu"):
        spec = builds[f"images/{kind}/Dockerfile"]
        commit_tag = next(t for t in spec["tags"] if t.endswith(":$SHORT_SHA"))
        pushed.append(commit_tag)
        registry = expand("${_REGISTRY}", build)
        assert expand(commit_tag, build) == images.image_uri(kind, registry, SAMPLE["SHORT_SHA"])
        # Layers come from the previous build's image of the same kind, which this build tags in turn.
        assert spec["cache_from"] and all(c in spec["tags"] for c in spec["cache_from"])
    assert build["images"] == pushed
    # The test image is built on this commit's CPU image, runs the tests, and is never pushed.
    test = builds["images/test/Dockerfile"]
    assert f"CPU_IMAGE={pushed[0]}" in test["build_args"]
    assert not any(tag in build["images"] for tag in test["tags"])


def test_build_arguments_are_ones_the_dockerfiles_declare(build):
    for dockerfile, spec in docker_builds(build).items():
        with open(os.path.join(REPO, dockerfile)) as f:
            declared = set(re.findall(r"^ARG (\w+)", f.read(), flags=re.MULTILINE))
        for arg in spec["build_args"]:
            name = arg.split("=", 1)[0]
            # BUILDKIT_INLINE_CACHE is BuildKit's own: it writes cache metadata for the next --cache-from.
            assert name in declared or name == "BUILDKIT_INLINE_CACHE", f"{dockerfile}: --build-arg {name}"


def test_the_test_step_runs_the_command_of_make_test_in_the_test_image(build, steps):
    with open(os.path.join(REPO, "Makefile")) as f:
        makefile = f.read()
    make_test = re.search(r"^test:.*\n(?:\t.*\n)*?\t\$\(BIN\)/(python -m pytest[^\n]*)", makefile,
                          flags=re.MULTILINE).group(1)
    step = steps["test"]
    assert step["name"] == docker_builds(build)["images/test/Dockerfile"]["tags"][0]
    lines = commands(step, build)
    pytest_line = next(line for line in lines if line[:3] == ["python", "-m", "pytest"])
    # The same command and flags as CI, minus what a build step cannot give (a docker engine, root, the .git),
    # each a marker setup.cfg declares.
    assert " ".join(pytest_line).startswith(make_test)
    assert pytest_line[len(make_test.split()):] == ["-m", "not docker and not privileged and not checkout", "-p",
                                                    "no:cacheprovider"]
    setup = configparser.ConfigParser()
    setup.read(os.path.join(REPO, "setup.cfg"))
    declared = {line.split(":")[0].strip() for line in setup["tool:pytest"]["markers"].splitlines() if line.strip()}
    assert {"docker", "privileged", "checkout"} <= declared
    # Its data comes from the image's own command, into the directory the tests read.
    setup = configparser.ConfigParser()
    setup.read(os.path.join(REPO, "setup.cfg"))
    scripts = {line.split("=")[0].strip() for line in setup["options.entry_points"]["console_scripts"].splitlines()
               if line.strip()}
    download = next(line for line in lines if line[0].startswith("mnist-"))
    assert download[0] in scripts
    assert f"MNIST_DATA_DIR={download[download.index('--data_dir') + 1]}" in step["env"]


def test_compile_step_is_compile_py_with_the_pushed_images_registry_and_tag(build, steps):
    from pipelines import compile as compile_module

    (line,) = commands(steps["compile"], build)
    assert line[:2] == ["python", "pipelines/compile.py"]
    args = compile_module.parser().parse_args(line[2:])
    pushed_cpu = expand(build["images"][0], build)
    assert images.image_uri("cpu", args.registry, args.tag) == pushed_cpu
    assert args.hardware == build["substitutions"]["_HARDWARE"]
    assert steps["compile"]["name"] == build["images"][0]


@pytest.mark.parametrize("submit", [False, True])
def test_upload_step_is_submit_py_uploading_the_compiled_template(build, steps, submit, tmp_path):
    from pipelines import submit as submit_module

    mode = "" if submit else "--upload_only"
    lines = commands(steps["upload"], build, mode=mode)
    line = next(line for line in lines if line[:2] == ["python", "pipelines/submit.py"])
    line = [VERSION if "cat /workspace/out/version" in arg else arg for arg in line]
    args = submit_module.parser().parse_args(line[2:])
    (compile_line,) = commands(steps["compile"], build)
    assert args.template == compile_line[compile_line.index("--output") + 1]
    assert args.upload_to == f"https://us-central1-kfp.pkg.dev/{SAMPLE['PROJECT_ID']}/mnistkit-pipelines"
    assert args.upload_only is (not submit)
    # The script picks the mode from _SUBMIT, defaulting to upload only.
    script = steps["upload"]["args"][1]
    assert 'mode=--upload_only' in script and '[ "${_SUBMIT}" = true ]' in script
    assert build["substitutions"]["_SUBMIT"] == "false"
    # submit.py's own checks accept the defaults (it raises ValueError otherwise), on a template compiled
    # as the compile step compiles it.
    from pipelines import compile as compile_module

    compile_args = compile_module.parser().parse_args(compile_line[2:])
    args.template = compile_module.compile_pipeline(str(tmp_path / "mnist_pipeline.yaml"), compile_module.hardware
                                                    .resolve(compile_args.hardware), compile_args.registry,
                                                    compile_args.tag)
    values, labels = submit_module.check(args)
    # No --param: only what submit.py fills from its own flags (the account custom jobs run as, the Registry's
    # project and region).
    assert values == {"service_account": args.service_account, "project": args.project, "region": args.region}
    assert labels == {}


def test_the_test_image_has_the_browser_the_report_tests_open():
    """CI=true turns a missing tool into a failure: the test step's image must carry what tests/browser.py runs."""
    from tests import browser

    with open(os.path.join(REPO, "images", "test", "Dockerfile")) as f:
        dockerfile = f.read()
    installs = re.findall(r"apt-get install ([^\n\\&]*)", dockerfile)
    packages = {word for line in installs for word in line.split() if not word.startswith("-")}
    assert {"chromium", "chromium-driver"} <= packages, installs
    assert browser.CHROMIUM == "/usr/bin/chromium" and browser.CHROMEDRIVER == "/usr/bin/chromedriver"
