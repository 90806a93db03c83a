"""The quantized network: integer weights and requantization constants, and their .q.npz keys.

Produced by `optimizer.quantize_network`, stored in the quantized HAR as `<net>.q.npz` (keys
`<net>/<layer>/<param>:0`, as the SDK's quantized params), copied into the compiled file by
`hef.compile_network`, and executed by `engine.Engine`.  The meaning of every field is derived in
`quant`'s docstring; this module only holds and checks them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hailopipe import quant
from hailopipe.errors import PipelineError
from hailopipe.network import Network


@dataclass
class QDense:
    name: str
    activation: str
    in_bits: int
    w_bits: int
    out_bits: int
    kernel: np.ndarray  # int8/int16 [K, C]
    bias: np.ndarray  # int64 [C], q_b = round(b / (s_x s_w))
    w_scale: np.ndarray  # float32 [C]
    in_scale: float
    in_zp: int
    out_scale: float
    out_zp: int
    m0: np.ndarray  # int32 [C]
    shift: np.ndarray  # int32 [C]
    limvals: tuple[float, float]  # calibrated output range

    @property
    def macs(self) -> int:
        return int(self.kernel.shape[0] * self.kernel.shape[1])


@dataclass
class QNetwork:
    name: str
    input_shape: tuple[int, int, int]
    input_scale: float
    input_zp: int
    input_bits: int
    input_limvals: tuple[float, float]
    layers: list[QDense]

    @property
    def output(self) -> QDense:
        return self.layers[-1]


_SCALARS = {"input_scale": float, "input_zero_point": int, "output_scale": float, "output_zero_point": int,
            "input_activation_bits": int, "weight_bits": int, "output_activation_bits": int}


def to_arrays(q: QNetwork) -> dict[str, np.ndarray]:
    p = f"{q.name}/input_layer1/"
    out = {p + "output_scale:0": np.float32(q.input_scale), p + "output_zero_point:0": np.int32(q.input_zp),
           p + "output_activation_bits:0": np.uint8(q.input_bits),
           p + "limvals:0": np.array(q.input_limvals, np.float32)}
    for l in q.layers:
        p = f"{q.name}/{l.name}/"
        out.update({
            p + "kernel:0": l.kernel, p + "bias:0": l.bias.astype(np.int64), p + "weight_scale:0": l.w_scale,
            p + "input_scale:0": np.float32(l.in_scale), p + "input_zero_point:0": np.int32(l.in_zp),
            p + "output_scale:0": np.float32(l.out_scale), p + "output_zero_point:0": np.int32(l.out_zp),
            p + "output_multiplier:0": l.m0, p + "output_shift:0": l.shift,
            p + "input_activation_bits:0": np.uint8(l.in_bits), p + "weight_bits:0": np.uint8(l.w_bits),
            p + "output_activation_bits:0": np.uint8(l.out_bits), p + "limvals:0": np.array(l.limvals, np.float32)})
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
    lo, hi = quant.qrange(bits)
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
    for d in net.layers:
        p = f"{net.name}/{d.name}/"
        K, C = d.kernel.shape
        w_bits = _bits(arrays, p + "weight_bits:0", source)
        out_bits = _bits(arrays, p + "output_activation_bits:0", source)
        if _bits(arrays, p + "input_activation_bits:0", source) != prev_bits:
            raise PipelineError(f"{source}: {p}input_activation_bits:0 differs from its producer's output bits")
        kernel = _get(arrays, p + "kernel:0", source, (K, C), "i")
        if kernel.dtype != quant.storage_dtype(w_bits):
            raise PipelineError(f"{source}: {p}kernel:0 is {kernel.dtype}, expected {quant.storage_dtype(w_bits)}")
        wmax = (1 << (w_bits - 1)) - 1
        if kernel.size and (kernel.min() < -wmax or kernel.max() > wmax):
            raise PipelineError(f"{source}: {p}kernel:0 outside the symmetric range ±{wmax}")
        l = QDense(
            name=d.name, activation=d.activation, in_bits=prev_bits, w_bits=w_bits, out_bits=out_bits,
            kernel=kernel, bias=_get(arrays, p + "bias:0", source, (C,), "i").astype(np.int64),
            w_scale=_get(arrays, p + "weight_scale:0", source, (C,), "f").astype(np.float32),
            in_scale=float(_get(arrays, p + "input_scale:0", source, (), "f")),
            in_zp=int(_get(arrays, p + "input_zero_point:0", source, (), "i")),
            out_scale=float(_get(arrays, p + "output_scale:0", source, (), "f")),
            out_zp=int(_get(arrays, p + "output_zero_point:0", source, (), "i")),
            m0=_get(arrays, p + "output_multiplier:0", source, (C,), "i").astype(np.int32),
            shift=_get(arrays, p + "output_shift:0", source, (C,), "i").astype(np.int32),
            limvals=tuple(float(v) for v in _get(arrays, p + "limvals:0", source, (2,), "f")))
        if (l.in_scale, l.in_zp) != (prev_scale, prev_zp):
            raise PipelineError(f"{source}: {p}input quantization differs from its producer's output")
        _check_qp(source, p + "output", l.out_scale, l.out_zp, out_bits)
        if not (l.w_scale > 0).all() or l.m0.min() <= 0 or l.shift.min() < 1 or l.shift.max() > 62:
            raise PipelineError(f"{source}: {p}: weight scales, multipliers or shifts out of range")
        if quant.multiplier_bits(kernel, quant.fold_zero_point(l.bias, kernel, l.in_zp), l.in_bits) < int(
                l.m0.max()).bit_length():
            raise PipelineError(f"{source}: {p}output_multiplier:0 too wide: the accumulator product could overflow")
        layers.append(l)
        prev_bits, prev_scale, prev_zp = out_bits, l.out_scale, l.out_zp
    return QNetwork(net.name, net.input_shape, in_scale, in_zp, in_bits, in_lim, layers)
