"""The CNN of tensorflow/models official/r1/mnist, in Keras 3."""

from __future__ import annotations

import tensorflow as tf

keras = tf.keras

NUM_PARAMETERS = 3_274_634
# The training split's pixel mean and standard deviation, pixels scaled to [0, 1], as `mnist-validate`
# reports them.
PIXEL_MEAN, PIXEL_STD = 0.1307, 0.3081
NORMALIZE_LAYER = "normalize_inputs"  # The name of the layer that standardizes them, when there is one.


def default_data_format() -> str:
    """channels_first where a GPU is present (faster with cuDNN), else channels_last, as the seed chose."""
    return "channels_first" if tf.config.list_physical_devices("GPU") else "channels_last"


def cast_for_compute(weight, dtype):
    """A float32 weight in the compute `dtype`, its gradient left in `dtype` when nothing is distributed.

    tf.cast's gradient is the incoming gradient cast back to float32. For the
    3.2M-weight dense kernel in mixed_bfloat16 that is a pass that reads 6.4 MB
    and writes 12.8 MB every step, and then Adam reads the 12.8 MB again. Left
    in bfloat16, the gradient reaches FusedAdam, which casts it inside the
    update itself (mnistkit/optimizers.py). The values are the same: the
    bfloat16 gradient is exactly what tf.cast's gradient would have cast. Under
    a tf.distribute strategy the gradients are summed across replicas first,
    and a sum in bfloat16 would round, so there the gradient is float32 as
    with tf.cast.
    """
    weight = tf.convert_to_tensor(weight)
    if weight.dtype == dtype:
        return weight

    @tf.custom_gradient
    def cast(x):
        def gradient(grad):
            return tf.cast(grad, x.dtype) if tf.distribute.has_strategy() else grad
        return tf.cast(x, dtype), gradient

    return cast(weight)


@tf.custom_gradient
def bias_add(x, bias):
    """tf.nn.bias_add, whose gradient for the bias is a reduce_sum over every axis but the last.

    TensorFlow's own gradient, BiasAddGrad, sums a bfloat16 gradient in
    bfloat16 on the CPU: for 160 rows of the dense layer's gradient it was
    off by 11 units in the last place on average (a scratch check). reduce_sum
    sums in float32 and rounds once, and made training steps about 3% cheaper
    on the Xeon (figures in benchmarks/results.md). The forward pass is the same
    op, which grappler still fuses with the matmul and the ReLU.
    """
    def gradient(grad):
        return grad, tf.reduce_sum(tf.reshape(grad, [-1, grad.shape[-1]]), axis=0)

    return tf.nn.bias_add(x, bias), gradient


@keras.utils.register_keras_serializable("mnistkit")
class TransposedDense(keras.layers.Layer):
    """A dense layer, `activation(x @ kernel.T + bias)`, whose kernel is stored [units, inputs].

    The same maths and initializer as `keras.layers.Dense`, which stores
    [inputs, units]. On CPU, oneDNN multiplies by a transposed right-hand
    matrix much faster at this model's shapes (x [batch, 3136] times the
    [3136, 1024] kernel), which made whole training steps faster; the figures
    are in docs/performance.md. GPUs and TPUs handle either
    layout alike.
    """

    def __init__(self, units: int, activation=None, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.activation = keras.activations.get(activation)

    def build(self, input_shape):
        # Glorot's limit depends on fan_in + fan_out only, so the transposed shape draws from the same range.
        # autocast=False: `call` casts the kernel itself, with cast_for_compute.
        self.kernel = self.add_weight(name="kernel", shape=(self.units, input_shape[-1]),
                                      initializer="glorot_uniform", autocast=False)
        self.bias = self.add_weight(name="bias", shape=(self.units,), initializer="zeros")

    def call(self, inputs):
        kernel = cast_for_compute(self.kernel.value, self.compute_dtype)
        bias = tf.cast(self.bias, self.compute_dtype)
        return self.activation(bias_add(tf.matmul(inputs, kernel, transpose_b=True), bias))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        return {**super().get_config(), "units": self.units,
                "activation": keras.activations.serialize(self.activation)}


def create_model(data_format: str | None = None, dtype_policy: str = "float32",
                 normalize_inputs: bool = False) -> keras.Model:
    """Builds the seed's model: takes float32 images [N, 28, 28] in [0, 1], returns logits [N, 10].

    Args:
      data_format: 'channels_first' or 'channels_last'; None picks by hardware.
      dtype_policy: 'float32', or 'mixed_bfloat16' to compute in bfloat16 with
        float32 weights. Logits are float32 either way.
      normalize_inputs: Standardize the pixels first ((x - PIXEL_MEAN) / PIXEL_STD), a layer without
        weights. Inputs centred on zero with unit spread train faster than pixels in [0, 1]; the layer is
        part of the model, so a saved or exported model still takes [0, 1] pixels.
    """
    data_format = data_format or default_data_format()
    if data_format not in ("channels_first", "channels_last"):
        raise ValueError(f"data_format: expected 'channels_first' or 'channels_last', found {data_format!r}")
    image_shape = (1, 28, 28) if data_format == "channels_first" else (28, 28, 1)
    conv = dict(kernel_size=5, padding="same", data_format=data_format, dtype=dtype_policy)
    pool = dict(pool_size=2, strides=2, padding="same", data_format=data_format, dtype=dtype_policy)
    layers = [keras.Input((28, 28), name="image")]
    if normalize_inputs:
        layers.append(keras.layers.Rescaling(1 / PIXEL_STD, offset=-PIXEL_MEAN / PIXEL_STD, dtype=dtype_policy,
                                             name=NORMALIZE_LAYER))
    layers += [
        keras.layers.Reshape(image_shape, dtype=dtype_policy),
        # The seed's conv-ReLU-pool, with the ReLU moved after the pool. That is the same function (ReLU
        # never reorders values, so max(relu(x)) = relu(max(x))) with the same gradients, but the gradient
        # pass runs ReLU on a quarter of the values, which made each training step faster on CPU (figures in
        # benchmarks/results.md).
        keras.layers.Conv2D(32, **conv),
        keras.layers.MaxPooling2D(**pool),
        keras.layers.ReLU(dtype=dtype_policy),
        keras.layers.Conv2D(64, **conv),
        keras.layers.MaxPooling2D(**pool),
        keras.layers.ReLU(dtype=dtype_policy),
        keras.layers.Flatten(data_format=data_format, dtype=dtype_policy),
        TransposedDense(1024, activation="relu", dtype=dtype_policy),
        keras.layers.Dropout(0.4, dtype=dtype_policy),
        TransposedDense(10, dtype=dtype_policy),
        # Softmax and the loss want float32 whatever the compute precision.
        keras.layers.Activation("linear", dtype="float32", name="logits"),
    ]
    return keras.Sequential(layers, name="mnist_cnn")


def normalizes_inputs(model: keras.Model) -> bool:
    """Whether `model` was built with normalize_inputs (its first layer standardizes the pixels)."""
    return any(layer.name == NORMALIZE_LAYER for layer in model.layers)


def for_inference(model: keras.Model) -> keras.Model:
    """A float32 channels_last copy of a trained model, for serving on any CPU.

    TensorFlow's CPU kernels do not run NCHW convolutions, and bfloat16 buys
    little at batch 1, so a model trained channels_first on a GPU or in mixed
    precision is rebuilt before it is evaluated or exported. The weights carry
    over unchanged: Keras' Flatten already orders features channels_last in
    both formats, and mixed precision keeps float32 weights.
    """
    copy = create_model("channels_last", "float32", normalizes_inputs(model))
    copy.set_weights(model.get_weights())
    return copy
