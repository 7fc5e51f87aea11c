"""`python -m benchmarks.profile`: where a training step of the `fast` recipe goes, op by op, on this CPU.

Runs TensorFlow's profiler around one epoch of the trainer (after a first
epoch that traces and compiles) and prints each op's own time per step,
summed over TensorFlow's compute threads, largest first, with the layer it
belongs to. An op's own time leaves out the ops it waits on, so the rows add
up to the compute threads' busy time, which on two cores exceeds a step's
wall time. The epoch includes its checkpoint, as every trainer epoch does.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from mnistkit import tf_settings  # noqa: E402

tf_settings.apply()
from benchmarks import common  # noqa: E402
from benchmarks.run import default_data_dir  # noqa: E402
from mnistkit.recipes import RECIPES  # noqa: E402

# Where the executor runs the ops: TensorFlow's inter-op threads (the intra-op pool's shards nest in them).
_COMPUTE_LINE = "tf_Compute/"
# The layer's scope as traced: Keras suffixes a name for each call (conv2d_1_2 is the second convolution,
# conv2d_1, in its second trace), so the two convolutions stay apart but keep their suffixes.
_LAYER = re.compile(r"mnist_cnn(?:_\d+)?/(\w+?)/")


def label(event_name: str) -> str:
    """'Conv2DBackpropFilter (conv2d_1_2, gradient)' for a TF op 'scope/…/conv2d_1_2/…/X:Conv2DBackpropFilter';
    XLA's fused kernels and the executor's own work keep their names."""
    if ":" not in event_name or "::" in event_name:
        return event_name
    scope, op = event_name.rsplit(":", 1)
    layer = _LAYER.search(scope + "/")
    where = [layer.group(1)] if layer else []
    if "gradient_tape" in scope:
        where.append("gradient")
    return f"{op} ({', '.join(where)})" if where else op


def own_times(xspace) -> collections.Counter:
    """Picoseconds of own time (duration minus nested events') per label, over the compute threads."""
    totals = collections.Counter()
    for plane in xspace.planes:
        names = plane.event_metadata
        for line in plane.lines:
            if not line.name.startswith(_COMPUTE_LINE):
                continue
            events = sorted(line.events, key=lambda e: (e.offset_ps, -e.duration_ps))
            stack = []  # [end_ps, label, own_ps] of the enclosing events
            for event in events + [None]:
                start = event.offset_ps if event else float("inf")
                while stack and stack[-1][0] <= start:
                    end, name, own = stack.pop()
                    totals[name] += own
                if event is None:
                    break
                if stack:
                    stack[-1][2] -= event.duration_ps
                stack.append([event.offset_ps + event.duration_ps, label(names[event.metadata_id].name),
                              event.duration_ps])
    return totals


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", default=default_data_dir(), help="The four MNIST files (default %(default)s).")
    p.add_argument("--steps", type=int, default=60, help="Steps of the profiled epoch (default %(default)s).")
    p.add_argument("--rows", type=int, default=20, help="Ops to print (default %(default)s).")
    p.add_argument("--recipe", default="fast", choices=tuple(RECIPES), help="The recipe (default %(default)s).")
    args = p.parse_args(argv)
    if args.steps < 1 or args.rows < 1:
        p.error(f"--steps and --rows: expected at least 1, found {args.steps} and {args.rows}")

    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2  # The profile's format, as TensorFlow ships it.

    from mnistkit import training

    with tempfile.TemporaryDirectory(prefix="mnistkit-profile-") as scratch:
        batch = RECIPES[args.recipe]["batch_size"]
        config = training.TrainConfig.from_recipe(args.recipe, data_dir=args.data_dir, epoch_fraction=1.0,
                                                  model_dir=os.path.join(scratch, "model"),
                                                  max_train_examples=args.steps * batch)
        trainer = training.Trainer(config)
        trainer.train_epoch()  # Traces and compiles; not profiled.
        logs = os.path.join(scratch, "profile")
        tf.profiler.experimental.start(logs)
        with common.Timer() as timed:
            trainer.train_epoch()
        tf.profiler.experimental.stop()
        xspace = xplane_pb2.XSpace()
        with open(glob.glob(os.path.join(logs, "**", "*.xplane.pb"), recursive=True)[0], "rb") as f:
            xspace.ParseFromString(f.read())
    steps = trainer.steps_per_epoch
    totals = own_times(xspace)
    busy = sum(totals.values()) / 1e9 / steps
    info = common.machine()
    print(f"{info['cpu']}, {info['cores']} cores ({', '.join(info['simd'])}); recipe {args.recipe}, batch "
          f"{config.batch_size}, {trainer.precision}; {steps} steps")
    print(f"per step: {timed.wall / steps * 1e3:.1f} ms wall, {timed.cpu / steps * 1e3:.1f} CPU-ms, "
          f"{busy:.1f} ms of op time over the compute threads\n")
    print(f"{'ms/step':>8} {'share':>6}  op (layer)")
    for name, ps in totals.most_common(args.rows):
        print(f"{ps / 1e9 / steps:8.2f} {ps / 1e9 / steps / busy:6.1%}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
