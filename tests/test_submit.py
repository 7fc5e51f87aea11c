"""Submitting the compiled pipeline with the real aiplatform client to a loopback Vertex AI endpoint.

The endpoint is an HTTP server on 127.0.0.1 written here: it records every
request and answers the few calls a submission makes (the pipeline-root
bucket lookup and creation of the GCS JSON API, the pipeline job creation
and polling of the Vertex AI REST API, and a KFP template upload). Nothing
reaches the internet.
"""

import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from pipelines import compile as compile_module
from pipelines import hardware, submit

PROJECT, REGION = "mnist-project", "us-central1"
ACCOUNT = "runner@mnist-project.iam.gserviceaccount.com"
ROOT = "gs://mnist-pipeline-root/runs"


class Recorder(BaseHTTPRequestHandler):
    """Answers like Vertex AI, GCS and Artifact Registry would, and keeps what it received."""

    requests: list = []  # Replaced per server.
    jobs: dict = {}

    def log_message(self, *args):
        pass

    def _reply(self, status: int, payload, content_type="application/json"):
        body = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        url = urllib.parse.urlsplit(self.path)
        self.requests.append({"method": self.command, "path": url.path, "query": urllib.parse.parse_qs(url.query),
                              "headers": dict(self.headers), "body": body})
        if url.path.startswith("/storage/v1/b/") and url.path.endswith("/iam"):
            if self.command == "GET":
                return self._reply(200, {"kind": "storage#policy", "bindings": [], "etag": "CAE=", "version": 1})
            return self._reply(200, json.loads(body))
        if url.path.startswith("/storage/v1/b/") and self.command == "GET":
            # The pipeline-root bucket does not exist yet: the client creates it.
            return self._reply(404, {"error": {"code": 404, "message": "The specified bucket does not exist."}})
        if url.path == "/storage/v1/b" and self.command == "POST":
            return self._reply(200, {"kind": "storage#bucket", **json.loads(body)})
        if url.path.endswith("/pipelineJobs") and self.command == "POST":
            job = json.loads(body)
            job_id = urllib.parse.parse_qs(url.query)["pipelineJobId"][0]
            job.update(name=f"projects/{PROJECT}/locations/{REGION}/pipelineJobs/{job_id}",
                       state="PIPELINE_STATE_PENDING")
            self.jobs[job["name"]] = job
            return self._reply(200, job)
        name = url.path.removeprefix("/v1/")
        if self.command == "GET" and name in self.jobs:
            return self._reply(200, {**self.jobs[name], "state": "PIPELINE_STATE_SUCCEEDED"})
        if url.path.startswith("/kfp/") and self.command == "POST":
            return self._reply(200, "mnist-training/sha256:0123abcd", "text/plain")
        return self._reply(404, {"error": {"code": 404, "message": f"unexpected {self.command} {url.path}"}})

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle


@pytest.fixture
def endpoint(monkeypatch):
    """Starts the recording server, points the real clients at it; yields (base URL, recorded requests)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import aiplatform
    from google.cloud.aiplatform import initializer

    recorded = []
    handler = type("Handler", (Recorder,), {"requests": recorded, "jobs": {}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
    # Anonymous credentials: there is no account here, and the endpoint checks none.
    aiplatform.init(credentials=AnonymousCredentials(), api_transport="rest")
    yield url, recorded
    initializer.global_config.__init__()  # Back to defaults: aiplatform.init is bound to this object.
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> str:
    return compile_module.compile_pipeline(str(tmp_path_factory.mktemp("template") / "pipeline.yaml"),
                                           hardware.Hardware())


def _args(template, url, *extra):
    return ["--template", template, "--project", PROJECT, "--region", REGION, "--pipeline_root", ROOT,
            "--service_account", ACCOUNT, "--api_endpoint", url, *extra]


def _pop_caching(node) -> list:
    """Removes every task's cachingOptions from a pipeline spec; returns them."""
    found = []
    if isinstance(node, dict):
        if "cachingOptions" in node:
            found.append(node.pop("cachingOptions"))
        for value in node.values():
            found += _pop_caching(value)
    elif isinstance(node, list):
        for value in node:
            found += _pop_caching(value)
    return found


def _job_requests(recorded):
    return [r for r in recorded if r["method"] == "POST" and r["path"].endswith("/pipelineJobs")]


def test_submission_carries_the_spec_parameters_and_service_account(endpoint, template, capsys):
    url, recorded = endpoint
    code = submit.main(_args(template, url, "--param", "train_epochs=5", "--param", "min_accuracy=0.99",
                             "--param", "register=true", "--param", "recipe=seed", "--label", "team=vision",
                             "--caching", "off", "--display_name", "nightly"))
    assert code == 0
    (create,) = _job_requests(recorded)
    assert create["path"] == f"/v1/projects/{PROJECT}/locations/{REGION}/pipelineJobs"
    job = json.loads(create["body"])
    with open(template) as f:
        compiled = yaml.safe_load(f)
    sent = job["pipelineSpec"]
    # Caching off reaches every task of the spec; apart from that it is the compiled one.
    caching = _pop_caching(sent)
    assert caching and all(c == {"enableCache": False} for c in caching)
    _pop_caching(compiled)
    for key in ("root", "components", "deploymentSpec", "pipelineInfo"):
        assert sent[key] == json.loads(json.dumps(compiled[key])), key
    assert job["serviceAccount"] == ACCOUNT
    assert job["displayName"] == "nightly"
    assert job["labels"]["team"] == "vision"
    runtime = job["runtimeConfig"]
    assert runtime["gcsOutputDirectory"] == ROOT
    assert runtime["parameterValues"] == {"train_epochs": 5, "min_accuracy": 0.99, "register": True,
                                          "recipe": "seed"}
    # The pipeline-root bucket was looked up, then created, before the job.
    bucket_calls = [(r["method"], r["path"]) for r in recorded if r["path"].startswith("/storage/")]
    assert bucket_calls[:2] == [("GET", "/storage/v1/b/mnist-pipeline-root"), ("POST", "/storage/v1/b")]
    assert f"submitted projects/{PROJECT}/locations/{REGION}/pipelineJobs/" in capsys.readouterr().out


def test_wait_polls_until_the_run_ends(endpoint, template, capsys):
    url, recorded = endpoint
    assert submit.main(_args(template, url, "--wait")) == 0
    (create,) = _job_requests(recorded)
    job_id = create["query"]["pipelineJobId"][0]
    polled = [r["path"] for r in recorded if r["method"] == "GET" and "/pipelineJobs/" in r["path"]]
    assert polled and set(polled) == {f"/v1/projects/{PROJECT}/locations/{REGION}/pipelineJobs/{job_id}"}
    assert f"pipelineJobs/{job_id}: PIPELINE_STATE_SUCCEEDED" in capsys.readouterr().out


def test_template_upload_to_a_kfp_repository(endpoint, template, capsys):
    url, recorded = endpoint
    assert submit.main(_args(template, url, "--upload_to", f"{url}/kfp/{PROJECT}/pipelines",
                             "--upload_tag", "v1", "--upload_tag", "latest")) == 0
    (upload,) = [r for r in recorded if r["path"].startswith("/kfp/")]
    assert upload["method"] == "POST"
    with open(template, "rb") as f:
        assert f.read() in upload["body"]
    assert b"v1,latest" in upload["body"]
    assert "as mnist-training sha256:0123abcd" in capsys.readouterr().out
    assert len(_job_requests(recorded)) == 1


@pytest.mark.parametrize("extra, message", [
    (["--param", "stop_threshold=1.5"], "parameter stop_threshold: expected a value in [0.0, 1.0], found 1.5"),
    (["--param", "min_accuracy=-0.1"], "parameter min_accuracy: expected a value in [0.0, 1.0], found -0.1"),
    (["--param", "train_epochs=0"], "parameter train_epochs: expected at least 1, found 0"),
    (["--param", "batch_size=0"], "parameter batch_size: expected at least 1, found 0"),
    (["--param", "batch_size=12.5"], "parameter batch_size: expected an integer, found '12.5'"),
    (["--param", "learning_rate=fast"], "parameter learning_rate: expected a number, found 'fast'"),
    (["--param", "register=yes"], "parameter register: expected true or false, found 'yes'"),
    (["--param", "recipe=slow"], "parameter recipe: expected one of fast, seed, found 'slow'"),
    (["--param", "epochs=3"], "parameter epochs: unknown; the pipeline takes batch_size, "),
    (["--param", "train_epochs"], "override 'train_epochs': expected NAME=VALUE"),
    (["--label", "Team=x"], "--label 'Team=x': expected KEY=VALUE"),
])
def test_bad_overrides_never_reach_the_endpoint(endpoint, template, capsys, extra, message):
    url, recorded = endpoint
    assert submit.main(_args(template, url, *extra)) == 1
    assert f"submit.py: error: {message}" in capsys.readouterr().err
    assert recorded == []


@pytest.mark.parametrize("flag, value, message", [
    ("--pipeline_root", "/local/dir", "--pipeline_root: expected gs://BUCKET[/PATH]"),
    ("--service_account", "runner", "--service_account: expected an e-mail"),
    ("--project", "My Project", "--project: expected a project ID"),
    ("--region", "mars", "--region: expected a region such as us-central1"),
])
def test_bad_settings_never_reach_the_endpoint(endpoint, template, capsys, flag, value, message):
    url, recorded = endpoint
    args = _args(template, url)
    args[args.index(flag) + 1] = value
    assert submit.main(args) == 1
    assert message in capsys.readouterr().err
    assert recorded == []


def test_service_account_is_required(template, capsys):
    args = _args(template, "http://127.0.0.1:9")
    i = args.index("--service_account")
    with pytest.raises(SystemExit) as e:
        submit.main(args[:i] + args[i + 2:])
    assert e.value.code == 2
    assert "--service_account" in capsys.readouterr().err


def test_missing_template_is_refused(endpoint, tmp_path, capsys):
    url, recorded = endpoint
    assert submit.main(_args(str(tmp_path / "none.yaml"), url)) == 1
    assert "none.yaml: expected a compiled pipeline (python pipelines/compile.py), found none" \
        in capsys.readouterr().err
    assert recorded == []
