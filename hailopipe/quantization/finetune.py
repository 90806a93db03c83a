"""Level 2's fine-tune: a short quantization-aware distillation of the float network into its
fake-quantized self (`post_quantization_optimization(finetune, ...)` in the SDK's model script).

Called by `optimizer.quantize_network` before the bias correction; the result is a float network
with new weights, quantized afterwards with the ranges calibrated on the original.

What is trained: the float kernel and bias of every Conv (regular or depthwise) and Dense layer;
pooling has no weights, and the activation ranges stay those calibrated on the original network.

The forward pass (`forward`) is the integer network's, in integer codes c = q - z (the real value
is s c), with float biases and no requantization rounding:

* the input is quantized as the input stream is (8 bits, `in_scale`, `in_zp`);
* a Conv or Dense layer quantizes its weights afresh from their current values, symmetric per
  output channel (or per tensor) of its kernel matrix (`arithmetic.conv_matrix`), and computes
  z = s_x s_w (patches(c) @ q_w) + b: im2col (`network.patches`, the SAME padding filled with the
  code 0, the real 0) times the integer weights (depthwise: per channel); a Dense layer after an
  HxWxC tensor takes it flattened in NHWC order.  Then the activation (relu6 clamps at 0 and 6)
  and the output is quantized with the layer's fixed qparams (from its calibrated range);
* max pooling takes the largest code of each window: it keeps its input's qparams, as the integer
  layer does, so its output needs no rounding (SAME pads are -inf, never chosen);
* average pooling takes the mean of each window's real inputs (TensorFlow's count, excluding the
  padding) and re-quantizes it with its input's qparams exactly as the integer layer does
  (`arithmetic`'s (8): the window's integer sum times the fixed-point 1/n, rounded half up).

The loss is the mean squared error of the last layer's output before its own rounding (which no
weight can change) against the float network's (`teacher`).  The backward pass (`backward`) is
straight-through: rounding passes the gradient, while clamped outputs (outside the range's integer
ends), inactive ReLUs and saturated ReLU6s stop it; max pooling sends each window's gradient to its
argmax (ties: the first in (row, column) order), average pooling spreads it evenly over the
window's real inputs; the gradient of the weight quantization is the identity.  Adam on float64
weights, batches of `batch_size` from a shuffle seeded by `seed`.

Why it is bit-reproducible (the same weights on any BLAS, CPU and thread count): every product
has integer codes on one side.  The forward products (codes times integer weights) are integers
below 2^53, exact in float64 in any order; the weight gradients (patches^T @ gradient) and the
input gradients (gradient @ q_w^T) go through `arithmetic.exact_dot`, exact on fixed-point grids;
what remains is elementwise arithmetic, numpy's reductions over an axis (a fixed order) and the
adjoint of im2col (`col2im`), which adds the kernel taps' contributions in float64 one tap at a time
in a fixed loop order.  A network of linear and ReLU Dense layers runs exactly the operations it
always has (a Dense ReLU6 now stops the gradient where it saturates, as a Conv's does).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np

from hailopipe import network
from hailopipe.quantization import arithmetic
from hailopipe.quantization.config import OptimizeConfig
from hailopipe.quantization.qnetwork import window_counts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Step:
    """One layer as the fine-tune runs it: its shapes, output bits and output qparams (a pool's are its input's)."""
    layer: network.Layer
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    bits: int  # output activation bits
    w_bits: int  # 0 for a pool
    scale: float
    zp: int


def plan(net: network.Network, ranges, in_scale: float, in_zp: int, cfg: OptimizeConfig) -> list[Step]:
    """The `Step` of every layer: qparams from its calibrated range, a pool's from its input."""
    steps, bits, scale, zp = [], 8, float(in_scale), int(in_zp)
    for layer, limvals, (in_shape, out_shape) in zip(net.layers, ranges, net.shapes):
        w_bits = 0
        if not isinstance(layer, network.Pool):
            bits, w_bits = cfg.bits_of(layer.name)
            scale, zp = arithmetic.choose_qparams(*limvals, bits)
        steps.append(Step(layer, in_shape, out_shape, bits, w_bits, scale, zp))
    return steps


def initial_params(layer: network.Layer):
    """[kernel matrix [K, C], bias] in float64 (None for a pool)."""
    if isinstance(layer, network.Pool):
        return None
    kernel = layer.kernel if isinstance(layer, network.Dense) else arithmetic.conv_matrix(layer.kernel, layer.depthwise)
    return [kernel.astype(np.float64), layer.bias.astype(np.float64)]


def col2im(gwin: np.ndarray, in_shape, size, strides, padding: str, dilations=(1, 1)) -> np.ndarray:
    """The adjoint of `network.patches`: gradients [N, OH, OW, kh, kw, C] of the windows added back to
    the inputs they came from, one kernel tap at a time in a fixed order (float64), padding dropped."""
    n, oh, ow = gwin.shape[:3]
    (h, w, c), (kh, kw), (sh, sw), (dh, dw) = in_shape, size, strides, dilations
    (pt, pb), (pl, pr) = network.pads(h, kh, sh, padding, dh), network.pads(w, kw, sw, padding, dw)
    out = np.zeros((n, h + pt + pb, w + pl + pr, c))
    for i in range(kh):
        for j in range(kw):
            out[:, i * dh:i * dh + (oh - 1) * sh + 1:sh, j * dw:j * dw + (ow - 1) * sw + 1:sw] += gwin[:, :, :, i, j]
    return out[:, pt:pt + h, pl:pl + w]


def pool(step: Step, c: np.ndarray):
    """(output codes before rounding, output codes, cache) of a pooling layer on codes `c`."""
    layer = step.layer
    if layer.kind == "max":
        win = network.patches(c, layer.size, layer.strides, layer.padding, pad_value=-np.inf)
        win = win.reshape(*win.shape[:3], -1, win.shape[-1])
        arg = win.argmax(axis=3)[:, :, :, None]  # the first largest in (row, column) order
        out = np.take_along_axis(win, arg, axis=3)[:, :, :, 0]
        return out, out, arg
    counts = window_counts(step.in_shape, layer.size, layer.strides, layer.padding)
    m0, shift = arithmetic.avgpool_multipliers(counts, 1.0, 1.0, step.bits)  # (8) with s_y = s_x: M_n ~ 1 / n
    total = network.patches(c, layer.size, layer.strides, layer.padding).sum(axis=(3, 4))  # integers: exact
    qmin, qmax = arithmetic.qrange(step.bits)
    out = arithmetic.requantize(total.astype(np.int64), m0[:, :, None], shift[:, :, None], 0, qmin - step.zp,
                                qmax - step.zp).astype(np.float64)  # the integer layer's rounding, bit for bit
    counts = counts[:, :, None].astype(np.float64)
    return total / counts, out, counts


def forward(steps: list[Step], params, c: np.ndarray, s_in: float, per_channel: bool):
    """The fake-quantized network on input codes `c`: (the last layer's real output before its rounding, caches)."""
    caches = []
    for step, p in zip(steps, params):
        layer = step.layer
        if isinstance(layer, network.Pool):
            c = c.reshape(len(c), *step.in_shape)
            a, c, cache = pool(step, c)
            caches.append((s_in, cache))
            last = a * s_in
            continue
        q_w, s_w = arithmetic.quantize_weights(p[0], step.w_bits, per_channel)
        q_w, s_w = q_w.astype(np.float64), s_w.astype(np.float64)
        if isinstance(layer, network.Dense):
            cols = c.reshape(len(c), -1)
            acc = cols @ q_w  # integer codes on both sides: exact in float64
        else:
            kh, kw = layer.kernel.shape[:2]
            win = network.patches(c.reshape(len(c), *step.in_shape), (kh, kw), layer.strides, layer.padding,
                                  layer.dilations)  # SAME pads: the code 0, the real 0
            if layer.depthwise:
                cols = win.reshape(-1, kh * kw, step.in_shape[2])
                acc = (cols * q_w).sum(axis=1)  # integers: exact in any order
            else:
                cols = win.reshape(-1, q_w.shape[0])
                acc = cols @ q_w
            acc = acc.reshape(*win.shape[:3], -1)
        z = acc * (s_in * s_w) + p[1]
        a = network.apply_activation(z, layer.activation)
        qmin, qmax = arithmetic.qrange(step.bits)
        pass_grad = (a >= step.scale * (qmin - step.zp)) & (a <= step.scale * (qmax - step.zp))  # not clamped
        if layer.activation in ("relu", "relu6"):
            pass_grad &= z > 0
        if layer.activation == "relu6":
            pass_grad &= z < 6
        caches.append((s_in, (cols, q_w, s_w, pass_grad)))
        c = arithmetic.quantize(a, step.scale, step.zp, step.bits).astype(np.float64) - step.zp
        s_in, last = step.scale, a
    return last, caches


def backward(steps: list[Step], caches, g: np.ndarray):
    """Straight-through gradients of the loss: `g` is its gradient w.r.t. the last output; returns
    [(kernel matrix gradient, bias gradient)] per layer (None for a pool)."""
    grads = [None] * len(steps)
    for i in range(len(steps) - 1, -1, -1):
        step, layer, (s_in, cache) = steps[i], steps[i].layer, caches[i]
        n, need_input = len(g), i > 0
        if isinstance(layer, network.Pool):
            if not need_input:
                continue
            oh, ow, ch = step.out_shape
            kh, kw = layer.size
            g = g.reshape(n, oh, ow, ch)
            if layer.kind == "max":
                gwin = np.zeros((n, oh, ow, kh * kw, ch))
                np.put_along_axis(gwin, cache, g[:, :, :, None], axis=3)
            else:
                gwin = np.broadcast_to((g / cache)[:, :, :, None], (n, oh, ow, kh * kw, ch))
            g = col2im(gwin.reshape(n, oh, ow, kh, kw, ch), step.in_shape, layer.size, layer.strides, layer.padding)
            continue
        cols, q_w, s_w, pass_grad = cache
        g = g.reshape(pass_grad.shape) * pass_grad
        if isinstance(layer, network.Dense):
            grads[i] = (arithmetic.exact_dot(g.T, cols, b_is_integer=True).T * s_in, g.sum(axis=0))
            if need_input:
                g = arithmetic.exact_dot(g * s_w, q_w.T, b_is_integer=True)
            continue
        g2 = g.reshape(-1, g.shape[-1])
        if layer.depthwise:  # per channel c: patches[:, :, c]^T @ g[:, c]
            gw = arithmetic.exact_dot(g2.T[:, None, :], cols.transpose(2, 0, 1), b_is_integer=True)[:, 0, :].T
            gcols = (g2 * s_w)[:, None, :] * q_w  # elementwise: no sum
        else:
            gw = arithmetic.exact_dot(g2.T, cols, b_is_integer=True).T
            gcols = arithmetic.exact_dot(g2 * s_w, q_w.T, b_is_integer=True) if need_input else None
        grads[i] = (gw * s_in, g2.sum(axis=0))
        if need_input:
            kh, kw = layer.kernel.shape[:2]
            g = col2im(gcols.reshape(*g.shape[:3], kh, kw, step.in_shape[2]), step.in_shape, (kh, kw),
                       layer.strides, layer.padding, layer.dilations)
    return grads


def gradients(steps: list[Step], params, c: np.ndarray, s_in: float, target: np.ndarray, per_channel: bool):
    """(distillation MSE, its gradients per layer) for one batch of input codes `c` and teacher outputs `target`."""
    last, caches = forward(steps, params, c, s_in, per_channel)
    diff = last.reshape(len(target), -1) - target
    return float(np.mean(diff**2)), backward(steps, caches, 2.0 * diff / diff.size)


def finetune(net: network.Network, x: np.ndarray, teacher: np.ndarray, ranges, in_scale: float, in_zp: int,
             cfg: OptimizeConfig) -> network.Network:
    """Level 2: distil `net` into its fake-quantized self on the calibration images `x` (the model's
    domain, [N, H*W*C] or NHWC) given the float network's outputs `teacher` and each layer's
    calibrated range (see the module docstring); returns `net` with the fine-tuned weights."""
    ft = cfg.finetune
    steps = plan(net, ranges, in_scale, in_zp, cfg)
    x = np.asarray(x).reshape(len(x), *net.input_shape)
    codes = arithmetic.quantize(x, in_scale, in_zp, 8).astype(np.float64) - in_zp
    teacher = np.asarray(teacher, np.float64).reshape(len(x), -1)
    params = [initial_params(layer) for layer in net.layers]
    moments = [None if pair is None else [np.zeros_like(p) for p in pair for _ in range(2)] for pair in params]
    rng = np.random.default_rng(ft.seed)
    b1, b2, eps, t = 0.9, 0.999, 1e-8, 0
    for epoch in range(ft.epochs):
        losses = []
        for idx in np.array_split(rng.permutation(len(x)), max(1, int(np.ceil(len(x) / ft.batch_size)))):
            loss, grads = gradients(steps, params, codes[idx], float(in_scale), teacher[idx], cfg.per_channel)
            losses.append(loss)
            t += 1
            for i in range(len(params) - 1, -1, -1):
                for j, grad in enumerate(grads[i] or ()):
                    m, v = moments[i][2 * j], moments[i][2 * j + 1]
                    m[...] = b1 * m + (1 - b1) * grad
                    v[...] = b2 * v + (1 - b2) * grad**2
                    params[i][j] -= ft.learning_rate * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        log.info("optimize: finetune epoch %d/%d  distillation MSE %.5g", epoch + 1, ft.epochs, np.mean(losses))
    return replace(net, layers=[_with_params(layer, p) for layer, p in zip(net.layers, params)])


def _with_params(layer: network.Layer, p) -> network.Layer:
    """`layer` with the trained kernel matrix (back in its own layout) and bias, in float32."""
    if p is None:
        return layer
    return replace(layer, kernel=p[0].reshape(layer.kernel.shape).astype(np.float32), bias=p[1].astype(np.float32))
