"""Adam in one fused kernel per variable, on Keras' public optimizer API.

Keras 3's Adam updates each variable with about ten elementwise operations,
each a pass over memory. TensorFlow's own fused kernel (`ResourceApplyAdam`,
which has CPU, GPU and TPU/XLA implementations) does the same update in one
pass; the saving is measured in benchmarks/results.md.

A gradient that arrives in another dtype than its variable (the dense
kernels' bfloat16 gradients, see model.cast_for_compute) is cast inside the
update: the cast and the kernel are compiled together by XLA, one pass over
memory instead of a cast that writes a float32 copy for the kernel to read.
Where XLA cannot compile (tensorflow-tpu 2.20 off a TPU has no XLA CPU
backend), the cast and the kernel run apart, as they did before.
"""

from __future__ import annotations

import functools

import tensorflow as tf

from mnistkit.model import keras


class FusedAdam(keras.optimizers.Optimizer):
    """Adam whose update is `tf.raw_ops.ResourceApplyAdam`: the maths of keras.optimizers.Adam, one kernel.

    lr * sqrt(1 - beta_2^t) / (1 - beta_1^t) * m / (sqrt(v) + epsilon), with the
    same slot variables (a momentum and a velocity per variable, created in the
    same order). Only public Keras API is used: the optimizer makes its own
    slots in `build` and finds them again by the variable it is given.

    With `nesterov`, the kernel's own Nesterov form (`use_nesterov`, which its
    XLA implementation has too) steps along the momentum one step ahead:
    m is replaced by beta_1 * m + (1 - beta_1) * gradient in the update above.
    Keras' Adam has no such option.
    """

    def __init__(self, learning_rate=0.001, beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-7,
                 nesterov: bool = False, name: str = "fused_adam", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.beta_1, self.beta_2, self.epsilon, self.nesterov = beta_1, beta_2, epsilon, nesterov

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self.momentums, self.velocities = [], []
        self._slot_of = {}
        # Under a tf.distribute strategy, update_step is handed each replica's own component of a
        # variable; every component is listed here, so each replica updates its own copy of the slots.
        strategy = tf.distribute.get_strategy()
        for index, variable in enumerate(var_list):
            self.momentums.append(self.add_variable_from_reference(variable, "momentum"))
            self.velocities.append(self.add_variable_from_reference(variable, "velocity"))
            tensor = variable.value if isinstance(variable, keras.Variable) else variable
            for component in strategy.experimental_local_results(tensor):
                self._slot_of[component.ref()] = index

    def update_step(self, gradient, variable, learning_rate):
        var = variable.value if isinstance(variable, keras.Variable) else variable
        index = self._slot_of.get(var.ref())
        if index is None:
            raise ValueError(f"{variable.name}: expected a variable this optimizer was built with, found another")
        m, v = self.momentums[index].value, self.velocities[index].value
        dtype = var.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        gradient = tf.convert_to_tensor(gradient)
        apply = _apply_adam_casting_gradient if gradient.dtype != dtype and xla_compiles() else _apply_adam
        apply(var.handle, m.handle, v.handle, tf.pow(beta_1, step), tf.pow(beta_2, step),
              tf.cast(learning_rate, dtype), beta_1, beta_2, tf.cast(self.epsilon, dtype), gradient, self.nesterov)

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon,
                "nesterov": self.nesterov}


def _apply_adam(var, m, v, beta1_power, beta2_power, lr, beta1, beta2, epsilon, grad, nesterov: bool):
    """TensorFlow's fused Adam kernel on resource handles, the gradient cast to the variable's dtype."""
    tf.raw_ops.ResourceApplyAdam(var=var, m=m, v=v, beta1_power=beta1_power, beta2_power=beta2_power, lr=lr,
                                 beta1=beta1, beta2=beta2, epsilon=epsilon, grad=tf.cast(grad, beta1.dtype),
                                 use_nesterov=nesterov)


# The same kernel with the cast fused into it: XLA's version of ResourceApplyAdam, the one TPUs run. For the
# 3.2M-weight kernel on the Xeon, a step's casts and update took 5.6-6.0 CPU-ms this way against 7.0-7.6
# with the cast and the CPU kernel apart (a scratch loop of 100 updates); whole steps in benchmarks/results.md.
_apply_adam_casting_gradient = tf.function(_apply_adam, jit_compile=True, autograph=False)


@functools.cache
def xla_compiles() -> bool:
    """Whether XLA compiles on this process's default device: a tiny function is compiled and run once."""
    with tf.init_scope():  # Eagerly, even when asked while a tf.function is being traced.
        try:
            tf.function(lambda x: x + 1.0, jit_compile=True, autograph=False)(tf.constant(1.0)).numpy()
        except tf.errors.OpError:
            return False
    return True
