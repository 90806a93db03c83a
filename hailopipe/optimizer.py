"""The optimize step (Hailo's `runner.optimize`): calibrate on float activations, then quantize.

1. Statistics: run the float network (`network.forward`) over the calibration images and record
   each layer's output range [min, max] (the SDK's "limvals").
2. Quantize every Dense layer with `quant` (the math lives there): symmetric int8 weights per
   channel (or per tensor), asymmetric activations from the ranges, int32/int64 biases and the
   fixed-point requantization (m0, shift).  Scales are rounded to float32 first, so that the
   quantized HAR and the compiled file hold exactly the numbers the engine uses.
3. The input layer's range is the model's input domain (`optimize.input_range`, [0, 1] for
   pixels/255): its scale is 1/255 and the uint8 stream carries the raw pixel, exactly.

`model_script` renders the same choices as the Hailo model-script lines a DFC user would write.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from hailopipe import network, quant
from hailopipe.errors import PipelineError
from hailopipe.qnetwork import QDense, QNetwork

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OptimizeConfig:
    calib_size: int = 2000
    per_channel: bool = True
    input_range: tuple[float, float] = (0.0, 1.0)
    precision: dict = field(default_factory=dict)  # unscoped layer name -> precision mode


def _f32(x: float) -> float:
    return float(np.float32(x))


def collect_ranges(net: network.Network, calib: np.ndarray, batch: int = 1000) -> list[tuple[float, float]]:
    """Per-layer output [min, max] of the float network over `calib` (NHWC float32)."""
    if calib.ndim != 4 or calib.shape[1:] != net.input_shape:
        raise PipelineError(f"calibration data has shape {list(calib.shape)}, expected [N, {', '.join(map(str, net.input_shape))}]")
    if not np.isfinite(calib).all():
        raise PipelineError("calibration data contains NaN or inf")
    lo = np.full(len(net.layers), np.inf)
    hi = np.full(len(net.layers), -np.inf)
    for start in range(0, len(calib), batch):
        _, outs = network.forward(net, calib[start:start + batch], collect=True)
        for i, o in enumerate(outs):
            lo[i] = min(lo[i], float(o.min()))
            hi[i] = max(hi[i], float(o.max()))
    return list(zip(lo.tolist(), hi.tolist()))


def quantize_dense(d: network.Network, in_bits, in_scale, in_zp, limvals, mode, per_channel) -> QDense:
    if mode not in quant.PRECISION_MODES:
        raise PipelineError(f"params.yaml: precision mode {mode!r} of layer {d.name} is not one of "
                            f"{', '.join(quant.PRECISION_MODES)}")
    out_bits, w_bits = quant.PRECISION_MODES[mode]
    q_w, s_w = quant.quantize_weights(d.kernel, w_bits, per_channel)
    q_b = quant.quantize_bias(d.bias, in_scale, s_w)
    out_scale, out_zp = quant.choose_qparams(*limvals, out_bits)
    out_scale = _f32(out_scale)
    multiplier = float(np.float32(in_scale)) * s_w.astype(np.float64) / out_scale
    bits = quant.multiplier_bits(q_w, quant.fold_zero_point(q_b, q_w, in_zp), in_bits)
    m0, shift = quant.quantize_multiplier(multiplier, bits)
    return QDense(d.name, d.activation, in_bits, w_bits, out_bits, q_w, q_b, s_w, in_scale, in_zp,
                  out_scale, out_zp, m0, shift, (float(limvals[0]), float(limvals[1])))


def quantize_network(net: network.Network, calib: np.ndarray, cfg: OptimizeConfig) -> QNetwork:
    """Calibrate `net` on `calib` and return its integer version."""
    unknown = set(cfg.precision) - {l.name for l in net.layers}
    if unknown:
        raise PipelineError(f"params.yaml: optimize.precision names unknown layer(s) {sorted(unknown)}; "
                            f"layers are {[l.name for l in net.layers]}")
    ranges = collect_ranges(net, calib)
    in_bits = 8
    in_scale, in_zp = quant.choose_qparams(*cfg.input_range, in_bits)
    in_scale = _f32(in_scale)
    scale, zp, bits = in_scale, in_zp, in_bits
    layers = []
    for d, limvals in zip(net.layers, ranges):
        q = quantize_dense(d, bits, scale, zp, limvals, cfg.precision.get(d.name, "a8_w8"), cfg.per_channel)
        log.info("optimize: %-8s %s  range [%.3f, %.3f]  scale %.5g  zp %d", d.name,
                 f"a{q.out_bits}_w{q.w_bits}", *limvals, q.out_scale, q.out_zp)
        layers.append(q)
        scale, zp, bits = q.out_scale, q.out_zp, q.out_bits
    return QNetwork(net.name, net.input_shape, in_scale, in_zp, in_bits, tuple(cfg.input_range), layers)


def model_script(net: network.Network, cfg: OptimizeConfig) -> str:
    """The Hailo model script (.alls) that asks the DFC for the same quantization."""
    lo, hi = cfg.input_range
    lines = [f"normalization1 = normalization([{lo * 255:g}], [{(hi - lo) * 255:g}])",
             "model_optimization_flavor(optimization_level=0, compression_level=0)",
             f"model_optimization_config(calibration, batch_size=8, calibset_size={cfg.calib_size})"]
    for name, mode in sorted(cfg.precision.items()):
        lines.append(f"quantization_param({net.name}/{name}, precision_mode={mode})")
    return "\n".join(lines) + "\n"
