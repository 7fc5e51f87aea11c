"""The `mnist-training` pipeline: download -> validate -> train -> evaluate -> gate -> export (-> register).

Hardware and image URIs are fixed when the pipeline is built (KFP cannot take
them as runtime parameters): `build()` makes the pipeline function for one
`hardware.Hardware` and one image registry and tag. Everything else is a
pipeline parameter, checked against `PARAMETER_RULES` by the local runner and
the submitter before a run starts.
"""

# No `from __future__ import annotations`: KFP reads the pipeline's annotations as types.
import inspect
import warnings
from typing import NamedTuple

from google_cloud_pipeline_components.v1.endpoint import ModelDeployOp
from google_cloud_pipeline_components.v1.model import ModelUploadOp
from kfp import dsl
from kfp.dsl import Markdown, Metrics

from components import component
from components.data import download_data, validate_data
from components.model import check_accuracy, evaluate_model, export_model, train_model
from components.registry import (check_baseline, deployment_endpoint, make_default_version, registration_inputs,
                                 undeploy_earlier_versions)
from mnistkit import recipes, registry, train_config
from mnistkit.fetch import DEFAULT_SOURCE  # Re-exported: the CVDF bucket, its HTTPS form, another mirror.
from pipelines.hardware import Hardware
from pipelines.vertex_machines import check_region, serves_prediction

with warnings.catch_warnings():  # Importing GCPC's preview evaluation package warns about its own components.
    warnings.simplefilter("ignore", FutureWarning)
    from google_cloud_pipeline_components.preview.model_evaluation import ModelImportEvaluationOp

PIPELINE_NAME = "mnist-training"
RECIPES = tuple(recipes.RECIPES)
# The prebuilt Vertex AI prediction image of the newest TensorFlow the installed aiplatform lists
# (tests/test_serving_image.py checks that an export of this project's TensorFlow answers in that version).
DEFAULT_SERVING_IMAGE = registry.default_serving_image()

def parameter_rules(config_class=train_config.TrainConfig) -> dict:
    """What each value must satisfy beyond its type: name -> (minimum, maximum, choices); None is no bound.

    The training parameters' rules come from their declarations in `config_class` (mnistkit/train_config.py).
    """
    return {**{field.name: train_config.pipeline_rule(field) for field in train_config.pipeline_fields(config_class)},
            "min_accuracy": (0.0, 1.0, None), "baseline_margin": (0.0, 1.0, None), "recipe": (None, None, RECIPES)}


PARAMETER_RULES = parameter_rules()
EXCLUSIVE_MINIMUM = ()
# What a string must look like, matched whole: (regular expression, what to say was expected). The registry
# and deployment values are only used after training, so a bad one is refused here, before the run starts.
PARAMETER_PATTERNS = {
    "endpoint": (r"(projects/[^/]+/locations/[a-z0-9-]+/endpoints/[0-9]+)?",
                 "empty or projects/PROJECT/locations/REGION/endpoints/NUMBER"),
    # A service account's address: NAME@PROJECT.iam.gserviceaccount.com (user-managed) or Compute Engine's default
    # PROJECT_NUMBER-compute@developer.gserviceaccount.com. A user's own e-mail failed only in the train step.
    "service_account": (r"([^@\s]+@[a-z0-9-]+(\.[a-z0-9-]+)*\.gserviceaccount\.com)?",
                        "empty (Vertex AI's service agent) or a service account's e-mail such as "
                        "NAME@PROJECT.iam.gserviceaccount.com or PROJECT_NUMBER-compute@developer.gserviceaccount.com"),
    "project": (r"(([a-z0-9.-]+:)?[a-z][a-z0-9-]{4,28}[a-z0-9]|[0-9]{6,20})?",
                "empty or a project ID (6-30 of [a-z0-9-], starting with a letter) or number"),
    "region": (r"([a-z]+-[a-z]+[0-9]+)?", "empty or a Vertex AI region such as us-central1"),
    # Vertex AI takes any name of 1-128 characters, but GCPC's upload and endpoint steps write it into JSON
    # as it is: a quote, a backslash or a control character would break their request.
    "model_display_name": (r'[^"\\\x00-\x1f]{1,128}',
                           "1-128 characters, none of them a quote, a backslash or a control character"),
    "endpoint_machine_type": (r"[a-z][a-z0-9]*-[a-z0-9]+(-[a-z0-9]+)*", "a machine type such as n1-standard-2"),
    # Relative to nothing the steps share: a relative path would land in a container's working directory.
    # No '..' part: gs://b/../../tmp/ck became /gcs/b/../../tmp/ck, the VM's own /tmp/ck, gone when the job ends.
    "checkpoint_root": (r"(?!(.*/)?\.\.(/|$))(gs://[a-z0-9][a-z0-9._-]{1,220}[a-z0-9](/\S*)?|/\S.*)?",
                        "empty, gs://BUCKET[/PATH] or an absolute path, with no '..' part"),
    # Its form; check_combination also wants a CPU image of a TensorFlow the export is known to load in.
    "serving_image": (r"[a-z0-9.-]+(:[0-9]+)?(/[a-z0-9._-]+)+/tf2-(cpu|gpu)\.[0-9]+-[0-9]+(:[A-Za-z0-9_.-]+)?",
                      f"a Vertex AI prebuilt TensorFlow 2 prediction image such as {DEFAULT_SERVING_IMAGE}"),
}


def serving_images() -> list:
    """The serving images a run may name: the tf2-cpu prediction images the installed aiplatform lists, in its
    us, europe and asia registries, of the default image's TensorFlow or newer; newest first."""
    tested = tuple(map(int, registry.serving_tensorflow_version(DEFAULT_SERVING_IMAGE).split(".")))
    return [uri for region in ("us", "europe", "asia")
            for version, uri in registry.tensorflow_serving_images("cpu", region) if version >= tested]


def check_combination(values: dict, replicas: int = 1) -> None:
    """Checks what no single parameter's rule can: `values` are the run's, defaults included; `replicas` the
    fewest the template's training runs as (hardware.replicas_in).

    Raises:
      ValueError: naming the parameter, what was expected and what was found.
    """
    recipe = recipes.RECIPES.get(values.get("recipe", ""))
    if recipe:  # Refused now, not in the train step after the data steps (on Vertex AI, after machines start).
        batch = values.get("batch_size") or recipe["batch_size"]
        given = "" if values.get("batch_size") else f" (recipe {values['recipe']}'s; set batch_size)"
        if batch % replicas:
            raise ValueError(f"parameter batch_size: expected a multiple of the {replicas} replicas this template "
                             f"trains on, found {batch}{given}")
        limit = values.get("max_train_examples") or 0
        epoch = max(1, round(recipe["epoch_fraction"] * limit)) if limit else batch
        if batch > epoch:
            raise ValueError(f"parameter batch_size: expected at most the {epoch} training examples of an epoch "
                             f"(recipe {values['recipe']}'s epoch_fraction {recipe['epoch_fraction']:g} of "
                             f"max_train_examples {limit}), found {batch}{given}")
    stop, gate = values.get("stop_threshold"), values.get("min_accuracy")
    if stop is not None and gate is not None and stop < gate:
        # Training would stop at an accuracy the export gate then refuses: a whole run that could export nothing.
        raise ValueError(f"parameter stop_threshold: expected at least min_accuracy {gate:g} (training would stop "
                         f"before the export gate's accuracy), found {stop:g}")
    image = values.get("serving_image")
    if image and image not in serving_images():
        # The endpoint has no accelerator; tests/test_serving_image.py loads the export in the default's version.
        # Only an image aiplatform lists: a made-up version or another registry was uploaded as the Registry's
        # default version and failed only when deployed (or never served).
        tested = registry.serving_tensorflow_version(DEFAULT_SERVING_IMAGE)
        raise ValueError(f"parameter serving_image: expected a tf2-cpu prediction image of TensorFlow {tested} or "
                         f"newer (the endpoint has no accelerator; the export is tested in {tested}) that "
                         f"google-cloud-aiplatform lists: {', '.join(serving_images())}; found {image}")
    machine = values.get("endpoint_machine_type")
    if machine and not serves_prediction(machine):
        # Else refused only by the deploy step, after the upload had already moved the Registry's default version.
        raise ValueError(f"parameter endpoint_machine_type: expected a CPU machine type Vertex AI prediction serves "
                         f"(n1-standard-2, e2-standard-4, n2-highmem-8, ...; the endpoint gets no accelerator and "
                         f"the serving image is tf2-cpu), found {machine!r}")
    if values.get("deploy") and not values.get("register"):
        raise ValueError("parameter deploy: expected together with register=true (only a registered version is "
                         "deployed), found deploy=true with register=false")
    region, endpoint = values.get("region", ""), values.get("endpoint", "")
    if region:
        check_region(region, "parameter region")
    if endpoint and region and registry.endpoint_location(endpoint) != region:
        raise ValueError(f"parameter endpoint: expected an endpoint in region {region} (where the model is "
                         f"registered), found one in {registry.endpoint_location(endpoint)}: {endpoint}")


def build(hardware: Hardware = Hardware(), registry: str | None = None, tag: str | None = None,
          config_class=train_config.TrainConfig):
    """Returns the `mnist-training` pipeline function for `hardware` and the images of `registry`:`tag`.

    `config_class` (TrainConfig, or in tests a subclass declaring more) gives the training parameters.
    """
    cpu = dict(registry=registry, tag=tag)
    download_op = component(download_data, **cpu)
    validate_op = component(validate_data, **cpu)
    train_op = component(train_model, kind=hardware.image_kind, **cpu)
    evaluate_op = component(evaluate_model, **cpu)
    check_op = component(check_accuracy, **cpu)
    export_op = component(export_model, **cpu)
    baseline_op = component(check_baseline, **cpu)
    registration_op = component(registration_inputs, **cpu)
    endpoint_op = component(deployment_endpoint, **cpu)
    undeploy_op = component(undeploy_earlier_versions, **cpu)
    default_op = component(make_default_version, **cpu)
    if hardware.custom_job:
        train_op = _custom_job(train_op, hardware)

    def mnist_training(
        source: str = DEFAULT_SOURCE,
        verify_checksums: bool = True,
        recipe: str = "fast",
        # Here come the training parameters of mnistkit/train_config.py (see _with_training_parameters).
        min_accuracy: float = 0.98,
        register: bool = False,
        model_display_name: str = "mnist-cnn",
        serving_image: str = DEFAULT_SERVING_IMAGE,
        baseline_margin: float = 0.002,
        deploy: bool = False,
        endpoint_machine_type: str = "n1-standard-2",
        endpoint: str = "",
        project: str = "",
        region: str = "",
        service_account: str = "",
        checkpoint_root: str = "",
        **training,
    ) -> NamedTuple("Outputs", metrics=Metrics, verdict=Markdown):
        """Trains the MNIST CNN and exports it as a SavedModel when its test accuracy is high enough.

        Args:
          source: The MNIST mirror: gs://BUCKET/PREFIX, an http(s):// base URL
            or a directory; several, separated by commas, are tried in order.
          verify_checksums: Require MNIST's own files (SHA-256 and canonical
            sizes); False accepts any well-formed IDX files.
          recipe: The whole set of training hyperparameters: 'fast' (per-epoch
            cosine schedule, bfloat16 where the hardware has it) or 'seed' (the
            seed's Adam 1e-4, batch 100, 40 epochs, constant rate, float32).
          {training}
          min_accuracy: The export gate: the test accuracy a model needs to be
            exported (0 to 1).
          register: Also register the exported model in the Vertex AI Model
            Registry: a new version of the model named model_display_name
            (a new model if none has that name), with its evaluation.
          model_display_name: The registered model's name.
          serving_image: The prediction image of the registered model.
          baseline_margin: The registration gate: a new version is registered
            unless its test accuracy is below the default version's by more
            than this (0 to 1).
          deploy: With register, also deploy the new version to a Vertex AI
            endpoint, where it takes all the traffic; the versions of the
            model deployed there before are then undeployed. A run that
            registers nothing deploys the baseline (the default version)
            instead, unless it has all the endpoint's traffic already;
            earlier versions at 0% are undeployed either way.
          endpoint_machine_type: The machine type serving the deployed model.
          endpoint: The endpoint to deploy to,
            projects/PROJECT/locations/REGION/endpoints/ID; empty: the one
            named model_display_name, created by the first run that deploys.
            One where another model gets traffic is refused.
          project: The Google Cloud project of the Model Registry; submit.py
            sets the run's. Empty: $GOOGLE_CLOUD_PROJECT, else
            $CLOUD_ML_PROJECT_ID, where the Registry steps run.
          region: The region of the Model Registry and endpoint; submit.py
            sets the run's. Empty: $GOOGLE_CLOUD_REGION, else
            $CLOUD_ML_REGION, where the Registry steps run.
          service_account: The account the training custom job runs as
            (templates that train as a custom job; submit.py sets the run's
            own); empty: Vertex AI's Custom Code Service Agent.
          checkpoint_root: Where training keeps its checkpoints (gs:// or a
            directory); set it to resume a resubmitted run. Empty: the custom
            job's AIP_CHECKPOINT_DIR (kept per run), else the model artifact.

        Returns:
          metrics: Test accuracy, loss and examples.
          verdict: Whether the model was exported, and why.
        """
        download = download_op(source=source, verify_checksums=verify_checksums).set_display_name("download-data")
        validate = validate_op(data=download.outputs["data"], canonical=verify_checksums)
        validate.set_display_name("validate-data")
        # A dict of pipeline channels: KFP passes it as one STRUCT whose values the backend fills in as text.
        train = train_op(data=download.outputs["data"], recipe=recipe, overrides=training,
                         tpu="local" if hardware.kind == "tpu" else "",
                         checkpoint_dir=checkpoint_root,
                         **({"service_account": service_account} if hardware.custom_job else {}))
        train.set_display_name("train-model").after(validate)
        if hardware.custom_job:
            # A retried task starts a new custom job with the same base_output_directory: it resumes.
            train.set_retry(num_retries=3, backoff_duration="60s", backoff_factor=2.0, backoff_max_duration="600s")
        if not hardware.custom_job and hardware.accelerator_type:
            train.set_accelerator_type(hardware.accelerator_type).set_accelerator_limit(hardware.accelerator_count)
        evaluate = evaluate_op(data=download.outputs["data"], model=train.outputs["model"])
        evaluate.set_display_name("evaluate-model")
        # The gate reads single outputs: kfp 2.17.3's local runner silently skips a
        # branch gated on a NamedTuple field (it cannot resolve the field, logs a
        # warning, and the run still ends in SUCCESS).
        check = check_op(accuracy=evaluate.outputs["Output"], min_accuracy=min_accuracy)
        check.set_display_name("check-accuracy")
        with dsl.If(check.outputs["Output"] == True, name="accuracy-gate"):  # noqa: E712 (a KFP condition)
            export = export_op(model=train.outputs["model"]).set_display_name("export-model")
            with dsl.If(register == True, name="register-requested"):  # noqa: E712
                _register(baseline_op, registration_op, default_op, endpoint_op, undeploy_op, export, evaluate,
                          model_display_name, serving_image, baseline_margin, deploy, endpoint_machine_type, endpoint,
                          project, region)
        outputs = NamedTuple("Outputs", metrics=Metrics, verdict=Markdown)
        return outputs(metrics=evaluate.outputs["metrics"], verdict=check.outputs["verdict"])

    return dsl.pipeline(name=PIPELINE_NAME, description="The tensorflow/models official/r1/mnist CNN: verified "
                        "data, training with a stop threshold, evaluation, and a SavedModel exported when "
                        "accurate enough.")(_with_training_parameters(mnist_training, config_class))


def _with_training_parameters(pipeline_func, config_class=train_config.TrainConfig):
    """`pipeline_func` taking, after `recipe`, one parameter per training field the config exposes.

    KFP reads a pipeline's parameters from inspect.signature, their descriptions from the docstring's Args, and
    calls the function positionally with one channel per parameter: the wrapper has a generated signature and
    docstring, and hands the training parameters on to `pipeline_func` as keyword arguments.
    """
    fields = train_config.pipeline_fields(config_class)
    own = [p for p in inspect.signature(pipeline_func).parameters.values() if p.kind != p.VAR_KEYWORD]
    at = [p.name for p in own].index("recipe") + 1
    training = [inspect.Parameter(f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=f.pipeline,
                                  annotation=f.kind) for f in fields]
    parameters = own[:at] + training + own[at:]

    def with_training(*args):
        return pipeline_func(**dict(zip([p.name for p in parameters], args)))

    with_training.__name__ = pipeline_func.__name__
    with_training.__signature__ = inspect.signature(pipeline_func).replace(parameters=parameters)
    indent = "\n" + " " * 10
    with_training.__doc__ = pipeline_func.__doc__.replace("{training}", indent.join(
        f"{f.name}: {train_config.pipeline_help(f)}" for f in fields))
    return with_training


def _register(baseline_op, registration_op, default_op, endpoint_op, undeploy_op, export, evaluate, display_name,
              serving_image, baseline_margin, deploy, machine_type, endpoint_name, project, region):
    """The registration branch: baseline gate, then GCPC's upload, evaluation import and (optionally) deployment.

    GCPC's ModelUploadOp sends `parent_model` only when the task is given one
    (kubeflow/pipelines#8257, #8881), so a new version and a first model are
    two tasks under exclusive conditions, joined by dsl.OneOf. Uploads with a
    parent do not move the "default" alias (kubeflow/pipelines#8882), and the
    next run's baseline is the default: a step moves it to the new version
    once its evaluation is imported, so the default always carries one.
    Project and region are pipeline parameters rather than the run's
    placeholders, which kfp.local cannot resolve (it fails on them); the gate
    resolves them (empty: from the environment) for every later step.

    No step here that reads or changes the Registry or an endpoint is served
    from Vertex AI's cache: their inputs are the same from run to run, the
    Registry is not, and a cached upload or deployment does nothing.
    """
    gate = baseline_op(accuracy=evaluate.outputs["Output"], display_name=display_name,
                       baseline_margin=baseline_margin, project=project, location=region,
                       saved_model=export.outputs["saved_model"])
    gate.set_display_name("check-baseline")
    where = dict(project=gate.outputs["registry_project"], location=gate.outputs["registry_location"])
    inputs = registration_op(saved_model=export.outputs["saved_model"], metrics=evaluate.outputs["metrics"],
                             confusion_matrix=evaluate.outputs["confusion_matrix"], serving_image=serving_image)
    inputs.set_display_name("registration-inputs")
    # Single-output conditions: kfp.local skips branches gated on a NamedTuple field (see build()).
    with dsl.If(gate.outputs["Output"] != registry.KEEP_BASELINE, name="baseline-gate"):
        with dsl.If(gate.outputs["Output"] == registry.NEW_VERSION, name="new-version"):
            version = ModelUploadOp(display_name=display_name, parent_model=gate.outputs["parent_model"],
                                    unmanaged_container_model=inputs.outputs["model"],
                                    **where).set_display_name("upload-version")
        with dsl.Else(name="first-model"):
            first = ModelUploadOp(display_name=display_name, unmanaged_container_model=inputs.outputs["model"],
                                  **where).set_display_name("upload-model")
        uploaded = dsl.OneOf(version.outputs["model"], first.outputs["model"])
        imported = ModelImportEvaluationOp(model=uploaded, classification_metrics=inputs.outputs["evaluation"],
                                           display_name="mnist-test-split").set_display_name("import-evaluation")
        default = default_op(model=uploaded, **where).set_display_name("make-default-version").after(imported)
        with dsl.If(deploy == True, name="deploy-requested"):  # noqa: E712
            # Only a version that carries its evaluation and is the default serves.
            deployment = _deploy(endpoint_op, undeploy_op, uploaded, endpoint_name, display_name, machine_type, where)
            deployment[0].after(default)
    with dsl.Else(name="baseline-kept"):
        # Asked to deploy, a run that keeps the baseline (worse, or this very SavedModel from the cache) leaves the
        # endpoint serving the baseline, the default version: deployed unless it has all the traffic already.
        with dsl.If(deploy == True, name="deploy-baseline"):  # noqa: E712
            kept = _deploy(endpoint_op, undeploy_op, gate.outputs["baseline_version"], endpoint_name, display_name,
                           machine_type, where)
    for task in (gate, version, first, imported, default, *deployment, *kept):
        task.set_caching_options(False)


def _deploy(endpoint_op, undeploy_op, model, endpoint_name, display_name, machine_type, where) -> tuple:
    """Deploys `model` (a VertexModel, resourceName MODEL@VERSION) with all the endpoint's traffic, unless it has
    it already, then undeploys the versions of it deployed there before. Returns the tasks.

    The endpoint given, else the one named like the model (created once, reused by later runs).
    """
    target = endpoint_op(resource_name=endpoint_name, display_name=display_name, model=model,
                         **where).set_display_name("deployment-endpoint")
    with dsl.If(target.outputs["Output"] == registry.DEPLOY, name="not-serving-yet"):
        deployed = ModelDeployOp(model=model, endpoint=target.outputs["endpoint"],
                                 dedicated_resources_machine_type=machine_type,
                                 dedicated_resources_min_replica_count=1,
                                 dedicated_resources_max_replica_count=1, traffic_split={"0": 100}
                                 ).set_display_name("deploy-model")
        # The version deployed has all the traffic; the versions deployed before would keep their machines.
        undeployed = undeploy_op(model=model, endpoint=target.outputs["endpoint"],
                                 **where).set_display_name("undeploy-earlier-versions").after(deployed)
    with dsl.Else(name="serving-already"):
        # Versions an earlier run left at 0% (one that failed between its deploy and its undeploy) kept their
        # machines for as long as the version with the traffic stayed.
        idle = undeploy_op(model=model, endpoint=target.outputs["endpoint"],
                           **where).set_display_name("undeploy-earlier-versions")
    return target, deployed, undeployed, idle


def _custom_job(train_op, hardware: Hardware):
    """Wraps the training component in a Vertex AI custom job on the machines `hardware` names."""
    from google_cloud_pipeline_components.v1.custom_job import create_custom_training_job_from_component

    job = create_custom_training_job_from_component(
        train_op, display_name="train-model", machine_type=hardware.machine_type,
        accelerator_type=hardware.accelerator_type, accelerator_count=hardware.accelerator_count or 1,
        replica_count=hardware.replica_count, boot_disk_type=hardware.boot_disk_type,
        # A reclaimed Spot VM, or a lost peer of a multi-worker job (MultiWorkerMirroredStrategy cannot carry on
        # without it), restarts the whole job, which resumes from AIP_CHECKPOINT_DIR.
        restart_job_on_worker_restart=hardware.spot or hardware.replica_count > 1,
        strategy="SPOT" if hardware.spot else "STANDARD", tensorboard=hardware.tensorboard,
        # Empty values rather than GCPC's None, which leaves these payload fields without any default.
        labels={}, reserved_ip_ranges=[], psc_interface_config={},
        # Keyed by the run, not the task: a restarted job and a retried task of the same run find the same
        # AIP_CHECKPOINT_DIR (base/checkpoints); AIP_MODEL_DIR and AIP_TENSORBOARD_LOG_DIR go beside it.
        # Vertex AI fills these placeholders in a default value, as it does GCPC's own persistent_resource_id.
        base_output_directory=f"{dsl.PIPELINE_ROOT_PLACEHOLDER}/{dsl.PIPELINE_JOB_ID_PLACEHOLDER}/train-model")
    if hardware.tpu_topology:
        # GCPC has no argument for it. As the pinned aiplatform client builds a TPU job (worker_spec_utils.py):
        # one replica, the topology in the chief pool's machine spec.
        job.component_spec.inputs["worker_pool_specs"].default[0]["machine_spec"]["tpu_topology"] = \
            hardware.tpu_topology
    return job


def __getattr__(name: str):
    """`mnist_training`: the CPU pipeline with the default images, built when asked for. Building reads
    $MNISTKIT_IMAGE_REGISTRY and $MNISTKIT_IMAGE_TAG: importing this module (submit.py does, to check a
    compiled template) must not fail on them, and compile.py's --registry and --tag must win over them."""
    if name == "mnist_training":
        return build()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
