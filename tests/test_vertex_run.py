"""The compiled multi-worker template run as Vertex AI runs it (tests/vertex_harness.py), and where Vertex's
checkpoints and TensorBoard summaries go."""

import glob
import json
import os
import re

import pytest

from tests import synthetic
from tests.vertex_harness import CustomJobRun

# 2,000 examples in global batches of 20 (10 per replica): 100 steps an epoch, logged at 50 and 100 (the
# component keeps the default of 50 steps per compiled call), so a test can aim a kill at mid-epoch.
STEPS_PER_EPOCH = 100
PARAMETERS = {"recipe": "seed", "batch_size": 20, "train_epochs": 2, "learning_rate": 1e-3,
              # Evaluating only after epoch 2: synthetic digits are learnt in one, and a stop at the
              # threshold after epoch 1 would leave nothing to resume.
              "epochs_between_evals": 2}
TIMEOUT = 300


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """The pipeline compiled for `--hardware multiworker` (a chief pool and a worker pool)."""
    from pipelines import compile as compile_py, hardware

    path = str(tmp_path_factory.mktemp("template") / "multiworker.yaml")
    return compile_py.compile_pipeline(path, hardware.resolve("multiworker"))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return synthetic.write_dataset(tmp_path_factory.mktemp("vertex-data"), n_train=2000, n_test=100)


def digest(log: str) -> str:
    return re.search(r"trained weights sha256 ([0-9a-f]{64})", log).group(1)


def scalars(log_dir: str) -> dict:
    """{tag: {step: value}} from every TensorBoard event file in `log_dir`."""
    import tensorflow as tf

    found = {}
    for path in glob.glob(os.path.join(log_dir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                found.setdefault(value.tag, {})[event.step] = float(tf.make_ndarray(value.tensor))
    return found


def test_the_multiworker_template_trains_on_two_replicas_and_only_the_chief_writes(template, data_dir, tmp_path):
    job = CustomJobRun(template, tmp_path, parameters={**PARAMETERS, "train_epochs": 1, "epochs_between_evals": 1},
                       artifacts={"data": data_dir})
    assert [r.role for r in job.replicas] == ["chief", "worker"]
    assert job.payload["job_spec"]["base_output_directory"]["output_uri_prefix"], "no base_output_directory"
    job.start_all()
    assert job.wait(job.replicas, TIMEOUT) == [0, 0], job.tails()
    chief, worker = (r.log() for r in job.replicas)

    # Both replicas trained every step together and ended with the same weights.
    for log in (chief, worker):
        assert "MultiWorkerMirroredStrategy with cluster_spec" in log and "num_workers = 2" in log, log[-3000:]
        assert re.findall(rf"epoch 1: step (\d+) of {STEPS_PER_EPOCH}", log) == ["50", "100"]
    assert digest(chief) == digest(worker)

    # Only the chief wrote: the model artifact, the executor output (kfp's executor reads CLUSTER_SPEC) and
    # the checkpoints; the worker's private copies are gone.
    assert "Wrote executor output file" in chief and "Did not write output file" in worker
    model_dir = job.output_path("model")
    assert sorted(os.listdir(model_dir)) == ["history.json", "logs", "model.keras", "train_config.json"]
    with open(os.path.join(os.path.dirname(model_dir), "executor_output.json")) as f:
        metadata = json.load(f)["artifacts"]["model"]["artifacts"][0]["metadata"]
    assert metadata["epochs"] == 1 and metadata["stopped_early"] is False
    worker_tmp = job.replicas[1].env["TMPDIR"]
    assert not glob.glob(os.path.join(worker_tmp, "mnistkit-worker-*")), os.listdir(worker_tmp)

    # Checkpoints went to AIP_CHECKPOINT_DIR (under the job's base_output_directory), not into the artifact.
    checkpoint_root = job.replicas[0].env["AIP_CHECKPOINT_DIR"]
    (run_dir,) = glob.glob(os.path.join(checkpoint_root, "run-*"))
    assert {"checkpoint", "ckpt-1.index", "history.json"} <= set(os.listdir(run_dir))

    # Summaries: the copy in the model artifact and the one Vertex AI TensorBoard uploads hold the same.
    for log_dir in (os.path.join(model_dir, "logs"), job.replicas[0].env["AIP_TENSORBOARD_LOG_DIR"]):
        assert len(glob.glob(os.path.join(log_dir, "events.out.tfevents.*"))) == 1  # The chief's only.
        found = scalars(log_dir)
        assert set(found["train/loss"]) == {1} and set(found["eval/accuracy"]) == {1}, (log_dir, found)
        assert found["eval/accuracy"][1] > 0.9


def test_a_replica_killed_mid_epoch_restarts_with_the_job_and_resumes(template, data_dir, tmp_path):
    job = CustomJobRun(template, tmp_path, parameters=PARAMETERS, artifacts={"data": data_dir})
    # What makes Vertex AI restart every replica when one VM is lost (Spot preemption, host error).
    assert job.payload["job_spec"]["scheduling"]["restart_job_on_worker_restart"] is True
    chief, worker = job.start_all()
    job.wait_for(chief, rf"epoch 2: step 50 of {STEPS_PER_EPOCH}", TIMEOUT)
    job.kill(worker)  # The worker's VM is preempted mid-epoch 2 ...
    job.kill(chief)  # ... and Vertex AI restarts the whole job: the chief goes down too.
    first_logs = [chief.log(), worker.log()]
    assert all("epoch 1: step 100 of" in log for log in first_logs)

    for replica in (chief, worker):  # Same command line, same environment, same ports.
        job.start(replica)
    assert job.wait([chief, worker], TIMEOUT) == [0, 0], job.tails()
    for replica in (chief, worker):
        log = replica.log()
        assert re.search(r"resumed from \S+/ckpt-1 at epoch 1, step 0\b", log), log[-3000:]
        assert "epoch 1: step" not in log  # Epoch 1 was not trained again.
        assert re.findall(rf"epoch 2: step (\d+) of {STEPS_PER_EPOCH}", log) == ["50", "100"]
    assert digest(chief.log()) == digest(worker.log())
    with open(os.path.join(job.output_path("model"), "history.json")) as f:
        history = json.load(f)
    assert history["epochs"] == 2 and [h["epoch"] for h in history["evaluations"]] == [2]
