"""The TFLite parser on convolutional models: Hailo's Hailo-8 MNIST CNN as Keras 3 exports it, the
DEPTHWISE_CONV_2D, AVERAGE_POOL_2D and MEAN paths, SAME padding on odd sizes, strides, the BatchNorm
fold, flatbuffers edited where Keras does not write the op (a standalone MUL/ADD, a dilation factor),
and the one-line refusal of every other op.  Each parse is checked against LiteRT's reference kernels
(`evaluate.tflite_logits`) and Keras within 1e-4."""

import re

import numpy as np
import pytest

from hailopipe import evaluate, network
from hailopipe.errors import PipelineError
from hailopipe.formats import hn, tflite

pytest.importorskip("tensorflow")
import keras  # noqa: E402

from hailopipe import model  # noqa: E402

L = keras.layers


def keras_model(*layers, shape=(9, 9, 2), seed=0):
    """A Sequential of `layers` with random weights (BatchNorm variances and gammas around 1)."""
    m = keras.Sequential([keras.Input(shape, name="input"), *layers])
    rng = np.random.default_rng(seed)
    m.set_weights([(rng.random(w.shape) + 0.5 if "variance" in w.path or "gamma" in w.path
                    else rng.standard_normal(w.shape) * 0.5).astype(np.float32) for w in m.weights])
    return m


def export(m, path) -> str:
    path.write_bytes(model.tflite_bytes(m))
    return str(path)


def check_against_litert(net, path, m, x) -> None:
    ours = network.forward(net, x)
    np.testing.assert_allclose(ours, evaluate.tflite_logits(path, x), atol=1e-4)
    if m is not None:
        np.testing.assert_allclose(ours, m.predict(x, verbose=0), atol=1e-4)


def describe(net) -> list[tuple]:
    out = []
    for layer, (_, shape) in zip(net.layers, net.shapes):
        if isinstance(layer, network.Pool):
            out.append((layer.name, layer.kind, layer.size, layer.strides, layer.padding, shape))
        elif isinstance(layer, network.Conv):
            out.append((layer.name, layer.kernel.shape, layer.strides, layer.padding, layer.activation, shape))
        else:
            out.append((layer.name, layer.kernel.shape, layer.activation))
    return out


@pytest.fixture(scope="module")
def mnist_cnn(tmp_path_factory):
    """The default `cnn` architecture (untrained, random weights and BatchNorm statistics) and its export."""
    m = model.build(model.TrainConfig(arch="cnn"))
    rng = np.random.default_rng(1)
    m.set_weights([(rng.random(w.shape) + 0.5 if "variance" in w.path or "gamma" in w.path
                    else rng.standard_normal(w.shape) * 0.3).astype(np.float32) for w in m.weights])
    return m, export(m, tmp_path_factory.mktemp("cnn") / "model.tflite")


def test_the_mnist_cnn_parses_as_hailos_example(mnist_cnn, val_images):
    m, path = mnist_cnn
    assert tflite.op_names(path)[0] == ["CONV_2D", "MAX_POOL_2D", "CONV_2D", "MAX_POOL_2D", "CONV_2D", "SHAPE",
                                        "STRIDED_SLICE", "PACK", "RESHAPE", "FULLY_CONNECTED"]
    net = tflite.read(path, "mnist")
    S, V = "SAME_TENSORFLOW", "VALID"
    assert describe(net) == [
        ("conv1", (3, 3, 1, 8), (1, 1), S, "relu", (28, 28, 8)),
        ("maxpool1", "max", (2, 2), (2, 2), V, (14, 14, 8)),
        ("conv2", (3, 3, 8, 16), (1, 1), V, "relu", (12, 12, 16)),
        ("maxpool2", "max", (2, 2), (2, 2), V, (6, 6, 16)),
        ("conv3", (3, 3, 16, 16), (1, 1), V, "relu", (4, 4, 16)),
        ("fc1", (256, 10), "linear")]
    assert net.input_shape == (28, 28, 1) and net.input_original_name == "serving_default_input"
    assert any("conv1" in n for n in net.layers[0].original_names)
    assert any("relu1" in n for n in net.layers[0].original_names)
    assert list(hn.to_hn(net)["layers"]) == [f"mnist/{n}" for n in (
        "input_layer1", "conv1", "maxpool1", "conv2", "maxpool2", "conv3", "fc1", "output_layer1")]
    check_against_litert(net, path, m, val_images[0][:64])


def test_batchnorm_is_folded_in_correctly_rounded_float32(mnist_cnn):
    """The exported conv weights are the fold computed in numpy (gamma / sqrt(var + eps)), bit for bit:
    not the converter's own fold, whose rsqrt is an approximation that differs between CPU vendors."""
    m, path = mnist_cnn
    net = tflite.read(path, "mnist")
    for i, conv in enumerate([layer for layer in net.layers if isinstance(layer, network.Conv)], start=1):
        kernel, bias = m.get_layer(f"conv{i}").get_weights()
        bn = m.get_layer(f"bn{i}")
        gamma, beta, mean, var = bn.get_weights()
        scale = gamma / np.sqrt(var + np.float32(bn.epsilon))
        assert np.array_equal(conv.kernel, kernel * scale) and np.array_equal(conv.bias, (bias - mean) * scale + beta)


def test_a_model_without_batchnorm_is_exported_as_it_is():
    m = model.build(model.TrainConfig(hidden=(8,)))
    assert model.fold_batchnorm(m) is m


def test_io_names_of_the_cnn(mnist_cnn):
    _, path = mnist_cnn
    name, shape, end = tflite.io_names(path)
    assert name == "serving_default_input:0" and shape == [1, 28, 28, 1]
    assert tflite.op_names(path)[1] == [1, 10] and end


CASES = {
    "strides, SAME on odd sizes, depthwise, average pools, MEAN": (
        lambda: [L.Conv2D(4, 3, strides=2, padding="same", activation="relu6"),
                 L.MaxPooling2D(3, strides=2, padding="same"), L.Conv2D(3, 2, padding="same"),
                 L.AveragePooling2D(2, padding="same"), L.DepthwiseConv2D(2, padding="same", activation="relu"),
                 L.AveragePooling2D(2, strides=1), L.GlobalAveragePooling2D(), L.Dense(3)],
        (23, 21, 2), ["conv", "maxpool", "conv", "avgpool", "dw", "avgpool", "avgpool", "fc"]),
    "depthwise strided VALID, average pool VALID, flatten": (
        lambda: [L.DepthwiseConv2D(3, strides=2, activation="relu6"), L.AveragePooling2D(3, strides=2),
                 L.Flatten(), L.Dense(5, activation="relu"), L.Dense(3)],
        (15, 13, 3), ["dw", "avgpool", "fc", "fc"]),
    "MEAN keeping dims, then flatten": (
        lambda: [L.Conv2D(6, 3, activation="relu"), L.GlobalAveragePooling2D(keepdims=True), L.Flatten(), L.Dense(3)],
        (9, 9, 2), ["conv", "avgpool", "fc"]),
    "a ReLU after a max pool goes to the conv before it": (
        lambda: [L.Conv2D(4, 3), L.MaxPooling2D(), L.ReLU(), L.Flatten(), L.Dense(3)],
        (9, 9, 2), ["conv", "maxpool", "fc"]),
    "BatchNorm folded into a strided SAME conv": (
        lambda: [L.Conv2D(4, 3, strides=2, padding="same"), L.BatchNormalization(), L.ReLU(), L.Flatten(),
                 L.Dense(3)],
        (9, 9, 2), ["conv", "fc"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_conv_ops_match_litert(case, tmp_path):
    layers, shape, kinds = CASES[case]
    m = keras_model(*layers(), shape=shape)
    path = export(m, tmp_path / "m.tflite")
    net = tflite.read(path, "net")
    assert [re.sub(r"\d+$", "", layer.name) for layer in net.layers] == kinds
    x = np.random.default_rng(2).standard_normal((16, *shape)).astype(np.float32)
    out = m.predict(x, verbose=0)
    check_against_litert(net, path, m if out.ndim == 2 else None, x)
    back = hn.from_hn(hn.to_hn(net), hn.weights(net), "x.hn")
    assert np.array_equal(network.forward(back, x), network.forward(net, x))


def test_the_relu_after_a_max_pool_is_the_convs(tmp_path):
    m = keras_model(L.Conv2D(4, 3), L.MaxPooling2D(), L.ReLU(), L.Flatten(), L.Dense(3))
    net = tflite.read(export(m, tmp_path / "m.tflite"), "net")
    assert net.layers[0].activation == "relu"


# --- flatbuffers edited where Keras writes no such op ----------------------------------------------


def edited(raw: bytes, fn) -> bytes:
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    m = s.ModelT.InitFromPackedBuf(raw, 0)
    fn(m, s)
    builder = flatbuffers.Builder(1024)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _const_tensor(m, s, name: str, value: np.ndarray) -> int:
    buf = s.BufferT()
    buf.data = np.frombuffer(value.astype("<f4").tobytes(), np.uint8)
    m.buffers.append(buf)
    t = s.TensorT()
    t.shape, t.type, t.buffer, t.name = list(value.shape), s.TensorType.FLOAT32, len(m.buffers) - 1, name.encode()
    g = m.subgraphs[0]
    g.tensors.append(t)
    return len(g.tensors) - 1


def _opcode(m, s, code: int) -> int:
    oc = s.OperatorCodeT()
    oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), 1
    m.operatorCodes.append(oc)
    return len(m.operatorCodes) - 1


def test_a_standalone_batchnorm_mul_add_is_folded_into_the_conv(tmp_path):
    """CONV_2D -> MUL(scale[C]) -> ADD(shift[C], fused RELU): what a BatchNorm the converter could not
    fold looks like; the parser folds both into the conv, which then has the ADD's ReLU."""
    base = model.tflite_bytes(keras_model(L.Conv2D(4, 3), L.GlobalAveragePooling2D(), L.Dense(3)))
    rng = np.random.default_rng(3)
    scale, shift = (rng.random(4) + 0.5).astype(np.float32), rng.standard_normal(4).astype(np.float32)

    def insert(m, s):
        g = m.subgraphs[0]
        conv_out = g.operators[0].outputs[0]
        mids = []
        for name in ("bn/mul", "bn/add"):
            t = s.TensorT()
            t.shape, t.type, t.name, t.buffer = list(g.tensors[conv_out].shape), s.TensorType.FLOAT32, name.encode(), 0
            g.tensors.append(t)
            mids.append(len(g.tensors) - 1)
        c_scale, c_shift = _const_tensor(m, s, "bn/scale", scale), _const_tensor(m, s, "bn/shift", shift)
        mul, add = s.OperatorT(), s.OperatorT()
        mul.opcodeIndex, mul.inputs, mul.outputs = _opcode(m, s, s.BuiltinOperator.MUL), [conv_out, c_scale], [mids[0]]
        mul.builtinOptionsType, mul.builtinOptions = s.BuiltinOptions.MulOptions, s.MulOptionsT()
        add.opcodeIndex, add.inputs, add.outputs = _opcode(m, s, s.BuiltinOperator.ADD), [c_shift, mids[0]], [mids[1]]
        add.builtinOptionsType, add.builtinOptions = s.BuiltinOptions.AddOptions, s.AddOptionsT()
        add.builtinOptions.fusedActivationFunction = s.ActivationFunctionType.RELU
        for op in g.operators[1:]:
            op.inputs = [mids[1] if i == conv_out else i for i in op.inputs]
        g.operators[1:1] = [mul, add]

    path = tmp_path / "bn.tflite"
    path.write_bytes(edited(base, insert))
    assert tflite.op_names(path)[0][:4] == ["CONV_2D", "MUL", "ADD", "MEAN"]
    net = tflite.read(path, "net")
    assert [layer.name for layer in net.layers] == ["conv1", "avgpool1", "fc1"]
    assert net.layers[0].activation == "relu" and "bn/add" in net.layers[0].original_names
    check_against_litert(net, str(path), None, np.random.default_rng(4).standard_normal((16, 9, 9, 2)).astype(np.float32))


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_a_standalone_relu_after_a_pool(tmp_path, pool):
    """CONV_2D -> MAX_POOL_2D -> RELU: the ReLU is the conv's (max commutes with it); after an
    average pool it is refused."""
    base = model.tflite_bytes(keras_model(L.Conv2D(4, 3), L.MaxPooling2D() if pool == "max" else L.AveragePooling2D(2),
                                          L.GlobalAveragePooling2D(), L.Dense(3)))

    def insert(m, s):
        g = m.subgraphs[0]
        pool_out = g.operators[1].outputs[0]
        t = s.TensorT()
        t.shape, t.type, t.name, t.buffer = list(g.tensors[pool_out].shape), s.TensorType.FLOAT32, b"act/Relu", 0
        g.tensors.append(t)
        relu = s.OperatorT()
        relu.opcodeIndex, relu.inputs, relu.outputs = _opcode(m, s, s.BuiltinOperator.RELU), [pool_out], [len(g.tensors) - 1]
        for op in g.operators[2:]:
            op.inputs = [len(g.tensors) - 1 if i == pool_out else i for i in op.inputs]
        g.operators[2:2] = [relu]

    path = tmp_path / "relu.tflite"
    path.write_bytes(edited(base, insert))
    assert tflite.op_names(path)[0][:3] == ["CONV_2D", "MAX_POOL_2D" if pool == "max" else "AVERAGE_POOL_2D", "RELU"]
    if pool == "avg":
        with pytest.raises(PipelineError, match=r"op 2 \(RELU\) at node 'act/Relu' is not supported here"):
            tflite.read(path, "net")
        return
    net = tflite.read(path, "net")
    assert [(layer.name, getattr(layer, "activation", None)) for layer in net.layers] == [
        ("conv1", "relu"), ("maxpool1", None), ("avgpool1", None), ("fc1", "linear")]
    check_against_litert(net, str(path), None, np.random.default_rng(6).standard_normal((8, 9, 9, 2)).astype(np.float32))


def test_a_dilated_conv(tmp_path):
    """CONV_2D with dilation factors (what LiteRT runs; Keras writes a dilated SAME conv through
    SPACE_TO_BATCH_ND, which the parser refuses)."""
    base = model.tflite_bytes(keras_model(L.Conv2D(4, 3, activation="relu"), L.GlobalAveragePooling2D(), L.Dense(3)))

    def dilate(m, s):
        g = m.subgraphs[0]
        opts = g.operators[0].builtinOptions
        opts.dilationHFactor, opts.dilationWFactor = 2, 1
        t = g.tensors[g.operators[0].outputs[0]]
        t.shape = [1, 5, 7, 4]
        if t.shapeSignature is not None:
            t.shapeSignature = [-1, 5, 7, 4]

    path = tmp_path / "dilated.tflite"
    path.write_bytes(edited(base, dilate))
    net = tflite.read(path, "net")
    assert net.layers[0].dilations == (2, 1) and net.shapes[0][1] == (5, 7, 4)
    assert hn.to_hn(net)["layers"]["net/conv1"]["params"]["dilations"] == [1, 2, 1, 1]
    check_against_litert(net, str(path), None, np.random.default_rng(5).standard_normal((8, 9, 9, 2)).astype(np.float32))


# --- refusals ------------------------------------------------------------------------------------


REFUSED = {
    "TANH after a conv": ([L.Conv2D(4, 3, activation="tanh"), L.Flatten(), L.Dense(3)], 1, "TANH", "Tanh", ""),
    "SOFTMAX in the middle": ([L.Flatten(), L.Dense(5), L.Softmax(), L.Dense(3)], 5, "SOFTMAX", "Softmax",
                              " before the last op"),
    "global max pool": ([L.Conv2D(4, 3), L.GlobalMaxPooling2D(), L.Dense(3)], 1, "REDUCE_MAX", "Max", ""),
    "depth multiplier 2": ([L.DepthwiseConv2D(3, depth_multiplier=2), L.Flatten(), L.Dense(3)], 0,
                           "DEPTHWISE_CONV_2D", "BiasAdd", " with kernel [1, 3, 3, 4] (only depth multiplier 1 on 2 channels)"),
    "BatchNorm after a ReLU": ([L.Conv2D(4, 3, activation="relu"), L.BatchNormalization(), L.Flatten(), L.Dense(3)],
                               1, "MUL", "mul_1", " here (only right after a linear conv or dense layer)"),
    "dilated SAME conv (SPACE_TO_BATCH_ND)": ([L.Conv2D(4, 3), L.Conv2D(3, 3, dilation_rate=2, padding="same"),
                                               L.Flatten(), L.Dense(3)], 1, "SPACE_TO_BATCH_ND", "SpaceToBatchND", ""),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_unsupported_ops_stop_with_one_line(case, tmp_path):
    layers, index, op, node, why = REFUSED[case]
    path = export(keras_model(*layers), tmp_path / "m.tflite")
    with pytest.raises(PipelineError) as err:
        tflite.read(path, "net")
    msg = str(err.value)
    end = "no supported layer comes before it" if index == 0 else "try end node '[^';]+'"
    assert re.fullmatch(rf"{re.escape(path)}: op {index} \({op}\) at node '[^';]*{node}' is not supported"
                        rf"{re.escape(why)}; supported: {re.escape(tflite.SUPPORTED_TEXT)}; {end}", msg), msg


def test_the_suggested_end_node_is_the_last_parsed_tensor(tmp_path):
    path = export(keras_model(L.Conv2D(4, 3, name="conv_a"), L.MaxPooling2D(name="pool_a"),
                              L.Activation("tanh", name="bad"), L.Flatten(), L.Dense(3)), tmp_path / "m.tflite")
    with pytest.raises(PipelineError, match=r"op 2 \(TANH\) at node '[^']*bad[^']*' .*; try end node '[^']*pool_a[^']*'$"):
        tflite.read(path, "net")
