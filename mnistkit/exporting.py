"""Exporting a trained model as a SavedModel with the seed's `classify` signature."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import time

import tensorflow as tf

from mnistkit import files
from mnistkit.failures import disk_errors
from mnistkit.model import for_inference
from mnistkit.models_io import load_model

SIGNATURE = "classify"
_LAST_VERSION = 2**63 - 1  # The highest version number TF Serving can read (int64).


class _Serving(tf.Module):
    """The SavedModel's root: the model's weights, and the signature that runs the model on them."""

    def __init__(self, model):
        super().__init__()
        # The tf.Variables themselves: the SavedModel's own saver restores them, which `saved_model_cli run` and
        # TF Serving (Vertex AI's prebuilt prediction image) rely on. The Keras model is not an attribute, so its
        # Keras variables are not saved beside them: that wrote every weight twice (26 MB instead of 13).
        self.weights = [v.value for v in model.variables]

        @tf.function(input_signature=[tf.TensorSpec([None, 28, 28], tf.float32, name="image")])
        def classify(image):
            # Pixels outside [0, 1] (left in 0-255, NaN, infinite) gave confident classes and NaN or saturated
            # probabilities: refused instead, in a message the caller sees (saved_model_cli, TF Serving's reply).
            outside = tf.logical_not((image >= 0.0) & (image <= 1.0))  # NaN compares false with both.
            bad = tf.boolean_mask(image, outside)
            checked = tf.debugging.Assert(tf.logical_not(tf.reduce_any(outside)), [
                "image: expected pixels in [0, 1] (0-255 values divided by 255), found", tf.size(bad),
                "pixels outside it, such as", bad[:3]], summarize=3, name="image_in_range")
            with tf.control_dependencies([checked]):
                image = tf.identity(image)
            # An empty batch gets empty answers without running the model: TensorFlow's oneDNN convolutions on the
            # CPU (2.15, which Vertex AI's prediction image runs, to 2.21) fail on a batch of 0 ("input depth must
            # be evenly divisible by filter depth").
            logits = tf.cond(tf.shape(image)[0] > 0, lambda: tf.cast(model(image, training=False), tf.float32),
                             lambda: tf.zeros([0, 10], tf.float32))
            return {"classes": tf.argmax(logits, axis=1), "probabilities": tf.nn.softmax(logits)}

        self.classify = classify


def export(model_dir: str, export_dir: str, sole_writer: bool = False) -> str:
    """Writes the model in `model_dir` as a SavedModel to `export_dir/<timestamp>`.

    With `sole_writer` (a pipeline step's own output, which holds one
    version), whatever an earlier attempt left in `export_dir` is removed
    first, on whichever host it ran: a retried step ends with one version.

    The signatures `classify` and `serving_default` take `image` float32
    [None, 28, 28] in [0, 1] (refusing pixels outside it) and return `classes` int64 [None] and
    `probabilities` float32 [None, 10]. The SavedModel is written beside its
    final place and renamed into it, so a reader never sees half of one.
    Where directories cannot be renamed (Cloud Storage FUSE on Vertex AI),
    its files are moved in one by one with saved_model.pb last: a directory
    without saved_model.pb is one still being moved, which TensorFlow's
    loaders and TF Serving do not take for a SavedModel.

    Returns:
      The path of the new SavedModel.
    """
    if not export_dir.strip():  # A path of spaces would make a directory named " " in the working directory.
        raise ValueError(f"export_dir: expected a directory to export into, found {export_dir!r}")
    if os.path.exists(export_dir) and not os.path.isdir(export_dir):
        raise ValueError(f"{export_dir}: expected a directory to export into, found a file")
    module = _Serving(for_inference(load_model(model_dir)))
    with contextlib.ExitStack() as stack:
        try:
            # A failed export removes the export directory again if it made it, and only then.
            stack.enter_context(files.made_dir(export_dir))
        except OSError as e:  # A parent that is a file, a read-only file system, no permission.
            raise PermissionError(f"{export_dir}: expected a writable export directory, found that it cannot be "
                                  f"created ({e.strerror})") from e
        if not os.access(export_dir, os.W_OK):
            raise PermissionError(f"{export_dir}: expected a writable export directory, found that this user may not "
                                  "write there (its permissions, or a read-only file system)")
        if sole_writer:
            for entry in os.listdir(export_dir):
                files.remove(os.path.join(export_dir, entry))
        # Before the sweep: a half-moved version is known as such only while its dead writer's scratch is there.
        _remove_unfinished_moves(export_dir)
        files.sweep_leftovers(export_dir)
        # Newer than every version there, even with this host's clock behind the one that wrote them: TF Serving
        # and every "newest version" reader take the highest number.
        versions = [int(e) for e in os.listdir(export_dir) if re.fullmatch("[0-9]+", e)]
        if versions and max(versions) >= _LAST_VERSION:
            # The next would be past what TF Serving reads a version as (int64): a version it never serves.
            raise ValueError(f"{export_dir}: expected version directories below {_LAST_VERSION} (TF Serving reads "
                             f"a version as a 64-bit integer), found {max(versions)}; remove it or export elsewhere")
        stamp = max([int(time.time())] + [v + 1 for v in versions])
        # Named after its writer, so a later export can tell a killed writer's leftovers from a live one's work.
        partial = files.scratch_path(export_dir, str(stamp))
        try:
            # TensorFlow reports a full disk as ResourceExhaustedError: one line naming the directory instead.
            with disk_errors(export_dir):
                tf.saved_model.save(module, partial, signatures={SIGNATURE: module.classify,
                                                                 "serving_default": module.classify})
                while True:
                    final = os.path.join(export_dir, str(stamp))
                    try:
                        # TensorFlow itself renames only files while saving (seen with strace: variables_temp/
                        # is filled, its files renamed out, then removed), so this is the one directory rename.
                        files.replace_dir(partial, final, last=tf.saved_model.SAVED_MODEL_FILENAME_PB)
                        break
                    except OSError as e:
                        # Another export into the same directory took this second first: the next one.
                        if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                            raise
                        stamp += 1
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return final


def _remove_unfinished_moves(export_dir: str) -> None:
    """Deletes the versions whose file-by-file move (files.replace_dir) a killed export left half done.

    Such a version `<stamp>` has no saved_model.pb yet, and beside it is its
    dead writer's scratch `.tmp-<host>@<pid>-...-<stamp>`, which lives until
    its last file is moved out. Any other directory, digit-named or not, may be
    the user's and stays. The version goes before its scratch, so a sweep
    killed in between still finds the pair the next time.
    """
    for entry in os.listdir(export_dir):
        stamp = entry.rpartition("-")[2]
        version = os.path.join(export_dir, stamp)
        if (stamp.isdigit() and files.dead_writers_entry(entry) and os.path.isdir(version)
                and not os.path.exists(os.path.join(version, tf.saved_model.SAVED_MODEL_FILENAME_PB))):
            shutil.rmtree(version, ignore_errors=True)
