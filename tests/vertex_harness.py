"""Runs a compiled pipeline's training custom job as Vertex AI starts it: each replica a local process on 127.0.0.1.

From the compiled template it takes the custom-job task (the one that
google-cloud-pipeline-components' launcher runs), resolves its inputs from
the pipeline's parameters, builds the executor input Vertex AI Pipelines would
hand the task, fills the launcher's `--payload` template with them (the
CustomJob request GCPC's remote_runner sends), and starts every replica of
every worker pool with the pool's own container command and arguments, run
by `sh` as the container would, and with the environment Vertex AI Training
sets: CLUSTER_SPEC, TF_CONFIG (chief and worker roles), CLOUD_ML_JOB_ID and,
when the job has a base_output_directory, AIP_MODEL_DIR, AIP_CHECKPOINT_DIR and
AIP_TENSORBOARD_LOG_DIR.

What stands in for what:
- The image: a directory put first on PATH whose `python3` is this
  interpreter (the images hold the same mnistkit and kfp).
- Cloud Storage: on Vertex AI, gs://BUCKET/PATH is /gcs/BUCKET/PATH in the
  container (Cloud Storage FUSE); here every gs:// URI the harness hands out
  becomes `gcs_root/BUCKET/PATH`, and artifact URIs are local paths (as
  kfp.local gives them), which kfp's Artifact.path returns unchanged.
- The VMs: each replica gets its own TMPDIR and a port of 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time

import yaml

from tests.conftest import free_port
from tests.vertex_request import resolve_channels

LAUNCHER = "google_cloud_pipeline_components.container.v1.custom_job.launcher"
# Vertex AI's names for the first three worker pools in TF_CONFIG; a fourth pool (evaluator) is not in the cluster.
TF_ROLES = ("chief", "worker", "ps")
_PARAMETER = re.compile(r"\{\{\$\.inputs\.parameters\['([^']+)'\]\}\}")
_EXECUTOR_INPUT = "{{$.json_escape[1]}}"


class HarnessError(AssertionError):
    """The template is not something this harness (or Vertex AI) could run."""


@dataclasses.dataclass
class Replica:
    """One VM of the custom job: which pool, which index, its command line and environment."""

    name: str  # e.g. 'workerpool0-0'
    role: str  # chief, worker, ps
    argv: list[str]
    env: dict[str, str]
    starts: int = 0
    process: subprocess.Popen | None = None
    log_path: str = ""

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()


class CustomJobRun:
    """The training custom job of a compiled template, ready to start as local processes.

    Args:
      template: a YAML written by pipelines/compile.py.
      workdir: where artifacts, logs, the replicas' temp dirs and the stand-in for /gcs go.
      parameters: pipeline parameters (others keep the template's defaults).
      job_inputs: the custom-job component's own inputs, set last (e.g. base_output_directory).
      artifacts: local directories of the task's input artifacts, by input name.
      task: the task's name in the pipeline's root DAG.
      run_uuid: the pipeline job's uuid ({{$.pipeline_job_uuid}}); the same value is the same run.
      pipeline_root: the run's pipeline root ({{$.pipeline_root}}).
    """

    def __init__(self, template: str, workdir: str, parameters: dict | None = None, job_inputs: dict | None = None,
                 artifacts: dict | None = None, task: str = "train-model", run_uuid: str = "harness-run-1",
                 pipeline_root: str = "gs://vertex-harness/pipeline-root"):
        with open(template) as f:
            spec = yaml.safe_load(f)
        self.workdir = str(workdir)
        self.gcs_root = os.path.join(self.workdir, "gcs")
        self.job_id = str(1000000 + os.getpid())
        # The run-time values Vertex AI Pipelines puts in for these placeholders.
        self.runtime = {"pipeline_root": pipeline_root, "pipeline_job_uuid": run_uuid,
                        "pipeline_google_cloud_project_id": "harness-project",
                        "pipeline_google_cloud_location": "us-central1", "pipeline_persistent_resource_id": ""}
        tasks = spec["root"]["dag"]["tasks"]
        if task not in tasks:
            raise HarnessError(f"{template}: no task {task!r} in the root DAG (found {sorted(tasks)})")
        component_name = tasks[task]["componentRef"]["name"]
        component = spec["components"][component_name]
        container = spec["deploymentSpec"]["executors"][component["executorLabel"]]["container"]
        if LAUNCHER not in " ".join(container.get("command", [])):
            raise HarnessError(f"{template}: task {task!r} is not a Vertex AI custom job (its container runs "
                               f"{container.get('command')})")
        values = self._input_values(spec, tasks[task], component, parameters or {})
        values.update(job_inputs or {})
        values = {name: self._runtime_value(value) for name, value in resolve_channels(values).items()}
        self.executor_input = self._executor_input(task, tasks[task], component, values, artifacts or {})
        self.payload = self._payload(container["args"], values)
        self.replicas = self._replicas()

    # --- What Vertex AI Pipelines resolves. ---------------------------------------------

    @staticmethod
    def _input_values(spec: dict, task: dict, component: dict, parameters: dict) -> dict:
        root = spec["root"].get("inputDefinitions", {}).get("parameters", {})
        unknown = set(parameters) - set(root)
        if unknown:
            raise HarnessError(f"pipeline parameters {sorted(unknown)} are not in the template ({sorted(root)})")
        pipeline = {name: d.get("defaultValue") for name, d in root.items()}
        pipeline.update(parameters)
        definitions = component.get("inputDefinitions", {}).get("parameters", {})
        values = {name: d["defaultValue"] for name, d in definitions.items() if "defaultValue" in d}
        for name, binding in task.get("inputs", {}).get("parameters", {}).items():
            if "componentInputParameter" in binding:
                values[name] = pipeline[binding["componentInputParameter"]]
            elif "runtimeValue" in binding:
                values[name] = binding["runtimeValue"]["constant"]
            else:
                raise HarnessError(f"input {name!r} comes from {binding}, which this harness does not resolve")
        # The YAML stores every number as a float; integer parameters are ints to the component.
        for name, value in values.items():
            if definitions.get(name, {}).get("parameterType") == "NUMBER_INTEGER" and isinstance(value, float):
                values[name] = int(value)
        return values

    def _runtime_value(self, value):
        if not isinstance(value, str):
            return value

        def fill(match):
            if match.group(1) not in self.runtime:
                raise HarnessError(f"unknown run-time placeholder {match.group(0)} in {value!r}")
            return self.runtime[match.group(1)]

        return re.sub(r"\{\{\$\.(\w+)\}\}", fill, value)

    def _executor_input(self, task_name: str, task: dict, component: dict, values: dict, artifacts: dict) -> dict:
        task_dir = os.path.join(self.workdir, "pipeline_root", task_name)
        inputs = {}
        for name in task.get("inputs", {}).get("artifacts", {}):
            if name not in artifacts:
                raise HarnessError(f"input artifact {name!r} of {task_name}: pass its local directory in `artifacts`")
            schema = component["inputDefinitions"]["artifacts"][name]["artifactType"]["schemaTitle"]
            inputs[name] = {"artifacts": [{"name": name, "type": {"schemaTitle": schema}, "uri": str(artifacts[name]),
                                           "metadata": {}}]}
        outputs = {}
        for name, definition in component.get("outputDefinitions", {}).get("artifacts", {}).items():
            schema = definition["artifactType"]["schemaTitle"]
            outputs[name] = {"artifacts": [{"name": name, "type": {"schemaTitle": schema},
                                            "uri": os.path.join(task_dir, name), "metadata": {}}]}
        output_parameters = {name: {"outputFile": os.path.join(task_dir, name)}
                             for name in component.get("outputDefinitions", {}).get("parameters", {})}
        return {"inputs": {"parameterValues": values, "artifacts": inputs},
                "outputs": {"artifacts": outputs, "parameters": output_parameters,
                            "outputFile": os.path.join(task_dir, "executor_output.json")}}

    def _payload(self, launcher_args: list[str], values: dict) -> dict:
        """The CustomJob request: the launcher's --payload template with the task's inputs filled in."""
        template = launcher_args[launcher_args.index("--payload") + 1]

        def fill(match):
            name = match.group(1)
            # An optional input left unset (reserved_ip_ranges, labels, ...) is null in the request.
            value = values.get(name)
            # Strings sit inside JSON quotes in the template; everything else is a JSON value.
            return json.dumps(value)[1:-1] if isinstance(value, str) else json.dumps(value)

        text = _PARAMETER.sub(fill, template)
        left = set(re.findall(r"\{\{\$[^}]*\}\}", text)) - {_EXECUTOR_INPUT}
        if left:
            raise HarnessError(f"unresolved placeholders left in the payload: {sorted(left)}")
        # The executor input goes inside a JSON string of the payload: escaped once ("json_escape[1]").
        return json.loads(text.replace(_EXECUTOR_INPUT, json.dumps(json.dumps(self.executor_input))[1:-1]))

    # --- What Vertex AI Training sets up. ------------------------------------------------

    def _replicas(self) -> list[Replica]:
        job_spec = self.payload["job_spec"]
        pools = job_spec["worker_pool_specs"]
        if len(pools) > len(TF_ROLES):
            raise HarnessError(f"{len(pools)} worker pools: this harness runs at most {len(TF_ROLES)}")
        counts = [int(pool.get("replica_count", 1)) for pool in pools]
        addresses = [[f"127.0.0.1:{free_port()}" for _ in range(n)] for n in counts]
        cluster_spec = {f"workerpool{p}": addresses[p] for p in range(len(pools))}
        tf_cluster = {TF_ROLES[p]: addresses[p] for p in range(len(pools))}
        shim = os.path.join(self.workdir, "image-bin")
        os.makedirs(shim, exist_ok=True)
        python3 = os.path.join(shim, "python3")
        if not os.path.exists(python3):  # A script, not a symlink: a venv's python finds its packages by its path.
            with open(python3, "w") as f:
                f.write(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
            os.chmod(python3, 0o755)
        base = {k: v for k, v in os.environ.items()
                if not (k.startswith("AIP_") or k in ("TF_CONFIG", "CLUSTER_SPEC", "CLOUD_ML_JOB_ID"))}
        base["PATH"] = shim + os.pathsep + base.get("PATH", "")
        base["CLOUD_ML_JOB_ID"] = self.job_id
        output_dir = (job_spec.get("base_output_directory") or {}).get("output_uri_prefix", "")
        if output_dir:
            # The layout the pinned aiplatform documents for CustomJobSpec.base_output_directory.
            for var, sub in (("AIP_MODEL_DIR", "model"), ("AIP_CHECKPOINT_DIR", "checkpoints"),
                             ("AIP_TENSORBOARD_LOG_DIR", "logs")):
                base[var] = self.local(output_dir.rstrip("/") + f"/{sub}/")
        if job_spec.get("tensorboard"):
            base["AIP_TENSORBOARD_RESOURCE_NAME"] = job_spec["tensorboard"]
        replicas = []
        for p, pool in enumerate(pools):
            container = pool["container_spec"]
            for i in range(counts[p]):
                name = f"workerpool{p}-{i}"
                tmp = os.path.join(self.workdir, "vm", name, "tmp")
                os.makedirs(tmp, exist_ok=True)
                env = {**base, **{e["name"]: e["value"] for e in container.get("env", [])}, "TMPDIR": tmp,
                       "CLUSTER_SPEC": json.dumps({"cluster": cluster_spec, "environment": "cloud",
                                                   "task": {"type": f"workerpool{p}", "index": i}}),
                       # Vertex AI also puts the job spec under "job"; TensorFlow does not read it.
                       "TF_CONFIG": json.dumps({"cluster": tf_cluster, "environment": "cloud",
                                                "task": {"type": TF_ROLES[p], "index": i}})}
                replicas.append(Replica(name, TF_ROLES[p], [*container["command"], *container.get("args", [])], env))
        return replicas

    def local(self, uri: str) -> str:
        """Where the stand-in for the Cloud Storage FUSE mount holds `uri` (paths pass through)."""
        return os.path.join(self.gcs_root, uri[len("gs://"):]) if uri.startswith("gs://") else uri

    def output_path(self, name: str) -> str:
        """The local path of the task's output artifact `name` (what Artifact.path gives the component)."""
        return self.executor_input["outputs"]["artifacts"][name]["artifacts"][0]["uri"]

    # --- Running. ----------------------------------------------------------------------

    def start(self, replica: Replica) -> Replica:
        """Starts (or restarts, as Vertex AI restarts a VM: same command, same environment) one replica."""
        replica.starts += 1
        logs = os.path.join(self.workdir, "logs")
        os.makedirs(logs, exist_ok=True)
        replica.log_path = os.path.join(logs, f"{replica.name}.{replica.starts}.log")
        with open(replica.log_path, "w") as log:
            replica.process = subprocess.Popen(replica.argv, env=replica.env, cwd=self.workdir, stdout=log,
                                               stderr=subprocess.STDOUT, start_new_session=True)
        return replica

    def start_all(self) -> list[Replica]:
        return [self.start(r) for r in self.replicas]

    def wait(self, replicas: list[Replica], timeout: float) -> list[int]:
        """Exit codes of `replicas`; kills them all and raises with the logs' tails after `timeout` seconds."""
        deadline = time.time() + timeout
        codes = []
        for replica in replicas:
            try:
                codes.append(replica.process.wait(timeout=max(deadline - time.time(), 1)))
            except subprocess.TimeoutExpired:
                self.kill_all()
                raise HarnessError(f"{replica.name} still running after {timeout} s:\n" + self.tails())
        return codes

    def wait_for(self, replica: Replica, pattern: str, timeout: float) -> re.Match:
        deadline = time.time() + timeout
        while time.time() < deadline:
            match = re.search(pattern, replica.log())
            if match:
                return match
            if replica.process.poll() is not None:
                break
            time.sleep(0.2)
        self.kill_all()
        raise HarnessError(f"{replica.name} never logged {pattern!r}:\n" + self.tails())

    def kill(self, replica: Replica) -> None:
        """SIGKILL, as a preempted VM: the replica's whole process group (sh and python)."""
        if replica.process and replica.process.poll() is None:
            os.killpg(replica.process.pid, signal.SIGKILL)
        if replica.process:
            replica.process.wait(timeout=30)

    def kill_all(self) -> None:
        for replica in self.replicas:
            self.kill(replica)

    def tails(self, chars: int = 3000) -> str:
        return "\n".join(f"--- {r.name} ---\n{r.log()[-chars:]}" for r in self.replicas if r.log_path)
