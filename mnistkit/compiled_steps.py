"""The trainer's compiled steps: many training steps, or a whole evaluation, in one tf.function call."""

from __future__ import annotations

import tensorflow as tf

from mnistkit.model import keras


def training_steps(strategy: tf.distribute.Strategy, model: keras.Model, optimizer: keras.optimizers.Optimizer,
                   global_batch: int, label_smoothing: float = 0.0):
    """A tf.function (iterator, steps) that runs `steps` training steps on the iterator's batches.

    Args:
      label_smoothing: The training loss's targets give the true class 1 - label_smoothing and spread
        label_smoothing evenly over all classes (0: plain cross-entropy, as the seed).

    Returns:
      The function; it returns the sum over the steps of the mean loss of each global batch.
    """

    def step_fn(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            per_example = cross_entropy(labels, logits, label_smoothing)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    def body(iterator, total):
        per_replica = strategy.run(step_fn, args=next(iterator))
        return total + strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    @tf.function(autograph=False)
    def train_steps(iterator, steps):
        return _repeat(steps, lambda total: body(iterator, total), tf.constant(0.0))

    return train_steps


def _repeat(steps, body, initial):
    """body(body(...body(initial))), `steps` times, as one tf.while_loop.

    The loops are written out rather than left to AutoGraph (`for _ in
    tf.range(steps)`), and their functions are traced with autograph=False:
    AutoGraph's source conversion of every function a step calls took about
    0.13 s of the 0.3 s that tracing the training steps took, time spent
    before the first evaluation (figures in docs/performance.md).
    The steps are the same, and a run's weights the same to the last bit.
    maximum_iterations is the bound AutoGraph gave such a loop under XLA
    (TPUs); here it is always set.
    """
    return tf.while_loop(lambda i, _: i < steps, lambda i, value: (i + 1, body(value)),
                         (tf.constant(0, steps.dtype), initial), maximum_iterations=steps)[1]


def cross_entropy(labels, logits, label_smoothing: float = 0.0):
    """Per-example cross-entropy of integer `labels` against `logits`, with optional label smoothing."""
    if not label_smoothing:
        return keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    targets = tf.one_hot(labels, logits.shape[-1], dtype=logits.dtype)  # A static depth, for XLA on TPUs.
    return keras.losses.categorical_crossentropy(targets, logits, from_logits=True, label_smoothing=label_smoothing)


def evaluation(strategy: tf.distribute.Strategy, model: keras.Model):
    """A tf.function (iterator, steps) that evaluates `model` on `steps` batches of the iterator.

    Returns:
      The function; it returns [summed loss, correct predictions, examples] as one float32 tensor.
    """

    def eval_fn(images, labels):
        logits = model(images, training=False)
        loss = cross_entropy(labels, logits)
        correct = tf.cast(tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), labels), tf.float32)
        return tf.reduce_sum(loss), tf.reduce_sum(correct), tf.cast(tf.size(labels), tf.float32)

    # An iterator and a step count, like training_steps: a Python `for` over a
    # distributed dataset fell back to unrolling here, retracing the model
    # for every batch of every evaluation (20 s per evaluation).
    def body(iterator, sums):
        per_replica = strategy.run(eval_fn, args=next(iterator))
        return sums + tf.stack([strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for v in per_replica])

    @tf.function(autograph=False)
    def evaluate(iterator, steps):
        return _repeat(steps, lambda sums: body(iterator, sums), tf.zeros(3))

    return evaluate
