"""The SDK's HN as the hailo backend reads it: its layers in order, named as the SDK names them.

`layers(hn)` walks the chain from the input layer to the output layer and returns every layer in
between, keyed by the SDK's unscoped name (`normalization1`, `fc1`, ...), without assuming this
project's emulator wrote the HN:

- a `normalization` layer (what the model script's `normalization(...)` inserts after the input in
  the optimized HN, with a per-channel kernel and bias) is a layer of its own;
- a separate `activation` layer after a dense/conv layer (the SDK may split one off) is folded
  into the layer before it, whose `activation` it sets (`activation_layer` names it);
- a kernel's shape is `params.kernel_shape` ([..., in, out]), or, without it, the layer's input and
  output sizes; a pooling layer's `kernel_shape` ([1, kh, kw, 1]) is its window, not weights.

`float_network` turns the chain into a `network.Network` (the model script is rendered from it): a
`conv`, `dw`, `maxpool` or `avgpool` layer is read by `formats.hn`'s readers (the same checks as
the emulator's HN reader), a dense layer takes any input shape, flattened.  `compile_report` turns
it into `formats.compile_report`'s layout, keyed by SDK name.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field

import numpy as np

from hailopipe.errors import PipelineError
from hailopipe.formats import compile_report as report_format
from hailopipe.formats import hn as hn_format
from hailopipe.network import ACTIVATIONS, Dense, Network, Normalization, output_shape

KERNEL_TYPES = ("dense", "conv", "dw", "deconv")
POOL_TYPES = ("maxpool", "avgpool")
_QUANT_PARAM = re.compile(r"^\s*quantization_param\(\s*(\[[^\]]*\]|\{[^}]*\}|[^,]+),(.*)\)\s*$")


@dataclass
class Layer:
    name: str                      # scoped, as in the HN: "mnist/fc1"
    type: str
    spec: dict
    input_shape: list[int]
    output_shape: list[int]
    kernel_shape: list[int] | None  # [..., in, out] for layers with weights (normalization: [C])
    activation: str = "linear"
    extra: dict = field(default_factory=dict)

    @property
    def sdk_name(self) -> str:
        return self.name.split("/")[-1]


def _shape(spec: dict, key: str) -> list[int]:
    shapes = spec.get(key) or [[]]
    return [int(d) for d in shapes[0]]


def layers(hn: dict, source) -> list[Layer]:
    """The layers between the input and the output layer, in order (see the module docstring)."""
    specs = hn.get("layers") if isinstance(hn, dict) else None
    inputs = [n for n, spec in (specs or {}).items() if spec.get("type") == "input_layer"]
    if len(inputs) != 1:
        raise PipelineError(f"{source}: the hailo backend handles one input layer, the HN has {len(inputs)}")
    chain, current = [], inputs[0]
    for _ in range(len(specs)):
        nxt = specs[current].get("output") or []
        if not nxt:
            return chain
        if len(nxt) != 1 or nxt[0] not in specs:
            raise PipelineError(f"{source}: HN layer {current} does not feed a single next layer; "
                                "the hailo backend handles chains of layers")
        current, spec = nxt[0], specs[nxt[0]]
        kind, params = spec.get("type"), spec.get("params") or {}
        if kind == "output_layer":
            return chain
        layer = Layer(current, kind, spec, _shape(spec, "input_shapes"), _shape(spec, "output_shapes"), None,
                      params.get("activation", "linear"))
        if kind == "activation" and chain and chain[-1].kernel_shape is not None and chain[-1].activation == "linear":
            chain[-1].activation, chain[-1].output_shape = layer.activation, layer.output_shape
            chain[-1].extra["activation_layer"] = layer.sdk_name
            continue
        if kind == "normalization":
            layer.kernel_shape = [layer.input_shape[-1]]
        elif kind in KERNEL_TYPES or ("kernel_shape" in params and kind not in POOL_TYPES):
            layer.kernel_shape = [int(d) for d in params.get("kernel_shape") or
                                  [int(np.prod(layer.input_shape[1:])), layer.output_shape[-1]]]
        chain.append(layer)
    raise PipelineError(f"{source}: the HN graph has a cycle")


def input_shape(hn: dict) -> tuple[int, ...]:
    first = next(spec for spec in hn["layers"].values() if spec["type"] == "input_layer")
    return tuple(int(d) for d in first["output_shapes"][0][1:])


def float_network(hn: dict, params: dict, source) -> Network:
    """The float network the HN and params describe: an optional normalization, then dense, conv,
    dw and pooling layers (module docstring)."""
    norm, net_layers = None, []
    shape = input_shape(hn)
    chain = layers(hn, source)
    for layer in chain:
        where = f"{source}: HN layer {layer.name}"
        if layer.activation not in ACTIVATIONS:
            raise PipelineError(f"{where}: activation {layer.activation!r} is not one of {', '.join(ACTIVATIONS)}")
        if layer.type in hn_format.READERS and layer.type != "dense":
            spec = dict(layer.spec.get("params") or {}, activation=layer.activation)
            parsed = hn_format.READERS[layer.type](layer.sdk_name, spec, params, layer.name, shape, where)
        elif layer.kernel_shape is None:
            raise PipelineError(f"{where} of type {layer.type} is not supported by the hailo backend (it handles "
                                "normalization, dense, conv, dw, maxpool, avgpool and activation layers)")
        else:
            kernel, bias = params.get(f"{layer.name}/kernel:0"), params.get(f"{layer.name}/bias:0")
            if kernel is None or bias is None:
                raise PipelineError(f"{source}: params {layer.name}/kernel:0 or bias:0 missing")
            kernel, bias = np.asarray(kernel, np.float32), np.asarray(bias, np.float32)
            if layer.type == "normalization":
                if net_layers or norm is not None:
                    raise PipelineError(f"{where}: a normalization only right after the input")
                norm = Normalization(layer.sdk_name, kernel.reshape(-1), bias.reshape(-1))
                continue
            parsed = Dense(layer.sdk_name, kernel.reshape(-1, kernel.shape[-1]), bias, layer.activation)
        try:
            shape = output_shape(parsed, shape)
        except ValueError as exc:
            raise PipelineError(f"{where}: {str(exc).split(': ', 1)[-1]}") from None
        net_layers.append(parsed)
    if not any(layer.kernel_shape is not None and layer.type != "normalization" for layer in chain):
        raise PipelineError(f"{source}: the HN has no layer with weights")
    return Network(hn.get("name", "net"), input_shape(hn), net_layers, normalization=norm)


def precision_modes(script: str, names: list[str]) -> dict[str, str]:
    """SDK layer name -> precision_mode set by the script's quantization_param lines (else a8_w8)."""
    modes = dict.fromkeys(names, "a8_w8")
    for line in script.splitlines():
        m = _QUANT_PARAM.match(line)
        mode = re.search(r"precision_mode\s*=\s*(\w+)", m.group(2)) if m else None
        if mode:
            for pattern in m.group(1).strip("[]{} ").split(","):
                for name in fnmatch.filter(names, pattern.strip().split("/")[-1]):
                    modes[name] = mode.group(1)
    return modes


def compile_report(hn: dict, script: str, source) -> dict:
    """`formats.compile_report`'s layout from the HN's shapes and the script's precision modes, a
    layer per SDK name: MACs and weight bytes for dense/conv and normalization (one product per
    input value) layers, a comparison or addition per window value for pooling layers; other
    layer types are listed with their type and no MACs."""
    chain = layers(hn, source)
    modes = precision_modes(script, [layer.sdk_name for layer in chain])
    entries = {}
    for layer in chain:
        mode = modes[layer.sdk_name]
        w_bits = int(re.match(r"a\d+_w(\d+)", mode).group(1)) if re.match(r"a\d+_w\d+", mode) else 8
        extra = dict(layer.extra)
        if layer.type in POOL_TYPES:  # as the emulator's report: a comparison or addition per window value
            window = (layer.spec.get("params") or {}).get("kernel_shape") or [1, 1, 1, 1]
            entry = report_format.layer(layer.input_shape[1:], layer.output_shape[1:],
                                        int(np.prod(layer.output_shape[1:])) * int(np.prod(window)), 0, 0,
                                        re.sub(r"_w\d+$", "", mode), layer.activation, **extra)
        elif layer.kernel_shape is None:
            entry = report_format.layer(layer.input_shape[1:], layer.output_shape[1:], 0, 0, 0, mode, layer.activation,
                                        type=layer.type, **extra)
        elif layer.type == "normalization":
            shape, channels = layer.input_shape[1:], layer.kernel_shape[0]
            entry = report_format.layer(shape, shape, int(np.prod(shape)), channels * w_bits // 8, channels * 4, mode,
                                        layer.activation, **extra)
        else:
            fan_in, cout = int(np.prod(layer.kernel_shape[:-1])), int(layer.kernel_shape[-1])
            spatial = layer.type != "dense" and len(layer.output_shape) == 4
            positions = int(np.prod(layer.output_shape[1:-1])) if spatial else 1
            shapes = (layer.input_shape[1:], layer.output_shape[1:]) if spatial else ([fan_in], [cout])
            bias = (layer.output_shape[-1] if spatial else cout) * 4
            entry = report_format.layer(*shapes, fan_in * cout * positions, fan_in * cout * w_bits // 8, bias, mode,
                                        layer.activation, **extra)
        entries[layer.sdk_name] = entry
    return report_format.build(hn.get("name"), entries)
