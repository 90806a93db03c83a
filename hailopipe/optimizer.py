"""The optimize step (Hailo's `runner.optimize`): calibrate, choose ranges, quantize, correct.

    from hailopipe import optimizer
    qnet = optimizer.quantize_network(net, calib_nhwc_float32, optimizer.OptimizeConfig(optimization_level=1))

`stages/optimize.py` builds the `OptimizeConfig` from params.yaml and picks the calibration images
(`calibration_indices`: the first N validation images, or N drawn at random with a seed).  The math
lives in `quant` (its docstring derives every formula used here); this module decides *what* to
quantize with it.  The controls, with the SDK's model-script spelling that `model_script` emits:

Statistics (every level).  The float network runs over the calibration images
(`noise.float_layer_outputs`, summed so that the figures do not depend on the BLAS); each layer's
outputs give its range [lo, hi] by `activation_clipping` (mode): `minmax` (the SDK's default, no
clipping), `percentile` (`clipping_values` = [low, high] percentiles) or `mse` (the range minimising
the quantization MSE of that layer's outputs).  The input layer's range is the model's
input domain (`input_range`, [0, 1] = pixels/255: scale 1/255, raw pixels on the wire, exactly).

Quantization.  Symmetric weights per output channel or per tensor (`per_channel`), asymmetric
activations from the ranges, integer biases and fixed-point requantization.  Scales are rounded to
float32 first, so the quantized HAR holds exactly the numbers the engine uses.  `precision` maps a
layer to `a16_w16` (16-bit output and weights; `quantization_param(<net>/<layer>, precision_mode=...)`).

optimization_level (`model_optimization_flavor(optimization_level=...)`), cumulative:
  0  statistics only: the ranges above, weights rounded to nearest, biases as trained (no
     equalization either: the model script disables the SDK's, to ask it for the same).
  1  + bias correction: layer by layer, with the *quantized* network's actual inputs (the engine's
     outputs of the layers before), shift the layer's bias so that the mean over the calibration set
     of its quantized pre-activation output equals the float network's.  The mean of an affine map
     is the map of the mean, so the error per output channel c is exactly
        e[c] = s_x s_w[c] (mean(q_x) @ q_w + bias_eff)[c] - (mean(h) @ W + b)[c]
     and the integer bias becomes q_b - round(e / (s_x s_w)), leaving |e| <= half a bias step.  This
     removes the systematic part of the weight-rounding error and of the error from earlier layers.
  2  + fine-tune (before the bias correction): a short quantization-aware distillation on the
     calibration set (`finetune`: epochs, learning rate, batch size, in numpy): the network with
     fake-quantized weights (per the weights mode) and activations (per the ranges) is trained, by
     Adam with straight-through gradients, to reproduce the float network's logits (mean squared
     error of the last layer's output before its own rounding, which no weight can change); then it
     is quantized as above with the unchanged ranges.  Bit-reproducible: see `finetune`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np

from hailopipe import network, noise, quant
from hailopipe.errors import PipelineError
from hailopipe.qnetwork import QDense, QNetwork

log = logging.getLogger(__name__)

LEVELS = (0, 1, 2)
CLIPPING_MODES = ("minmax", "percentile", "mse")
SELECTIONS = ("first", "random")


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = 4
    learning_rate: float = 1e-5
    batch_size: int = 32
    seed: int = 0


@dataclass(frozen=True)
class OptimizeConfig:
    calib_size: int = 2000
    per_channel: bool = True
    input_range: tuple[float, float] = (0.0, 1.0)
    precision: dict = field(default_factory=dict)  # unscoped layer name -> precision mode
    optimization_level: int = 0
    clipping_mode: str = "minmax"
    clipping_values: tuple[float, float] = (0.0, 99.99)  # percentiles, for clipping_mode percentile
    finetune: FinetuneConfig = FinetuneConfig()


def calibration_indices(n: int, size: int, selection: str = "first", seed: int = 0) -> np.ndarray:
    """Which of `n` images calibrate: the first `size`, or `size` drawn without replacement (sorted)."""
    if not 1 <= size <= n:
        raise PipelineError(f"params.yaml: calibration.size must be between 1 and {n}, got {size}")
    if selection == "first":
        return np.arange(size)
    if selection == "random":
        return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
    raise PipelineError(f"params.yaml: calibration.selection must be one of {', '.join(SELECTIONS)}, got {selection!r}")


def _f32(x: float) -> float:
    return float(np.float32(x))


def check_config(net: network.Network, cfg: OptimizeConfig) -> None:
    names = [l.name for l in net.layers]
    unknown = set(cfg.precision) - set(names)
    if unknown:
        raise PipelineError(f"params.yaml: optimize.precision names unknown layer(s) {sorted(unknown)}; layers are {names}")
    for name, mode in cfg.precision.items():
        if mode not in quant.PRECISION_MODES:
            raise PipelineError(f"params.yaml: precision mode {mode!r} of layer {name} is not one of "
                                f"{', '.join(quant.PRECISION_MODES)}")
    if cfg.optimization_level not in LEVELS:
        raise PipelineError(f"params.yaml: optimize.optimization_level must be one of {LEVELS}, got {cfg.optimization_level!r}")
    if cfg.clipping_mode not in CLIPPING_MODES:
        raise PipelineError(f"params.yaml: optimize.activation_clipping.mode must be one of "
                            f"{', '.join(CLIPPING_MODES)}, got {cfg.clipping_mode!r}")
    lo, hi = cfg.clipping_values
    if not 0.0 <= lo < hi <= 100.0:
        raise PipelineError(f"params.yaml: optimize.activation_clipping.clipping_values must be [low, high] "
                            f"percentiles with 0 <= low < high <= 100, got {[lo, hi]}")


def check_calibration(net: network.Network, calib: np.ndarray) -> None:
    if calib.ndim != 4 or calib.shape[1:] != net.input_shape or len(calib) == 0:
        raise PipelineError(f"calibration data has shape {list(calib.shape)}, expected [N, {', '.join(map(str, net.input_shape))}]")
    if not np.isfinite(calib).all():
        raise PipelineError("calibration data contains NaN or inf")


def out_bits(cfg: OptimizeConfig, name: str) -> int:
    return quant.PRECISION_MODES[cfg.precision.get(name, "a8_w8")][0]


def choose_range(values: np.ndarray, cfg: OptimizeConfig, bits: int) -> tuple[float, float]:
    """One layer's calibrated output range by `cfg.clipping_mode` (see `quant`'s docstring)."""
    if cfg.clipping_mode == "percentile":
        return quant.percentile_range(values, *cfg.clipping_values)
    if cfg.clipping_mode == "mse":
        return quant.mse_range(values, bits)
    return quant.minmax_range(values)


def statistics(net: network.Network, calib: np.ndarray, cfg: OptimizeConfig):
    """(flattened calibration images, float outputs of every layer, calibrated ranges), checking the inputs."""
    check_config(net, cfg)
    check_calibration(net, calib)
    x = np.asarray(calib, np.float32).reshape(len(calib), -1)
    outs = noise.float_layer_outputs(net, x)
    return x, outs, [choose_range(o, cfg, out_bits(cfg, l.name)) for l, o in zip(net.layers, outs)]


def calibration_ranges(net: network.Network, calib: np.ndarray, cfg: OptimizeConfig) -> list[tuple[float, float]]:
    """Per-layer output ranges of the float network over `calib` (NHWC float32), by the clipping mode."""
    return statistics(net, calib, cfg)[2]


def quantize_dense(d: network.Dense, in_bits, in_scale, in_zp, limvals, mode, per_channel, bias=None) -> QDense:
    """One Dense layer in integers; `bias` (float) replaces the layer's own, for bias correction."""
    out_bits, w_bits = quant.PRECISION_MODES[mode]
    q_w, s_w = quant.quantize_weights(d.kernel, w_bits, per_channel)
    q_b = quant.quantize_bias(d.bias if bias is None else bias, in_scale, s_w)
    out_scale, out_zp = quant.choose_qparams(*limvals, out_bits)
    out_scale = _f32(out_scale)
    multiplier = float(np.float32(in_scale)) * s_w.astype(np.float64) / out_scale
    bits = quant.multiplier_bits(q_w, quant.fold_zero_point(q_b, q_w, in_zp), in_bits)
    m0, shift = quant.quantize_multiplier(multiplier, bits)
    return QDense(d.name, d.activation, in_bits, w_bits, out_bits, q_w, q_b, s_w, in_scale, in_zp,
                  out_scale, out_zp, m0, shift, (float(limvals[0]), float(limvals[1])))


def bias_error(q: QDense, mean_q_in: np.ndarray, d_ref: network.Dense, mean_f_in: np.ndarray) -> np.ndarray:
    """e[c]: mean quantized pre-activation (real units) minus the float reference's, per channel.

    The vector-matrix products are summed by numpy row after row (not by BLAS), in a fixed order."""
    acc = (mean_q_in[:, None] * q.kernel).sum(axis=0) + quant.fold_zero_point(q.bias, q.kernel, q.in_zp)
    quantized = q.in_scale * q.w_scale.astype(np.float64) * acc
    return quantized - ((mean_f_in[:, None] * d_ref.kernel.astype(np.float64)).sum(axis=0) + d_ref.bias)


def correct_bias(q: QDense, d: network.Dense, d_ref: network.Dense, mean_q_in, mean_f_in, limvals, mode, cfg) -> QDense:
    """Level 1: requantize `d` with its integer bias shifted by the rounded mean mismatch (module docstring)."""
    err = bias_error(q, mean_q_in, d_ref, mean_f_in)
    unit = q.in_scale * q.w_scale.astype(np.float64)  # one step of the integer bias
    corrected = unit * (q.bias - np.rint(err / unit))  # exact multiples: quantize_bias gives them back
    q = quantize_dense(d, q.in_bits, q.in_scale, q.in_zp, limvals, mode, cfg.per_channel, bias=corrected)
    log.info("optimize: %-8s bias correction: mean |mismatch| %.3g -> %.3g", d.name, np.abs(err).mean(),
             np.abs(bias_error(q, mean_q_in, d_ref, mean_f_in)).mean())
    return q


def quantize_network(net: network.Network, calib: np.ndarray, cfg: OptimizeConfig) -> QNetwork:
    """Calibrate `net` on `calib` and return its integer version, per `cfg` (see the module docstring)."""
    x, float_outs, ranges = statistics(net, calib, cfg)
    in_scale, in_zp = quant.choose_qparams(*cfg.input_range, 8)
    in_scale = _f32(in_scale)
    work = finetune(net, x, float_outs[-1], ranges, in_scale, in_zp, cfg) if cfg.optimization_level >= 2 else net
    q_x = quant.quantize(x, in_scale, in_zp, 8)
    scale, zp, bits = in_scale, in_zp, 8
    layers = []
    for i, (d, limvals) in enumerate(zip(work.layers, ranges)):
        mode = cfg.precision.get(d.name, "a8_w8")
        q = quantize_dense(d, bits, scale, zp, limvals, mode, cfg.per_channel)
        if cfg.optimization_level >= 1:
            mean_f_in = (x if i == 0 else float_outs[i - 1]).mean(axis=0, dtype=np.float64)
            q = correct_bias(q, d, net.layers[i], q_x.mean(axis=0, dtype=np.float64), mean_f_in, limvals, mode, cfg)
        log.info("optimize: %-8s %s  range [%.3f, %.3f]  scale %.5g  zp %d", d.name, mode, *limvals, q.out_scale, q.out_zp)
        layers.append(q)
        if i + 1 < len(work.layers):
            q_x = noise.run_layer(q, q_x)  # the engine's own output: what the next layer really receives
        scale, zp, bits = q.out_scale, q.out_zp, q.out_bits
    return QNetwork(net.name, net.input_shape, in_scale, in_zp, 8, tuple(cfg.input_range), layers)


def finetune(net: network.Network, x: np.ndarray, teacher: np.ndarray, ranges, in_scale: float, in_zp: int,
             cfg: OptimizeConfig) -> network.Network:
    """Level 2: distil `net` into its fake-quantized self on the calibration images `x` ([N, K]).

    Forward: every activation is quantized with its fixed qparams (the input's, each layer's range)
    and the weights are quantized afresh from their current values (`quant`), exactly as the
    integer network will compute, but with float biases and no requantization rounding; the loss is
    the mean squared error of the last layer's output against the float network's (`teacher`).
    Backward: straight-through (rounding passes the gradient; clamped outputs and inactive ReLUs
    stop it).  Adam with a seeded shuffle.  Every matrix product has integer codes on one side and
    is exact (`quant.exact_dot`), so the result does not depend on the BLAS: same inputs, same weights.
    """
    ft = cfg.finetune
    codes = quant.quantize(x, in_scale, in_zp, 8).astype(np.float64) - in_zp
    teacher = np.asarray(teacher, np.float64)
    params = [[l.kernel.astype(np.float64), l.bias.astype(np.float64)] for l in net.layers]
    bits = [quant.PRECISION_MODES[cfg.precision.get(l.name, "a8_w8")] for l in net.layers]
    qps = [quant.choose_qparams(*r, b[0]) for r, b in zip(ranges, bits)]
    moments = [[np.zeros_like(p) for p in pair for _ in range(2)] for pair in params]
    rng = np.random.default_rng(ft.seed)
    b1, b2, eps, t = 0.9, 0.999, 1e-8, 0
    for epoch in range(ft.epochs):
        losses = []
        for idx in np.array_split(rng.permutation(len(x)), max(1, int(np.ceil(len(x) / ft.batch_size)))):
            c, s_in, cache = codes[idx], float(in_scale), []
            for (w, b), l, (ob, wb), (s_out, zp_out) in zip(params, net.layers, bits, qps):
                q_w, s_w = quant.quantize_weights(w, wb, cfg.per_channel)
                q_w, s_w = q_w.astype(np.float64), s_w.astype(np.float64)
                z = (c @ q_w) * (s_in * s_w) + b  # integer codes on both sides: exact in float64
                a = network.apply_activation(z, l.activation)
                qmin, qmax = quant.qrange(ob)
                inside = (a >= s_out * (qmin - zp_out)) & (a <= s_out * (qmax - zp_out))  # not clamped
                cache.append((c, s_in, q_w, s_w, inside & (z > 0) if l.activation == "relu" else inside))
                c, s_in, last = quant.quantize(a, s_out, zp_out, ob).astype(np.float64) - zp_out, s_out, a
            diff = last - teacher[idx]
            losses.append(float(np.mean(diff**2)))
            g = 2.0 * diff / diff.size
            t += 1
            for i in range(len(params) - 1, -1, -1):
                c_in, s_in, q_w, s_w, pass_grad = cache[i]
                g = g * pass_grad
                grads = (quant.exact_dot(g.T, c_in, b_is_integer=True).T * s_in, g.sum(axis=0))
                g = quant.exact_dot(g * s_w, q_w.T, b_is_integer=True)
                for j, grad in enumerate(grads):
                    m, v = moments[i][2 * j], moments[i][2 * j + 1]
                    m[...] = b1 * m + (1 - b1) * grad
                    v[...] = b2 * v + (1 - b2) * grad**2
                    params[i][j] -= ft.learning_rate * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        log.info("optimize: finetune epoch %d/%d  distillation MSE %.5g", epoch + 1, ft.epochs, np.mean(losses))
    layers = [replace(l, kernel=w.astype(np.float32), bias=b.astype(np.float32)) for l, (w, b) in zip(net.layers, params)]
    return replace(net, layers=layers)


def model_script(net: network.Network, cfg: OptimizeConfig, ranges=None) -> str:
    """The Hailo model script (.alls) that asks the DFC for the same quantization.

    With `ranges` (per-layer [lo, hi], e.g. from `calibration_ranges`), an `mse` clipping mode is
    written as the SDK's manual clipping of each layer to the ranges found; without, as a comment,
    since the SDK's activation clipping has no MSE mode.
    """
    lo, hi = cfg.input_range
    scoped = [f"{net.name}/{l.name}" for l in net.layers]
    level, ft = cfg.optimization_level, cfg.finetune
    lines = [f"normalization1 = normalization([{lo * 255:g}], [{(hi - lo) * 255:g}])",
             f"model_optimization_flavor(optimization_level={level}, compression_level=0)",
             f"model_optimization_config(calibration, batch_size=8, calibset_size={cfg.calib_size})"]
    for name, mode in sorted(cfg.precision.items()):
        lines.append(f"quantization_param({net.name}/{name}, precision_mode={mode})")
    lines.append("pre_quantization_optimization(equalization, policy=disabled)")
    if cfg.clipping_mode == "percentile":
        lines.append(f"pre_quantization_optimization(activation_clipping, layers=[{', '.join(scoped)}], "
                     f"mode=percentile, clipping_values=[{cfg.clipping_values[0]:g}, {cfg.clipping_values[1]:g}])")
    elif cfg.clipping_mode == "mse" and ranges is not None:
        for name, (r_lo, r_hi) in zip(scoped, ranges):
            lines.append(f"pre_quantization_optimization(activation_clipping, layers=[{name}], mode=manual, "
                         f"clipping_values=[{r_lo:.6g}, {r_hi:.6g}])")
    elif cfg.clipping_mode == "mse":
        lines.append("# activation_clipping: MSE-optimal ranges (the SDK has no such mode; pass the ranges "
                     "to write them as mode=manual)")
    lines.append(f"post_quantization_optimization(bias_correction, policy={'enabled' if level >= 1 else 'disabled'})")
    if level >= 2:
        lines.append(f"post_quantization_optimization(finetune, policy=enabled, learning_rate={ft.learning_rate:g}, "
                     f"epochs={ft.epochs}, batch_size={ft.batch_size}, dataset_size={cfg.calib_size}, "
                     "loss_types=[l2], loss_layer_names=[" + scoped[-1] + "])")
    else:
        lines.append("post_quantization_optimization(finetune, policy=disabled)")
    lines.append(f"# weights: {'per_channel' if cfg.per_channel else 'per_tensor'} symmetric "
                 "(no model-script command selects this in the SDK)")
    return "\n".join(lines) + "\n"
