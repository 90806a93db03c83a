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
from hailopipe.network import Network
from hailopipe.quantization import arithmetic
from hailopipe.quantization.qnetwork import QDense, QNetwork


def to_arrays(q: QNetwork) -> dict[str, np.ndarray]:
    p = f"{q.name}/input_layer1/"
    out = {p + "output_scale:0": np.float32(q.input_scale), p + "output_zero_point:0": np.int32(q.input_zp),
           p + "output_activation_bits:0": np.uint8(q.input_bits),
           p + "limvals:0": np.array(q.input_limvals, np.float32)}
    for layer in ([q.normalization] if q.normalization else []) + list(q.layers):
        p = f"{q.name}/{layer.name}/"
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


def from_arrays(arrays: dict[str, np.ndarray], net: Network, source: str) -> QNetwork:
    """Rebuild and check the QNetwork of `net` (names, shapes, activations) from its .q.npz arrays."""
    p = f"{net.name}/input_layer1/"
    in_bits = _bits(arrays, p + "output_activation_bits:0", source)
    in_scale = float(_get(arrays, p + "output_scale:0", source, (), "f"))
    in_zp = int(_get(arrays, p + "output_zero_point:0", source, (), "i"))
    _check_qp(source, p, in_scale, in_zp, in_bits)
    in_lim = tuple(float(v) for v in _get(arrays, p + "limvals:0", source, (2,), "f"))
    layers, prev_bits, prev_scale, prev_zp = [], in_bits, in_scale, in_zp
    norm = net.normalization
    specs = ([(norm.name, 1, len(norm.kernel), "linear", (len(norm.kernel),))] if norm else []) + [
        (d.name, *d.kernel.shape, d.activation, d.kernel.shape) for d in net.layers]
    for lname, K, C, activation, stored in specs:
        p = f"{net.name}/{lname}/"
        w_bits = _bits(arrays, p + "weight_bits:0", source)
        out_bits = _bits(arrays, p + "output_activation_bits:0", source)
        if _bits(arrays, p + "input_activation_bits:0", source) != prev_bits:
            raise PipelineError(f"{source}: {p}input_activation_bits:0 differs from its producer's output bits")
        kernel = _get(arrays, p + "kernel:0", source, tuple(stored), "i").reshape(K, C)
        if kernel.dtype != arithmetic.storage_dtype(w_bits):
            raise PipelineError(f"{source}: {p}kernel:0 is {kernel.dtype}, expected {arithmetic.storage_dtype(w_bits)}")
        wmax = arithmetic.weight_qmax(w_bits)
        if kernel.size and (kernel.min() < -wmax or kernel.max() > wmax):
            raise PipelineError(f"{source}: {p}kernel:0 outside the symmetric range ±{wmax}")
        layer = QDense(
            name=lname, activation=activation, in_bits=prev_bits, w_bits=w_bits, out_bits=out_bits,
            kernel=kernel, bias=_get(arrays, p + "bias:0", source, (C,), "i").astype(np.int64),
            w_scale=_get(arrays, p + "weight_scale:0", source, (C,), "f").astype(np.float32),
            in_scale=float(_get(arrays, p + "input_scale:0", source, (), "f")),
            in_zp=int(_get(arrays, p + "input_zero_point:0", source, (), "i")),
            out_scale=float(_get(arrays, p + "output_scale:0", source, (), "f")),
            out_zp=int(_get(arrays, p + "output_zero_point:0", source, (), "i")),
            m0=_get(arrays, p + "output_multiplier:0", source, (C,), "i").astype(np.int32),
            shift=_get(arrays, p + "output_shift:0", source, (C,), "i").astype(np.int32),
            limvals=tuple(float(v) for v in _get(arrays, p + "limvals:0", source, (2,), "f")))
        if (layer.in_scale, layer.in_zp) != (prev_scale, prev_zp):
            raise PipelineError(f"{source}: {p}input quantization differs from its producer's output")
        _check_qp(source, p + "output", layer.out_scale, layer.out_zp, out_bits)
        if not (layer.w_scale > 0).all() or layer.m0.min() <= 0 or layer.shift.min() < 1 or layer.shift.max() > 62:
            raise PipelineError(f"{source}: {p}: weight scales, multipliers or shifts out of range")
        bias_eff = arithmetic.fold_zero_point(layer.bias, kernel, layer.in_zp)
        if arithmetic.multiplier_bits(kernel, bias_eff, layer.in_bits) < int(layer.m0.max()).bit_length():
            raise PipelineError(f"{source}: {p}output_multiplier:0 too wide: the accumulator product could overflow")
        layers.append(layer)
        prev_bits, prev_scale, prev_zp = out_bits, layer.out_scale, layer.out_zp
    q_norm = layers.pop(0) if norm is not None else None
    return QNetwork(net.name, net.input_shape, in_scale, in_zp, in_bits, in_lim, layers, q_norm)
