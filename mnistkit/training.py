"""The training loop: the seed's CNN trained epoch by epoch with a stop threshold, checkpoints and resume.

A custom loop rather than `model.fit`: it runs unchanged under every
tf.distribute strategy (Keras 3's `fit` fails under MultiWorkerMirroredStrategy
on TF 2.21), it resumes mid-epoch after a SIGTERM, and it runs many steps per
`tf.function` call (mnistkit/compiled_steps.py). Its speed over plain `fit`
comes from oneDNN kernels (mnistkit/tf_settings.py), a fused Adam update
(mnistkit/optimizers.py), and dense kernels stored transposed, their gradients
kept in bfloat16 for Adam to cast, and ReLUs after the pools (mnistkit/model.py).

The rest of a run lives beside it: its settings in train_config.py, checkpoints
in checkpoints.py, TensorBoard and worker directories in run_dirs.py, SIGTERM
in sigterm.py, errors in failures.py, the saved model in models_io.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import shutil
from typing import Callable

import tensorflow as tf

from mnistkit import checkpoints, compiled_steps, distribution, files, inputs, report, run_dirs
from mnistkit.evaluation import EVAL_BATCH
from mnistkit.failures import PEER_ERRORS, Diverged, Interrupted, PeerFailure, disk_errors
from mnistkit.model import create_model, keras
from mnistkit.models_io import CONFIG_FILE, FINISHED_KEY, MODEL_FILE, load_model, save_model, weights_digest
from mnistkit.optimizers import FusedAdam
from mnistkit.schedules import learning_rate_schedule
from mnistkit.sigterm import SigtermFlag
from mnistkit.train_config import TrainConfig, resolve_precision

log = logging.getLogger(__name__)

# The names callers know training by, defined in the modules that do each job.
__all__ = ["CONFIG_FILE", "HISTORY_FILE", "MODEL_FILE", "Diverged", "Interrupted", "PeerFailure", "TrainConfig",
           "Trainer", "load_model", "resolve_precision", "train", "weights_digest"]

HISTORY_FILE = "history.json"
DATA_KEY = "data_sha256"  # In CONFIG_FILE beside the settings: the data's checkpoints.data_fingerprint.
# AIP_MODEL_DIR, which Vertex AI also sets, is not read: the model goes to the pipeline's Model artifact,
# which is where the evaluate and export steps look for it.


class Trainer:
    """Owns the strategy, model, optimizer and checkpoints of one run.

    Public hooks: `train_epoch()` trains one epoch; `on_epoch` and
    `on_evaluation` are called by `train()` after each epoch it trains and
    each evaluation it makes.
    """

    def __init__(self, config: TrainConfig, on_epoch: Callable[[dict], None] | None = None,
                 on_evaluation: Callable[[dict], None] | None = None, data: tuple | None = None,
                 strategy: tf.distribute.Strategy | None = None):
        """Builds the run's model and optimizer and reads the data; restores nothing yet (`train` does).

        Args:
          config: The run's settings; checked here.
          on_epoch: Called after each epoch `train()` trains with {"epoch": epochs done, "loss": the
            epoch's mean training loss, "learning_rate": the rate at its end}.
          on_evaluation: Called after each evaluation `train()` makes, once history.json holds it, with its
            record {"epoch", "loss", "accuracy", "evaluated_in"}; the last is the precision the evaluation
            ran in (the training's, such as mixed_bfloat16).
          data: Both splits as `inputs.load_data(config)` returns them, when already read; else read here.
          strategy: `distribution.get_strategy(...)` for `config`, when already made; else made here.
        """
        config.check()
        self.config = config
        self.on_epoch, self.on_evaluation = on_epoch, on_evaluation
        self.strategy = strategy if strategy is not None else _strategy(config)
        self.chief = distribution.is_chief()
        self._multi_worker = isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy)
        self._stop = SigtermFlag()
        if self._multi_worker:
            # From the strategy's start TensorFlow's preemption notifier takes SIGTERM and only logs it: a replica
            # preempted while it reads its data and builds the model trained on until SIGKILL. The flag takes it
            # from here instead, and train() stops every replica before the first epoch.
            self._stop.install()
        # Steps on a GPU or TPU leave the host's cores to the input pipeline; steps on this CPU need them all.
        self.on_accelerator = bool(config.tpu or tf.config.list_physical_devices("GPU"))
        try:
            train_images, train_labels = self._build(config, data)
        except BaseException:  # A Trainer that never trains must not keep SIGTERM.
            self._stop.uninstall()
            raise
        # Bookkeeping, not model state: plain variables outside the scope, so
        # under MultiWorkerMirroredStrategy they are not MirroredVariables
        # (which `int()` cannot read); every worker counts the same anyway.
        self._doing = "before the first epoch"  # Where a peer failure found the run, for its message.
        # What an interrupted run tells its user: the same command with --clean would start over.
        self._rerun = "rerun without --clean to resume" if config.clean else "rerun to resume"
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.step_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="step_in_epoch")
        # The dropout layer's random state is a model variable that tf.train.Checkpoint does not find through the
        # Keras model: listed here, a resumed run draws the masks the uninterrupted run would have, and ends with
        # the same weights.
        state = dict(model=self.model, optimizer=self.optimizer, epoch=self.epoch, step_in_epoch=self.step_in_epoch)
        self.checkpoint = tf.train.Checkpoint(**state,
                                              random_state=[v.value for v in self.model.non_trainable_variables])
        # Checkpoints of earlier versions lack it: they resume as before, with the dropout masks drawn afresh.
        self._older_checkpoint = ("random_state", tf.train.Checkpoint(**state))
        # Every worker saves (saving can involve collectives); only the chief's copy lands in model_dir
        # and the checkpoint directory, the others go to a private temporary place. Every worker resumes
        # from the chief's checkpoints.
        self.checkpoint_dir = checkpoints.checkpoint_dir(config)
        self.tensorboard_dirs = run_dirs.tensorboard_dirs(config) if self.chief else []
        self.write_dir = config.model_dir if self.chief else run_dirs.worker_dir()
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, self.checkpoint_dir if self.chief else os.path.join(self.write_dir, "checkpoints"),
            max_to_keep=2)
        # The training split is kept once, as the tensors each batch gathers its rows from: no NumPy copy
        # beside them (47 MB of the peak memory).
        self._images, self._labels = tf.constant(train_images), tf.constant(train_labels)
        self._eval_dataset = inputs.eval_dataset(self.strategy, self.test_images, self.test_labels, EVAL_BATCH)
        self.train_steps = compiled_steps.training_steps(self.strategy, self.model, self.optimizer,
                                                         config.batch_size, config.label_smoothing)
        self.evaluate_fn = compiled_steps.evaluation(self.strategy, self.model)
        self._any_stop = None  # Multi-worker: the sum of every replica's SIGTERM flag (see _stopping).
        if self._multi_worker:
            strategy = self.strategy
            self._any_stop = tf.function(lambda flag: strategy.reduce(
                tf.distribute.ReduceOp.SUM, strategy.run(lambda: flag), axis=None))

    def _build(self, config: TrainConfig, data: tuple | None) -> tuple:
        """Reads the data (unless given) and builds the model and optimizer; returns the training split."""
        (train_images, train_labels), (self.test_images, self.test_labels) = data or inputs.load_data(config)
        # What multi-worker replicas compare (see _train): the labels, and every 97th image (a whole hash costs
        # 50 ms). A single process has no one to compare with and skips it.
        self._data_digest = hashlib.sha256(
            b"".join(a[::97].tobytes() for a in (train_images, self.test_images)) + train_labels.tobytes()
            + self.test_labels.tobytes()).hexdigest() if self._multi_worker else None
        replicas = self.strategy.num_replicas_in_sync
        if config.batch_size % replicas:
            raise ValueError(f"batch_size: expected a multiple of the {replicas} replicas, found {config.batch_size}")
        self.epoch_examples = config.epoch_examples(len(train_images))  # Raises for a batch larger than an epoch.
        self.steps_per_epoch = self.epoch_examples // config.batch_size
        keras.utils.set_random_seed(config.seed)
        with self.strategy.scope():
            self.precision = resolve_precision(config.precision, config.tpu)
            self.model = create_model(config.data_format, self.precision, config.normalize_inputs)
            self.optimizer = FusedAdam(learning_rate_schedule(config, self.steps_per_epoch), beta_2=config.beta_2,
                                       nesterov=config.nesterov)
            self.optimizer.build(self.model.trainable_variables)
        return train_images, train_labels

    # --- Evaluation and the loop. ---------------------------------------------------

    def evaluate(self) -> dict:
        """The current model's mean loss and accuracy on the whole test split."""
        steps = tf.constant(-(-len(self.test_images) // EVAL_BATCH))
        loss_sum, correct, count = self.evaluate_fn(iter(self._eval_dataset), steps).numpy()
        # In float64: float32's 9801 / 10000 is below 0.9801, and a stop threshold of 0.9801 would be missed.
        return {"loss": float(loss_sum) / float(count), "accuracy": float(correct) / float(count)}

    def _load_history(self) -> list[dict]:
        # The copy beside the checkpoints first: a resubmitted run has a new, empty model_dir.
        for directory in (self.checkpoint_dir, self.config.model_dir):
            if os.path.exists(os.path.join(directory, HISTORY_FILE)):
                try:
                    return report.load_history(directory)  # The one reader of the format, which checks it.
                except ValueError as e:
                    raise ValueError(f"{e}; use --clean or another --model_dir") from None
        return []

    def _trained_before(self) -> dict:
        """The settings model_dir's last run recorded (train_config.json), or {} when there are none."""
        try:
            with open(os.path.join(self.config.model_dir, CONFIG_FILE)) as f:
                before = json.load(f)
        except (OSError, ValueError):
            return {}
        return before if isinstance(before, dict) else {}

    def _check_same_data(self) -> None:
        """Refuses to resume model_dir's own checkpoints over other data than they were trained on.

        Checkpoints kept by settings (--checkpoint_dir, $AIP_CHECKPOINT_DIR) are kept by data too, so there a
        run over other data starts over. In model_dir/checkpoints a rerun over other data resumed the old run:
        finished, it trained nothing, rewrote the old model and recorded the new data as its own.
        """
        before = self._trained_before().get(DATA_KEY)
        if before and before != self._data_sha256:
            raise ValueError(f"--data_dir: expected the data the checkpoints in {self.checkpoint_dir} were trained "
                             f"on (files' sha256 {before[:12]}...), found other data in {self.config.data_dir} "
                             f"({self._data_sha256[:12]}...); --clean starts over, or use another --model_dir")

    def _warn_of_changed_settings(self, resumed: bool = True) -> None:
        """Says so when a run trains with settings other than those its model_dir was trained with.

        Resumed: allowed (a lower learning rate after a divergence, more epochs), but the run then mixes two
        recipes. Not resumed: checkpoints kept by settings (--checkpoint_dir, $AIP_CHECKPOINT_DIR) have none for
        these, so the run starts over and will replace the model in model_dir.
        """
        before = self._trained_before()
        if not before:
            return
        changed = [f"{name} {before[name]} -> {getattr(self.config, name)}" for name in checkpoints.TRAJECTORY_FIELDS
                   if name in before and before[name] != getattr(self.config, name)]
        if before.get(DATA_KEY, self._data_sha256) != self._data_sha256:
            changed.append(f"the data {before[DATA_KEY][:12]}... -> {self._data_sha256[:12]}...")
        if changed and resumed:
            log.warning("resuming %s with other settings than it was trained with: %s (--clean starts over)",
                        self.config.model_dir, ", ".join(changed))
        elif changed:
            log.warning("starting over in %s: no checkpoint of these settings there; %s was trained with others "
                        "(%s), and its model will be replaced", self.checkpoint_dir, self.config.model_dir,
                        ", ".join(changed))

    def _write_history(self, payload: dict) -> None:
        """Writes history.json to model_dir and, when checkpoints live elsewhere, beside them too (chief only)."""
        self._write_json(HISTORY_FILE, payload)
        if self.chief and not run_dirs.inside(self.checkpoint_dir, self.config.model_dir):
            path = os.path.join(self.checkpoint_dir, HISTORY_FILE)
            with disk_errors(path):
                files.atomic_write_text(path, json.dumps(payload, indent=2) + "\n")

    def _write_json(self, name: str, payload: dict) -> None:
        path = os.path.join(self.write_dir, name)
        with disk_errors(path):
            files.atomic_write_text(path, json.dumps(payload, indent=2) + "\n")

    def train(self) -> dict:
        """Trains until `train_epochs` or the stop threshold; returns the history.

        Resumes from the newest checkpoint in `model_dir`, mid-epoch if it was
        saved on SIGTERM. Raises Interrupted after saving on SIGTERM, and
        PeerFailure when a multi-worker peer dies or stops answering.
        """
        try:
            return self._train()
        except PEER_ERRORS as e:
            if not self._multi_worker:
                raise
            raise PeerFailure(f"multi-worker training stopped {self._doing}: {peer_failure(e)}; restart every "
                              f"worker to resume from the last checkpoint in {self.checkpoint_dir}") from e
        finally:
            if not self.chief:
                shutil.rmtree(self.write_dir, ignore_errors=True)

    def _train(self) -> dict:
        config = self.config
        self._data_sha256 = checkpoints.data_fingerprint(config.data_dir)
        latest = self._restore()
        if latest:
            if run_dirs.inside(self.checkpoint_dir, config.model_dir):
                self._check_same_data()
            log.info("resumed from %s at epoch %d, step %d", latest, int(self.epoch), int(self.step_in_epoch))
            self._warn_of_changed_settings()
            if int(self.epoch) > config.train_epochs:
                log.warning("%s holds a run already at epoch %d, past --train_epochs %d: its model is written as "
                            "it is; --clean (or another checkpoint directory) trains %d epochs from the start",
                            latest, int(self.epoch), config.train_epochs, config.train_epochs)
        elif self.chief:
            self._warn_of_changed_settings(resumed=False)
        if self._multi_worker:
            own = {"model_dir", "data_dir", "checkpoint_dir", "tensorboard_dir", "clean"}  # Each replica's own.
            distribution.check_replicas_agree(self.strategy, {
                **{f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in own},
                "the data": self._data_digest, "the precision in use": self.precision,
                # Position and weights: two checkpoints of the same epoch and step differ in their weights.
                "the checkpoint resumed from": (int(self.epoch), int(self.step_in_epoch), weights_digest(self.model))})
        # Evaluations past the restored epoch belong to a run whose checkpoint was lost.
        history = [h for h in self._load_history() if h["epoch"] <= int(self.epoch)] if latest else []
        # Not finished until this run's model is written: until then a model.keras in model_dir is an earlier
        # run's, which load_model refuses to take for this one's (and which stays: it may be the last good one).
        settings = {**dataclasses.asdict(config), DATA_KEY: self._data_sha256}
        self._write_json(CONFIG_FILE, {**settings, FINISHED_KEY: False})
        log.info("checkpoints in %s; TensorBoard summaries in %s", self.checkpoint_dir,
                 ", ".join(self.tensorboard_dirs) or "none (not the chief)")
        writers = [tf.summary.create_file_writer(d) for d in self.tensorboard_dirs]
        stop = self._stop
        with stop, contextlib.ExitStack() as closing:
            for writer in writers:
                closing.callback(writer.close)
            while True:
                epoch = int(self.epoch)
                due = epoch > 0 and (epoch % config.epochs_between_evals == 0 or epoch >= config.train_epochs)
                if due and not any(h["epoch"] == epoch for h in history):
                    self._doing = f"at the evaluation after epoch {epoch}"
                    # Evaluated at the training precision: in mixed_bfloat16 a few test examples can score
                    # otherwise than in the float32 of mnist-evaluate, the export gate and serving; say which.
                    history.append({"epoch": epoch, **self.evaluate(), "evaluated_in": self.precision})
                    if not math.isfinite(history[-1]["loss"]):
                        raise self._diverged_at_evaluation(epoch, history[-1]["loss"])
                    log.info("epoch %d: %s", epoch, history[-1])
                    run_dirs.write_summaries(writers, epoch, {"eval/accuracy": history[-1]["accuracy"],
                                                              "eval/loss": history[-1]["loss"]})
                    self._write_history({"evaluations": history})
                    if self.on_evaluation:
                        self.on_evaluation(dict(history[-1]))
                if _reached(history, config.stop_threshold) or epoch >= config.train_epochs:
                    break
                if self._stopping(stop):  # Between epochs: the last epoch's checkpoint is already saved.
                    raise Interrupted(f"{self._sigterm_to(stop)} before epoch {epoch + 1}: nothing lost since the "
                                      f"last checkpoint; {self._rerun}")
                self._doing = f"in epoch {epoch + 1}"
                loss = self.train_epoch(stop)
                lr = self._current_lr()
                run_dirs.write_summaries(writers, epoch + 1, {"train/loss": loss, "train/learning_rate": lr})
                if self.on_epoch:
                    self.on_epoch({"epoch": epoch + 1, "loss": loss, "learning_rate": lr})
        self._doing = "after the last epoch"
        result = {"evaluations": history, "stopped_early": _reached(history, config.stop_threshold)
                  and int(self.epoch) < config.train_epochs, "epochs": int(self.epoch)}
        self._write_history(result)
        save_model(self.model, os.path.join(self.write_dir, MODEL_FILE))
        self._write_json(CONFIG_FILE, {**settings, FINISHED_KEY: True})
        # Every worker logs it: in a multi-worker run they must agree.
        log.info("trained weights sha256 %s", weights_digest(self.model))
        return result

    def _restore(self) -> str | None:
        """Restores the newest readable checkpoint of the run (see checkpoints.restore_newest); returns its path."""
        path = checkpoints.restore_newest(self.checkpoint, self.checkpoint_dir, self.config.model_dir,
                                          older=self._older_checkpoint)
        if path and self.config.schedule == "constant":
            # A constant rate is an optimizer variable, so the checkpoint brought back the old run's; the
            # --learning_rate of this run wins (the way to go on after a divergence is a lower one).
            self.optimizer.learning_rate = self.config.learning_rate
        return path

    def train_epoch(self, stop: SigtermFlag | None = None) -> float:
        """Trains the current epoch (`self.epoch`) from `self.step_in_epoch` to its end, then saves a checkpoint.

        Args:
          stop: When its `raised` turns true (SIGTERM), saves a checkpoint mid-epoch and raises Interrupted.

        Returns:
          The mean training loss of the steps it ran.

        Raises:
          Diverged: the loss became NaN or infinite (nothing saved from those steps).
        """
        epoch, start = int(self.epoch), int(self.step_in_epoch)
        iterator = iter(inputs.train_dataset(self.strategy, self._images, self._labels, self.config.seed, epoch,
                                             self.config.batch_size, skip_steps=start,
                                             epoch_examples=self.epoch_examples, parallel=self.on_accelerator))
        total, step, n = 0.0, start, 0
        while step < self.steps_per_epoch:
            n = min(self.config.steps_per_loop, self.steps_per_epoch - step)
            loss_sum = float(self.train_steps(iterator, tf.constant(n)))
            # The sum is fetched anyway, so checking it costs nothing; one NaN or Inf step makes it non-finite.
            if not math.isfinite(loss_sum):
                raise self._diverged(f"the loss became {'NaN' if math.isnan(loss_sum) else 'infinite'}", epoch,
                                     step, n)
            total += loss_sum
            step += n
            log.info("epoch %d: step %d of %d", epoch + 1, step, self.steps_per_epoch)
            if stop is not None and step < self.steps_per_epoch and self._stopping(stop):
                self._check_weights(epoch, step - n, n)
                self.step_in_epoch.assign(step)
                path = self.save_checkpoint()
                saved = f"saved {path}" if self.chief else f"the chief saved a checkpoint in {self.checkpoint_dir}"
                raise Interrupted(f"{self._sigterm_to(stop)} at epoch {epoch + 1}, step {step}: {saved}; "
                                  f"{self._rerun}")
        if n:  # Steps ran: their last update is checked before the checkpoint keeps it.
            self._check_weights(epoch, step - n, n)
        self.epoch.assign(epoch + 1)
        self.step_in_epoch.assign(0)
        self.save_checkpoint()
        return total / max(step - start, 1)

    def _stopping(self, stop: SigtermFlag) -> bool:
        """Whether to stop for a SIGTERM: this process's, or in a multi-worker run any replica's.

        Vertex AI preempts a job's machines one after another: a replica that stopped alone left the others
        in a collective until it gave up (exit 1, no checkpoint). So the replicas add their flags up after
        each call of steps, one small collective, and stop at the same step together.
        """
        if self._any_stop is None:
            return stop.raised
        return float(self._any_stop(tf.constant(1.0 if stop.raised else 0.0))) > 0

    def _sigterm_to(self, stop: SigtermFlag) -> str:
        return "SIGTERM" if stop.raised else "SIGTERM to another task"

    def _check_weights(self, epoch: int, step: int, n: int) -> None:
        """Raises Diverged before a checkpoint would keep weights that are not finite.

        A step's loss is computed before its update, so the loss check above cannot see the last update of
        a call go wrong: that one is caught here, once per checkpoint (a pass over the weights).
        """
        if not all(bool(tf.reduce_all(tf.math.is_finite(v))) for v in self.model.trainable_variables):
            raise self._diverged("the weights became NaN or infinite", epoch, step, n)

    def _diverged(self, what: str, epoch: int, step: int, n: int) -> Diverged:
        """The error for steps step+1..step+n going non-finite (`what`); the weights are lost, checkpoints untouched."""
        steps = f"step {step + 1}" if n == 1 else f"steps {step + 1}-{step + n}"
        last = tf.train.latest_checkpoint(self.checkpoint_dir)  # The chief's: a non-chief saves to scratch.
        resume = f"a rerun resumes from {last}, the last checkpoint before it" if last else \
            "no checkpoint was saved before it"
        return Diverged(f"training diverged at epoch {epoch + 1}, {steps} of {self.steps_per_epoch}: {what} "
                        f"{self._diverged_advice(resume)}")

    def _diverged_at_evaluation(self, epoch: int, loss: float) -> Diverged:
        """The error for weights that are finite but whose test loss is not (logits too large to soften)."""
        kept = f"the checkpoint of epoch {epoch} holds these weights, so rerun with --clean"
        return Diverged(f"training diverged by epoch {epoch}: the test loss became "
                        f"{'NaN' if math.isnan(loss) else 'infinite'} {self._diverged_advice(kept)}")

    def _diverged_advice(self, resume: str) -> str:
        hints = [f"a lower --learning_rate (e.g. {self.config.learning_rate / 10:g})"]
        if self.precision != "float32":
            hints.append("--precision float32")
        return (f"at learning rate {self._current_lr():g} (--learning_rate {self.config.learning_rate:g}, precision "
                f"{self.precision}); no model was written and {resume}; try {', or '.join(hints)}")

    def save_checkpoint(self) -> str:
        """Saves a checkpoint; a failure to write it is an OSError naming the directory, with no leftovers."""
        return checkpoints.save(self.manager)

    def _current_lr(self) -> float:
        lr = self.optimizer.learning_rate
        return float(lr.numpy() if hasattr(lr, "numpy") else lr)


def _strategy(config: TrainConfig) -> tf.distribute.Strategy:
    return distribution.get_strategy(config.distribution_strategy, config.num_gpus, config.tpu,
                                     config.collective_timeout_seconds)


def _reached(history: list[dict], threshold: float | None) -> bool:
    return threshold is not None and bool(history) and history[-1]["accuracy"] >= threshold


def train(config: TrainConfig, on_epoch: Callable[[dict], None] | None = None,
          on_evaluation: Callable[[dict], None] | None = None) -> dict:
    """Trains per `config` and writes model.keras, history.json and summaries to `model_dir`.

    Checkpoints go to `checkpoints.checkpoint_dir(config)`, summaries also to
    the directories of `run_dirs.tensorboard_dirs(config)`. `on_epoch` and
    `on_evaluation` are the Trainer's hooks (see Trainer).
    """
    config.check()  # Before anything is created: a setting out of range leaves no empty model_dir behind.
    checkpoint_dir = checkpoints.checkpoint_dir(config)
    # Refuses a gs:// directory without a FUSE mount, or a file where a directory goes, before any training.
    for what, directory in [("--model_dir", config.model_dir), ("the checkpoint directory", checkpoint_dir)] + \
            [("the TensorBoard directory", d) for d in run_dirs.tensorboard_dirs(config)]:
        files.check_dir_path(directory, what)
    data = None
    if config.clean and distribution.is_chief():
        # What --clean deletes is checked first: it must not hold the data, and the data must read, so that a
        # mistyped --data_dir fails with the old model still there.
        for flag, directory in (("--model_dir", config.model_dir), ("--checkpoint_dir", checkpoint_dir)):
            if run_dirs.inside(os.path.realpath(config.data_dir), os.path.realpath(directory)):
                raise ValueError(f"--clean: expected a {flag} that does not hold the data, found --data_dir "
                                 f"{config.data_dir} inside {directory}")
        data = inputs.load_data(config)
    # Before model_dir is made: a cluster whose tasks never all start, or a TPU that never answers, ends this
    # process from a watchdog (a wait inside TensorFlow holds the GIL) with nothing left to remove.
    strategy = _strategy(config)
    with files.made_dir(config.model_dir) as made, contextlib.ExitStack() as held:  # Bad data etc. leave none.
        locks = []
        if distribution.is_chief():
            # A second run writing here would mix its checkpoints and model into this one's, and its start-up
            # sweep (or --clean) would delete this one's save in progress: it is refused instead. Locked before
            # anything is deleted; a checkpoint directory of its own is made first so that it can be locked.
            locks.append(held.enter_context(files.only_writer(config.model_dir, "--model_dir")))
            if not run_dirs.inside(checkpoint_dir, config.model_dir):
                made = held.enter_context(files.made_dir(checkpoint_dir)) + made
                locks.append(held.enter_context(files.only_writer(checkpoint_dir, "the checkpoint directory")))
            if config.clean:
                for directory in (config.model_dir, checkpoint_dir):
                    for entry in os.listdir(directory) if os.path.isdir(directory) else []:
                        if entry != files.LOCK_FILE:
                            files.remove(os.path.join(directory, entry))
            _remove_leftovers(config.model_dir, checkpoint_dir)
            checkpoints.repair_state(checkpoint_dir)
        try:
            # Multi-worker: the replicas next meet when the model's first weights are broadcast, a wait with no
            # bound of its own (a peer stuck reading its data left the others waiting for good): bounded here,
            # and what this run made is removed if the bound ends it.
            with distribution.replicas_set_up_within(strategy, config.collective_timeout_seconds,
                                                     [lock for lock in locks if lock] + made):
                trainer = Trainer(config, on_epoch, on_evaluation, data, strategy)
        except PEER_ERRORS as e:  # The replicas first meet when the model's initial weights are broadcast.
            if sum(map(len, distribution.cluster_spec().get("cluster", {}).values())) < 2:
                raise
            raise PeerFailure(f"multi-worker training could not start: {peer_failure(e)} while the replicas set "
                              "up the model; restart every worker") from e
        return trainer.train()


def peer_failure(error: Exception) -> str:
    """What a multi-worker run says about a lost peer: TensorFlow's reason, not its generic first line.

    TensorFlow ends the run when a peer stops sending heartbeats (after about 10 s) or when a collective waits
    longer than --collective_timeout_seconds, whichever comes first.
    """
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", str(error))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # 'The following tasks are unhealthy (stopped sending heartbeats):' names them on the next line.
    lines = [f"{line} {lines[i + 1]}" if line.endswith(":") and i + 1 < len(lines) else line
             for i, line in enumerate(lines)]
    useful = [line for line in lines if not re.fullmatch(r"Graph execution error:?|Detected at node.*|File .*", line)]
    named = [line for line in useful if "/job:" in line or "heartbeat" in line]
    reason = (named or useful or [""])[0]
    return f"a peer died or stopped answering ({type(error).__name__}: {reason[:300]})"


def _remove_leftovers(model_dir: str, checkpoint_dir: str) -> None:
    """Deletes the temporary files a killed run left; they never hold anything a reader needs."""
    for directory in (model_dir, checkpoint_dir):
        # Only the chief writes these directories, and it has not started: whoever wrote a scratch entry is gone.
        files.sweep_leftovers(directory, every_writer=True)
    checkpoints.remove_unfinished(checkpoint_dir)

