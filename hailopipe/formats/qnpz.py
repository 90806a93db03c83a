"""The quantized network's arrays: the .q.npz of a quantized HAR and the arrays of the compiled file.

Keys are `<net>/<layer>/<param>:0` as in the SDK's quantized params: per layer `kernel`, `bias`,
`weight_scale`, `input_scale`, `input_zero_point`, `output_scale`, `output_zero_point`,
`output_multiplier`, `output_shift`, `input_activation_bits`, `weight_bits`,
`output_activation_bits`, `limvals`; the input layer has its output qparams, bits and limvals; a
normalization layer has the same keys as a dense one, with its per-channel arrays of shape [C].
`from_arrays` checks every array a reader relies on (presence, shape, dtype, finiteness, ranges,
that each layer's input qparams are its producer's output qparams, that no accumulator product can
overflow) against the float network's skeleton, and raises PipelineError naming the file.
"""

from __future__ import annotations

import numpy as np

from hailopipe.errors import PipelineError
from hailopipe.network import Conv, Network, Pool
from hailopipe.network import output_shape as network_output_shape
from hailopipe.quantization import arithmetic
from hailopipe.quantization.qnetwork import QConv, QDense, QNetwork, QPool


def to_arrays(q: QNetwork) -> dict[str, np.ndarray]:
    p = f"{q.name}/input_layer1/"
    out = {p + "output_scale:0": np.float32(q.input_scale), p + "output_zero_point:0": np.int32(q.input_zp),
           p + "output_activation_bits:0": np.uint8(q.input_bits),
           p + "limvals:0": np.array(q.input_limvals, np.float32)}
    for layer in ([q.normalization] if q.normalization else []) + list(q.layers):
        p = f"{q.name}/{layer.name}/"
        if isinstance(layer, QPool):
            out.update({p + "input_scale:0": np.float32(layer.in_scale),
                        p + "input_zero_point:0": np.int32(layer.in_zp),
                        p + "output_scale:0": np.float32(layer.out_scale),
                        p + "output_zero_point:0": np.int32(layer.out_zp),
                        p + "input_activation_bits:0": np.uint8(layer.bits),
                        p + "output_activation_bits:0": np.uint8(layer.bits)})
            if layer.kind == "avg":
                out.update({p + "output_multiplier:0": layer.m0, p + "output_shift:0": layer.shift})
            continue
        kernel = layer.kernel.reshape(-1) if layer is q.normalization else layer.kernel
        out.update({
            p + "kernel:0": kernel, p + "bias:0": layer.bias.astype(np.int64),
            p + "weight_scale:0": layer.w_scale,
            p + "input_scale:0": np.float32(layer.in_scale), p + "input_zero_point:0": np.int32(layer.in_zp),
            p + "output_scale:0": np.float32(layer.out_scale), p + "output_zero_point:0": np.int32(layer.out_zp),
            p + "output_multiplier:0": layer.m0, p + "output_shift:0": layer.shift,
            p + "input_activation_bits:0": np.uint8(layer.in_bits), p + "weight_bits:0": np.uint8(layer.w_bits),
            p + "output_activation_bits:0": np.uint8(layer.out_bits),
            p + "limvals:0": np.array(layer.limvals, np.float32)})
    return {k: np.asarray(v) for k, v in out.items()}


def _get(arrays, key, source, shape=None, kind=None):
    if key not in arrays:
        raise PipelineError(f"{source}: quantized param {key} missing")
    a = arrays[key]
    if shape is not None and a.shape != shape:
        raise PipelineError(f"{source}: {key} has shape {list(a.shape)}, expected {list(shape)}")
    if kind is not None and a.dtype.kind != kind:
        raise PipelineError(f"{source}: {key} has dtype {a.dtype}")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise PipelineError(f"{source}: {key} contains NaN or inf")
    return a


def _check_qp(source, key, scale, zp, bits):
    lo, hi = arithmetic.qrange(bits)
    if not scale > 0 or not lo <= zp <= hi:
        raise PipelineError(f"{source}: {key}: scale must be > 0 and zero point within {lo}..{hi}")


def _bits(arrays, key, source):
    bits = int(_get(arrays, key, source, (), "u"))
    if bits not in (8, 16):
        raise PipelineError(f"{source}: {key} = {bits}, expected 8 or 16")
    return bits


def _inputs(arrays, p, prev, source) -> tuple[int, float, int]:
    """The layer's input bits and qparams, checked to be its producer's output ones."""
    bits = _bits(arrays, p + "input_activation_bits:0", source)
    scale = float(_get(arrays, p + "input_scale:0", source, (), "f"))
    zp = int(_get(arrays, p + "input_zero_point:0", source, (), "i"))
    if bits != prev[0]:
        raise PipelineError(f"{source}: {p}input_activation_bits:0 differs from its producer's output bits")
    if (scale, zp) != tuple(prev[1:]):
        raise PipelineError(f"{source}: {p}input quantization differs from its producer's output")
    return bits, scale, zp


def _weighted(arrays, p, d, is_norm: bool, in_shape, prev, source):
    """A normalization, Dense or Conv layer: QDense (kernel [K, C]) or QConv (kernel as the float one)."""
    conv = isinstance(d, Conv)
    if is_norm:
        stored, C = (len(d.kernel),), len(d.kernel)
    else:
        stored, C = tuple(d.kernel.shape), (d.out_channels if conv else int(d.kernel.shape[1]))
    in_bits, in_scale, in_zp = _inputs(arrays, p, prev, source)
    w_bits = _bits(arrays, p + "weight_bits:0", source)
    out_bits = _bits(arrays, p + "output_activation_bits:0", source)
    kernel = _get(arrays, p + "kernel:0", source, stored, "i")
    if kernel.dtype != arithmetic.storage_dtype(w_bits):
        raise PipelineError(f"{source}: {p}kernel:0 is {kernel.dtype}, expected {arithmetic.storage_dtype(w_bits)}")
    wmax = arithmetic.weight_qmax(w_bits)
    if kernel.size and (kernel.min() < -wmax or kernel.max() > wmax):
        raise PipelineError(f"{source}: {p}kernel:0 outside the symmetric range ±{wmax}")
    fields = dict(
        in_bits=in_bits, w_bits=w_bits, out_bits=out_bits,
        bias=_get(arrays, p + "bias:0", source, (C,), "i").astype(np.int64),
        w_scale=_get(arrays, p + "weight_scale:0", source, (C,), "f").astype(np.float32),
        in_scale=in_scale, in_zp=in_zp,
        out_scale=float(_get(arrays, p + "output_scale:0", source, (), "f")),
        out_zp=int(_get(arrays, p + "output_zero_point:0", source, (), "i")),
        m0=_get(arrays, p + "output_multiplier:0", source, (C,), "i").astype(np.int32),
        shift=_get(arrays, p + "output_shift:0", source, (C,), "i").astype(np.int32),
        limvals=tuple(float(v) for v in _get(arrays, p + "limvals:0", source, (2,), "f")))
    _check_qp(source, p + "output", fields["out_scale"], fields["out_zp"], out_bits)
    if not (fields["w_scale"] > 0).all() or fields["m0"].min() <= 0 or not 1 <= fields["shift"].min() <= \
            fields["shift"].max() <= 62:
        raise PipelineError(f"{source}: {p}: weight scales, multipliers or shifts out of range")
    matrix = arithmetic.conv_matrix(kernel, d.depthwise) if conv else kernel.reshape(-1, C)
    bias_eff = arithmetic.fold_zero_point(fields["bias"], matrix, in_zp)
    if arithmetic.multiplier_bits(matrix, bias_eff, in_bits) < int(fields["m0"].max()).bit_length():
        raise PipelineError(f"{source}: {p}output_multiplier:0 too wide: the accumulator product could overflow")
    if not conv:
        return QDense(name=d.name, activation="linear" if is_norm else d.activation, kernel=kernel.reshape(-1, C),
                      **fields)
    try:
        return QConv(name=d.name, depthwise=d.depthwise, activation=d.activation, kernel=kernel,
                     strides=tuple(d.strides), padding=d.padding, in_shape=tuple(in_shape),
                     dilations=tuple(d.dilations), **fields)
    except ValueError as exc:
        raise PipelineError(f"{source}: {p}: {exc}") from None


def _pool(arrays, p, d, in_shape, prev, source) -> QPool:
    bits, in_scale, in_zp = _inputs(arrays, p, prev, source)
    if _bits(arrays, p + "output_activation_bits:0", source) != bits:
        raise PipelineError(f"{source}: {p}output_activation_bits:0 differs from its input's: pooling keeps the bits")
    out_scale = float(_get(arrays, p + "output_scale:0", source, (), "f"))
    out_zp = int(_get(arrays, p + "output_zero_point:0", source, (), "i"))
    _check_qp(source, p + "output", out_scale, out_zp, bits)
    m0 = shift = None
    if d.kind == "avg":
        out_hw = tuple(int(v) for v in network_output_shape(d, in_shape)[:2])
        m0 = _get(arrays, p + "output_multiplier:0", source, out_hw, "i").astype(np.int32)
        shift = _get(arrays, p + "output_shift:0", source, out_hw, "i").astype(np.int32)
        if m0.min() <= 0 or not 1 <= shift.min() <= shift.max() <= 62:
            raise PipelineError(f"{source}: {p}: multipliers or shifts out of range")
    try:
        return QPool(d.name, d.kind, tuple(d.size), tuple(d.strides), d.padding, tuple(in_shape), bits, in_scale,
                     in_zp, out_scale, out_zp, m0, shift)
    except ValueError as exc:
        raise PipelineError(f"{source}: {p}: {exc}") from None


def from_arrays(arrays: dict[str, np.ndarray], net: Network, source: str) -> QNetwork:
    """Rebuild and check the QNetwork of `net` (names, shapes, activations) from its .q.npz arrays."""
    p = f"{net.name}/input_layer1/"
    in_bits = _bits(arrays, p + "output_activation_bits:0", source)
    in_scale = float(_get(arrays, p + "output_scale:0", source, (), "f"))
    in_zp = int(_get(arrays, p + "output_zero_point:0", source, (), "i"))
    _check_qp(source, p, in_scale, in_zp, in_bits)
    in_lim = tuple(float(v) for v in _get(arrays, p + "limvals:0", source, (2,), "f"))
    layers, prev = [], (in_bits, in_scale, in_zp)
    norm = net.normalization
    specs = ([(norm, None)] if norm else []) + [(d, shapes[0]) for d, shapes in zip(net.layers, net.shapes)]
    for d, in_shape in specs:
        p = f"{net.name}/{d.name}/"
        layer = _pool(arrays, p, d, in_shape, prev, source) if isinstance(d, Pool) else _weighted(
            arrays, p, d, d is norm, in_shape, prev, source)
        layers.append(layer)
        prev = (layer.bits, layer.out_scale, layer.out_zp) if isinstance(layer, QPool) else (
            layer.out_bits, layer.out_scale, layer.out_zp)
    q_norm = layers.pop(0) if norm is not None else None
    return QNetwork(net.name, net.input_shape, in_scale, in_zp, in_bits, in_lim, layers, q_norm)
