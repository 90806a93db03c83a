"""Training determinism, the TFLite export, and the parser that reads it without TensorFlow."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hailopipe import data, network
from hailopipe.errors import PipelineError
from hailopipe.formats import tflite

pytest.importorskip("tensorflow")
from hailopipe import model  # noqa: E402


@pytest.fixture(scope="module")
def trained(subset, tmp_path_factory):
    """Two 1-epoch trainings with the same seed, exported to two directories."""
    cfg = model.TrainConfig(hidden=(32, 16), epochs=1, batch_size=100, dropout=0.1)
    x, y = data.to_float(subset["x_train"]), subset["y_train"]
    xv, yv = data.to_float(subset["x_val"]), subset["y_val"]
    outs = []
    for run in range(2):
        net, _ = model.train(cfg, x, y, xv, yv)
        outs.append((net, model.export(net, tmp_path_factory.mktemp(f"run{run}"))))
    return outs


def test_same_seed_same_bytes(trained):
    (_, a), (_, b) = trained
    for kind in ("h5", "tflite"):
        with open(a[kind], "rb") as fa, open(b[kind], "rb") as fb:
            assert fa.read() == fb.read(), kind


def test_parser_reads_the_keras_graph(trained, val_images):
    keras_model, paths = trained[0]
    net = tflite.read(paths["tflite"], "mnist")
    assert [(layer.name, layer.kernel.shape, layer.activation) for layer in net.layers] == [
        ("fc1", (784, 32), "relu"), ("fc2", (32, 16), "relu"), ("fc3", (16, 10), "linear")]
    assert net.input_shape == (28, 28, 1)
    x = val_images[0][:64]
    np.testing.assert_allclose(network.forward(net, x), keras_model.predict(x, verbose=0), atol=1e-4)


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
