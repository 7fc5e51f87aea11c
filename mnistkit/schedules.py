"""Learning-rate schedules: a constant rate, one cosine over the run, or a cosine within each epoch."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from mnistkit.model import keras
from mnistkit.train_config import TrainConfig


class EpochCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup, then within each epoch a cosine from that epoch's peak down to zero.

    Each epoch's peak is `decay` times the last one's. The learning rate is
    near zero at every epoch's end, where the trainer evaluates, so each
    evaluation sees a settled model instead of one still jumping about at a
    high learning rate: with the 'fast' recipe that is what lifts the first
    epoch's test accuracy past 99%.
    """

    def __init__(self, peak: float, steps_per_epoch: int, warmup_steps: int = 0, decay: float = 0.5):
        self.peak, self.steps_per_epoch, self.warmup_steps, self.decay = peak, steps_per_epoch, warmup_steps, decay

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        epoch = tf.floor(step / self.steps_per_epoch)
        phase = (step - epoch * self.steps_per_epoch) / self.steps_per_epoch
        rate = self.peak * tf.pow(self.decay, epoch) * 0.5 * (1.0 + tf.cos(np.pi * phase))
        if self.warmup_steps:
            rate *= tf.minimum(1.0, (step + 1.0) / self.warmup_steps)
        return rate

    def get_config(self):
        return {"peak": self.peak, "steps_per_epoch": self.steps_per_epoch, "warmup_steps": self.warmup_steps,
                "decay": self.decay}


def learning_rate_schedule(config: TrainConfig, steps_per_epoch: int):
    """The schedule `config.schedule` names (or a constant rate), for `steps_per_epoch` steps an epoch."""
    if config.schedule == "constant":
        return config.learning_rate
    if config.schedule == "epoch_cosine":
        return EpochCosine(config.learning_rate, steps_per_epoch, int(config.warmup_epochs * steps_per_epoch))
    total = config.train_epochs * steps_per_epoch
    warmup = min(int(config.warmup_epochs * steps_per_epoch), total - 1)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=config.learning_rate * 0.01 if warmup else config.learning_rate,
        warmup_target=config.learning_rate if warmup else None,
        warmup_steps=warmup, decay_steps=max(total - warmup, 1))
