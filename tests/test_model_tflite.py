"""Training determinism, the TFLite export, and the parser that reads it without TensorFlow, for the
dense model and the CNN (`train.arch`)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hailopipe import data, evaluate, network
from hailopipe.errors import PipelineError
from hailopipe.formats import tflite

pytest.importorskip("tensorflow")
from hailopipe import model  # noqa: E402

CONFIGS = {"dense": model.TrainConfig(hidden=(32, 16), epochs=1, batch_size=100, dropout=0.1),
           "cnn": model.TrainConfig(arch="cnn", conv=(4, 8), head=(16,), epochs=1, batch_size=100, dropout=0.1)}
LAYERS = {"dense": [("fc1", (784, 32), "relu"), ("fc2", (32, 16), "relu"), ("fc3", (16, 10), "linear")],
          "cnn": [("conv1", (3, 3, 1, 4), "relu"), ("maxpool1", None, None), ("conv2", (3, 3, 4, 8), "relu"),
                  ("fc1", (1152, 16), "relu"), ("fc2", (16, 10), "linear")]}


@pytest.fixture(scope="module", params=list(CONFIGS))
def trained(request, subset, tmp_path_factory):
    """Two 1-epoch trainings with the same seed, exported to two directories (each architecture)."""
    cfg = CONFIGS[request.param]
    x, y = data.to_float(subset["x_train"]), subset["y_train"]
    xv, yv = data.to_float(subset["x_val"]), subset["y_val"]
    outs = []
    for run in range(2):
        net, _ = model.train(cfg, x, y, xv, yv)
        outs.append((net, model.export(net, tmp_path_factory.mktemp(f"{request.param}{run}"))))
    return outs


def test_same_seed_same_bytes(trained):
    (_, a), (_, b) = trained
    for kind in ("h5", "tflite"):
        with open(a[kind], "rb") as fa, open(b[kind], "rb") as fb:
            assert fa.read() == fb.read(), kind


def test_parser_reads_the_keras_graph(trained, val_images):
    keras_model, paths = trained[0]
    net = tflite.read(paths["tflite"], "mnist")
    arch = "cnn" if keras_model.name == "mnist_cnn" else "dense"
    assert [(layer.name, getattr(layer, "kernel", None) is not None and layer.kernel.shape or None,
             getattr(layer, "activation", None)) for layer in net.layers] == LAYERS[arch]
    assert net.input_shape == (28, 28, 1)
    x = val_images[0][:64]
    np.testing.assert_allclose(network.forward(net, x), keras_model.predict(x, verbose=0), atol=1e-4)
    np.testing.assert_allclose(network.forward(net, x), evaluate.tflite_logits(paths["tflite"], x), atol=1e-4)


def test_exact_cnn_layers_train_as_keras_layers(subset):
    """ExactConv2D and ExactBatchNorm (training mode) compute what Conv2D and BatchNormalization do,
    and so do their gradients: the exact model trains the model that is exported."""
    import tensorflow as tf

    cfg = model.TrainConfig(arch="cnn", conv=(4, 8), head=(16,), dropout=0.0)
    exact, plain = model.build(cfg, exact=True), model.build(cfg)
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal(w.shape).astype(np.float32) * 0.3 + (1 if "variance" in w.path else 0)
               for w in plain.weights]
    exact.set_weights(weights)
    plain.set_weights(weights)
    x = data.to_float(subset["x_train"][:32])
    y = tf.constant(subset["y_train"][:32])
    loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    results = []
    for m in (exact, plain):
        with tf.GradientTape() as tape:
            out = m(x, training=True)
            value = loss(y, out)
        results.append((out.numpy(), [g.numpy() for g in tape.gradient(value, m.trainable_weights)]))
    (out_e, grads_e), (out_p, grads_p) = results
    np.testing.assert_allclose(out_e, out_p, atol=1e-4 * np.abs(out_p).max())
    assert len(grads_e) == len(grads_p)
    for ge, gp, w in zip(grads_e, grads_p, plain.trainable_weights):
        if "conv" in w.path and w.path.endswith("bias"):  # a BatchNorm follows: 0 but for rounding
            assert np.abs(ge).max() < 1e-3 and np.abs(gp).max() < 1e-3, w.path
            continue
        # the exact products keep >= 17 bits of each operand: about 1e-4 of the largest gradient
        np.testing.assert_allclose(ge, gp, atol=1e-3 * np.abs(gp).max(), err_msg=w.path)
    np.testing.assert_allclose(exact(x).numpy(), plain(x).numpy(), atol=1e-5)  # inference: the moving statistics


def test_parse_stage_imports_no_tensorflow(trained, tmp_path):
    code = ("import sys; from hailopipe.formats import tflite, har; "
            f"n = tflite.read({trained[0][1]['tflite']!r}, 'mnist'); "
            f"har.save(har.Har('hailo_model', n), {str(tmp_path / 'm.har')!r}); "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unsupported_activation_is_refused(tmp_path):
    import keras

    m = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(8, activation="tanh"),
                          keras.layers.Dense(10)])
    p = tmp_path / "tanh.tflite"
    p.write_bytes(model.tflite_bytes(m))
    with pytest.raises(PipelineError, match="not supported"):
        tflite.read(p, "mnist")


@pytest.mark.parametrize("mutate", [lambda b: b[:100], lambda b: b"", lambda b: b[:4] + b"XXXX" + b[8:],
                                    lambda b: b[:8] + bytes(len(b) - 8)])
def test_broken_tflite(trained, tmp_path, mutate):
    raw = Path(trained[0][1]["tflite"]).read_bytes()
    p = tmp_path / "bad.tflite"
    p.write_bytes(mutate(raw))
    with pytest.raises(PipelineError, match=str(p)):
        tflite.read(p, "mnist")
