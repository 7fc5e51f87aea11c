"""Rebuilds, from a compiled template, the CustomJob request GCPC's launcher sends for the training task.

What Vertex AI Pipelines does before GCPC's launcher starts, done here: the
task's input parameters are resolved (pipeline arguments or defaults, task
constants, component defaults), substituted into the launcher's `--payload`
template, and the pipeline placeholders ({{$.pipeline_root}}, the job's uuid,
project, location, the JSON-escaped executor input) get plausible values. The
launcher's own steps then run from the installed GCPC:
`remote_runner.insert_system_labels_into_payload` and
`json_util.recursive_remove_empty` (google_cloud_pipeline_components/
container/v1/custom_job/remote_runner.py, gcp_launcher/job_remote_runner.py).
The compiled YAML stores every number as a float (protobuf Struct); whole
floats become ints, as the service reads them.
"""

import json
import re

import yaml

PROJECT, LOCATION = "mnist-project", "us-central1"
PIPELINE_ROOT = "gs://mnist-pipeline-root/runs"
JOB_UUID, TASK_UUID = "5b1e0c7e-run", "8d2f4a1c-task"
TRAIN_TASK = "train-model"


def pipeline_placeholders(pipeline_root: str = PIPELINE_ROOT, job_uuid: str = JOB_UUID) -> dict:
    """The pipeline-level placeholders Vertex AI fills, with plausible values."""
    return {
        "{{$.pipeline_google_cloud_project_id}}": PROJECT,
        "{{$.pipeline_google_cloud_location}}": LOCATION,
        "{{$.pipeline_persistent_resource_id}}": "",  # The run does not name a persistent resource.
        "{{$.pipeline_root}}": pipeline_root,
        "{{$.pipeline_job_uuid}}": job_uuid,
        "{{$.pipeline_task_uuid}}": TASK_UUID,
    }


def load(path: str) -> dict:
    """The pipeline spec of a compiled template (its first YAML document)."""
    with open(path) as f:
        return next(yaml.safe_load_all(f))


def whole_floats_to_ints(value):
    """1.0 -> 1 throughout a JSON value; other values unchanged."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [whole_floats_to_ints(v) for v in value]
    if isinstance(value, dict):
        return {k: whole_floats_to_ints(v) for k, v in value.items()}
    return value


def _fill(value, placeholders: dict):
    if isinstance(value, str):
        for placeholder, filled in placeholders.items():
            value = value.replace(placeholder, filled)
        return value
    if isinstance(value, list):
        return [_fill(v, placeholders) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, placeholders) for k, v in value.items()}
    return value


def resolve_channels(values: dict) -> dict:
    """`values` with the `{{$.inputs.parameters['NAME']}}` inside constants filled from `values` itself.

    A dict or list of pipeline channels given to a task compiles into a constant holding these placeholders
    and one `pipelinechannel--NAME` input per channel; the backend fills them in as text (as kfp.local does:
    strings as they are, everything else as JSON), so the component receives {"batch_size": "100.0", ...}.
    """
    pattern = re.compile(r"\{\{\$\.inputs\.parameters\['([^']+)'\]\}\}")

    def text(match):
        value = values[match.group(1)]
        return value if isinstance(value, str) else json.dumps(value)

    def fill(value):
        if isinstance(value, str):
            return pattern.sub(text, value)
        if isinstance(value, list):
            return [fill(v) for v in value]
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        return value

    return {name: fill(value) if isinstance(value, (dict, list)) else value for name, value in values.items()}


def task_parameters(spec: dict, arguments: dict | None = None, placeholders: dict | None = None) -> dict:
    """The training task's input parameter values as Vertex AI resolves them.

    Args:
      spec: the pipeline spec.
      arguments: pipeline parameter values of the run (the rest take their defaults).
      placeholders: pipeline placeholders -> values (default: pipeline_placeholders()).
    """
    arguments = arguments or {}
    placeholders = placeholders if placeholders is not None else pipeline_placeholders()
    task = spec["root"]["dag"]["tasks"][TRAIN_TASK]
    component = spec["components"][task["componentRef"]["name"]]
    pipeline_params = spec["root"]["inputDefinitions"]["parameters"]
    values = {name: d["defaultValue"] for name, d in component["inputDefinitions"]["parameters"].items()
              if "defaultValue" in d}
    for name, source in task["inputs"].get("parameters", {}).items():
        if "componentInputParameter" in source:
            param = source["componentInputParameter"]
            values[name] = arguments.get(param, pipeline_params[param].get("defaultValue"))
        elif "runtimeValue" in source:
            values[name] = source["runtimeValue"]["constant"]
        else:
            raise AssertionError(f"train-model input {name}: unexpected source {source}")
    for name, d in component["inputDefinitions"]["parameters"].items():
        if name not in values:
            # An optional input with no value: whatever the service substitutes ({}, [] or null) is empty,
            # and the launcher's recursive_remove_empty drops it.
            assert d.get("isOptional"), f"train-model input {name} has no value"
            values[name] = None
    return _fill(resolve_channels(values), placeholders)


def user_parameters(spec: dict, values: dict) -> dict:
    """`values` without GCPC's custom-job inputs: the parameters the training function itself takes."""
    from google_cloud_pipeline_components.v1.custom_job import component

    job_inputs = set(component.custom_training_job.component_spec.inputs)
    return {k: v for k, v in values.items() if k not in job_inputs}


def executor_input(spec: dict, values: dict, pipeline_root: str = PIPELINE_ROOT) -> dict:
    """A plausible ExecutorInput for the training task: its parameters and artifacts under the pipeline root."""
    component = spec["components"][spec["root"]["dag"]["tasks"][TRAIN_TASK]["componentRef"]["name"]]
    task_root = f"{pipeline_root}/{PROJECT}/mnist-training-{JOB_UUID}/{TRAIN_TASK}_{TASK_UUID}"

    def artifacts(definitions, where):
        return {name: {"artifacts": [{"name": name, "type": {"schemaTitle": d["artifactType"]["schemaTitle"]},
                                      "uri": f"{where}/{name}", "metadata": {}}]}
                for name, d in definitions.get("artifacts", {}).items()}

    return {"inputs": {"parameterValues": values,
                       "artifacts": artifacts(component["inputDefinitions"], f"{pipeline_root}/download-data")},
            "outputs": {"artifacts": artifacts(component.get("outputDefinitions", {}), task_root),
                        "outputFile": "/gcs/" + f"{task_root}/executor_output.json".removeprefix("gs://")}}


def launcher_request(spec: dict, arguments: dict | None = None, pipeline_root: str = PIPELINE_ROOT,
                     job_uuid: str = JOB_UUID) -> tuple[str, dict, dict]:
    """Returns (parent, custom_job, executor_input): what GCPC's launcher passes to create_custom_job_with_client.

    Raises:
      AssertionError: the training task is not a GCPC custom job.
    """
    from google_cloud_pipeline_components.container.v1.custom_job import remote_runner
    from google_cloud_pipeline_components.container.v1.gcp_launcher.utils import json_util

    placeholders = pipeline_placeholders(pipeline_root, job_uuid)
    values = task_parameters(spec, arguments, placeholders)
    task = spec["root"]["dag"]["tasks"][TRAIN_TASK]
    executor_label = spec["components"][task["componentRef"]["name"]]["executorLabel"]
    container = spec["deploymentSpec"]["executors"][executor_label]["container"]
    assert container["command"][-1] == "google_cloud_pipeline_components.container.v1.custom_job.launcher", \
        container["command"]
    args = container["args"]
    assert args[args.index("--type") + 1] == "CustomJob"

    def substitute(template: str) -> str:
        for name, value in values.items():
            # Strings go in as they are (the template quotes them); everything else as JSON.
            text = value if isinstance(value, str) else json.dumps(value)
            template = template.replace("{{$.inputs.parameters['%s']}}" % name, text)
        return template

    payload = substitute(args[args.index("--payload") + 1])
    inputs = executor_input(spec, user_parameters(spec, values), pipeline_root)
    # The worker pools' `{{$}}` became `{{$.json_escape[1]}}` (GCPC's utils.py): the executor input, escaped
    # once more because it sits inside a JSON string of the payload.
    payload = payload.replace("{{$.json_escape[1]}}", json.dumps(json.dumps(inputs))[1:-1])
    payload = _fill(payload, placeholders)
    assert "{{$" not in payload, f"unresolved placeholder in the payload: {payload}"
    payload = remote_runner.insert_system_labels_into_payload(payload)
    job = json_util.recursive_remove_empty(json.loads(payload, strict=False))
    parent = f"projects/{substitute(args[args.index('--project') + 1])}/locations/" \
             f"{substitute(args[args.index('--location') + 1])}"
    return parent, whole_floats_to_ints(job), inputs
