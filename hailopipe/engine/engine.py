"""The integer engine: runs a QNetwork on integer inputs, bit-exact.

    from hailopipe.engine import Engine, run_layer
    e = Engine(qnet)                 # prepares the weights once
    q_out = e.run(q_in)              # storage integers [N, H, W, C] (int8/int16) -> [N, F]
    u_out = e.run_stream(u_in)       # unsigned stream values (uint8/uint16) -> unsigned stream values
    e.run(q_in, out=buf)             # either one can write into a preallocated [N, F] array
    q_y = run_layer(qnet.layers[0], q_in)   # one layer alone, as the optimizer and noise analysis step
    q_in = quantize_input(qnet, raw)        # raw float input -> the first Dense layer's input integers

Per Dense layer (derivation in `arithmetic`):  acc = q_x @ q_w + bias_eff;  q_y = requantize(acc), i.e.
(3) then the fixed-point (5), exactly.  Two implementations give the same bits:

* native (default where it can run): `_qkernel.c`, integer SIMD (int8 weights widened to int16,
  products summed in int32 by vpmaddwd, or vpdpwssd / AMX tiles on its other paths below,
  requantization in 64-bit lanes), the whole network per
  chunk of 32 rows so activations stay in cache, chunks shared among the machine's cores (threads
  started per call and joined before it returns).  8-bit inputs are taken relative to their zero
  point, so real zeros (dark pixels, ReLU floors) are integer zeros whose products it skips: exact
  for any input, and on MNIST digits about 1.5x as fast as on dense inputs.  Its header explains
  the layout.  `pip install` builds it, or it is compiled on first use (`native`: where, how, the
  cache).  It runs a network when the CPU has AVX2 and every layer has 8-bit weights and provably
  fits int32 accumulators (`avx2_exact`:
  |b[c]| + max|x| sum_k |q_w[k, c]| < 2^31 for every channel c; true for a8_w8 layers of any
  realistic width, and for an 8-bit-weight layer after a 16-bit one while its fan-in is small).
  Convolutional networks too: a conv layer is its patch rows (im2col in the kernel, the pads
  stored as the real 0) through the same products, a max pool compares stored integers, and the
  flatten feeds the dense layers after them; depthwise convs and average pools keep the numpy path.
* `numpy`: BLAS GEMM in floating point on integer-valued operands, exact while every partial sum is
  an integer below the format's exact range; the bound max|q_x| * max_c sum_k |q_w[k, c]| picks
  float32 (< 2^24) or float64 (< 2^53) per layer, so the product is exact whatever order BLAS sums
  in; then (5) in int64.  Rows go in chunks of `CHUNK` so temporaries stay small.

A network whose model script normalizes its input (`qnet.normalization`: the input stream carries
raw values with identity quantization) first maps each input integer through that layer: a table
of the layer's exact output for every possible input value, per channel (`normalization_table`,
computed by `run_layer` itself), skipped when it is the identity, as it is for the default
normalization([0], [255]) (raw pixels, scale 1, become the same integers at scale 1/255).

The native kernel has three paths for its products, the same bits on each: `amx` (AMX tiles, u8 x s8
-> int32, for layers with 8-bit inputs; the others as on `avx512_vnni`) where the CPU and the OS
allow AMX, `avx512_vnni` (AVX-512's vpdpwssd, 16 channels and both products of an input pair per
instruction) where the CPU has AVX-512 BW and VNNI, else `avx2`.  `Engine(qnet, kernel=...)` picks
one: "auto" (the default: the best native path this CPU runs, else numpy), "amx", "avx512_vnni" or
"avx2" (an error if it cannot run) or "numpy".  `$HAILOPIPE_KERNEL` sets the default: a path named
there runs every network the native kernel can run (the others take the numpy path, as under
"auto"), and is an error only where the CPU lacks it.  `Engine.kernel` tells which one runs; the
first engine on a native path logs it at debug level (logger `hailopipe.engine.engine`).
"""

from __future__ import annotations

import ctypes
import logging
import math
import os

import numpy as np

from hailopipe.engine import native
from hailopipe.engine.conv import PreparedConv, PreparedPool, run_conv, run_pool
from hailopipe.errors import PipelineError
from hailopipe.quantization import arithmetic
from hailopipe.quantization.qnetwork import QConv, QDense, QNetwork, QPool

log = logging.getLogger(__name__)

F32_EXACT = 1 << 24
F64_EXACT = 1 << 53
I32_LIMIT = 1 << 31
CHUNK = 2048  # rows per chunk of the numpy path
KERNELS = ("auto", *native.PATHS, "numpy")
_logged: set = set()  # the native paths whose choice this process has logged


def _usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _clamp_range(layer: QDense) -> tuple[int, int]:
    return arithmetic.activation_bounds(layer.activation, layer.out_scale, layer.out_zp, layer.out_bits)


def _matrix(layer) -> np.ndarray:
    """The weights of a Dense or conv layer as the matrix [K, C] of its products."""
    return arithmetic.conv_matrix(layer.kernel, layer.depthwise) if isinstance(layer, QConv) else layer.kernel


def _abs_colsum(layer) -> np.ndarray:
    return np.abs(_matrix(layer).astype(np.int64)).sum(axis=0)


def _offset(layer) -> int:
    """What the native kernel subtracts from layer l's input integers before the products: the zero
    point for 8-bit inputs (so that a real 0, a dark pixel or a dead ReLU, is an integer 0 whose
    products it skips), 0 for 16-bit ones (q - z_x might not fit int16)."""
    bits = layer.bits if isinstance(layer, QPool) else layer.in_bits
    return layer.in_zp if bits <= 8 else 0


def _bias(layer) -> np.ndarray:
    """The constant of acc = sum (q_x - offset) q_w + bias: (3) with the offset's share left in."""
    return arithmetic.fold_zero_point(layer.bias, _matrix(layer), layer.in_zp - _offset(layer))


def avx2_exact(layer) -> bool:
    """Whether the native kernel computes layer `l` exactly: a Dense or (not depthwise) conv layer with
    8-bit weights, every partial sum of bias + sum (q_x - offset) q_w below 2^31 in magnitude for
    any input, and m0, e within its 64-bit requantization; or a max pool."""
    if isinstance(layer, QPool):
        return layer.kind == "max"
    if isinstance(layer, QConv) and layer.depthwise:
        return False
    qmin, qmax = arithmetic.qrange(layer.in_bits)
    x_max = max(qmax - _offset(layer), _offset(layer) - qmin)
    bound = x_max * _abs_colsum(layer) + np.abs(_bias(layer))
    return (bool(bound.max(initial=0) < I32_LIMIT) and layer.out_bits <= 16 and layer.kernel.dtype == np.int8
            and int(layer.m0.min(initial=0)) >= 0 and int(layer.m0.max(initial=0)) < I32_LIMIT
            and 1 <= int(layer.shift.min(initial=1)) and int(layer.shift.max(initial=1)) <= 62)


class Engine:
    """Prepared integer network; see the module docstring."""

    def __init__(self, qnet: QNetwork, kernel: str | None = None, threads: int | None = None):
        strict = kernel is not None  # an argument insists; $HAILOPIPE_KERNEL picks the path where it can run
        kernel = kernel or os.environ.get("HAILOPIPE_KERNEL") or "auto"
        if kernel not in KERNELS:
            raise PipelineError(f"engine kernel {kernel!r} is not one of {', '.join(KERNELS)}")
        self.qnet = qnet
        self._table = normalization_table(qnet.normalization) if qnet.normalization is not None else None
        self.in_features = int(np.prod(qnet.input_shape)) if _spatial(qnet) else int(qnet.layers[0].kernel.shape[0])
        last = qnet.layers[-1]
        self.out_features = int(last.kernel.shape[1]) if isinstance(last, QDense) else int(np.prod(last.out_shape))
        self.output_dtype = arithmetic.storage_dtype(_out_bits(last))
        self._input_dtype = arithmetic.storage_dtype(qnet.input_bits)
        self._steps = None  # a convolutional network on the numpy path: its prepared conv and pool layers
        self.threads = max(1, threads or _usable_cpus())
        self.kernel = "numpy"
        if kernel != "numpy":
            fn, why = native.load_kernel()
            wide = [layer.name for layer in qnet.layers if not avx2_exact(layer)]
            if fn is not None and kernel in native.PATHS and kernel not in native.paths():
                raise PipelineError(f"engine: the {kernel} kernel cannot run on this CPU, which runs "
                                    f"{', '.join(native.paths())}")
            if fn is not None and not wide:
                self._prepare_native(fn, kernel if kernel in native.PATHS else native.paths()[0])
                return
            if kernel in native.PATHS and strict:
                why = why or (f"layers {', '.join(wide)} are depthwise convs or average pools, have 16-bit weights "
                              "or may exceed int32 accumulators")
                raise PipelineError(f"engine: the {kernel} kernel cannot run {qnet.name}: {why}")
        if _spatial(qnet):
            self._prepare_spatial(kernel, threads)
        else:
            self._prepare_numpy()

    @property
    def input_dtype(self) -> np.dtype:
        return self._input_dtype

    def _prepare_spatial(self, kernel: str, threads) -> None:
        """A convolutional network: its conv/pool layers prepared once (`conv`), the Dense layers
        after the flatten run by an Engine of their own (the native kernel where it can)."""
        n = next((i for i, layer in enumerate(self.qnet.layers) if isinstance(layer, QDense)), len(self.qnet.layers))
        if any(not isinstance(layer, QDense) for layer in self.qnet.layers[n:]):
            raise PipelineError(f"{self.qnet.name}: a conv or pool layer after a dense layer is not supported")
        self._steps = [PreparedConv(layer) if isinstance(layer, QConv) else PreparedPool(layer)
                       for layer in self.qnet.layers[:n]]
        self._spatial_shape = tuple(self.qnet.input_shape)
        self._tail = None
        if n < len(self.qnet.layers):
            first = self.qnet.layers[n]
            tail = QNetwork(self.qnet.name, (1, 1, int(first.kernel.shape[0])), first.in_scale, first.in_zp,
                            first.in_bits, (0.0, 0.0), list(self.qnet.layers[n:]))
            self._tail = Engine(tail, kernel=kernel, threads=threads)
        self.kernel = "numpy" if self._tail is None else f"numpy+{self._tail.kernel}"

    def _run_spatial(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Signed rows [N, H*W*C] -> the network's output rows, written into `out`."""
        first_bits = self.qnet.layers[0].in_bits
        for start in range(0, len(x), CHUNK):
            h = x[start:start + CHUNK]
            h = h if h.dtype.kind == "i" else arithmetic.from_unsigned(h, first_bits)
            h = h.reshape(len(h), *self._spatial_shape)
            for step in self._steps:
                h = step(h)
            h = h.reshape(len(h), -1)
            if self._tail is not None:
                h = self._tail.run(h)
            out[start:start + CHUNK] = h if out.dtype.kind == "i" else arithmetic.to_unsigned(
                h, _out_bits(self.qnet.layers[-1]))
        return out

    def _prepare_native(self, fn, path: str) -> None:
        """The layers as `qk_layer` structs (_qkernel.c): Dense, conv and max pool layers, each
        storing its output as q - the offset of the layer after it (q itself for the last); their
        products on `path` (native.PATHS)."""
        self.kernel, self._fn, self._path = path, fn, native.PATHS[path]
        if path not in _logged:
            _logged.add(path)
            log.debug("engine: native kernel, %s path (this CPU runs %s)", path, ", ".join(native.paths()))
        self._arrays, self._structs = [], (native.QkLayer * len(self.qnet.layers))()
        layers = self.qnet.layers
        Kp, ld = native.round_up(self.in_features, 16), int(self.qnet.input_shape[-1])
        stored = _stored_offsets(layers)
        for i, layer in enumerate(layers):
            sub = stored[i]  # the stored output is q_y - sub
            s = native.QkLayer()
            if not isinstance(layer, QDense):
                h, w, c = layer.in_shape
                (oh, ow, _), (pt, _), (pl, _) = layer.out_shape, *layer.pads
                s.kind, s.H, s.W, s.Ci, s.ldi, s.OH, s.OW, s.pt, s.pl = (
                    native.CONV if isinstance(layer, QConv) else native.MAXPOOL), h, w, c, ld, oh, ow, pt, pl
                s.sh, s.sw = layer.strides
            if isinstance(layer, QPool):
                s.kh, s.kw = layer.size
                s.dh = s.dw = 1
                s.pad = arithmetic.qrange(layer.bits)[0] - sub
                self._structs[i] = s
                continue
            matrix = _matrix(layer)
            K, C = matrix.shape
            if isinstance(layer, QConv):
                s.kh, s.kw = layer.kernel.shape[:2]
                s.dh, s.dw = layer.dilations
                s.pad = layer.in_zp - _offset(layer)
                Kp = native.round_up(K, 16)
            elif i > 0 and not isinstance(layers[i - 1], QDense):  # the flatten: one row per image
                Kp = native.round_up(K, 16)
            p = native.pack_layer(layer, Kp, _bias(layer), matrix)
            if path == "amx" and layer.in_bits <= 8 and isinstance(layer, QDense):  # a CNN's small convs: faster
                # on the vector tiles (bench/engine_speed.py: 0.087 against 0.104 M img/s with them on AMX)
                uoff = _offset(layer) - arithmetic.qrange(layer.in_bits)[0]  # u = x + uoff = q - qmin
                amx = native.pack_amx(p, matrix, Kp, uoff)
                if amx is not None:
                    p.update(amx)
                    s.w4, s.bias_u, s.uoff, s.Ka = p["w4"].ctypes.data, p["bias_u"].ctypes.data, uoff, amx["Ka"]
            self._arrays.append(p)  # keeps the buffers the structs point into alive
            lo, hi = _clamp_range(layer)
            s.K, s.C, s.Kp, s.Cp = K, C, Kp, len(p["bias"])
            s.w, s.bias, s.m0, s.rnd, s.shift = (p[k].ctypes.data for k in ("w", "bias", "m0", "rnd", "shift"))
            s.add, s.lo, s.hi, s.in_sub = layer.out_zp - sub, lo - sub, hi - sub, _offset(layer)
            self._structs[i] = s
            Kp = ld = s.Cp
        if isinstance(layers[0], QPool):
            self._structs[0].in_sub = stored[0]  # a pool's input is stored as its output
        self._structs_ptr = ctypes.addressof(self._structs)

    def _prepare_numpy(self) -> None:
        self._layers = []
        for layer in self.qnet.layers:
            bound = -arithmetic.qrange(layer.in_bits)[0] * int(_abs_colsum(layer).max(initial=0))
            if bound >= F64_EXACT:
                raise PipelineError(f"layer {layer.name}: accumulator bound 2^{bound.bit_length()} is beyond "
                                    "exact float64")
            ftype = np.float32 if bound < F32_EXACT else np.float64
            bias_eff = arithmetic.fold_zero_point(layer.bias, layer.kernel, layer.in_zp)
            self._layers.append((layer.kernel.astype(ftype), bias_eff, layer, *_clamp_range(layer)))

    def _rows(self, a, dtype: np.dtype, what: str) -> np.ndarray:
        """`a` as contiguous rows [N, K] of `dtype`, or a PipelineError saying what is wrong."""
        if (type(a) is np.ndarray and a.dtype == dtype and a.ndim == 2 and a.shape[1] == self.in_features
                and a.flags.c_contiguous):
            return a  # already rows as the kernels take them (the common call, checked in a third of the time)
        a = np.asarray(a)
        if a.dtype != dtype:
            if a.dtype.kind not in "iu":
                raise PipelineError(f"engine {what}: dtype {a.dtype}, expected {dtype}")
            info = np.iinfo(dtype)
            if a.size and (a.min() < info.min or a.max() > info.max):
                raise PipelineError(f"engine {what}: values outside {dtype} range {info.min}..{info.max}")
            a = a.astype(dtype)
        k = math.prod(a.shape[1:]) if a.ndim >= 1 else -1
        if k != self.in_features:
            raise PipelineError(f"engine {what}: shape {list(a.shape)}, expected [N, ...] with {self.in_features} "
                                "values per row")
        return np.ascontiguousarray(a.reshape(len(a), k))

    def _out(self, out, n: int, dtype: np.dtype) -> np.ndarray:
        if out is None:
            return np.empty((n, self.out_features), dtype)
        if (not isinstance(out, np.ndarray) or out.shape != (n, self.out_features) or out.dtype != dtype
                or not out.flags.c_contiguous or not out.flags.writeable):
            raise PipelineError(f"engine out: need a writeable C-contiguous {dtype} array of shape "
                                f"{[n, self.out_features]}, got {getattr(out, 'dtype', type(out).__name__)} "
                                f"{list(getattr(out, 'shape', []))}")
        return out

    def run(self, q, out: np.ndarray | None = None) -> np.ndarray:
        """Storage integers in (int8/int16 [N, ...]) -> storage integers out ([N, F])."""
        x = self._rows(q, self.input_dtype, "input")
        if self._table is not None:
            x = _lookup(self.qnet.normalization, self._table, x)
        return self._run(x, self._out(out, len(x), self.output_dtype))

    def run_stream(self, u, out: np.ndarray | None = None) -> np.ndarray:
        """Unsigned stream values in (uint8/uint16, u = q - qmin) -> unsigned stream values out."""
        x = self._rows(u, arithmetic.stream_dtype(self.qnet.input_bits), "input stream")
        if self._table is not None:
            x = _lookup(self.qnet.normalization, self._table, arithmetic.from_unsigned(x, self.qnet.input_bits))
        return self._run(x, self._out(out, len(x), arithmetic.stream_dtype(_out_bits(self.qnet.layers[-1]))))

    def _run(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        if self._steps is not None:
            return self._run_spatial(x, out)
        if self.kernel in native.PATHS:
            if self._fn(self._structs_ptr, len(self._structs), native.address(x), native.KINDS[x.dtype], len(x),
                        native.address(out), native.KINDS[out.dtype], self.threads, self._path):
                raise MemoryError("engine: could not allocate the kernel's row buffers")
            return out
        signed_in, signed_out = x.dtype.kind == "i", out.dtype.kind == "i"
        for start in range(0, len(x), CHUNK):
            h = x[start:start + CHUNK]
            h = h if signed_in else arithmetic.from_unsigned(h, self.qnet.layers[0].in_bits)
            for w, bias, layer, lo, hi in self._layers:
                acc = h.astype(w.dtype) @ w
                h = arithmetic.requantize(acc.astype(np.int64) + bias, layer.m0, layer.shift, layer.out_zp, lo, hi)
            out[start:start + CHUNK] = h if signed_out else arithmetic.to_unsigned(h, self.qnet.output.out_bits)
        return out


def _stored_offsets(layers) -> list[int]:
    """What each layer's output is stored relative to in the native kernel: the offset of the next
    layer with weights (a max pool in between stores as its input is stored), 0 after the last."""
    out, after = [0] * len(layers), 0
    for i in range(len(layers) - 1, -1, -1):
        out[i] = after
        if not isinstance(layers[i], QPool):
            after = _offset(layers[i])
    return out


def _spatial(qnet: QNetwork) -> bool:
    return any(isinstance(layer, (QConv, QPool)) for layer in qnet.layers)


def _out_bits(layer) -> int:
    return layer.bits if isinstance(layer, QPool) else layer.out_bits


def run_layer(layer, q_in: np.ndarray) -> np.ndarray:
    """The engine's integer output of one quantized layer for its integer inputs [N, ...] (storage
    dtype): [N, C] for a Dense layer, NHWC for a conv or pool layer."""
    if isinstance(layer, QConv):
        return run_conv(layer, np.asarray(q_in).reshape(len(q_in), *layer.in_shape))
    if isinstance(layer, QPool):
        return run_pool(layer, np.asarray(q_in).reshape(len(q_in), *layer.in_shape))
    single = QNetwork(layer.name, (1, 1, int(layer.kernel.shape[0])), layer.in_scale, layer.in_zp, layer.in_bits,
                      (0.0, 0.0), [layer])
    return Engine(single).run(q_in)


def normalization_table(layer: QDense) -> np.ndarray | None:
    """The normalization layer's integer output [V, C] for each of the V possible input values (row
    v - qmin) and channel, from `run_layer`; None when it maps every value to itself."""
    qmin, qmax = arithmetic.qrange(layer.in_bits)
    values = np.arange(qmin, qmax + 1, dtype=np.int64)
    table = run_layer(layer, values[:, None].astype(arithmetic.storage_dtype(layer.in_bits))).astype(np.int64)
    if layer.out_bits == layer.in_bits and bool((table == values[:, None]).all()):
        return None
    return table


def _lookup(layer: QDense, table: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Rows [N, H*W*C] of input integers through the table, channel by channel (C fastest, NHWC)."""
    channels = int(layer.kernel.shape[1])
    qmin, _ = arithmetic.qrange(layer.in_bits)
    idx = q.reshape(len(q), -1, channels).astype(np.int64) - qmin
    out = table[idx, np.arange(channels)]
    return np.ascontiguousarray(out.reshape(len(q), -1).astype(arithmetic.storage_dtype(layer.out_bits)))


def quantize_input(qnet: QNetwork, raw: np.ndarray) -> np.ndarray:
    """Raw float input [N, H, W, C] (what the input stream's FLOAT32 format takes) -> the integers
    the first Dense layer receives: quantized with the stream's qparams, clipped to its limvals,
    then through the normalization layer if there is one."""
    q = arithmetic.quantize(np.asarray(raw).reshape(len(raw), -1), qnet.input_scale, qnet.input_zp, qnet.input_bits,
                            limvals=qnet.input_limvals)
    if qnet.normalization is None:
        return q
    table = normalization_table(qnet.normalization)
    return q if table is None else _lookup(qnet.normalization, table, q)
