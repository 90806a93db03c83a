"""The float model: a Keras MNIST classifier, trained to the same bytes on any x86-64 CPU.

    dense (default): Input 28x28x1 (pixels/255) -> Flatten -> Dense(h, act) [-> Dropout] ... -> Dense(10)
    cnn: Input 28x28x1 -> [Conv2D(f, k x k) -> BatchNorm -> ReLU (-> MaxPool 2x2)] per entry of `conv`
         -> Flatten -> [Dense(h, act) -> Dropout] per entry of `head` -> Dense(10)

The CNN's default is the network of Hailo's public Hailo-8 MNIST example (xmihol00/hailo8_NN_acceleration
`MNIST_CNN/model.py`): conv [8, 16, 16], 3x3, the first `same` and the others `valid`, a 2x2 max
pool after every block but the last, no hidden Dense layer (`cnn_blocks`).  The output layer is
linear (logits); softmax is left to the host, as Hailo users do with `logits_layer(..., softmax, cpu)`.

Same bytes on any CPU.  TensorFlow's float32 matrix products are not: their kernels (oneDNN's
sgemm inside Eigen's contraction) pick the instruction set at run time and split the inner
dimension by the CPU's cache sizes and the thread count, so the last bits of every product, hence
the trained weights, change from one machine to another.  So every Dense layer trains as
`ExactDense`: its three products (forward, input gradient, weight gradient; the bias gradient
too) put both operands on power-of-two fixed-point grids and sum them in float64 exactly, the
derivation of `quantization.arithmetic.exact_dot` (each operand keeps >= 21 significant bits of
its largest entry, about float32's 24), so any kernel, blocking and thread count gives the same
result.  What remains is elementwise or a reduction whose order TensorFlow fixes (op determinism,
`keras.utils.set_random_seed`, a pinned thread pool); `pin_cpu()` also pins oneDNN to AVX2 for
any op still routed through it.  The cost is about 2x the training time of float32 Dense layers.
The CNN trains the same way: `ExactConv2D` puts its input (padded for `same`) and kernel on the
grids of that product, for the number of products each output sums, and runs TensorFlow's float64
convolution and its two gradient convolutions on them (every partial sum an integer below 2^52,
hence exact in any order), and `ExactBatchNorm` sums its batch
statistics and their gradients on a fixed-point grid (exact in float64) and uses only correctly
rounded operations (TensorFlow's `rsqrt`, which `keras.layers.BatchNormalization` uses, is an
approximation whose last bits differ between CPU vendors).  Trained, the weights are copied into a
plain Keras model of `keras.layers.Dense` (`Conv2D`, `BatchNormalization`), which is what is exported.

Exports: `model.h5` (Keras, byte-stable unlike `.keras`, which embeds a date) and `model.tflite`
(float32), which is what Hailo's parser reads and what the parse stage reads.  For the TFLite file
each BatchNorm is first folded into the Conv2D before it in numpy (`fold_batchnorm`: scale = gamma /
sqrt(var + eps), correctly rounded float32), for the converter's own fold computes with that
approximate `rsqrt`; the converter fuses the ReLU into the CONV_2D as it would have.  This is the
only module that imports TensorFlow/Keras, and only inside its functions.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hailopipe.fileio import write_bytes

log = logging.getLogger(__name__)


ARCHS = ("dense", "cnn")
INPUT_SHAPE = (28, 28, 1)


@dataclass(frozen=True)
class TrainConfig:
    hidden: tuple[int, ...] = (256, 128)  # dense: the hidden Dense layers
    activation: str = "relu"
    dropout: float = 0.2  # after each hidden Dense layer
    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 1e-3
    seed: int = 42
    arch: str = "dense"  # dense | cnn
    conv: tuple[int, ...] = (8, 16, 16)  # cnn: filters of each Conv2D -> BatchNorm -> ReLU block
    kernel: int = 3  # cnn: every Conv2D's kernel is kernel x kernel
    head: tuple[int, ...] = ()  # cnn: hidden Dense layers between the Flatten and the output


def cnn_blocks(conv, kernel: int, size: int = INPUT_SHAPE[0]) -> list[tuple[int, str, bool]]:
    """(filters, padding, max pool after it) of each CNN block, as in Hailo's MNIST example: the
    first `same`, the others `valid`, a 2x2 max pool after every block but the last.  ValueError
    (one line) if the image becomes smaller than the kernel."""
    blocks = []
    for i, filters in enumerate(conv):
        padding, pool = ("same" if i == 0 else "valid"), i < len(conv) - 1
        size = size if padding == "same" else size - kernel + 1
        if size < 1 or (pool and size < 2):
            raise ValueError(f"block {i + 1} of {len(conv)} leaves no pixel of the 28x28 image with a "
                             f"{kernel}x{kernel} kernel")
        size = size // 2 if pool else size
        blocks.append((int(filters), padding, pool))
    return blocks


# What decides the float arithmetic, pinned before TensorFlow is imported (`pin_cpu`): oneDNN's
# instruction set (AVX2: every CPU TensorFlow's x86-64 wheels support has it), oneDNN's graph
# rewrites off, and the thread pools' sizes (fixed, whatever the machine's core count).
PINNED_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "TF_ENABLE_ONEDNN_OPTS": "0"}
THREADS = 2


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def pin_cpu() -> None:
    """Pin the environment that decides TensorFlow's float arithmetic; call before importing it."""
    import sys

    if "tensorflow" in sys.modules:
        raise RuntimeError("pin_cpu() must run before TensorFlow is imported")
    os.environ.update(PINNED_ENV)
    _quiet_tensorflow()


def _exact_ops():
    """exact_matmul, ExactDense, ExactConv2D and ExactBatchNorm (module docstring), built on first
    use (they need TensorFlow)."""
    import keras
    import tensorflow as tf

    def exponent(m):
        """frexp's exponent of a float64 scalar m >= 0 (m = f 2^e, f in [0.5, 1)); 0 for m = 0."""
        e = tf.bitwise.bitwise_and(tf.bitwise.right_shift(tf.bitcast(m, tf.int64), 52), 0x7FF) - 1022
        return tf.where(m > 0, e, tf.zeros_like(e))

    def pow2(n):
        """2^n, exactly, as float64 (n an int64 in the normal range)."""
        return tf.bitcast(tf.bitwise.left_shift(n + 1023, 52), tf.float64)

    def top(t):
        """exponent(max |t|): every |entry| of t is below 2^top(t)."""
        return exponent(tf.reduce_max(tf.abs(t)))

    def grid(t, bits, e=None):
        """(round(t 2^s), 2^s) with every |entry| below 2^bits: s = bits - top(t), or bits - e where
        the caller has top(t) already (one tensor on several grids reads its maximum once)."""
        scale = pow2(bits - (top(t) if e is None else e))
        return tf.round(t * scale), scale

    def room(count):
        """The bits of the gridded operands when `count` products (or values) are summed: each sum
        stays below 2^52 (count < 2^exponent(count))."""
        return 52 - exponent(tf.cast(count, tf.float64))

    def exact_matmul(a, b):
        """a @ b in float64, exactly as `arithmetic.exact_dot`: K max|a_int| max|b_int| < 2^52."""
        r = room(tf.shape(a)[-1])
        a_int, s_a = grid(a, r - r // 2)
        b_int, s_b = grid(b, r // 2)
        return tf.matmul(a_int, b_int) / (s_a * s_b)

    def exact_colsum(t, e=None):
        """The column sums of float64 [M, C] `t` on one grid, exact: M max|t_int| < 2^52."""
        t_int, scale = grid(t, room(tf.shape(t)[0]), e)
        return tf.reduce_sum(t_int, axis=0) / scale

    def affine(x, w, b):
        """x @ w + b, its products (and their gradients) exact_matmul; w and b are read first (a
        custom gradient must not read variables itself, which eager mode refuses)."""
        return _affine(x, tf.identity(w), tf.identity(b))

    def _forward(x, w, b):
        x64, w64 = tf.cast(x, tf.float64), tf.cast(w, tf.float64)
        return x64, w64, tf.cast(exact_matmul(x64, w64) + tf.cast(b, tf.float64), tf.float32)

    @tf.custom_gradient
    def _affine(x, w, b):
        x64, w64, y = _forward(x, w, b)

        def grad(dy):
            dy64 = tf.cast(dy, tf.float64)
            ones = tf.ones([1, tf.shape(dy64)[0]], tf.float64)
            return (tf.cast(exact_matmul(dy64, tf.transpose(w64)), tf.float32),
                    tf.cast(exact_matmul(tf.transpose(x64), dy64), tf.float32),
                    tf.cast(exact_matmul(ones, dy64)[0], tf.float32))

        return y, grad

    class ExactDense(keras.layers.Layer):
        """keras.layers.Dense whose products (and their gradients) are exact_matmul."""

        def __init__(self, units, activation=None, **kwargs):
            super().__init__(**kwargs)
            self.units, self.activation = units, keras.activations.get(activation)

        def build(self, input_shape):
            self.kernel = self.add_weight(shape=(input_shape[-1], self.units), initializer="glorot_uniform",
                                          name="kernel")
            self.bias = self.add_weight(shape=(self.units,), initializer="zeros", name="bias")

        def call(self, x):
            return self.activation(affine(x, self.kernel, self.bias))

    @tf.custom_gradient
    def _conv(x, w, b):
        """VALID stride-1 conv of the padded NHWC `x` by `w` [k, k, cin, cout] + b, its three products
        (and their gradients) on integer grids in float64 (exact_matmul's bound, for the number of
        products each output sums: k k cin forward, k k cout for dx, N Ho Wo for dw and db), so
        TensorFlow's convolution kernels, whatever their blocking, give the one exact result."""
        k, _, _, cout = w.shape
        x64, w64 = tf.cast(x, tf.float64), tf.cast(w, tf.float64)
        r, e_x, e_w = room(k * k * w.shape[2]), top(x64), top(w64)
        x_int, s_x = grid(x64, r - r // 2, e_x)
        w_int, s_w = grid(w64, r // 2, e_w)
        y = tf.cast(tf.nn.conv2d(x_int, w_int, 1, "VALID") / (s_x * s_w) + tf.cast(b, tf.float64), tf.float32)

        def grad(dy):
            dy64 = tf.cast(dy, tf.float64)
            e_d = top(dy64)
            r1 = room(k * k * cout)
            d_int, s_d = grid(dy64, r1 - r1 // 2, e_d)
            w1_int, s_w1 = grid(w64, r1 // 2, e_w)
            dx = tf.nn.conv2d_transpose(d_int, w1_int, tf.shape(x), 1, "VALID") / (s_d * s_w1)
            r2 = room(tf.size(dy) // cout)
            d2_int, s_d2 = grid(dy64, r2 - r2 // 2, e_d)
            x2_int, s_x2 = grid(x64, r2 // 2, e_x)
            dw = tf.compat.v1.nn.conv2d_backprop_filter(x2_int, tf.shape(w), d2_int, [1, 1, 1, 1], "VALID")
            return (tf.cast(dx, tf.float32), tf.cast(dw / (s_d2 * s_x2), tf.float32),
                    tf.cast(exact_colsum(tf.reshape(dy64, [-1, cout]), e_d), tf.float32))

        return y, grad

    class ExactConv2D(keras.layers.Layer):
        """keras.layers.Conv2D (stride 1, `same` or `valid`, square kernel) through `_conv`."""

        def __init__(self, filters, kernel_size, padding="valid", **kwargs):
            super().__init__(**kwargs)
            self.filters, self.size, self.padding = filters, kernel_size, padding

        def build(self, input_shape):
            self.cin = int(input_shape[-1])
            self.kernel = self.add_weight(shape=(self.size, self.size, self.cin, self.filters),
                                          initializer="glorot_uniform", name="kernel")
            self.bias = self.add_weight(shape=(self.filters,), initializer="zeros", name="bias")

        def call(self, x):
            k = self.size
            if self.padding == "same":  # TensorFlow's SAME at stride 1: the odd pixel at the end
                x = tf.pad(x, [[0, 0], [(k - 1) // 2, k // 2], [(k - 1) // 2, k // 2], [0, 0]])
            return _conv(x, tf.identity(self.kernel), tf.identity(self.bias))

    class ExactBatchNorm(keras.layers.Layer):
        """keras.layers.BatchNormalization (last axis; its weights, momentum and epsilon) whose batch
        statistics and gradients are exact sums and whose other operations are correctly rounded."""

        def __init__(self, momentum=0.99, epsilon=1e-3, **kwargs):
            super().__init__(**kwargs)
            self.momentum, self.epsilon = momentum, epsilon

        def build(self, input_shape):
            c = (int(input_shape[-1]),)
            self.gamma = self.add_weight(shape=c, initializer="ones", name="gamma")
            self.beta = self.add_weight(shape=c, initializer="zeros", name="beta")
            self.moving_mean = self.add_weight(shape=c, initializer="zeros", name="moving_mean", trainable=False)
            self.moving_variance = self.add_weight(shape=c, initializer="ones", name="moving_variance",
                                                   trainable=False)

        @staticmethod
        def moments(x2):
            """(mean, x2 - mean, variance) of float64 [M, C] `x2` per column (the biased variance)."""
            m = tf.cast(tf.shape(x2)[0], tf.float64)
            mean = exact_colsum(x2) / m
            centred = x2 - mean
            return mean, centred, exact_colsum(centred * centred) / m

        def call(self, x, training=None):
            if not training:
                return (x - self.moving_mean) / tf.sqrt(self.moving_variance + self.epsilon) * self.gamma + self.beta
            eps, shape, channels = tf.constant(self.epsilon, tf.float64), tf.shape(x), x.shape[-1]

            x2 = tf.reshape(tf.cast(tf.stop_gradient(x), tf.float64), [-1, channels])
            mean, centred, var = self.moments(x2)  # once: for the output and the moving statistics
            inv = 1.0 / tf.sqrt(var + eps)
            xhat = centred * inv

            @tf.custom_gradient
            def normalize(x, gamma, beta):  # x's gradient is grad's: xhat above holds no path to it
                g64 = tf.cast(gamma, tf.float64)
                y = tf.reshape(tf.cast(xhat * g64 + tf.cast(beta, tf.float64), tf.float32), shape)

                def grad(dy):
                    dy2 = tf.reshape(tf.cast(dy, tf.float64), [-1, channels])
                    m = tf.cast(tf.shape(dy2)[0], tf.float64)
                    dbeta, dgamma = exact_colsum(dy2), exact_colsum(dy2 * xhat)
                    dx = (g64 * inv) * (dy2 - dbeta / m - xhat * (dgamma / m))
                    return (tf.reshape(tf.cast(dx, tf.float32), shape), tf.cast(dgamma, tf.float32),
                            tf.cast(dbeta, tf.float32))

                return y, grad

            keep = 1 - self.momentum
            self.moving_mean.assign(self.moving_mean * self.momentum + tf.cast(mean, tf.float32) * keep)
            self.moving_variance.assign(self.moving_variance * self.momentum + tf.cast(var, tf.float32) * keep)
            return normalize(x, tf.identity(self.gamma), tf.identity(self.beta))

    return exact_matmul, ExactDense, ExactConv2D, ExactBatchNorm


def build(cfg: TrainConfig, num_classes: int = 10, exact: bool = False):
    """The Keras model described in the module docstring, uncompiled: of `keras.layers.Dense` (and
    Conv2D, BatchNormalization), or with `exact` of ExactDense (ExactConv2D, ExactBatchNorm): the
    same layers and weights, trained to the same bits anywhere."""
    import keras

    if cfg.arch == "cnn":
        return _build_cnn(cfg, num_classes, exact)
    dense = _exact_ops()[1] if exact else keras.layers.Dense
    layers = [keras.Input((28, 28, 1), name="input"), keras.layers.Flatten(name="flatten")]
    for i, units in enumerate(cfg.hidden, start=1):
        layers.append(dense(units, activation=cfg.activation, name=f"dense{i}"))
        if cfg.dropout > 0:
            layers.append(keras.layers.Dropout(cfg.dropout, name=f"dropout{i}"))
    layers.append(dense(num_classes, name=f"dense{len(cfg.hidden) + 1}"))
    return keras.Sequential(layers, name="mnist_dense")


def _build_cnn(cfg: TrainConfig, num_classes: int, exact: bool):
    """The CNN, its layers named as Hailo's MNIST example names them (conv1, bn1, relu1, maxpool1, ...)."""
    import keras

    if exact:
        _, dense, conv, norm = _exact_ops()
    else:
        dense, conv, norm = keras.layers.Dense, keras.layers.Conv2D, keras.layers.BatchNormalization
    layers = [keras.Input(INPUT_SHAPE, name="input")]
    for i, (filters, padding, pool) in enumerate(cnn_blocks(cfg.conv, cfg.kernel), start=1):
        layers += [conv(filters, cfg.kernel, padding=padding, name=f"conv{i}"), norm(name=f"bn{i}"),
                   keras.layers.Activation(cfg.activation, name=f"{cfg.activation}{i}")]
        if pool:
            layers.append(keras.layers.MaxPooling2D(2, name=f"maxpool{i}"))
    layers.append(keras.layers.Flatten(name="flatten"))
    for i, units in enumerate(cfg.head, start=1):
        layers.append(dense(units, activation=cfg.activation, name=f"dense{i}"))
        if cfg.dropout > 0:
            layers.append(keras.layers.Dropout(cfg.dropout, name=f"dropout{i}"))
    layers.append(dense(num_classes, name=f"dense{len(cfg.head) + 1}"))
    return keras.Sequential(layers, name="mnist_cnn")


def train(cfg: TrainConfig, x_train, y_train, x_val, y_val, live_dir: str | None = None):
    """Train with Adam and a cosine learning-rate decay; log curves with dvclive into `live_dir`.
    Returns (the plain Keras model of Dense layers with the trained weights, final metrics)."""
    _quiet_tensorflow()
    import keras
    import tensorflow as tf

    with contextlib.suppress(RuntimeError):  # already set in this process: then they are in force
        tf.config.threading.set_intra_op_parallelism_threads(THREADS)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    keras.utils.set_random_seed(cfg.seed)
    tf.config.experimental.enable_op_determinism()
    model = build(cfg, exact=True)
    steps = cfg.epochs * int(np.ceil(len(x_train) / cfg.batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(cfg.learning_rate, decay_steps=steps)
    model.compile(optimizer=keras.optimizers.Adam(schedule),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    callbacks = [_EpochLog(cfg.epochs)]
    live = None
    if live_dir:
        from dvclive import Live
        from dvclive.keras import DVCLiveCallback

        live = Live(live_dir, save_dvc_exp=False, dvcyaml=None)
        callbacks.append(DVCLiveCallback(live=live))
    try:
        history = model.fit(x_train, y_train, epochs=cfg.epochs, batch_size=cfg.batch_size,
                            validation_data=(x_val, y_val), callbacks=callbacks, verbose=0)
    finally:
        if live is not None:
            live.end()
    plain = build(cfg)
    plain.set_weights(model.get_weights())
    return plain, {k: float(v[-1]) for k, v in history.history.items()}


class _EpochLog:
    """A Keras callback that logs one line per epoch instead of Keras' progress bars."""

    def __new__(cls, epochs):
        import keras

        class EpochLog(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                logs = logs or {}
                log.info("train: epoch %d/%d  loss %.4f  acc %.4f  val_loss %.4f  val_acc %.4f",
                         epoch + 1, epochs, logs.get("loss", 0), logs.get("accuracy", 0),
                         logs.get("val_loss", 0), logs.get("val_accuracy", 0))

        return EpochLog()


def fold_batchnorm(model):
    """`model` (a Sequential) with every BatchNormalization that follows a linear Conv2D folded into
    it in float32 numpy: scale = gamma / sqrt(var + eps), kernel * scale, (bias - mean) * scale + beta,
    each operation correctly rounded, so the same bits on any CPU (module docstring).  A model
    without BatchNormalization is returned as it is; one after another layer stays (the converter
    writes it as MUL and ADD)."""
    import keras

    layers = list(model.layers)
    if not any(isinstance(layer, keras.layers.BatchNormalization) for layer in layers):
        return model
    out, weights, i = [keras.Input(model.input_shape[1:], name=model.inputs[0].name)], [], 0
    while i < len(layers):
        layer, nxt = layers[i], layers[i + 1] if i + 1 < len(layers) else None
        w = layer.get_weights()
        if (isinstance(layer, keras.layers.Conv2D) and isinstance(nxt, keras.layers.BatchNormalization)
                and layer.get_config()["activation"] == "linear" and layer.use_bias):
            gamma, beta, mean, var = (np.asarray(v, np.float32) for v in nxt.get_weights())
            scale = gamma / np.sqrt(var + np.float32(nxt.epsilon))
            w = [w[0] * scale, (w[1] - mean) * scale + beta]
            i += 1
        out.append(layer.__class__.from_config(layer.get_config()))
        weights.append(w)
        i += 1
    folded = keras.Sequential(out, name=model.name)
    for layer, w in zip(folded.layers, weights):
        layer.set_weights(w)
    return folded


def tflite_bytes(model) -> bytes:
    """Convert the Keras model to a float32 TFLite flatbuffer (its BatchNorms folded first)."""
    _quiet_tensorflow()
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(fold_batchnorm(model))
    with contextlib.redirect_stdout(io.StringIO()):  # the converter prints its whole signature
        return converter.convert()


def export(model, out_dir: str | os.PathLike) -> dict[str, str]:
    """Write `model.h5` and `model.tflite` atomically into `out_dir`; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    h5 = out_dir / "model.h5"
    tmp = out_dir / ".model.h5.tmp.h5"
    model.save(tmp, include_optimizer=False)  # a deployable model; optimizer state is not needed
    os.replace(tmp, h5)
    tfl = out_dir / "model.tflite"
    write_bytes(tfl, tflite_bytes(model))
    return {"h5": str(h5), "tflite": str(tfl)}
