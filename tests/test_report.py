"""The run's HTML report, from `mnist-evaluate --report_dir` and the pipeline's evaluate step, checked in chromium.

The whole-pipeline run that prints the report's path is in tests/test_pipeline.py
(test_unreachable_threshold_skips_export_and_says_why); it checks the page with
the same tests/browser.py helper.
"""

import json
import os
import subprocess
import sys
from typing import NamedTuple

import pytest
import yaml
from kfp import dsl, local
from kfp.dsl import HTML, Metrics

from mnistkit import report
from tests import browser

BIN = os.path.dirname(sys.executable)

pytestmark = pytest.mark.filterwarnings("ignore:You may be attemping to run a task:RuntimeWarning")


@pytest.fixture(scope="module")
def weak_model(synthetic_data, tmp_path_factory) -> str:
    """A model trained 2 epochs on 64 synthetic examples: right on most test digits, wrong on some, as checks need."""
    from mnistkit import training

    model_dir = str(tmp_path_factory.mktemp("weak-model"))
    training.train(training.TrainConfig.from_recipe(
        "fast", data_dir=synthetic_data, model_dir=model_dir, train_epochs=2, batch_size=32, max_train_examples=64))
    return model_dir


def test_mnist_evaluate_writes_a_report_that_opens_offline_in_chromium(weak_model, synthetic_data, tmp_path):
    report_dir = tmp_path / "report"
    result = subprocess.run([os.path.join(BIN, "mnist-evaluate"), f"--model_dir={weak_model}",
                             f"--data_dir={synthetic_data}", f"--output={tmp_path / 'metrics.json'}",
                             f"--report_dir={report_dir}"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    path = str(report_dir / "report.html")
    assert f"report: {path}" in result.stdout.splitlines()
    assert os.listdir(report_dir) == ["report.html"]  # No temporary file left beside it.
    seen = browser.assert_report_shows_the_run(path, weak_model, synthetic_data, str(tmp_path / "screenshot.png"))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [e["index"] for e in metrics["most_confident_errors"]] == [e["index"] for e in seen["errors"]]
    assert f"Test accuracy {metrics['accuracy']:.4f}" in seen["text"]
    # Both evaluations of the 2-epoch run are in the history table.
    assert "\n1\t" in seen["text"] and "\n2\t" in seen["text"]


def test_the_request_check_sees_a_page_that_reaches_out(tmp_path):
    """The control for the check above: a page that loads an image over HTTP is caught, and that image has no width."""
    page = tmp_path / "leaky.html"
    page.write_text('<!DOCTYPE html><html><body><p>digit</p><img src="http://127.0.0.1:9/x.png"></body></html>')
    seen = browser.open_page(str(page), str(tmp_path / "leaky.png"))
    assert seen["requests"] == [f"file://{page}", "http://127.0.0.1:9/x.png"]
    assert seen["images"] == [{"src": "http://127.0.0.1:9/x.png", "width": 0}]


def test_a_report_dir_that_is_a_file_is_refused_in_one_line(weak_model, synthetic_data, tmp_path):
    not_a_dir = tmp_path / "taken"
    not_a_dir.write_text("")
    result = subprocess.run([os.path.join(BIN, "mnist-evaluate"), f"--model_dir={weak_model}",
                             f"--data_dir={synthetic_data}", f"--output={tmp_path / 'metrics.json'}",
                             f"--report_dir={not_a_dir}"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == \
        f"mnist-evaluate: error: --report_dir: expected a directory, or a path where one can be made, found a file: " \
        f"{not_a_dir}"
    assert sorted(os.listdir(tmp_path)) == ["taken"]  # Refused before anything was written.


def test_the_evaluate_step_declares_an_html_report_and_per_class_metrics(tmp_path):
    from pipelines import compile as compile_module
    from pipelines import hardware

    path = compile_module.compile_pipeline(str(tmp_path / "p.yaml"), hardware.Hardware())
    with open(path) as f:
        outputs = yaml.safe_load(f)["components"]["comp-evaluate-model"]["outputDefinitions"]["artifacts"]
    # system.HTML is the type the Vertex AI console renders as a page.
    assert outputs["report"]["artifactType"]["schemaTitle"] == "system.HTML"
    assert outputs["class_metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"


def test_the_evaluate_step_logs_per_class_metrics_and_writes_the_report(weak_model, synthetic_data, tmp_path):
    """The evaluate component run alone through kfp.local, on the model and data brought in by importers."""
    from components import component
    from components.model import evaluate_model
    from mnistkit import evaluation

    evaluate_op = component(evaluate_model)

    @dsl.pipeline(name="evaluate-alone")
    def evaluate_alone() -> NamedTuple("Outputs", class_metrics=Metrics, report=HTML):
        data = dsl.importer(artifact_uri=synthetic_data, artifact_class=dsl.Dataset, reimport=False)
        model = dsl.importer(artifact_uri=weak_model, artifact_class=dsl.Model, reimport=False)
        task = evaluate_op(data=data.output, model=model.output)
        outputs = NamedTuple("Outputs", class_metrics=Metrics, report=HTML)
        return outputs(class_metrics=task.outputs["class_metrics"], report=task.outputs["report"])

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    task = evaluate_alone()
    expected = evaluation.evaluate(weak_model, synthetic_data)
    logged = task.outputs["class_metrics"].metadata
    # Every defined figure, and only those: the weak model never predicts some digits (precision 0 / 0).
    defined = {f"{kind}_{d}": expected[kind][d] for kind in ("precision", "recall") for d in range(10)
               if expected[kind][d] is not None}
    assert sorted(logged) == sorted(defined) and len(defined) >= 10
    for name, value in defined.items():
        assert logged[name] == pytest.approx(value)
    with open(task.outputs["report"].path) as f:
        page = f.read()
    assert page.startswith("<!DOCTYPE html>") and page.count('class="error"') == len(expected["most_confident_errors"])
    assert all(f'data-index="{e["index"]}"' in page for e in expected["most_confident_errors"])


def test_the_page_says_when_there_is_no_history_or_no_error():
    import numpy as np

    result = {"examples": 2, "loss": 0.1, "accuracy": 1.0, "precision": [1.0] * 2 + [None] * 8,
              "recall": [1.0] * 2 + [None] * 8,
              "confusion_matrix": np.diag([1, 1] + [0] * 8).tolist(), "most_confident_errors": []}
    page = report.render(result, [], {"train": [1] * 10, "test": [1, 1] + [0] * 8}, np.zeros((2, 28, 28), np.uint8))
    assert "No evaluation was recorded during training" in page
    assert "No test digit was misclassified." in page
    assert all(f"<th>digit {d}</th>" in page for d in range(10))


def test_history_is_read_from_the_file_training_writes(tmp_path):
    from mnistkit import training

    assert report.HISTORY_FILE == training.HISTORY_FILE
    (tmp_path / report.HISTORY_FILE).write_text('{"evaluations": [{"epoch": 1, "loss": "x"}]}')
    with pytest.raises(ValueError, match=f"{tmp_path / report.HISTORY_FILE}: expected training's history"):
        report.load_history(str(tmp_path))
    assert report.load_history(str(tmp_path / "elsewhere")) == []


def test_a_digit_absent_from_the_test_split_has_no_precision_or_recall_not_zero(weak_model, synthetic_data,
                                                                                 tmp_path):
    """0 / 0 is no figure: metrics.json says null, the page a dash, the pipeline's class metrics leave it out."""
    import shutil

    import numpy as np

    from mnistkit import evaluation, idx

    data = tmp_path / "data"
    shutil.copytree(synthetic_data, data)
    images, labels = idx.load_split(str(data), idx.TEST)
    low = labels < 5  # Digits 5-9 taken out of the test split.
    idx.write_idx(str(data / idx.TEST.images), images[low])
    idx.write_idx(str(data / idx.TEST.labels), labels[low])
    result = evaluation.evaluate(weak_model, str(data))
    confusion = np.array(result["confusion_matrix"])
    for d in range(10):
        assert (result["recall"][d] is None) == (d >= 5)
        assert (result["precision"][d] is None) == (confusion[:, d].sum() == 0)
        if d < 5:
            assert result["recall"][d] == confusion[d, d] / confusion[d].sum()
    page = report.render(result, [], report.class_counts(str(data)), images[low])
    assert page.count("&ndash;") == sum(v is None for v in result["precision"] + result["recall"])
    assert "<td>nan</td>" not in page.lower()


def test_mnist_evaluate_given_the_model_file_still_reports_the_history(weak_model, synthetic_data, tmp_path):
    result = subprocess.run([os.path.join(BIN, "mnist-evaluate"), f"--model_dir={weak_model}/model.keras",
                             f"--data_dir={synthetic_data}", f"--output={tmp_path / 'metrics.json'}",
                             f"--report_dir={tmp_path}"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "report.html").read_text()
    assert "No evaluation was recorded during training" not in page
    assert page.count("<td>") > 0 and "2 evaluation(s)" in page


def test_a_report_without_the_train_labels_is_refused_before_the_model_runs(weak_model, synthetic_data, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synthetic_data, data)
    os.remove(data / "train-labels-idx1-ubyte.gz")
    result = subprocess.run([os.path.join(BIN, "mnist-evaluate"), f"--model_dir={weak_model}",
                             f"--data_dir={data}", f"--output={tmp_path / 'out' / 'metrics.json'}",
                             f"--report_dir={tmp_path / 'out'}"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("mnist-evaluate: error: ") and "train-labels-idx1-ubyte.gz" in line, line
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_the_history_says_which_precision_training_evaluated_in(weak_model, synthetic_data):
    """Training scores at its own precision, the summary in float32: the page says so where the two can differ."""
    import numpy as np

    from mnistkit import evaluation, training

    history = report.load_history(weak_model)
    with open(os.path.join(weak_model, "train_config.json")) as f:
        precision = training.resolve_precision(json.load(f)["precision"], "")
    assert [e["evaluated_in"] for e in history] == [precision] * 2
    result = {**evaluation.evaluate(weak_model, synthetic_data), "most_confident_errors": []}
    counts = report.class_counts(synthetic_data)
    page = report.render(result, history, counts, np.zeros((1, 28, 28), np.uint8))
    assert ("Evaluated during training in mixed_bfloat16, the training precision" in page) == \
        (precision == "mixed_bfloat16")
    for other, noted in (("float32", False), ("mixed_bfloat16", True)):  # Both cases, whatever this CPU picks.
        page = report.render(result, [{**e, "evaluated_in": other} for e in history], counts,
                             np.zeros((1, 28, 28), np.uint8))
        assert ("Evaluated during training in mixed_bfloat16" in page) == noted
