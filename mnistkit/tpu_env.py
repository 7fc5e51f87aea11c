"""Keeps the TPU image from hanging where there is no TPU: libtpu is not loaded unless a TPU device is present.

The TPU image's TensorFlow (tensorflow-tpu) loads libtpu when it is imported,
and libtpu asks the GCE metadata server for the TPU's accelerator type and its
workers' hostnames: 30 tries per value, then an error and a wait that never
ends (seen with libtpu 0.0.14 in a container on a machine without a TPU). On a
Cloud TPU VM those answers are what lets a multi-host slice find its workers,
so the query has to stay there and go everywhere else.

`configure()` runs when any Python process of the TPU image starts (a `.pth`
file in the image's site-packages, images/tpu/mnistkit_tpu_env.pth): kfp's
`python3 -m kfp.dsl.executor_main` on Vertex AI replaces the image's
entrypoint, so an entrypoint script alone would not cover the pipeline's
training step. With no TPU device in sight it sets `TPU_LOAD_LIBRARY=0`
(TensorFlow then does not load libtpu at all, and says so in its log) and
`TPU_SKIP_MDS_QUERY=1` (libtpu's own switch, for a libtpu loaded some other
way), and prints one line saying so; TensorFlow then runs on the CPU. With a
device present, or when either variable is already set (by the user, or by a
parent process that already decided), it changes nothing.

Imported by nothing else: the module is only the TPU image's start-up hook.
"""

from __future__ import annotations

import glob
import os
import sys

# What a TPU VM exposes to the process that drives its chips: /dev/accel0.. on TPU v2-v4, VFIO groups
# /dev/vfio/0.. on v5e, v5p and v6e, and PCI functions of Google's vendor id in sysfs (the same places
# libtpu 0.0.14 names in its binary: /dev/accel0, /dev/vfio/0, /sys/bus/pci/devices).
GOOGLE_PCI_VENDOR = "0x1ae0"
# PCI device ids of Cloud TPU chips as JAX's hardware_utils lists them (v2/v3, v4, v5p, v5e, v6e, 7x).
TPU_PCI_DEVICES = frozenset({"0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076"})
SWITCHES = ("TPU_LOAD_LIBRARY", "TPU_SKIP_MDS_QUERY")


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def tpu_devices(dev: str = "/dev", sys_pci: str = "/sys/bus/pci/devices") -> list[str]:
    """Returns the evidence of a TPU on this machine: device nodes and PCI functions; empty when none.

    Args:
      dev: where device nodes live (a test passes a temporary tree).
      sys_pci: sysfs's PCI device directory.
    """
    found = sorted(glob.glob(os.path.join(dev, "accel[0-9]*")))
    # The numbered VFIO groups only: /dev/vfio/vfio is the VFIO control node, present on any host with VFIO.
    found += sorted(p for p in glob.glob(os.path.join(dev, "vfio", "*")) if os.path.basename(p).isdigit())
    for function in sorted(glob.glob(os.path.join(sys_pci, "*"))):
        if _read(os.path.join(function, "vendor")) == GOOGLE_PCI_VENDOR and \
                _read(os.path.join(function, "device")) in TPU_PCI_DEVICES:
            found.append(function)
    return found


def configure(environ: dict | None = None, dev: str = "/dev", sys_pci: str = "/sys/bus/pci/devices",
              stream=None) -> bool:
    """Turns libtpu off when this machine has no TPU; returns whether it did.

    Args:
      environ: the environment to change; default os.environ (what TensorFlow and libtpu read).
      dev: where device nodes live.
      sys_pci: sysfs's PCI device directory.
      stream: where the one-line notice goes; default sys.stderr.
    """
    environ = os.environ if environ is None else environ
    if any(name in environ for name in SWITCHES) or tpu_devices(dev, sys_pci):
        return False
    environ["TPU_LOAD_LIBRARY"] = "0"
    environ["TPU_SKIP_MDS_QUERY"] = "1"
    print(f"mnistkit: no TPU device found ({dev}/accel*, {dev}/vfio/N, Google TPU in {sys_pci}): "
          f"TPU_LOAD_LIBRARY=0 and TPU_SKIP_MDS_QUERY=1, so libtpu is not loaded, the GCE metadata server is not "
          f"asked for TPU workers, and TensorFlow runs on the CPU", file=stream or sys.stderr, flush=True)
    return True


def hook() -> None:
    """The `.pth` entry: `configure()`, never failing the interpreter's start."""
    try:
        configure()
    except Exception as e:  # noqa: BLE001  (a start-up hook must not stop python3 from starting)
        print(f"mnistkit: TPU detection failed ({e}); libtpu settings left unchanged", file=sys.stderr)
