"""Level 2's fine-tune: a short quantization-aware distillation of the float network into its
fake-quantized self (`post_quantization_optimization(finetune, ...)` in the SDK's model script).

Called by `optimizer.quantize_network` before the bias correction; the result is a float network
with new weights, quantized afterwards with the ranges calibrated on the original.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from hailopipe import network
from hailopipe.quantization import arithmetic
from hailopipe.quantization.config import OptimizeConfig

log = logging.getLogger(__name__)


def finetune(net: network.Network, x: np.ndarray, teacher: np.ndarray, ranges, in_scale: float, in_zp: int,
             cfg: OptimizeConfig) -> network.Network:
    """Level 2: distil `net` into its fake-quantized self on the calibration images `x` ([N, K]).

    Forward: every activation is quantized with its fixed qparams (the input's, each layer's range)
    and the weights are quantized afresh from their current values (`quant`), exactly as the
    integer network will compute, but with float biases and no requantization rounding; the loss is
    the mean squared error of the last layer's output against the float network's (`teacher`).
    Backward: straight-through (rounding passes the gradient; clamped outputs and inactive ReLUs
    stop it).  Adam with a seeded shuffle.  Every matrix product has integer codes on one side and
    is exact (`arithmetic.exact_dot`), so the result does not depend on the BLAS: same inputs, same weights.
    """
    ft = cfg.finetune
    codes = arithmetic.quantize(x, in_scale, in_zp, 8).astype(np.float64) - in_zp
    teacher = np.asarray(teacher, np.float64)
    params = [[dense.kernel.astype(np.float64), dense.bias.astype(np.float64)] for dense in net.layers]
    bits = [cfg.bits_of(layer.name) for layer in net.layers]
    qps = [arithmetic.choose_qparams(*r, b[0]) for r, b in zip(ranges, bits)]
    moments = [[np.zeros_like(p) for p in pair for _ in range(2)] for pair in params]
    rng = np.random.default_rng(ft.seed)
    b1, b2, eps, t = 0.9, 0.999, 1e-8, 0
    for epoch in range(ft.epochs):
        losses = []
        for idx in np.array_split(rng.permutation(len(x)), max(1, int(np.ceil(len(x) / ft.batch_size)))):
            c, s_in, cache = codes[idx], float(in_scale), []
            for (w, b), dense, (ob, wb), (s_out, zp_out) in zip(params, net.layers, bits, qps):
                q_w, s_w = arithmetic.quantize_weights(w, wb, cfg.per_channel)
                q_w, s_w = q_w.astype(np.float64), s_w.astype(np.float64)
                z = (c @ q_w) * (s_in * s_w) + b  # integer codes on both sides: exact in float64
                a = network.apply_activation(z, dense.activation)
                qmin, qmax = arithmetic.qrange(ob)
                inside = (a >= s_out * (qmin - zp_out)) & (a <= s_out * (qmax - zp_out))  # not clamped
                cache.append((c, s_in, q_w, s_w, inside & (z > 0) if dense.activation == "relu" else inside))
                c, s_in, last = arithmetic.quantize(a, s_out, zp_out, ob).astype(np.float64) - zp_out, s_out, a
            diff = last - teacher[idx]
            losses.append(float(np.mean(diff**2)))
            g = 2.0 * diff / diff.size
            t += 1
            for i in range(len(params) - 1, -1, -1):
                c_in, s_in, q_w, s_w, pass_grad = cache[i]
                g = g * pass_grad
                grads = (arithmetic.exact_dot(g.T, c_in, b_is_integer=True).T * s_in, g.sum(axis=0))
                g = arithmetic.exact_dot(g * s_w, q_w.T, b_is_integer=True)
                for j, grad in enumerate(grads):
                    m, v = moments[i][2 * j], moments[i][2 * j + 1]
                    m[...] = b1 * m + (1 - b1) * grad
                    v[...] = b2 * v + (1 - b2) * grad**2
                    params[i][j] -= ft.learning_rate * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        log.info("optimize: finetune epoch %d/%d  distillation MSE %.5g", epoch + 1, ft.epochs, np.mean(losses))
    layers = [replace(dense, kernel=w.astype(np.float32), bias=b.astype(np.float32))
              for dense, (w, b) in zip(net.layers, params)]
    return replace(net, layers=layers)
