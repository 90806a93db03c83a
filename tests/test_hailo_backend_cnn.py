"""The hailo backend on a CNN (Hailo's Hailo-8 MNIST architecture, exported by Keras), through the
SDK stand-in of tests/fake_hailo: the parse keeps every conv and pooling layer with the SDK's names,
the float network read back from the SDK's HN is the one hailopipe's own parser reads, the model
script names the conv layers, the compile report gives the conv layers' shapes, MACs and weight
bytes as the emulator's does, an `activation` layer the SDK splits off a conv is folded back, and
the SDK's emulator returns the emulator's own outputs."""

import json

import numpy as np
import pytest

from hailopipe import network
from hailopipe.formats import ehef, har, tflite
from hailopipe.quantization.config import OptimizeConfig
from tests.test_hailo_backend import calls, fake, raw, sdk  # noqa: F401 (fixtures)

pytest.importorskip("tensorflow")
from hailopipe import model  # noqa: E402

CNN_LAYERS = ["conv1", "maxpool1", "conv2", "maxpool2", "conv3", "fc1"]


@pytest.fixture(scope="module")
def cnn_tflite(tmp_path_factory):
    """Keras' export of the default `cnn` architecture, its weights random but seeded."""
    import keras

    keras.utils.set_random_seed(0)
    m = model.build(model.TrainConfig(arch="cnn"))
    rng = np.random.default_rng(0)
    m.set_weights([(rng.random(w.shape) + 0.5 if "variance" in w.path or "gamma" in w.path
                    else rng.standard_normal(w.shape) * 0.3).astype(np.float32) for w in m.weights])
    path = tmp_path_factory.mktemp("cnn") / "model.tflite"
    path.write_bytes(model.tflite_bytes(m))
    return path


@pytest.fixture
def cnn_quantized(fake, cnn_tflite, raw, tmp_path):  # noqa: F811
    from hailopipe.backends import hailo

    fake(FAKE_HAILO_DEVICES="0000:01:00.0")  # a device, for the compiled model
    hailo.parse(cnn_tflite, tmp_path / "m.har", "mnist", "hailo8")
    cfg = OptimizeConfig(calib_size=200, precision={"conv3": "a16_w16"}, clipping_mode="percentile")
    hailo.optimize(tmp_path / "m.har", tmp_path / "q.har", raw[:200], cfg, "hailo8")
    return tmp_path


def test_parse_keeps_every_cnn_layer(fake, cnn_tflite, raw, tmp_path):  # noqa: F811
    from hailopipe.backends import hailo
    from hailopipe.backends.hailo import hn_view

    summary = hailo.parse(cnn_tflite, tmp_path / "m.har", "mnist", "hailo8")
    assert calls("translate_tf_model")[-1]["end_node_names"] is None
    assert [line.split()[0] for line in summary["layers"]] == CNN_LAYERS
    runner = sdk().ClientRunner(har=str(tmp_path / "m.har"))
    net = hn_view.float_network(runner.get_hn_dict(), runner.get_params(), "m.har")
    ours = tflite.read(cnn_tflite, "mnist")
    assert [type(layer).__name__ for layer in net.layers] == [type(layer).__name__ for layer in ours.layers]
    x = raw[:50] / 255
    np.testing.assert_array_equal(network.forward(net, x), network.forward(ours, x))
    assert hailo.layer_names(tmp_path / "m.har") == ["conv1", "conv2", "conv3", "fc1"]


def test_optimize_and_compile_a_cnn(cnn_quantized, raw):  # noqa: F811
    from hailopipe.backends import hailo

    script = calls("load_model_script")[-1]["text"]
    assert "quantization_param(mnist/conv3, precision_mode=a16_w16)" in script
    assert ("activation_clipping, layers=[mnist/conv1, mnist/conv2, mnist/conv3, mnist/fc1], mode=percentile"
            in script)
    report = hailo.compile(cnn_quantized / "q.har", cnn_quantized / "mnist.hef", "hailo8")
    expected = ehef.layer_report(har.load(cnn_quantized / "q.har").qnet)
    assert list(report["layers"]) == ["normalization1", *CNN_LAYERS]
    assert report["layers"] == expected["layers"] and report["total"] == expected["total"]
    conv2 = report["layers"]["conv2"]
    assert (conv2["input_shape"], conv2["output_shape"]) == ([14, 14, 8], [12, 12, 16])
    assert conv2["macs"] == 12 * 12 * 16 * 3 * 3 * 8 and conv2["weight_bytes"] == 3 * 3 * 8 * 16
    qnet = har.load(cnn_quantized / "q.har").qnet
    from hailopipe.runtime import HEF, InferModel

    want = InferModel(HEF(ehef.compile_network(qnet, "hailo8"))).run_float(raw[:100])
    np.testing.assert_array_equal(hailo.infer_quantized(cnn_quantized / "q.har", raw[:100]).reshape(100, -1),
                                  want.reshape(100, -1))
    np.testing.assert_array_equal(hailo.infer_compiled(cnn_quantized / "mnist.hef", raw[:100]).reshape(100, -1),
                                  want.reshape(100, -1))


def _split_conv_activations(hn: dict) -> dict:
    """The HN with each conv layer's ReLU split off into an `activation` layer, as the SDK's HN may be."""
    hn = json.loads(json.dumps(hn))
    layers = {}
    for name, spec in hn["layers"].items():
        layers[name] = spec
        if spec["type"] == "conv" and spec["params"]["activation"] != "linear":
            act_name, nxt = name.replace("/conv", "/activation"), spec["output"][0]
            layers[act_name] = {"type": "activation", "input": [name], "output": [nxt],
                                "input_shapes": spec["output_shapes"], "output_shapes": spec["output_shapes"],
                                "params": {"activation": spec["params"]["activation"]}}
            spec["params"]["activation"], spec["output"] = "linear", [act_name]
            hn["layers"][nxt]["input"] = [act_name]
    hn["layers"] = layers
    return hn


def test_split_conv_activations_fold_back(fake, cnn_tflite, raw):  # noqa: F811
    from hailopipe.backends.hailo import hn_view

    runner = sdk().ClientRunner(hw_arch="hailo8")
    hn, params = runner.translate_tf_model(str(cnn_tflite), "mnist")
    split = _split_conv_activations(hn)
    assert sum(spec["type"] == "activation" for spec in split["layers"].values()) == 3
    net = hn_view.float_network(split, params, "split HN")
    x = raw[:20] / 255
    np.testing.assert_array_equal(network.forward(net, x), network.forward(hn_view.float_network(hn, params, "HN"), x))
    report = hn_view.compile_report(split, "", "split HN")
    assert report["layers"]["conv1"]["activation_layer"] == "activation1"
    assert report["layers"]["maxpool1"]["macs"] == 14 * 14 * 8 * 4
