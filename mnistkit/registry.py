"""Vertex AI Model Registry logic: the serving image, the baseline a new version must match, the evaluation to attach.

Nothing here knows about KFP: the pipeline's registration components
(components/registry.py) call these functions. The Vertex AI client is
imported only where it is used, so a compile or a submit check stays fast.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re

from mnistkit.gates import shown

# The decisions of the baseline gate, also the values the pipeline's conditions compare with.
NEW_MODEL = "new-model"
NEW_VERSION = "new-version"
KEEP_BASELINE = "keep-baseline"
# What the deployment-endpoint step answers, also compared with in the pipeline: whether the version to deploy
# already has all the endpoint's traffic (a rerun that kept the baseline deployed by an earlier run).
DEPLOY = "deploy"
ALREADY_SERVING = "already-serving"

# Set to an http:// address (a loopback stand-in for Vertex AI, as in the tests) to send the Registry calls
# there over REST without credentials. Unset on Vertex AI, where the run's own account is used.
API_ENDPOINT_ENV = "MNISTKIT_VERTEX_API_ENDPOINT"
PROJECT_ENV = "GOOGLE_CLOUD_PROJECT"
LOCATION_ENV = "GOOGLE_CLOUD_REGION"
# Where the pinned aiplatform client looks next (google/cloud/aiplatform/initializer.py): what Vertex AI sets.
VERTEX_PROJECT_ENV = "CLOUD_ML_PROJECT_ID"
VERTEX_LOCATION_ENV = "CLOUD_ML_REGION"


def _prediction_constants():
    """The installed aiplatform's `constants/prediction.py`, loaded on its own.

    Importing `google.cloud.aiplatform` takes seconds (it loads every client); this file needs only `re`, and
    the pipeline module (imported by compile, submit and run_local) reads it on every start.
    """
    spec = importlib.util.find_spec("google.cloud.aiplatform")  # Locates the package without running it.
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("google-cloud-aiplatform is not installed: pip install -e '.[pipeline]'")
    path = os.path.join(list(spec.submodule_search_locations)[0], "constants", "prediction.py")
    module_spec = importlib.util.spec_from_file_location("_aiplatform_prediction_constants", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def tensorflow_serving_images(accelerator: str = "cpu", region: str = "us") -> list[tuple[tuple[int, int], str]]:
    """The prebuilt TensorFlow 2 prediction images the installed aiplatform knows, newest TensorFlow first.

    Args:
      accelerator: 'cpu' or 'gpu'.
      region: The Artifact Registry multi-region: 'us', 'europe' or 'asia'.

    Returns:
      [((major, minor), image URI), ...].
    """
    constants = _prediction_constants()
    found = []
    for uri in constants.TF_CONTAINER_URIS:
        match = constants.CONTAINER_URI_PATTERN.match(uri)
        if match and (match["framework"], match["accelerator"], match["region"]) == ("tf2", accelerator, region):
            major, minor = (int(n) for n in match["version"].split("-")[:2])
            found.append(((major, minor), uri))
    return sorted(found, reverse=True)


def default_serving_image() -> str:
    """The CPU prediction image of the newest TensorFlow the installed aiplatform lists."""
    images = tensorflow_serving_images()
    if not images:
        raise RuntimeError("google-cloud-aiplatform lists no TensorFlow 2 CPU prediction image")
    return images[0][1]


def serving_tensorflow_version(image: str) -> str:
    """'2.15' for '.../tf2-cpu.2-15:latest'; raises ValueError for an image that is not a TF2 prediction image."""
    match = re.search(r"/tf2-(?:cpu|gpu)\.(\d+)-(\d+)(?::|$)", image)
    if not match:
        raise ValueError(f"serving image: expected a Vertex AI tf2-cpu.X-Y or tf2-gpu.X-Y image, found {image!r}")
    return f"{match[1]}.{match[2]}"


@dataclasses.dataclass(frozen=True)
class Baseline:
    """The default version of the registered model a new version is compared with."""

    resource_name: str  # projects/P/locations/L/models/ID
    version_id: str
    accuracy: float | None  # None: the version carries no evaluation with a confusion matrix.
    evaluation: str = ""  # The evaluation's resource name, when there is one.
    models_of_that_name: int = 1
    artifact_uri: str = ""  # Where its SavedModel is.


def resolve_project_and_location(project: str, location: str) -> tuple[str, str]:
    """`project` and `location`; where empty, $GOOGLE_CLOUD_PROJECT or $CLOUD_ML_PROJECT_ID, and
    $GOOGLE_CLOUD_REGION or $CLOUD_ML_REGION.

    Raises:
      ValueError: neither given nor in the environment.
    """
    def pick(value, names, what):
        if value:
            return value
        for name in names:
            if os.environ.get(name):
                return os.environ[name]
        raise ValueError(f"{what}: expected the pipeline parameter (submit.py sets it from --{what}) or "
                         f"{' or '.join('$' + n for n in names)}, found none")

    return (pick(project, (PROJECT_ENV, VERTEX_PROJECT_ENV), "project"),
            pick(location, (LOCATION_ENV, VERTEX_LOCATION_ENV), "region"))


def init_vertex(project: str, location: str) -> None:
    """aiplatform.init for the run's project and region, or for the loopback endpoint $MNISTKIT_VERTEX_API_ENDPOINT."""
    from google.cloud import aiplatform

    endpoint = os.environ.get(API_ENDPOINT_ENV)
    if endpoint:
        from google.auth.credentials import AnonymousCredentials

        if not endpoint.startswith("http://"):
            raise ValueError(f"${API_ENDPOINT_ENV}: expected the http:// address of a local stand-in, "
                             f"found {endpoint!r}")
        aiplatform.init(project=project, location=location, api_endpoint=endpoint, api_transport="rest",
                        credentials=AnonymousCredentials())
    else:
        aiplatform.init(project=project, location=location)


def endpoint_location(resource_name: str) -> str:
    """The region of an endpoint's resource name; raises ValueError naming what was expected."""
    match = re.fullmatch(r"projects/[^/]+/locations/([a-z0-9-]+)/endpoints/[0-9]+", resource_name)
    if not match:
        raise ValueError(f"endpoint: expected projects/PROJECT/locations/REGION/endpoints/NUMBER, "
                         f"found {resource_name!r}")
    return match[1]


def find_deployment_endpoint(resource_name: str, display_name: str, location: str, project: str | None = None,
                             model_name: str = "") -> tuple[str, str]:
    """The endpoint a deployment goes to, checked, without creating one: (resource name, one line for the log).

    A given `resource_name` must be in `location`. Otherwise the endpoint named `display_name` is used, the
    newest if several carry the name; with none, the name is "". Either must exist and give traffic to no model
    but the one deployed: `model_name` (MODEL@VERSION, the upload's), else the model a new version of
    `display_name` joins (see _check_serves_only). `project` (default: aiplatform.init's) is where models and
    endpoints are listed. Call init_vertex first.
    """
    from google.cloud import aiplatform

    if resource_name:
        region = endpoint_location(resource_name)
        if region != location:
            raise ValueError(f"endpoint: expected one in the run's region {location}, found {resource_name} in "
                             f"{region}")
        _check_serves_only(resource_name, display_name, location, project, model_name)
        return resource_name, f"deploying to the endpoint given, {resource_name}"
    found = _named(aiplatform.Endpoint.list(filter=f'display_name="{display_name}"', order_by="create_time desc",
                                            project=project, location=location), display_name)
    if not found:
        return "", f"no endpoint named {display_name}"
    name = found[0].resource_name
    others = f", the newest of {len(found)} endpoints of that name" if len(found) > 1 else ""
    _check_serves_only(name, display_name, location, project, model_name)
    return name, f"deploying to the endpoint named {display_name}, {name}{others}"


def deployment_endpoint(resource_name: str, display_name: str, location: str, model_name: str) -> tuple[str, str]:
    """The endpoint to deploy `model_name` (MODEL@VERSION) to and what was done to find it: (resource name, one
    line for the log).

    find_deployment_endpoint's, created when none is named like the model: every rerun creating one left
    another endpoint behind, with a machine for each model deployed there. Call init_vertex first.
    """
    from google.cloud import aiplatform

    name, said = find_deployment_endpoint(resource_name, display_name, location, model_name=model_name)
    if name:
        return name, said
    created = aiplatform.Endpoint.create(display_name=display_name)
    return created.resource_name, f"{said}: created {created.resource_name}"


def _check_serves_only(endpoint_name: str, display_name: str, location: str, project: str | None,
                       model_name: str) -> None:
    """Refuses an endpoint that is missing, or where another model than the one deployed gets traffic.

    The deployment gives the new version all the endpoint's traffic (GCPC's ModelDeployOp sends a traffic split,
    which replaces the endpoint's), and then only that model's earlier versions are undeployed: another model
    there would serve nothing and keep its machines. The model deployed is `model_name`'s; without one (before
    the run), the newest model named `display_name`, which a new version joins (find_baseline's).
    """
    from google.api_core import exceptions
    from google.cloud import aiplatform

    try:  # The client reads the endpoint when its traffic is first asked for.
        endpoint = aiplatform.Endpoint(endpoint_name)
        traffic = dict(endpoint.traffic_split)
    except exceptions.NotFound:
        raise ValueError(f"endpoint: expected an existing endpoint, found none at {endpoint_name}") from None
    serving = [d for d in endpoint.list_models() if traffic.get(d.id, 0)]
    if not serving:
        return
    if model_name:
        ours = _region_and_id(_versioned(model_name)[0])
    else:
        named = _named(aiplatform.Model.list(filter=f'display_name="{display_name}"', order_by="update_time desc",
                                             project=project, location=location), display_name)
        ours = _region_and_id(named[0].resource_name) if named else None
    others = [f"{d.model} at {traffic[d.id]}%" for d in serving if _region_and_id(d.model) != ours]
    if others:
        raise ValueError(f"endpoint {endpoint_name}: expected one serving only versions of {display_name} (a "
                         f"deployment takes all of an endpoint's traffic), found {', '.join(others)}; give another "
                         "endpoint, or none to use the one named like the model")


def _region_and_id(name: str) -> str:
    """locations/L/models/ID of a model's name: a project may be named by ID or number, a version appended."""
    return name.partition("@")[0].partition("/locations/")[2]


def _named(resources: list, display_name: str) -> list:
    """Those of `resources` named exactly `display_name`: a list filter's match is the server's to define."""
    return [r for r in resources if r.display_name == display_name]


def _versioned(model_name: str) -> tuple[str, str]:
    """(projects/P/locations/L/models/ID, VERSION) of GCPC's upload output name MODEL@VERSION."""
    model, _, version = model_name.partition("@")
    if not re.fullmatch(r"projects/[^/]+/locations/[^/]+/models/[^/@]+", model) or not version:
        raise ValueError(f"model: expected projects/PROJECT/locations/REGION/models/ID@VERSION, found {model_name!r}")
    return model, version


def make_default(model_name: str) -> str:
    """Gives the version `model_name` (MODEL@VERSION) the "default" alias: the next run's baseline.

    Called once the version's evaluation is attached, so that a baseline always has one: an upload that took
    the alias itself made a version the default even when the import after it failed. Call init_vertex first.
    """
    from google.cloud import aiplatform

    model, version = _versioned(model_name)
    aiplatform.models.ModelRegistry(model).add_version_aliases(["default"], version)
    return f"{model}@{version} is the default version"


def _version_of(deployed) -> str:
    """The model version a deployed model of an endpoint serves (Vertex AI may give it in either field)."""
    return deployed.model_version_id or deployed.model.partition("@")[2]


def _deployments_of(endpoint_name: str, model: str) -> tuple:
    """(endpoint, its traffic split, its deployments of any version of `model`). Vertex AI may name a deployed
    model's project by number and give its version apart: models are compared by region and ID."""
    from google.cloud import aiplatform

    endpoint = aiplatform.Endpoint(endpoint_name)
    traffic = dict(endpoint.traffic_split)
    return endpoint, traffic, [d for d in endpoint.list_models() if _region_and_id(d.model) == _region_and_id(model)]


def traffic_to(endpoint_name: str, model_name: str) -> int:
    """The percentage of the endpoint's traffic that the version `model_name` (MODEL@VERSION) gets.

    Call init_vertex first.
    """
    model, version = _versioned(model_name)
    _, traffic, deployed = _deployments_of(endpoint_name, model)
    return sum(traffic.get(d.id, 0) for d in deployed if _version_of(d) == version)


def undeploy_earlier_versions(endpoint_name: str, model_name: str) -> list[str]:
    """Undeploys from the endpoint the deployments of `model_name`'s model that get no traffic; returns them.

    `model_name` is projects/P/locations/L/models/ID@VERSION, as GCPC's upload names what it uploaded; the
    deployment just gave that version all the endpoint's traffic, and the versions deployed before would keep
    their machines at 0%. Nothing is undeployed unless that version serves traffic there; other models on the
    endpoint are left as they are. Call init_vertex first.
    """
    model, version = _versioned(model_name)
    endpoint, traffic, deployed = _deployments_of(endpoint_name, model)
    if not any(_version_of(d) == version and traffic.get(d.id, 0) > 0 for d in deployed):
        found = ", ".join(f"version {_version_of(d)} at {traffic.get(d.id, 0)}%" for d in deployed)
        raise ValueError(f"endpoint {endpoint_name}: expected {model_name} deployed there with traffic, found "
                         f"{found or 'no version of it'}")
    idle = [d for d in deployed if not traffic.get(d.id, 0)]
    for d in idle:
        endpoint.undeploy(d.id)
    return [f"{model}@{_version_of(d)} (deployed model {d.id})" for d in idle]


def accuracy_of(confusion_matrix: dict) -> float | None:
    """Top-1 accuracy from a Vertex AI (or KFP) confusion matrix: the diagonal over the total; None if empty."""
    rows = [r["row"] if isinstance(r, dict) else r for r in confusion_matrix.get("rows", [])]
    total = sum(sum(float(v) for v in row) for row in rows)
    if not rows or total <= 0:
        return None
    return sum(float(row[i]) for i, row in enumerate(rows) if i < len(row)) / total


def find_baseline(display_name: str) -> Baseline | None:
    """The default version of the newest model named `display_name` and its latest evaluation; None if none.

    Call init_vertex first.
    """
    from google.cloud import aiplatform

    # Model.list answers with each model at its default version ("default" alias).
    models = _named(aiplatform.Model.list(filter=f'display_name="{display_name}"', order_by="update_time desc"),
                    display_name)
    if not models:
        return None
    model = models[0]
    accuracy, evaluation = None, ""
    evaluations = sorted(model.list_model_evaluations(), key=lambda e: e.create_time, reverse=True)
    for candidate in evaluations:
        metrics = dict(candidate.metrics or {})
        confusion = metrics.get("confusionMatrix")
        if confusion:
            accuracy = accuracy_of(_plain(confusion))
            if accuracy is not None:
                evaluation = candidate.resource_name
                break
    return Baseline(resource_name=model.resource_name, version_id=str(model.version_id), accuracy=accuracy,
                    evaluation=evaluation, models_of_that_name=len(models), artifact_uri=model.uri or "")


def _plain(value):
    """A protobuf Struct/ListValue (what the client returns for metrics) as plain dicts and lists."""
    if hasattr(value, "items"):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or type(value).__name__ in ("RepeatedComposite", "RepeatedScalarContainer"):
        return [_plain(v) for v in value]
    return value


def decide(accuracy: float, display_name: str, baseline: Baseline | None, margin: float,
           export_uri: str = "") -> tuple[str, str]:
    """The baseline gate: (decision, Markdown verdict).

    A first model has no baseline and is registered (it already passed the
    absolute min_accuracy gate). A baseline that is this very SavedModel
    (`export_uri`: a rerun served from the cache up to the export) is kept.
    Otherwise the new version is registered unless its accuracy is below the
    default version's by more than `margin`.
    """
    if baseline is None:
        return NEW_MODEL, (f"**Registered as a new model** `{display_name}`: no model of that name exists, so there "
                           f"is no baseline; test accuracy {accuracy:.4f} passed min_accuracy.\n")
    named = f"`{baseline.resource_name}` version {baseline.version_id} (the default version)"
    if baseline.models_of_that_name > 1:
        named += f", the newest of {baseline.models_of_that_name} models named `{display_name}`"
    if export_uri and baseline.artifact_uri.rstrip("/") == export_uri.rstrip("/"):
        # Registering it again would add a version of the same files and redeploy them, run after run.
        return KEEP_BASELINE, (f"**Not registered**: the baseline {named} is this very SavedModel ({export_uri}), "
                               "from a run whose steps up to the export were served from the cache.\n")
    if baseline.accuracy is None:
        return NEW_VERSION, (f"**Registered as a new version** of {named}: the baseline carries no evaluation with a "
                             f"confusion matrix, so test accuracy {accuracy:.4f} passed on min_accuracy alone.\n")
    # Rounded to 9 decimals, far below one test example: in binary, 0.9918 - 0.0005 is 0.9913000000000001, and
    # a version exactly `margin` below the baseline would fail its own floor.
    floor = round(baseline.accuracy - margin, 9)
    compared = (f"test accuracy {shown(accuracy)} against the baseline {named} with test accuracy "
                f"{shown(baseline.accuracy)} and baseline_margin {shown(margin)}")
    if round(accuracy, 9) >= floor:
        return NEW_VERSION, f"**Registered as a new version**: {compared} (floor {shown(floor)}).\n"
    return KEEP_BASELINE, (f"**Not registered**: {compared}: below the floor {shown(floor)}; the baseline stays "
                           "the default version.\n")


def vertex_evaluation(loss: float, labels: list[str], rows: list[list[float]]) -> dict:
    """The evaluation as GCPC's ModelImportEvaluationOp reads a classification metrics file.

    Vertex AI's classification schema has no `accuracy` field; the confusion
    matrix carries it (diagonal over total, what accuracy_of reads back), and
    for single-label top-1 predictions precision and recall at 1 equal it.
    """
    accuracy = accuracy_of({"rows": rows}) or 0.0
    classification = {
        "logLoss": float(loss),
        "confusionMatrix": {"annotationSpecs": [{"id": label, "displayName": label} for label in labels],
                            "rows": [[float(v) for v in row] for row in rows]},
        "confidenceMetrics": [{"confidenceThreshold": 0.0, "precisionAt1": accuracy, "recallAt1": accuracy}],
    }
    return {"slicedMetrics": [{"singleOutputSlicingSpec": {}, "metrics": {"classification": classification}}]}
