"""Registering in the Vertex AI Model Registry: the baseline gate run locally, and GCPC's steps as compiled.

The gate (components/registry.py check_baseline) runs through kfp.local with
the real aiplatform client against tests/vertex.py's loopback endpoint, whose
Registry holds what each test puts there. The upload, evaluation import and
deployment are GCPC container components: kfp.local's SubprocessRunner
refuses them and their launchers call the real Google endpoints, so what they
are given is tested in the compiled spec (and, for the evaluation file, with
GCPC's own reader).
"""

import json
import os
import re

import pytest
import yaml
from google_cloud_pipeline_components.types import artifact_types
from kfp import local
from kfp.dsl import Model

from components import component
from components.registry import check_baseline
from mnistkit import registry
from pipelines import compile as compile_module
from pipelines import hardware, pipeline
from tests.conftest import serve_directory
from tests.vertex import (PARENT, PROJECT, REGION, deployed_endpoint, endpoint,  # noqa: F401  (a fixture)
                          registered_model)

pytestmark = [pytest.mark.filterwarnings("ignore:You may be attemping to run a task:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:Task .model-upload:UserWarning")]

NAME = "mnist-cnn"
PERFECT_9_OF_10 = [[9, 1], [1, 9]]  # Accuracy 0.9.
PERFECT_99_OF_100 = [[99, 1], [1, 99]]  # Accuracy 0.99.


@pytest.fixture
def vertex(endpoint, tmp_path, monkeypatch):  # noqa: F811
    """kfp.local in this environment, its steps pointed at the loopback endpoint; yields (recorded, handler)."""
    url, recorded, handler = endpoint
    monkeypatch.setenv(registry.API_ENDPOINT_ENV, url)
    monkeypatch.setenv(registry.PROJECT_ENV, PROJECT)
    monkeypatch.setenv(registry.LOCATION_ENV, REGION)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    return recorded, handler


def _gate(accuracy, margin=0.002):
    task = component(check_baseline)(accuracy=accuracy, display_name=NAME, baseline_margin=margin)
    with open(task.outputs["verdict"].path) as f:
        return task.outputs["Output"], f.read().strip(), task.outputs["parent_model"]


def _registry_calls(recorded):
    return [(r["method"], r["path"], r["query"].get("filter")) for r in recorded if "/models" in r["path"]]


def test_first_model_has_no_baseline_and_is_registered_as_a_new_model(vertex):
    recorded, _ = vertex
    decision, verdict, _ = _gate(0.95)
    assert decision == registry.NEW_MODEL
    assert verdict == (f"**Registered as a new model** `{NAME}`: no model of that name exists, so there is no "
                       "baseline; test accuracy 0.9500 passed min_accuracy.")
    assert _registry_calls(recorded) == [("GET", f"/v1/{PARENT}/models", [f'display_name="{NAME}"'])]


def test_a_better_baseline_keeps_the_new_model_out_and_the_verdict_names_it(vertex):
    recorded, handler = vertex
    handler.models.append(registered_model("42", NAME, "3", PERFECT_99_OF_100))
    decision, verdict, _ = _gate(0.95, margin=0.01)
    assert decision == registry.KEEP_BASELINE
    assert verdict == (f"**Not registered**: test accuracy 0.9500 against the baseline `{PARENT}/models/42` "
                       "version 3 (the default version) with test accuracy 0.9900 and baseline_margin 0.0100: "
                       "below the floor 0.9800; the baseline stays the default version.")
    # The baseline's accuracy came from its default version's evaluation.
    assert ("GET", f"/v1/{PARENT}/models/42@3/evaluations", None) in _registry_calls(recorded)


def test_the_gate_names_the_baseline_version_a_run_that_keeps_it_deploys(vertex):
    _, handler = vertex
    handler.models.append(registered_model("42", NAME, "3", PERFECT_99_OF_100))
    task = component(check_baseline)(accuracy=0.95, display_name=NAME, baseline_margin=0.01)
    assert task.outputs["Output"] == registry.KEEP_BASELINE
    kept = task.outputs["baseline_version"]
    assert kept.metadata["resourceName"] == f"{PARENT}/models/42@3"  # What GCPC's ModelDeployOp deploys.
    assert kept.uri == f"https://{REGION}-aiplatform.googleapis.com/v1/{PARENT}/models/42@3"


def test_a_worse_baseline_gets_a_new_version_with_that_model_as_parent(vertex):
    _, handler = vertex
    handler.models.append(registered_model("42", NAME, "3", PERFECT_9_OF_10))
    decision, verdict, parent = _gate(0.95)
    assert decision == registry.NEW_VERSION
    assert verdict.startswith(f"**Registered as a new version**: test accuracy 0.9500 against the baseline "
                              f"`{PARENT}/models/42` version 3 (the default version) with test accuracy 0.9000")
    # What GCPC's ModelUploadOp reads to send `parent_model`.
    assert parent.metadata["resourceName"] == f"{PARENT}/models/42"
    assert parent.uri == f"https://{REGION}-aiplatform.googleapis.com/v1/{PARENT}/models/42"


def test_within_the_margin_is_registered_and_a_baseline_without_evaluation_passes_on_the_threshold(vertex):
    _, handler = vertex
    handler.models.append(registered_model("42", NAME, "3", PERFECT_99_OF_100))
    decision, verdict, _ = _gate(0.985, margin=0.01)
    assert decision == registry.NEW_VERSION and "(floor 0.9800)" in verdict
    handler.models[:] = [registered_model("7", NAME, "1")]
    decision, verdict, parent = _gate(0.95)
    assert decision == registry.NEW_VERSION
    assert "the baseline carries no evaluation with a confusion matrix" in verdict and "models/7` version 1" in verdict
    assert parent.metadata["resourceName"] == f"{PARENT}/models/7"


def test_a_rerun_whose_export_came_from_the_cache_does_not_register_the_same_savedmodel_again(vertex):
    """Equal accuracy passes the margin: every rerun served from the cache up to the export added a version of
    the same files, deployed it and undeployed the identical one before it."""
    from kfp import dsl

    _, handler = vertex
    same = "gs://bucket/root/run-1/export-model/saved_model/1796000000"
    handler.models[:] = [registered_model("7", NAME, "4", PERFECT_99_OF_100, artifact_uri=same)]

    @dsl.pipeline
    def gate(export_uri: str) -> str:
        export = dsl.importer(artifact_uri="gs://bucket/root/export-model/saved_model", artifact_class=Model,
                              metadata={"export_uri": export_uri})
        return component(check_baseline)(accuracy=0.99, display_name=NAME, baseline_margin=0.002,
                                         saved_model=export.output).outputs["Output"]

    assert gate(export_uri=same).output == registry.KEEP_BASELINE
    assert gate(export_uri=same.replace("run-1", "run-2")).output == registry.NEW_VERSION
    decision, verdict = registry.decide(0.99, NAME, registry.Baseline(f"{PARENT}/models/7", "4", 0.99,
                                                                      artifact_uri=same), 0.002, same + "/")
    assert (decision, verdict) == (registry.KEEP_BASELINE, (
        f"**Not registered**: the baseline `{PARENT}/models/7` version 4 (the default version) is this very "
        f"SavedModel ({same}/), from a run whose steps up to the export were served from the cache.\n"))


def test_the_gate_hands_on_the_project_and_region_it_resolved_or_stops_in_one_line(vertex, monkeypatch, capfd):
    """Empty parameters (a template run from the console, not by submit.py) reached GCPC's upload as they were,
    and it called https://-aiplatform.googleapis.com/v1/projects//locations//models:upload."""
    monkeypatch.delenv(registry.PROJECT_ENV)
    monkeypatch.delenv(registry.LOCATION_ENV)
    monkeypatch.setenv(registry.VERTEX_PROJECT_ENV, PROJECT)
    monkeypatch.setenv(registry.VERTEX_LOCATION_ENV, REGION)
    task = component(check_baseline)(accuracy=0.95, display_name=NAME, baseline_margin=0.002)
    assert (task.outputs["registry_project"], task.outputs["registry_location"]) == (PROJECT, REGION)
    monkeypatch.setenv(registry.VERTEX_PROJECT_ENV, "not-this-project")  # The parameters win.
    monkeypatch.setenv(registry.VERTEX_LOCATION_ENV, "europe-west4")
    task = component(check_baseline)(accuracy=0.95, display_name=NAME, baseline_margin=0.002, project=PROJECT,
                                     location=REGION)
    assert (task.outputs["registry_project"], task.outputs["registry_location"]) == (PROJECT, REGION)
    monkeypatch.delenv(registry.VERTEX_PROJECT_ENV)
    with pytest.raises(RuntimeError, match="check-baseline"):
        component(check_baseline)(accuracy=0.95, display_name=NAME, baseline_margin=0.002)
    out = capfd.readouterr()
    assert ("ValueError: project: expected the pipeline parameter (submit.py sets it from --project) or "
            "$GOOGLE_CLOUD_PROJECT or $CLOUD_ML_PROJECT_ID, found none") in out.out + out.err


def test_of_several_models_of_that_name_the_newest_is_the_baseline(vertex):
    _, handler = vertex
    handler.models[:] = [registered_model("1", NAME, "5", PERFECT_99_OF_100, updated="2026-01-01T00:00:00Z"),
                         registered_model("2", NAME, "2", PERFECT_9_OF_10, updated="2026-03-01T00:00:00Z")]
    decision, verdict, parent = _gate(0.95)
    assert decision == registry.NEW_VERSION and parent.metadata["resourceName"] == f"{PARENT}/models/2"
    assert f"`{PARENT}/models/2` version 2 (the default version), the newest of 2 models named `{NAME}`" in verdict


def test_a_display_name_is_matched_whole_not_as_a_list_filters_pattern(vertex):
    """A `*` in model_display_name (the pipeline allows it) is a wildcard in a list filter: another model's
    versions would have been the baseline, and its endpoint deployed to."""
    _, handler = vertex
    handler.models[:] = [registered_model("42", "mnist-cnn-old", "3", PERFECT_99_OF_100)]
    task = component(check_baseline)(accuracy=0.95, display_name="mnist-cnn*", baseline_margin=0.002)
    assert task.outputs["Output"] == registry.NEW_MODEL


def _make_default(model_name):
    from kfp import dsl

    from components.registry import make_default_version

    @dsl.pipeline
    def after_import(model_name: str):
        model = dsl.importer(artifact_uri=f"https://{REGION}-aiplatform.googleapis.com/v1/{model_name}",
                             artifact_class=artifact_types.VertexModel, metadata={"resourceName": model_name})
        component(make_default_version)(model=model.output, project=PROJECT, location=REGION)

    return after_import(model_name=model_name)


def test_a_new_version_becomes_the_default_and_the_next_baseline_once_its_evaluation_is_there(vertex, capfd):
    recorded, handler = vertex
    handler.models[:] = [registered_model("42", NAME, "3", PERFECT_9_OF_10, later_versions=("4",))]
    handler.models[0]["evaluations"].append({**handler.models[0]["evaluations"][0],
                                             "name": f"{PARENT}/models/42@4/evaluations/2"})
    handler.models[0]["evaluations"][-1]["metrics"] = registered_model(
        "42", NAME, "4", PERFECT_99_OF_100)["evaluations"][0]["metrics"]
    assert _gate(0.95, margin=0.01)[0] == registry.NEW_VERSION  # Against version 3 at 0.90.
    _make_default(f"{PARENT}/models/42@4")
    assert f"{PARENT}/models/42@4 is the default version" in capfd.readouterr().out
    (merge,) = [r for r in recorded if r["path"].endswith(":mergeVersionAliases")]
    assert merge["path"] == f"/v1/{PARENT}/models/42@4:mergeVersionAliases"
    assert json.loads(merge["body"]) == {"versionAliases": ["default"]}
    decision, verdict, _ = _gate(0.95, margin=0.01)  # Now against version 4 and its evaluation, at 0.99.
    assert decision == registry.KEEP_BASELINE and f"`{PARENT}/models/42` version 4 (the default" in verdict
    with pytest.raises(RuntimeError, match="make-default-version"):  # A version the Registry does not hold.
        _make_default(f"{PARENT}/models/42@9")


def _endpoint_for(resource_name="", display_name=NAME, model_name=f"{PARENT}/models/7@2"):
    """The deployment-endpoint step's endpoint, for deploying `model_name` (as GCPC's upload names it)."""
    from kfp import dsl

    from components.registry import deployment_endpoint

    @dsl.pipeline
    def before_deploy(resource_name: str, display_name: str, model_name: str) -> artifact_types.VertexEndpoint:
        model = dsl.importer(artifact_uri=f"https://{REGION}-aiplatform.googleapis.com/v1/{model_name}",
                             artifact_class=artifact_types.VertexModel, metadata={"resourceName": model_name})
        return component(deployment_endpoint)(resource_name=resource_name, display_name=display_name,
                                              model=model.output, project=PROJECT, location=REGION
                                              ).outputs["endpoint"]

    return before_deploy(resource_name=resource_name, display_name=display_name, model_name=model_name).output


def _endpoint_calls(recorded):
    return [(r["method"], r["path"]) for r in recorded if "/endpoints" in r["path"]]


def test_a_given_endpoint_is_deployed_to_as_it_is(vertex, capfd):
    recorded, handler = vertex
    name = f"{PARENT}/endpoints/1234"
    handler.endpoints[:] = [deployed_endpoint("1234", "serving", [("101", "7", "1", 100)])]
    handler.models[:] = [registered_model("7", NAME, "1")]
    endpoint = _endpoint_for(name)
    assert endpoint.metadata["resourceName"] == name
    assert endpoint.uri == f"https://{REGION}-aiplatform.googleapis.com/v1/{name}"
    assert set(_endpoint_calls(recorded)) == {("GET", f"/v1/{name}")}  # Read, to see who serves there; not created.
    for given, says in [("my-endpoint", "endpoint: expected projects/PROJECT/locations/REGION/endpoints/NUMBER, "
                                        "found 'my-endpoint'"),
                        (f"projects/{PROJECT}/locations/europe-west4/endpoints/1",
                         f"endpoint: expected one in the run's region {REGION}, found projects/{PROJECT}/locations/"
                         "europe-west4/endpoints/1 in europe-west4"),
                        (f"{PARENT}/endpoints/404",
                         f"endpoint: expected an existing endpoint, found none at {PARENT}/endpoints/404")]:
        with pytest.raises(RuntimeError, match="deployment-endpoint"):
            _endpoint_for(given)
        out = capfd.readouterr()
        assert says in out.out + out.err


def test_an_endpoint_where_another_model_gets_traffic_is_refused(vertex, capfd):
    """GCPC's deployment sends a traffic split, which replaces the endpoint's: the other model would serve
    nothing and keep its machines."""
    recorded, handler = vertex
    handler.models[:] = [registered_model("7", NAME, "2"), registered_model("8", "fraud-model", "1")]
    shared = [("101", "7", "1", 30), ("201", "8", "1", 70)]
    handler.endpoints[:] = [deployed_endpoint("1234", "shared", shared), deployed_endpoint("5", NAME, shared)]
    for given in (f"{PARENT}/endpoints/1234", ""):  # Given, or found by the model's name.
        with pytest.raises(RuntimeError, match="deployment-endpoint"):
            _endpoint_for(given)
        out = capfd.readouterr()
        assert (f"endpoint {PARENT}/endpoints/{'1234' if given else '5'}: expected one serving only versions of "
                f"{NAME} (a deployment takes all of an endpoint's traffic), found {PARENT}/models/8 at 70%") \
            in out.out + out.err
    # Versions of this model, or other models without traffic, are no obstacle: the new version replaces them.
    handler.endpoints[0]["trafficSplit"] = {"101": 100}
    assert _endpoint_for(f"{PARENT}/endpoints/1234").metadata["resourceName"] == f"{PARENT}/endpoints/1234"
    assert not [r for r in recorded if r["method"] == "POST"]  # Nothing created, nothing undeployed.
    # Another model of the same name is another model: only the deployed model's earlier versions are undeployed.
    handler.models.append(registered_model("9", NAME, "1"))
    handler.endpoints[0]["deployedModels"].append({"id": "301", "model": f"{PARENT}/models/9", "modelVersionId": "1"})
    handler.endpoints[0]["trafficSplit"] = {"101": 50, "301": 50}
    with pytest.raises(RuntimeError, match="deployment-endpoint"):
        _endpoint_for(f"{PARENT}/endpoints/1234")
    out = capfd.readouterr()
    assert f"found {PARENT}/models/9 at 50%" in out.out + out.err


def test_without_an_endpoint_the_one_named_like_the_model_is_created_once_then_reused(vertex, capfd):
    """Each deploying run created an endpoint of its own before: another endpoint, and machines, per run."""
    recorded, handler = vertex
    first = _endpoint_for()
    assert [e["displayName"] for e in handler.endpoints] == [NAME]
    assert first.metadata["resourceName"] == handler.endpoints[0]["name"]
    assert f"no endpoint named {NAME}: created {handler.endpoints[0]['name']}" in capfd.readouterr().out
    again = _endpoint_for()
    assert again.metadata["resourceName"] == first.metadata["resourceName"] and len(handler.endpoints) == 1
    assert [m for m, _ in _endpoint_calls(recorded)].count("POST") == 1
    assert f"deploying to the endpoint named {NAME}, {first.metadata['resourceName']}" in capfd.readouterr().out


def test_of_several_endpoints_named_like_the_model_the_newest_is_used_and_named(vertex, capfd):
    _, handler = vertex
    handler.endpoints[:] = [deployed_endpoint("1", NAME, [], "2026-01-01T00:00:00Z"),
                            deployed_endpoint("3", NAME, [], "2026-01-03T00:00:00Z"),
                            deployed_endpoint("2", NAME, [], "2026-01-02T00:00:00Z"),
                            deployed_endpoint("4", "other", [], "2026-01-04T00:00:00Z")]
    assert _endpoint_for().metadata["resourceName"] == f"{PARENT}/endpoints/3"
    assert f"{PARENT}/endpoints/3, the newest of 3 endpoints of that name" in capfd.readouterr().out
    assert len(handler.endpoints) == 4


def _endpoint_answer(model_name, resource_name=f"{PARENT}/endpoints/5"):
    """What the deployment-endpoint step answers for deploying `model_name`: 'deploy' or 'already-serving'."""
    from kfp import dsl

    from components.registry import deployment_endpoint

    @dsl.pipeline
    def before_deploy(resource_name: str, model_name: str) -> str:
        model = dsl.importer(artifact_uri=f"https://{REGION}-aiplatform.googleapis.com/v1/{model_name}",
                             artifact_class=artifact_types.VertexModel, metadata={"resourceName": model_name})
        return component(deployment_endpoint)(resource_name=resource_name, display_name=NAME, model=model.output,
                                              project=PROJECT, location=REGION).outputs["Output"]

    return before_deploy(resource_name=resource_name, model_name=model_name).output


def test_a_version_that_has_all_the_endpoints_traffic_is_not_deployed_again(vertex, capfd):
    """A kept baseline an earlier run deployed: deploying it again took another machine (and, on Vertex AI, many
    minutes) and undeployed the identical deployment before it."""
    recorded, handler = vertex
    handler.models[:] = [registered_model("7", NAME, "3")]
    by_number = f"projects/123456789/locations/{REGION}/models/7@3"  # How Vertex AI may name the same version.
    for deployed, model_name, answer in [
            ([("101", "7", "3", 100)], f"{PARENT}/models/7@3", registry.ALREADY_SERVING),
            ([("101", by_number, "3", 100)], f"{PARENT}/models/7@3", registry.ALREADY_SERVING),
            ([("101", "7", "3", 60), ("102", "7", "3", 40)], f"{PARENT}/models/7@3", registry.ALREADY_SERVING),
            ([("101", "7", "3", 100)], f"{PARENT}/models/7@4", registry.DEPLOY),
            ([("101", "7", "3", 50), ("102", "7", "2", 50)], f"{PARENT}/models/7@3", registry.DEPLOY),
            ([("101", "7", "3", 0), ("102", "7", "2", 100)], f"{PARENT}/models/7@3", registry.DEPLOY),
            ([], f"{PARENT}/models/7@3", registry.DEPLOY)]:
        handler.endpoints[:] = [deployed_endpoint("5", NAME, deployed)]
        assert _endpoint_answer(model_name) == answer, (deployed, model_name)
        said = f"{model_name} already has all the traffic of {PARENT}/endpoints/5: nothing to deploy"
        assert (said in capfd.readouterr().out) == (answer == registry.ALREADY_SERVING)
    handler.endpoints[:] = []  # Created now: nothing serves there.
    assert _endpoint_answer(f"{PARENT}/models/7@3", resource_name="") == registry.DEPLOY
    assert len(handler.endpoints) == 1
    assert not [r for r in recorded if r["path"].endswith((":deployModel", ":undeployModel"))]


def _undeploy(endpoint_id, model_name):
    from kfp import dsl

    from components.registry import undeploy_earlier_versions

    @dsl.pipeline
    def after_deploy(endpoint_name: str, model_name: str):
        endpoint = dsl.importer(artifact_uri=f"https://{REGION}-aiplatform.googleapis.com/v1/{endpoint_name}",
                                artifact_class=artifact_types.VertexEndpoint,
                                metadata={"resourceName": endpoint_name})
        model = dsl.importer(artifact_uri=f"https://{REGION}-aiplatform.googleapis.com/v1/{model_name}",
                             artifact_class=artifact_types.VertexModel, metadata={"resourceName": model_name})
        component(undeploy_earlier_versions)(model=model.output, endpoint=endpoint.output, project=PROJECT,
                                             location=REGION)

    return after_deploy(endpoint_name=f"{PARENT}/endpoints/{endpoint_id}", model_name=model_name)


def test_after_a_deployment_the_models_earlier_versions_are_undeployed_and_other_models_kept(vertex, capfd):
    """The new version takes all the traffic; the earlier ones kept their machines at 0% until undeployed."""
    recorded, handler = vertex
    # Vertex AI may name a deployed model with its version, or its project by number: the same model.
    handler.endpoints[:] = [deployed_endpoint("5", NAME, [
        ("101", "7", "1", 0), ("102", "8", "1", 0),
        ("103", f"projects/123456789/locations/{REGION}/models/7@2", "2", 0), ("104", "7", "3", 100)])]
    _undeploy("5", f"{PARENT}/models/7@3")
    assert [(d["id"], d["modelVersionId"]) for d in handler.endpoints[0]["deployedModels"]] == [("102", "1"),
                                                                                                ("104", "3")]
    assert handler.endpoints[0]["trafficSplit"] == {"104": 100}
    assert [json.loads(r["body"])["deployedModelId"] for r in recorded if r["path"].endswith(":undeployModel")] \
        == ["101", "103"]
    assert f"undeployed {PARENT}/models/7@1 (deployed model 101), {PARENT}/models/7@2 (deployed model 103)" \
        in capfd.readouterr().out


def test_nothing_is_undeployed_unless_the_new_version_serves_there(vertex, capfd):
    recorded, handler = vertex
    handler.endpoints[:] = [deployed_endpoint("5", NAME, [("101", "7", "1", 100)])]
    with pytest.raises(RuntimeError, match="undeploy-earlier-versions"):
        _undeploy("5", f"{PARENT}/models/7@2")
    out = capfd.readouterr()
    assert (f"endpoint {PARENT}/endpoints/5: expected {PARENT}/models/7@2 deployed there with traffic, found "
            "version 1 at 100%") in out.out + out.err
    assert not [r for r in recorded if r["path"].endswith(":undeployModel")]
    assert len(handler.endpoints[0]["deployedModels"]) == 1


# --- The whole pipeline run locally: the gate in place, after export. ---------------------------------------

# A model that learns nothing (accuracy about 0.1) but passes the export gate at min_accuracy 0.
UNTRAINED = {"verify_checksums": False, "train_epochs": 1, "batch_size": 32, "max_train_examples": 64,
             "learning_rate": 1e-9, "min_accuracy": 0.0, "register": True, "model_display_name": NAME}


def test_whole_local_run_with_a_better_baseline_registers_nothing(vertex, synthetic_data, tmp_path):
    """register=true, and the Registry's default version is better than the new model: the run ends
    after check-baseline, no upload step starts (kfp.local would refuse GCPC's container), and the
    registration inputs are ready in the formats GCPC reads."""
    from google.protobuf import json_format
    from google_cloud_pipeline_components.container._implementation.model_evaluation import (
        import_model_evaluation)

    from pipelines import run_local

    recorded, handler = vertex
    handler.models.append(registered_model("42", NAME, "3", [[100, 0], [0, 100]]))
    with serve_directory(synthetic_data) as url:
        result = run_local.run(str(tmp_path / "runs"), {"source": url, **UNTRAINED})
    run_dir = result["run_dir"]
    assert {"export-model", "check-baseline", "registration-inputs"} <= set(os.listdir(run_dir))
    assert not [d for d in os.listdir(run_dir) if d.startswith(("model-", "endpoint-"))]
    with open(os.path.join(run_dir, "check-baseline", "verdict")) as f:
        verdict = f.read()
    assert verdict.startswith("**Not registered**: test accuracy 0.") and \
        f"the baseline `{PARENT}/models/42` version 3 (the default version) with test accuracy 1.0000" in verdict
    # The SavedModel to upload with its serving image, and the evaluation as GCPC's importer reads it.
    evaluation = os.path.join(run_dir, "registration-inputs", "evaluation")
    overall, slices = import_model_evaluation.read_metrics_from_file(evaluation, "classification")
    metrics = json_format.MessageToDict(overall["metrics"])  # The protobuf Value the importer sends.
    assert registry.accuracy_of(metrics["confusionMatrix"]) == pytest.approx(result["metrics"]["accuracy"], abs=1e-6)
    assert metrics["logLoss"] == pytest.approx(result["metrics"]["loss"], rel=1e-6)
    assert [s["displayName"] for s in metrics["confusionMatrix"]["annotationSpecs"]] == [str(d) for d in range(10)]
    assert slices == []


def test_whole_local_run_without_a_baseline_enters_the_upload_branch(vertex, synthetic_data, tmp_path, capsys):
    """No model of that name: the gate says new-model and the run goes on into the first-model branch, up to
    GCPC's upload, a container component that kfp.local's SubprocessRunner refuses (only Vertex AI runs it)."""
    from pipelines import run_local

    with serve_directory(synthetic_data) as url, pytest.raises(RuntimeError) as failed:
        run_local.run(str(tmp_path / "runs"), {"source": url, **UNTRAINED})
    assert "The SubprocessRunner only supports running Lightweight Python Components" in str(failed.value)
    out = re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out)
    assert "Executing task 'model-upload-2'" in out  # The upload without parent_model: the first-model branch.
    assert "Executing task 'model-upload'" not in out
    (run_dir,) = os.listdir(tmp_path / "runs")
    with open(tmp_path / "runs" / run_dir / "check-baseline" / "verdict") as f:
        assert f.read().startswith(f"**Registered as a new model** `{NAME}`: no model of that name exists")


# --- GCPC's steps, as compiled. ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    path = compile_module.compile_pipeline(str(tmp_path_factory.mktemp("spec") / "p.yaml"), hardware.Hardware())
    with open(path) as f:
        return yaml.safe_load(f)


def _tasks(spec) -> dict:
    """Every task by its component's name, with the conditions of the groups holding it."""
    found = {}

    def walk(dag, conditions):
        for name, task in dag["tasks"].items():
            ref = task["componentRef"]["name"]
            here = conditions + [task["triggerPolicy"]["condition"]] if "triggerPolicy" in task else conditions
            if "dag" in spec["components"][ref]:
                walk(spec["components"][ref]["dag"], here)
            else:
                found[name] = {**task, "_conditions": here, "_executor": spec["components"][ref]["executorLabel"]}

    walk(spec["root"]["dag"], [])
    return found


REGISTER = "inputs.parameter_values['pipelinechannel--register'] == true"
GATE = "inputs.parameter_values['pipelinechannel--check-baseline-Output']"


def test_upload_sends_parent_model_only_for_a_new_version(spec):
    tasks = _tasks(spec)
    version, first = tasks["model-upload"], tasks["model-upload-2"]
    assert version["_conditions"][-3:] == [REGISTER, f"{GATE} != 'keep-baseline'", f"{GATE} == 'new-version'"]
    assert first["_conditions"][-3:] == [REGISTER, f"{GATE} != 'keep-baseline'", f"!({GATE} == 'new-version')"]
    assert version["inputs"]["artifacts"]["parent_model"] == {
        "componentInputArtifact": "pipelinechannel--check-baseline-parent_model"}
    assert "parent_model" not in first["inputs"]["artifacts"]
    for task in (version, first):
        assert task["inputs"]["artifacts"]["unmanaged_container_model"] == {
            "componentInputArtifact": "pipelinechannel--registration-inputs-model"}
        assert task["inputs"]["parameters"]["display_name"] == {
            "componentInputParameter": "pipelinechannel--model_display_name"}
        # GCPC's own default is us-central1 whatever the run's region, and it has no fallback for an empty
        # project or region: the gate's, resolved from the parameters or the environment, are passed.
        assert _from_gate(task) == ("registry_project", "registry_location")
    # The upload does not make the version the default: make-default-version does, after its evaluation.
    assert "version_aliases" not in version["inputs"]["parameters"]
    # The launcher passes the parent only when the task has one, from the artifact's resourceName.
    args = spec["deploymentSpec"]["executors"][version["_executor"]]["container"]["args"]
    assert {"IfPresent": {"InputName": "parent_model", "Then": [
        "--parent_model_name", "{{$.inputs.artifacts['parent_model'].metadata['resourceName']}}"]}} in \
        [json.loads(a) for a in args if a.startswith("{\"IfPresent")]
    assert "google_cloud_pipeline_components.container.v1.model.upload_model.launcher" in \
        spec["deploymentSpec"]["executors"][version["_executor"]]["container"]["command"]


def _from_gate(task) -> tuple[str, str]:
    """The gate's outputs a task's project and location come from (as channels into its condition group)."""
    prefix = "pipelinechannel--check-baseline-"
    found = [task["inputs"]["parameters"][name]["componentInputParameter"] for name in ("project", "location")]
    assert all(f.startswith(prefix) for f in found), found
    return tuple(f.removeprefix(prefix) for f in found)


def test_evaluation_is_imported_into_whichever_model_was_uploaded_then_it_becomes_the_default(spec):
    """The upload of a new version took the default alias itself: when the import after it failed, the next
    run's baseline was a version without an evaluation, so the gate went by min_accuracy alone."""
    tasks = _tasks(spec)
    imported, default = tasks["model-evaluation-import"], tasks["make-default-version"]
    assert imported["_conditions"][-2:] == [REGISTER, f"{GATE} != 'keep-baseline'"]
    assert default["_conditions"][-2:] == [REGISTER, f"{GATE} != 'keep-baseline'"]
    assert "model-evaluation-import" in default["dependentTasks"]
    assert default["inputs"]["artifacts"]["model"] == imported["inputs"]["artifacts"]["model"]
    assert _from_gate(default) == ("registry_project", "registry_location")
    assert imported["inputs"]["artifacts"]["classification_metrics"] == {
        "componentInputArtifact": "pipelinechannel--registration-inputs-evaluation"}
    producer = _component_of(spec, imported["inputs"]["artifacts"]["model"]["taskOutputArtifact"]["producerTask"])
    (oneof,) = spec["components"][producer]["outputDefinitions"]["artifacts"].values()
    assert oneof["artifactType"]["schemaTitle"] == "google.VertexModel"
    selectors = spec["components"][producer]["dag"]["outputs"]["artifacts"]
    (choices,) = selectors.values()
    assert sorted(c["producerSubtask"] for c in choices["artifactSelectors"]) == ["condition-5", "condition-6"]


def _component_of(spec, task_name) -> str:
    def walk(dag):
        for name, task in dag["tasks"].items():
            ref = task["componentRef"]["name"]
            if name == task_name:
                return ref
            if "dag" in spec["components"][ref]:
                found = walk(spec["components"][ref]["dag"])
                if found:
                    return found
    return walk(spec["root"]["dag"])


def _dags(spec) -> list[dict]:
    """The root DAG and every group's."""
    return [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]


DEPLOY = "inputs.parameter_values['pipelinechannel--deploy'] == true"


def _not_serving_yet(endpoint_task: str) -> str:
    return f"inputs.parameter_values['pipelinechannel--{endpoint_task}-Output'] == '{registry.DEPLOY}'"


def _serving_already(endpoint_task: str) -> str:
    return f"!({_not_serving_yet(endpoint_task)})"


def test_deploy_is_requested_only_when_asked_and_earlier_versions_are_undeployed_after_it(spec):
    tasks = _tasks(spec)
    deploy, target, undeploy = tasks["model-deploy"], tasks["deployment-endpoint"], tasks["undeploy-earlier-versions"]
    assert target["_conditions"][-3:] == [REGISTER, f"{GATE} != 'keep-baseline'", DEPLOY]
    for task in (deploy, undeploy):
        assert task["_conditions"][-4:] == [REGISTER, f"{GATE} != 'keep-baseline'", DEPLOY,
                                            _not_serving_yet("deployment-endpoint")]
    for task in (target, undeploy):
        assert _from_gate(task) == ("registry_project", "registry_location")
    assert target["inputs"]["parameters"]["resource_name"] == {"componentInputParameter": "pipelinechannel--endpoint"}
    params = deploy["inputs"]["parameters"]
    assert params["dedicated_resources_machine_type"] == {
        "componentInputParameter": "pipelinechannel--endpoint_machine_type"}
    assert params["traffic_split"] == {"runtimeValue": {"constant": {"0": 100.0}}}
    for task in (deploy, undeploy):
        # deployment-endpoint's output `endpoint`, as a channel into the not-serving-yet group.
        assert task["inputs"]["artifacts"]["endpoint"] == {
            "componentInputArtifact": "pipelinechannel--deployment-endpoint-endpoint"}
        assert "oneof" in task["inputs"]["artifacts"]["model"]["componentInputArtifact"]
    assert "model-deploy" in undeploy["dependentTasks"]  # Only once the new version has the traffic.
    # Where the version serves already, versions an earlier run left at 0% are undeployed all the same.
    idle = tasks["undeploy-earlier-versions-2"]
    assert idle["_conditions"][-4:] == [REGISTER, f"{GATE} != 'keep-baseline'", DEPLOY,
                                        _serving_already("deployment-endpoint")]
    assert idle["inputs"]["artifacts"]["endpoint"] == undeploy["inputs"]["artifacts"]["endpoint"]
    assert idle["inputs"]["artifacts"]["model"] == undeploy["inputs"]["artifacts"]["model"]
    assert _from_gate(idle) == ("registry_project", "registry_location")
    # Only a version that carries its evaluation and is the default is deployed: the deploy-requested group
    # (the compiler puts the step's dependency on the group holding it) waits for make-default-version.
    (holder,) = [task for dag in _dags(spec) for task in dag["tasks"].values()
                 if "deployment-endpoint" in spec["components"][task["componentRef"]["name"]].get("dag", {})
                 .get("tasks", {})]
    assert "make-default-version" in holder["dependentTasks"]
    assert "oneof" in target["inputs"]["artifacts"]["model"]["componentInputArtifact"]
    defaults = spec["root"]["inputDefinitions"]["parameters"]
    assert defaults["deploy"]["defaultValue"] is False and defaults["register"]["defaultValue"] is False
    assert "baseline_margin" in pipeline.PARAMETER_RULES  # Checked in [0, 1] before a run starts.


def test_a_run_that_keeps_the_baseline_deploys_the_baseline_when_asked_unless_it_serves_already(spec):
    """A rerun served from the cache up to the export (or a worse model) keeps the baseline: with deploy=true
    it deployed nothing and ended in success, the endpoint serving whatever it served before, or nothing."""
    tasks = _tasks(spec)
    deploy, target, undeploy, idle = (tasks["model-deploy-2"], tasks["deployment-endpoint-2"],
                                      tasks["undeploy-earlier-versions-3"], tasks["undeploy-earlier-versions-4"])
    kept = f"!({GATE} != 'keep-baseline')"
    assert target["_conditions"][-3:] == [REGISTER, kept, DEPLOY]
    for task in (deploy, undeploy):
        assert task["_conditions"][-4:] == [REGISTER, kept, DEPLOY, _not_serving_yet("deployment-endpoint-2")]
    assert idle["_conditions"][-4:] == [REGISTER, kept, DEPLOY, _serving_already("deployment-endpoint-2")]
    for task in (deploy, target, undeploy, idle):  # The baseline's version, as the gate found it.
        assert task["inputs"]["artifacts"]["model"] == {
            "componentInputArtifact": "pipelinechannel--check-baseline-baseline_version"}
    for task in (deploy, undeploy, idle):
        assert task["inputs"]["artifacts"]["endpoint"] == {
            "componentInputArtifact": "pipelinechannel--deployment-endpoint-2-endpoint"}
    for task in (target, undeploy, idle):
        assert _from_gate(task) == ("registry_project", "registry_location")
    assert deploy["inputs"]["parameters"]["traffic_split"] == {"runtimeValue": {"constant": {"0": 100.0}}}
    assert "model-deploy-2" in undeploy["dependentTasks"]  # None is served from the cache: test_submit.py.


@pytest.mark.parametrize("margin", [0.0005, 0.001, 0.0015, 0.002, 0.0025, 0.01])
def test_a_version_exactly_margin_below_the_baseline_is_registered_and_one_example_less_is_not(margin):
    baseline = lambda correct: registry.Baseline(f"{PARENT}/models/42", "3", correct / 10000)  # noqa: E731
    step = round(margin * 10000)
    for correct in range(9000, 10001):  # Every baseline from 90% up, on MNIST's 10,000 test images.
        assert registry.decide((correct - step) / 10000, NAME, baseline(correct), margin)[0] == registry.NEW_VERSION
        decision, verdict = registry.decide((correct - step - 1) / 10000, NAME, baseline(correct), margin)
        assert decision == registry.KEEP_BASELINE, verdict


def test_whole_local_run_that_keeps_the_baseline_deploys_it_when_asked_unless_it_serves_already(
        vertex, synthetic_data, tmp_path, capsys):
    """deploy=true and a better baseline (as with a rerun served from the cache up to the export): the run
    ended in success having deployed nothing, and the endpoint served nothing, or an older version."""
    from pipelines import run_local

    recorded, handler = vertex
    handler.models.append(registered_model("42", NAME, "3", [[100, 0], [0, 100]]))
    parameters = {**UNTRAINED, "deploy": True}
    with serve_directory(synthetic_data) as url, pytest.raises(RuntimeError) as failed:
        run_local.run(str(tmp_path / "runs"), {"source": url, **parameters})
    # No endpoint named like the model: created, then GCPC's deployment of the baseline, a container component
    # that kfp.local's SubprocessRunner refuses (only Vertex AI runs it).
    assert "The SubprocessRunner only supports running Lightweight Python Components" in str(failed.value)
    out = re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out)
    assert "Executing task 'model-deploy-2'" in out and "Executing task 'model-upload" not in out
    (created,) = handler.endpoints
    endpoint_name = created["name"]
    assert f"no endpoint named {NAME}: created {endpoint_name}" in out
    # Once the baseline has all that endpoint's traffic, a rerun deploys nothing and succeeds; a version an
    # earlier run left there at 0% (it failed before its undeploy step) no longer keeps its machines.
    created["deployedModels"] = [{"id": "101", "model": f"{PARENT}/models/42", "modelVersionId": "3"},
                                 {"id": "102", "model": f"{PARENT}/models/42", "modelVersionId": "2"}]
    created["trafficSplit"] = {"101": 100, "102": 0}
    recorded.clear()
    with serve_directory(synthetic_data) as url:
        run_local.run(str(tmp_path / "again"), {"source": url, **parameters})
    out = re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out)
    assert f"{PARENT}/models/42@3 already has all the traffic of {endpoint_name}: nothing to deploy" in out
    assert "Executing task 'model-deploy" not in out
    assert [json.loads(r["body"])["deployedModelId"] for r in recorded if r["path"].endswith(":undeployModel")] \
        == ["102"]
    assert [d["id"] for d in created["deployedModels"]] == ["101"] and created["trafficSplit"] == {"101": 100}
