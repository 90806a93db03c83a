"""The optimize step (Hailo's `runner.optimize`): calibrate, choose ranges, quantize, correct.

    from hailopipe.quantization import optimizer
    from hailopipe.quantization.config import OptimizeConfig
    qnet = optimizer.quantize_network(net, calib_nhwc_float32, OptimizeConfig(optimization_level=1))

`stages/optimize.py` builds the `OptimizeConfig` from params.yaml and picks the calibration images
(`calibration.indices`).  The math lives in `arithmetic` (its docstring derives every formula used
here); this module decides *what* to quantize with it.  The controls, with the SDK's model-script
spelling that `model_script` emits:

Input (`normalization`, the model script's `normalization1 = normalization([mean], [std])`).  As in
the SDK, the script inserts a `normalization1` layer after the input (`with_normalization`): the
input stream then carries raw values, 8 bits with identity quantization (scale 1, zero on the wire
0, limvals [0, 255], `RAW_RANGE`: what a camera delivers, and what the real Hailo-8 MNIST HEF's
input takes), and the layer maps them to the model's domain, (raw - mean) / std, quantized on that
domain's range [(0 - mean) / std, (255 - mean) / std]: for the default [0], [255] that is [0, 1]
at scale 1/255, and the layer's integer output equals its input (the engine skips it).  The
calibration images come in the model's domain (pixels / 255, what the parsed network takes).

Statistics (every level, `calibration`).  The float network runs over the calibration images, with
products summed so that the figures do not depend on the BLAS; each layer's outputs give its range
[lo, hi] by `activation_clipping` (mode): `minmax`, `percentile` or `mse`.

Quantization.  Symmetric weights per output channel or per tensor (`per_channel`), asymmetric
activations from the ranges, integer biases and fixed-point requantization.  Scales are rounded to
float32 first, so the quantized HAR holds exactly the numbers the engine uses.  `precision` maps a
layer to `a16_w16` (16-bit output and weights; `quantization_param(<net>/<layer>, precision_mode=...)`).

optimization_level (`model_optimization_flavor(optimization_level=...)`); as in every Model Zoo
script, bias correction and fine-tuning are never both enabled (`applied` says what ran):
  0  statistics only: the ranges above, weights rounded to nearest, biases as trained (no
     equalization either: the model script disables the SDK's, to ask it for the same).
  1  + bias correction: layer by layer, with the *quantized* network's actual inputs (the engine's
     outputs of the layers before), shift the layer's bias so that the mean over the calibration set
     of its quantized pre-activation output equals the float network's.  The mean of an affine map
     is the map of the mean, so the error per output channel c is exactly
        e[c] = s_x s_w[c] (mean(q_x) @ q_w + bias_eff)[c] - (mean(h) @ W + b)[c]
     and the integer bias becomes q_b - round(e / (s_x s_w)), leaving |e| <= half a bias step.  This
     removes the systematic part of the weight-rounding error and of the error from earlier layers.
  2  fine-tune instead of bias correction: a short quantization-aware distillation on the
     calibration set (`finetune`: epochs, learning rate, batch size, in numpy): the network with
     fake-quantized weights (per the weights mode) and activations (per the ranges) is trained, by
     Adam with straight-through gradients, to reproduce the float network's logits (mean squared
     error of the last layer's output before its own rounding, which no weight can change); then it
     is quantized as above with the unchanged ranges.  Bit-reproducible: see `finetune.finetune`.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from hailopipe import network
from hailopipe.engine.engine import quantize_input, run_layer
from hailopipe.errors import PipelineError
from hailopipe.quantization import arithmetic, calibration, config, finetune
from hailopipe.quantization.config import OptimizeConfig
from hailopipe.quantization.qnetwork import QDense, QNetwork, QPool

log = logging.getLogger(__name__)
RAW_RANGE = (0.0, 255.0)  # the input stream's values when the model script normalizes


def _f32(x: float) -> float:
    return float(np.float32(x))


def quantize_dense(d: network.Dense, in_bits, in_scale, in_zp, limvals, mode, per_channel, bias=None) -> QDense:
    """One Dense layer in integers; `bias` (float) replaces the layer's own, for bias correction."""
    out_bits, w_bits = arithmetic.PRECISION_MODES[mode]
    q_w, s_w = arithmetic.quantize_weights(d.kernel, w_bits, per_channel)
    q_b = arithmetic.quantize_bias(d.bias if bias is None else bias, in_scale, s_w)
    out_scale, out_zp = arithmetic.choose_qparams(*limvals, out_bits)
    out_scale = _f32(out_scale)
    multiplier = float(np.float32(in_scale)) * s_w.astype(np.float64) / out_scale
    bits = arithmetic.multiplier_bits(q_w, arithmetic.fold_zero_point(q_b, q_w, in_zp), in_bits)
    m0, shift = arithmetic.quantize_multiplier(multiplier, bits)
    return QDense(d.name, d.activation, in_bits, w_bits, out_bits, q_w, q_b, s_w, in_scale, in_zp,
                  out_scale, out_zp, m0, shift, (float(limvals[0]), float(limvals[1])))


def _quantize(d, in_bits, in_scale, in_zp, in_shape, limvals, mode, per_channel, bias=None):
    """A Dense or Conv layer in integers (`quantize_dense` / `arithmetic.quantize_conv`)."""
    if isinstance(d, network.Dense):
        return quantize_dense(d, in_bits, in_scale, in_zp, limvals, mode, per_channel, bias)
    return arithmetic.quantize_conv(d.name, d.kernel, d.bias if bias is None else bias, d.activation, in_bits,
                                    in_scale, in_zp, limvals, mode, per_channel, d.strides, d.padding, in_shape,
                                    d.dilations, d.depthwise)


def _mean_patch(d, values: np.ndarray, in_shape) -> np.ndarray:
    """The mean over images and output positions of a layer's input patch: [K] for a Dense layer,
    [kh, kw, cin] for a conv, pads counted as 0 (a real zero), summed in float64 a slice at a time."""
    if isinstance(d, network.Dense):
        return np.asarray(values, np.float64).reshape(len(values), -1).mean(axis=0)
    total, count = 0.0, 0
    for start in range(0, len(values), 64):
        v = np.asarray(values[start:start + 64], np.float64).reshape(-1, *in_shape)
        p = network.patches(v, d.kernel.shape[:2], d.strides, d.padding, d.dilations)
        total = total + p.sum(axis=(0, 1, 2))
        count += p.shape[0] * p.shape[1] * p.shape[2]
    return total / count


def _apply_mean(d, patch: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """The layer's linear map of a mean patch, per output channel, summed by numpy in a fixed order."""
    if isinstance(d, network.Dense):
        return (patch[:, None] * kernel.astype(np.float64)).sum(axis=0)
    k = kernel.astype(np.float64)
    if d.depthwise:
        return (patch * k[..., 0]).sum(axis=(0, 1))
    return (patch[..., None] * k).sum(axis=(0, 1, 2))


def _mean_patches(q, q_in: np.ndarray, d_ref, f_in: np.ndarray, in_shape) -> tuple[np.ndarray, np.ndarray]:
    """The mean input patch of the integer input (as codes q - z_x: a pad, z_x, becomes 0) and of the float one."""
    codes = np.asarray(q_in, np.float64) - q.in_zp
    return _mean_patch(d_ref, codes, in_shape), _mean_patch(d_ref, f_in, in_shape)


def _error(q, d_ref, mean_q: np.ndarray, mean_f: np.ndarray) -> np.ndarray:
    quantized = q.in_scale * q.w_scale.astype(np.float64) * (_apply_mean(d_ref, mean_q, q.kernel) + q.bias)
    return quantized - (_apply_mean(d_ref, mean_f, d_ref.kernel) + d_ref.bias)


def bias_error(q, q_in: np.ndarray, d_ref, f_in: np.ndarray, in_shape=None) -> np.ndarray:
    """e[c]: mean quantized pre-activation (real units) minus the float reference's, per channel,
    over the images and output positions of the layer's integer input `q_in` and float input `f_in`
    (the mean of an affine map is the map of the mean patch; a pad is 0 in both)."""
    return _error(q, d_ref, *_mean_patches(q, q_in, d_ref, f_in, in_shape))


def correct_bias(q, d, d_ref, q_in, f_in, limvals, mode, cfg, in_shape=None):
    """Level 1: requantize `d` with its integer bias shifted by the rounded mean mismatch (module docstring)."""
    means = _mean_patches(q, q_in, d_ref, f_in, in_shape)  # once: requantizing keeps the input's qparams
    err = _error(q, d_ref, *means)
    unit = q.in_scale * q.w_scale.astype(np.float64)  # one step of the integer bias
    corrected = unit * (q.bias - np.rint(err / unit))  # exact multiples: quantize_bias gives them back
    q = _quantize(d, q.in_bits, q.in_scale, q.in_zp, in_shape, limvals, mode, cfg.per_channel, bias=corrected)
    log.info("optimize: %-8s bias correction: mean |mismatch| %.3g -> %.3g", d.name, np.abs(err).mean(),
             np.abs(_error(q, d_ref, *means)).mean())
    return q


def applied(cfg: OptimizeConfig) -> dict:
    """The level and algorithms this optimizer applies for `cfg` (the emulator never reduces the level)."""
    level = cfg.optimization_level
    return {"optimization_level": level, "requested_optimization_level": level,
            "activation_clipping": cfg.clipping_mode, "bias_correction": level == 1, "finetune": level >= 2,
            "adaround": False, "equalization": False, "reduced": False, "from": "emulator"}


def with_normalization(net: network.Network, cfg: OptimizeConfig) -> network.Network:
    """`net` with the layer the model script's normalization inserts after its input."""
    channels = net.input_shape[-1]
    mean, std = cfg.normalization
    if len(mean) not in (1, channels):
        raise PipelineError(f"normalization has {len(mean)} values, the input has {channels} channel(s)")
    return dataclasses.replace(net, normalization=network.Normalization.from_mean_std(mean, std, channels))


def model_domain(cfg: OptimizeConfig) -> tuple[float, float]:
    """The range of (raw - mean) / std over raw values in RAW_RANGE, all channels."""
    mean, std = (np.asarray(v, np.float64) for v in cfg.normalization)
    ends = (np.asarray(RAW_RANGE)[:, None] - mean) / std
    return float(ends.min()), float(ends.max())


def quantize_normalization(norm: network.Normalization, limvals) -> QDense:
    """The normalization layer in integers: a per-channel Dense of one input, from the identity-quantized stream."""
    in_scale, in_zp = arithmetic.choose_qparams(*RAW_RANGE, 8)  # scale 1, zero point qmin: raw values on the wire
    d = network.Dense(norm.name, norm.kernel[None, :], norm.bias, "linear")
    return quantize_dense(d, 8, in_scale, in_zp, limvals, "a8_w8", per_channel=True)


def quantize_network(net: network.Network, calib: np.ndarray, cfg: OptimizeConfig) -> QNetwork:
    """Calibrate `net` (as parsed, without normalization) on `calib` (NHWC raw values, 0-255, as the
    SDK takes calibration data when the script normalizes) and return its integer version, with the
    input normalization, per `cfg` (see the module docstring)."""
    config.check(cfg, [d.name for d in net.layers if not isinstance(d, network.Pool)])
    normalized = with_normalization(net, cfg)
    norm = normalized.normalization
    raw, float_outs, ranges = calibration.statistics(normalized, calib, cfg)
    x = norm.apply(raw.reshape(len(raw), -1, net.input_shape[-1])).reshape(len(raw), *net.input_shape)  # as `forward`
    q_norm = quantize_normalization(norm, model_domain(cfg))
    in_scale, in_zp = q_norm.out_scale, q_norm.out_zp
    work = net
    if cfg.optimization_level >= 2:
        work = finetune.finetune(net, x.reshape(len(x), -1), float_outs[-1], ranges, in_scale, in_zp, cfg)
    qnet = QNetwork(net.name, net.input_shape, q_norm.in_scale, q_norm.in_zp, 8, RAW_RANGE, [], q_norm)
    q_x = quantize_input(qnet, raw)
    scale, zp, bits, layers = in_scale, in_zp, 8, []
    for i, (d, limvals, (in_shape, _)) in enumerate(zip(work.layers, ranges, net.shapes)):
        f_in = x if i == 0 else float_outs[i - 1]
        if isinstance(d, network.Pool):  # the input's qparams: max pooling commutes with them exactly
            q = arithmetic.quantize_pool(d.name, d.kind, d.size, d.strides, d.padding, in_shape, bits, scale, zp)
            log.info("optimize: %-8s %spool, the input's qparams", d.name, d.kind)
        else:
            mode = cfg.precision_of(d.name)
            q = _quantize(d, bits, scale, zp, in_shape, limvals, mode, cfg.per_channel)
            if cfg.optimization_level == 1:
                q = correct_bias(q, d, net.layers[i], q_x, f_in, limvals, mode, cfg, in_shape)
            log.info("optimize: %-8s %s  range [%.3f, %.3f]  scale %.5g  zp %d", d.name, mode, *limvals, q.out_scale,
                     q.out_zp)
        layers.append(q)
        if i + 1 < len(work.layers):
            q_x = run_layer(q, q_x)  # the engine's own output: what the next layer really receives
        scale, zp, bits = q.out_scale, q.out_zp, (q.bits if isinstance(q, QPool) else q.out_bits)
    qnet.layers = layers
    return qnet
