"""Convolution and pooling in integers, bit-exact: the NHWC layers of a convolutional network.

    from hailopipe.engine.conv import PreparedConv, PreparedPool, run_conv, run_pool
    q_y = run_conv(layer, q_x)   # QConv: storage integers [N, H, W, cin] (int8/int16 per in_bits) -> [N, Ho, Wo, cout]
    q_y = run_pool(layer, q_x)   # QPool: the same for max and average pooling (int8/int16 per bits)
    conv = PreparedConv(layer)   # the per-layer preparation done once (an engine keeps these) ...
    q_y = conv(q_x)              # ... and run as often as wanted; PreparedPool likewise

The math is derived in `arithmetic` ((7), (8) and the paragraphs around them); here it is computed
with numpy, a chunk of images at a time so that the largest temporary stays near `BUDGET` bytes
(cache-sized: smaller is slower per call, larger spills the cache), no loop over pixels:

* Convolution: the input is padded with its zero point (SAME; a pad is a real 0), its kh*kw strided
  views are copied side by side into the patch matrix [rows, kh*kw*cin] (im2col, one copy per kernel
  tap) and multiplied by the kernel matrix [kh*kw*cin, cout] in one BLAS GEMM.  The operands are
  integers and every partial sum is bounded by max|q_x| * max_c sum_k |q_w[k, c]| (pads included:
  z_x is an input value), so the GEMM is exact in float32 when that bound is below 2^24, in float64
  below 2^53 (chosen per layer, as `engine`'s numpy path does), in int64 beyond.
* Depthwise: per kernel tap, the strided view times that tap's per-channel weights, summed in int32
  (int64 when the same bound reaches 2^31): integer arithmetic, exact.
* Requantization (5) with the folded bias: (acc m0 + c) >> e, c = bias_eff m0 + 2^(e-1) (+ z_y 2^e
  where that fits), then the activation's clamp.  In float64 when every |acc m0| + |c| < 2^53, as
  floor(acc (m0 2^-e) + c 2^-e): m0 2^-e and c 2^-e are exact, and so are the product and the sum,
  integers below 2^53 times 2^-e, and the floor; otherwise in int64 (`arithmetic.multiplier_bits`
  keeps |acc m0| < 2^63).  An 8-bit layer of realistic fan-in takes the float64 path.
* Pooling is separable: the max (sum) over the window is the max (sum) over kw strided column views,
  then over kh strided row views.  Max: SAME pads hold qmin (excluded: no real input is below it),
  computed in the storage dtype.  Average: pads hold z_x, the sum S of (q - z_x) in int32 (int64 if
  it might not fit), then (8) with the per-position multipliers `QPool.m0`/`QPool.shift`.

BLAS runs the GEMMs on its own threads (OpenBLAS: `OPENBLAS_NUM_THREADS`); the rest is one thread.
"""

from __future__ import annotations

import numpy as np

from hailopipe.errors import PipelineError
from hailopipe.quantization import arithmetic
from hailopipe.quantization.qnetwork import QConv, QPool

BUDGET = 1 << 19  # bytes of the largest temporary per chunk of images: they stay in the core's cache
F32_EXACT = 1 << 24
F64_EXACT = 1 << 53
I32_LIMIT = 1 << 31
I64_LIMIT = 1 << 63


def _input(q, shape: tuple[int, int, int], bits: int, what: str) -> np.ndarray:
    """`q` as storage integers [N, *shape] of `bits` bits, or a PipelineError saying what is wrong."""
    q = np.asarray(q)
    dtype = arithmetic.storage_dtype(bits)
    if q.ndim != 4 or tuple(q.shape[1:]) != tuple(shape):
        raise PipelineError(f"{what}: input shape {list(q.shape)}, expected [N, {', '.join(map(str, shape))}]")
    if q.dtype != dtype:
        lo, hi = arithmetic.qrange(bits)
        if q.dtype.kind not in "iu" or (q.size and (q.min() < lo or q.max() > hi)):
            raise PipelineError(f"{what}: input {q.dtype} values are not {bits}-bit integers ({dtype})")
        q = q.astype(dtype)
    return q


def _padded(q: np.ndarray, pads, value: int, dtype) -> np.ndarray:
    """`q` [n, H, W, C] in `dtype` with `pads` ((top, bottom), (left, right)) rows and columns of `value`."""
    (pt, pb), (pl, pr) = pads
    if not (pt or pb or pl or pr):
        return q.astype(dtype, copy=False)
    n, h, w, c = q.shape
    out = np.full((n, h + pt + pb, w + pl + pr, c), value, dtype)
    out[:, pt:pt + h, pl:pl + w] = q
    return out


def _view(xp: np.ndarray, axis: int, start: int, count: int, stride: int) -> np.ndarray:
    """`count` positions from `start` every `stride` along `axis` (1: rows, 2: columns) of NHWC `xp`."""
    index = [slice(None)] * 4
    index[axis] = slice(start, start + (count - 1) * stride + 1, stride)
    return xp[tuple(index)]


def _chunks(n: int, per_image: int):
    """(start, stop) of the chunks of images whose largest temporary takes `per_image` bytes each."""
    step = max(1, BUDGET // max(1, per_image))
    return ((s, min(n, s + step)) for s in range(0, n, step))


class _Requantizer:
    """(5) for accumulators acc (the bias not yet added) with |acc| <= `bound`, per output channel."""

    def __init__(self, bias_eff: np.ndarray, m0: np.ndarray, shift: np.ndarray, zp: int, lo: int, hi: int,
                 bound: int):
        m0_i, e_i, zp = [int(v) for v in m0], [int(v) for v in shift], int(zp)
        if min(e_i, default=1) < 1 or min(m0_i, default=0) < 0:
            raise PipelineError("requantization needs m0 >= 0 and shift >= 1")
        c = [int(b) * m + (1 << (e - 1)) for b, m, e in zip(bias_eff, m0_i, e_i)]

        def reach(c):  # the largest |acc m0 + c|
            return max((bound * m + abs(k) for m, k in zip(m0_i, c)), default=0)

        if reach(c) >= I64_LIMIT:
            raise PipelineError(f"requantization: |acc m0| reaches 2^{reach(c).bit_length()}, beyond int64")
        folded = [k + (zp << e) for k, e in zip(c, e_i)]
        fold = reach(folded) < I64_LIMIT
        if fold:
            c = folded
        self.zp, self.lo, self.hi = (0 if fold else zp), lo, hi
        self.float = reach(c) < F64_EXACT
        if self.float:  # (acc m0 + c) 2^-e as acc (m0 2^-e) + c 2^-e: every term and sum exact in float64
            scale = np.ldexp(1.0, -np.array(e_i))
            self.m0, self.c = np.array(m0_i, np.float64) * scale, np.array(c, np.float64) * scale
        else:
            self.m0, self.c, self.e = np.array(m0_i, np.int64), np.array(c, np.int64), np.array(e_i, np.int64)

    def __call__(self, acc: np.ndarray, dtype: np.dtype) -> np.ndarray:
        if self.float:
            v = np.multiply(acc, self.m0, dtype=np.float64)
            v += self.c
            np.floor(v, out=v)
        else:
            v = np.multiply(acc, self.m0, dtype=np.int64, casting="unsafe")
            v += self.c
            v >>= self.e
        if self.zp:
            v += self.zp
        np.clip(v, self.lo, self.hi, out=v)
        return v.astype(dtype)


def _exact_dtype(bound: int) -> np.dtype:
    """The cheapest type in which a GEMM on integers whose partial sums stay within `bound` is exact."""
    if bound < F32_EXACT:
        return np.dtype(np.float32)
    return np.dtype(np.float64) if bound < F64_EXACT else np.dtype(np.int64)


class PreparedConv:
    """A QConv made ready to run (kernel matrix, bound, folded bias, requantization): call it on
    storage integers [N, H, W, cin] for [N, Ho, Wo, cout].  `run_conv` prepares and runs once."""

    def __init__(self, layer: QConv):
        self.layer = layer
        self.kh, self.kw = layer.kernel.shape[:2]
        self.out_shape, self.pads = layer.out_shape, layer.pads
        w = arithmetic.conv_matrix(layer.kernel, layer.depthwise).astype(np.int64)  # [K, C]
        bound = (1 << (layer.in_bits - 1)) * int(np.abs(w).sum(axis=0).max(initial=0))
        lo, hi = arithmetic.activation_bounds(layer.activation, layer.out_scale, layer.out_zp, layer.out_bits)
        self.requantize = _Requantizer(arithmetic.fold_zero_point(layer.bias, w, layer.in_zp), layer.m0, layer.shift,
                                       layer.out_zp, lo, hi, bound)
        self.out_dtype = arithmetic.storage_dtype(layer.out_bits)
        if layer.depthwise:  # elementwise products summed in integers
            self.dtype = np.dtype(np.int32) if bound < I32_LIMIT else np.dtype(np.int64)
            self.w = w.astype(self.dtype).reshape(self.kh, self.kw, -1)
        else:  # one GEMM
            self.dtype = _exact_dtype(bound)
            self.w = w.astype(self.dtype)

    def _tap(self, xp: np.ndarray, i: int, j: int) -> np.ndarray:
        """The input under kernel tap (i, j) at every output position: [n, Ho, Wo, cin], a strided view."""
        (ho, wo, _), (sh, sw), (dh, dw) = self.out_shape, self.layer.strides, self.layer.dilations
        return _view(_view(xp, 1, i * dh, ho, sh), 2, j * dw, wo, sw)

    def __call__(self, q: np.ndarray) -> np.ndarray:
        layer = self.layer
        x = _input(q, layer.in_shape, layer.in_bits, f"conv {layer.name}")
        (ho, wo, cout), (kh, kw), cin = self.out_shape, (self.kh, self.kw), layer.in_shape[2]
        out = np.empty((len(x), ho, wo, cout), self.out_dtype)
        per_image = ho * wo * max(cout * 8, 0 if layer.depthwise else kh * kw * cin * self.dtype.itemsize)
        for s, t in _chunks(len(x), per_image):
            xp = _padded(x[s:t], self.pads, layer.in_zp, self.dtype)
            if layer.depthwise:
                acc = np.zeros((t - s, ho, wo, cout), self.dtype)
                part = np.empty_like(acc)
                for i in range(kh):
                    for j in range(kw):
                        acc += np.multiply(self._tap(xp, i, j), self.w[i, j], out=part)
            else:
                patches = np.empty((t - s, ho, wo, kh, kw, cin), self.dtype)
                for i in range(kh):
                    for j in range(kw):
                        patches[:, :, :, i, j, :] = self._tap(xp, i, j)
                acc = patches.reshape(-1, kh * kw * cin) @ self.w
            out[s:t] = self.requantize(acc, self.out_dtype).reshape(t - s, ho, wo, cout)
        return out


def run_conv(layer: QConv, q: np.ndarray) -> np.ndarray:
    """Storage integers [N, H, W, cin] -> the layer's output integers [N, Ho, Wo, cout] (see the module docstring)."""
    return PreparedConv(layer)(q)


def _separable(xp: np.ndarray, size, strides, out_hw, op) -> np.ndarray:
    """op (np.maximum or np.add) over each window of the padded `xp`, in its dtype: columns, then rows."""
    (kh, kw), (sh, sw), (ho, wo) = size, strides, out_hw
    rows = _view(xp, 2, 0, wo, sw).copy()
    for j in range(1, kw):
        op(rows, _view(xp, 2, j, wo, sw), out=rows)
    acc = _view(rows, 1, 0, ho, sh).copy()
    for i in range(1, kh):
        op(acc, _view(rows, 1, i, ho, sh), out=acc)
    return acc


class PreparedPool:
    """A QPool made ready to run: call it on storage integers [N, H, W, C] for [N, Ho, Wo, C]."""

    def __init__(self, layer: QPool):
        self.layer, self.out_shape, self.pads = layer, layer.out_shape, layer.pads
        self.dtype = arithmetic.storage_dtype(layer.bits)
        if layer.kind == "avg":
            window = layer.size[0] * layer.size[1] * (1 << (layer.bits - 1))
            self.sum_dtype = np.dtype(np.int32) if window < I32_LIMIT else np.dtype(np.int64)
            self.m0 = np.asarray(layer.m0, np.int64)[:, :, None]
            self.shift = np.asarray(layer.shift, np.int64)[:, :, None]

    def __call__(self, q: np.ndarray) -> np.ndarray:
        layer = self.layer
        x = _input(q, layer.in_shape, layer.bits, f"pool {layer.name}")
        (ho, wo, c), (kh, kw) = self.out_shape, layer.size
        qmin, qmax = arithmetic.qrange(layer.bits)
        out = np.empty((len(x), ho, wo, c), self.dtype)
        hp = layer.in_shape[0] + sum(self.pads[0])
        if layer.kind == "max":
            for s, t in _chunks(len(x), hp * wo * c * self.dtype.itemsize * 2):
                xp = _padded(x[s:t], self.pads, qmin, self.dtype)
                out[s:t] = _separable(xp, layer.size, layer.strides, (ho, wo), np.maximum)
            return out
        for s, t in _chunks(len(x), hp * wo * c * 8):
            xp = _padded(x[s:t], self.pads, layer.in_zp, self.sum_dtype)
            total = _separable(xp, layer.size, layer.strides, (ho, wo), np.add).astype(np.int64)
            total -= kh * kw * layer.in_zp  # S of (8): the pads, z_x each, contribute 0
            out[s:t] = arithmetic.requantize(total, self.m0, self.shift, layer.out_zp, qmin, qmax)
        return out


def run_pool(layer: QPool, q: np.ndarray) -> np.ndarray:
    """Storage integers [N, H, W, C] -> the pooled integers [N, Ho, Wo, C] (see the module docstring)."""
    return PreparedPool(layer)(q)
