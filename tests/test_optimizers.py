"""FusedAdam makes the same updates as Keras' Adam, alone and under MirroredStrategy."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train_both(strategy_name: str, steps: int = 5) -> dict:
    """Applies the same gradients with each optimizer to copies of the seed's model; returns how far apart they end.

    The gradients are fixed arrays, not computed from the weights: Adam
    divides by the root of tiny second moments, so a computed gradient turns
    float rounding in one step into visible differences a few steps later.
    """
    import tensorflow as tf

    from mnistkit.model import create_model, keras
    from mnistkit.optimizers import FusedAdam
    from mnistkit.schedules import EpochCosine

    if strategy_name == "mirrored":
        tf.config.set_logical_device_configuration(
            tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    else:
        strategy = tf.distribute.get_strategy()
    rng = np.random.default_rng(0)
    runs, initial, gradients = {}, None, None
    for name, optimizer_class in (("keras", keras.optimizers.Adam), ("fused", FusedAdam)):
        with strategy.scope():
            model = create_model("channels_last")
            optimizer = optimizer_class(EpochCosine(2e-3, steps_per_epoch=steps, warmup_steps=2))
            optimizer.build(model.trainable_variables)  # As the trainer does: slots made in the scope.
        if initial is None:
            initial = [w.copy() for w in model.get_weights()]
            # Gradients over six orders of magnitude, as a real step has.
            gradients = [[(rng.standard_normal(w.shape) * 10.0 ** rng.integers(-6, 0, w.shape)).astype(np.float32)
                          for w in initial] for _ in range(steps)]
        model.set_weights(initial)

        @tf.function
        def apply(grads):
            def replica_fn(grads):
                # Each replica's gradient is `grads` scaled by 1/replicas: their sum, the all-reduced
                # gradient, is `grads` again.
                scale = 1.0 / tf.distribute.get_replica_context().num_replicas_in_sync
                optimizer.apply_gradients(zip([g * scale for g in grads], model.trainable_variables))
            strategy.run(replica_fn, args=(grads,))

        for grads in gradients:
            apply([tf.constant(g) for g in grads])
        replicas = [getattr(v.value, "values", (v.value,)) for v in model.trainable_variables]
        runs[name] = {"weights": model.get_weights(), "slots": [v.numpy() for v in optimizer.variables],
                      "iterations": int(optimizer.iterations.numpy()), "replicas": len(replicas[0]),
                      "replicas_diff": max(float(np.abs(c.numpy() - r[0].numpy()).max()) for r in replicas for c in r)}
    keras_run, fused_run = runs["keras"], runs["fused"]
    return {
        "iterations": [keras_run["iterations"], fused_run["iterations"]],
        "replicas": fused_run["replicas"],
        "replicas_diff": fused_run["replicas_diff"],  # Every replica's copy of every weight alike.
        "moved": float(max(np.abs(a - b).max() for a, b in zip(keras_run["weights"], initial))),
        "weights_diff": float(max(np.abs(a - b).max() for a, b in zip(keras_run["weights"], fused_run["weights"]))),
        # Relative to each slot's own scale: Adam's second moments are tiny.
        "slots_rel_diff": float(max(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30)
                                    for a, b in zip(keras_run["slots"], fused_run["slots"]))),
    }


def _check(result: dict, replicas: int) -> None:
    assert result["iterations"] == [5, 5]
    assert result["replicas"] == replicas
    assert result["replicas_diff"] == 0.0
    assert result["moved"] > 1e-3  # The weights did change, so equal weights mean equal updates.
    # Equal up to float rounding.
    assert result["weights_diff"] < 1e-4 * result["moved"], result
    assert result["slots_rel_diff"] < 1e-4, result


def test_fused_adam_matches_keras_adam():
    _check(_train_both("default"), replicas=1)


@pytest.mark.timeout(300)
def test_fused_adam_matches_keras_adam_under_mirrored_strategy():
    # Two logical CPUs must be set up before TensorFlow starts: a fresh process.
    code = "import json, sys; from tests import test_optimizers as t; print(json.dumps(t._train_both('mirrored')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=280)
    assert out.returncode == 0, out.stderr[-3000:]
    _check(json.loads(out.stdout.strip().splitlines()[-1]), replicas=2)


def _nesterov_adam_reference(initial, gradients, lr, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
    """Adam's Nesterov form written out in NumPy: the update uses beta_1 * m + (1 - beta_1) * g for m."""
    var, m, v = initial.astype(np.float64), np.zeros_like(initial, np.float64), np.zeros_like(initial, np.float64)
    for t, g in enumerate(gradients, start=1):
        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g * g
        lr_t = lr * np.sqrt(1 - beta_2 ** t) / (1 - beta_1 ** t)
        var = var - lr_t * (beta_1 * m + (1 - beta_1) * g) / (np.sqrt(v) + epsilon)
    return var


@pytest.mark.parametrize("jit_compile", [False, True], ids=["kernel", "xla"])
def test_fused_adam_nesterov_follows_its_formula(jit_compile):
    # XLA's kernel is what runs on TPUs; here it runs on the CPU, a stand-in for that path.
    import tensorflow as tf

    from mnistkit.model import keras
    from mnistkit.optimizers import FusedAdam

    rng = np.random.default_rng(1)
    initial = rng.standard_normal((64, 32)).astype(np.float32)
    gradients = [(rng.standard_normal(initial.shape) * 10.0 ** rng.integers(-4, 0, initial.shape)).astype(np.float32)
                 for _ in range(4)]
    finals = {}
    for nesterov in (False, True):
        variable = keras.Variable(initial)
        optimizer = FusedAdam(1e-2, beta_2=0.95, nesterov=nesterov)  # The fast recipe's beta_2.
        optimizer.build([variable])
        apply = tf.function(lambda g: optimizer.apply_gradients([(g, variable)]), jit_compile=jit_compile)
        for g in gradients:
            apply(tf.constant(g))
        finals[nesterov] = variable.numpy()
    expected = _nesterov_adam_reference(initial, gradients, 1e-2, beta_2=0.95)
    moved = np.abs(expected - initial).max()
    assert np.abs(finals[True] - expected).max() < 1e-4 * moved
    # The plain form ends elsewhere, so the check above tells the two apart.
    assert np.abs(finals[False] - expected).max() > 1e-2 * moved
    # So does the default beta_2, so the kernel was given the one asked for.
    assert np.abs(_nesterov_adam_reference(initial, gradients, 1e-2) - expected).max() > 1e-2 * moved
    restored = FusedAdam.from_config(FusedAdam(beta_2=0.95, nesterov=True).get_config())
    assert restored.nesterov and restored.beta_2 == 0.95


@pytest.mark.parametrize("xla", [True, False], ids=["xla", "no-xla"])
@pytest.mark.parametrize("nesterov", [False, True])
def test_fused_adam_casts_a_bfloat16_gradient_inside_an_xla_update(nesterov, xla, monkeypatch):
    """A bfloat16 gradient for a float32 weight (a dense kernel's, model.cast_for_compute) updates it as the same
    values in float32 do, through the XLA-compiled update that casts it; a float32 gradient never goes there, nor
    any gradient where XLA cannot compile (tensorflow-tpu off a TPU, which tests/test_images.py runs for real;
    here xla_compiles is replaced to say so)."""
    import tensorflow as tf

    from mnistkit import optimizers
    from mnistkit.model import keras

    assert optimizers.xla_compiles()  # This TensorFlow can, so "no-xla" is the replacement's doing.
    if not xla:
        monkeypatch.setattr(optimizers, "xla_compiles", lambda: False)

    rng = np.random.default_rng(2)
    initial = rng.standard_normal((64, 32)).astype(np.float32)
    # Values bfloat16 holds exactly, so both runs are given the same gradients.
    gradients = [tf.cast(tf.constant(rng.standard_normal(initial.shape) * 10.0 ** rng.integers(-4, 0, initial.shape),
                                     tf.bfloat16), tf.float32) for _ in range(4)]
    finals, xla_traces = {}, {}
    for dtype in (tf.float32, tf.bfloat16):
        variable = keras.Variable(initial)
        optimizer = optimizers.FusedAdam(1e-2, beta_2=0.95, nesterov=nesterov)
        optimizer.build([variable])
        apply = tf.function(lambda g: optimizer.apply_gradients([(g, variable)]))
        before = optimizers._apply_adam_casting_gradient.experimental_get_tracing_count()
        for g in gradients:
            apply(tf.cast(g, dtype))
        xla_traces[dtype] = optimizers._apply_adam_casting_gradient.experimental_get_tracing_count() - before
        finals[dtype] = variable.numpy()
    moved = np.abs(finals[tf.float32] - initial).max()
    assert moved > 1e-3
    np.testing.assert_allclose(finals[tf.bfloat16], finals[tf.float32], rtol=0, atol=1e-5 * moved)
    assert xla_traces[tf.float32] == 0 and (xla_traces[tf.bfloat16] >= 1) == xla, xla_traces
