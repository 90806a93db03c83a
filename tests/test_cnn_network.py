"""Conv and Pool layers without TensorFlow: TensorFlow's shape rule, the forward pass against a plain
loop reference, the exact product's bits, the HN layout and round trip of every layer type, and the
HN reader's refusals (bad kernel shapes, strides 0, padding strings, shape mismatches, dw kernels)."""

import copy
from pathlib import Path

import numpy as np
import pytest

from hailopipe import network
from hailopipe.errors import PipelineError
from hailopipe.formats import har, hn
from hailopipe.network import Conv, Dense, Network, Normalization, Pool
from hailopipe.quantization import arithmetic
from tests import test_netron

SAME, VALID = "SAME_TENSORFLOW", "VALID"


def _w(rng, *shape, scale=0.5):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def every_type_net(seed=0, name="net") -> Network:
    """Every layer type and option: conv SAME stride 2 relu6, max pool SAME on an odd size, dilated
    conv, depthwise, average pool SAME on an odd size, a global average pool, dense layers."""
    rng = np.random.default_rng(seed)
    layers = [
        Conv("conv1", _w(rng, 3, 3, 2, 6), _w(rng, 6), (2, 2), SAME, "relu6", original_names=["m/conv1/Relu6"]),
        Pool("maxpool1", "max", (3, 3), (2, 2), SAME, ["m/pool1"]),
        Conv("conv2", _w(rng, 3, 2, 6, 5), _w(rng, 5), (1, 1), VALID, "linear", dilations=(1, 2)),
        Conv("dw1", _w(rng, 2, 2, 5, 1), _w(rng, 5), (1, 1), SAME, "relu", depthwise=True),
        Pool("avgpool1", "avg", (2, 2), (2, 2), SAME),
        Conv("conv3", _w(rng, 1, 1, 5, 4), _w(rng, 4), (1, 1), VALID, "relu"),
        Pool("avgpool2", "avg", (2, 2), (2, 2), VALID),
        Dense("fc1", _w(rng, 4, 7), _w(rng, 7), "relu"),
        Dense("fc2", _w(rng, 7, 3), _w(rng, 3), "linear"),
    ]
    return Network(name, (23, 21, 2), layers, "input")


def mnist_cnn(seed=0) -> Network:
    """Hailo's Hailo-8 MNIST example as the parser gives it (BatchNorm folded, ReLU fused)."""
    rng = np.random.default_rng(seed)
    return Network("net", (28, 28, 1), [
        Conv("conv1", _w(rng, 3, 3, 1, 8), _w(rng, 8, scale=0.1), padding=SAME, activation="relu"),
        Pool("maxpool1", "max", (2, 2), (2, 2)),
        Conv("conv2", _w(rng, 3, 3, 8, 16, scale=0.2), _w(rng, 16, scale=0.1), activation="relu"),
        Pool("maxpool2", "max", (2, 2), (2, 2)),
        Conv("conv3", _w(rng, 3, 3, 16, 16, scale=0.15), _w(rng, 16, scale=0.1), activation="relu"),
        Dense("fc1", _w(rng, 256, 10, scale=0.1), _w(rng, 10, scale=0.1)),
    ])


# --- shapes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("size,k,s,padding,d,out,pad", [
    (28, 3, 1, VALID, 1, 26, (0, 0)), (28, 3, 1, SAME, 1, 28, (1, 1)), (28, 2, 2, VALID, 1, 14, (0, 0)),
    (11, 3, 2, SAME, 1, 6, (1, 1)), (12, 3, 2, SAME, 1, 6, (0, 1)), (11, 3, 2, VALID, 1, 5, (0, 0)),
    (9, 3, 1, VALID, 2, 5, (0, 0)), (9, 3, 1, SAME, 2, 9, (2, 2)), (7, 2, 1, SAME, 1, 7, (0, 1)),
    (2, 3, 1, VALID, 1, 0, (0, 0)),
])
def test_output_size_is_tensorflows(size, k, s, padding, d, out, pad):
    assert network.output_size(size, k, s, padding, d) == out
    assert network.pads(size, k, s, padding, d) == pad


def test_shapes_summary_and_outputs():
    net = mnist_cnn()
    assert [out for _, out in net.shapes] == [(28, 28, 8), (14, 14, 8), (12, 12, 16), (6, 6, 16), (4, 4, 16),
                                              (1, 1, 10)]
    assert net.shapes[0][0] == (28, 28, 1) and net.num_outputs == 10 and not net.is_dense
    s = net.summary()
    assert s["layers"][0] == "conv1 conv 3x3 1->8 stride 1x1 SAME_TENSORFLOW relu -> 28x28x8"
    assert s["layers"][1] == "maxpool1 maxpool 2x2 stride 2x2 VALID -> 14x14x8"
    assert s["layers"][-1] == "fc1 256->10 linear"
    assert s["params"] == 8 * 9 + 8 + 16 * 72 + 16 + 16 * 144 + 16 + 2570
    conv_only = Network("net", (28, 28, 1), net.layers[:5])
    assert conv_only.num_outputs == 256 and conv_only.output_shape == (4, 4, 16)


@pytest.mark.parametrize("layer,words", [
    (Conv("conv1", np.zeros((3, 3, 2, 4), np.float32), np.zeros(4, np.float32)), "takes 2 input channels"),
    (Conv("conv1", np.zeros((9, 9, 1, 4), np.float32), np.zeros(4, np.float32)), "does not fit"),
    (Pool("maxpool1", "max", (9, 1), (1, 1)), "does not fit"),
    (Dense("fc1", np.zeros((50, 4), np.float32), np.zeros(4, np.float32)), "49"),
])
def test_output_shape_refuses_what_does_not_fit(layer, words):
    with pytest.raises(ValueError, match=words):
        network.output_shape(layer, (7, 7, 1))


# --- forward against a plain loop reference -------------------------------------------------------


def reference_layer(x: np.ndarray, layer) -> np.ndarray:
    """One layer in float64 loops, straight from the definitions (padding positions skipped)."""
    n, h, w, c = x.shape
    if isinstance(layer, Dense):
        y = x.reshape(n, -1) @ layer.kernel.astype(np.float64) + layer.bias
        return network.apply_activation(y, layer.activation)
    (kh, kw) = layer.kernel.shape[:2] if isinstance(layer, Conv) else layer.size
    (dh, dw) = layer.dilations if isinstance(layer, Conv) else (1, 1)
    (sh, sw) = layer.strides
    oh, ow = (network.output_size(h, kh, sh, layer.padding, dh), network.output_size(w, kw, sw, layer.padding, dw))
    top, left = network.pads(h, kh, sh, layer.padding, dh)[0], network.pads(w, kw, sw, layer.padding, dw)[0]
    cout = layer.out_channels if isinstance(layer, Conv) else c
    out = np.zeros((n, oh, ow, cout))
    for y in range(oh):
        for xx in range(ow):
            taps = [(i, j, y * sh + i * dh - top, xx * sw + j * dw - left) for i in range(kh) for j in range(kw)]
            taps = [t for t in taps if 0 <= t[2] < h and 0 <= t[3] < w]
            win = np.stack([x[:, r, q, :] for _, _, r, q in taps], axis=1)  # [n, taps, c]
            if isinstance(layer, Pool):
                out[:, y, xx] = win.max(axis=1) if layer.kind == "max" else win.mean(axis=1)
                continue
            k = np.stack([layer.kernel[i, j].astype(np.float64) for i, j, _, _ in taps])  # [taps, cin, cout|1]
            out[:, y, xx] = (np.einsum("ntc,tc->nc", win, k[:, :, 0]) if layer.depthwise
                             else np.einsum("ntc,tcd->nd", win, k)) + layer.bias
    return network.apply_activation(out, layer.activation) if isinstance(layer, Conv) else out


@pytest.mark.parametrize("exact", [True, False])
def test_forward_matches_the_loop_reference(exact):
    net = every_type_net()
    x = np.random.default_rng(1).standard_normal((6, 23, 21, 2)).astype(np.float32)
    out, outs = network.forward(net, x, collect=True, exact=exact)
    h = x.astype(np.float64)
    assert [o.shape for o in outs] == [(6, *s) if not isinstance(layer, Dense) else (6, s[-1])
                                       for layer, (_, s) in zip(net.layers, net.shapes)]
    for layer, got in zip(net.layers, outs):
        h = reference_layer(h if h.ndim == 4 else h.reshape(len(h), 1, 1, -1), layer)
        h = h.reshape(len(h), -1) if isinstance(layer, Dense) else h
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, h, atol=2e-5 * max(1.0, np.abs(h).max()), err_msg=layer.name)
        h = got.astype(np.float64)  # each layer checked on the input the network gave it
    assert out is outs[-1]


def test_pools_exclude_same_padding():
    x = np.arange(2 * 5 * 5 * 1, dtype=np.float32).reshape(2, 5, 5, 1) - 60  # all negative in image 0
    mx = network.forward(Network("n", (5, 5, 1), [Pool("maxpool1", "max", (2, 2), (2, 2), SAME)]), x)
    av = network.forward(Network("n", (5, 5, 1), [Pool("avgpool1", "avg", (2, 2), (2, 2), SAME)]), x)
    assert mx.shape == (2, 3, 3, 1) and mx[0, 2, 2, 0] == x[0, 4, 4, 0] < 0  # the padded -inf never wins
    assert av[0, 2, 2, 0] == x[0, 4, 4, 0] and av[0, 0, 2, 0] == (x[0, 0, 4, 0] + x[0, 1, 4, 0]) / 2


def test_conv_is_one_exact_product_over_the_batch(monkeypatch):
    """The conv's slices give the bits of one exact_dot over every patch of the batch."""
    net = mnist_cnn()
    x = np.random.default_rng(2).random((9, 28, 28, 1), dtype=np.float32)
    conv = net.layers[0]
    cols = network.patches(x, (3, 3), (1, 1), SAME).reshape(-1, 9)
    whole = network.apply_activation(arithmetic.exact_dot(cols, conv.kernel.reshape(9, 8)) + conv.bias, "relu")
    big = network.forward(Network("n", (28, 28, 1), [conv]), x)
    monkeypatch.setattr(network, "CHUNK", 500)  # one image per slice
    small = network.forward(Network("n", (28, 28, 1), [conv]), x)
    assert np.array_equal(big, small) and np.array_equal(big, whole.astype(np.float32).reshape(big.shape))


def test_depthwise_is_per_channel():
    rng = np.random.default_rng(3)
    dw = Conv("dw1", _w(rng, 3, 3, 4, 1), _w(rng, 4), padding=SAME, depthwise=True)
    x = rng.standard_normal((3, 6, 6, 4)).astype(np.float32)
    got = network.forward(Network("n", (6, 6, 4), [dw]), x)
    for c in range(4):
        one = Conv("conv1", dw.kernel[:, :, c:c + 1, :], dw.bias[c:c + 1], padding=SAME)
        single = network.forward(Network("n", (6, 6, 1), [one]), x[..., c:c + 1])
        np.testing.assert_allclose(got[..., c:c + 1], single, atol=1e-5)


def test_dense_takes_the_nhwc_flatten():
    net = mnist_cnn()
    x = np.random.default_rng(4).random((5, 28, 28, 1), dtype=np.float32)
    out, outs = network.forward(net, x, collect=True)
    expect = outs[-2].reshape(5, -1).astype(np.float64) @ net.layers[-1].kernel + net.layers[-1].bias
    np.testing.assert_allclose(out, expect, atol=1e-5)


def test_normalization_before_a_conv():
    net = mnist_cnn()
    norm = Normalization.from_mean_std([0.0], [255.0], 1)
    raw = np.random.default_rng(5).integers(0, 256, (4, 28, 28, 1)).astype(np.float32)
    with_norm = Network(net.name, net.input_shape, net.layers, normalization=norm)
    np.testing.assert_allclose(network.forward(with_norm, raw), network.forward(net, norm.apply(raw)), atol=1e-6)


# --- HN -------------------------------------------------------------------------------------------


def test_hn_layout_of_the_mnist_cnn():
    graph = hn.to_hn(mnist_cnn())
    layers = graph["layers"]
    assert list(layers) == ["net/input_layer1", "net/conv1", "net/maxpool1", "net/conv2", "net/maxpool2",
                            "net/conv3", "net/fc1", "net/output_layer1"]
    assert graph["net_params"]["output_layers_order"] == ["net/fc1"]
    conv1 = layers["net/conv1"]
    assert conv1["type"] == "conv" and conv1["input"] == ["net/input_layer1"] and conv1["output"] == ["net/maxpool1"]
    assert conv1["input_shapes"] == [[-1, 28, 28, 1]] and conv1["output_shapes"] == [[-1, 28, 28, 8]]
    assert conv1["params"] == {"kernel_shape": [3, 3, 1, 8], "strides": [1, 1, 1, 1], "dilations": [1, 1, 1, 1],
                               "padding": "SAME_TENSORFLOW", "groups": 1, "activation": "relu", "batch_norm": False}
    assert layers["net/conv2"]["params"]["padding"] == "VALID"
    assert layers["net/maxpool1"] == {
        "type": "maxpool", "input": ["net/conv1"], "output": ["net/conv2"], "input_shapes": [[-1, 28, 28, 8]],
        "output_shapes": [[-1, 14, 14, 8]], "original_names": [],
        "params": {"kernel_shape": [1, 2, 2, 1], "strides": [1, 2, 2, 1], "padding": "VALID"}}
    assert layers["net/fc1"]["input_shapes"] == [[-1, 4, 4, 16]] and layers["net/fc1"]["params"]["kernel_shape"] == [256, 10]
    assert layers["net/output_layer1"]["input_shapes"] == [[-1, 1, 1, 10]]
    w = hn.weights(mnist_cnn())
    assert sorted(w) == sorted(f"net/{n}/{k}:0" for n in ("conv1", "conv2", "conv3", "fc1") for k in ("kernel", "bias"))
    assert w["net/conv2/kernel:0"].shape == (3, 3, 8, 16)


def test_hn_of_dw_and_avgpool():
    layers = hn.to_hn(every_type_net())["layers"]
    assert layers["net/dw1"]["type"] == "dw" and layers["net/dw1"]["params"]["groups"] == 5
    assert layers["net/dw1"]["params"]["kernel_shape"] == [2, 2, 5, 1]
    assert layers["net/conv2"]["params"]["dilations"] == [1, 1, 2, 1]
    assert layers["net/conv1"]["params"]["strides"] == [1, 2, 2, 1]
    assert layers["net/avgpool1"]["type"] == "avgpool" and layers["net/avgpool1"]["params"]["padding"] == SAME
    assert layers["net/maxpool1"]["output_shapes"] == [[-1, 6, 6, 6]]


def _same(a: Network, b: Network) -> None:
    assert (a.name, a.input_shape, a.input_original_name) == (b.name, b.input_shape, b.input_original_name)
    assert len(a.layers) == len(b.layers)
    for x, y in zip(a.layers, b.layers):
        assert type(x) is type(y) and x.name == y.name and x.original_names == y.original_names
        for key in ("kernel", "bias"):
            if hasattr(x, key):
                assert getattr(x, key).dtype == np.float32 and np.array_equal(getattr(x, key), getattr(y, key))
        for key in ("strides", "padding", "activation", "depthwise", "dilations", "kind", "size"):
            if hasattr(x, key):
                assert tuple(np.atleast_1d(getattr(x, key))) == tuple(np.atleast_1d(getattr(y, key))), (x.name, key)


@pytest.mark.parametrize("make", [mnist_cnn, every_type_net])
@pytest.mark.parametrize("with_norm", [False, True])
def test_hn_round_trip(make, with_norm):
    net = make()
    if with_norm:
        net.normalization = Normalization.from_mean_std([0.0], [255.0], net.input_shape[-1])
    back = hn.from_hn(hn.to_hn(net), hn.weights(net), "x.hn")
    _same(back, net)
    assert hn.to_hn(back) == hn.to_hn(net)
    x = np.random.default_rng(0).random((3, *net.input_shape), dtype=np.float32)
    assert np.array_equal(network.forward(back, x), network.forward(net, x))


def test_har_round_trip_of_a_cnn(tmp_path):
    a, b = tmp_path / "a.har", tmp_path / "b.har"
    net = every_type_net()
    har.save(har.Har("hailo_model", net), a)
    har.save(har.Har("hailo_model", net), b)
    assert a.read_bytes() == b.read_bytes()
    _same(har.load(a, expect_state="hailo_model").net, net)


def _edit_params(layer, **values):
    return lambda graph, p: graph["layers"][f"net/{layer}"]["params"].update(values)


REFUSALS = [
    ("conv1", _edit_params("conv1", kernel_shape=[3, 3, 2]), "kernel_shape must be [kh, kw, cin, cout]"),
    ("conv1", _edit_params("conv1", kernel_shape=[0, 3, 2, 6]), "kernel_shape must be [kh, kw, cin, cout]"),
    ("conv1", _edit_params("conv1", kernel_shape=[3, 3, 2, 2**40]), "disagrees"),
    ("conv1", _edit_params("conv1", kernel_shape=[2**40, 3, 2, 6]), "kernel_shape must be"),
    ("conv1", _edit_params("conv1", kernel_shape="3x3"), "kernel_shape must be"),
    ("conv1", _edit_params("conv1", kernel_shape=[3, 3, 1, 6]), "takes 1 channels, its input has 2"),
    ("conv1", _edit_params("conv1", kernel_shape=[5, 5, 2, 6]), "disagrees with params.kernel_shape"),
    ("conv1", _edit_params("conv1", strides=[1, 0, 2, 1]), "params.strides must be [1, a, b, 1]"),
    ("conv1", _edit_params("conv1", strides=[2, 2]), "params.strides must be"),
    ("conv1", _edit_params("conv1", strides=[1, True, 2, 1]), "params.strides must be"),
    ("conv1", _edit_params("conv1", strides=[1, 2.0, 2, 1]), "params.strides must be"),
    ("conv1", _edit_params("conv1", strides=[2, 2, 2, 2]), "params.strides must be"),
    ("conv1", _edit_params("conv1", dilations=[1, 0, 1, 1]), "params.dilations must be"),
    ("conv1", _edit_params("conv1", padding="SAME"), "unsupported padding 'SAME'"),
    ("conv1", _edit_params("conv1", padding="same"), "unsupported padding"),
    ("conv1", _edit_params("conv1", padding=None), "unsupported padding"),
    ("maxpool1", _edit_params("maxpool1", padding="VALID "), "unsupported padding"),
    ("conv1", _edit_params("conv1", activation="swish"), "unsupported activation 'swish'"),
    ("conv1", _edit_params("conv1", groups=2), "params.groups must be 1"),
    ("conv1", _edit_params("conv1", batch_norm=True), "batch_norm must be false"),
    ("dw1", _edit_params("dw1", kernel_shape=[2, 2, 5, 2]), "dw kernel_shape must be [kh, kw, C, 1]"),
    ("dw1", _edit_params("dw1", groups=1), "params.groups must be 5"),
    ("maxpool1", _edit_params("maxpool1", kernel_shape=[3, 3]), "params.kernel_shape must be [1, a, b, 1]"),
    ("maxpool1", _edit_params("maxpool1", kernel_shape=[1, 0, 3, 1]), "kernel_shape must be [1, a, b, 1]"),
    ("maxpool1", _edit_params("maxpool1", strides=[1, 0, 0, 1]), "params.strides must be"),
    ("avgpool2", _edit_params("avgpool2", kernel_shape=[1, 3, 3, 1], padding=VALID), "does not fit"),
    ("conv1", lambda g, p: g["layers"]["net/conv1"].update(output_shapes=[[-1, 11, 11, 6]]), "output_shapes"),
    ("conv1", lambda g, p: g["layers"]["net/conv1"].update(output_shapes=[[-1, 12, 11]]), "shape must be"),
    ("maxpool1", lambda g, p: g["layers"]["net/maxpool1"].update(input_shapes=[[-1, 12, 11, 5]]), "input_shapes"),
    ("conv1", lambda g, p: g["layers"]["net/conv1"].pop("params"), "missing 'params'"),
    ("conv1", lambda g, p: p.update({"net/conv1/bias:0": np.zeros(5, np.float32)}), "bias shape [5] != [6]"),
    ("conv1", lambda g, p: p.update({"net/conv1/kernel:0": p["net/conv1/kernel:0"].astype(np.float64)}), "float32"),
    ("conv3", lambda g, p: p["net/conv3/kernel:0"].__setitem__((0, 0, 0, 0), np.nan), "NaN"),
    ("dw1", lambda g, p: p.pop("net/dw1/kernel:0"), "missing"),
    ("fc1", lambda g, p: p.update({"net/fc1/kernel:0": np.zeros((5, 7), np.float32)}), "kernel shape [5, 7]"),
]


@pytest.mark.parametrize("layer,edit,words", REFUSALS, ids=[f"{r[0]}:{r[2][:30]}" for r in REFUSALS])
def test_hn_refuses_broken_conv_and_pool_layers(layer, edit, words):
    net = every_type_net()
    graph, params = copy.deepcopy(hn.to_hn(net)), {k: v.copy() for k, v in hn.weights(net).items()}
    edit(graph, params)
    with pytest.raises(PipelineError) as err:
        hn.from_hn(graph, params, "x.hn")
    msg = str(err.value)
    assert msg.startswith(f"x.hn: net/{layer}") or msg.startswith("x.hn: ") and f"net/{layer}" in msg, msg
    assert words in msg and "\n" not in msg, msg


def test_hn_refuses_an_unsupported_type():
    graph = copy.deepcopy(hn.to_hn(every_type_net()))
    graph["layers"]["net/conv2"]["type"] = "deconv"
    with pytest.raises(PipelineError, match=r"^x\.hn: layer 'net/conv2' has unsupported type 'deconv' \(supported: "
                       r"input_layer, normalization, conv, dw, maxpool, avgpool, dense, output_layer\)"):
        hn.from_hn(graph, hn.weights(every_type_net()), "x.hn")


def test_netron_opens_a_cnn_har(tmp_path):
    """Netron's own Hailo reader (tests/test_netron.py) builds the conv, dw and pooling nodes."""
    if test_netron.NODE is None or test_netron.SPEC is None:
        pytest.skip("Node.js or the netron package is missing")
    net = every_type_net()
    har.save(har.Har("hailo_model", net), tmp_path / "cnn.har")
    (graph,) = test_netron.open_in_netron(Path(test_netron.SPEC.origin).parent, tmp_path / "cnn.har")["graphs"]
    nodes = {n["name"]: n for n in graph["nodes"]}
    types = {"conv1": "conv", "maxpool1": "maxpool", "conv2": "conv", "dw1": "dw", "avgpool1": "avgpool",
             "conv3": "conv", "avgpool2": "avgpool", "fc1": "dense", "fc2": "dense"}
    assert {name: n["type"] for name, n in nodes.items()} == {f"net/{k}": v for k, v in types.items()}
    weights = {a["name"]: a["values"][0]["initializer"] for a in nodes["net/dw1"]["inputs"] if a["values"][0]["initializer"]}
    assert weights == {"kernel": {"dataType": "float32", "shape": [2, 2, 5, 1]}, "bias": {"dataType": "float32", "shape": [5]}}
    assert [v for a in graph["inputs"] for v in a["values"]] == ["net/input_layer1\nnet/conv1"]
