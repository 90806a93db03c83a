"""Fuzz the convolutional layer types: an HN with conv, dw, maxpool and avgpool layers through
`har.load` (its params edited: kernel shapes, strides 0, dilations, padding strings, groups,
activations, shape mismatches, type swaps), and a convolutional TFLite model through `tflite.read`.
Every case must load or be refused with a one-line PipelineError naming the file (engine and limits:
tests/fuzzing.py)."""

from __future__ import annotations

import copy
from typing import Iterator

import numpy as np
import pytest

from hailopipe.fileio import json_bytes, npz_bytes
from hailopipe.formats import har, hn, tflite
from tests.fuzzing import LINUX_ONLY, PATH_CASES, Format, check, json_text, mutate_bytes, mutate_json, raw_cases
from tests.test_cnn_network import every_type_net
from tests.test_fuzz import tar_bytes

pytestmark = LINUX_ONLY

ODD = [-1, 0, 1, 2, 3, 5, 2**31, 2**62, True, 1.5, "2", None]
PADDINGS = ["SAME", "VALID", "SAME_TENSORFLOW", "same", "valid", "", None, 5, "VALID "]
TYPES = ["conv", "dw", "maxpool", "avgpool", "dense", "deconv", "global_avg_pool"]


def _pick(rng, seq):
    return copy.deepcopy(seq[int(rng.integers(len(seq)))])


def conv_edit(rng, graph: dict) -> tuple[str, dict]:
    """One edit of a conv/dw/pool layer's params or shapes."""
    graph = copy.deepcopy(graph)
    layers = graph["layers"]
    names = [n for n, spec in layers.items() if spec["type"] in ("conv", "dw", "maxpool", "avgpool")]
    layer = layers[_pick(rng, names)]
    params = layer.setdefault("params", {})
    op = str(rng.choice(["kernel-shape", "strides", "dilations", "padding", "groups", "activation", "batch-norm",
                         "output-shape", "input-shape", "type", "drop-param"]))
    if op == "kernel-shape":
        params["kernel_shape"] = [_pick(rng, ODD) for _ in range(int(rng.integers(0, 6)))]
    elif op in ("strides", "dilations"):
        params[op] = [1, _pick(rng, ODD), _pick(rng, ODD), 1] if rng.random() < 0.7 else [_pick(rng, ODD)] * 4
    elif op == "padding":
        params["padding"] = _pick(rng, PADDINGS)
    elif op == "groups":
        params["groups"] = _pick(rng, ODD)
    elif op == "activation":
        params["activation"] = str(rng.choice(["relu6", "relu", "linear", "RELU6", "swish", ""]))
    elif op == "batch-norm":
        params["batch_norm"] = _pick(rng, [True, False, 1, None])
    elif op in ("output-shape", "input-shape"):
        layer[op.replace("-shape", "_shapes")] = [[-1, *(_pick(rng, ODD[:6]) for _ in range(3))]]
    elif op == "type":
        layer["type"] = _pick(rng, TYPES)
    elif params:
        del params[_pick(rng, sorted(params))]
    return op, graph


def cnn_hn_cases(rng) -> Iterator[tuple[str, bytes]]:
    net = every_type_net()
    graph = hn.to_hn(net)
    params = npz_bytes(hn.weights(net))
    meta = json_bytes({"state": "hailo_model", "net_name": "net"})

    def pack(hn_bytes: bytes, npz: bytes = params) -> bytes:
        return tar_bytes([("net.metadata.json", meta), ("net.hn", hn_bytes), ("net.npz", npz)])

    yield "seed", pack(json_bytes(graph))
    for _ in range(450):
        yield "json-values:edit", pack(json_text(mutate_json(rng, graph, int(rng.integers(1, 4)))))
    for _ in range(500):
        edited, ops = graph, []
        for _ in range(int(rng.integers(1, 3))):
            op, edited = conv_edit(rng, edited)
            ops.append(op)
        yield f"conv:{'+'.join(ops)}", pack(json_text(edited))
    for _ in range(100):
        kind, text = mutate_bytes(rng, json_bytes(graph))
        yield f"text:{kind}", pack(text)
    weights = hn.weights(net)
    for key in ("net/conv1/kernel:0", "net/dw1/kernel:0", "net/dw1/bias:0"):
        for bad in (np.zeros((2, 2, 5, 2), np.float32), np.zeros((3,), np.float32), weights[key].astype(np.float64),
                    np.full(weights[key].shape, np.nan, np.float32)):
            yield f"hostile:weights-{key}", pack(json_bytes(graph), npz_bytes({**weights, key: bad}))
    yield from PATH_CASES


def tflite_cnn_seed() -> bytes:
    pytest.importorskip("tensorflow")
    import keras

    from hailopipe import model

    m = keras.Sequential([keras.Input((9, 9, 2)), keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
                          keras.layers.MaxPooling2D(), keras.layers.DepthwiseConv2D(2, activation="relu6"),
                          keras.layers.AveragePooling2D(2, padding="same"), keras.layers.GlobalAveragePooling2D(),
                          keras.layers.Dense(3)])
    return model.tflite_bytes(m)


OPTION_FIELDS = ["strideH", "strideW", "padding", "fusedActivationFunction", "dilationHFactor", "dilationWFactor",
                 "filterHeight", "filterWidth", "depthMultiplier", "keepDims"]


def edit_cnn_tflite(rng, raw: bytes) -> tuple[str, bytes]:
    """One structured edit of the flatbuffer: a tensor's shape, type or buffer, an op's code, inputs,
    outputs or options (strides, padding, filter sizes, dilations, activations...), the graph's I/O."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    m = s.ModelT.InitFromPackedBuf(raw, 0)
    g = m.subgraphs[0]
    n = len(g.tensors)
    op = str(rng.choice(["tensor-shape", "tensor-type", "tensor-buffer", "opcode", "op-inputs", "op-outputs",
                         "options", "builtin-code", "graph-io", "buffer-data", "drop-op", "swap-ops"]))
    if op == "tensor-shape":
        g.tensors[int(rng.integers(n))].shape = [int(x) for x in rng.integers(-2, 12, int(rng.integers(0, 6)))]
    elif op == "tensor-type":
        g.tensors[int(rng.integers(n))].type = int(rng.integers(0, 20))
    elif op == "tensor-buffer":
        g.tensors[int(rng.integers(n))].buffer = int(rng.integers(0, len(m.buffers) + 2))
    elif op == "opcode":
        g.operators[int(rng.integers(len(g.operators)))].opcodeIndex = int(rng.integers(0, len(m.operatorCodes) + 1))
    elif op == "op-inputs":
        g.operators[int(rng.integers(len(g.operators)))].inputs = [int(x) for x in rng.integers(-1, n + 2, int(rng.integers(0, 4)))]
    elif op == "op-outputs":
        g.operators[int(rng.integers(len(g.operators)))].outputs = [int(x) for x in rng.integers(-1, n + 2, int(rng.integers(0, 3)))]
    elif op == "options":
        target = g.operators[int(rng.integers(len(g.operators)))].builtinOptions
        fields = [f for f in OPTION_FIELDS if target is not None and hasattr(target, f)]
        if fields:
            field = str(rng.choice(fields))
            values = {"keepDims": [0, 1], "padding": [-1, 0, 1, 2, 100],
                      "fusedActivationFunction": [-1, 0, 1, 2, 3, 4, 6, 100]}.get(field, [-1, 0, 1, 2, 3, 100, 2**31 - 1])
            setattr(target, field, int(rng.choice(values)))
    elif op == "builtin-code":
        c = m.operatorCodes[int(rng.integers(len(m.operatorCodes)))]
        c.builtinCode = c.deprecatedBuiltinCode = int(rng.integers(0, 127))
    elif op == "graph-io":
        g.inputs = [int(x) for x in rng.integers(-1, n + 2, int(rng.integers(0, 3)))]
        g.outputs = [int(rng.integers(-1, n + 2))]
    elif op == "buffer-data":
        b = m.buffers[int(rng.choice([i for i, x in enumerate(m.buffers) if x.data is not None]))]
        b.data = None if rng.random() < 0.3 else b.data[:int(rng.integers(0, len(b.data) + 1))]
    elif op == "drop-op":
        del g.operators[int(rng.integers(len(g.operators)))]
    else:
        i, j = sorted(int(x) for x in rng.integers(0, len(g.operators), 2))
        g.operators[i], g.operators[j] = g.operators[j], g.operators[i]
    builder = flatbuffers.Builder(1024)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    return op, bytes(builder.Output())


def tflite_cnn_cases(rng) -> Iterator[tuple[str, bytes]]:
    seed = tflite_cnn_seed()
    yield "seed", seed
    yield from raw_cases(rng, [seed], 450)
    for _ in range(600):
        op, raw = edit_cnn_tflite(rng, seed)
        yield f"flatbuffer:{op}", raw
    yield from PATH_CASES


FORMATS = {f.name: f for f in [Format("hn cnn (through har.load)", "m.har", cnn_hn_cases, har.load),
                                Format("tflite cnn", "m.tflite", tflite_cnn_cases, lambda p: tflite.read(p, "net"))]}


@pytest.mark.parametrize("name", list(FORMATS))
def test_fuzz_format(name, tmp_path):
    tally = check(FORMATS[name], tmp_path)
    assert tally.outcomes["loaded"] >= 1  # the seed itself
