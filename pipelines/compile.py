"""`python pipelines/compile.py`: write the compiled mnist-training pipeline YAML, offline, in seconds.

The flags choose what KFP cannot take at run time: the training hardware and
the image registry and tag. Everything else is a pipeline parameter.
"""

from __future__ import annotations

import argparse
import os
import sys

from components import images
from mnistkit import files, recipes
from pipelines import hardware

# The checkout's root: `make venv` installs this package editable, so the file stays where it was written.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUTPUT = os.path.join(REPO, "mnist_pipeline.yaml")
OUTPUT_SUFFIXES = (".yaml", ".yml", ".json")


# The table lists TPU v6e so that its refusal can say why (pipelines/vertex_machines.py); the help offers what
# compiles today. Asking the client here would cost --help 0.7 s of imports.
_TPU_MACHINES_NOW = [m for m, spec in hardware.TPU_MACHINES.items() if "TPU_V6E" not in spec.accelerators]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="compile.py", description=__doc__.splitlines()[0])
    p.add_argument("--output", default=DEFAULT_OUTPUT, help="Where the YAML goes (default: %(default)s).")
    p.add_argument("--hardware", default="cpu", help=f"Training hardware: {', '.join(hardware.KINDS)}.")
    p.add_argument("--machine_type", help="Machine type of the training step, one pipelines/vertex_machines.py "
                   "lists (cpu, multiworker: e.g. n1-standard-8; gpu: n1-* with a GPU, or g2/a2/a3/a4-* which come "
                   f"with theirs; tpu: one of {', '.join(_TPU_MACHINES_NOW)}; ct6e-* once the client has "
                   "TPU_V6E).")
    p.add_argument("--accelerator_type", help=f"GPU ({', '.join(hardware.GPU_TYPES)}) or TPU type "
                   "(TPU_V2, TPU_V3, TPU_V5_LITEPOD); default: the machine's own (NVIDIA_TESLA_T4 on N1, "
                   "NVIDIA_L4 without --machine_type).")
    p.add_argument("--accelerator_count", type=int, help="GPUs per machine, or TPU chips per host.")
    p.add_argument("--replica_count", type=int, help="Machines of a multi-worker job (a TPU job is one replica).")
    p.add_argument("--tpu_topology", help="TPU v5e slice, e.g. 4x4 (4 hosts of ct5lp-hightpu-4t); "
                   "default: one host's.")
    p.add_argument("--spot", action="store_true", help="Train on Spot VMs; the job restarts when a VM is "
                   "reclaimed and resumes from its checkpoints.")
    p.add_argument("--tensorboard", help="Vertex AI TensorBoard the training job uploads its logs to: "
                   "projects/P/locations/R/tensorboards/ID.")
    p.add_argument("--registry", help=f"Image registry (default ${images.REGISTRY_ENV} or {images.DEFAULT_REGISTRY}).")
    p.add_argument("--tag", help=f"Image tag (default ${images.TAG_ENV} or the mnistkit version).")
    return p


def compile_pipeline(output: str, hw: hardware.Hardware, registry: str | None = None, tag: str | None = None) -> str:
    """Compiles the pipeline for `hw` to `output`, atomically; returns the path."""
    from kfp import compiler

    from pipelines import pipeline

    for kind in ("cpu", hw.image_kind):
        images.image_uri(kind, registry, tag)  # Refuses a bad registry or tag before compiling.
    directory = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(directory):
        found = f"a file {directory}" if os.path.exists(directory) else f"no {directory}"
        raise ValueError(f"--output {output}: expected a path in an existing directory, found {found}")
    if os.path.isdir(output):
        raise ValueError(f"--output {output}: expected a file to write, found a directory")
    if not output.endswith(OUTPUT_SUFFIXES):
        raise ValueError(f"--output {output}: expected a file name ending in {', '.join(OUTPUT_SUFFIXES)} (what KFP "
                         f"writes), found {os.path.splitext(output)[1] or 'no suffix'}")
    try:
        with files.atomic_path(output) as scratch:
            compiler.Compiler().compile(pipeline.build(hw, registry, tag), scratch)
    except OSError as e:
        raise ValueError(f"--output {output}: cannot write it ({e.strerror or e})") from e
    return output


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        hw = hardware.resolve(args.hardware, args.machine_type, args.accelerator_type, args.accelerator_count,
                              args.replica_count, args.tpu_topology, args.spot, args.tensorboard)
        path = compile_pipeline(args.output, hw, args.registry, args.tag)
    except ValueError as e:
        print(f"compile.py: error: {e}", file=sys.stderr)
        return 1
    where = f"{hw.kind}" + (f", {hw.machine_type}" if hw.machine_type else "") + \
        (f", {hw.accelerator_count} x {hw.accelerator_type}" if hw.accelerator_type else "") + \
        (f", {hw.replica_count} replicas" if hw.replica_count > 1 else "") + \
        (f", topology {hw.tpu_topology} ({hw.tpu_hosts} host(s))" if hw.tpu_topology else "") + \
        (", Spot VMs" if hw.spot else "") + (f", TensorBoard {hw.tensorboard}" if hw.tensorboard else "")
    print(f"wrote {path} (training on {where}; images {images.image_uri(hw.image_kind, args.registry, args.tag)})")
    if args.registry and not args.tag and not os.environ.get(images.TAG_ENV):
        # Vertex AI's cache key holds the image's name, not its contents: a rebuilt image pushed under the same
        # tag gives the old key, and a rerun would be served the old code's results.
        print(f"note: the images are tagged with the package version ({images.default_tag()}), which a rebuild of "
              "changed code pushes again: Vertex AI's cache would serve the old code's results; give --tag (a "
              "commit, as cloudbuild.yaml does) or submit with --caching off", file=sys.stderr)
    unfit = [f"{name}'s {r['batch_size']}" for name, r in recipes.RECIPES.items() if r["batch_size"] % hw.replicas]
    if unfit:  # Submitting refuses such a batch; said here, where the hardware is chosen.
        print(f"note: training runs as at least {hw.replicas} replicas, and the global batch must be a multiple "
              f"of that: not the recipe {' or '.join(unfit)}; submit with --param batch_size=N", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
