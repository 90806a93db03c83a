"""Convolution and pooling in integers (`engine.conv`) against an independent int64 reference written
plainly: loops over output positions, each kernel tap checked against the image's bounds (a pad is a
real zero and contributes nothing; pooling excludes it), sums in int64, then the requantization of
`arithmetic` (5) written out in Python integers.  Random layers and inputs, bit for bit."""

import dataclasses
import math
import zlib

import numpy as np
import pytest

from hailopipe.engine import run_conv, run_pool
from hailopipe.errors import PipelineError
from hailopipe.quantization import arithmetic
from hailopipe.quantization.qnetwork import QConv, QPool

SAME, VALID = "SAME_TENSORFLOW", "VALID"


def geometry(n, k, s, d, padding):
    """(out, pad_before) along one axis, TensorFlow's rule written out again."""
    extent = (k - 1) * d + 1
    if padding == VALID:
        return math.ceil((n - extent + 1) / s), 0
    out = math.ceil(n / s)
    return out, max((out - 1) * s + extent - n, 0) // 2


def window_sum(x, w, strides, dilations, padding, depthwise):
    """sum over the in-bounds taps of x[.., iy, ix, :] times w[i, j] at every output position; `x`
    already relative to the zero point (int64) or real (float64): out-of-bounds taps are pads, zeros."""
    n, h, wd, _ = x.shape
    kh, kw = w.shape[:2]
    (ho, pt), (wo, pl) = (geometry(size, k, s, d, padding) for size, k, s, d in zip((h, wd), (kh, kw), strides, dilations))
    out = np.zeros((n, ho, wo, w.shape[2] if depthwise else w.shape[3]), x.dtype)
    for oy in range(ho):
        for ox in range(wo):
            for i in range(kh):
                iy = oy * strides[0] + i * dilations[0] - pt
                for j in range(kw):
                    ix = ox * strides[1] + j * dilations[1] - pl
                    if 0 <= iy < h and 0 <= ix < wd:
                        v = x[:, iy, ix, :]
                        out[:, oy, ox] += v * w[i, j, :, 0] if depthwise else v @ w[i, j]
    return out


def requantize_ref(acc, m0, shift, zp, lo, hi):
    """(5) in Python integers (no overflow), m0 and shift per channel (the last axis) or one for all:
    clamp(zp + ((acc m0 + 2^(e-1)) >> e), lo, hi)."""
    m = np.array([int(v) for v in m0], object)
    e = np.array([int(v) for v in shift], object)
    half = np.array([1 << (int(v) - 1) for v in shift], object)
    y = (acc.astype(object) * m + half) >> e
    return np.minimum(np.maximum(y + zp, lo), hi).astype(np.int64)


def clamp_ref(layer):
    qmin, qmax = arithmetic.qrange(layer.out_bits)
    lo = qmin if layer.activation == "linear" else max(qmin, layer.out_zp)
    hi = qmax if layer.activation != "relu6" else min(qmax, max(qmin, int(np.rint(6.0 / layer.out_scale)) + layer.out_zp))
    return lo, hi


def reference_conv(layer: QConv, q: np.ndarray) -> np.ndarray:
    acc = window_sum(q.astype(np.int64) - layer.in_zp, layer.kernel.astype(np.int64), layer.strides, layer.dilations,
                     layer.padding, layer.depthwise) + layer.bias.astype(np.int64)
    return requantize_ref(acc, layer.m0, layer.shift, layer.out_zp, *clamp_ref(layer))


def reference_pool(layer: QPool, q: np.ndarray) -> np.ndarray:
    x = q.astype(np.int64)
    n, h, w, c = x.shape
    (ho, pt), (wo, pl) = (geometry(size, k, s, 1, layer.padding) for size, k, s in zip((h, w), layer.size, layer.strides))
    out = np.empty((n, ho, wo, c), np.int64)
    qmin, qmax = arithmetic.qrange(layer.bits)
    for oy in range(ho):
        rows = [r for r in range(oy * layer.strides[0] - pt, oy * layer.strides[0] - pt + layer.size[0]) if 0 <= r < h]
        for ox in range(wo):
            cols = [k for k in range(ox * layer.strides[1] - pl, ox * layer.strides[1] - pl + layer.size[1]) if 0 <= k < w]
            block = x[:, rows][:, :, cols]
            if layer.kind == "max":
                out[:, oy, ox] = block.max(axis=(1, 2))
                continue
            count = len(rows) * len(cols)
            m0, e = int(layer.m0[oy, ox]), int(layer.shift[oy, ox])
            assert abs(m0 * 2.0**-e * layer.out_scale * count / layer.in_scale - 1) < 2**-29  # M_n of (8)
            total = (block - layer.in_zp).sum(axis=(1, 2))
            out[:, oy, ox] = requantize_ref(total, [m0], [e], layer.out_zp, qmin, qmax)
    return out


def inputs(shape, bits, zp, rng, n=3):
    """n random storage integers of `shape`, then all qmin, all qmax, a random mix of both, all the zero point."""
    lo, hi = arithmetic.qrange(bits)
    rand = rng.integers(lo, hi + 1, (n, *shape))
    ext = [np.full(shape, lo), np.full(shape, hi), np.where(rng.random(shape) < 0.5, lo, hi), np.full(shape, zp)]
    return np.concatenate([rand, np.stack(ext)]).astype(arithmetic.storage_dtype(bits))


def make_conv(rng, h, w, cin, cout, k, stride, padding, activation="relu", depthwise=False, in_bits=8, mode="a8_w8",
              dilation=1, extreme=False, per_channel=True, in_zp=None):
    """A random QConv from `arithmetic.quantize_conv`, its output range the 2nd-98th percentiles of
    its real pre-activations on random inputs (so both ends of the clamp are reached); a relu6
    layer's kernel is scaled so that some outputs pass 6 and its range ends above 6."""
    kh, kw = (k, k) if isinstance(k, int) else k
    shape = (kh, kw, cin, 1) if depthwise else (kh, kw, cin, cout)
    kernel = np.where(rng.random(shape) < 0.5, -1.0, 1.0) if extreme else rng.standard_normal(shape) * 0.3
    bias = rng.standard_normal(shape[2] if depthwise else cout) * 0.5
    in_scale = float(np.float32(10 ** rng.uniform(-3, -0.5)))
    qmin, qmax = arithmetic.qrange(in_bits)
    in_zp = int(rng.integers(qmin, qmax + 1)) if in_zp is None else in_zp

    def build(limvals):
        return arithmetic.quantize_conv("dw1" if depthwise else "conv1", kernel, bias, activation, in_bits, in_scale, in_zp,
                                        limvals, mode, per_channel, (stride, stride), padding, (h, w, cin),
                                        (dilation, dilation), depthwise)

    layer = build((-1.0, 1.0))
    acc = window_sum(inputs((h, w, cin), in_bits, in_zp, rng).astype(np.int64) - in_zp, layer.kernel.astype(np.int64),
                     layer.strides, layer.dilations, padding, depthwise) + layer.bias
    real = acc * in_scale * layer.w_scale.astype(np.float64)
    lo, hi = np.percentile(real, [2, 98])
    if activation == "relu6":
        f = 7.5 / max(hi, 1e-3)
        kernel, bias = kernel * f, bias * f
        return build((0.0, 8.0))
    if activation == "relu":
        lo, hi = 0.0, max(hi, 1e-3)
    return build((float(lo), float(hi)))


CONV_CASES = [
    # depthwise, h, w, cin, cout, kernel, stride, padding, activation, in_bits, mode
    (False, 28, 28, 1, 8, 3, 1, SAME, "relu", 8, "a8_w8"),
    (False, 14, 14, 8, 16, 3, 1, SAME, "relu", 8, "a8_w8"),
    (False, 13, 13, 8, 16, 3, 2, SAME, "relu", 8, "a8_w8"),
    (False, 7, 9, 3, 5, 5, 1, SAME, "linear", 8, "a8_w8"),
    (False, 7, 9, 3, 5, 5, 2, VALID, "relu6", 8, "a8_w8"),
    (False, 13, 13, 4, 6, 1, 1, VALID, "linear", 8, "a8_w8"),
    (False, 7, 9, 4, 6, 1, 2, SAME, "relu", 8, "a8_w8"),
    (False, 8, 8, 2, 3, 3, 2, SAME, "relu6", 8, "a8_w8"),  # even size, stride 2: the extra pad row at the bottom
    (False, 9, 7, 2, 3, (2, 3), 1, SAME, "linear", 8, "a8_w8"),  # even kernel height: pad 0 above, 1 below
    (False, 11, 10, 3, 4, 3, 3, VALID, "linear", 8, "a8_w8"),
    (False, 9, 9, 3, 4, 3, 1, SAME, "relu", 16, "a16_w16"),
    (False, 7, 9, 2, 3, 3, 2, VALID, "linear", 8, "a16_w16"),
    (False, 7, 9, 2, 3, 3, 2, SAME, "relu6", 16, "a8_w8"),
    (True, 28, 28, 8, 8, 3, 1, SAME, "relu", 8, "a8_w8"),
    (True, 13, 13, 16, 16, 3, 2, SAME, "relu6", 8, "a8_w8"),
    (True, 7, 9, 4, 4, 5, 2, VALID, "linear", 8, "a8_w8"),
    (True, 7, 9, 3, 3, 1, 1, VALID, "linear", 8, "a8_w8"),
    (True, 8, 6, 3, 3, 3, 2, SAME, "relu", 16, "a16_w16"),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "{}-{}x{}x{}-{}-k{}-s{}-{}-{}-in{}-{}".format(
    "dw" if c[0] else "conv", c[1], c[2], c[3], c[4], c[5], c[6], c[7].split("_")[0], c[8], c[9], c[10]))
def test_conv_matches_reference(case):
    depthwise, h, w, cin, cout, k, stride, padding, activation, in_bits, mode = case
    rng = np.random.default_rng(zlib.crc32(repr(case).encode()))
    layer = make_conv(rng, h, w, cin, cout, k, stride, padding, activation, depthwise, in_bits, mode)
    q = inputs(layer.in_shape, in_bits, layer.in_zp, rng)
    got = run_conv(layer, q)
    assert got.dtype == arithmetic.storage_dtype(layer.out_bits) and got.shape == (len(q), *layer.out_shape)
    np.testing.assert_array_equal(got, reference_conv(layer, q))


@pytest.mark.parametrize("depthwise", [False, True])
@pytest.mark.parametrize("padding", [SAME, VALID])
def test_conv_int8_extremes(depthwise, padding):
    """Weights all +-127, inputs all -128 / 127 and mixed, zero points at the range's ends."""
    rng = np.random.default_rng(7 + depthwise)
    for zp in arithmetic.qrange(8):
        layer = make_conv(rng, 9, 7, 6, 6, 3, 2, padding, "linear", depthwise, extreme=True, in_zp=zp)
        assert set(np.unique(np.abs(layer.kernel))) == {127}
        q = inputs(layer.in_shape, 8, layer.in_zp, rng)
        np.testing.assert_array_equal(run_conv(layer, q), reference_conv(layer, q))


def test_conv_dilated_and_per_tensor():
    rng = np.random.default_rng(3)
    for padding in (SAME, VALID):
        layer = make_conv(rng, 11, 12, 3, 4, 3, 1, padding, "relu", dilation=2, per_channel=False)
        q = inputs(layer.in_shape, 8, layer.in_zp, rng)
        np.testing.assert_array_equal(run_conv(layer, q), reference_conv(layer, q))


@pytest.mark.parametrize("depthwise", [False, True])
@pytest.mark.parametrize("bits, wmax", [(8, 2), (16, 1000)])  # requantized in float64 / in int64 (module docstring)
def test_conv_rounding_ties(depthwise, bits, wmax):
    """Multipliers M = 2^-k and inputs near the zero point make exact ties of (5) frequent: half rounds up,
    also below zero."""
    rng = np.random.default_rng(13 + bits + depthwise)
    layer = make_conv(rng, 7, 9, 4, 4, 3, 1, SAME, "linear", depthwise, bits, "a8_w8" if bits == 8 else "a16_w16")
    kernel = rng.integers(-wmax, wmax + 1, layer.kernel.shape).astype(layer.kernel.dtype)
    k = np.arange(4) % 4 + 1
    layer = dataclasses.replace(layer, kernel=kernel, bias=rng.integers(-5, 6, 4), m0=np.full(4, 1 << 30, np.int32),
                                shift=(30 + k).astype(np.int32), out_zp=0)
    q = (layer.in_zp + rng.integers(-8, 9, (6, *layer.in_shape))).clip(*arithmetic.qrange(bits))
    q = q.astype(arithmetic.storage_dtype(bits))
    acc = window_sum(q.astype(np.int64) - layer.in_zp, kernel.astype(np.int64), layer.strides, layer.dilations, SAME,
                     depthwise) + layer.bias
    ties = acc % (1 << k) == (1 << (k - 1))
    assert ties.mean() > 0.1 and (ties & (acc < 0)).any()
    np.testing.assert_array_equal(run_conv(layer, q), reference_conv(layer, q))


@pytest.mark.parametrize("depthwise", [False, True])
def test_conv_exact_when_partial_sums_are_large(depthwise):
    """16-bit products near 2^30 that cancel to a small accumulator, output at the accumulator's own
    resolution (M = 1): any inexact partial sum (float32 beyond 2^24, int32 beyond 2^31) would show."""
    rng = np.random.default_rng(17)
    kernel = np.array([32767, -32767, 1], np.int16)
    if depthwise:  # the three taps along the width, one channel
        kernel, shape, strides = kernel.reshape(1, 3, 1, 1), (1, 3, 1), (1, 1)
    else:  # the three input channels of a 1x1 kernel
        kernel, shape, strides = kernel.reshape(1, 1, 3, 1), (1, 1, 3), (1, 1)
    layer = QConv("conv1", depthwise, "linear", 16, 16, 16, kernel, np.zeros(1, np.int64), np.ones(1, np.float32),
                  1.0, 0, 1.0, 0, np.full(1, 1 << 30, np.int32), np.full(1, 30, np.int32), (-1.0, 1.0), strides, VALID,
                  shape)
    b = rng.integers(-32767, 32766, 200)
    c = rng.integers(-200, 0, 200)
    q = np.stack([b + 1, b, c], axis=1).reshape(200, *shape).astype(np.int16)  # acc = 32767 + c
    got = run_conv(layer, q)
    np.testing.assert_array_equal(got, reference_conv(layer, q))
    np.testing.assert_array_equal(got.ravel(), 32767 + c)


@pytest.mark.parametrize("depthwise", [False, True])
def test_same_padding_is_a_real_zero(depthwise):
    """An all-real-zero input (every integer the zero point) gives the bias-only output everywhere,
    borders included: the pads are real zeros too."""
    rng = np.random.default_rng(11)
    layer = make_conv(rng, 7, 9, 4, 4, 5, 2, SAME, "linear", depthwise)
    got = run_conv(layer, np.full((2, *layer.in_shape), layer.in_zp, np.int8))
    bias_only = requantize_ref(layer.bias.astype(np.int64)[None], layer.m0, layer.shift, layer.out_zp, *clamp_ref(layer))
    np.testing.assert_array_equal(got, np.broadcast_to(bias_only[0], got.shape))


def test_quantized_conv_follows_the_float_one():
    """quantize_conv's integers mean the float layer: the output dequantizes to the float convolution
    with the quantized weights and bias (real zero padding), to one output step."""
    rng = np.random.default_rng(5)
    for depthwise in (False, True):
        layer = make_conv(rng, 9, 8, 4, 5, 3, 2, SAME, "linear", depthwise)
        q = inputs(layer.in_shape, 8, layer.in_zp, rng)[:3]
        w_real = layer.kernel * layer.w_scale.astype(np.float64)[None, None, :, None] if depthwise else \
            layer.kernel * layer.w_scale.astype(np.float64)
        x_real = (q.astype(np.float64) - layer.in_zp) * layer.in_scale
        y = window_sum(x_real, w_real, layer.strides, layer.dilations, SAME, depthwise)
        y += layer.bias * layer.in_scale * layer.w_scale
        lo, hi = arithmetic.real_range(layer.out_scale, layer.out_zp, 8)
        got = arithmetic.dequantize(run_conv(layer, q), layer.out_scale, layer.out_zp)
        assert np.abs(got - np.clip(y, lo, hi)).max() <= layer.out_scale * 0.5001 + 1e-6


POOL_CASES = [
    # kind, h, w, c, size, stride, padding, bits
    ("max", 28, 28, 8, 2, 2, VALID, 8),
    ("max", 7, 9, 3, 2, 2, SAME, 8),
    ("max", 13, 13, 4, 3, 1, SAME, 8),
    ("max", 7, 9, 3, 3, 2, SAME, 8),
    ("max", 13, 13, 4, 3, 2, VALID, 8),
    ("max", 6, 7, 2, 2, 1, VALID, 16),
    ("max", 7, 9, 2, 3, 2, SAME, 16),
    ("avg", 28, 28, 8, 2, 2, VALID, 8),
    ("avg", 7, 9, 3, 2, 2, SAME, 8),
    ("avg", 13, 13, 4, 3, 1, SAME, 8),
    ("avg", 7, 9, 3, 3, 2, SAME, 8),
    ("avg", 13, 13, 4, 3, 2, VALID, 8),
    ("avg", 6, 7, 2, 2, 1, VALID, 16),
    ("avg", 7, 9, 2, 3, 2, SAME, 16),
    ("avg", 7, 7, 16, (7, 7), 1, VALID, 8),  # global average pooling
    ("avg", 7, 9, 5, (7, 9), 1, VALID, 8),
    ("avg", 5, 6, 3, (5, 6), 1, VALID, 16),
]


@pytest.mark.parametrize("case, rescale", [(c, False) for c in POOL_CASES] + [(c, True) for c in POOL_CASES if c[0] == "avg"],
                         ids=lambda c: "{}-{}x{}x{}-k{}-s{}-{}-{}".format(*c[:6], c[6].split("_")[0], c[7]) if isinstance(c, tuple)
                         else ("out-qparams" if c else "in-qparams"))
def test_pool_matches_reference(case, rescale):
    """Average pooling with the input's qparams (TFLite's convention) and with its own (rescale)."""
    kind, h, w, c, size, stride, padding, bits = case
    rng = np.random.default_rng(zlib.crc32(repr((case, rescale)).encode()))
    size = (size, size) if isinstance(size, int) else size
    qmin, qmax = arithmetic.qrange(bits)
    in_scale, in_zp = float(np.float32(10 ** rng.uniform(-3, 0))), int(rng.integers(qmin, qmax + 1))
    out = (float(np.float32(in_scale * rng.uniform(0.3, 1.5))), int(rng.integers(qmin, qmax + 1))) if rescale else ()
    layer = arithmetic.quantize_pool(f"{kind}pool1", kind, size, (stride, stride), padding, (h, w, c), bits, in_scale,
                                     in_zp, *out)
    q = inputs(layer.in_shape, bits, in_zp, rng)
    got = run_pool(layer, q)
    assert got.dtype == arithmetic.storage_dtype(bits) and got.shape == (len(q), *layer.out_shape)
    np.testing.assert_array_equal(got, reference_pool(layer, q))


def test_avgpool_is_the_rounded_mean():
    """With the input's qparams, (8) is the exact mean of q - z rounded half up wherever it is no tie."""
    rng = np.random.default_rng(2)
    layer = arithmetic.quantize_pool("avgpool1", "avg", (3, 3), (2, 2), SAME, (9, 8, 4), 8, 0.02, -5)
    q = inputs(layer.in_shape, 8, -5, rng)
    xp = np.pad(q.astype(np.int64) - layer.in_zp, ((0, 0), (1, 1), (0, 1), (0, 0)))  # SAME 3x3/2 on 9x8
    s = sum(xp[:, i:i + 9:2, j:j + 7:2] for i in range(3) for j in range(3))
    n = layer.counts[None, :, :, None]
    mean_half_up = np.floor_divide(2 * s + n, 2 * n)
    tie = (2 * s) % (2 * n) == n
    got = run_pool(layer, q).astype(np.int64) - layer.out_zp
    assert tie.sum() < tie.size and (got == mean_half_up)[~tie].all()


def test_window_geometry():
    """TensorFlow's output sizes and pad placement, and the counts average pooling divides by."""
    layer = arithmetic.quantize_pool("avgpool1", "avg", (3, 3), (2, 2), SAME, (7, 8, 1), 8, 1.0, 0)
    assert layer.out_shape == (4, 4, 1) and layer.pads == ((1, 1), (0, 1))
    np.testing.assert_array_equal(layer.counts, np.outer([2, 3, 3, 2], [3, 3, 3, 2]))
    conv = make_conv(np.random.default_rng(0), 28, 28, 1, 8, 3, 1, SAME)
    assert conv.out_shape == (28, 28, 8) and conv.pads == ((1, 1), (1, 1)) and conv.macs == 28 * 28 * 9 * 8
    assert make_conv(np.random.default_rng(0), 13, 13, 8, 8, 3, 2, VALID, depthwise=True).out_shape == (6, 6, 8)


def test_bad_inputs_are_refused():
    layer = make_conv(np.random.default_rng(0), 7, 7, 2, 3, 3, 1, SAME)
    with pytest.raises(PipelineError, match="shape"):
        run_conv(layer, np.zeros((2, 7, 7, 3), np.int8))
    with pytest.raises(PipelineError, match="8-bit"):
        run_conv(layer, np.full((2, 7, 7, 2), 300, np.int16))
    np.testing.assert_array_equal(run_conv(layer, np.zeros((1, 7, 7, 2), np.int32)),
                                  run_conv(layer, np.zeros((1, 7, 7, 2), np.int8)))
    assert run_conv(layer, np.zeros((0, 7, 7, 2), np.int8)).shape == (0, 7, 7, 3)
    with pytest.raises(ValueError, match="qparams"):
        arithmetic.quantize_pool("maxpool1", "max", (2, 2), (2, 2), VALID, (8, 8, 1), 8, 1.0, 0, 0.5, 0)
