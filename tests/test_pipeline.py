"""The pipeline: it compiles for every hardware choice with the right structure, and runs whole through kfp.local."""

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from mnistkit import recipes
from pipelines import compile as compile_module
from pipelines import hardware, parameters, pipeline, run_local, vertex_machines
from tests import browser
from tests.conftest import REPO, free_port, serve_directory

STEPS = ["download-data", "validate-data", "train-model", "evaluate-model", "check-accuracy", "export-model"]


def _compile(tmp_path, hw, **images) -> dict:
    path = compile_module.compile_pipeline(str(tmp_path / f"{hw.kind}.yaml"), hw, **images)
    with open(path) as f:
        return yaml.safe_load(f)


def _all_tasks(spec) -> dict:
    """Every task of the pipeline, in the root DAG or a condition's, by name, with `_condition` (the
    condition it runs under) and `_parent` (the condition task holding it)."""
    tasks = {}

    def walk(dag, condition, parent):
        for name, task in dag["tasks"].items():
            tasks[name] = {**task, "_condition": condition, "_parent": parent}
            ref = task["componentRef"]["name"]
            if "dag" in spec["components"][ref]:
                walk(spec["components"][ref]["dag"], task.get("triggerPolicy", {}).get("condition"), name)

    walk(spec["root"]["dag"], None, None)
    return tasks


def _upstream(tasks, name) -> set:
    """Tasks that finish before `name` starts: its dependencies and those of the conditions holding it."""
    found, todo = set(), [name]
    while todo:
        task = tasks[todo.pop()]
        for dep in task.get("dependentTasks", []) + ([task["_parent"]] if task["_parent"] else []):
            if dep not in found:
                found.add(dep)
                todo.append(dep)
    return found


def _worker_pools(spec) -> list:
    return spec["components"]["comp-train-model"]["inputDefinitions"]["parameters"]["worker_pool_specs"][
        "defaultValue"]


_GCPC_IMAGE = "gcr.io/ml-pipeline/google-cloud-pipeline-components:2.22.0"


def _is_gcpc(container) -> bool:
    """Whether an executor is one of GCPC's own launchers (they run in GCPC's image)."""
    return any(part.startswith("google_cloud_pipeline_components.container.") for part in container["command"])


def test_cpu_pipeline_has_the_steps_in_order_and_the_gate(tmp_path):
    spec = _compile(tmp_path, hardware.Hardware())
    assert spec["pipelineInfo"]["name"] == "mnist-training"
    tasks = _all_tasks(spec)
    assert set(STEPS) | {"registration-inputs"} <= set(tasks)
    # Each step runs after the one before it (registration: see tests/test_registry.py).
    for before, step in zip(STEPS, STEPS[1:] + ["registration-inputs"]):
        assert before in _upstream(tasks, step), (before, step)
    # The gate: export sits under a condition on the check's single boolean output.
    condition = tasks["export-model"]["_condition"]
    assert condition == "inputs.parameter_values['pipelinechannel--check-accuracy-Output'] == true"
    assert tasks["registration-inputs"]["_condition"] == \
        "inputs.parameter_values['pipelinechannel--register'] == true"
    for step in STEPS[:5]:
        assert tasks[step]["_condition"] is None, step
    # Every step names its image (GCPC's registration steps, GCPC's) and nothing is pip-installed at start.
    executors = spec["deploymentSpec"]["executors"]
    for name, executor in executors.items():
        container = executor["container"]
        assert container["image"] == (_GCPC_IMAGE if _is_gcpc(container) else "localhost/mnistkit-cpu:0.1.0"), name
        assert "pip install" not in " ".join(container["command"]), name
    params = spec["root"]["inputDefinitions"]["parameters"]
    # The CVDF bucket first, then its HTTPS form, then another public mirror of the same files.
    assert params["source"]["defaultValue"].split(",") == ["gs://cvdf-datasets/mnist/",
                                                           "https://storage.googleapis.com/cvdf-datasets/mnist/",
                                                           "https://ossci-datasets.s3.amazonaws.com/mnist/"]
    assert {"batch_size", "train_epochs", "epochs_between_evals", "stop_threshold", "learning_rate", "recipe",
            "min_accuracy", "register", "max_train_examples"} <= set(params)
    # Docstrings become the descriptions users read in the Vertex AI console.
    assert "export gate" in params["min_accuracy"]["description"]


def test_pipeline_defaults_leave_the_recipe_in_charge():
    import inspect
    defaults = {k: v.default for k, v in inspect.signature(pipeline.build().pipeline_func).parameters.items()}
    # 0 stands for "the recipe's" (kfp.local refuses Optional parameters): the recipe chooses all three.
    assert (defaults["batch_size"], defaults["train_epochs"], defaults["learning_rate"]) == (0, 0, 0.0)
    assert defaults["recipe"] == "fast" and 0 < defaults["min_accuracy"] <= defaults["stop_threshold"] <= 1


def test_the_readme_names_every_pipeline_parameter_with_its_default():
    """The README's parameter list is written by hand: a parameter added, renamed or given another default in
    the code left it stale, and nothing noticed."""
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    start = readme.index("**Parameters** (defaults):")
    listed = " ".join(readme[start:readme.index("\n\n", start)].split())
    for name, spec in parameters.pipeline_parameters(pipeline.build()).items():
        assert f"`{name}`" in listed, name
        default = spec.get("defaultValue")
        if isinstance(default, bool):
            assert f"`{name}` {str(default).lower()}" in listed, name
        elif isinstance(default, (int, float)):
            assert re.search(rf"`{name}` {default:g}\b", listed), name
        elif default and name not in ("source", "serving_image"):  # Those two are described, not spelled out.
            assert f"`{name}` {default}" in listed, name


def test_registry_and_tag_reach_every_image(tmp_path, monkeypatch):
    spec = _compile(tmp_path, hardware.resolve("gpu"), registry="europe-docker.pkg.dev/p/r", tag="2024.1")
    images = {n: e["container"]["image"] for n, e in spec["deploymentSpec"]["executors"].items()
              if not _is_gcpc(e["container"])}
    assert images.pop("exec-train-model") == "europe-docker.pkg.dev/p/r/mnistkit-gpu:2024.1"
    assert set(images.values()) == {"europe-docker.pkg.dev/p/r/mnistkit-cpu:2024.1"}
    monkeypatch.setenv("MNISTKIT_IMAGE_REGISTRY", "localhost:5000")
    monkeypatch.setenv("MNISTKIT_IMAGE_TAG", "dev")
    spec = _compile(tmp_path, hardware.Hardware())
    assert spec["deploymentSpec"]["executors"]["exec-download-data"]["container"]["image"] == \
        "localhost:5000/mnistkit-cpu:dev"


def test_gpu_pipeline_sets_the_accelerator_on_the_training_task(tmp_path):
    spec = _compile(tmp_path, hardware.resolve("gpu", accelerator_type="NVIDIA_TESLA_T4", accelerator_count=2))
    train = spec["deploymentSpec"]["executors"]["exec-train-model"]["container"]
    assert train["image"] == "localhost/mnistkit-gpu:0.1.0"
    assert train["resources"]["accelerator"] == {"resourceCount": "2", "resourceType": "NVIDIA_TESLA_T4",
                                                 "count": "2", "type": "NVIDIA_TESLA_T4"}
    others = [e["container"] for n, e in spec["deploymentSpec"]["executors"].items() if n != "exec-train-model"]
    assert all("accelerator" not in c.get("resources", {}) for c in others)


def test_gpu_with_a_machine_type_runs_training_as_a_custom_job(tmp_path):
    spec = _compile(tmp_path, hardware.resolve("gpu", machine_type="g2-standard-8"))
    (pool,) = _worker_pools(spec)
    assert pool["machine_spec"] == {"machine_type": "g2-standard-8", "accelerator_type": "NVIDIA_L4",
                                    "accelerator_count": 1}
    assert pool["replica_count"] == 1
    assert pool["container_spec"]["image_uri"] == "localhost/mnistkit-gpu:0.1.0"
    launcher = spec["deploymentSpec"]["executors"]["exec-train-model"]["container"]
    assert "google_cloud_pipeline_components.container.v1.custom_job.launcher" in launcher["command"]


def test_multiworker_pipeline_has_a_chief_and_workers(tmp_path):
    spec = _compile(tmp_path, hardware.resolve("multiworker", replica_count=4, machine_type="n1-standard-16",
                                               accelerator_type="NVIDIA_TESLA_T4", accelerator_count=1))
    chief, workers = _worker_pools(spec)
    assert (chief["replica_count"], workers["replica_count"]) == (1, 3)
    for pool in (chief, workers):
        assert pool["machine_spec"] == {"machine_type": "n1-standard-16", "accelerator_type": "NVIDIA_TESLA_T4",
                                        "accelerator_count": 1}
        assert pool["container_spec"]["image_uri"] == "localhost/mnistkit-gpu:0.1.0"
        assert "train_model" in pool["container_spec"]["args"]
    cpu_only = _worker_pools(_compile(tmp_path, hardware.resolve("multiworker")))
    assert [p["replica_count"] for p in cpu_only] == [1, 1]
    assert cpu_only[0]["machine_spec"] == {"machine_type": "n1-standard-8"}
    assert cpu_only[0]["container_spec"]["image_uri"] == "localhost/mnistkit-cpu:0.1.0"


@pytest.mark.parametrize("machine, accelerator, chips, topology, expected_topology, hosts", [
    ("cloud-tpu", "TPU_V3", 8, None, None, 1),
    ("ct5lp-hightpu-4t", "TPU_V5_LITEPOD", 4, None, "2x2", 1),  # v5e always carries a topology: one host's.
    ("ct5lp-hightpu-4t", "TPU_V5_LITEPOD", 4, "4x4", "4x4", 4),
])
def test_tpu_pipeline_carries_machine_accelerator_and_topology(tmp_path, machine, accelerator, chips, topology,
                                                               expected_topology, hosts):
    hw = hardware.resolve("tpu", machine_type=machine, accelerator_type=accelerator, tpu_topology=topology)
    assert hw.tpu_hosts == hosts
    # A TPU job is one replica whatever the hosts of its slice, the topology in the chief's machine spec
    # (test_vertex_contracts.py checks this is what the aiplatform client builds).
    spec = _compile(tmp_path, hw)
    (pool,) = _worker_pools(spec)
    assert pool["replica_count"] == 1
    expected = {"machine_type": machine, "accelerator_type": accelerator, "accelerator_count": chips}
    if expected_topology:
        expected["tpu_topology"] = expected_topology
    assert pool["machine_spec"] == expected
    assert pool["container_spec"]["image_uri"] == "localhost/mnistkit-tpu:0.1.0"
    # The training step is told to use the TPU of its own VM.
    train_inputs = spec["root"]["dag"]["tasks"]["train-model"]["inputs"]["parameters"]
    assert train_inputs["tpu"]["runtimeValue"]["constant"] == "local"


@pytest.mark.parametrize("argv, message", [
    (["--hardware", "fpga"], "--hardware: expected one of cpu, gpu, multiworker, tpu, found 'fpga'"),
    (["--hardware", "gpu", "--accelerator_type", "NVIDIA_K80"], "--accelerator_type: expected one of NVIDIA_L4,"),
    (["--hardware", "gpu", "--accelerator_count", "3"], "--accelerator_count: expected one of 1, 2, 4, 8 for "
     "NVIDIA_L4, found 3"),
    (["--hardware", "gpu", "--replica_count", "2"], "--replica_count: expected 1 for --hardware=gpu"),
    (["--hardware", "cpu", "--accelerator_type", "NVIDIA_L4"], "--accelerator_type: expected no accelerator"),
    (["--hardware", "multiworker", "--replica_count", "1"], "--replica_count: expected at least 2"),
    (["--hardware", "multiworker", "--accelerator_type", "NVIDIA_L4"], "--machine_type: expected a machine type "
     "that takes 1 x NVIDIA_L4"),
    (["--hardware", "tpu", "--machine_type", "n1-standard-8"], "--machine_type: expected a TPU machine type, one of "
     "cloud-tpu, ct5lp-hightpu-1t"),
    (["--hardware", "tpu", "--machine_type", "cloud-tpu", "--accelerator_type", "TPU_V5_LITEPOD"],
     "--accelerator_type: expected one of TPU_V2, TPU_V3 on cloud-tpu, found 'TPU_V5_LITEPOD'"),
    (["--hardware", "tpu", "--accelerator_count", "8"], "--accelerator_count: expected 4, the chips of one "
     "ct5lp-hightpu-4t host, found 8"),
    (["--hardware", "tpu", "--tpu_topology", "3x3"], "--tpu_topology: expected one of 2x2 (1 host), 2x4 (2 hosts)"),
    (["--hardware", "tpu", "--machine_type", "cloud-tpu", "--tpu_topology", "2x2"], "--tpu_topology: expected no "
     "topology with cloud-tpu"),
    (["--hardware", "gpu", "--tpu_topology", "2x2"], "--tpu_topology: expected no topology unless --hardware=tpu"),
    (["--tag", "bad tag"], "image tag: expected 1-128 of [A-Za-z0-9_.-]"),
    (["--tag", "v1\n"], "image tag: expected 1-128 of [A-Za-z0-9_.-]"),
    # Image names Docker (and so Vertex AI's pull) refuses: an upper-case path, a tag or digest in the registry.
    (["--registry", "us-docker.pkg.dev/My_Project/repo"], "image registry: expected a host[:port][/path] such as "
     "us-central1-docker.pkg.dev/PROJECT/REPO, the path lowercase letters and digits joined by '.', '_' or '-' "
     "(Docker's image names), found 'us-docker.pkg.dev/My_Project/repo'"),
    (["--registry", "us-docker.pkg.dev/p/r:latest"], "image registry: expected a host[:port][/path]"),
    (["--registry", "us-docker.pkg.dev/p/r@sha256"], "image registry: expected a host[:port][/path]"),
    (["--registry", "https://us-docker.pkg.dev/p/r"], "image registry: expected a host[:port][/path]"),
    # Given empty (a script's unset variable) is not "the default", which would name localhost images.
    (["--registry", ""], "image registry: expected a value, or none at all for the default, found ''"),
    (["--tag", ""], "image tag: expected a value, or none at all for the default, found ''"),
])
def test_unknown_or_inconsistent_hardware_is_refused(tmp_path, capsys, argv, message):
    output = tmp_path / "pipeline.yaml"
    assert compile_module.main(["--output", str(output), *argv]) == 1
    assert f"compile.py: error: {message}" in capsys.readouterr().err
    assert not output.exists() and os.listdir(tmp_path) == []


@pytest.mark.parametrize("name, message", [
    ("pipeline.txt", "expected a file name ending in .yaml, .yml, .json (what KFP writes), found .txt"),
    ("existing", "expected a file to write, found a directory"),
    ("a-file/pipeline.yaml", "expected a path in an existing directory, found a file {tmp_path}/a-file"),
])
def test_a_bad_output_path_is_named_not_kfps_scratch_file(tmp_path, capsys, name, message):
    (tmp_path / "existing").mkdir()
    (tmp_path / "a-file").write_text("not a directory")
    message = message.format(tmp_path=tmp_path)
    output = tmp_path / name
    assert compile_module.main(["--output", str(output)]) == 1
    assert capsys.readouterr().err == f"compile.py: error: --output {output}: {message}\n"
    assert sorted(os.listdir(tmp_path)) == ["a-file", "existing"]


def test_compile_command_writes_the_default_yaml_offline_in_seconds(tmp_path):
    output = tmp_path / "mnist_pipeline.yaml"
    # Any attempt to reach the network would go to a dead proxy and fail.
    dead = "http://127.0.0.1:9"
    env = {**os.environ, "HTTPS_PROXY": dead, "HTTP_PROXY": dead, "https_proxy": dead, "http_proxy": dead,
           "NO_PROXY": "", "no_proxy": ""}
    start = time.monotonic()
    done = subprocess.run([sys.executable, "pipelines/compile.py", "--output", str(output), "--hardware", "tpu",
                           "--machine_type", "cloud-tpu"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - start < 30
    assert f"wrote {output} (training on tpu, cloud-tpu, 8 x TPU_V3" in done.stdout
    assert yaml.safe_load(output.read_text())["pipelineInfo"]["name"] == "mnist-training"
    assert compile_module.DEFAULT_OUTPUT == os.path.join(REPO, "mnist_pipeline.yaml")


# --- Whole local runs. -------------------------------------------------------------------------------------

TINY = {"verify_checksums": False, "train_epochs": 1, "batch_size": 32, "max_train_examples": 600}


@pytest.fixture(scope="module")
def mirror(synthetic_data):
    """The synthetic data set served over HTTP on 127.0.0.1, like a mirror."""
    with serve_directory(synthetic_data) as url:
        yield url


def _run_ids(pipeline_root):
    return sorted(os.listdir(pipeline_root))


def test_whole_local_run_exports_a_model_that_classifies(mirror, tmp_path, synthetic_data):
    import tensorflow as tf

    from mnistkit import idx

    result = run_local.run(str(tmp_path), {"source": mirror, **TINY, "min_accuracy": 0.5})
    (run_dir,) = [os.path.join(tmp_path, r) for r in _run_ids(tmp_path)]
    assert result["run_dir"] == run_dir
    # Every step ran and left its outputs; export proves the gated branch really ran.
    assert sorted(os.listdir(run_dir)) == sorted(STEPS)
    assert sorted(os.listdir(os.path.join(run_dir, "download-data", "data"))) == sorted(idx.FILES)
    with open(os.path.join(run_dir, "validate-data", "report")) as f:
        assert "| train | 600 |" in f.read()
    assert os.path.exists(os.path.join(run_dir, "train-model", "model", "model.keras"))
    # Overrides given win; what is not given is the recipe's.
    trained = _trained_config(run_dir)
    fast = recipes.RECIPES["fast"]
    assert (trained["batch_size"], trained["train_epochs"]) == (TINY["batch_size"], TINY["train_epochs"])
    assert (trained["learning_rate"], trained["schedule"]) == (fast["learning_rate"], fast["schedule"])
    assert result["metrics"]["examples"] == 200 and result["metrics"]["accuracy"] >= 0.5
    assert result["verdict"].startswith("**Exported**: test accuracy")
    saved_model = result["saved_model"]
    assert saved_model and os.path.dirname(saved_model) == os.path.join(run_dir, "export-model", "saved_model")
    classify = tf.saved_model.load(saved_model).signatures["classify"]
    images, labels = idx.load_split(synthetic_data, idx.TEST)
    out = classify(image=tf.constant(images[:50].astype(np.float32) / 255.0))
    assert out["probabilities"].shape == (50, 10)
    assert np.mean(out["classes"].numpy() == labels[:50]) >= 0.5


def _trained_config(run_dir):
    with open(os.path.join(run_dir, "train-model", "model", "train_config.json")) as f:
        return json.load(f)


def test_recipe_seed_in_the_pipeline_trains_the_seeds_hyperparameters(mirror, tmp_path):
    """recipe=seed alone gives the seed's Adam 1e-4, batch 100, 40 epochs (the threshold of 0 stops it after one;
    the gate must then be 0 too: a stop_threshold below min_accuracy is refused)."""
    run_local.run(str(tmp_path), {"source": mirror, "verify_checksums": False, "recipe": "seed",
                                  "max_train_examples": 600, "stop_threshold": 0.0, "min_accuracy": 0.0})
    (run_dir,) = [os.path.join(tmp_path, r) for r in _run_ids(tmp_path)]
    trained = _trained_config(run_dir)
    assert (trained["batch_size"], trained["learning_rate"], trained["train_epochs"]) == (100, 1e-4, 40)
    assert (trained["schedule"], trained["precision"]) == ("constant", "float32")
    with open(os.path.join(run_dir, "train-model", "model", "history.json")) as f:
        assert [h["epoch"] for h in json.load(f)["evaluations"]] == [1]


def test_unreachable_threshold_skips_export_and_says_why(mirror, tmp_path, capsys):
    code = run_local.main(["--source", mirror, "--pipeline_root", str(tmp_path), "--param", "verify_checksums=false",
                           "--param", "train_epochs=1", "--param", "max_train_examples=64", "--param", "batch_size=32",
                           "--param", "learning_rate=0.000000001", "--param", "min_accuracy=0.99"])
    assert code == 0
    (run_dir,) = [os.path.join(tmp_path, r) for r in _run_ids(tmp_path)]
    assert "export-model" not in os.listdir(run_dir)
    assert {"train-model", "evaluate-model", "check-accuracy"} <= set(os.listdir(run_dir))
    with open(os.path.join(run_dir, "check-accuracy", "verdict")) as f:
        verdict = f.read()
    assert verdict.startswith("**Not exported**: test accuracy 0.") and "below min_accuracy 0.9900" in verdict
    out = capsys.readouterr().out
    assert "gate: **Not exported**" in out and "SavedModel: none (not exported)" in out
    # The run ends by printing where its HTML report is: a copy, named .html, of the evaluate step's artifact.
    report = os.path.join(run_dir, "report.html")
    assert out.rstrip().splitlines()[-1] == f"report: {report}"
    with open(report) as copy, open(os.path.join(run_dir, "evaluate-model", "report")) as artifact:
        assert copy.read() == artifact.read()
    browser.assert_report_shows_the_run(report, os.path.join(run_dir, "train-model", "model"),
                                        os.path.join(run_dir, "download-data", "data"), str(tmp_path / "report.png"))


def test_local_run_refuses_bad_parameters_before_running(tmp_path, capsys):
    code = run_local.main(["--source", "/nowhere", "--pipeline_root", str(tmp_path), "--param", "stop_threshold=7"])
    assert code == 1
    assert "run_local.py: error: parameter stop_threshold: expected a value in [0.0, 1.0], found 7.0" \
        in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_compiling_for_a_registry_under_the_version_tag_warns_of_the_cache(tmp_path, capsys, monkeypatch):
    """Two commits' templates were byte for byte the same: Vertex AI's cache would serve the old code's results."""
    monkeypatch.delenv("MNISTKIT_IMAGE_TAG", raising=False)
    output = str(tmp_path / "p.yaml")
    assert compile_module.main(["--output", output, "--registry", "us-docker.pkg.dev/p/r"]) == 0
    assert "note: the images are tagged with the package version" in capsys.readouterr().err
    assert compile_module.main(["--output", output, "--registry", "us-docker.pkg.dev/p/r", "--tag", "abc123"]) == 0
    assert compile_module.main(["--output", output]) == 0  # localhost: built here, not pushed.
    assert "note:" not in capsys.readouterr().err


def test_a_batch_larger_than_an_epoch_of_max_train_examples_is_refused_before_running(tmp_path, capsys):
    """It failed in the train step, after the data steps had run."""
    code = run_local.main(["--source", "/nowhere", "--pipeline_root", str(tmp_path), "--param",
                           "max_train_examples=100"])
    assert code == 1
    assert ("run_local.py: error: parameter batch_size: expected at most the 60 training examples of an epoch "
            "(recipe fast's epoch_fraction 0.6 of max_train_examples 100), found 160 (recipe fast's; set "
            "batch_size)") in capsys.readouterr().err
    assert os.listdir(tmp_path) == []
    # The same at the edge of the rule: 60 examples make one step of batch 60.
    pipeline.check_combination({"recipe": "fast", "max_train_examples": 100, "batch_size": 60})


def test_a_stop_threshold_below_min_accuracy_is_refused_before_running(tmp_path, capsys):
    """Training stopped at 0.54 >= stop_threshold 0.5, then the gate refused it for min_accuracy 0.9: a whole run
    that could export nothing."""
    code = run_local.main(["--source", "/nowhere", "--pipeline_root", str(tmp_path), "--param", "stop_threshold=0.5",
                           "--param", "min_accuracy=0.9"])
    assert code == 1
    assert ("run_local.py: error: parameter stop_threshold: expected at least min_accuracy 0.9 (training would stop "
            "before the export gate's accuracy), found 0.5") in capsys.readouterr().err
    assert os.listdir(tmp_path) == []
    pipeline.check_combination({"stop_threshold": 0.9, "min_accuracy": 0.9})  # The edge: equal is accepted.


@pytest.mark.parametrize("machine_type", ["n1-standard-2", "n1-highcpu-32", "e2-standard-2", "e2-highmem-16",
                                          "n2-highmem-8", "n2d-standard-224", "c2d-highcpu-2", "c3-standard-176",
                                          "c2-standard-60"])
def test_endpoint_machine_types_prediction_serves_are_accepted(machine_type):
    assert vertex_machines.serves_prediction(machine_type)
    pipeline.check_combination({"endpoint_machine_type": machine_type})  # Raises for one it refuses.


def test_every_serving_image_aiplatform_lists_of_the_defaults_tensorflow_is_accepted():
    """The default, and the same image in the europe and asia registries (a registry near the endpoint)."""
    images = pipeline.serving_images()
    assert images[0] == pipeline.DEFAULT_SERVING_IMAGE
    assert {image.split("-docker.pkg.dev")[0] for image in images} == {"us", "europe", "asia"}
    for image in images:
        pipeline.check_combination({"serving_image": image})


@pytest.mark.parametrize("argv, replicas", [
    (["--hardware", "multiworker", "--replica_count", "3"], 3),
    (["--hardware", "gpu", "--accelerator_type", "NVIDIA_TESLA_T4", "--accelerator_count", "4"], 4),
    (["--hardware", "multiworker", "--machine_type", "g2-standard-24", "--replica_count", "3"], 6),
    (["--hardware", "tpu", "--tpu_topology", "4x4"], 16),
    (["--hardware", "tpu", "--machine_type", "cloud-tpu", "--accelerator_type", "TPU_V3"], 8),
    ([], 1),
])
def test_the_templates_replicas_are_what_its_batch_must_divide_by(tmp_path, capsys, argv, replicas):
    """A template whose training could never take the recipe's batch compiled, submitted, and failed in the
    train step once its machines were up: `batch_size: expected a multiple of the 3 replicas, found 160`."""
    output = tmp_path / "p.yaml"
    assert compile_module.main(["--output", str(output), *argv]) == 0
    with open(output) as f:
        assert hardware.replicas_in(yaml.safe_load(f)) == replicas
    unfit = [f"{name}'s {r['batch_size']}" for name, r in recipes.RECIPES.items() if r["batch_size"] % replicas]
    err = capsys.readouterr().err
    assert (f"note: training runs as at least {replicas} replicas" in err) == bool(unfit), err


@pytest.mark.parametrize("root, message", [
    ("checkpoints", "parameter checkpoint_root: expected empty, gs://BUCKET[/PATH] or an absolute path, with no "
                    "'..' part, found 'checkpoints'"),
    # On Vertex AI, /gcs/b/../../tmp/ck is the VM's own disk: the checkpoints were gone when the job ended.
    ("gs://bucket/../../tmp/ck", "parameter checkpoint_root: expected empty, gs://BUCKET[/PATH] or an absolute "
                                 "path, with no '..' part, found 'gs://bucket/../../tmp/ck'"),
    ("/gcs/bucket/../../tmp/ck", "parameter checkpoint_root: expected empty, gs://BUCKET[/PATH] or an absolute "
                                 "path, with no '..' part, found '/gcs/bucket/../../tmp/ck'"),
    ("gs://bucket/ckpt", "parameter checkpoint_root: expected a local path, or a gs:// URI where Cloud Storage FUSE "
                         "is mounted at /gcs (as on Vertex AI), found gs://bucket/ckpt and nothing mounted at /gcs"),
])
def test_a_checkpoint_root_the_train_step_cannot_use_is_refused_before_the_run(tmp_path, capsys, root, message):
    assert not os.path.exists("/gcs")  # This machine has no Cloud Storage FUSE mount.
    code = run_local.main(["--source", str(tmp_path), "--pipeline_root", str(tmp_path / "root"),
                           "--param", f"checkpoint_root={root}"])
    assert code == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"run_local.py: error: {message}"
    assert not os.path.exists(tmp_path / "root")


def test_registering_with_no_project_is_refused_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    monkeypatch.delenv("GOOGLE_CLOUD_REGION", raising=False)
    monkeypatch.delenv("CLOUD_ML_PROJECT_ID", raising=False)
    code = run_local.main(["--source", str(tmp_path), "--pipeline_root", str(tmp_path / "root"),
                           "--param", "register=true"])
    assert code == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "run_local.py: error: register=true: project: expected the pipeline parameter (submit.py sets it from "
        "--project) or $GOOGLE_CLOUD_PROJECT or $CLOUD_ML_PROJECT_ID, found none")
    assert not os.path.exists(tmp_path / "root")


def test_a_missing_local_source_is_refused_before_the_pipeline_starts(tmp_path, capsys):
    missing = str(tmp_path / "missing")
    code = run_local.main(["--source", f"{tmp_path},{missing}", "--pipeline_root", str(tmp_path / "root")])
    assert code == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        f"run_local.py: error: --source {missing!r}: expected an existing local directory, found none"
    assert not os.path.exists(tmp_path / "root")


def test_a_failing_step_fails_the_run_and_names_it(tmp_path, capsys):
    empty = tmp_path / "empty"  # A mirror that is there but holds none of the four files.
    empty.mkdir()
    code = run_local.main(["--source", str(empty), "--pipeline_root", str(tmp_path / "root")])
    assert code == 1
    err = capsys.readouterr().err
    assert "run_local.py: error:" in err and "download-data" in err


def test_the_docker_runner_without_an_engine_is_one_line_before_anything_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{free_port()}")  # A port nothing listens on.
    code = run_local.main(["--runner", "docker", "--source", str(tmp_path), "--pipeline_root", str(tmp_path / "root")])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"run_local.py: error: --runner docker: expected a docker engine answering at "
                   f"{os.environ['DOCKER_HOST']} ($DOCKER_HOST), found none (Connection refused)"]
    assert not os.path.exists(tmp_path / "root")


def test_a_local_run_whose_reader_went_away_runs_to_the_end(mirror, tmp_path):
    """`run_local.py | head -1`: kfp's logging failed at the first step's output and the run stopped there,
    with a 60-line traceback."""
    read, write = os.pipe()
    os.close(read)  # No reader.
    done = subprocess.run([sys.executable, os.path.join(REPO, "pipelines", "run_local.py"), "--source", mirror,
                           "--pipeline_root", str(tmp_path), *[f"--param={k}={v}" for k, v in TINY.items()],
                           "--param", "min_accuracy=0"], cwd=REPO, stdout=write, stderr=subprocess.PIPE,
                          text=True, timeout=300)
    os.close(write)
    assert done.returncode == 0 and "Broken pipe" not in done.stderr, done.stderr[-3000:]
    (run_dir,) = [os.path.join(tmp_path, r) for r in _run_ids(tmp_path)]
    with open(os.path.join(run_dir, "evaluate-model", "report")) as page:
        assert open(os.path.join(run_dir, "report.html")).read() == page.read()
    assert os.listdir(os.path.join(run_dir, "export-model", "saved_model"))


@pytest.mark.parametrize("resumes, says", [
    (True, "rerun the same command to resume"),
    (False, "a rerun starts over (its checkpoints are in this run's directory); give --param checkpoint_root=DIR "
            "to runs that should resume")])
def test_a_stopped_local_run_says_whether_a_rerun_resumes(monkeypatch, capsys, resumes, says):
    """It said "rerun the same command to resume" without checkpoint_root too, and the rerun started over."""
    monkeypatch.setitem(run_local._STOPPING, "resumes", resumes)
    with pytest.raises(SystemExit) as stopped:
        run_local._stop()
    assert stopped.value.code == 143
    assert capsys.readouterr().err.strip() == ("run_local.py: stopped by SIGTERM; the step in progress was told to "
                                               f"save and stop: {says}")


@pytest.mark.parametrize("to_group", [False, True], ids=["to-the-process", "to-its-group"])
def test_sigterm_to_a_local_run_stops_its_step_which_saves_and_the_rerun_resumes(mirror, tmp_path, to_group):
    """SIGTERM ended run_local.py alone: its training step ran on with no parent, and a rerun raced with it.
    Sent to the process group (as `timeout` does), it also reached kfp's shell around the step, which died first:
    run_local.py no longer found the step, said none was running and ended while the step saved on unseen."""
    root, checkpoints = tmp_path / "root", tmp_path / "checkpoints"
    def command(epochs):
        return [sys.executable, os.path.join(REPO, "pipelines", "run_local.py"), "--source", mirror,
                "--pipeline_root", str(root), "--param", "verify_checksums=false", "--param", "batch_size=20",
                "--param", f"train_epochs={epochs}", "--param", "max_train_examples=600",
                "--param", "epochs_between_evals=30", "--param", "min_accuracy=0",
                "--param", f"checkpoint_root={checkpoints}"]

    log_path = tmp_path / "first.log"
    with open(log_path, "w") as log:
        first = subprocess.Popen(command(30), cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 180  # Until the train step has checkpointed its first epoch.
    while not glob.glob(str(checkpoints / "run-*" / "ckpt-1.index")) and first.poll() is None \
            and time.time() < deadline:
        time.sleep(0.1)
    assert first.poll() is None, log_path.read_text()[-3000:]
    if to_group:
        os.killpg(first.pid, signal.SIGTERM)
    else:
        first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=150) == 143, log_path.read_text()[-3000:]
    text = log_path.read_text()
    with pytest.raises(ProcessLookupError):  # Nothing of the run outlives it.
        os.killpg(first.pid, 0)
    saved = (r"SIGTERM (at epoch \d+, step \d+: saved \S+ckpt-\d+"
             r"|before epoch \d+: nothing lost since the last checkpoint)")
    assert re.search(rf"run_local.py: error: step train-model failed: Interrupted: {saved}; rerun to resume",
                     text), text[-3000:]
    assert text.strip().splitlines()[-1] == ("run_local.py: stopped by SIGTERM; the step in progress was told to "
                                             "save and stop: rerun the same command to resume")
    assert "Executing task 'evaluate-model'" not in text  # The run stopped with the step.
    # Nothing of the run is left running: the rerun trains alone and resumes where the step stopped.
    again = subprocess.run(command(3), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resumed from" in again.stdout + again.stderr
