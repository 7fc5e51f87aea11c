"""Builds the images with the URIs that pipelines/compile.py puts in the pipeline (components/images.py).

Usage, from anywhere in the checkout:
  python images/build.py                    # localhost/mnistkit-cpu:<version>, what `run_local.py --runner docker` runs
  python images/build.py --kind cpu --kind gpu --kind tpu --registry REGION-docker.pkg.dev/PROJECT/REPO --tag TAG

The base image defaults to the Dockerfile's pinned BASE_IMAGE; $MNISTKIT_BASE_IMAGE (set by .ci/docker.sh
where no registry is reachable) or --base_image overrides it. $MNISTKIT_PIP_CERT or --pip_cert passes a CA
bundle path inside the base for pip behind a TLS-inspecting proxy. Prints each URI and its size.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

from components import images

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def dockerfile(kind: str) -> str:
    """The Dockerfile of `kind`, relative to the repository root (the build context)."""
    return f"images/{kind}/Dockerfile"


def build_command(kind: str, uri: str, base_image: str = "", pip_cert: str = "") -> list[str]:
    """The `docker build` command line for one image, run from the repository root."""
    command = ["docker", "build", "-f", dockerfile(kind), "-t", uri]
    if base_image:
        command += ["--build-arg", f"BASE_IMAGE={base_image}"]
    if pip_cert:
        command += ["--build-arg", f"PIP_CERT={pip_cert}"]
    return command + ["."]


def image_size(uri: str) -> int:
    """The image's size in bytes, as the engine reports it."""
    out = subprocess.run(["docker", "image", "inspect", "--format", "{{.Size}}", uri],
                         check=True, capture_output=True, text=True).stdout
    return int(out.strip())


def build(kind: str, registry: str | None = None, tag: str | None = None, base_image: str = "",
          pip_cert: str = "", quiet: bool = False) -> str:
    """Builds the `kind` image and returns its URI.

    Raises:
      ValueError: an unknown kind or a malformed registry or tag (from components.images).
      subprocess.CalledProcessError: docker build failed (its output went to stderr).
    """
    uri = images.image_uri(kind, registry, tag)
    command = build_command(kind, uri, base_image, pip_cert)
    print("+", " ".join(command), file=sys.stderr, flush=True)
    subprocess.run(command, cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL if quiet else sys.stderr)
    return uri


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", action="append", choices=images.KINDS,
                        help="An image to build; repeat for several. Default: cpu.")
    parser.add_argument("--registry", default=None, help=f"Default ${images.REGISTRY_ENV} or localhost.")
    parser.add_argument("--tag", default=None, help=f"Default ${images.TAG_ENV} or the mnistkit version.")
    parser.add_argument("--base_image", default=os.environ.get("MNISTKIT_BASE_IMAGE", ""),
                        help="Overrides the Dockerfile's BASE_IMAGE (default $MNISTKIT_BASE_IMAGE).")
    parser.add_argument("--pip_cert", default=os.environ.get("MNISTKIT_PIP_CERT", ""),
                        help="CA bundle path inside the base image for pip (default $MNISTKIT_PIP_CERT).")
    parser.add_argument("--quiet", action="store_true", help="Hide docker build's output.")
    args = parser.parse_args(argv)
    prog = os.path.basename(sys.argv[0])
    if shutil.which("docker") is None:
        print(f"{prog}: error: docker: expected the docker command on PATH, found none (install docker, and see "
              "images/README.md for starting an engine)", file=sys.stderr)
        return 1
    for kind in args.kind or ["cpu"]:
        try:
            uri = build(kind, args.registry, args.tag, args.base_image, args.pip_cert, args.quiet)
        except ValueError as e:
            print(f"{prog}: error: {e}", file=sys.stderr)
            return 1
        except subprocess.CalledProcessError as e:
            print(f"{prog}: error: docker build of the {kind} image failed (exit {e.returncode})", file=sys.stderr)
            return 1
        print(f"{uri}\t{image_size(uri) / 1e9:.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
