"""What Vertex AI is sent: every hardware choice compiles to a template kfp's PipelineSpec parses strictly, and to
the CustomJob request GCPC's launcher would build, which the pinned aiplatform types parse strictly and the real
aiplatform client sends; choices Vertex AI would refuse are refused at compile time, in one line.

Nothing here reaches Vertex AI: the request goes, through the real JobServiceClient (REST), to a loopback
server on 127.0.0.1 that records it and answers like the service. tests/vertex_request.py rebuilds the request
the way Vertex AI Pipelines and GCPC's launcher do (see its docstring).
"""

import json
import os
import re
import shlex
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from google.cloud.aiplatform_v1.types import CustomJob, Scheduling
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from pipelines import compile as compile_module
from pipelines import hardware, vertex_machines
from tests import vertex_request
from tests.conftest import REPO

ACCOUNT = "trainer@mnist-project.iam.gserviceaccount.com"
TENSORBOARD = "projects/mnist-project/locations/us-central1/tensorboards/4242"
BASE_OUTPUT = f"{vertex_request.PIPELINE_ROOT}/{vertex_request.JOB_UUID}/train-model"


def _gpu(machine, accelerator, count):
    return {"machine_type": machine, "accelerator_type": accelerator, "accelerator_count": count}


def _tpu(machine, accelerator, chips, topology=None):
    spec = _gpu(machine, accelerator, chips)
    return {**spec, "tpu_topology": topology} if topology else spec


# flags of compile.py -> the chief's machine spec and the replica count of each worker pool.
CUSTOM_JOBS = [
    pytest.param(["--hardware", "multiworker", "--replica_count", "4", "--machine_type", "n1-standard-16"],
                 {"machine_type": "n1-standard-16"}, [1, 3], id="multiworker-cpu-4"),
    pytest.param(["--hardware", "multiworker"], {"machine_type": "n1-standard-8"}, [1, 1], id="multiworker-default"),
    pytest.param(["--hardware", "multiworker", "--replica_count", "3", "--machine_type", "n1-standard-8",
                  "--accelerator_type", "NVIDIA_TESLA_T4"], _gpu("n1-standard-8", "NVIDIA_TESLA_T4", 1), [1, 2],
                 id="multiworker-n1-t4"),
    pytest.param(["--hardware", "multiworker", "--machine_type", "g2-standard-12"],
                 _gpu("g2-standard-12", "NVIDIA_L4", 1), [1, 1], id="multiworker-g2"),
    pytest.param(["--hardware", "tpu"], _tpu("ct5lp-hightpu-4t", "TPU_V5_LITEPOD", 4, "2x2"), [1], id="tpu-default"),
    pytest.param(["--hardware", "tpu", "--machine_type", "ct5lp-hightpu-1t"],
                 _tpu("ct5lp-hightpu-1t", "TPU_V5_LITEPOD", 1, "1x1"), [1], id="tpu-v5e-1t"),
    pytest.param(["--hardware", "tpu", "--machine_type", "ct5lp-hightpu-8t"],
                 _tpu("ct5lp-hightpu-8t", "TPU_V5_LITEPOD", 8, "2x4"), [1], id="tpu-v5e-8t"),
    pytest.param(["--hardware", "tpu", "--tpu_topology", "2x4"],
                 _tpu("ct5lp-hightpu-4t", "TPU_V5_LITEPOD", 4, "2x4"), [1], id="tpu-v5e-2-hosts"),
    pytest.param(["--hardware", "tpu", "--tpu_topology", "4x4"],
                 _tpu("ct5lp-hightpu-4t", "TPU_V5_LITEPOD", 4, "4x4"), [1], id="tpu-v5e-4-hosts"),
    pytest.param(["--hardware", "tpu", "--tpu_topology", "16x16"],
                 _tpu("ct5lp-hightpu-4t", "TPU_V5_LITEPOD", 4, "16x16"), [1], id="tpu-v5e-64-hosts"),
    pytest.param(["--hardware", "tpu", "--machine_type", "cloud-tpu", "--accelerator_type", "TPU_V2"],
                 _tpu("cloud-tpu", "TPU_V2", 8), [1], id="tpu-v2"),
    pytest.param(["--hardware", "tpu", "--machine_type", "cloud-tpu", "--accelerator_type", "TPU_V3"],
                 _tpu("cloud-tpu", "TPU_V3", 8), [1], id="tpu-v3"),
    pytest.param(["--hardware", "gpu", "--machine_type", "n1-standard-8", "--accelerator_count", "2"],
                 _gpu("n1-standard-8", "NVIDIA_TESLA_T4", 2), [1], id="n1-t4-2"),
    pytest.param(["--hardware", "gpu", "--machine_type", "n1-standard-8", "--accelerator_type", "NVIDIA_TESLA_V100"],
                 _gpu("n1-standard-8", "NVIDIA_TESLA_V100", 1), [1], id="n1-v100"),
    pytest.param(["--hardware", "gpu", "--machine_type", "n1-highmem-32", "--accelerator_type", "NVIDIA_TESLA_P100",
                  "--accelerator_count", "4"], _gpu("n1-highmem-32", "NVIDIA_TESLA_P100", 4), [1], id="n1-p100-4"),
    pytest.param(["--hardware", "gpu", "--machine_type", "n1-standard-4", "--accelerator_type", "NVIDIA_TESLA_P4"],
                 _gpu("n1-standard-4", "NVIDIA_TESLA_P4", 1), [1], id="n1-p4"),
    pytest.param(["--hardware", "gpu", "--machine_type", "g2-standard-8"], _gpu("g2-standard-8", "NVIDIA_L4", 1), [1],
                 id="g2-8"),
    pytest.param(["--hardware", "gpu", "--machine_type", "g2-standard-48"], _gpu("g2-standard-48", "NVIDIA_L4", 4),
                 [1], id="g2-48"),
    pytest.param(["--hardware", "gpu", "--machine_type", "a2-highgpu-1g"],
                 _gpu("a2-highgpu-1g", "NVIDIA_TESLA_A100", 1), [1], id="a2-highgpu-1g"),
    pytest.param(["--hardware", "gpu", "--machine_type", "a2-megagpu-16g"],
                 _gpu("a2-megagpu-16g", "NVIDIA_TESLA_A100", 16), [1], id="a2-megagpu-16g"),
    pytest.param(["--hardware", "gpu", "--machine_type", "a2-ultragpu-8g"],
                 _gpu("a2-ultragpu-8g", "NVIDIA_A100_80GB", 8), [1], id="a2-ultragpu-8g"),
    pytest.param(["--hardware", "gpu", "--machine_type", "a3-highgpu-8g"],
                 _gpu("a3-highgpu-8g", "NVIDIA_H100_80GB", 8), [1], id="a3-highgpu-8g"),
    pytest.param(["--hardware", "gpu", "--machine_type", "a3-megagpu-8g"],
                 _gpu("a3-megagpu-8g", "NVIDIA_H100_MEGA_80GB", 8), [1], id="a3-megagpu-8g"),
    pytest.param(["--hardware", "gpu", "--machine_type", "a3-ultragpu-8g"],
                 _gpu("a3-ultragpu-8g", "NVIDIA_H200_141GB", 8), [1], id="a3-ultragpu-8g"),
    pytest.param(["--hardware", "gpu", "--machine_type", "a4-highgpu-8g"],
                 _gpu("a4-highgpu-8g", "NVIDIA_B200", 8), [1], id="a4-highgpu-8g"),
    pytest.param(["--machine_type", "e2-standard-8"], {"machine_type": "e2-standard-8"}, [1], id="cpu-e2"),
    pytest.param(["--machine_type", "n2-standard-16"], {"machine_type": "n2-standard-16"}, [1], id="cpu-n2"),
    pytest.param(["--spot"], {"machine_type": "n1-standard-4"}, [1], id="cpu-spot"),
    pytest.param(["--hardware", "multiworker", "--spot"], {"machine_type": "n1-standard-8"}, [1, 1],
                 id="multiworker-spot"),
    pytest.param(["--hardware", "gpu", "--machine_type", "g2-standard-8", "--spot", "--tensorboard", TENSORBOARD],
                 _gpu("g2-standard-8", "NVIDIA_L4", 1), [1], id="g2-spot-tensorboard"),
    pytest.param(["--hardware", "tpu", "--spot", "--tensorboard", TENSORBOARD],
                 _tpu("ct5lp-hightpu-4t", "TPU_V5_LITEPOD", 4, "2x2"), [1], id="tpu-1-host-spot-tensorboard"),
    pytest.param(["--hardware", "tpu", "--tpu_topology", "4x4", "--tensorboard", TENSORBOARD],
                 _tpu("ct5lp-hightpu-4t", "TPU_V5_LITEPOD", 4, "4x4"), [1], id="tpu-4-hosts-tensorboard"),
]


class JobService(BaseHTTPRequestHandler):
    """Answers customJobs.create like Vertex AI does (the job back, with a name and a state); records each body."""

    received: list = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append({"path": self.path, "body": body})
        if not re.fullmatch(r"/v1/projects/[^/]+/locations/[^/]+/customJobs(\?.*)?", self.path):
            self.send_response(404)
            self.end_headers()
            return
        job = {**json.loads(body), "name": "projects/123/locations/us-central1/customJobs/456",
               "state": "JOB_STATE_PENDING"}
        reply = json.dumps(job).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)


@pytest.fixture(scope="module")
def job_service():
    """A loopback Vertex AI JobService; yields (the real JobServiceClient pointed at it, the received requests)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import aiplatform

    handler = type("Handler", (JobService,), {"received": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # Anonymous credentials: there is no account here, and the loopback service checks none.
    client = aiplatform.gapic.JobServiceClient(
        credentials=AnonymousCredentials(), transport="rest",
        client_options={"api_endpoint": f"http://127.0.0.1:{server.server_address[1]}"})
    yield client, handler.received
    server.shutdown()
    server.server_close()


def _compile(tmp_path, argv) -> dict:
    output = tmp_path / "pipeline.yaml"
    assert compile_module.main(["--output", str(output), *argv]) == 0
    return vertex_request.load(str(output))


def _strict_pipeline_spec(spec: dict) -> pipeline_spec_pb2.PipelineSpec:
    """Parses the whole compiled YAML into kfp's PipelineSpec; unknown fields fail."""
    return json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())


def _strict_custom_job(job: dict) -> CustomJob:
    """Parses a request into the pinned aiplatform_v1 CustomJob; unknown fields and bad enum names fail."""
    return CustomJob.from_json(json.dumps(job), ignore_unknown_fields=False)


def _send(job_service, parent, job) -> CustomJob:
    """Creates the job as GCPC's launcher does (its own function, the real client); returns what was received."""
    from google_cloud_pipeline_components.container.v1.custom_job import remote_runner

    client, received = job_service
    before = len(received)
    response = remote_runner.create_custom_job_with_client(client, parent, job)
    assert response.name == "projects/123/locations/us-central1/customJobs/456"
    (request,) = received[before:]
    assert request["path"].startswith(f"/v1/{parent}/customJobs")
    sent = CustomJob.from_json(request["body"], ignore_unknown_fields=False)
    # The client sent exactly what the launcher built (create_custom_job_with_client dropped max_wait_duration).
    assert sent == _strict_custom_job(job)
    return sent


def _client_pools(machine: dict, replicas: list) -> list:
    """The worker pools the pinned aiplatform client builds for the same machines (CustomJob.from_local_script
    and CustomTrainingJob.run go through this): the topology on the chief only."""
    from google.cloud.aiplatform.utils import worker_spec_utils

    pools = worker_spec_utils._DistributedTrainingSpec.chief_worker_pool(
        replica_count=sum(replicas), machine_type=machine["machine_type"],
        accelerator_type=machine.get("accelerator_type", "ACCELERATOR_TYPE_UNSPECIFIED"),
        accelerator_count=machine.get("accelerator_count", 0), tpu_topology=machine.get("tpu_topology"),
        boot_disk_type=vertex_machines.boot_disk_type(machine["machine_type"])).pool_specs
    return [{k: p[k] for k in ("machine_spec", "replica_count", "disk_spec")} for p in pools]


@pytest.mark.parametrize("argv, machine, replicas", CUSTOM_JOBS)
def test_custom_job_request_parses_strictly_and_is_what_the_client_builds(tmp_path, job_service, argv, machine,
                                                                         replicas):
    spec = _compile(tmp_path, argv)
    _strict_pipeline_spec(spec)
    parent, job, executor_input = vertex_request.launcher_request(spec, {"service_account": ACCOUNT})
    assert parent == f"projects/{vertex_request.PROJECT}/locations/{vertex_request.LOCATION}"
    sent = _send(job_service, parent, job)

    pools = job["job_spec"]["worker_pool_specs"]
    assert [{k: p[k] for k in ("machine_spec", "replica_count", "disk_spec")} for p in pools] == \
        _client_pools(machine, replicas)
    assert pools[0]["machine_spec"] == machine
    assert [p.replica_count for p in sent.job_spec.worker_pool_specs] == replicas
    kind = "tpu" if "tpu_topology" in machine or machine["machine_type"] == "cloud-tpu" else \
        "gpu" if "accelerator_type" in machine else "cpu"
    for pool in sent.job_spec.worker_pool_specs:
        assert pool.container_spec.image_uri == f"localhost/mnistkit-{kind}:0.1.0"
        args = list(pool.container_spec.args)
        assert args[args.index("--function_to_execute") + 1] == "train_model"
        # The executor input reaches the trainer intact through the payload's two levels of JSON.
        assert json.loads(args[args.index("--executor_input") + 1]) == executor_input
    assert executor_input["inputs"]["parameterValues"]["tpu"] == ("local" if kind == "tpu" else "")
    assert executor_input["inputs"]["parameterValues"]["checkpoint_dir"] == ""

    # Identity, preemption and outputs.
    spot = "--spot" in argv
    assert sent.job_spec.service_account == ACCOUNT
    assert sent.job_spec.scheduling.strategy == (Scheduling.Strategy.SPOT if spot else Scheduling.Strategy.STANDARD)
    assert sent.job_spec.scheduling.restart_job_on_worker_restart == (spot or sum(replicas) > 1)
    assert sent.job_spec.base_output_directory.output_uri_prefix == BASE_OUTPUT
    assert sent.job_spec.tensorboard == (TENSORBOARD if "--tensorboard" in argv else "")
    # A3 Ultra and A4 boot from Hyperdisk only; GCPC's own default would ask for pd-ssd.
    hyperdisk = machine["machine_type"] in ("a3-ultragpu-8g", "a4-highgpu-8g")
    assert {p.disk_spec.boot_disk_type for p in sent.job_spec.worker_pool_specs} == \
        {"hyperdisk-balanced" if hyperdisk else "pd-ssd"}
    retry = spec["root"]["dag"]["tasks"]["train-model"]["retryPolicy"]
    assert retry["maxRetryCount"] == 3 and retry["backoffDuration"] == "60s"


def test_an_empty_service_account_leaves_vertex_default_and_checkpoint_root_reaches_the_trainer(tmp_path,
                                                                                             job_service):
    spec = _compile(tmp_path, ["--hardware", "gpu", "--machine_type", "g2-standard-8"])
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["service_account"]["defaultValue"] == "" and params["checkpoint_root"]["defaultValue"] == ""
    parent, job, executor_input = vertex_request.launcher_request(spec, {"checkpoint_root": "gs://b/ckpt/run-a"})
    # GCPC's launcher drops the empty field: Vertex AI then runs the job as its Custom Code Service Agent.
    assert "service_account" not in job["job_spec"]
    assert _send(job_service, parent, job).job_spec.service_account == ""
    assert executor_input["inputs"]["parameterValues"]["checkpoint_dir"] == "gs://b/ckpt/run-a"
    # A retried task or restarted job of the same run gets the same base output directory; another run another.
    _, again, _ = vertex_request.launcher_request(spec, job_uuid=vertex_request.JOB_UUID)
    _, other, _ = vertex_request.launcher_request(spec, job_uuid="another-run")
    assert again["job_spec"]["base_output_directory"] == job["job_spec"]["base_output_directory"]
    assert other["job_spec"]["base_output_directory"]["output_uri_prefix"] == \
        f"{vertex_request.PIPELINE_ROOT}/another-run/train-model"


def _readme_compile_examples() -> list:
    with open(os.path.join(REPO, "README.md")) as f:
        section = f.read().split("## The pipeline", 1)[1].split("\n## ", 1)[0]
    examples = [line.split("#", 1)[0].strip() for line in section.splitlines()
                if line.startswith("python pipelines/compile.py")]
    assert len(examples) >= 5, "the README's pipeline section lost its compile examples"
    return [shlex.split(e)[2:] for e in examples]


def test_every_readme_compile_example_compiles_and_parses_strictly(tmp_path, job_service):
    for argv in _readme_compile_examples():
        spec = _compile(tmp_path, argv)
        _strict_pipeline_spec(spec)
        train = spec["deploymentSpec"]["executors"]["exec-train-model"]["container"]
        if "google_cloud_pipeline_components.container.v1.custom_job.launcher" in train["command"]:
            parent, job, _ = vertex_request.launcher_request(spec, {"service_account": ACCOUNT})
            _send(job_service, parent, job)
        else:
            # A plain task: an accelerator, if any, must be a name the service knows.
            accelerator = train.get("resources", {}).get("accelerator", {}).get("resourceType")
            assert accelerator is None or accelerator in vertex_machines.client_accelerators(), argv


def test_a_bad_enum_or_unknown_field_does_fail_the_strict_parses(tmp_path):
    """The parses this file relies on do refuse what the service would."""
    spec = _compile(tmp_path, ["--hardware", "tpu"])
    _, job, _ = vertex_request.launcher_request(spec)
    job["job_spec"]["worker_pool_specs"][0]["machine_spec"]["accelerator_type"] = "TPU_V6E"
    with pytest.raises(json_format.ParseError, match="TPU_V6E"):
        _strict_custom_job(job)
    job["job_spec"]["worker_pool_specs"][0]["machine_spec"] = {"machine_type": "ct5lp-hightpu-4t", "topology": "2x2"}
    with pytest.raises(json_format.ParseError, match="topology"):
        _strict_custom_job(job)
    spec["root"]["dag"]["tasks"]["train-model"]["retry"] = {"max": 3}
    with pytest.raises(json_format.ParseError):
        _strict_pipeline_spec(spec)


def test_every_accelerator_the_table_accepts_is_one_the_installed_client_has():
    client = vertex_machines.client_accelerators()
    accepted = 0
    for machine in [*vertex_machines.FIXED_GPU_MACHINES, *vertex_machines.TPU_MACHINES]:
        kind = "tpu" if machine in vertex_machines.TPU_MACHINES else "gpu"
        try:
            hw = hardware.resolve(kind, machine)
        except hardware.HardwareError as e:
            assert "google.cloud.aiplatform_v1.AcceleratorType of the installed" in str(e), machine
            continue
        assert hw.accelerator_type in client, machine
        accepted += 1
    for accelerator in vertex_machines.N1_GPUS:
        assert accelerator in client
    assert accepted >= 20


# Choices Vertex AI would refuse, or the launcher crash on: each refused with its one line.
REFUSED = [
    (dict(kind="gpu", machine_type="n1-standard-8", accelerator_type="NVIDIA_L4"),
     "--accelerator_type: expected a GPU N1 machines take, one of NVIDIA_TESLA_T4, NVIDIA_TESLA_V100, "
     "NVIDIA_TESLA_P4, NVIDIA_TESLA_P100; NVIDIA_L4 comes with g2-standard-4, g2-standard-8, g2-standard-12 "
     "(and 2 more), found 'NVIDIA_L4'"),
    (dict(kind="gpu", machine_type="g2-standard-8", accelerator_count=4),
     "--accelerator_count: expected 1, the NVIDIA_L4 count of g2-standard-8, found 4"),
    (dict(kind="gpu", machine_type="a2-highgpu-1g", accelerator_type="NVIDIA_L4"),
     "--accelerator_type: expected NVIDIA_TESLA_A100, the GPU that comes with a2-highgpu-1g, found 'NVIDIA_L4'"),
    (dict(kind="gpu", accelerator_type="NVIDIA_TESLA_T4", accelerator_count=16),
     "--accelerator_count: expected one of 1, 2, 4 for NVIDIA_TESLA_T4, found 16"),
    (dict(kind="gpu", machine_type="n1-standard-8", accelerator_type="NVIDIA_TESLA_T4", accelerator_count=16),
     "--accelerator_count: expected one of 1, 2, 4 x NVIDIA_TESLA_T4 on an N1 machine, found 16"),
    (dict(kind="gpu", machine_type="n1-standard-16", accelerator_type="NVIDIA_TESLA_V100"),
     "--machine_type: expected an N1 machine of at most 12 vCPUs for 1 x NVIDIA_TESLA_V100, found 'n1-standard-16'"),
    (dict(kind="gpu", accelerator_type="NVIDIA_TESLA_K80"),
     "--accelerator_type: expected one of NVIDIA_L4, NVIDIA_A100_80GB, NVIDIA_B200, NVIDIA_H100_80GB, "
     "NVIDIA_H100_MEGA_80GB, NVIDIA_H200_141GB, NVIDIA_TESLA_A100, NVIDIA_TESLA_P100, NVIDIA_TESLA_P4, "
     "NVIDIA_TESLA_T4, NVIDIA_TESLA_V100, found 'NVIDIA_TESLA_K80'"),
    (dict(kind="gpu", machine_type="e2-standard-8"),
     "--machine_type: expected a machine type that takes GPUs (n1-*, or g2-*, a2-*, a3-*, a4-* which come with "
     "theirs), found 'e2-standard-8'"),
    (dict(kind="gpu", machine_type="m1-ultramem-40"),
     "--machine_type: expected a machine of a family in the table (pipelines/vertex_machines.py: a2, a3, a4, c2, "
     "cloud, ct5lp, ct6e, e2, g2, n1, n2); family m1 is not in it, found 'm1-ultramem-40'"),
    (dict(kind="cpu", machine_type="n1-standard-2"),
     "--machine_type: expected a machine type of family n1 the table lists (n1-highcpu-16, n1-highcpu-32, "
     "n1-highcpu-64, n1-highcpu-96, n1-highmem-2, n1-highmem-4, n1-highmem-8, n1-highmem-16 (and 9 more)), "
     "found 'n1-standard-2'"),
    (dict(kind="cpu", machine_type="g2-standard-8"),
     "--machine_type: expected a CPU machine for --hardware=cpu (g2-standard-8 comes with 1 x NVIDIA_L4: use "
     "--hardware=gpu), found 'g2-standard-8'"),
    (dict(kind="gpu", spot=True),
     "--machine_type: expected a machine type that takes 1 x NVIDIA_L4 with --spot or --tensorboard "
     "(e.g. g2-standard-4), found 'none'"),
    (dict(kind="cpu", tensorboard="my-board"),
     "--tensorboard: expected a Vertex AI TensorBoard name projects/PROJECT/locations/REGION/tensorboards/ID, "
     "found 'my-board'"),
    (dict(kind="tpu", machine_type="ct6e-standard-4t"),
     "--machine_type: expected a machine whose accelerator google.cloud.aiplatform_v1.AcceleratorType of the "
     "installed google-cloud-aiplatform 1.165.1 has (ct6e-standard-4t needs TPU_V6E, which it lacks), "
     "found 'ct6e-standard-4t'"),
    (dict(kind="tpu", machine_type="ct6e-standard-1t", accelerator_type="TPU_V6E"),
     "--accelerator_type: expected an accelerator google.cloud.aiplatform_v1.AcceleratorType of the installed "
     "google-cloud-aiplatform 1.165.1 has (it lacks TPU_V6E), found 'TPU_V6E'"),
    (dict(kind="tpu", accelerator_type="TPU_V6E"),
     "--accelerator_type: expected one of TPU_V5_LITEPOD on ct5lp-hightpu-4t, found 'TPU_V6E'"),
    (dict(kind="tpu", machine_type="ct5p-hightpu-4t"),
     "--machine_type: expected a machine of a family in the table (pipelines/vertex_machines.py: a2, a3, a4, c2, "
     "cloud, ct5lp, ct6e, e2, g2, n1, n2); family ct5p is not in it, found 'ct5p-hightpu-4t'"),
    (dict(kind="tpu", replica_count=4, tpu_topology="4x4"),
     "--replica_count: expected 1 for --hardware=tpu (a TPU job is one replica; --tpu_topology sets the hosts of "
     "its slice), found 4"),
    (dict(kind="tpu", tpu_topology="3x3"),
     "--tpu_topology: expected one of 2x2 (1 host), 2x4 (2 hosts), 4x4 (4 hosts), 4x8 (8 hosts), 8x8 (16 hosts), "
     "8x16 (32 hosts), 16x16 (64 hosts) on ct5lp-hightpu-4t, found '3x3'"),
    (dict(kind="tpu", machine_type="ct5lp-hightpu-8t", tpu_topology="4x4"),
     "--tpu_topology: expected one of 2x4 (1 host) on ct5lp-hightpu-8t, found '4x4'"),
    (dict(kind="tpu", machine_type="ct5lp-hightpu-1t", accelerator_count=4),
     "--accelerator_count: expected 1, the chips of one ct5lp-hightpu-1t host, found 4"),
    (dict(kind="tpu", machine_type="cloud-tpu", tpu_topology="2x2"),
     "--tpu_topology: expected no topology with cloud-tpu (v5e machine types take one), found '2x2'"),
    (dict(kind="tpu", machine_type="g2-standard-8"),
     "--machine_type: expected a TPU machine type, one of cloud-tpu, ct5lp-hightpu-1t, ct5lp-hightpu-4t, "
     "ct5lp-hightpu-8t, ct6e-standard-1t, ct6e-standard-4t, ct6e-standard-8t, found 'g2-standard-8'"),
    # Vertex AI has no Spot VMs for TPU Pods, which a multi-host slice is.
    (dict(kind="tpu", tpu_topology="4x4", spot=True),
     "--spot: expected no Spot VMs on a multi-host TPU slice (4x4 is 4 hosts; Vertex AI has no Spot TPU Pods): "
     "a one-host topology, or no --spot, found '--spot'"),
    # Past the bound, the YAML's doubles and the request's int64 would fail (or change the count) at run time.
    (dict(kind="multiworker", replica_count=10 ** 20),
     "--replica_count: expected at most 1000 (pipelines/hardware.py MAX_REPLICAS), found 100000000000000000000"),
    # An explicit 0 used to mean "the default" silently.
    (dict(kind="gpu", machine_type="n1-standard-8", accelerator_count=0),
     "--accelerator_count: expected at least 1 (leave the flag out for no accelerator, or the machine's own "
     "count), found 0"),
    (dict(kind="tpu", accelerator_count=0),
     "--accelerator_count: expected at least 1 (leave the flag out for no accelerator, or the machine's own "
     "count), found 0"),
    (dict(kind="cpu", accelerator_count=2),
     "--accelerator_count: expected no accelerator for --hardware=cpu (use --hardware=gpu or tpu), found 2"),
    # A TensorBoard's name: a lowercase project ID (or number), a region aiplatform serves, a numeric ID.
    (dict(kind="cpu", tensorboard="projects/P/locations/us-central1/tensorboards/1"),
     "--tensorboard: expected a Vertex AI TensorBoard name projects/PROJECT/locations/REGION/tensorboards/ID, "
     "found 'projects/P/locations/us-central1/tensorboards/1'"),
    (dict(kind="cpu", tensorboard="projects/mnist-project/locations/mars-north9/tensorboards/1"),
     "--tensorboard: expected a region Vertex AI serves (google-cloud-aiplatform's SUPPORTED_REGIONS, e.g. "
     "us-central1, europe-west4), found 'mars-north9'"),
    # Whole-value matches: a trailing newline is not a valid name.
    (dict(kind="cpu", tensorboard=TENSORBOARD + "\n"),
     f"--tensorboard: expected a Vertex AI TensorBoard name projects/PROJECT/locations/REGION/tensorboards/ID, "
     f"found {TENSORBOARD + chr(10)!r}"),
    (dict(kind="cpu", machine_type="n1-standard-8\n"),
     "--machine_type: expected a machine type such as n1-standard-8 or g2-standard-8, found 'n1-standard-8\\n'"),
    # Without a machine type, Vertex AI Pipelines picks one of at most 96 vCPUs and 624 GB: no A3 or A4.
    (dict(kind="gpu", accelerator_type="NVIDIA_H100_80GB", accelerator_count=8),
     "--machine_type: expected a machine type for 8 x NVIDIA_H100_80GB (e.g. a3-highgpu-8g): without one, Vertex "
     "AI Pipelines picks a machine of at most 96 vCPUs and 624 GB, and none of those carries them, found 'none'"),
    (dict(kind="gpu", accelerator_type="NVIDIA_TESLA_A100", accelerator_count=8),
     "--machine_type: expected a machine type for 8 x NVIDIA_TESLA_A100 (e.g. a2-highgpu-8g): without one, Vertex "
     "AI Pipelines picks a machine of at most 96 vCPUs and 624 GB, and none of those carries them, found 'none'"),
    (dict(kind="multiworker", machine_type="ct5lp-hightpu-4t"),
     "--machine_type: expected a CPU or GPU machine type for --hardware=multiworker (TPU machines take "
     "--hardware=tpu), found 'ct5lp-hightpu-4t'"),
]


@pytest.mark.parametrize("choice, message", REFUSED, ids=[m.split(":")[0] + f"-{i}" for i, (_, m) in
                                                          enumerate(REFUSED)])
def test_a_choice_vertex_would_refuse_is_refused_in_one_line(choice, message):
    with pytest.raises(hardware.HardwareError) as refused:
        hardware.resolve(**choice)
    assert str(refused.value) == message
    assert "\n" not in message


@pytest.mark.parametrize("argv, message", [
    (["--hardware", "tpu", "--machine_type", "ct6e-standard-4t"],
     "--machine_type: expected a machine whose accelerator google.cloud.aiplatform_v1.AcceleratorType of the "
     "installed google-cloud-aiplatform 1.165.1 has (ct6e-standard-4t needs TPU_V6E, which it lacks), "
     "found 'ct6e-standard-4t'"),
    (["--hardware", "gpu", "--machine_type", "n1-standard-8", "--accelerator_type", "NVIDIA_L4"],
     "--accelerator_type: expected a GPU N1 machines take, one of NVIDIA_TESLA_T4, NVIDIA_TESLA_V100, "
     "NVIDIA_TESLA_P4, NVIDIA_TESLA_P100; NVIDIA_L4 comes with g2-standard-4, g2-standard-8, g2-standard-12 "
     "(and 2 more), found 'NVIDIA_L4'"),
    (["--hardware", "gpu", "--machine_type", "g2-standard-8", "--accelerator_count", "4"],
     "--accelerator_count: expected 1, the NVIDIA_L4 count of g2-standard-8, found 4"),
    (["--hardware", "gpu", "--machine_type", "a2-highgpu-1g", "--spot", "--tensorboard", "tb"],
     "--tensorboard: expected a Vertex AI TensorBoard name projects/PROJECT/locations/REGION/tensorboards/ID, "
     "found 'tb'"),
])
def test_compile_command_refuses_with_one_line_and_writes_nothing(tmp_path, argv, message):
    output = tmp_path / "pipeline.yaml"
    done = subprocess.run([sys.executable, "pipelines/compile.py", "--output", str(output), *argv], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr == f"compile.py: error: {message}\n"
    assert os.listdir(tmp_path) == []


def test_compile_help_offers_exactly_the_tpu_machines_that_compile():
    offered = compile_module._TPU_MACHINES_NOW
    help_text = re.sub(r"-\s+", "-", " ".join(compile_module.parser().format_help().split()))  # Unwrapped.
    assert offered and all(m in help_text for m in offered)
    assert not [m for m in hardware.TPU_MACHINES if m not in offered and m in help_text]
    for machine in hardware.TPU_MACHINES:
        if machine in offered:
            assert hardware.resolve("tpu", machine_type=machine).machine_type == machine
        else:  # A machine the installed client cannot express: refused, so the help must not offer it.
            with pytest.raises(ValueError, match="which it lacks"):
                hardware.resolve("tpu", machine_type=machine)
