"""The `mnist-training` pipeline: download -> validate -> train -> evaluate -> gate -> export (-> register).

Hardware and image URIs are fixed when the pipeline is built (KFP cannot take
them as runtime parameters): `build()` makes the pipeline function for one
`hardware.Hardware` and one image registry and tag. Everything else is a
pipeline parameter, checked against `PARAMETER_RULES` by the local runner and
the submitter before a run starts.
"""

# No `from __future__ import annotations`: KFP reads the pipeline's annotations as types.
import os
import sys
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Markdown, Metrics

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from components import component  # noqa: E402
from mnistkit import recipes  # noqa: E402
from components.data import download_data, validate_data  # noqa: E402
from components.model import check_accuracy, evaluate_model, export_model, train_model  # noqa: E402
from components.registry import register_model  # noqa: E402
from pipelines.hardware import Hardware  # noqa: E402

PIPELINE_NAME = "mnist-training"
DEFAULT_SOURCE = "gs://cvdf-datasets/mnist/"
RECIPES = tuple(recipes.RECIPES)
# The pipeline's defaults are the 'fast' recipe's, so that leaving them alone trains that recipe.
FAST = recipes.RECIPES["fast"]
# A prebuilt Vertex AI prediction image for TensorFlow SavedModels.
DEFAULT_SERVING_IMAGE = "us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest"

# What a value must satisfy beyond its type: (minimum, maximum, choices); None is no bound.
PARAMETER_RULES = {
    "batch_size": (1, None, None),
    "train_epochs": (1, None, None),
    "epochs_between_evals": (1, None, None),
    "stop_threshold": (0.0, 1.0, None),
    "min_accuracy": (0.0, 1.0, None),
    "learning_rate": (0.0, None, None),  # Exclusive: a rate of 0 learns nothing.
    "max_train_examples": (0, None, None),
    "recipe": (None, None, RECIPES),
}
EXCLUSIVE_MINIMUM = ("learning_rate",)


def build(hardware: Hardware = Hardware(), registry: str | None = None, tag: str | None = None):
    """Returns the `mnist-training` pipeline function for `hardware` and the images of `registry`:`tag`."""
    cpu = dict(registry=registry, tag=tag)
    download_op = component(download_data, **cpu)
    validate_op = component(validate_data, **cpu)
    train_op = component(train_model, kind=hardware.image_kind, **cpu)
    evaluate_op = component(evaluate_model, **cpu)
    check_op = component(check_accuracy, **cpu)
    export_op = component(export_model, **cpu)
    register_op = component(register_model, **cpu)
    if hardware.custom_job:
        train_op = _custom_job(train_op, hardware)

    @dsl.pipeline(name=PIPELINE_NAME, description="The tensorflow/models official/r1/mnist CNN: verified data, "
                  "training with a stop threshold, evaluation, and a SavedModel exported when accurate enough.")
    def mnist_training(
        source: str = DEFAULT_SOURCE,
        verify_checksums: bool = True,
        recipe: str = "fast",
        batch_size: int = FAST["batch_size"],
        train_epochs: int = FAST["train_epochs"],
        epochs_between_evals: int = 1,
        stop_threshold: float = 0.99,
        learning_rate: float = FAST["learning_rate"],
        max_train_examples: int = 0,
        min_accuracy: float = 0.98,
        register: bool = False,
        model_display_name: str = "mnist-cnn",
        serving_image: str = DEFAULT_SERVING_IMAGE,
    ) -> NamedTuple("Outputs", metrics=Metrics, verdict=Markdown):
        """Trains the MNIST CNN and exports it as a SavedModel when its test accuracy is high enough.

        Args:
          source: The MNIST mirror: gs://BUCKET/PREFIX, an http(s):// base URL
            or a directory.
          verify_checksums: Require MNIST's own files (SHA-256 and canonical
            sizes); False accepts any well-formed IDX files.
          recipe: 'fast' (per-epoch cosine schedule, bfloat16 where the
            hardware has it) or 'seed' (constant rate, float32). For the seed's
            own run also set batch_size 100, learning_rate 0.0001, train_epochs 40.
          batch_size: Global batch size.
          train_epochs: Epochs to train at most.
          epochs_between_evals: Evaluate on the test split every this many epochs.
          stop_threshold: Stop training once test accuracy reaches this (0 to 1).
          learning_rate: Adam's (peak) learning rate.
          max_train_examples: Train on only this many examples; 0 means all.
          min_accuracy: The export gate: the test accuracy a model needs to be
            exported (0 to 1).
          register: Also upload the exported model to the Vertex AI Model Registry.
          model_display_name: The registered model's name.
          serving_image: The prediction image of the registered model.

        Returns:
          metrics: Test accuracy, loss and examples.
          verdict: Whether the model was exported, and why.
        """
        download = download_op(source=source, verify_checksums=verify_checksums).set_display_name("download-data")
        validate = validate_op(data=download.outputs["data"], canonical=verify_checksums)
        validate.set_display_name("validate-data")
        train = train_op(data=download.outputs["data"], recipe=recipe, batch_size=batch_size,
                         train_epochs=train_epochs, epochs_between_evals=epochs_between_evals,
                         stop_threshold=stop_threshold, learning_rate=learning_rate,
                         max_train_examples=max_train_examples, tpu="local" if hardware.kind == "tpu" else "")
        train.set_display_name("train-model").after(validate)
        if not hardware.custom_job and hardware.accelerator_type:
            train.set_accelerator_type(hardware.accelerator_type).set_accelerator_limit(hardware.accelerator_count)
        evaluate = evaluate_op(data=download.outputs["data"], model=train.outputs["model"])
        evaluate.set_display_name("evaluate-model")
        # The gate reads single outputs: kfp 2.17.3's local runner skips a
        # branch gated on a NamedTuple field (see PLATFORM.md).
        check = check_op(accuracy=evaluate.outputs["Output"], min_accuracy=min_accuracy)
        check.set_display_name("check-accuracy")
        with dsl.If(check.outputs["Output"] == True, name="accuracy-gate"):  # noqa: E712 (a KFP condition)
            export = export_op(model=train.outputs["model"]).set_display_name("export-model")
            with dsl.If(register == True, name="register-requested"):  # noqa: E712
                register_op(saved_model=export.outputs["saved_model"], display_name=model_display_name,
                            serving_image=serving_image).set_display_name("register-model")
        outputs = NamedTuple("Outputs", metrics=Metrics, verdict=Markdown)
        return outputs(metrics=evaluate.outputs["metrics"], verdict=check.outputs["verdict"])

    return mnist_training


def _custom_job(train_op, hardware: Hardware):
    """Wraps the training component in a Vertex AI custom job on the machines `hardware` names."""
    from google_cloud_pipeline_components.v1.custom_job import create_custom_training_job_from_component

    job = create_custom_training_job_from_component(
        train_op, display_name="train-model", machine_type=hardware.machine_type,
        accelerator_type=hardware.accelerator_type, accelerator_count=hardware.accelerator_count or 1,
        replica_count=hardware.replica_count)
    if hardware.tpu_topology:
        # GCPC has no argument for it; the topology belongs in each pool's machine spec.
        for pool in job.component_spec.inputs["worker_pool_specs"].default:
            pool["machine_spec"]["tpu_topology"] = hardware.tpu_topology
    return job


mnist_training = build()
