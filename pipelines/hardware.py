"""The training hardware a pipeline is compiled for, checked before anything is compiled.

KFP cannot take the machine of a step as a runtime parameter, so the choice is
made at compile time: `resolve()` turns the flags of compile.py into a
`Hardware`, filling defaults and refusing unknown or inconsistent choices with
a message that lists what is accepted.
"""

from __future__ import annotations

import dataclasses
import re

KINDS = ("cpu", "gpu", "multiworker", "tpu")

# Vertex AI's accelerator names for GPUs.
GPU_TYPES = ("NVIDIA_L4", "NVIDIA_TESLA_T4", "NVIDIA_TESLA_V100", "NVIDIA_TESLA_P4", "NVIDIA_TESLA_P100",
             "NVIDIA_TESLA_A100", "NVIDIA_A100_80GB", "NVIDIA_H100_80GB", "NVIDIA_H100_MEGA_80GB",
             "NVIDIA_H200_141GB")
GPU_COUNTS = (1, 2, 4, 8, 16)

# TPU machine types: the accelerator types each takes and its chips per host.
TPU_MACHINES = {
    "cloud-tpu": (("TPU_V2", "TPU_V3"), 8),
    "ct5lp-hightpu-1t": (("TPU_V5_LITEPOD",), 1),
    "ct5lp-hightpu-4t": (("TPU_V5_LITEPOD",), 4),
    "ct5lp-hightpu-8t": (("TPU_V5_LITEPOD",), 8),
    "ct6e-standard-1t": (("TPU_V6E",), 1),
    "ct6e-standard-4t": (("TPU_V6E",), 4),
    "ct6e-standard-8t": (("TPU_V6E",), 8),
}
DEFAULT_TPU_MACHINE = "ct5lp-hightpu-4t"
DEFAULT_MULTIWORKER_MACHINE = "n1-standard-8"
_TOPOLOGY = re.compile(r"^[1-9][0-9]*x[1-9][0-9]*(x[1-9][0-9]*)?$")
_MACHINE = re.compile(r"^[a-z][a-z0-9-]*[a-z0-9]$")


class HardwareError(ValueError):
    """An unknown or inconsistent hardware choice; the message lists what is accepted."""


@dataclasses.dataclass(frozen=True)
class Hardware:
    """Where the training step runs. The other steps always run on the default CPU machine."""

    kind: str = "cpu"
    machine_type: str = ""
    accelerator_type: str = ""
    accelerator_count: int = 0
    replica_count: int = 1
    tpu_topology: str = ""

    @property
    def image_kind(self) -> str:
        """Which image (components.images) the training step runs in."""
        if self.kind == "tpu":
            return "tpu"
        return "gpu" if self.accelerator_type else "cpu"

    @property
    def custom_job(self) -> bool:
        """Whether training runs as a Vertex AI custom job: task settings cannot name a
        machine type, several replicas or a TPU."""
        return bool(self.machine_type) or self.replica_count > 1 or self.kind == "tpu"


def _refuse(flag: str, expected: str, found) -> None:
    raise HardwareError(f"--{flag}: expected {expected}, found {found!r}")


def resolve(kind: str = "cpu", machine_type: str | None = None, accelerator_type: str | None = None,
            accelerator_count: int | None = None, replica_count: int | None = None,
            tpu_topology: str | None = None) -> Hardware:
    """Checks a hardware choice and fills in its defaults.

    Args:
      kind: one of KINDS.
      machine_type: a Compute Engine machine type (gpu, multiworker, cpu), or a
        key of TPU_MACHINES (tpu).
      accelerator_type: a GPU_TYPES name (gpu, multiworker) or the TPU type.
      accelerator_count: GPUs per replica (one of GPU_COUNTS) or TPU chips per host.
      replica_count: machines in a multi-worker job (at least 2).
      tpu_topology: a multi-host TPU slice such as '4x4' (v5e, v6e only).

    Raises:
      HardwareError: naming the flag, what it accepts and what it got.
    """
    if kind not in KINDS:
        _refuse("hardware", f"one of {', '.join(KINDS)}", kind)
    if machine_type and kind != "tpu" and not _MACHINE.match(machine_type):
        _refuse("machine_type", "a machine type such as n1-standard-8 or g2-standard-8", machine_type)
    if tpu_topology and kind != "tpu":
        _refuse("tpu_topology", "no topology unless --hardware=tpu", tpu_topology)
    if replica_count is not None and replica_count != 1 and kind not in ("multiworker", "tpu"):
        _refuse("replica_count", f"1 for --hardware={kind} (use --hardware=multiworker for several machines)",
                replica_count)

    if kind == "cpu":
        if accelerator_type or accelerator_count:
            _refuse("accelerator_type", "no accelerator for --hardware=cpu (use --hardware=gpu or tpu)",
                    accelerator_type or accelerator_count)
        return Hardware("cpu", machine_type=machine_type or "")

    if kind in ("gpu", "multiworker"):
        if kind == "gpu" or accelerator_type or accelerator_count:
            accelerator_type = accelerator_type or "NVIDIA_L4"
            if accelerator_type not in GPU_TYPES:
                _refuse("accelerator_type", f"one of {', '.join(GPU_TYPES)}", accelerator_type)
            accelerator_count = accelerator_count or 1
            if accelerator_count not in GPU_COUNTS:
                _refuse("accelerator_count", f"one of {', '.join(map(str, GPU_COUNTS))}", accelerator_count)
        if kind == "gpu":
            return Hardware("gpu", machine_type or "", accelerator_type, accelerator_count)
        replica_count = 2 if replica_count is None else replica_count
        if replica_count < 2:
            _refuse("replica_count", "at least 2 for --hardware=multiworker (one chief, the rest workers)",
                    replica_count)
        if accelerator_type and not machine_type:
            _refuse("machine_type", f"a machine type that takes {accelerator_count} x {accelerator_type} "
                    "(e.g. g2-standard-8 for NVIDIA_L4, n1-standard-8 for NVIDIA_TESLA_T4)", "none")
        return Hardware("multiworker", machine_type or DEFAULT_MULTIWORKER_MACHINE, accelerator_type or "",
                        accelerator_count or 0, replica_count)

    machine_type = machine_type or DEFAULT_TPU_MACHINE
    if machine_type not in TPU_MACHINES:
        _refuse("machine_type", f"a TPU machine type, one of {', '.join(TPU_MACHINES)}", machine_type)
    types, chips = TPU_MACHINES[machine_type]
    accelerator_type = accelerator_type or types[-1]
    if accelerator_type not in types:
        _refuse("accelerator_type", f"one of {', '.join(types)} on {machine_type}", accelerator_type)
    accelerator_count = accelerator_count or chips
    if accelerator_count != chips:
        _refuse("accelerator_count", f"{chips}, the chips of one {machine_type} host", accelerator_count)
    hosts = 1
    if tpu_topology:
        if machine_type == "cloud-tpu":
            _refuse("tpu_topology", "no topology with cloud-tpu (v5e or v6e machine types take one)", tpu_topology)
        if not _TOPOLOGY.match(tpu_topology):
            _refuse("tpu_topology", "a slice shape such as 2x4 or 4x4", tpu_topology)
        slice_chips = 1
        for n in tpu_topology.split("x"):
            slice_chips *= int(n)
        if slice_chips % chips:
            _refuse("tpu_topology", f"a slice of a multiple of the {chips} chips of one {machine_type} host",
                    tpu_topology)
        hosts = slice_chips // chips
    replica_count = hosts if replica_count is None else replica_count
    if replica_count != hosts:
        _refuse("replica_count", f"{hosts}, the hosts of a {tpu_topology or 'single-host'} slice of "
                f"{machine_type} (or leave it out)", replica_count)
    return Hardware("tpu", machine_type, accelerator_type, accelerator_count, replica_count, tpu_topology or "")
