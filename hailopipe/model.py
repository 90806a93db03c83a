"""The float model: a Keras classifier of Dense layers, trained deterministically and exported.

    Input 28x28x1 (pixels/255) -> Flatten -> Dense(h, act) [-> Dropout] ... -> Dense(10) logits

The output layer is linear (logits); softmax is left to the host, as Hailo users do with
`logits_layer(..., softmax, cpu)`.  Training is deterministic on CPU: `keras.utils.set_random_seed`
plus TensorFlow's op determinism give the same weights, hence the same exported bytes, on every run.

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


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def build(cfg: TrainConfig, num_classes: int = 10):
    """The Keras model described in the module docstring, uncompiled."""
    import keras

    layers = [keras.Input((28, 28, 1), name="input"), keras.layers.Flatten(name="flatten")]
    for i, units in enumerate(cfg.hidden, start=1):
        layers.append(keras.layers.Dense(units, activation=cfg.activation, name=f"dense{i}"))
        if cfg.dropout > 0:
            layers.append(keras.layers.Dropout(cfg.dropout, name=f"dropout{i}"))
    layers.append(keras.layers.Dense(num_classes, name=f"dense{len(cfg.hidden) + 1}"))
    return keras.Sequential(layers, name="mnist_dense")


def train(cfg: TrainConfig, x_train, y_train, x_val, y_val, live_dir: str | None = None):
    """Train with Adam and a cosine learning-rate decay; log curves with dvclive into `live_dir`."""
    _quiet_tensorflow()
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(cfg.seed)
    tf.config.experimental.enable_op_determinism()
    model = build(cfg)
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
    return model, {k: float(v[-1]) for k, v in history.history.items()}


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
