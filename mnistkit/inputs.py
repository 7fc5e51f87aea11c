"""The training data as the trainer feeds it: both splits in memory, each epoch in a fixed shuffled order."""

from __future__ import annotations

import logging

import numpy as np
import tensorflow as tf

from mnistkit import idx
from mnistkit.train_config import TrainConfig

log = logging.getLogger(__name__)


def load_data(config: TrainConfig):
    """Reads both splits into memory: uint8 images and int32 labels."""
    train_images, train_labels = idx.load_split(config.data_dir, idx.TRAIN)
    test_images, test_labels = idx.load_split(config.data_dir, idx.TEST)
    if config.max_train_examples and config.max_train_examples > len(train_images):
        log.warning("max_train_examples %d: the training split has %d examples; training on all of them",
                    config.max_train_examples, len(train_images))
    if config.max_train_examples:
        train_images = train_images[: config.max_train_examples]
        train_labels = train_labels[: config.max_train_examples]
    return (train_images, train_labels.astype(np.int32)), (test_images, test_labels.astype(np.int32))


def to_float(images):
    """uint8 pixels to float32 in [0, 1], the model's input."""
    return tf.cast(images, tf.float32) * (1.0 / 255.0)


def epoch_order(examples: int, seed: int, epoch: int, epoch_examples: int | None = None) -> np.ndarray:
    """The indices epoch `epoch` trains on, in order.

    Epochs are consecutive runs of `epoch_examples` (default: `examples`) from one endless stream that goes
    over the split again and again, each pass in its own order fixed by (seed, pass). Every pass sees every
    example once whatever the epoch length, and with the default every epoch is exactly one pass.
    """
    epoch_examples = epoch_examples or examples
    start = epoch * epoch_examples
    first, last = start // examples, (start + epoch_examples - 1) // examples
    stream = np.concatenate([np.random.default_rng([seed, p]).permutation(examples) for p in range(first, last + 1)])
    offset = start - first * examples
    return stream[offset:offset + epoch_examples].astype(np.int32)


def without_tuning_thread(ds: tf.data.Dataset) -> tf.data.Dataset:
    """`ds` without tf.data's autotuning model, the thread that tunes AUTOTUNE values as the data flows.

    With the model on (tf.data's default), deleting an iterator waits for that thread's next wake-up, and it
    wakes at doubling intervals. At the end of an epoch that wait was often longer than the epoch's own
    steps: on the Xeon of docs/performance.md, after the fast recipe's first epoch (3.6 s) it was 1.8 s in
    5 of 12 runs, and after a whole-split epoch (5.7 s), 5.0 s in 1 of 8. Without the model, a map's
    AUTOTUNE parallelism is one call per core, which ran a CPU-bound map at twice the rate the model had
    reached over its first 400 elements.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


def train_dataset(strategy: tf.distribute.Strategy, images: tf.Tensor, labels: tf.Tensor, seed: int, epoch: int,
                  global_batch: int, skip_steps: int = 0, epoch_examples: int | None = None,
                  parallel: bool = True):
    """Epoch `epoch`'s batches (see `epoch_order`) in an order fixed by the seed, so a resumed epoch can skip
    what was done.

    `images` and `labels` are tensors already in memory: each batch gathers its rows.

    `parallel`: gather in parallel, one call per core, for a GPU or TPU whose steps leave the host's cores
    free. False, for steps that run on this CPU: one thread, two batches ahead. A batch of 160 is a gather
    and a cast, about 0.3 ms against a step's 20-30 ms on two cores, and the parallel map's threads only
    competed with the step for them: to the first evaluation 8.69 CPU-seconds and 5.54 s against 8.49 and
    5.14 (medians of five runs each, taking turns, on the Xeon of docs/performance.md, both still with
    tf.data's autotuning then). The batches are the same either way.
    """
    order = epoch_order(int(images.shape[0]), seed, epoch, epoch_examples)

    def dataset_fn(context: tf.distribute.InputContext):
        per_replica = context.get_per_replica_batch_size(global_batch)
        ds = tf.data.Dataset.from_tensor_slices(order)
        ds = ds.shard(context.num_input_pipelines, context.input_pipeline_id)
        ds = ds.batch(per_replica, drop_remainder=True).skip(skip_steps)
        ds = ds.map(lambda i: (to_float(tf.gather(images, i)), tf.gather(labels, i)),
                    num_parallel_calls=tf.data.AUTOTUNE if parallel else None)
        return without_tuning_thread(ds.prefetch(tf.data.AUTOTUNE if parallel else 2))

    return strategy.distribute_datasets_from_function(dataset_fn)


def eval_dataset(strategy: tf.distribute.Strategy, images: np.ndarray, labels: np.ndarray, batch: int):
    """The test split in batches of `batch`, distributed over the strategy's replicas."""
    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    ds = ds.batch(batch).map(lambda x, y: (to_float(x), y)).prefetch(2)
    return strategy.experimental_distribute_dataset(without_tuning_thread(ds))
