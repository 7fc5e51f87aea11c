"""The training hardware a pipeline is compiled for, checked against what Vertex AI accepts before compiling.

KFP cannot take the machine of a step as a runtime parameter, so the choice is
made at compile time: `resolve()` turns the flags of compile.py into a
`Hardware`, filling defaults and refusing what `vertex_machines` (the one
table of machines and accelerators Vertex AI custom training accepts) does not
list, or what the installed aiplatform client cannot name, with one line that
names the flag, what it got and what the machine takes.
"""

from __future__ import annotations

import dataclasses
import math
import re

from pipelines import vertex_machines as table

KINDS = ("cpu", "gpu", "multiworker", "tpu")
GPU_TYPES = tuple(table.gpu_types())
TPU_MACHINES = table.TPU_MACHINES
DEFAULT_GPU = "NVIDIA_L4"
DEFAULT_N1_GPU = "NVIDIA_TESLA_T4"
DEFAULT_TPU_MACHINE = "ct5lp-hightpu-4t"
DEFAULT_MULTIWORKER_MACHINE = "n1-standard-8"
# GCPC's own default machine for a custom job: what --spot/--tensorboard on CPU train on unless told otherwise.
DEFAULT_CPU_MACHINE = "n1-standard-4"
# Matched whole (re.fullmatch): `$` would also let a value through with a newline at its end.
_MACHINE = re.compile(r"[a-z][a-z0-9-]*[a-z0-9]")
# A TensorBoard's resource name: a project ID or number, a region, a numeric ID.
_TENSORBOARD = re.compile(r"projects/([a-z][a-z0-9-]{4,28}[a-z0-9]|[0-9]+)/locations/(?P<region>[a-z]+-[a-z]+[0-9]+)"
                          r"/tensorboards/[0-9]+")
# A bound of this project's, not a documented Vertex AI limit: the compiled YAML stores numbers as doubles
# (exact only up to 2**53) and the request's replica_count is an int64, so a typo of a few digits too many
# would compile and fail in GCPC's launcher only at run time; MNIST has no use for more machines.
MAX_REPLICAS = 1000


class HardwareError(ValueError):
    """An unknown or inconsistent hardware choice; the message lists what is accepted."""


@dataclasses.dataclass(frozen=True)
class Hardware:
    """Where and how the training step runs. The other steps always run on the default CPU machine.

    Attributes:
      kind: one of KINDS.
      machine_type: the custom job's machine; empty trains as a plain pipeline task.
      accelerator_type: an aiplatform_v1.AcceleratorType name, or empty.
      accelerator_count: accelerators per machine (TPU: chips per host).
      replica_count: machines of the job: a chief plus workers. A TPU job is one replica.
      tpu_topology: the TPU slice (always set for v5e); hosts of the slice: `tpu_hosts`.
      spot: train on Spot VMs (scheduling strategy SPOT), restarting the job when a VM is reclaimed.
      tensorboard: the Vertex AI TensorBoard instance the custom job uploads its logs to.
    """

    kind: str = "cpu"
    machine_type: str = ""
    accelerator_type: str = ""
    accelerator_count: int = 0
    replica_count: int = 1
    tpu_topology: str = ""
    spot: bool = False
    tensorboard: str = ""

    @property
    def image_kind(self) -> str:
        """Which image (components.images) the training step runs in."""
        if self.kind == "tpu":
            return "tpu"
        return "gpu" if self.accelerator_type else "cpu"

    @property
    def custom_job(self) -> bool:
        """Whether training runs as a Vertex AI custom job: task settings cannot name a
        machine type, several replicas, a TPU, Spot VMs or a TensorBoard."""
        return (bool(self.machine_type) or self.replica_count > 1 or self.kind == "tpu" or self.spot
                or bool(self.tensorboard))

    @property
    def boot_disk_type(self) -> str:
        """The custom job's boot disk type: pd-ssd, or Hyperdisk where the machine boots from nothing else."""
        return table.boot_disk_type(self.machine_type)

    @property
    def replicas(self) -> int:
        """The fewest replicas training can run as here, of which the global batch must be a multiple."""
        return replicas_of(self.replica_count, self.accelerator_count, self.tpu_topology)

    @property
    def tpu_hosts(self) -> int:
        """The TPU VMs of the slice (1 unless a multi-host topology); 0 when not a TPU."""
        if self.kind != "tpu":
            return 0
        return table.TPU_MACHINES[self.machine_type].topologies.get(self.tpu_topology, 1)


def replicas_of(machines: int, accelerators: int, tpu_topology: str = "") -> int:
    """The fewest replicas of `machines` with `accelerators` each (GPUs, or a TPU host's chips).

    One per GPU (MirroredStrategy and MultiWorkerMirroredStrategy take every GPU of every machine); a TPU slice
    has at least one per chip (its topology's product; a v2 or v3 chip is two).
    """
    if tpu_topology:
        return math.prod(int(n) for n in tpu_topology.split("x"))
    return machines * max(accelerators, 1)


def replicas_in(template: dict) -> int:
    """The fewest replicas a compiled template's training step runs as: its custom job's worker pools, or the
    GPUs of its task (see replicas_of)."""
    container = template.get("deploymentSpec", {}).get("executors", {}).get("exec-train-model", {}).get(
        "container", {})
    pools = [p for spec in _values_of(template, "worker_pool_specs") if isinstance(spec, dict)
             for p in spec.get("defaultValue") or []]
    if pools:
        return sum(replicas_of(int(p.get("replica_count", 1)), int(p["machine_spec"].get("accelerator_count", 0)),
                               p["machine_spec"].get("tpu_topology", "")) for p in pools)
    return replicas_of(1, int(container.get("resources", {}).get("accelerator", {}).get("count", 0)))


def _values_of(node, key: str):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                yield v
            yield from _values_of(v, key)
    elif isinstance(node, list):
        for v in node:
            yield from _values_of(v, key)


def _refuse(flag: str, expected: str, found) -> None:
    raise HardwareError(f"--{flag}: expected {expected}, found {found!r}")


def _listing(names, limit: int = 8) -> str:
    names = list(names)
    return ", ".join(names[:limit]) + (f" (and {len(names) - limit} more)" if len(names) > limit else "")


def _check_client_knows(accelerator: str, given: str | None, machine_type: str) -> None:
    """Refuses an accelerator the installed client's AcceleratorType lacks: GCPC's launcher would fail mid-run.

    The flag named is --accelerator_type when the user gave it, else --machine_type (whose default it is).
    """
    if accelerator in table.client_accelerators():
        return
    client = f"google.cloud.aiplatform_v1.AcceleratorType of the installed google-cloud-aiplatform " \
        f"{table.client_version()}"
    if given:
        _refuse("accelerator_type", f"an accelerator {client} has (it lacks {accelerator})", given)
    _refuse("machine_type", f"a machine whose accelerator {client} has ({machine_type} needs {accelerator}, "
            "which it lacks)", machine_type)


def _check_listed(machine_type: str) -> None:
    """Refuses a machine type the table does not list, saying whether its whole family is missing."""
    listed = set(table.CPU_MACHINES) | set(table.FIXED_GPU_MACHINES) | set(table.TPU_MACHINES)
    if machine_type in listed:
        return
    fam = table.family(machine_type)
    same = sorted((m for m in listed if table.family(m) == fam), key=lambda m: (m.rsplit("-", 1)[0], table.size(m)))
    if not same:
        _refuse("machine_type", f"a machine of a family in the table (pipelines/vertex_machines.py: "
                f"{', '.join(table.families())}); family {fam} is not in it", machine_type)
    _refuse("machine_type", f"a machine type of family {fam} the table lists ({_listing(same)})", machine_type)


def _gpus_on(machine_type: str, accelerator_type: str | None, accelerator_count: int | None,
             required: bool) -> tuple[str, int]:
    """The (accelerator, count) a GPU choice on `machine_type` resolves to; ('', 0) for none."""
    fixed = table.FIXED_GPU_MACHINES.get(machine_type)
    if fixed:
        accelerator_type = accelerator_type or fixed.accelerator
        if accelerator_type != fixed.accelerator:
            _refuse("accelerator_type", f"{fixed.accelerator}, the GPU that comes with {machine_type}",
                    accelerator_type)
        accelerator_count = accelerator_count or fixed.count
        if accelerator_count != fixed.count:
            _refuse("accelerator_count", f"{fixed.count}, the {fixed.accelerator} count of {machine_type}",
                    accelerator_count)
        return accelerator_type, accelerator_count
    if not (required or accelerator_type or accelerator_count):
        return "", 0
    if table.family(machine_type) != "n1":
        _refuse("machine_type", "a machine type that takes GPUs (n1-*, or g2-*, a2-*, a3-*, a4-* which come "
                "with theirs)", machine_type)
    accelerator_type = accelerator_type or DEFAULT_N1_GPU
    if accelerator_type not in table.N1_GPUS:
        where = table.machines_for(accelerator_type, (table.gpu_counts(accelerator_type) or [1])[0])
        hint = f"; {accelerator_type} comes with {_listing(where, 3)}" if where else ""
        _refuse("accelerator_type", f"a GPU N1 machines take, one of {', '.join(table.N1_GPUS)}{hint}",
                accelerator_type)
    counts = table.N1_GPUS[accelerator_type]
    accelerator_count = accelerator_count or 1
    if accelerator_count not in counts:
        _refuse("accelerator_count", f"one of {', '.join(map(str, counts))} x {accelerator_type} on an N1 machine",
                accelerator_count)
    if table.size(machine_type) > counts[accelerator_count]:
        _refuse("machine_type", f"an N1 machine of at most {counts[accelerator_count]} vCPUs for "
                f"{accelerator_count} x {accelerator_type}", machine_type)
    return accelerator_type, accelerator_count


def _check_gpu_without_machine(accelerator_type: str, accelerator_count: int) -> None:
    """A GPU on a plain pipeline task: Vertex picks the machine, so the pair must fit some machine of the table."""
    if accelerator_type not in GPU_TYPES:
        _refuse("accelerator_type", f"one of {', '.join(GPU_TYPES)}", accelerator_type)
    counts = table.gpu_counts(accelerator_type)
    if accelerator_count not in counts:
        _refuse("accelerator_count", f"one of {', '.join(map(str, counts))} for {accelerator_type}",
                accelerator_count)
    machines = table.machines_for(accelerator_type, accelerator_count)
    if not any(table.fits_pipeline_task(m) for m in machines):
        _refuse("machine_type", f"a machine type for {accelerator_count} x {accelerator_type} (e.g. {machines[0]}): "
                f"without one, Vertex AI Pipelines picks a machine of at most {table.PIPELINE_TASK_MAX_VCPUS} vCPUs "
                f"and {table.PIPELINE_TASK_MAX_MEMORY_GB} GB, and none of those carries them", "none")


def resolve(kind: str = "cpu", machine_type: str | None = None, accelerator_type: str | None = None,
            accelerator_count: int | None = None, replica_count: int | None = None,
            tpu_topology: str | None = None, spot: bool = False, tensorboard: str | None = None) -> Hardware:
    """Checks a hardware choice against the table of what Vertex AI accepts and fills in its defaults.

    Args:
      kind: one of KINDS.
      machine_type: a machine type of `vertex_machines` (CPU, N1 with GPUs,
        G2/A2/A3/A4 with their own GPUs, or a TPU machine for kind 'tpu').
      accelerator_type: a GPU or TPU aiplatform_v1.AcceleratorType name.
      accelerator_count: GPUs per machine, or TPU chips per host.
      replica_count: machines of a multi-worker job (at least 2); 1 for TPU.
      tpu_topology: the TPU v5e slice, e.g. '4x4' (default: one host's).
      spot: train on Spot VMs.
      tensorboard: projects/P/locations/R/tensorboards/ID.

    Raises:
      HardwareError: naming the flag, what it got and what the machine takes.
    """
    if kind not in KINDS:
        _refuse("hardware", f"one of {', '.join(KINDS)}", kind)
    if machine_type and not _MACHINE.fullmatch(machine_type):
        _refuse("machine_type", "a machine type such as n1-standard-8 or g2-standard-8", machine_type)
    if tensorboard:
        board = _TENSORBOARD.fullmatch(tensorboard)
        if not board:
            _refuse("tensorboard", "a Vertex AI TensorBoard name projects/PROJECT/locations/REGION/tensorboards/ID",
                    tensorboard)
        try:
            table.check_region(board["region"], "--tensorboard")
        except ValueError as e:
            raise HardwareError(str(e)) from None
    if accelerator_count is not None and accelerator_count < 1:
        _refuse("accelerator_count", "at least 1 (leave the flag out for no accelerator, or the machine's own "
                "count)", accelerator_count)
    if replica_count is not None and replica_count > MAX_REPLICAS:
        _refuse("replica_count", f"at most {MAX_REPLICAS} (pipelines/hardware.py MAX_REPLICAS)", replica_count)
    if tpu_topology and kind != "tpu":
        _refuse("tpu_topology", "no topology unless --hardware=tpu", tpu_topology)
    if replica_count is not None and replica_count != 1 and kind != "multiworker":
        if kind == "tpu":
            _refuse("replica_count", "1 for --hardware=tpu (a TPU job is one replica; --tpu_topology sets the "
                    "hosts of its slice)", replica_count)
        _refuse("replica_count", f"1 for --hardware={kind} (use --hardware=multiworker for several machines)",
                replica_count)
    if machine_type:
        _check_listed(machine_type)
        if (kind == "tpu") != (machine_type in table.TPU_MACHINES):
            expected = ("a TPU machine type, one of " + ", ".join(table.TPU_MACHINES)) if kind == "tpu" else \
                f"a CPU or GPU machine type for --hardware={kind} (TPU machines take --hardware=tpu)"
            _refuse("machine_type", expected, machine_type)
    extras = dict(spot=bool(spot), tensorboard=tensorboard or "")
    needs_job = bool(spot or tensorboard)

    if kind == "cpu":
        if accelerator_type or accelerator_count:
            _refuse("accelerator_type" if accelerator_type else "accelerator_count",
                    "no accelerator for --hardware=cpu (use --hardware=gpu or tpu)", accelerator_type or accelerator_count)
        if machine_type in table.FIXED_GPU_MACHINES:
            fixed = table.FIXED_GPU_MACHINES[machine_type]
            _refuse("machine_type", f"a CPU machine for --hardware=cpu ({machine_type} comes with {fixed.count} x "
                    f"{fixed.accelerator}: use --hardware=gpu)", machine_type)
        return Hardware("cpu", machine_type or (DEFAULT_CPU_MACHINE if needs_job else ""), **extras)

    if kind in ("gpu", "multiworker"):
        if machine_type:
            accelerator_type, accelerator_count = _gpus_on(machine_type, accelerator_type, accelerator_count,
                                                           required=kind == "gpu")
        elif kind == "gpu" or accelerator_type or accelerator_count:
            accelerator_type = accelerator_type or DEFAULT_GPU
            accelerator_count = accelerator_count or 1
            _check_gpu_without_machine(accelerator_type, accelerator_count)
            if kind == "multiworker" or needs_job:
                why = "for --hardware=multiworker" if kind == "multiworker" else "with --spot or --tensorboard"
                fits = table.machines_for(accelerator_type, accelerator_count)
                _refuse("machine_type", f"a machine type that takes {accelerator_count} x {accelerator_type} {why} "
                        f"(e.g. {fits[0]})", "none")
        if accelerator_type:
            _check_client_knows(accelerator_type, accelerator_type, machine_type or "")
        if kind == "gpu":
            return Hardware("gpu", machine_type or "", accelerator_type, accelerator_count, **extras)
        replica_count = 2 if replica_count is None else replica_count
        if replica_count < 2:
            _refuse("replica_count", "at least 2 for --hardware=multiworker (one chief, the rest workers)",
                    replica_count)
        return Hardware("multiworker", machine_type or DEFAULT_MULTIWORKER_MACHINE, accelerator_type or "",
                        accelerator_count or 0, replica_count, **extras)

    machine_type = machine_type or DEFAULT_TPU_MACHINE
    spec = table.TPU_MACHINES[machine_type]
    if accelerator_type and accelerator_type not in spec.accelerators:
        _refuse("accelerator_type", f"one of {', '.join(spec.accelerators)} on {machine_type}", accelerator_type)
    given = accelerator_type
    accelerator_type = accelerator_type or spec.accelerators[-1]
    _check_client_knows(accelerator_type, given, machine_type)
    accelerator_count = accelerator_count or spec.chips
    if accelerator_count != spec.chips:
        _refuse("accelerator_count", f"{spec.chips}, the chips of one {machine_type} host", accelerator_count)
    if tpu_topology and not spec.topologies:
        _refuse("tpu_topology", f"no topology with {machine_type} (v5e machine types take one)", tpu_topology)
    # The pinned client: the topology 'is required for the TPU v5 versions'; default to one host's slice.
    tpu_topology = tpu_topology or spec.default_topology
    if spec.topologies and tpu_topology not in spec.topologies:
        shapes = ", ".join(f"{t} ({hosts} host{'s' * (hosts > 1)})" for t, hosts in spec.topologies.items())
        _refuse("tpu_topology", f"one of {shapes} on {machine_type}", tpu_topology)
    hosts = spec.topologies.get(tpu_topology, 1)
    if spot and hosts > 1:
        # Vertex AI's Spot VM page: "Using Spot VMs with TPU Pods isn't supported."
        # (cloud.google.com/vertex-ai/docs/training/use-spot-vms, Limitations)
        _refuse("spot", f"no Spot VMs on a multi-host TPU slice ({tpu_topology} is {hosts} hosts; Vertex AI "
                "has no Spot TPU Pods): a one-host topology, or no --spot", "--spot")
    return Hardware("tpu", machine_type, accelerator_type, accelerator_count, 1, tpu_topology, **extras)
