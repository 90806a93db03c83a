"""The HN (Hailo Network) JSON form of a `network.Network`, and its weights' .npz keys.

`to_hn` / `from_hn` convert a Network to and from the HN layout of Hailo's archives: scoped layer
names as the SDK gives them, `<net>/input_layer1`, [`<net>/normalization1`,] `<net>/fc1`, ...,
`<net>/output_layer1`; per-layer `type` (`input_layer`, `normalization`, `dense`, `output_layer`),
`input`, `output`, `input_shapes`, `output_shapes` (NHWC, batch -1), `original_names` (the source
model's names: the input tensor; a layer's output tensor and its fused ops; `out` for the output
layer, as the Model Zoo's HN editor writes it), `params` (`kernel_shape`, `activation`,
`batch_norm`; a normalization's `activation`, `elementwise_add`); and `net_params`, whose
`output_layers_order` lists the layers that feed the outputs (`<net>/fc3`), as tools written
against the SDK resolve outputs through it.  Weights live beside the HN in an .npz keyed
`<net>/<layer>/kernel:0` and `<net>/<layer>/bias:0` (`weights`); a normalization's are [C].

`from_hn` is a strict reader: it walks the graph from the input layer, so cycles, branches,
unknown layer types, shape mismatches and non-finite weights are reported as PipelineError.
"""

from __future__ import annotations

import math

import numpy as np

from hailopipe.errors import PipelineError
from hailopipe.network import ACTIVATIONS, Dense, Network, Normalization

TYPES = ("input_layer", "normalization", "dense", "output_layer")  # the HN layer types read and written


def weights(net: Network) -> dict[str, np.ndarray]:
    """The float params as the SDK's .npz keys them: `<net>/<layer>/kernel:0` and `.../bias:0`."""
    out = {}
    for layer in ([net.normalization] if net.normalization else []) + list(net.layers):
        out[f"{net.name}/{layer.name}/kernel:0"] = layer.kernel
        out[f"{net.name}/{layer.name}/bias:0"] = layer.bias
    return out


def io_names(net: Network) -> tuple[str, str]:
    return f"{net.name}/input_layer1", f"{net.name}/output_layer1"


def to_hn(net: Network) -> dict:
    """The HN dict of `net`."""
    scope = net.name
    in_name, out_name = io_names(net)
    in_shape = [-1, *net.input_shape]
    chain = [(in_name, "input_layer", in_shape, [net.input_original_name], {})]
    if net.normalization is not None:
        chain.append((f"{scope}/{net.normalization.name}", "normalization", in_shape, [],
                      {"activation": "linear", "elementwise_add": False}))
    for layer in net.layers:
        chain.append((f"{scope}/{layer.name}", "dense", [-1, 1, 1, int(layer.kernel.shape[1])],
                      list(layer.original_names),
                      {"kernel_shape": [int(s) for s in layer.kernel.shape], "activation": layer.activation,
                       "batch_norm": False}))
    chain.append((out_name, "output_layer", chain[-1][2], ["out"], None))
    layers = {}
    for i, (name, ltype, shape, original, params) in enumerate(chain):
        spec = {"type": ltype, "input": [chain[i - 1][0]] if i else [],
                "output": [chain[i + 1][0]] if i + 1 < len(chain) else [],
                "input_shapes": [chain[i - 1][2] if i else shape], "output_shapes": [shape],
                "original_names": original}
        if params is not None:
            spec["params"] = params
        layers[name] = spec
    return {"name": scope,
            "net_params": {"version": "1.0", "stage": "HN", "net_scopes": [scope],
                           "output_layers_order": [chain[-2][0]]},
            "layers": layers}


def _expect(cond: bool, where: str, what: str) -> None:
    if not cond:
        raise PipelineError(f"{where}: {what}")


def _shape(value, where: str) -> list[int]:
    _expect(isinstance(value, list) and len(value) == 1 and isinstance(value[0], list)
            and len(value[0]) == 4 and all(isinstance(d, int) and not isinstance(d, bool) for d in value[0])
            and value[0][0] == -1 and all(d > 0 for d in value[0][1:]),
            where, f"shape must be [[-1, H, W, C]] with positive sizes, got {value!r}")
    return value[0]


def _names(layer: dict, where: str) -> list[str]:
    value = layer.get("original_names", [])
    _expect(isinstance(value, list) and all(isinstance(n, str) for n in value), where,
            f"'original_names' must be a list of strings, got {value!r}"[:200])
    return list(value)


def from_hn(hn: dict, params: dict[str, np.ndarray], source: str = "HN") -> Network:
    """Rebuild a Network from an HN dict and its float params, checking everything it relies on."""
    _expect(isinstance(hn, dict), source, "HN must be a JSON object")
    name, layers = hn.get("name"), hn.get("layers")
    _expect(isinstance(name, str) and name.isidentifier(), source, f"bad network name {name!r}")
    _expect(isinstance(layers, dict) and layers, source, "'layers' must be a non-empty object")
    for lname, layer in layers.items():
        _expect(isinstance(layer, dict), source, f"layer {lname!r} must be an object")
        ltype = layer.get("type")
        _expect(ltype in TYPES, source,
                f"layer {lname!r} has unsupported type {ltype!r} (supported: {', '.join(TYPES)})")
        for key in ("input", "output"):
            _expect(isinstance(layer.get(key), list) and all(isinstance(n, str) for n in layer[key]),
                    source, f"layer {lname!r}: '{key}' must be a list of layer names")
    inputs = [n for n, spec in layers.items() if spec["type"] == "input_layer"]
    _expect(len(inputs) == 1, source, f"expected exactly one input_layer, found {len(inputs)}")
    current, seen, chain = inputs[0], set(), []
    while True:
        _expect(current not in seen, source, f"cycle in the graph at {current!r}")
        seen.add(current)
        layer = layers[current]
        chain.append(current)
        if layer["type"] == "output_layer":
            _expect(not layer["output"], source, f"{current!r}: output_layer must have no outputs")
            break
        _expect(len(layer["output"]) == 1, source,
                f"{current!r}: only chains are supported, found {len(layer['output'])} successors")
        nxt = layer["output"][0]
        _expect(nxt in layers, source, f"{current!r} feeds unknown layer {nxt!r}")
        _expect(layers[nxt]["input"] == [current], source, f"{nxt!r}: 'input' does not name {current!r}")
        current = nxt
    _expect(len(seen) == len(layers), source, f"{len(layers) - len(seen)} layer(s) not connected to the chain")
    _expect(len(chain) >= 3, source, "the graph has no dense layer")
    in_shape = _shape(layers[chain[0]].get("output_shapes"), f"{source}: {chain[0]}")
    features = math.prod(in_shape[1:])
    input_names = _names(layers[chain[0]], f"{source}: {chain[0]}")
    norm = None
    if layers[chain[1]]["type"] == "normalization":
        norm = _normalization(chain[1], layers[chain[1]], params, in_shape, name, source)
        chain = chain[:1] + chain[2:]
        _expect(len(chain) >= 3, source, "the graph has no dense layer")
    dense: list[Dense] = []
    for lname in chain[1:-1]:
        layer = layers[lname]
        where = f"{source}: {lname}"
        _expect(layer["type"] == "dense", source, f"{lname!r}: expected a dense layer between input and output")
        _expect(lname.startswith(name + "/"), source, f"{lname!r} is not in scope {name!r}")
        p = layer.get("params")
        _expect(isinstance(p, dict), where, "missing 'params'")
        act = p.get("activation")
        _expect(act in ACTIVATIONS, where, f"unsupported activation {act!r} (supported: {', '.join(ACTIVATIONS)})")
        out_shape = _shape(layer.get("output_shapes"), where)
        units = math.prod(out_shape[1:])
        kernel, bias = params.get(f"{lname}/kernel:0"), params.get(f"{lname}/bias:0")
        _expect(kernel is not None and bias is not None, where, "kernel:0 or bias:0 missing from the params")
        _expect(kernel.dtype == np.float32 and bias.dtype == np.float32, where, "params must be float32")
        _expect(kernel.shape == (features, units), where,
                f"kernel shape {list(kernel.shape)} does not match input {features} -> output {units}")
        _expect(bias.shape == (units,), where, f"bias shape {list(bias.shape)} != [{units}]")
        _expect(p.get("kernel_shape") == [features, units], where, "params.kernel_shape disagrees with the kernel")
        _expect(bool(np.isfinite(kernel).all() and np.isfinite(bias).all()), where, "weights contain NaN or inf")
        dense.append(Dense(lname.split("/", 1)[1], kernel, bias, act, _names(layer, where)))
        features = units
    order = hn.get("net_params", {}).get("output_layers_order") if isinstance(hn.get("net_params"), dict) else None
    _expect(order in (None, [chain[-2]]), source,
            f"net_params.output_layers_order {order!r} does not name the layer feeding the output, {chain[-2]!r}")
    return Network(name, tuple(in_shape[1:]), dense, (input_names or ["input"])[0], norm)


def _normalization(lname: str, layer: dict, params, in_shape: list[int], scope: str, source: str) -> Normalization:
    """The normalization layer after the input: same shape, per-channel float32 kernel and bias."""
    where = f"{source}: {lname}"
    _expect(lname.startswith(scope + "/"), source, f"{lname!r} is not in scope {scope!r}")
    _expect(_shape(layer.get("output_shapes"), where) == in_shape, where, "must keep the input's shape")
    channels = in_shape[-1]
    kernel, bias = params.get(f"{lname}/kernel:0"), params.get(f"{lname}/bias:0")
    _expect(kernel is not None and bias is not None, where, "kernel:0 or bias:0 missing from the params")
    _expect(kernel.dtype == np.float32 and bias.dtype == np.float32, where, "params must be float32")
    _expect(kernel.shape == (channels,) and bias.shape == (channels,), where,
            f"kernel and bias must have shape [{channels}] (one per input channel)")
    _expect(bool(np.isfinite(kernel).all() and np.isfinite(bias).all() and (kernel > 0).all()), where,
            "kernel must be finite and positive (1 / std), bias finite")
    return Normalization(lname.split("/", 1)[1], kernel, bias)
