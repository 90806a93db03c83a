"""The float model: a Keras classifier of Dense layers, trained to the same bytes on any x86-64 CPU.

    Input 28x28x1 (pixels/255) -> Flatten -> Dense(h, act) [-> Dropout] ... -> Dense(10) logits

The output layer is linear (logits); softmax is left to the host, as Hailo users do with
`logits_layer(..., softmax, cpu)`.

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
Trained, the weights are copied into a plain Keras model of `keras.layers.Dense`, which is what is
exported.

Exports: `model.h5` (Keras, byte-stable unlike `.keras`, which embeds a date) and `model.tflite`
(float32), which is what Hailo's parser reads and what the parse stage reads.  This is the only
module that imports TensorFlow/Keras, and only inside its functions.
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


@dataclass(frozen=True)
class TrainConfig:
    hidden: tuple[int, ...] = (256, 128)
    activation: str = "relu"
    dropout: float = 0.2
    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 1e-3
    seed: int = 42


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
    """exact_matmul and ExactDense (module docstring), built on first use (they need TensorFlow)."""
    import keras
    import tensorflow as tf

    def exponent(m):
        """frexp's exponent of a float64 scalar m >= 0 (m = f 2^e, f in [0.5, 1)); 0 for m = 0."""
        e = tf.bitwise.bitwise_and(tf.bitwise.right_shift(tf.bitcast(m, tf.int64), 52), 0x7FF) - 1022
        return tf.where(m > 0, e, tf.zeros_like(e))

    def pow2(n):
        """2^n, exactly, as float64 (n an int64 in the normal range)."""
        return tf.bitcast(tf.bitwise.left_shift(n + 1023, 52), tf.float64)

    def grid(t, bits):
        """(round(t 2^s), 2^s) with every |entry| below 2^bits."""
        scale = pow2(bits - exponent(tf.reduce_max(tf.abs(t))))
        return tf.round(t * scale), scale

    def exact_matmul(a, b):
        """a @ b in float64, exactly as `arithmetic.exact_dot`: K max|a_int| max|b_int| < 2^52."""
        room = 52 - exponent(tf.cast(tf.shape(a)[-1], tf.float64))  # K < 2^exponent(K)
        a_int, s_a = grid(a, room - room // 2)
        b_int, s_b = grid(b, room // 2)
        return tf.matmul(a_int, b_int) / (s_a * s_b)

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
            @tf.custom_gradient
            def affine(x, w, b):
                x64, w64 = tf.cast(x, tf.float64), tf.cast(w, tf.float64)
                y = tf.cast(exact_matmul(x64, w64) + tf.cast(b, tf.float64), tf.float32)

                def grad(dy):
                    dy64 = tf.cast(dy, tf.float64)
                    ones = tf.ones([1, tf.shape(dy64)[0]], tf.float64)
                    return (tf.cast(exact_matmul(dy64, tf.transpose(w64)), tf.float32),
                            tf.cast(exact_matmul(tf.transpose(x64), dy64), tf.float32),
                            tf.cast(exact_matmul(ones, dy64)[0], tf.float32))

                return y, grad

            return self.activation(affine(x, self.kernel, self.bias))

    return exact_matmul, ExactDense


def build(cfg: TrainConfig, num_classes: int = 10, exact: bool = False):
    """The Keras model described in the module docstring, uncompiled: of `keras.layers.Dense`, or
    with `exact` of `ExactDense` (the same layers and weights, trained to the same bits anywhere)."""
    import keras

    dense = _exact_ops()[1] if exact else keras.layers.Dense
    layers = [keras.Input((28, 28, 1), name="input"), keras.layers.Flatten(name="flatten")]
    for i, units in enumerate(cfg.hidden, start=1):
        layers.append(dense(units, activation=cfg.activation, name=f"dense{i}"))
        if cfg.dropout > 0:
            layers.append(keras.layers.Dropout(cfg.dropout, name=f"dropout{i}"))
    layers.append(dense(num_classes, name=f"dense{len(cfg.hidden) + 1}"))
    return keras.Sequential(layers, name="mnist_dense")


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


def tflite_bytes(model) -> bytes:
    """Convert the Keras model to a float32 TFLite flatbuffer."""
    _quiet_tensorflow()
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
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
