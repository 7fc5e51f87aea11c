"""Each data and gate component run on its own through kfp.local, as the pipeline runs it.

The TensorFlow steps (train, evaluate, export) run in tests/test_pipeline.py's
whole local runs, where their inputs come from the real upstream steps.
"""

import os
import subprocess
import sys

import pytest
from kfp import dsl, local
from kfp.dsl import Markdown

from components import component
from components.data import download_data, validate_data
from components.model import check_accuracy
from mnistkit import idx
from tests.conftest import REPO, serve_directory, upload_dir


# The components name their images; running them in this environment (which
# holds the same package) is what is meant, so kfp's warning is expected.
pytestmark = pytest.mark.filterwarnings("ignore:You may be attemping to run a task:RuntimeWarning")


@pytest.fixture
def kfp_local(tmp_path):
    """kfp.local in this environment, with a fresh pipeline root; yields the root."""
    root = tmp_path / "root"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    return root


def test_download_from_an_http_mirror(kfp_local, synthetic_data):
    with serve_directory(synthetic_data) as url:
        task = component(download_data)(source=url, verify_checksums=False)
    data = task.outputs["data"]
    assert sorted(os.listdir(data.path)) == sorted(idx.FILES)
    for name in idx.FILES:
        with open(os.path.join(data.path, name), "rb") as got, open(os.path.join(synthetic_data, name), "rb") as want:
            assert got.read() == want.read()
    assert data.metadata["source"] == url and data.metadata["checksums_verified"] is False
    assert set(data.metadata["sha256"]) == set(idx.FILES)


def test_download_from_gcs(kfp_local, gcs_emulator, synthetic_data):
    source = upload_dir("synthetic-mirror", "mnist", synthetic_data)
    task = component(download_data)(source=source, verify_checksums=False)
    assert sorted(os.listdir(task.outputs["data"].path)) == sorted(idx.FILES)


def test_download_refuses_files_with_the_wrong_checksum(kfp_local, synthetic_data, capfd):
    with pytest.raises(RuntimeError, match="download-data"):
        component(download_data)(source=synthetic_data, verify_checksums=True)
    out = capfd.readouterr()
    assert "train-images-idx3-ubyte.gz: sha256 expected 440fcabf" in out.out + out.err


@dsl.pipeline(name="data-steps")
def data_steps(source: str, canonical: bool) -> Markdown:
    """download -> validate; kfp.local passes artifacts only between the tasks of a pipeline."""
    download = component(download_data)(source=source, verify_checksums=False)
    return component(validate_data)(data=download.outputs["data"], canonical=canonical).outputs["report"]


def test_validate_writes_a_markdown_report(kfp_local, synthetic_data):
    report = data_steps(source=synthetic_data, canonical=False).output
    with open(report.path) as f:
        text = f.read()
    assert "| train | 600 |" in text and "| test | 200 |" in text
    assert "| t10k-labels-idx1-ubyte.gz | `" in text


def test_validate_refuses_non_canonical_data_and_says_why(kfp_local, synthetic_data, capfd):
    with pytest.raises(RuntimeError, match="validate-data"):
        data_steps(source=synthetic_data, canonical=True)
    out = capfd.readouterr()
    assert "train-images-idx3-ubyte.gz: count: expected 60000, found 600" in out.out + out.err


@pytest.mark.parametrize("accuracy, minimum, passed, sentence", [
    (0.9912, 0.99, True, "**Exported**: test accuracy 0.9912 reached min_accuracy 0.9900."),
    (0.99, 0.99, True, "**Exported**: test accuracy 0.9900 reached min_accuracy 0.9900."),
    (0.9712, 0.98, False, "**Not exported**: test accuracy 0.9712 is below min_accuracy 0.9800."),
    # More decimals where 4 would read '0.6667 is below 0.6667' (a test split that is not 10,000 images).
    (2 / 3, 0.6667, False, "**Not exported**: test accuracy 0.6666666666666666 is below min_accuracy 0.6667."),
    (0.99124, 0.99125, False, "**Not exported**: test accuracy 0.99124 is below min_accuracy 0.99125."),
])
def test_check_accuracy_is_the_gate_and_says_why(kfp_local, accuracy, minimum, passed, sentence):
    task = component(check_accuracy)(accuracy=accuracy, min_accuracy=minimum)
    assert task.outputs["Output"] is passed
    with open(task.outputs["verdict"].path) as f:
        assert f.read().strip() == sentence


def test_steps_that_need_no_tensorflow_do_not_load_it(tmp_path, synthetic_data):
    """The data steps and the gate start in seconds: they run the same function bodies without TensorFlow."""
    script = (
        "import sys\n"
        "from kfp.dsl import Dataset, Markdown\n"
        "from components.data import download_data, validate_data\n"
        "from components.model import check_accuracy\n"
        f"data = Dataset(name='data', uri={str(tmp_path / 'data')!r})\n"
        f"download_data({synthetic_data!r}, data, verify_checksums=False)\n"
        f"assert validate_data(data, Markdown(name='r', uri={str(tmp_path / 'report.md')!r}), canonical=False) == 600\n"
        f"assert check_accuracy(0.99, 0.98, Markdown(name='v', uri={str(tmp_path / 'verdict.md')!r})) is True\n"
        "print('tensorflow' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"  # Printed after every step ran.
