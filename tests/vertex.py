"""A loopback stand-in for Vertex AI, Cloud Storage and Artifact Registry that the real clients talk to.

An HTTP server on 127.0.0.1 written here: it records every request and
answers the calls this project's clients make (the pipeline-root bucket
lookup and creation of the GCS JSON API; pipeline job creation and polling;
a KFP template upload; the Model Registry lookups of the baseline gate; the
endpoint lookup, creation and undeployment around a deployment; the Metadata
calls that attach a run to a Vertex AI Experiment). Nothing reaches the
internet. Tests use the `endpoint` fixture (import it into the test module).
"""

import json
import re
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

PROJECT, REGION = "mnist-project", "us-central1"
PARENT = f"projects/{PROJECT}/locations/{REGION}"
STORE = f"{PARENT}/metadataStores/default"


def registered_model(model_id: str, display_name: str, version_id: str, confusion_rows=None,
                     artifact_uri: str = "gs://bucket/exports/1", updated: str = "2026-01-02T00:00:00Z",
                     later_versions: tuple[str, ...] = ()) -> dict:
    """A model the stand-in Registry holds at its default version `version_id`, with an evaluation of that version
    when rows are given; `later_versions` exist too, without the alias (as uploaded with a parent)."""
    model = {"name": f"{PARENT}/models/{model_id}", "displayName": display_name, "versionId": version_id,
             "artifactUri": artifact_uri,
             "versionAliases": ["default"], "createTime": "2026-01-01T00:00:00Z",
             "updateTime": updated, "evaluations": [], "versions": [version_id, *later_versions]}
    if confusion_rows is not None:
        model["evaluations"].append({
            "name": f"{PARENT}/models/{model_id}@{version_id}/evaluations/1", "createTime": "2026-01-02T00:00:00Z",
            "metricsSchemaUri": "gs://google-cloud-aiplatform/schema/modelevaluation/classification_metrics_1.0.0.yaml",
            "metrics": {"logLoss": 0.1, "confusionMatrix": {
                "annotationSpecs": [{"id": str(i), "displayName": str(i)} for i in range(len(confusion_rows))],
                "rows": confusion_rows}}})
    return model


def deployed_endpoint(endpoint_id: str, display_name: str, deployed: list[tuple[str, str, str, int]],
                      created: str = "2026-01-01T00:00:00Z") -> dict:
    """An endpoint serving `deployed`: (deployed model id, model, version id, traffic percent) each; a model
    is an ID in this project and region, or a whole resource name."""
    return {"name": f"{PARENT}/endpoints/{endpoint_id}", "displayName": display_name, "createTime": created,
            "deployedModels": [{"id": d, "model": m if "/" in m else f"{PARENT}/models/{m}", "modelVersionId": v}
                               for d, m, v, _ in deployed],
            "trafficSplit": {d: t for d, _, _, t in deployed if t}}


class Recorder(BaseHTTPRequestHandler):
    """Answers like Vertex AI, GCS and Artifact Registry would, and keeps what it received."""

    requests: list = []  # Replaced per server, like the state below.
    refuse_jobs: str = ""  # When set, pipeline job creation is refused (400 INVALID_ARGUMENT) with this message.
    jobs: dict = {}
    models: list = []
    endpoints: list = []  # Oldest first, as created.
    operations: dict = {}  # Long-running operations by name, done once asked about.
    contexts: dict = {}

    def log_message(self, *args):
        pass

    def _reply(self, status: int, payload, content_type="application/json"):
        body = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _not_found(self, what: str):
        return self._reply(404, {"error": {"code": 404, "message": f"{what} not found", "status": "NOT_FOUND"}})

    def _operation(self, resource: str, response: dict, response_type: str):
        """A long-running operation on `resource`, not done when first answered (as Vertex AI's seldom are):
        the client must poll it, and its first GET finds it done with `response`."""
        name = f"{resource}/operations/{len(self.requests)}"
        self.operations[name] = {"name": name, "done": True, "response": {
            "@type": f"type.googleapis.com/google.cloud.aiplatform.v1.{response_type}", **response}}
        return self._reply(200, {"name": name, "done": False})

    @staticmethod
    def _matches(wanted: str, display_name: str) -> bool:
        """A list filter `display_name="..."`, where `*` matches any text (list filters' wildcard, AIP-160)."""
        if not wanted:
            return True
        value = re.fullmatch(r'display_name="(.*)"', wanted)[1]
        return re.fullmatch(".*".join(map(re.escape, value.split("*"))), display_name) is not None

    @staticmethod
    def _model(m: dict) -> dict:
        """A model as the API shows it at its default version (the stand-in's bookkeeping left out)."""
        return {k: v for k, v in m.items() if k not in ("evaluations", "versions")}

    def _undeploy(self, endpoint: dict, request: dict):
        """Vertex AI's rules (UndeployModelRequest): a split sent replaces the endpoint's and must add up to 100
        over the models left; without one the split stays; a model that would keep traffic is not undeployed."""
        target = request["deployedModelId"]
        if target not in {d["id"] for d in endpoint["deployedModels"]}:
            return self._not_found(f"deployed model {target}")
        split = request.get("trafficSplit") or endpoint["trafficSplit"]
        left = {d["id"] for d in endpoint["deployedModels"]} - {target}
        if split.get(target, 0):
            return self._reply(400, {"error": {"code": 400, "status": "FAILED_PRECONDITION", "message":
                                               f"deployed model {target} has traffic: {split}"}})
        if not set(split) <= left | {target} or (split and sum(split.values()) != 100):
            return self._reply(400, {"error": {"code": 400, "status": "INVALID_ARGUMENT", "message":
                                               f"traffic split {split} for deployed models {sorted(left)}"}})
        endpoint["deployedModels"] = [d for d in endpoint["deployedModels"] if d["id"] != target]
        endpoint["trafficSplit"] = {k: v for k, v in split.items() if v}
        return self._operation(endpoint["name"], {}, "UndeployModelResponse")

    def _handle(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        path = urllib.parse.unquote(url.path)  # The REST client escapes '@' in versioned names.
        self.requests.append({"method": self.command, "path": path, "query": query,
                              "headers": dict(self.headers), "body": body})
        name = path.removeprefix("/v1/")
        if path.startswith("/storage/v1/b/") and path.endswith("/iam"):
            if self.command == "GET":
                return self._reply(200, {"kind": "storage#policy", "bindings": [], "etag": "CAE=", "version": 1})
            return self._reply(200, json.loads(body))
        if path.startswith("/storage/v1/b/") and self.command == "GET":
            # The pipeline-root bucket does not exist yet: the client creates it.
            return self._reply(404, {"error": {"code": 404, "message": "The specified bucket does not exist."}})
        if path == "/storage/v1/b" and self.command == "POST":
            return self._reply(200, {"kind": "storage#bucket", **json.loads(body)})
        if path.endswith("/pipelineJobs") and self.command == "POST" and self.refuse_jobs:
            return self._reply(400, {"error": {"code": 400, "message": self.refuse_jobs, "status": "INVALID_ARGUMENT"}})
        if path.endswith("/pipelineJobs") and self.command == "POST":
            job = json.loads(body)
            job_id = query["pipelineJobId"][0]
            job.update(name=f"{PARENT}/pipelineJobs/{job_id}", state="PIPELINE_STATE_PENDING",
                       jobDetail={"pipelineRunContext": {"name": f"{STORE}/contexts/{job_id}",
                                                         "schemaTitle": "system.PipelineRun"}})
            self.jobs[job["name"]] = job
            return self._reply(200, job)
        if self.command == "GET" and name in self.jobs:
            return self._reply(200, {**self.jobs[name], "state": "PIPELINE_STATE_SUCCEEDED"})
        if path.startswith("/kfp/") and self.command == "POST":  # The package is named by the template's pipeline.
            info = body[body.index(b"\npipelineInfo:"):]
            package = re.search(rb"\n  name: ([\w-]+)", info)[1].decode()
            return self._reply(200, f"{package}/sha256:0123abcd", "text/plain")
        if name == f"{PARENT}/models" and self.command == "GET":
            wanted = urllib.parse.unquote(query.get("filter", [""])[0])
            found = [self._model(m) for m in self.models if self._matches(wanted, m["displayName"])]
            if query.get("orderBy") == ["update_time desc"]:  # What aiplatform's Model.list asks the server for.
                found.sort(key=lambda m: m["updateTime"], reverse=True)
            elif query.get("orderBy"):
                return self._reply(400, {"error": {"code": 400, "message": f"unexpected orderBy {query['orderBy']}"}})
            return self._reply(200, {"models": found} if found else {})
        if name.startswith(f"{PARENT}/models/") and name.endswith("/evaluations") and self.command == "GET":
            model_name, _, version = name.removesuffix("/evaluations").partition("@")
            for m in self.models:
                if m["name"] == model_name and (version or m["versionId"]) in m["versions"]:
                    # A version's own evaluations; a model's name without a version means its default version.
                    own = [e for e in m["evaluations"]
                           if e["name"].startswith(f"{model_name}@{version or m['versionId']}/")]
                    return self._reply(200, {"modelEvaluations": own} if own else {})
            return self._not_found(name)
        if name.startswith(f"{PARENT}/models/") and name.endswith(":mergeVersionAliases") and self.command == "POST":
            model_name, _, version = name.removesuffix(":mergeVersionAliases").partition("@")
            for m in self.models:
                if m["name"] == model_name and version in m["versions"]:
                    if json.loads(body)["versionAliases"] != ["default"]:
                        return self._reply(400, {"error": {"code": 400, "message": "unexpected aliases"}})
                    # This Registry keeps each model at its default version: the alias moves, and the model with it.
                    m.update(versionId=version, updateTime=f"2026-03-01T00:00:00.{len(self.requests):06d}Z")
                    return self._reply(200, self._model(m))
            return self._not_found(name)
        # The pinned client polls operations through the first of the API's HTTP rules, /ui/{name}.
        if self.command == "GET" and name.removeprefix("/ui/") in self.operations:
            return self._reply(200, self.operations[name.removeprefix("/ui/")])
        # Endpoints: listed by display name, created and undeployed from (operations the client polls).
        if name == f"{PARENT}/endpoints" and self.command == "GET":
            wanted = urllib.parse.unquote(query.get("filter", [""])[0])
            # In the order kept, oldest first: the client sorts them (by createTime) where it is asked to.
            found = [e for e in self.endpoints if self._matches(wanted, e["displayName"])]
            return self._reply(200, {"endpoints": found} if found else {})
        if name == f"{PARENT}/endpoints" and self.command == "POST":
            created = {**json.loads(body), "name": f"{PARENT}/endpoints/{9000 + len(self.endpoints)}",
                       "createTime": f"2026-02-{1 + len(self.endpoints):02d}T00:00:00Z", "deployedModels": [],
                       "trafficSplit": {}}
            self.endpoints.append(created)
            return self._operation(created["name"], created, "Endpoint")
        for e in self.endpoints:
            if name == e["name"] and self.command == "GET":
                return self._reply(200, e)
            if name == f'{e["name"]}:undeployModel' and self.command == "POST":
                return self._undeploy(e, json.loads(body))
        # Vertex AI Experiments: an experiment is a Metadata context; a run joins it as a child context.
        if name.startswith(f"{STORE}/contexts/") and ":" not in name and self.command == "GET":
            return self._reply(200, self.contexts[name]) if name in self.contexts else self._not_found(name)
        if name == f"{STORE}/contexts" and self.command == "POST":
            context = {**json.loads(body), "name": f"{STORE}/contexts/{query['contextId'][0]}"}
            self.contexts[context["name"]] = context
            return self._reply(200, context)
        if name.endswith(":addContextChildren") and self.command == "POST":
            return self._reply(200, {})
        if name == STORE and self.command == "GET":
            return self._reply(200, {"name": STORE})
        return self._reply(404, {"error": {"code": 404, "message": f"unexpected {self.command} {path}"}})

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle


@pytest.fixture
def endpoint(monkeypatch):
    """Starts the recording server, points the real clients at it; yields (base URL, recorded requests, handler).

    The handler's `models` list is the Registry's content; tests append registered_model(...) to it. Its
    `endpoints` list holds the region's endpoints (deployed_endpoint(...)), oldest first.
    """
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import aiplatform
    from google.cloud.aiplatform import initializer

    recorded = []
    handler = type("Handler", (Recorder,), {"requests": recorded, "jobs": {}, "models": [], "endpoints": [],
                                            "operations": {}, "contexts": {}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
    # Anonymous credentials: there is no account here, and the endpoint checks none.
    aiplatform.init(credentials=AnonymousCredentials(), api_transport="rest")
    yield url, recorded, handler
    initializer.global_config.__init__()  # Back to defaults: aiplatform.init is bound to this object.
    server.shutdown()
    server.server_close()
