"""The model steps: train, evaluate, gate on accuracy, export a SavedModel."""

from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output


def train_model(data: Input[Dataset], model: Output[Model], recipe: str, overrides: dict, tpu: str = "",
                checkpoint_dir: str = ""):
    """Trains the seed's CNN, evaluating every few epochs and stopping at a threshold.

    Args:
      data: The validated MNIST directory.
      model: model.keras, history.json, TensorBoard logs and, unless they go elsewhere, checkpoints.
      recipe: 'fast' (per-epoch cosine schedule) or 'seed' (constant rate, float32).
      overrides: The pipeline's training parameters (mnistkit/train_config.py declares them): name -> value,
        as each parameter's description says (0 for batch_size, train_epochs, learning_rate: the recipe's).
      tpu: 'local' on a TPU VM; empty elsewhere.
      checkpoint_dir: gs:// or path where checkpoints outlive this task, so a retried task or a resubmitted
        run with the same settings resumes; empty: $AIP_CHECKPOINT_DIR on Vertex AI, else inside `model`.
    """
    from mnistkit import tf_settings

    tf_settings.apply()  # First: before TensorFlow loads.
    from mnistkit import train_config, training

    config = train_config.from_pipeline(recipe, overrides, data_dir=data.path, model_dir=model.path,
                                        tpu=tpu or None, checkpoint_dir=checkpoint_dir or None)
    result = training.train(config)
    model.metadata.update({"framework": "keras", "epochs": result["epochs"], "stopped_early": result["stopped_early"]})


def evaluate_model(data: Input[Dataset], model: Input[Model], metrics: Output[Metrics],
                   confusion_matrix: Output[ClassificationMetrics], class_metrics: Output[Metrics],
                   report: Output[HTML]) -> float:
    """Evaluates the trained model on the test split.

    Args:
      data: The validated MNIST directory.
      model: The trained model.
      metrics: Test accuracy, loss and number of examples.
      confusion_matrix: Rows are true digits, columns predicted ones.
      class_metrics: precision_D and recall_D for each digit D (left out where undefined, 0 / 0).
      report: A self-contained HTML page of figures: accuracy and loss by
        epoch, confusion matrix, per-digit precision and recall, the most
        confidently misclassified digits, examples per digit.

    Returns:
      The test accuracy, for the export gate.
    """
    from mnistkit import tf_settings

    tf_settings.apply()  # First: before TensorFlow loads.
    from mnistkit import evaluation
    from mnistkit.report import write_report

    result = evaluation.evaluate(model.path, data.path)
    for name in ("accuracy", "loss", "examples"):
        metrics.log_metric(name, result[name])
    for digit in range(10):
        for name in ("precision", "recall"):
            if result[name][digit] is not None:  # None: 0 / 0, a digit absent from the test split or never predicted.
                class_metrics.log_metric(f"{name}_{digit}", result[name][digit])
    confusion_matrix.log_confusion_matrix([str(d) for d in range(10)], result["confusion_matrix"])
    write_report(report.path, model.path, data.path, result)
    return result["accuracy"]


def check_accuracy(accuracy: float, min_accuracy: float, verdict: Output[Markdown]) -> bool:
    """The export gate: passes when the test accuracy reaches `min_accuracy`.

    Args:
      accuracy: The test accuracy evaluate_model measured.
      min_accuracy: The accuracy a model needs to be exported (0 to 1).
      verdict: One sentence saying whether the model is exported, and why.

    Returns:
      Whether the model is exported.
    """
    from mnistkit import gates

    passed, text = gates.export_verdict(accuracy, min_accuracy)
    with open(verdict.path, "w") as f:
        f.write(text)
    print(text)
    return passed


def export_model(model: Input[Model], saved_model: Output[Model]):
    """Exports the trained model as a SavedModel with the `classify` signature.

    Args:
      model: The trained model.
      saved_model: Holds one timestamped SavedModel directory; metadata
        `export_uri` is its full URI, the one to serve or register.
    """
    import os

    from mnistkit import tf_settings

    tf_settings.apply()  # First: before TensorFlow loads.
    from mnistkit import exporting, sigterm

    sigterm.exit_on_sigterm()  # A preempted step removes its partial SavedModel before it exits.
    # The artifact is this step's alone and holds one version: a retry starts it over.
    path = exporting.export(model.path, saved_model.path, sole_writer=True)
    saved_model.metadata.update({"framework": "tensorflow", "signature": exporting.SIGNATURE,
                                 "export_uri": saved_model.uri.rstrip("/") + "/" + os.path.basename(path)})
