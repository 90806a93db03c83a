"""The HN (Hailo Network) JSON form of a `network.Network`, and its weights' .npz keys.

`to_hn` / `from_hn` convert a Network to and from the HN layout of Hailo's archives: scoped layer
names as the SDK gives them, `<net>/input_layer1`, [`<net>/normalization1`,] `<net>/conv1`,
`<net>/maxpool1`, ..., `<net>/fc1`, ..., `<net>/output_layer1`; per-layer `type` (`TYPES`),
`input`, `output`, `input_shapes`, `output_shapes` (NHWC, batch -1), `original_names` (the source
model's names: the input tensor; a layer's output tensor and its fused ops; `out` for the output
layer, as the Model Zoo's HN editor writes it), `params`:

- `dense`: `kernel_shape` [in, out], `activation`, `batch_norm`;
- `conv`, `dw`: `kernel_shape` [kh, kw, cin, cout] (dw: [kh, kw, C, 1]), `strides` [1, sh, sw, 1],
  `dilations` [1, dh, dw, 1], `padding` (VALID | SAME_TENSORFLOW), `groups` (1; dw: C),
  `activation`, `batch_norm` (false: a BatchNorm is folded into the kernel and bias);
- `maxpool`, `avgpool`: `kernel_shape` [1, kh, kw, 1], `strides` [1, sh, sw, 1], `padding`;
- `normalization`: `activation`, `elementwise_add`;

and `net_params`, whose `output_layers_order` lists the layers that feed the outputs (`<net>/fc3`),
as tools written against the SDK resolve outputs through it.  Weights live beside the HN in an
.npz keyed `<net>/<layer>/kernel:0` and `<net>/<layer>/bias:0` (`weights`), shaped as
`kernel_shape` (a normalization's are [C]); pooling layers have none.

`from_hn` is a strict reader: it walks the graph from the input layer, so cycles, branches,
unknown layer types or params, shape mismatches and non-finite weights are reported as one-line
PipelineErrors naming the file and the layer.
"""

from __future__ import annotations

import math

import numpy as np

from hailopipe.errors import PipelineError
from hailopipe.network import ACTIVATIONS, PADDINGS, Conv, Dense, Network, Normalization, Pool, output_shape

# the HN layer types read and written
TYPES = ("input_layer", "normalization", "conv", "dw", "maxpool", "avgpool", "dense", "output_layer")
MAX_WINDOW = 1 << 12  # kernel, stride and dilation sizes a reader accepts


def weights(net: Network) -> dict[str, np.ndarray]:
    """The float params as the SDK's .npz keys them: `<net>/<layer>/kernel:0` and `.../bias:0`."""
    out = {}
    for layer in ([net.normalization] if net.normalization else []) + list(net.layers):
        if isinstance(layer, Pool):
            continue
        out[f"{net.name}/{layer.name}/kernel:0"] = layer.kernel
        out[f"{net.name}/{layer.name}/bias:0"] = layer.bias
    return out


def io_names(net: Network) -> tuple[str, str]:
    return f"{net.name}/input_layer1", f"{net.name}/output_layer1"


def _hn_layer(layer, in_shape, out_shape) -> tuple[str, dict]:
    """(type, params) of a layer as the SDK's HN has them."""
    if isinstance(layer, Dense):
        return "dense", {"kernel_shape": [int(s) for s in layer.kernel.shape], "activation": layer.activation,
                         "batch_norm": False}
    if isinstance(layer, Conv):
        return ("dw" if layer.depthwise else "conv"), {
            "kernel_shape": [int(s) for s in layer.kernel.shape], "strides": [1, *map(int, layer.strides), 1],
            "dilations": [1, *map(int, layer.dilations), 1], "padding": layer.padding,
            "groups": int(in_shape[-1]) if layer.depthwise else 1, "activation": layer.activation,
            "batch_norm": False}
    return f"{layer.kind}pool", {"kernel_shape": [1, *map(int, layer.size), 1],
                                 "strides": [1, *map(int, layer.strides), 1], "padding": layer.padding}


def to_hn(net: Network) -> dict:
    """The HN dict of `net`."""
    scope = net.name
    in_name, out_name = io_names(net)
    in_shape = [-1, *net.input_shape]
    chain = [(in_name, "input_layer", in_shape, [net.input_original_name], {})]
    if net.normalization is not None:
        chain.append((f"{scope}/{net.normalization.name}", "normalization", in_shape, [],
                      {"activation": "linear", "elementwise_add": False}))
    for layer, (shape_in, shape_out) in zip(net.layers, net.shapes):
        ltype, params = _hn_layer(layer, shape_in, shape_out)
        chain.append((f"{scope}/{layer.name}", ltype, [-1, *map(int, shape_out)], list(layer.original_names), params))
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
    _expect(len(chain) >= 3, source, "the graph has no layer between its input and output")
    in_shape = _shape(layers[chain[0]].get("output_shapes"), f"{source}: {chain[0]}")
    input_names = _names(layers[chain[0]], f"{source}: {chain[0]}")
    norm = None
    if layers[chain[1]]["type"] == "normalization":
        norm = _normalization(chain[1], layers[chain[1]], params, in_shape, name, source)
        chain = chain[:1] + chain[2:]
        _expect(len(chain) >= 3, source, "the graph has no layer after its normalization")
    shape, net_layers = tuple(in_shape[1:]), []
    for lname in chain[1:-1]:
        layer = layers[lname]
        where = f"{source}: {lname}"
        _expect(layer["type"] in READERS, source,
                f"{lname!r}: expected a {', '.join(READERS)} layer between input and output, got {layer['type']!r}")
        _expect(lname.startswith(name + "/"), source, f"{lname!r} is not in scope {name!r}")
        p = layer.get("params")
        _expect(isinstance(p, dict), where, "missing 'params'")
        if layer["type"] != "dense":  # a dense layer takes any shape, flattened
            _expect(_shape(layer.get("input_shapes"), where)[1:] == list(shape), where,
                    f"input_shapes {layer.get('input_shapes')!r} do not match the previous layer's output "
                    f"{_shape_text(shape)}"[:200])
        parsed = READERS[layer["type"]](lname.split("/", 1)[1], p, params, lname, shape, where)
        parsed.original_names = _names(layer, where)
        try:
            expected = output_shape(parsed, shape)
        except ValueError as exc:
            raise PipelineError(f"{where}: {str(exc).split(': ', 1)[-1]}") from None
        out_shape = _shape(layer.get("output_shapes"), where)
        _expect(tuple(out_shape[1:]) == expected  # a dense layer's [-1, 1, 1, C] may be written [-1, C, 1, 1]
                or isinstance(parsed, Dense) and math.prod(out_shape[1:]) == expected[-1], where,
                f"output_shapes {out_shape} do not match its {_shape_text(shape)} input "
                f"({_shape_text(expected)} expected)")
        _expect(isinstance(parsed, Pool) or bool(np.isfinite(parsed.kernel).all() and np.isfinite(parsed.bias).all()),
                where, "weights contain NaN or inf")
        net_layers.append(parsed)
        shape = expected
    order = hn.get("net_params", {}).get("output_layers_order") if isinstance(hn.get("net_params"), dict) else None
    _expect(order in (None, [chain[-2]]), source,
            f"net_params.output_layers_order {order!r} does not name the layer feeding the output, {chain[-2]!r}")
    return Network(name, tuple(in_shape[1:]), net_layers, (input_names or ["input"])[0], norm)


def _shape_text(shape) -> str:
    return "x".join(map(str, shape))


def _activation(p: dict, where: str) -> str:
    act = p.get("activation")
    _expect(act in ACTIVATIONS, where, f"unsupported activation {act!r} (supported: {', '.join(ACTIVATIONS)})")
    return act


def _weights(params, lname: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    kernel, bias = params.get(f"{lname}/kernel:0"), params.get(f"{lname}/bias:0")
    _expect(kernel is not None and bias is not None, where, "kernel:0 or bias:0 missing from the params")
    _expect(kernel.dtype == np.float32 and bias.dtype == np.float32, where, "params must be float32")
    return kernel, bias


def _pair(p: dict, key: str, where: str, default=None) -> tuple[int, int]:
    """[1, a, b, 1] (strides, dilations, a pool's kernel_shape) -> (a, b), each 1..MAX_WINDOW."""
    value = p.get(key, default)
    _expect(isinstance(value, list) and len(value) == 4 and value[0] == 1 and value[3] == 1
            and all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_WINDOW for v in value),
            where, f"params.{key} must be [1, a, b, 1] with 1 <= a, b <= {MAX_WINDOW}, got {value!r}"[:200])
    return value[1], value[2]


def _padding(p: dict, where: str) -> str:
    pad = p.get("padding")
    _expect(pad in PADDINGS, where, f"unsupported padding {pad!r} (supported: {', '.join(PADDINGS)})"[:200])
    return pad


def _dense(short, p, params, lname, shape, where) -> Dense:
    act = _activation(p, where)
    kernel, bias = _weights(params, lname, where)
    features = math.prod(shape)
    _expect(kernel.ndim == 2 and kernel.shape[0] == features, where,
            f"kernel shape {list(kernel.shape)} does not match its input {features}")
    units = kernel.shape[1]
    _expect(bias.shape == (units,), where, f"bias shape {list(bias.shape)} != [{units}]")
    _expect(p.get("kernel_shape") == [features, units], where, "params.kernel_shape disagrees with the kernel")
    return Dense(short, kernel, bias, act)


def _conv(short, p, params, lname, shape, where, depthwise=False) -> Conv:
    ks = p.get("kernel_shape")
    channels = shape[-1]
    _expect(isinstance(ks, list) and len(ks) == 4
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in ks)
            and ks[0] <= MAX_WINDOW and ks[1] <= MAX_WINDOW, where,
            f"params.kernel_shape must be [kh, kw, cin, cout] of positive sizes, got {ks!r}"[:200])
    _expect(ks[2] == channels, where, f"params.kernel_shape {ks} takes {ks[2]} channels, its input has {channels}")
    if depthwise:
        _expect(ks[3] == 1, where, f"a dw kernel_shape must be [kh, kw, C, 1], got {ks}")
    groups = p.get("groups")
    _expect(groups == (channels if depthwise else 1) and not isinstance(groups, bool), where,
            f"params.groups must be {channels if depthwise else 1}, got {groups!r}"[:200])
    _expect(p.get("batch_norm", False) is False, where, "batch_norm must be false (folded into the kernel)")
    kernel, bias = _weights(params, lname, where)
    _expect(list(kernel.shape) == ks, where,
            f"kernel shape {list(kernel.shape)} disagrees with params.kernel_shape {ks}")
    cout = channels if depthwise else ks[3]
    _expect(bias.shape == (cout,), where, f"bias shape {list(bias.shape)} != [{cout}]")
    return Conv(short, kernel, bias, _pair(p, "strides", where), _padding(p, where), _activation(p, where),
                depthwise, _pair(p, "dilations", where, [1, 1, 1, 1]))


def _pool(short, p, params, lname, shape, where, kind="max") -> Pool:
    return Pool(short, kind, _pair(p, "kernel_shape", where), _pair(p, "strides", where), _padding(p, where))


READERS = {"conv": _conv, "dw": lambda *a: _conv(*a, depthwise=True), "maxpool": _pool,
           "avgpool": lambda *a: _pool(*a, kind="avg"), "dense": _dense}


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
