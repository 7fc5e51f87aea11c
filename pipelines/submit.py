"""`python pipelines/submit.py`: submit the compiled mnist-training pipeline to Vertex AI Pipelines.

Everything is checked here before anything leaves the machine: the template
(its images must be ones Vertex AI can pull), each `--param NAME=VALUE` against
the template's parameter types and the pipeline's ranges, the labels, the
pipeline root and the service account. Missing Google Cloud credentials end in
one line saying where they were looked for and how to provide them.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import uuid

import yaml

from mnistkit.files import BUCKET_RULE, GCS_FUSE_MOUNT, is_bucket_name
from pipelines import hardware, parameters
from pipelines.compile import DEFAULT_OUTPUT as DEFAULT_TEMPLATE
from pipelines.pipeline import PARAMETER_PATTERNS, PIPELINE_NAME
from pipelines.vertex_machines import check_region

# Each matched whole (re.fullmatch): `$` would also let a value through with a newline at its end. The project,
# region and account are the pipeline parameters' own rules: these flags fill those parameters.
_PROJECT = re.compile(PARAMETER_PATTERNS["project"][0])
_REGION = re.compile(PARAMETER_PATTERNS["region"][0])
_ACCOUNT = re.compile(PARAMETER_PATTERNS["service_account"][0])
_LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
# Labels per resource (https://cloud.google.com/resource-manager/docs/labels-overview), where the PipelineJob's
# labels field sends its rules; aiplatform's own validate_labels only checks that they are strings.
MAX_LABELS = 64
_REGISTRY_HOST = re.compile(r"https?://\S+/\S+")
_EXPERIMENT = re.compile(r"[a-z0-9][a-z0-9-]{0,127}")
# No empty path part and no trailing "/": the custom job's output prefix would get "//" (ROOT//RUN/train-model),
# which Cloud Storage FUSE reads as ROOT/RUN but the TensorBoard uploader does not.
_PIPELINE_ROOT = re.compile(r"gs://(?P<bucket>[^/]*)(/[^/\s]+)*")
_TENSORBOARD_REGION = re.compile(r"projects/[^/]+/locations/([^/]+)/tensorboards/[^/]+")
# The keys under which a compiled template names container images: every executor's `image`, and the
# `image_uri` of each worker pool of a GCPC custom job (in the component's defaults or a task's inputs).
_IMAGE_KEYS = ("image", "image_uri", "imageUri")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="submit.py", description=__doc__.splitlines()[0])
    p.add_argument("--template", default=DEFAULT_TEMPLATE, help="Compiled pipeline YAML (default %(default)s).")
    p.add_argument("--project", required=True, help="Google Cloud project ID.")
    p.add_argument("--region", required=True, help="Vertex AI region, e.g. us-central1.")
    p.add_argument("--pipeline_root", required=True, help="gs://BUCKET/PATH where the run's artifacts go.")
    p.add_argument("--service_account", required=True,
                   help="Service account the run acts as (NAME@PROJECT.iam.gserviceaccount.com).")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="Override a pipeline parameter, e.g. --param train_epochs=5 (repeatable).")
    p.add_argument("--caching", choices=("on", "off"), default="on",
                   help="on: steps may reuse the results of identical earlier steps, except those that read or "
                        "change the Model Registry or an endpoint, which the template never caches; off: no step "
                        "does (default %(default)s).")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="Run label (repeatable).")
    p.add_argument("--display_name", help="Run name in the console (default: the pipeline's name).")
    p.add_argument("--wait", action="store_true", help="Wait for the run to end; exit 1 unless it succeeded.")
    p.add_argument("--upload_to", metavar="URL",
                   help="Also upload the template to a KFP repository in Artifact Registry, "
                        "https://REGION-kfp.pkg.dev/PROJECT/REPO.")
    p.add_argument("--upload_tag", action="append", default=[], help="Tag of the uploaded template (repeatable).")
    p.add_argument("--upload_only", action="store_true",
                   help="Upload the template (with --upload_to) and submit no run, as Cloud Build does by default.")
    p.add_argument("--experiment", help="Record the run in this Vertex AI Experiment (created if missing): "
                   "lowercase letters, digits and dashes.")
    p.add_argument("--allow_unpullable_images", action="store_true",
                   help="Submit even when an image has no registry host or is on localhost, e.g. when the project's "
                        "network reaches a private registry by that name.")
    p.add_argument("--api_endpoint", help="Vertex AI API endpoint (default: REGION-aiplatform.googleapis.com).")
    return p


def _labels(items: list[str]) -> dict[str, str]:
    labels = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(value):
            raise ValueError(f"--label {item!r}: expected KEY=VALUE, the key a lowercase letter then up to 62 of "
                             "[a-z0-9_-], the value up to 63 of [a-z0-9_-]")
        if key in labels:  # Else the last value silently won.
            raise ValueError(f"--label {item!r}: expected each key once, found {key!r} again")
        labels[key] = value
    if len(labels) > MAX_LABELS:  # Vertex AI refused the job, after --upload_to had published the template.
        raise ValueError(f"--label: expected at most {MAX_LABELS} labels (Vertex AI's limit per resource), "
                         f"found {len(labels)}")
    return labels


def _images(node, where: str = ""):
    """Yields (image, where) for every container image a compiled template names."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _IMAGE_KEYS and isinstance(value, str):
                yield value, where
            else:
                yield from _images(value, key if key.startswith(("exec-", "comp-")) else where)
    elif isinstance(node, list):
        for value in node:
            yield from _images(value, where)


def _unpullable(image: str) -> bool:
    """Whether Vertex AI cannot pull `image`: no registry host (a bare name), or a host on this machine."""
    first, sep, _ = image.partition("/")
    host = first.split(":")[0].lower()
    if not sep or ("." not in first and ":" not in first and host != "localhost"):
        return True  # A bare name, or a Docker Hub path such as library/python: no registry host at all.
    return host == "localhost" or host.startswith("127.") or host in ("0.0.0.0", "[::1]")


def check_images(template_path: str) -> None:
    """Refuses a template naming an image Vertex AI cannot pull; raises ValueError naming the first one."""
    with open(template_path) as f:
        template = yaml.safe_load(f)
    for image, where in _images(template):
        if _unpullable(image):
            raise ValueError(
                f"{template_path}: image {image!r} ({where or 'a step'}) cannot be pulled by Vertex AI: expected "
                "a registry host such as REGION-docker.pkg.dev/PROJECT/REPO; compile for one with `python "
                "pipelines/compile.py --registry REGION-docker.pkg.dev/PROJECT/REPO` after pushing the images "
                "(or build both with Cloud Build: cloudbuild.yaml), or pass --allow_unpullable_images")


def _check_sources(source: str) -> None:
    """Refuses a `source` parameter the download step on Vertex AI could not read: what run_local.py refuses,
    and a directory of this machine."""
    from mnistkit import sources

    try:
        for one in sources.split_sources(source):
            if one.startswith(("gs://", "http://", "https://")):
                sources.source_copier(one)  # Its form only: nothing is reached.
            elif not one.removeprefix("file://").startswith(GCS_FUSE_MOUNT + "/"):
                raise ValueError(f"parameter source: expected gs://BUCKET[/PREFIX], an http(s):// URL or a path "
                                 f"under {GCS_FUSE_MOUNT}/ (Cloud Storage FUSE, what the step on Vertex AI "
                                 f"can read), found {one!r}")
            elif not is_bucket_name(one.removeprefix("file://")[len(GCS_FUSE_MOUNT) + 1:].split("/")[0]):
                # The mount's own root, or no bucket's name, holds no MNIST file: the download step would fail.
                raise ValueError(f"parameter source: expected {GCS_FUSE_MOUNT}/BUCKET[/PREFIX], BUCKET "
                                 f"{BUCKET_RULE}, found {one!r}")
    except ValueError as e:  # Said of --source, the download command's flag: here it is a parameter.
        raise ValueError(str(e).replace("--source", "parameter source", 1)) from None


def check(args: argparse.Namespace) -> tuple[dict, dict]:
    """Checks every argument; returns (parameter values, labels). Raises ValueError."""
    if not args.project or not _PROJECT.fullmatch(args.project):
        raise ValueError(f"--project: expected a project ID (6-30 of [a-z0-9-], starting with a letter) or number, "
                         f"found {args.project!r}")
    if not args.region or not _REGION.fullmatch(args.region):
        raise ValueError(f"--region: expected a region such as us-central1, found {args.region!r}")
    check_region(args.region, "--region")
    root = _PIPELINE_ROOT.fullmatch(args.pipeline_root)
    # Refused here: Vertex AI's client only logs a root bucket it failed to create, and creates the job anyway.
    if not root or not is_bucket_name(root["bucket"]):
        raise ValueError(f"--pipeline_root: expected gs://BUCKET[/PATH], {BUCKET_RULE}, and a PATH with no empty "
                         f"part and no trailing '/', found {args.pipeline_root!r}")
    if not args.service_account or not _ACCOUNT.fullmatch(args.service_account):
        raise ValueError(f"--service_account: expected an e-mail of a service account such as "
                         f"NAME@PROJECT.iam.gserviceaccount.com or PROJECT_NUMBER-compute@developer.gserviceaccount.com"
                         f", found {args.service_account!r}")
    if args.upload_to and not _REGISTRY_HOST.fullmatch(args.upload_to):
        raise ValueError(f"--upload_to: expected https://REGION-kfp.pkg.dev/PROJECT/REPO, found {args.upload_to!r}")
    if args.upload_only and not args.upload_to:
        raise ValueError("--upload_only: expected together with --upload_to, found no --upload_to")
    if args.upload_tag and not args.upload_to:
        raise ValueError("--upload_tag: expected together with --upload_to, found no --upload_to")
    if args.display_name is not None and not 1 <= len(args.display_name) <= 128:
        raise ValueError(f"--display_name: expected 1-128 characters, found {len(args.display_name)}")
    if args.experiment is not None and not _EXPERIMENT.fullmatch(args.experiment):
        raise ValueError(f"--experiment: expected 1-128 of [a-z0-9-] starting with a letter or digit, "
                         f"found {args.experiment!r}")
    template_parameters = parameters.template_parameters(args.template)
    with open(args.template) as f:
        replicas = hardware.replicas_in(yaml.safe_load(f))  # The global batch must be a multiple of it.
    values = parameters.parse_overrides(args.param, template_parameters, replicas)
    if not args.allow_unpullable_images:
        check_images(args.template)
    # What the template's steps need to know of the run and cannot read from it: the account custom jobs run
    # as, and the project and region of the Model Registry. By default the run's own.
    for name, value in (("service_account", args.service_account), ("project", args.project),
                        ("region", args.region)):
        if name in template_parameters and name not in values:
            values[name] = value
    parameters.check_values(values, template_parameters, replicas)  # Again, with the run's own values filled in.
    _check_sources(values.get("source", template_parameters.get("source", {}).get("defaultValue", "")))
    root = values.get("checkpoint_root", "")
    if root and not root.startswith(("gs://", "/gcs/")):
        raise ValueError(f"parameter checkpoint_root: expected gs://BUCKET[/PATH] or a path under /gcs/ on Vertex "
                         f"AI (a machine's own disk is gone when a resubmitted run would resume), found {root!r}")
    if root and not is_bucket_name(root[len("gs://"):].split("/")[0]):  # "/gcs/" is as long as "gs://".
        # Else the train step fails creating the directory, after the data steps and once its machines are up.
        raise ValueError(f"parameter checkpoint_root: expected gs://BUCKET[/PATH] or /gcs/BUCKET[/PATH], "
                         f"{BUCKET_RULE}, found {root!r}")
    _check_tensorboard(args.template, args.region, values.get("service_account", args.service_account))
    return values, _labels(args.label)


def _tensorboards(node):
    """Yields the non-empty `tensorboard` defaults of a compiled template (a custom job's TensorBoard)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "tensorboard" and isinstance(value, dict) and value.get("defaultValue"):
                yield value["defaultValue"]
            else:
                yield from _tensorboards(value)
    elif isinstance(node, list):
        for value in node:
            yield from _tensorboards(value)


def _check_tensorboard(template_path: str, region: str, service_account: str) -> None:
    """A template whose training job uploads to a Vertex AI TensorBoard: the instance must be in the run's region,
    and the job needs a service account (aiplatform's CustomJob: 'service_account is required with provided
    tensorboard')."""
    import yaml

    with open(template_path) as f:
        template = yaml.safe_load(f)
    for board in _tensorboards(template):
        found = _TENSORBOARD_REGION.fullmatch(board)
        if found and found[1] != region:
            raise ValueError(f"--region: expected {found[1]}, the region of the template's TensorBoard {board} "
                             f"(a job uploads only to a TensorBoard of its own region), found {region!r}")
        if not service_account:
            raise ValueError(f"parameter service_account: expected an account for the training job, which uploads "
                             f"to the TensorBoard {board}, found an empty one")


def credentials_help() -> str:
    """One line: where Application Default Credentials were looked for, and how to provide them."""
    from google.auth import _cloud_sdk, environment_vars

    key = os.environ.get(environment_vars.CREDENTIALS)
    looked = ([f"${environment_vars.CREDENTIALS} ({key})"] if key else [f"${environment_vars.CREDENTIALS} (unset)"]) \
        + [f"gcloud's {_cloud_sdk.get_application_default_credentials_path()}", "the GCE metadata server"]
    return (f"no Google Cloud credentials found: looked in {', '.join(looked)}; run `gcloud auth "
            f"application-default login`, or set {environment_vars.CREDENTIALS} to a service-account key file")


def _check_deployment_endpoint(values: dict, template_parameters: dict) -> None:
    """With deploy=true, the endpoint the run's deployment would refuse (missing, or serving another model) is
    refused now, not after training. Raises ValueError; prints where the deployment will go."""
    from mnistkit import registry

    def value(name):
        return values.get(name, template_parameters.get(name, {}).get("defaultValue"))

    if not value("deploy"):
        return
    name, said = registry.find_deployment_endpoint(value("endpoint") or "", value("model_display_name"),
                                                   value("region"), value("project"))
    print(said if name else f"{said} yet: the run creates it")


def submit(args: argparse.Namespace, values: dict, labels: dict):
    """Uploads the template when asked, then creates the pipeline job; returns it (None with --upload_only)."""
    from google.cloud import aiplatform

    if not args.upload_only:  # Before the upload too: a refused submission publishes nothing.
        aiplatform.init(project=args.project, location=args.region, api_endpoint=args.api_endpoint)
        _check_deployment_endpoint(values, parameters.template_parameters(args.template))
    if args.upload_to:
        from kfp.registry import RegistryClient

        package, version = RegistryClient(host=args.upload_to).upload_pipeline(
            args.template, tags=args.upload_tag or None)
        print(f"uploaded {args.template} to {args.upload_to} as {package} {version}")
        if args.upload_only:
            return None
    # aiplatform's own ID is the name and the second: two submits in one second (a sweep) collided.
    job_id = f"{PIPELINE_NAME}-{time.strftime('%Y%m%d%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"
    job = aiplatform.PipelineJob(
        display_name=args.display_name or PIPELINE_NAME, template_path=args.template, job_id=job_id,
        pipeline_root=args.pipeline_root, parameter_values=values, labels=labels or None,
        # aiplatform's enable_caching=True would set every step's option, the Registry's and endpoint's too.
        enable_caching=False if args.caching == "off" else None)
    job.submit(service_account=args.service_account, experiment=args.experiment)
    print(f"submitted {job.resource_name}")
    if args.wait:
        job.wait()
    return job


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        values, labels = check(args)
    except ValueError as e:
        print(f"submit.py: error: {e}", file=sys.stderr)
        return 1
    from google.api_core import exceptions as api_exceptions
    from google.auth import exceptions as auth_exceptions

    try:
        job = submit(args, values, labels)
    except auth_exceptions.DefaultCredentialsError:
        print(f"submit.py: error: {credentials_help()}", file=sys.stderr)
        return 1
    except (RuntimeError, ValueError) as e:  # A failed or cancelled run (PipelineJob.wait); a refused endpoint.
        print(f"submit.py: error: {e}", file=sys.stderr)
        return 1
    except api_exceptions.GoogleAPICallError as e:  # Vertex AI or Cloud Storage refused a request.
        print(f"submit.py: error: {type(e).__name__} ({e.code}): {(e.message or str(e)).splitlines()[0]}",
              file=sys.stderr)
        return 1
    if job is not None and args.wait:
        print(f"{job.resource_name}: {job.state.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
