"""The one table of the machines and accelerators Vertex AI custom training accepts, with where each fact comes from.

`hardware.resolve()` checks every compile-time choice against this table and
refuses what it does not list; it never guesses. Each entry names its source
(a key of SOURCES). Nothing here was run on Vertex AI: the facts were read
from Google's documentation pages and from the pinned client libraries.
A fact that changes (a new machine, a new topology) is one line here.
"""

from __future__ import annotations

import dataclasses
import re

SOURCES = {
    "training-compute": "https://cloud.google.com/vertex-ai/docs/training/configure-compute "
                        "(machine types, GPUs and TPUs for custom training)",
    "gce-gpus": "https://cloud.google.com/compute/docs/gpus (GPU counts and the vCPUs each count allows on N1; "
                "the GPUs attached to G2, A2, A3 and A4 machine types)",
    "gce-accelerator-machines": "https://cloud.google.com/compute/docs/accelerator-optimized-machines (vCPUs and "
                                "memory of the G2, A2, A3 and A4 machine types)",
    "pipeline-task": "https://cloud.google.com/vertex-ai/docs/pipelines/machine-types (a step without a machine "
                     "type runs on one Vertex AI Pipelines picks, of at most 96 vCPUs and 624 GB)",
    "prediction-compute": "https://cloud.google.com/vertex-ai/docs/predictions/configure-compute (machine types "
                          "for prediction: the E2 and N1 sizes listed there; also N2, N2D, C2, C2D and C3)",
    "client-tpu": "google-cloud-aiplatform 1.165.1, google/cloud/aiplatform/utils/worker_spec_utils.py and "
                  "jobs.py: tpu_topology 'is required for the TPU v5 versions' and goes to the chief only, "
                  "'as TPU jobs only allow 1 replica'",
    "client-enum": "google-cloud-aiplatform 1.165.1, google.cloud.aiplatform_v1.types.AcceleratorType "
                   "(checked at compile time against the installed client)",
    "boot-disk": "google-cloud-aiplatform 1.165.1, google.cloud.aiplatform_v1.types.DiskSpec.boot_disk_type "
                 "(pd-ssd by default, hyperdisk-balanced for A3 Ultra) and "
                 "https://cloud.google.com/compute/docs/accelerator-optimized-machines (A3 Ultra and A4 boot from "
                 "Hyperdisk only); GCPC's custom job writes pd-ssd unless told otherwise",
}


@dataclasses.dataclass(frozen=True)
class FixedGpuMachine:
    """A machine type that comes with its GPUs: the type and count are fixed by the machine."""

    accelerator: str
    count: int
    vcpus: int  # vCPUs and memory (source: gce-accelerator-machines).
    memory_gb: int
    source: str = "gce-gpus"
    boot_disk: str = "pd-ssd"  # The custom job's boot disk type (source: boot-disk).


@dataclasses.dataclass(frozen=True)
class TpuMachine:
    """A TPU machine type: its accelerator types, chips per host, and topologies -> hosts of the slice."""

    accelerators: tuple
    chips: int
    topologies: dict  # Empty: the machine takes no topology (TPU v2/v3 on cloud-tpu).
    source: str = "training-compute"

    @property
    def default_topology(self) -> str:
        """The single-host topology: the slice of exactly one host (empty when no topology is taken)."""
        return next((t for t, hosts in self.topologies.items() if hosts == 1), "")


def _sizes(prefix: str, sizes) -> tuple:
    return tuple(f"{prefix}-{n}" for n in sizes)


# CPU machine types Vertex AI custom training lists (source: training-compute). N1 also takes the GPUs below.
CPU_MACHINES = frozenset(
    _sizes("n1-standard", (4, 8, 16, 32, 64, 96)) + _sizes("n1-highmem", (2, 4, 8, 16, 32, 64, 96))
    + _sizes("n1-highcpu", (16, 32, 64, 96))
    + _sizes("e2-standard", (4, 8, 16, 32)) + _sizes("e2-highmem", (2, 4, 8, 16)) + _sizes("e2-highcpu", (16, 32))
    + _sizes("n2-standard", (4, 8, 16, 32, 48, 64, 80)) + _sizes("n2-highmem", (2, 4, 8, 16, 32, 48, 64, 80))
    + _sizes("n2-highcpu", (16, 32, 48, 64, 80))
    + _sizes("c2-standard", (4, 8, 16, 30, 60)))

# CPU machine types Vertex AI prediction serves a deployed model on (source: prediction-compute): only CPU ones,
# since the deploy step gives the endpoint no accelerator and the serving image is tf2-cpu; no shared-core
# (e2-micro/small/medium) and no n1-standard-1, which prediction does not offer. E2 and N1 are the sizes the page
# lists exactly.
PREDICTION_MACHINES = frozenset(
    _sizes("e2-standard", (2, 4, 8, 16, 32)) + _sizes("e2-highmem", (2, 4, 8, 16))
    + _sizes("e2-highcpu", (2, 4, 8, 16, 32))
    + _sizes("n1-standard", (2, 4, 8, 16, 32)) + _sizes("n1-highmem", (2, 4, 8, 16, 32))
    + _sizes("n1-highcpu", (4, 8, 16, 32)))
# The same page lists the N2, N2D, C2, C2D and C3 series too, but their exact sizes could not be read there:
# those families are accepted by form (any size from 2 vCPUs; C2 in its own sizes), not by a list of sizes.
_PREDICTION_FAMILIES = re.compile(r"(n2|n2d|c2d|c3)-(standard|highmem|highcpu)-([2-9]|[1-9][0-9]+)"
                                  r"|c2-standard-(4|8|16|30|60)")


def serves_prediction(machine_type: str) -> bool:
    """Whether Vertex AI prediction serves a model on CPU machine type `machine_type` (source: prediction-compute)."""
    return machine_type in PREDICTION_MACHINES or bool(_PREDICTION_FAMILIES.fullmatch(machine_type))


# GPUs attached to an N1 machine: count -> the most vCPUs an N1 machine may have with that count (source: gce-gpus).
N1_GPUS = {
    "NVIDIA_TESLA_T4": {1: 48, 2: 48, 4: 96},
    "NVIDIA_TESLA_V100": {1: 12, 2: 24, 4: 48, 8: 96},
    "NVIDIA_TESLA_P4": {1: 24, 2: 48, 4: 96},
    "NVIDIA_TESLA_P100": {1: 16, 2: 32, 4: 96},  # 4 x P100: up to 64 vCPUs in some zones, 96 in others.
}

# Accelerator-optimized machine types: the GPUs come with the machine (source: gce-gpus, training-compute).
FIXED_GPU_MACHINES = {
    **{f"g2-standard-{n}": FixedGpuMachine("NVIDIA_L4", 1, n, 4 * n) for n in (4, 8, 12, 16, 32)},
    "g2-standard-24": FixedGpuMachine("NVIDIA_L4", 2, 24, 96),
    "g2-standard-48": FixedGpuMachine("NVIDIA_L4", 4, 48, 192),
    "g2-standard-96": FixedGpuMachine("NVIDIA_L4", 8, 96, 384),
    **{f"a2-highgpu-{n}g": FixedGpuMachine("NVIDIA_TESLA_A100", n, 12 * n, 85 * n) for n in (1, 2, 4, 8)},
    "a2-megagpu-16g": FixedGpuMachine("NVIDIA_TESLA_A100", 16, 96, 1360),
    **{f"a2-ultragpu-{n}g": FixedGpuMachine("NVIDIA_A100_80GB", n, 12 * n, 170 * n) for n in (1, 2, 4, 8)},
    "a3-highgpu-8g": FixedGpuMachine("NVIDIA_H100_80GB", 8, 208, 1872),
    "a3-megagpu-8g": FixedGpuMachine("NVIDIA_H100_MEGA_80GB", 8, 208, 1872),
    "a3-ultragpu-8g": FixedGpuMachine("NVIDIA_H200_141GB", 8, 224, 2952, boot_disk="hyperdisk-balanced"),
    "a4-highgpu-8g": FixedGpuMachine("NVIDIA_B200", 8, 224, 3968, boot_disk="hyperdisk-balanced"),
}

# TPU machine types (source: training-compute; one replica with the topology on the chief: client-tpu).
_V5E_MULTI_HOST = {"2x2": 1, "2x4": 2, "4x4": 4, "4x8": 8, "8x8": 16, "8x16": 32, "16x16": 64}
TPU_MACHINES = {
    "cloud-tpu": TpuMachine(("TPU_V2", "TPU_V3"), 8, {}),
    "ct5lp-hightpu-1t": TpuMachine(("TPU_V5_LITEPOD",), 1, {"1x1": 1}),
    "ct5lp-hightpu-4t": TpuMachine(("TPU_V5_LITEPOD",), 4, _V5E_MULTI_HOST),
    "ct5lp-hightpu-8t": TpuMachine(("TPU_V5_LITEPOD",), 8, {"2x4": 1}),
    # TPU v6e is on Vertex AI, but TPU_V6E is not in the pinned client's AcceleratorType (client-enum):
    # listed so that the refusal says so instead of 'not in the table'.
    "ct6e-standard-1t": TpuMachine(("TPU_V6E",), 1, {"1x1": 1}),
    "ct6e-standard-4t": TpuMachine(("TPU_V6E",), 4, {"2x2": 1}),
    "ct6e-standard-8t": TpuMachine(("TPU_V6E",), 8, {"2x4": 1}),
}


def family(machine_type: str) -> str:
    """'n1' for n1-standard-8, 'ct5lp' for ct5lp-hightpu-4t, 'cloud' for cloud-tpu."""
    return machine_type.split("-", 1)[0]


def families() -> list:
    """Every machine family the table lists, sorted."""
    names = set(CPU_MACHINES) | set(FIXED_GPU_MACHINES) | set(TPU_MACHINES)
    return sorted({family(m) for m in names})


def gpu_types() -> list:
    """Every GPU accelerator type the table lists, NVIDIA_L4 first (the default), then by name."""
    found = set(N1_GPUS) | {m.accelerator for m in FIXED_GPU_MACHINES.values()}
    return sorted(found, key=lambda a: (a != "NVIDIA_L4", a))


def gpu_counts(accelerator: str) -> list:
    """The GPU counts one machine of the table can carry of `accelerator`."""
    counts = set(N1_GPUS.get(accelerator, {}))
    counts |= {m.count for m in FIXED_GPU_MACHINES.values() if m.accelerator == accelerator}
    return sorted(counts)


def machines_for(accelerator: str, count: int) -> list:
    """The machine types of the table that carry `count` x `accelerator`, smallest first."""
    if accelerator in N1_GPUS and count in N1_GPUS[accelerator]:
        limit = N1_GPUS[accelerator][count]
        return sorted((m for m in CPU_MACHINES if family(m) == "n1" and size(m) <= limit), key=size)
    return sorted((m for m, spec in FIXED_GPU_MACHINES.items() if (spec.accelerator, spec.count) == (accelerator,
                                                                                                     count)),
                  key=size)


# The largest machine Vertex AI Pipelines picks for a step that names no machine type (source: pipeline-task).
PIPELINE_TASK_MAX_VCPUS, PIPELINE_TASK_MAX_MEMORY_GB = 96, 624


def fits_pipeline_task(machine_type: str) -> bool:
    """Whether Vertex AI Pipelines could pick `machine_type` for a step that names none (every N1 machine can)."""
    fixed = FIXED_GPU_MACHINES.get(machine_type)
    return not fixed or (fixed.vcpus <= PIPELINE_TASK_MAX_VCPUS and fixed.memory_gb <= PIPELINE_TASK_MAX_MEMORY_GB)


def boot_disk_type(machine_type: str) -> str:
    """The boot disk type a custom job on `machine_type` asks for (source: boot-disk)."""
    fixed = FIXED_GPU_MACHINES.get(machine_type)
    return fixed.boot_disk if fixed else "pd-ssd"


def size(machine_type: str) -> int:
    """The number a machine type ends with: vCPUs for n1-standard-8, GPUs for a2-highgpu-2g (0 for cloud-tpu)."""
    digits = re.sub(r"\D", "", machine_type.rsplit("-", 1)[-1])
    return int(digits) if digits else 0


def check_region(region: str, what: str) -> None:
    """Refuses a region the installed aiplatform does not know (its own init would refuse it, mid-run)."""
    from google.cloud.aiplatform.constants import base  # About a second to import: only when asked.

    if region not in base.SUPPORTED_REGIONS:
        raise ValueError(f"{what}: expected a region Vertex AI serves (google-cloud-aiplatform's SUPPORTED_REGIONS, "
                         f"e.g. us-central1, europe-west4), found {region!r}")


def client_accelerators() -> set:
    """The accelerator names google.cloud.aiplatform_v1.AcceleratorType of the installed client has."""
    from google.cloud.aiplatform_v1.types import AcceleratorType

    return {member.name for member in AcceleratorType} - {"ACCELERATOR_TYPE_UNSPECIFIED"}


def client_version() -> str:
    """The installed google-cloud-aiplatform version, for messages."""
    from importlib import metadata

    return metadata.version("google-cloud-aiplatform")
