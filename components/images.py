"""The one place where the URIs of the pipeline's container images are built.

An image is `{registry}/mnistkit-{kind}:{tag}`. The registry defaults to
`localhost` (what a local `docker build` tags and what kfp's DockerRunner finds
without pulling) and the tag to the package version, so a compiled pipeline
names the images that hold the code that compiled it. Both are chosen at
compile time: by argument, or by the MNISTKIT_IMAGE_REGISTRY and
MNISTKIT_IMAGE_TAG environment variables.

Run as a script, it prints the URI of one kind: `python components/images.py gpu`.
"""

from __future__ import annotations

import os
import re
import sys

KINDS = ("cpu", "gpu", "tpu")
DEFAULT_REGISTRY = "localhost"
REGISTRY_ENV = "MNISTKIT_IMAGE_REGISTRY"
TAG_ENV = "MNISTKIT_IMAGE_TAG"

# Docker's rules (the reference grammar of distribution/reference), each matched whole: a tag is 1 to 128 of
# [A-Za-z0-9_.-], not starting with . or -; a registry is a host (with a dot or a port, or localhost) or a
# Docker Hub namespace, then path components of lowercase letters and digits joined by '.', '_', '__' or '-'.
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_HOST_PART = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
_HOST = re.compile(rf"{_HOST_PART}(?:\.{_HOST_PART})*(?::[0-9]+)?")
_PATH_PART = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")


def _valid_registry(registry: str) -> bool:
    first, *path = registry.split("/")
    is_host = "." in first or ":" in first or first == "localhost"
    return bool((_HOST if is_host else _PATH_PART).fullmatch(first)) and all(_PATH_PART.fullmatch(p) for p in path)


def default_tag() -> str:
    import mnistkit  # Cheap: the package's __init__ loads nothing heavy.

    return mnistkit.__version__


def image_uri(kind: str, registry: str | None = None, tag: str | None = None) -> str:
    """Returns the URI of the image for `kind`.

    Args:
      kind: 'cpu' (every step), 'gpu' or 'tpu' (the training step on accelerators).
      registry: e.g. 'us-central1-docker.pkg.dev/PROJECT/REPO'; default
        $MNISTKIT_IMAGE_REGISTRY, else 'localhost'.
      tag: default $MNISTKIT_IMAGE_TAG, else the mnistkit version.

    Raises:
      ValueError: an unknown kind, an empty registry or a malformed tag.
    """
    if kind not in KINDS:
        raise ValueError(f"image kind: expected one of {', '.join(KINDS)}, found {kind!r}")
    # Given but empty (`--tag "$UNSET"`) is a mistake, not "the default": that would name localhost images.
    for what, value in (("registry", registry), ("tag", tag)):
        if value is not None and not value.strip():
            raise ValueError(f"image {what}: expected a value, or none at all for the default, found {value!r}")
    # An error names the variable a value came from: no flag of the command gave it.
    registry_from = "image registry" if registry or not os.environ.get(REGISTRY_ENV) else f"${REGISTRY_ENV}"
    tag_from = "image tag" if tag or not os.environ.get(TAG_ENV) else f"${TAG_ENV}"
    registry = (registry or os.environ.get(REGISTRY_ENV) or DEFAULT_REGISTRY).rstrip("/")
    tag = tag or os.environ.get(TAG_ENV) or default_tag()
    if not _valid_registry(registry):
        raise ValueError(f"{registry_from}: expected a host[:port][/path] such as us-central1-docker.pkg.dev/PROJECT/"
                         f"REPO, the path lowercase letters and digits joined by '.', '_' or '-' (Docker's image "
                         f"names), found {registry!r}")
    if not _TAG.fullmatch(tag):
        raise ValueError(f"{tag_from}: expected 1-128 of [A-Za-z0-9_.-] not starting with '.' or '-', found {tag!r}")
    return f"{registry}/mnistkit-{kind}:{tag}"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {os.path.basename(sys.argv[0])} {{{'|'.join(KINDS)}}}")
    try:
        print(image_uri(sys.argv[1]))
    except ValueError as e:
        sys.exit(f"{os.path.basename(sys.argv[0])}: error: {e}")
