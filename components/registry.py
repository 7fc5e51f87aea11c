"""The registration steps GCPC has no component for: the baseline gate, the upload's inputs, the default
version, the endpoint, undeploying.

The upload, the evaluation import and the deployment themselves are Google
Cloud Pipeline Components (ModelUploadOp, ModelImportEvaluationOp,
ModelDeployOp), wired in pipelines/pipeline.py; they run only on Vertex AI.
These are lightweight components in the project's image that call the
aiplatform client (the gate's baseline, the default alias, the endpoint,
undeploying), so they also run locally against a stand-in endpoint.
"""

from google_cloud_pipeline_components.types import artifact_types
from kfp.dsl import ClassificationMetrics, Input, Markdown, Metrics, Model, Output, OutputPath


def check_baseline(accuracy: float, display_name: str, baseline_margin: float, verdict: Output[Markdown],
                   parent_model: Output[artifact_types.VertexModel],
                   baseline_version: Output[artifact_types.VertexModel], registry_project: OutputPath(str),
                   registry_location: OutputPath(str), project: str = "", location: str = "",
                   saved_model: Input[Model] = None) -> str:
    """The registration gate: a new version must not be worse than the default version by more than a margin.

    Args:
      accuracy: The new model's test accuracy.
      display_name: The registered model's name; its default version is the baseline.
      baseline_margin: How far below the baseline's test accuracy the new version may be (0 to 1).
      verdict: Says what was decided, naming the baseline (resource name, version, accuracy).
      parent_model: The model to add a version to (resourceName in its metadata); unused for a first model.
      baseline_version: The baseline itself (resourceName MODEL@VERSION): what a run that keeps it and was
        asked to deploy deploys, unless it already has the endpoint's traffic.
      registry_project: `project`, or the one found in the environment: what every later Registry step uses
        (GCPC's upload has no fallback of its own and would call https://-aiplatform.googleapis.com).
      registry_location: `location`, or the one found in the environment, likewise.
      project: The Registry's Google Cloud project; empty: $GOOGLE_CLOUD_PROJECT, else $CLOUD_ML_PROJECT_ID.
        (Not the run's project placeholder: kfp.local fails on it, even in this docstring, which is part of
        the step's command.)
      location: The Registry's region; empty: $GOOGLE_CLOUD_REGION, else $CLOUD_ML_REGION.
      saved_model: The export to register (metadata `export_uri`); a baseline that is this very SavedModel
        (a rerun served from the cache) is kept.

    Returns:
      'new-model' (no model of that name), 'new-version' or 'keep-baseline'.
    """
    from mnistkit import registry

    project, location = registry.resolve_project_and_location(project, location)
    registry.init_vertex(project, location)
    baseline = registry.find_baseline(display_name)
    for path, value in ((registry_project, project), (registry_location, location)):
        with open(path, "w") as f:
            f.write(value)
    export_uri = saved_model.metadata.get("export_uri", "") if saved_model is not None else ""
    decision, text = registry.decide(accuracy, display_name, baseline, baseline_margin, export_uri)
    if baseline is not None:
        # What GCPC's upload reads (metadata resourceName) and what Vertex AI shows for a model artifact.
        parent_model.uri = f"https://{location}-aiplatform.googleapis.com/v1/{baseline.resource_name}"
        parent_model.metadata["resourceName"] = baseline.resource_name
        version = f"{baseline.resource_name}@{baseline.version_id}"
        baseline_version.uri = f"https://{location}-aiplatform.googleapis.com/v1/{version}"
        baseline_version.metadata["resourceName"] = version
    with open(verdict.path, "w") as f:
        f.write(text)
    print(text)
    return decision


def registration_inputs(saved_model: Input[Model], metrics: Input[Metrics],
                        confusion_matrix: Input[ClassificationMetrics], serving_image: str,
                        model: Output[artifact_types.UnmanagedContainerModel],
                        evaluation: Output[artifact_types.ClassificationMetrics]):
    """Turns the export and the evaluation into what GCPC's upload and evaluation import read.

    Args:
      saved_model: The export_model output; metadata `export_uri` names the SavedModel.
      metrics: evaluate_model's metrics (`loss` in the metadata).
      confusion_matrix: evaluate_model's confusion matrix.
      serving_image: The prebuilt Vertex AI prediction image that serves the SavedModel.
      model: Points at the SavedModel, with the serving container in its metadata (ModelUploadOp's
        unmanaged_container_model).
      evaluation: The accuracy (as the confusion matrix), loss and confusion matrix in the file format
        ModelImportEvaluationOp reads.
    """
    import json

    from mnistkit import registry

    model.uri = saved_model.metadata["export_uri"]
    model.metadata["containerSpec"] = {"imageUri": serving_image}
    matrix = confusion_matrix.metadata["confusionMatrix"]
    labels = [spec["displayName"] for spec in matrix["annotationSpecs"]]
    rows = [row["row"] for row in matrix["rows"]]
    with open(evaluation.path, "w") as f:
        json.dump(registry.vertex_evaluation(metrics.metadata["loss"], labels, rows), f)
    evaluation.metadata["accuracy"] = registry.accuracy_of({"rows": rows})


def deployment_endpoint(resource_name: str, display_name: str, model: Input[artifact_types.VertexModel],
                        endpoint: Output[artifact_types.VertexEndpoint], project: str, location: str) -> str:
    """The Vertex AI endpoint GCPC's ModelDeployOp deploys to: the one given, else the one named like the model.

    Args:
      resource_name: projects/PROJECT/locations/REGION/endpoints/ID, or empty: the endpoint named
        `display_name` (the newest if several), created when there is none.
      display_name: The model's display name, which the endpoint takes.
      model: The version to deploy (GCPC's upload output): no other model may get traffic on the endpoint.
      endpoint: The endpoint, resourceName in its metadata.
      project: The endpoint's Google Cloud project (check_baseline's registry_project).
      location: Its region (check_baseline's registry_location).

    Returns:
      'already-serving' when `model` has all the endpoint's traffic already (a kept baseline, deployed by an
      earlier run), else 'deploy'.
    """
    from mnistkit import registry

    registry.init_vertex(project, location)
    version = model.metadata["resourceName"]
    name, said = registry.deployment_endpoint(resource_name, display_name, location, version)
    endpoint.uri = f"https://{location}-aiplatform.googleapis.com/v1/{name}"
    endpoint.metadata["resourceName"] = name
    print(said)
    if registry.traffic_to(name, version) == 100:
        print(f"{version} already has all the traffic of {name}: nothing to deploy")
        return registry.ALREADY_SERVING
    return registry.DEPLOY


def undeploy_earlier_versions(model: Input[artifact_types.VertexModel],
                              endpoint: Input[artifact_types.VertexEndpoint], project: str, location: str):
    """After the deployment: undeploys the versions of the model deployed there before, which get no traffic.

    Args:
      model: The version just deployed (GCPC's upload output: resourceName MODEL@VERSION in its metadata).
      endpoint: The endpoint it was deployed to.
      project: The endpoint's Google Cloud project (check_baseline's registry_project).
      location: Its region (check_baseline's registry_location).
    """
    from mnistkit import registry

    registry.init_vertex(project, location)
    undeployed = registry.undeploy_earlier_versions(endpoint.metadata["resourceName"], model.metadata["resourceName"])
    print(f"undeployed {', '.join(undeployed)}" if undeployed else "no earlier version was deployed there")


def make_default_version(model: Input[artifact_types.VertexModel], project: str, location: str):
    """Once its evaluation is attached, makes the uploaded version the default: the next run's baseline.

    Args:
      model: The version uploaded (GCPC's upload output: resourceName MODEL@VERSION in its metadata).
      project: The Registry's Google Cloud project (check_baseline's registry_project).
      location: Its region (check_baseline's registry_location).
    """
    from mnistkit import registry

    registry.init_vertex(project, location)
    print(registry.make_default(model.metadata["resourceName"]))
