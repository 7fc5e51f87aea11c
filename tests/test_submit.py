"""Submitting the compiled pipeline with the real aiplatform client to a loopback Vertex AI endpoint.

The endpoint is tests/vertex.py's HTTP server on 127.0.0.1: it records every
request and answers the calls a submission makes (the pipeline-root bucket
lookup and creation of the GCS JSON API, the pipeline job creation and
polling of the Vertex AI REST API, a KFP template upload, the Metadata calls
of an Experiment). Nothing reaches the internet.
"""

import json
import os
import re
import subprocess
import sys
import time

import pytest
import yaml

from mnistkit.files import BUCKET_RULE
from pipelines import compile as compile_module
from pipelines import hardware, submit
from tests.conftest import REPO
from tests.vertex import PROJECT, REGION, endpoint  # noqa: F401  (a fixture)

ACCOUNT = "runner@mnist-project.iam.gserviceaccount.com"
ROOT = "gs://mnist-pipeline-root/runs"
REGISTRY = f"{REGION}-docker.pkg.dev/{PROJECT}/mnist"


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> str:
    return compile_module.compile_pipeline(str(tmp_path_factory.mktemp("template") / "pipeline.yaml"),
                                           hardware.Hardware(), registry=REGISTRY)


def _args(template, url, *extra):
    return ["--template", template, "--project", PROJECT, "--region", REGION, "--pipeline_root", ROOT,
            "--service_account", ACCOUNT, "--api_endpoint", url, *extra]


def _pop_caching(node) -> list:
    """Removes every task's cachingOptions from a pipeline spec; returns them."""
    found = []
    if isinstance(node, dict):
        if "cachingOptions" in node:
            found.append(node.pop("cachingOptions"))
        for value in node.values():
            found += _pop_caching(value)
    elif isinstance(node, list):
        for value in node:
            found += _pop_caching(value)
    return found


def _job_requests(recorded):
    return [r for r in recorded if r["method"] == "POST" and r["path"].endswith("/pipelineJobs")]


def test_submission_carries_the_spec_parameters_and_service_account(endpoint, template, capsys):
    url, recorded, _ = endpoint
    code = submit.main(_args(template, url, "--param", "train_epochs=5", "--param", "min_accuracy=0.99",
                             "--param", "register=true", "--param", "recipe=seed", "--label", "team=vision",
                             "--caching", "off", "--display_name", "nightly"))
    assert code == 0
    (create,) = _job_requests(recorded)
    assert create["path"] == f"/v1/projects/{PROJECT}/locations/{REGION}/pipelineJobs"
    job = json.loads(create["body"])
    with open(template) as f:
        compiled = yaml.safe_load(f)
    sent = job["pipelineSpec"]
    # Caching off reaches every task of the spec; apart from that it is the compiled one.
    caching = _pop_caching(sent)
    assert caching and all(c == {"enableCache": False} for c in caching)
    _pop_caching(compiled)
    for key in ("root", "components", "deploymentSpec", "pipelineInfo"):
        assert sent[key] == json.loads(json.dumps(compiled[key])), key
    assert job["serviceAccount"] == ACCOUNT
    assert job["displayName"] == "nightly"
    assert job["labels"]["team"] == "vision"
    runtime = job["runtimeConfig"]
    assert runtime["gcsOutputDirectory"] == ROOT
    # The template's service_account (the account custom jobs run as), project and region (the Model
    # Registry's) are filled from the flags.
    assert runtime["parameterValues"] == {"train_epochs": 5, "min_accuracy": 0.99, "register": True,
                                          "recipe": "seed", "service_account": ACCOUNT, "project": PROJECT,
                                          "region": REGION}
    # The pipeline-root bucket was looked up, then created, before the job.
    bucket_calls = [(r["method"], r["path"]) for r in recorded if r["path"].startswith("/storage/")]
    assert bucket_calls[:2] == [("GET", "/storage/v1/b/mnist-pipeline-root"), ("POST", "/storage/v1/b")]
    assert f"submitted projects/{PROJECT}/locations/{REGION}/pipelineJobs/" in capsys.readouterr().out


def test_an_endpoint_the_deployment_would_refuse_is_refused_before_the_run(endpoint, template, capsys):
    """The deploy step runs after training: a mistyped endpoint, or one serving another model, cost the
    whole run's machines before it failed."""
    from tests.vertex import PARENT, deployed_endpoint, registered_model

    url, recorded, handler = endpoint
    deploy = ("--param", "register=true", "--param", "deploy=true")
    handler.models[:] = [registered_model("8", "fraud-model", "1")]
    handler.endpoints[:] = [deployed_endpoint("77", "shared", [("201", "8", "1", 100)])]
    for given, says in [("404", f"endpoint: expected an existing endpoint, found none at {PARENT}/endpoints/404"),
                        ("77", f"endpoint {PARENT}/endpoints/77: expected one serving only versions of mnist-cnn "
                               f"(a deployment takes all of an endpoint's traffic), found {PARENT}/models/8 at 100%")]:
        assert submit.main(_args(template, url, *deploy, "--param", f"endpoint={PARENT}/endpoints/{given}",
                                 "--upload_to", f"{url}/kfp/{PROJECT}/pipelines")) == 1
        assert capsys.readouterr().err.startswith(f"submit.py: error: {says}")
    assert not _job_requests(recorded)
    assert not [r for r in recorded if r["path"].startswith("/kfp/")]  # Nor is the template published.
    # None named like the model yet: the run creates it, and says so now.
    assert submit.main(_args(template, url, *deploy)) == 0
    assert "no endpoint named mnist-cnn yet: the run creates it" in capsys.readouterr().out
    assert len(_job_requests(recorded)) == 1 and len(handler.endpoints) == 1  # Nothing created by the check.


def test_caching_on_leaves_the_registry_and_endpoint_steps_uncached(endpoint, template):
    """aiplatform's enable_caching=True sets every task's option: a rerun would have reused the last run's
    baseline lookup and endpoint, and skipped the upload and the deployment."""
    url, recorded, _ = endpoint
    assert submit.main(_args(template, url, "--caching", "on")) == 0
    (create,) = _job_requests(recorded)
    tasks = {}

    def walk(node):
        for key, value in node.items() if isinstance(node, dict) else enumerate(node):
            if key == "tasks":
                tasks.update({name: task.get("cachingOptions", {}) for name, task in value.items()
                              if "componentRef" in task and not name.startswith("condition")})
            if isinstance(value, (dict, list)):
                walk(value)

    walk(json.loads(create["body"])["pipelineSpec"])
    uncached = sorted(name for name, options in tasks.items() if not options.get("enableCache"))
    # The -2 deployment steps are the kept baseline's (pipelines/pipeline.py _deploy, twice); each _deploy has
    # two undeploy steps, after a deployment and where the version served already.
    assert uncached == ["check-baseline", "deployment-endpoint", "deployment-endpoint-2", "make-default-version",
                        "model-deploy", "model-deploy-2", "model-evaluation-import", "model-upload", "model-upload-2",
                        "undeploy-earlier-versions", "undeploy-earlier-versions-2", "undeploy-earlier-versions-3",
                        "undeploy-earlier-versions-4"]
    assert all(tasks[name] == {"enableCache": True} for name in ("download-data", "train-model", "evaluate-model"))


def test_a_batch_the_templates_replicas_cannot_split_is_refused_before_anything_is_sent(endpoint, tmp_path,
                                                                                         capsys):
    url, recorded, _ = endpoint
    three = compile_module.compile_pipeline(str(tmp_path / "mw3.yaml"), hardware.resolve("multiworker",
                                                                                         replica_count=3),
                                            registry=REGISTRY)
    assert submit.main(_args(three, url)) == 1
    assert capsys.readouterr().err.strip() == (
        "submit.py: error: parameter batch_size: expected a multiple of the 3 replicas this template trains on, "
        "found 160 (recipe fast's; set batch_size)")
    assert submit.main(_args(three, url, "--param", "recipe=seed", "--param", "batch_size=100")) == 1
    assert "found 100\n" in capsys.readouterr().err
    assert not _job_requests(recorded)
    assert submit.main(_args(three, url, "--param", "batch_size=159")) == 0
    assert json.loads(_job_requests(recorded)[0]["body"])["runtimeConfig"]["parameterValues"]["batch_size"] == 159


def test_a_display_name_vertex_would_refuse_is_one_line_before_anything_is_sent(endpoint, template, capsys):
    """129 characters: a traceback from the client, after --upload_to had uploaded the template."""
    url, recorded, _ = endpoint
    assert submit.main(_args(template, url, "--display_name", "x" * 129, "--upload_to",
                             f"{url}/kfp/{PROJECT}/pipelines")) == 1
    assert capsys.readouterr().err.strip() == "submit.py: error: --display_name: expected 1-128 characters, found 129"
    assert not recorded


@pytest.mark.parametrize("source, says", [
    ("", "parameter source '': expected one source or several separated by commas, found an empty one"),
    ("gs://", f"parameter source 'gs://': expected gs://BUCKET[/PREFIX], BUCKET {BUCKET_RULE}, found no bucket name"),
    ("gs://mnist-google", f"parameter source 'gs://mnist-google': expected gs://BUCKET[/PREFIX], BUCKET {BUCKET_RULE}, "
                          "found 'mnist-google'"),
    ("gs://bkt,ftp://x/y", "parameter source: expected gs://BUCKET[/PREFIX], an http(s):// URL or a path under /gcs/ "
                         "(Cloud Storage FUSE, what the step on Vertex AI can read), found 'ftp://x/y'"),
    ("/home/me/mnist", "parameter source: expected gs://BUCKET[/PREFIX], an http(s):// URL or a path under /gcs/ "
                       "(Cloud Storage FUSE, what the step on Vertex AI can read), found '/home/me/mnist'"),
])
def test_a_source_the_download_step_could_not_read_is_refused_before_anything_is_sent(endpoint, template, capsys,
                                                                                      source, says):
    """run_local.py refused these; submit.py sent them, and the download step failed on Vertex AI."""
    url, recorded, _ = endpoint
    assert submit.main(_args(template, url, "--param", f"source={source}")) == 1
    assert capsys.readouterr().err.strip() == f"submit.py: error: {says}"
    assert not _job_requests(recorded)


def test_two_submits_in_the_same_second_get_job_ids_of_their_own(endpoint, template):
    """aiplatform's job ID is the pipeline's name and the second: the second of two submits was refused."""
    url, recorded, _ = endpoint
    assert submit.main(_args(template, url)) == submit.main(_args(template, url)) == 0
    first, second = (r["query"]["pipelineJobId"][0] for r in _job_requests(recorded))
    assert first != second and all(re.fullmatch(r"mnist-training-\d{14}-[0-9a-f]{6}", i) for i in (first, second))


def test_wait_polls_until_the_run_ends(endpoint, template, capsys):
    url, recorded, _ = endpoint
    assert submit.main(_args(template, url, "--wait")) == 0
    (create,) = _job_requests(recorded)
    job_id = create["query"]["pipelineJobId"][0]
    polled = [r["path"] for r in recorded if r["method"] == "GET" and "/pipelineJobs/" in r["path"]]
    assert polled and set(polled) == {f"/v1/projects/{PROJECT}/locations/{REGION}/pipelineJobs/{job_id}"}
    assert f"pipelineJobs/{job_id}: PIPELINE_STATE_SUCCEEDED" in capsys.readouterr().out


def test_template_upload_to_a_kfp_repository(endpoint, template, capsys):
    url, recorded, _ = endpoint
    assert submit.main(_args(template, url, "--upload_to", f"{url}/kfp/{PROJECT}/pipelines",
                             "--upload_tag", "v1", "--upload_tag", "latest")) == 0
    (upload,) = [r for r in recorded if r["path"].startswith("/kfp/")]
    assert upload["method"] == "POST"
    with open(template, "rb") as f:
        assert f.read() in upload["body"]
    assert b"v1,latest" in upload["body"]
    assert f"as {submit.PIPELINE_NAME} sha256:0123abcd" in capsys.readouterr().out
    assert len(_job_requests(recorded)) == 1


@pytest.mark.parametrize("extra, message", [
    (["--param", "stop_threshold=1.5"], "parameter stop_threshold: expected a value in [0.0, 1.0], found 1.5"),
    (["--param", "min_accuracy=-0.1"], "parameter min_accuracy: expected a value in [0.0, 1.0], found -0.1"),
    (["--param", "baseline_margin=2"], "parameter baseline_margin: expected a value in [0.0, 1.0], found 2.0"),
    (["--param", "endpoint=mnist"], "parameter endpoint: expected empty or projects/PROJECT/locations/REGION/"
     "endpoints/NUMBER, found 'mnist'"),
    (["--param", "train_epochs=-1"], "parameter train_epochs: expected at least 0, found -1"),
    (["--param", "batch_size=-64"], "parameter batch_size: expected at least 0, found -64"),
    (["--param", "learning_rate=-0.001"], "parameter learning_rate: expected at least 0.0, found -0.001"),
    (["--param", "batch_size=12.5"], "parameter batch_size: expected an integer, found '12.5'"),
    (["--param", "learning_rate=fast"], "parameter learning_rate: expected a number, found 'fast'"),
    (["--param", "register=yes"], "parameter register: expected true or false, found 'yes'"),
    (["--param", "recipe=slow"], "parameter recipe: expected one of fast, seed, found 'slow'"),
    (["--param", "epochs=3"], "parameter epochs: unknown; did you mean train_epochs? the pipeline takes "
     "baseline_margin, batch_size, "),
    (["--param", "label_smoothing=0"], "parameter label_smoothing: unknown; it is an mnist-train setting the "
     "pipeline does not expose (hyper(..., pipeline=...) in mnistkit/train_config.py); the pipeline takes "),
    (["--param", "train_epochs"], "override 'train_epochs': expected NAME=VALUE"),
    (["--label", "Team=x"], "--label 'Team=x': expected KEY=VALUE"),
    # Vertex AI refused more than 64 (after --upload_to had published the template); a repeated key lost a value.
    ([a for n in range(65) for a in ("--label", f"k{n}=v")], "--label: expected at most 64 labels (Vertex AI's "
     "limit per resource), found 65"),
    (["--label", "team=a", "--label", "team=b"], "--label 'team=b': expected each key once, found 'team' again"),
    # The Registry and deployment values are used only after training: each is refused before the run.
    (["--param", "train_epochs=99999999999999999999"], "parameter train_epochs: expected an integer of at most "
     "2**53 in size (Vertex AI passes numbers as doubles), found 99999999999999999999"),
    (["--param", "service_account=bob"], "parameter service_account: expected empty (Vertex AI's service agent) or "
     "a service account's e-mail such as NAME@PROJECT.iam.gserviceaccount.com or "
     "PROJECT_NUMBER-compute@developer.gserviceaccount.com, found 'bob'"),
    # A user's own address is no service account: a custom job refused it only in the train step.
    (["--param", "service_account=me@gmail.com"], "parameter service_account: expected empty (Vertex AI's service "
     "agent) or a service account's e-mail"),
    # Numbers as the help writes them: Python's int() and float() also read these.
    (["--param", "train_epochs=5_000"], "parameter train_epochs: expected an integer, found '5_000'"),
    (["--param", "train_epochs=\u0663"], "parameter train_epochs: expected an integer, found '\u0663'"),
    (["--param", "learning_rate=1_0e-3"], "parameter learning_rate: expected a number, found '1_0e-3'"),
    # 0 is the recipe's: these silently trained at the recipe's rate, where mnist-train refuses them.
    (["--param", "learning_rate=1e-400"], "parameter learning_rate: expected a number a double holds without "
     "rounding it to 0, found '1e-400'"),
    (["--param", "learning_rate=-0"], "parameter learning_rate: expected a number, and 0 without a minus sign, "
     "found '-0'"),
    (["--param", 'model_display_name=mnist "v2"'], "parameter model_display_name: expected 1-128 characters, none "
     "of them a quote, a backslash or a control character, found 'mnist \"v2\"'"),
    (["--param", "model_display_name=" + "m" * 129], "parameter model_display_name: expected 1-128 characters"),
    (["--param", "model_display_name="], "parameter model_display_name: expected 1-128 characters"),
    (["--param", "serving_image=nginx"], "parameter serving_image: expected a Vertex AI prebuilt TensorFlow 2 "
     "prediction image such as us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest, found 'nginx'"),
    (["--param", "checkpoint_root=/tmp/ck"], "parameter checkpoint_root: expected gs://BUCKET[/PATH] or a path "
     "under /gcs/ on Vertex AI (a machine's own disk is gone when a resubmitted run would resume), found '/tmp/ck'"),
    # Paths no bucket can have: the train step failed on them, after the data steps.
    (["--param", "checkpoint_root=/gcs/"], "parameter checkpoint_root: expected gs://BUCKET[/PATH] or "
     "/gcs/BUCKET[/PATH], a Cloud Storage bucket name (3-63 of [a-z0-9_-], or dotted parts of up to 63 each, not "
     "starting with 'goog', not containing 'google', not an IP address), found '/gcs/'"),
    (["--param", "checkpoint_root=/gcs/bucket with space/x"], "parameter checkpoint_root: expected gs://BUCKET[/PATH] "
     "or /gcs/BUCKET[/PATH], a Cloud Storage bucket name"),
    (["--param", "checkpoint_root=gs://goog-ckpt/x"], "parameter checkpoint_root: expected gs://BUCKET[/PATH] or "
     "/gcs/BUCKET[/PATH], a Cloud Storage bucket name"),
    (["--param", "checkpoint_root=/gcs/my-google-ckpt/x"], "parameter checkpoint_root: expected gs://BUCKET[/PATH] "
     "or /gcs/BUCKET[/PATH], a Cloud Storage bucket name"),
    (["--param", "checkpoint_root=gs://10.0.0.1/x"], "parameter checkpoint_root: expected gs://BUCKET[/PATH] or "
     "/gcs/BUCKET[/PATH], a Cloud Storage bucket name"),
    # Out of the bucket: the VM's own /tmp/ck, gone when the job ended, or another bucket past the name check.
    (["--param", "checkpoint_root=gs://bkt/../../tmp/ck"], "parameter checkpoint_root: expected empty, "
     "gs://BUCKET[/PATH] or an absolute path, with no '..' part, found 'gs://bkt/../../tmp/ck'"),
    (["--param", "checkpoint_root=/gcs/bkt/ck/../../goog-x/ck"], "parameter checkpoint_root: expected empty, "
     "gs://BUCKET[/PATH] or an absolute path, with no '..' part, found '/gcs/bkt/ck/../../goog-x/ck'"),
    # A source the download step could not read: no host (it failed after four attempts), no bucket after /gcs/.
    (["--param", "source=https://"], "parameter source 'https://': expected http(s)://HOST[/PATH], found no host"),
    (["--param", "source=https://exa mple.com/x"], "parameter source 'https://exa mple.com/x': expected "
     "http(s)://HOST[/PATH], found 'exa mple.com', not a host"),
    (["--param", "source=/gcs/"], "parameter source: expected /gcs/BUCKET[/PREFIX], BUCKET a Cloud Storage bucket "
     "name (3-63 of [a-z0-9_-], or dotted parts of up to 63 each, not starting with 'goog', not containing "
     "'google', not an IP address), found '/gcs/'"),
    (["--param", "source=gs://mnist-mirror/m,/gcs//mnist"], "parameter source: expected /gcs/BUCKET[/PREFIX]"),
    # The endpoint has no accelerator, and the export is known to load in the default image's TensorFlow.
    (["--param", "serving_image=us-docker.pkg.dev/vertex-ai/prediction/tf2-gpu.2-15:latest"], "parameter "
     "serving_image: expected a tf2-cpu prediction image of TensorFlow 2.15 or newer (the endpoint has no "
     "accelerator; the export is tested in 2.15) that google-cloud-aiplatform lists: "
     "us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest, "
     "europe-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest, "
     "asia-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest; "
     "found us-docker.pkg.dev/vertex-ai/prediction/tf2-gpu.2-15:latest"),
    # Only images aiplatform lists: a made-up version, another registry or a missing tag became the Registry's
    # default version and failed only when deployed.
    (["--param", "serving_image=us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-99:latest"], "parameter "
     "serving_image: expected a tf2-cpu prediction image of TensorFlow 2.15 or newer"),
    (["--param", "serving_image=my-registry.example.com/anything/tf2-cpu.2-15"], "parameter "
     "serving_image: expected a tf2-cpu prediction image of TensorFlow 2.15 or newer"),
    (["--param", "serving_image=us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15"], "parameter "
     "serving_image: expected a tf2-cpu prediction image of TensorFlow 2.15 or newer"),
    (["--param", "serving_image=europe-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.1-15"], "parameter "
     "serving_image: expected a tf2-cpu prediction image of TensorFlow 2.15 or newer"),
    (["--param", "serving_image=us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-1"], "parameter "
     "serving_image: expected a tf2-cpu prediction image of TensorFlow 2.15 or newer"),
    (["--param", "endpoint_machine_type=n1 standard"], "parameter endpoint_machine_type: expected a machine type "
     "such as n1-standard-2, found 'n1 standard'"),
    # Only CPU machine types prediction serves: the deploy step refused the others after the Registry had changed.
    (["--param", "endpoint_machine_type=g2-standard-8"], "parameter endpoint_machine_type: expected a CPU machine "
     "type Vertex AI prediction serves (n1-standard-2, e2-standard-4, n2-highmem-8, ...; the endpoint gets no "
     "accelerator and the serving image is tf2-cpu), found 'g2-standard-8'"),
    (["--param", "endpoint_machine_type=ct5lp-hightpu-1t"], "parameter endpoint_machine_type: expected a CPU "
     "machine type Vertex AI prediction serves"),
    (["--param", "endpoint_machine_type=n1-standard-1"], "parameter endpoint_machine_type: expected a CPU machine "
     "type Vertex AI prediction serves"),
    (["--param", "endpoint_machine_type=e2-medium"], "parameter endpoint_machine_type: expected a CPU machine "
     "type Vertex AI prediction serves"),
    (["--param", "endpoint_machine_type=foo-bar"], "parameter endpoint_machine_type: expected a CPU machine "
     "type Vertex AI prediction serves"),
    (["--param", "endpoint_machine_type=c2-standard-2"], "parameter endpoint_machine_type: expected a CPU machine "
     "type Vertex AI prediction serves"),
    (["--param", "project=Not_A_Project"], "parameter project: expected empty or a project ID"),
    (["--param", "region=mars-north9"], "parameter region: expected a region Vertex AI serves (google-cloud-"
     "aiplatform's SUPPORTED_REGIONS, e.g. us-central1, europe-west4), found 'mars-north9'"),
    (["--param", "deploy=true"], "parameter deploy: expected together with register=true (only a registered "
     "version is deployed), found deploy=true with register=false"),
    (["--param", "register=true", "--param", "endpoint=projects/1/locations/europe-west4/endpoints/2"],
     "parameter endpoint: expected an endpoint in region us-central1 (where the model is registered), found one "
     "in europe-west4: projects/1/locations/europe-west4/endpoints/2"),
])
def test_bad_overrides_never_reach_the_endpoint(endpoint, template, capsys, extra, message):
    url, recorded, _ = endpoint
    assert submit.main(_args(template, url, *extra)) == 1
    assert f"submit.py: error: {message}" in capsys.readouterr().err
    assert recorded == []


@pytest.mark.parametrize("flag, value, message", [
    ("--pipeline_root", "/local/dir", "--pipeline_root: expected gs://BUCKET[/PATH]"),
    ("--service_account", "runner", "--service_account: expected an e-mail"),
    ("--project", "My Project", "--project: expected a project ID"),
    ("--region", "mars", "--region: expected a region such as us-central1"),
    ("--region", "us-central9", "--region: expected a region Vertex AI serves"),
    # Values are matched whole: a trailing newline is not part of a valid name.
    ("--region", "us-central1\n", "--region: expected a region such as us-central1"),
    ("--project", "mnist-project\n", "--project: expected a project ID"),
    ("--service_account", ACCOUNT + "\n", "--service_account: expected an e-mail"),
    ("--pipeline_root", "gs://goog-bucket/runs", "--pipeline_root: expected gs://BUCKET[/PATH], a Cloud Storage "
     "bucket name"),
    ("--pipeline_root", "gs://mnist..root/runs", "--pipeline_root: expected gs://BUCKET[/PATH]"),
    ("--pipeline_root", "gs://" + "b" * 64 + "/runs", "--pipeline_root: expected gs://BUCKET[/PATH]"),
    # A trailing "/" or an empty part gave the custom job's outputs a "//" the TensorBoard uploader reads apart.
    ("--pipeline_root", "gs://mnist-pipeline-root/runs/", "--pipeline_root: expected gs://BUCKET[/PATH], a Cloud "
     "Storage bucket name (3-63 of [a-z0-9_-], or dotted parts of up to 63 each, not starting with 'goog', not "
     "containing 'google', not an IP address), and a PATH with no empty part and no trailing '/', found "
     "'gs://mnist-pipeline-root/runs/'"),
    ("--pipeline_root", "gs://mnist-pipeline-root//runs", "--pipeline_root: expected gs://BUCKET[/PATH]"),
    ("--pipeline_root", "gs://mnist-pipeline-root/", "--pipeline_root: expected gs://BUCKET[/PATH]"),
    # Names Cloud Storage refuses; aiplatform only logs the failed bucket creation and sends the job anyway.
    ("--pipeline_root", "gs://my-google-bucket/runs", "--pipeline_root: expected gs://BUCKET[/PATH], a Cloud Storage "
     "bucket name"),
    ("--pipeline_root", "gs://192.168.1.1/runs", "--pipeline_root: expected gs://BUCKET[/PATH], a Cloud Storage "
     "bucket name"),
])
def test_bad_settings_never_reach_the_endpoint(endpoint, template, capsys, flag, value, message):
    url, recorded, _ = endpoint
    args = _args(template, url)
    args[args.index(flag) + 1] = value
    assert submit.main(args) == 1
    assert message in capsys.readouterr().err
    assert recorded == []


def test_service_account_is_required(template, capsys):
    args = _args(template, "http://127.0.0.1:9")
    i = args.index("--service_account")
    with pytest.raises(SystemExit) as e:
        submit.main(args[:i] + args[i + 2:])
    assert e.value.code == 2
    assert "--service_account" in capsys.readouterr().err


def test_missing_template_is_refused(endpoint, tmp_path, capsys):
    url, recorded, _ = endpoint
    assert submit.main(_args(str(tmp_path / "none.yaml"), url)) == 1
    assert "none.yaml: expected a compiled pipeline (python pipelines/compile.py), found none" \
        in capsys.readouterr().err
    assert recorded == []


# --- Images Vertex AI can pull, credentials, Experiments. ----------------------------------------------------

def _edited(template, tmp_path, edit) -> str:
    """A copy of `template` changed by edit(spec)."""
    with open(template) as f:
        spec = yaml.safe_load(f)
    edit(spec)
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def test_a_localhost_template_is_refused_in_seconds_before_any_network_call(endpoint, tmp_path):
    """The command as users run it: a fresh interpreter, every proxy dead, the endpoint recording."""
    url, recorded, _ = endpoint
    local_template = compile_module.compile_pipeline(str(tmp_path / "local.yaml"), hardware.Hardware(),
                                                     registry="localhost")
    dead = "http://127.0.0.1:9"
    env = {**os.environ, "HTTPS_PROXY": dead, "HTTP_PROXY": dead, "https_proxy": dead, "http_proxy": dead}
    start = time.monotonic()
    done = subprocess.run([sys.executable, "pipelines/submit.py", *_args(local_template, url)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - start
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"submit.py: error: {local_template}: image 'localhost/mnistkit-cpu:")
    assert "cannot be pulled by Vertex AI" in line
    assert "python pipelines/compile.py --registry REGION-docker.pkg.dev/PROJECT/REPO" in line
    assert "Cloud Build" in line and "--allow_unpullable_images" in line
    assert recorded == []
    assert elapsed < 5, elapsed


def test_a_custom_job_worker_pool_image_is_checked_too(endpoint, tmp_path, capsys):
    url, recorded, _ = endpoint
    gpu = compile_module.compile_pipeline(str(tmp_path / "gpu.yaml"), hardware.resolve(
        "gpu", machine_type="g2-standard-8"), registry=REGISTRY)

    def local_pool(spec):
        for pool in spec["components"]["comp-train-model"]["inputDefinitions"]["parameters"]["worker_pool_specs"][
                "defaultValue"]:
            pool["container_spec"]["image_uri"] = "localhost/mnistkit-gpu:0.1.0"

    assert submit.main(_args(gpu, url)) == 0  # As compiled: every image, the launcher's too, has a registry.
    recorded.clear()
    assert submit.main(_args(_edited(gpu, tmp_path, local_pool), url)) == 1
    err = capsys.readouterr().err
    assert "image 'localhost/mnistkit-gpu:0.1.0' (comp-train-model) cannot be pulled by Vertex AI" in err
    assert recorded == []


def test_a_bare_image_name_is_refused_and_the_flag_lets_it_through(endpoint, template, tmp_path, capsys):
    url, recorded, _ = endpoint

    def bare(spec):
        spec["deploymentSpec"]["executors"]["exec-download-data"]["container"]["image"] = "mnistkit-cpu:0.1.0"

    edited = _edited(template, tmp_path, bare)
    assert submit.main(_args(edited, url)) == 1
    assert "image 'mnistkit-cpu:0.1.0' (exec-download-data) cannot be pulled" in capsys.readouterr().err
    assert recorded == []
    assert submit.main(_args(edited, url, "--allow_unpullable_images")) == 0
    (create,) = _job_requests(recorded)
    executors = json.loads(create["body"])["pipelineSpec"]["deploymentSpec"]["executors"]
    assert executors["exec-download-data"]["container"]["image"] == "mnistkit-cpu:0.1.0"


def test_no_credentials_is_one_line_saying_where_they_were_looked_for(template, tmp_path):
    """No aiplatform.init with anonymous credentials here: the real Application Default Credentials lookup runs."""
    env = {k: v for k, v in os.environ.items() if k != "GOOGLE_APPLICATION_CREDENTIALS"}
    env.update(CLOUDSDK_CONFIG=str(tmp_path / "gcloud"), GCE_METADATA_HOST="127.0.0.1:9",
               GCE_METADATA_IP="127.0.0.1:9", NO_GCE_CHECK="true")
    done = subprocess.run([sys.executable, "pipelines/submit.py", *_args(template, "http://127.0.0.1:9")], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("submit.py: error: no Google Cloud credentials found: looked in "
                           "$GOOGLE_APPLICATION_CREDENTIALS (unset), gcloud's ")
    assert str(tmp_path / "gcloud" / "application_default_credentials.json") in line
    assert "run `gcloud auth application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS" in line


def test_experiment_is_attached_to_the_pipeline_job(endpoint, template, capsys):
    url, recorded, _ = endpoint
    assert submit.main(_args(template, url, "--experiment", "mnist-recipes")) == 0
    (create,) = _job_requests(recorded)
    job_id = create["query"]["pipelineJobId"][0]
    store = f"/v1/projects/{PROJECT}/locations/{REGION}/metadataStores/default"
    # The experiment is a Metadata context of type system.Experiment, created because it did not exist...
    (made,) = [r for r in recorded if r["method"] == "POST" and r["path"] == f"{store}/contexts"]
    assert made["query"]["contextId"] == ["mnist-recipes"]
    assert json.loads(made["body"])["schemaTitle"] == "system.Experiment"
    assert recorded.index(made) < recorded.index(create)  # Checked before the job exists.
    # ...and the job's run context becomes its child once the job is created.
    (attach,) = [r for r in recorded if r["path"].endswith(":addContextChildren")]
    assert attach["path"] == f"{store}/contexts/mnist-recipes:addContextChildren"
    assert json.loads(attach["body"])["childContexts"] == [
        f"projects/{PROJECT}/locations/{REGION}/metadataStores/default/contexts/{job_id}"]
    assert recorded.index(create) < recorded.index(attach)


def test_a_bad_experiment_name_never_reaches_the_endpoint(endpoint, template, capsys):
    url, recorded, _ = endpoint
    assert submit.main(_args(template, url, "--experiment", "My Runs")) == 1
    assert "--experiment: expected 1-128 of [a-z0-9-]" in capsys.readouterr().err
    assert recorded == []


def test_explicit_params_win_over_the_flags_they_default_to(endpoint, template):
    from tests.vertex import deployed_endpoint

    url, recorded, handler = endpoint
    other = "trainer@mnist-project.iam.gserviceaccount.com"
    endpoint_name = f"projects/{PROJECT}/locations/europe-west4/endpoints/123"
    handler.endpoints[:] = [{**deployed_endpoint("123", "serving", []), "name": endpoint_name}]
    assert submit.main(_args(template, url, "--param", f"service_account={other}", "--param", "region=europe-west4",
                             "--param", "register=true", "--param", "deploy=true",
                             "--param", f"endpoint={endpoint_name}")) == 0
    (create,) = _job_requests(recorded)
    job = json.loads(create["body"])
    assert job["runtimeConfig"]["parameterValues"] == {"service_account": other, "project": PROJECT,
                                                       "region": "europe-west4", "register": True, "deploy": True,
                                                       "endpoint": endpoint_name}
    assert job["serviceAccount"] == ACCOUNT  # The run itself still acts as --service_account.


def test_a_project_number_and_a_dotted_bucket_are_accepted(template):
    args = submit.parser().parse_args(_args(template, "http://127.0.0.1:9", "--project", "123456789012",
                                            "--pipeline_root", "gs://runs.mnist.example.com/runs"))
    values, _ = submit.check(args)
    assert values["project"] == "123456789012"


@pytest.mark.parametrize("extra", [
    ["--pipeline_root", "gs://mnist-pipeline-root"],
    ["--param", "checkpoint_root=gs://ckpt.mnist.example.com/mnist-a"],
    ["--param", "checkpoint_root=/gcs/mnist-ckpt/mnist-a"],
    ["--param", "source=/gcs/mnist-mirror/mnist,https://example.com/mnist/"],
    [a for n in range(64) for a in ("--label", f"k{n}=v")],
    ["--param", "service_account=123456789012-compute@developer.gserviceaccount.com",
     "--service_account", "service-123456789012@gcp-sa-aiplatform-cc.iam.gserviceaccount.com"],
])
def test_names_cloud_storage_takes_64_labels_and_service_accounts_are_accepted(template, extra):
    """The new refusals' other side: names they must let through reach the run as they were given."""
    values, labels = submit.check(submit.parser().parse_args(_args(template, "http://127.0.0.1:9", *extra)))
    assert labels == ({f"k{n}": "v" for n in range(64)} if "--label" in extra else {})
    for given in extra:
        name, _, value = given.partition("=")
        if name in ("checkpoint_root", "source", "service_account"):
            assert values[name] == value


@pytest.fixture(scope="module")
def tensorboard_template(tmp_path_factory) -> str:
    board = "projects/mnist-project/locations/europe-west4/tensorboards/7"
    return compile_module.compile_pipeline(
        str(tmp_path_factory.mktemp("tensorboard") / "pipeline.yaml"),
        hardware.resolve("gpu", machine_type="g2-standard-8", tensorboard=board), registry=REGISTRY)


def test_a_tensorboard_of_another_region_is_refused_before_submission(endpoint, tensorboard_template, capsys):
    url, recorded, _ = endpoint
    assert submit.main(_args(tensorboard_template, url)) == 1
    assert capsys.readouterr().err == (
        "submit.py: error: --region: expected europe-west4, the region of the template's TensorBoard "
        "projects/mnist-project/locations/europe-west4/tensorboards/7 (a job uploads only to a TensorBoard of its "
        "own region), found 'us-central1'\n")
    assert recorded == []


def test_a_tensorboard_job_needs_a_service_account(endpoint, tensorboard_template, capsys):
    url, recorded, _ = endpoint
    args = _args(tensorboard_template, url, "--param", "service_account=")
    args[args.index("--region") + 1] = "europe-west4"
    assert submit.main(args) == 1
    assert "parameter service_account: expected an account for the training job, which uploads to the " \
        "TensorBoard projects/mnist-project/locations/europe-west4/tensorboards/7, found an empty one" in \
        capsys.readouterr().err
    assert recorded == []
    args = _args(tensorboard_template, url)
    args[args.index("--region") + 1] = "europe-west4"
    assert submit.main(args) == 0  # With the run's own account it goes through.


def test_a_request_vertex_refuses_ends_in_one_line(endpoint, template, capsys):
    url, recorded, handler = endpoint
    handler.refuse_jobs = "Service account runner@mnist-project.iam.gserviceaccount.com does not exist."
    assert submit.main(_args(template, url)) == 1
    err = capsys.readouterr().err
    # The REST transport puts the request before Vertex AI's message (POST URL: message).
    assert err.startswith("submit.py: error: BadRequest (400): ") and err.count("\n") == 1
    assert err.endswith("Service account runner@mnist-project.iam.gserviceaccount.com does not exist.\n")
    assert _job_requests(recorded)  # It was sent, and refused.
