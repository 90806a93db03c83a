r"""Quantization arithmetic: written once here, used by the optimizer, the engine, the runtime and the formats.

Affine quantization (gemmlowp's `doc/quantization.md`, TFLite's int8 spec, Hailo's `qp_scale`/`qp_zp`)
----------------------------------------------------------------------------------------------------
A real value r is represented by an integer q with

    r = scale * (q - zero_point)                                            (1)

for a real `scale` > 0 and an integer `zero_point` in the integer range [qmin, qmax]
(b-bit signed: qmin = -2^(b-1), qmax = 2^(b-1) - 1).  Given a calibrated range [lo, hi] we first
widen it to contain 0 and then choose

    scale = (hi - lo) / (qmax - qmin),   zero_point = round(qmin - lo / scale)          (2)

so that r = 0 is exactly representable (q = zero_point).  Exact zero matters: ReLU outputs, padding
and sparse activations are exactly 0 and must stay so, or every layer would add a bias.

Quantizing is q = clamp(round_half_even(r / scale) + zero_point), as HailoRT does on its input
streams; dequantizing is (1).  On the wire (HailoRT's UINT8/UINT16 stream formats) the same value is
carried as u = q - qmin with qp_zp = zero_point - qmin: the same scale, an unsigned integer.

Weights are symmetric (zero_point = 0) in the restricted range [-(2^(b-1) - 1), 2^(b-1) - 1], per
output channel c by default:  scale_w[c] = max_k |W[k, c]| / (2^(b-1) - 1).

A Dense layer in integers
-------------------------
With input x = s_x (q_x - z_x), weights W = s_w[c] q_w, bias b, output y = s_y (q_y - z_y):

    y[c] = sum_k x[k] W[k,c] + b[c]
         = s_x s_w[c] * ( sum_k (q_x[k] - z_x) q_w[k,c] + q_b[c] ),   q_b[c] = round(b[c] / (s_x s_w[c]))

The bracket is an integer accumulator.  It is computed as

    acc[c] = sum_k q_x[k] q_w[k,c]  +  (q_b[c] - z_x sum_k q_w[k,c])                  (3)

the second term being a per-channel constant folded once at compile time, so the inner loop is a
plain int8 x int8 product summed in 32 bits: |sum_k q_x q_w| <= K * 128 * 127 < 2^31 for any K
below 132,000.  Then

    q_y[c] = clamp(z_y + round(M[c] * acc[c])),   M[c] = s_x s_w[c] / s_y              (4)

The real multiplier M is applied in fixed point, as integer hardware does: M = m0 * 2^-e with
m0 an integer in [2^30, 2^31) and e >= 1 (see `quantize_multiplier`), and

    round(M acc) = (acc * m0 + 2^(e-1)) >> e       (arithmetic shift; rounds half up)   (5)

which is exact in 64-bit integers since |acc| < 2^31 and m0 < 2^31.  (A 16-bit layer's accumulator
is wider; its m0 gets fewer bits, from a bound on |acc| over all inputs, so the product still fits.)  A fused
ReLU is the clamp's lower bound raised to z_y (the quantized 0); with the range widened to contain 0, a ReLU output has
lo = 0 and z_y = qmin, so the clamp alone implements it.

Precision modes (Hailo's `precision_mode`): `a8_w8` (default) and `a16_w16`, i.e. the activation
bits a layer *outputs* and its weight bits; a layer's input bits are its producer's output bits.

Choosing the calibrated range [lo, hi] of an activation (`minmax_range`, `percentile_range`, `mse_range`)
-------------------------------------------------------------------------------------------------------
(2) turns a range into a step `scale`; a value r outside [lo, hi] is clamped.  The error of the
fake-quantized value  fq(r) = dequantize(quantize(r))  has two parts: rounding, at most scale/2 for
every r inside the range (variance ~ scale^2 / 12), and clamping, |r| - |end| for r outside.  Over a
set of observed values {r_i}:

    minmax:      [lo, hi] = [min r_i, max r_i]: no clamping; the step is set by the extreme values.
    percentile:  [lo, hi] = the p_lo-th and p_hi-th percentiles of {r_i} (linear interpolation,
                 numpy's default): a few outliers are clamped so the step for the rest is finer.
    mse:         [lo, hi] = [a lo_mm, a hi_mm] for the a in {1/G, 2/G, ..., 1} (G = `MSE_GRID`
                 candidates, lo_mm/hi_mm the min/max range) that minimises
                     mean_i (fq_a(r_i) - r_i)^2,                                              (6)
                 fq_a being (2) with that range, i.e. the best trade of rounding against clamping
                 for the observed distribution (ties go to the widest range).

Order-independent products (`exact_dot`)
----------------------------------------
Float matrix products depend on the order BLAS sums in (thread count, CPU kernel), in the last
bits; a calibration statistic or a fine-tuned weight that lands near a rounding boundary then
gives different bytes on another machine.  `exact_dot(a, b)` puts both operands on power-of-two
fixed-point grids, a_int = round(a 2^s_a) and b_int = round(b 2^s_b) (an integer-valued b as it
is), with K max|a_int| max|b_int| < 2^52 for the inner dimension K: every partial sum is then an
integer that float64 holds exactly, the product is the same in any order, and

    a @ b ~= (a_int @ b_int) 2^-(s_a + s_b),

each float operand keeping at least (52 - log2 K) / 2 significant bits of its largest entry
(21 bits for K = 784, float32 has 24): far below the quantization steps it feeds.

Convolutions in integers (`quantize_conv`; run by `engine.conv`)
---------------------------------------------------------------
A 2-D convolution over NHWC inputs with TensorFlow's kernel layout [kh, kw, cin, cout] is the Dense
layer above applied at every output position (y, x) to the patch of kh*kw*cin inputs under the
kernel, with strides (sh, sw), dilations (dh, dw) and padding (pt, pl) at the top and left:

    acc[y, x, c] = sum_{i,j,k} q_x[y sh + i dh - pt, x sw + j dw - pl, k] q_w[i, j, k, c] + bias_eff[c]   (7)

bias_eff[c] = q_b[c] - z_x sum_{i,j,k} q_w[i, j, k, c] being (3)'s constant over the whole kernel,
then (4)-(5) per output channel.  Viewed as the matrix [kh*kw*cin, cout] (`conv_matrix`) the kernel
is quantized exactly as a Dense one (symmetric, per output channel), and so are its bias and m0.

Padding.  TensorFlow's SAME padding pads with real zeros.  The real 0 is exactly the integer z_x
(2), so the padded positions hold q = z_x: a pad contributes (z_x - z_x) q_w = 0 to
sum (q_x - z_x) q_w, as a real zero does.  Hence (7) holds at every output position, borders
included, with the same folded bias_eff: no border correction.  (Padding with the integer 0
would instead add -z_x times the padded weights' sum at the borders.)  Output sizes and pad
placement are TensorFlow's (`qnetwork.window`): SAME gives ceil(H / s) outputs and puts the odd
pad row (column) at the bottom (right).

Depthwise (kernel [kh, kw, C, 1], multiplier 1): output channel c sees input channel c alone, the
sum in (7) runs over (i, j) only, bias_eff[c] = q_b[c] - z_x sum_{i,j} q_w[i, j, c, 0], and the
weights are symmetric per channel c of the matrix [kh*kw, C].

Activations are the clamp's bounds (`activation_bounds`): linear [qmin, qmax]; relu raises the
lower bound to z_y (the quantized 0); relu6 also lowers the upper one to quantize(6) =
z_y + round_half_even(6 / s_y), clamped to the range.  Quantizing is nondecreasing, so
quantize(min(max(r, 0), 6)) = min(max(quantize(r), quantize(0)), quantize(6)): the clamp of the
integer output is the integer of the clamped value.

Max pooling.  Quantizing is nondecreasing, so max_i quantize(r_i) = quantize(max_i r_i): with the
output's qparams equal to the input's, the max of the integers is exactly the quantized max, no
requantization.  TensorFlow's SAME max pooling ignores the pads (as -inf).  Every SAME window holds
at least one real input (pad_total = (out - 1) s + k - H < k since (out - 1) s < H, so no window
lies wholly in the padding), so padding with qmin, which no real input is below, gives the same max.

Average pooling.  TensorFlow averages over the real inputs of the window only: their count n is
kh*kw everywhere for VALID and smaller at the borders for SAME (`QPool.counts`: the in-bounds rows
times the in-bounds columns).  With r_i = s_x (q_i - z_x) and the output r = s_y (q_y - z_y):

    r = (1 / n) sum_i r_i   =>   q_y = clamp(z_y + round(M_n S)),   S = sum_i (q_i - z_x),   M_n = s_x / (s_y n)   (8)

S is an integer accumulator over the window; padding with z_x (as for the convolution) makes each
pad contribute 0, so S is the plain sum over the padded window minus kh*kw*z_x.  M_n is put in
fixed point per output position (`avgpool_multipliers`) and rounded by (5): round half up, the
rule every other layer uses.  |S| <= n (2^b - 1) bounds the mantissa bits so that S m0 fits 64 bits.
With s_y = s_x (TFLite's int8 AVERAGE_POOL_2D requires it; `quantize_pool`'s default) M_n = 1/n to
31 bits (fewer only when n (2^b - 1) reaches 2^31): (8) then is the exact mean of the q_i - z_x
rounded half up, except possibly when that mean is exactly a half-integer (m0 2^-e is off 1/n by
under 2^-31 relative, so M_n S is off the mean by under 2^(b-31), while a mean that is no tie is at
least 1/(2n) from one: n < 2^(30-b) suffices).  TFLite rounds half away from zero instead: the two
differ only on such ties.
"""

from __future__ import annotations

import numpy as np

from hailopipe.quantization.qnetwork import QConv, QPool, window_counts

PRECISION_MODES = {"a8_w8": (8, 8), "a16_w16": (16, 16)}


def qrange(bits: int) -> tuple[int, int]:
    """Signed integer range of `bits` bits."""
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def weight_qmax(bits: int) -> int:
    """The largest magnitude of a symmetric `bits`-bit weight: 2^(bits-1) - 1 (the range is +-qmax)."""
    return (1 << (bits - 1)) - 1


def storage_dtype(bits: int) -> np.dtype:
    """Signed storage of `bits`-bit integers: int8 or int16."""
    return np.dtype(np.int8) if bits <= 8 else np.dtype(np.int16)


def stream_dtype(bits: int) -> np.dtype:
    """The unsigned stream format of `bits`-bit integers (HailoRT's UINT8 / UINT16): uint8 or uint16."""
    return np.dtype(np.uint8) if bits <= 8 else np.dtype(np.uint16)


def real_range(scale: float, zero_point: int, bits: int) -> tuple[float, float]:
    """The real values (1) of the integer range's ends: what a `bits`-bit tensor can carry (its limvals)."""
    qmin, qmax = qrange(bits)
    return (qmin - zero_point) * scale, (qmax - zero_point) * scale


def choose_qparams(lo: float, hi: float, bits: int) -> tuple[float, int]:
    """Scale and zero point (2) for the range [lo, hi], widened to contain 0."""
    qmin, qmax = qrange(bits)
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo <= 0.0 or not np.isfinite(hi - lo):
        return 1.0, 0
    scale = (hi - lo) / (qmax - qmin)
    zero_point = int(np.clip(np.round(qmin - lo / scale), qmin, qmax))
    return float(scale), zero_point


def quantize(x: np.ndarray, scale: float, zero_point: int, bits: int, limvals=None) -> np.ndarray:
    """q = clamp(round_half_even(x / scale) + zero_point), as integers of the storage dtype; with
    `limvals` x is first clipped to [limvals[0], limvals[1]] in its own dtype, as HailoRT's input
    conversion does."""
    qmin, qmax = qrange(bits)
    if limvals is not None:
        x = np.asarray(x)
        x = np.clip(x, x.dtype.type(limvals[0]), x.dtype.type(limvals[1]))
    q = np.rint(np.asarray(x, np.float64) / scale) + zero_point
    return np.clip(q, qmin, qmax).astype(storage_dtype(bits))


def dequantize(q: np.ndarray, scale, zero_point) -> np.ndarray:
    """r = scale * (q - zero_point), in float32."""
    return ((np.asarray(q, np.float32) - np.float32(zero_point)) * np.asarray(scale, np.float32)).astype(np.float32)


def to_unsigned(q: np.ndarray, bits: int) -> np.ndarray:
    """Signed storage -> the unsigned stream format (u = q - qmin)."""
    qmin, _ = qrange(bits)
    return (q.astype(np.int32) - qmin).astype(stream_dtype(bits))


def from_unsigned(u: np.ndarray, bits: int) -> np.ndarray:
    qmin, _ = qrange(bits)
    return (u.astype(np.int32) + qmin).astype(storage_dtype(bits))


def quantize_weights(w: np.ndarray, bits: int, per_channel: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric weights: (q_w [K, C] integers, scale_w [C] float32)."""
    qmax = weight_qmax(bits)
    w = np.asarray(w, np.float64)
    absmax = np.abs(w).max(axis=0) if per_channel else np.full(w.shape[1], np.abs(w).max())
    scale = np.where(absmax > 0, absmax / qmax, 1.0)
    q = np.clip(np.rint(w / scale), -qmax, qmax).astype(storage_dtype(bits))
    return q, scale.astype(np.float32)


def quantize_bias(b: np.ndarray, in_scale: float, w_scale: np.ndarray) -> np.ndarray:
    """q_b = round(b / (s_x s_w)) as int64 (int32 suffices for 8-bit layers; 16-bit ones need more)."""
    q = np.rint(np.asarray(b, np.float64) / (float(in_scale) * w_scale.astype(np.float64)))
    return np.clip(q, -(2**40), 2**40).astype(np.int64)


def quantize_multiplier(m: np.ndarray, mant_bits: int = 31) -> tuple[np.ndarray, np.ndarray]:
    """Real multipliers M > 0 -> (m0, e) with M ~= m0 2^-e, m0 in [2^(mant_bits-1), 2^mant_bits), 1 <= e <= 62.

    `mant_bits` is 31 for 8-bit layers; a 16-bit layer, whose accumulator needs more than 31 bits,
    uses fewer (see `multiplier_bits`) so that acc * m0 in (5) always fits in 64 bits.
    """
    m = np.asarray(m, np.float64)
    if np.any(~np.isfinite(m)) or np.any(m <= 0):
        raise ValueError("requantization multipliers must be finite and positive")
    mant, exp = np.frexp(m)  # m = mant * 2^exp, mant in [0.5, 1)
    m0 = np.rint(mant * 2.0**mant_bits).astype(np.int64)
    e = mant_bits - exp.astype(np.int64)
    carry = m0 == 2**mant_bits  # mantissa rounded up to 1.0
    m0 = np.where(carry, 2 ** (mant_bits - 1), m0)
    e = np.where(carry, e - 1, e)
    too_small = e > 62  # M < 2^(mant_bits-63): shrink m0 so that e fits; the product is ~0 anyway
    m0 = np.where(too_small, np.rint(m * 2.0**62), m0).astype(np.int64)
    e = np.where(too_small, 62, e)
    if np.any(e < 1):
        raise ValueError("requantization multiplier too large for fixed point")
    return m0.astype(np.int32), e.astype(np.int32)


def multiplier_bits(q_w: np.ndarray, bias_eff: np.ndarray, in_bits: int) -> int:
    """Mantissa bits for m0 such that |acc * m0| < 2^63 for every possible input.

    |acc[c]| <= max|q_x| * sum_k |q_w[k, c]| + |bias_eff[c]|, a bound from the actual weights.
    """
    max_x = 1 << (in_bits - 1)
    bound = int((np.abs(q_w.astype(np.int64)).sum(axis=0) * max_x + np.abs(bias_eff.astype(np.int64))).max())
    return max(8, min(31, 62 - bound.bit_length()))


def requantize(acc: np.ndarray, m0: np.ndarray, e: np.ndarray, zero_point: int, lo: int, hi: int) -> np.ndarray:
    """(4)-(5): clamp(zero_point + ((acc * m0 + 2^(e-1)) >> e), lo, hi) in int64 arithmetic."""
    m0 = m0.astype(np.int64)
    e = e.astype(np.int64)
    prod = acc.astype(np.int64) * m0 + (np.int64(1) << (e - 1))
    return np.clip((prod >> e) + zero_point, lo, hi)


def fold_zero_point(q_b: np.ndarray, q_w: np.ndarray, z_x: int) -> np.ndarray:
    """The constant term of (3): q_b[c] - z_x * sum_k q_w[k, c], in int64."""
    return q_b.astype(np.int64) - np.int64(z_x) * q_w.astype(np.int64).sum(axis=0)


MSE_GRID = 100


def minmax_range(values: np.ndarray) -> tuple[float, float]:
    """[min, max] of the observed values."""
    v = np.asarray(values)
    return float(v.min()), float(v.max())


def percentile_range(values: np.ndarray, lo_pct: float, hi_pct: float) -> tuple[float, float]:
    """The `lo_pct`-th and `hi_pct`-th percentiles (0..100) of the observed values."""
    lo, hi = np.percentile(np.asarray(values, np.float64).ravel(), [lo_pct, hi_pct])
    return float(lo), float(hi)


def fake_quantize(values: np.ndarray, lo: float, hi: float, bits: int) -> np.ndarray:
    """dequantize(quantize(r)) with the qparams (2) of [lo, hi]: what the integer format keeps of r."""
    scale, zp = choose_qparams(lo, hi, bits)
    return dequantize(quantize(values, scale, zp, bits), scale, zp)


def mse_range(values: np.ndarray, bits: int, grid: int = MSE_GRID) -> tuple[float, float]:
    """The range [a lo, a hi] minimising the mean squared error (6) of fake-quantizing `values`."""
    v = np.asarray(values, np.float64).ravel()
    lo, hi = minmax_range(v)
    best, best_err = (lo, hi), np.inf
    for a in np.arange(grid, 0, -1) / grid:
        err = float(np.mean((fake_quantize(v, a * lo, a * hi, bits) - v) ** 2))
        if err < best_err:
            best, best_err = (float(a * lo), float(a * hi)), err
    return best


def _grid(v: np.ndarray, bits: int) -> tuple[np.ndarray, int]:
    """(round(v 2^shift), shift) with every |entry| below 2^bits."""
    vmax = float(np.abs(v).max(initial=0.0))
    shift = bits - int(np.frexp(vmax)[1]) if vmax > 0 else 0  # vmax = m 2^e, m < 1: vmax 2^shift < 2^bits
    return np.rint(np.ldexp(np.asarray(v, np.float64), shift)), shift


def exact_dot(a: np.ndarray, b: np.ndarray, b_is_integer: bool = False) -> np.ndarray:
    """a @ b on fixed-point grids, exact in float64 and so independent of summation order (see above)."""
    room = 52 - int(np.frexp(max(1, a.shape[-1]))[1])  # K < 2^frexp(K)[1]
    if b_is_integer:
        b_int, s_b = np.asarray(b, np.float64), 0
        b_bits = int(np.frexp(float(np.abs(b_int).max(initial=1.0)))[1])
    else:
        b_bits = room // 2
        b_int, s_b = _grid(b, b_bits)
    a_int, s_a = _grid(a, room - b_bits)
    return np.ldexp(a_int @ b_int, -(s_a + s_b))


def conv_matrix(kernel: np.ndarray, depthwise: bool = False) -> np.ndarray:
    """A convolution kernel as the matrix [K, C] of (7): [kh*kw*cin, cout], rows in (i, j, k) order;
    depthwise ([kh, kw, C, 1]) [kh*kw, C]."""
    kernel = np.asarray(kernel)
    return kernel[..., 0].reshape(-1, kernel.shape[2]) if depthwise else kernel.reshape(-1, kernel.shape[3])


def activation_bounds(activation: str, scale: float, zero_point: int, bits: int) -> tuple[int, int]:
    """The clamp (lo, hi) of a layer's output integers that implements its activation (see above)."""
    qmin, qmax = qrange(bits)
    if activation == "linear":
        return qmin, qmax
    lo = max(qmin, zero_point)
    if activation == "relu":
        return lo, qmax
    if activation == "relu6":
        return lo, int(quantize(np.float64(6.0), scale, zero_point, bits))
    raise ValueError(f"activation {activation!r} is not linear, relu or relu6")


def quantize_conv(name: str, kernel: np.ndarray, bias: np.ndarray, activation: str, in_bits: int, in_scale: float,
                  in_zp: int, limvals, mode: str, per_channel: bool, strides, padding: str, in_shape,
                  dilations=(1, 1), depthwise: bool = False) -> QConv:
    """A float convolution (kernel [kh, kw, cin, cout] or depthwise [kh, kw, C, 1], bias [cout]) in
    integers, as `optimizer.quantize_dense` does a Dense layer: the input's qparams, the output's from
    `limvals` in precision `mode`; weights symmetric per output channel (or per tensor)."""
    out_bits, w_bits = PRECISION_MODES[mode]
    kernel = np.asarray(kernel)
    q_mat, s_w = quantize_weights(conv_matrix(kernel, depthwise), w_bits, per_channel)
    q_w = (q_mat.reshape(*kernel.shape[:3], 1) if depthwise else q_mat.reshape(kernel.shape))
    q_b = quantize_bias(bias, in_scale, s_w)
    out_scale, out_zp = choose_qparams(*limvals, out_bits)
    out_scale = float(np.float32(out_scale))
    multiplier = float(np.float32(in_scale)) * s_w.astype(np.float64) / out_scale
    m0, shift = quantize_multiplier(multiplier, multiplier_bits(q_mat, fold_zero_point(q_b, q_mat, in_zp), in_bits))
    return QConv(name, depthwise, activation, in_bits, w_bits, out_bits, q_w, q_b, s_w, in_scale, in_zp, out_scale,
                 out_zp, m0, shift, (float(limvals[0]), float(limvals[1])), tuple(strides), padding, tuple(in_shape),
                 tuple(dilations))


def avgpool_multipliers(counts: np.ndarray, in_scale: float, out_scale: float,
                        bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(m0, e) of M_n = s_x / (s_y n) in (8) for each count n, with |S m0| < 2^63 for |S| <= n (2^bits - 1)."""
    counts = np.asarray(counts, np.int64)
    bound = int(counts.max(initial=1)) * ((1 << bits) - 1)
    mant_bits = max(8, min(31, 62 - bound.bit_length()))
    m = float(np.float32(in_scale)) / (float(np.float32(out_scale)) * counts.astype(np.float64))
    return quantize_multiplier(m, mant_bits)


def quantize_pool(name: str, kind: str, size, strides, padding: str, in_shape, bits: int, in_scale: float, in_zp: int,
                  out_scale: float | None = None, out_zp: int | None = None) -> QPool:
    """A pooling layer in integers.  Max pooling keeps the input's qparams (it commutes only with
    them); average pooling takes the output's (default: the input's, as TFLite) and gets the
    multipliers of (8) for its window counts."""
    out_scale = in_scale if out_scale is None else out_scale
    out_zp = in_zp if out_zp is None else out_zp
    m0 = shift = None
    if kind == "avg":
        m0, shift = avgpool_multipliers(window_counts(in_shape, size, strides, padding), in_scale, out_scale, bits)
    return QPool(name, kind, tuple(size), tuple(strides), padding, tuple(in_shape), bits, in_scale, in_zp, out_scale,
                 out_zp, m0, shift)
