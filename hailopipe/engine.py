"""The integer engine: runs a QNetwork on integer inputs, bit-exact.

    from hailopipe.engine import Engine
    e = Engine(qnet)                 # prepares the weights once
    q_out = e.run(q_in)              # storage integers [N, H, W, C] (int8/int16) -> [N, F]
    u_out = e.run_stream(u_in)       # unsigned stream values (uint8/uint16) -> unsigned stream values
    e.run(q_in, out=buf)             # either one can write into a preallocated [N, F] array

Per Dense layer (derivation in `quant`):  acc = q_x @ q_w + bias_eff;  q_y = requantize(acc), i.e.
(3) then the fixed-point (5), exactly.  Two implementations give the same bits:

* `avx2` (default where it can run): `_qkernel.c`, integer SIMD (int8 weights widened to int16,
  products summed in int32 by vpmaddwd, requantization in 64-bit lanes), the whole network per
  chunk of 32 rows so activations stay in cache, chunks shared among the machine's cores (threads
  started per call and joined before it returns).  8-bit inputs are taken relative to their zero
  point, so real zeros (dark pixels, ReLU floors) are integer zeros whose products it skips: exact
  for any input, and on MNIST digits about 1.5x as fast as on dense inputs.  Its header explains
  the layout.  It is compiled with the system C compiler (`$CC`, default `cc`) on first use and
  cached under `$HAILOPIPE_CACHE` (default `~/.cache/hailopipe`), keyed by a hash of the source and
  flags (a new build deletes the libraries of earlier versions).  It runs a network when the CPU
  has AVX2 and every layer has 8-bit weights and provably fits int32 accumulators (`avx2_exact`:
  |b[c]| + max|x| sum_k |q_w[k, c]| < 2^31 for every channel c; true for a8_w8 layers of any
  realistic width, and for an 8-bit-weight layer after a 16-bit one while its fan-in is small).
* `numpy`: BLAS GEMM in floating point on integer-valued operands, exact while every partial sum is
  an integer below the format's exact range; the bound max|q_x| * max_c sum_k |q_w[k, c]| picks
  float32 (< 2^24) or float64 (< 2^53) per layer, so the product is exact whatever order BLAS sums
  in; then (5) in int64.  Rows go in chunks of `CHUNK` so temporaries stay small.

`Engine(qnet, kernel=...)` picks one: "auto" (the default, or `$HAILOPIPE_KERNEL`), "avx2" (an error
if it cannot run) or "numpy".  `Engine.kernel` tells which one runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import math
import os
import platform
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np

from hailopipe import quant
from hailopipe.errors import PipelineError
from hailopipe.qnetwork import QDense, QNetwork

log = logging.getLogger(__name__)

F32_EXACT = 1 << 24
F64_EXACT = 1 << 53
I32_LIMIT = 1 << 31
CHUNK = 2048  # rows per chunk of the numpy path
KERNELS = ("auto", "avx2", "numpy")
_SOURCE = Path(__file__).with_name("_qkernel.c")
_CFLAGS = ["-O3", "-std=gnu11", "-fPIC", "-shared", "-pthread"]
_KINDS = {np.dtype(np.int8): 0, np.dtype(np.uint8): 1, np.dtype(np.int16): 2, np.dtype(np.uint16): 3}


class _QkLayer(ctypes.Structure):
    """`qk_layer` of _qkernel.c."""
    _fields_ = [("K", ctypes.c_int32), ("C", ctypes.c_int32), ("Kp", ctypes.c_int32), ("Cp", ctypes.c_int32),
                ("w", ctypes.c_void_p), ("bias", ctypes.c_void_p), ("m0", ctypes.c_void_p), ("rnd", ctypes.c_void_p),
                ("shift", ctypes.c_void_p), ("add", ctypes.c_int32), ("lo", ctypes.c_int32), ("hi", ctypes.c_int32),
                ("in_sub", ctypes.c_int32)]


_lib_lock = threading.Lock()
_lib: list = []  # [ctypes function or None, reason], filled once per process


def _build(cache: Path) -> Path:
    """Compile _qkernel.c into `cache` unless a library of the same source and flags is there."""
    cc = os.environ.get("CC", "cc")
    key = hashlib.sha256(_SOURCE.read_bytes() + " ".join([cc, *_CFLAGS]).encode()).hexdigest()[:16]
    lib = cache / f"qkernel-{key}.so"
    if not lib.exists():
        cache.mkdir(mode=0o700, parents=True, exist_ok=True)
        if cache.stat().st_uid != os.getuid():
            raise PermissionError(f"{cache} belongs to another user")
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
        os.close(fd)
        try:
            subprocess.run([cc, *_CFLAGS, str(_SOURCE), "-o", tmp], check=True, capture_output=True, text=True, timeout=300)
            os.replace(tmp, lib)  # atomic: concurrent builders each rename a complete file
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        for old in cache.glob("qkernel-*.so"):  # earlier versions' builds; a process that has one
            if old != lib:                      # loaded keeps its mapping, a new one rebuilds
                with contextlib.suppress(OSError):
                    old.unlink()
    return lib


def load_kernel():
    """(the compiled `qk_run` function, "") or (None, why it is unavailable); built once per process."""
    with _lib_lock:
        if not _lib:
            _lib.extend(_load())
            if _lib[0] is None:
                log.info("engine: AVX2 kernel unavailable (%s); using the numpy kernel", _lib[1])
        return _lib[0], _lib[1]


def _load():
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None, f"CPU is {platform.machine()}, not x86-64"
    cache = Path(os.environ.get("HAILOPIPE_CACHE") or Path.home() / ".cache" / "hailopipe")
    try:
        try:
            path = _build(cache)
        except OSError as exc:  # an unwritable cache (a missing compiler fails again below)
            log.debug("engine: cache %s unusable (%s); building in the temp dir", cache, exc)
            path = _build(Path(tempfile.gettempdir()) / f"hailopipe-{os.getuid()}")
        lib = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        return None, f"could not build {_SOURCE.name}: {detail.strip().splitlines()[-1] if detail.strip() else exc}"
    if not lib.qk_cpu_ok():
        return None, "CPU lacks AVX2"
    fn = lib.qk_run
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_void_p,
                   ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn, ""


def _address(a: np.ndarray) -> int:
    """The data pointer of a contiguous array; the buffer protocol is ~4x faster than `a.ctypes.data`."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(a))
    except (TypeError, ValueError):  # read-only or empty
        return a.ctypes.data


def _usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _clamp_range(l: QDense) -> tuple[int, int]:
    qmin, qmax = quant.qrange(l.out_bits)
    return (max(qmin, l.out_zp) if l.activation == "relu" else qmin), qmax


def _abs_colsum(l: QDense) -> np.ndarray:
    return np.abs(l.kernel.astype(np.int64)).sum(axis=0)


def _offset(l: QDense) -> int:
    """What the AVX2 kernel subtracts from layer l's input integers before the products: the zero
    point for 8-bit inputs (so that a real 0, a dark pixel or a dead ReLU, is an integer 0 whose
    products it skips), 0 for 16-bit ones (q - z_x might not fit int16)."""
    return l.in_zp if l.in_bits <= 8 else 0


def _bias(l: QDense) -> np.ndarray:
    """The constant of acc = sum (q_x - offset) q_w + bias: (3) with the offset's share left in."""
    return quant.fold_zero_point(l.bias, l.kernel, l.in_zp - _offset(l))


def avx2_exact(l: QDense) -> bool:
    """Whether the AVX2 kernel computes layer `l` exactly: 8-bit weights, every partial sum of
    bias + sum (q_x - offset) q_w below 2^31 in magnitude for any input, and m0, e within its
    64-bit requantization."""
    qmin, qmax = quant.qrange(l.in_bits)
    x_max = max(qmax - _offset(l), _offset(l) - qmin)
    bound = x_max * _abs_colsum(l) + np.abs(_bias(l))
    return (bool(bound.max(initial=0) < I32_LIMIT) and l.out_bits <= 16 and l.kernel.dtype == np.int8
            and int(l.m0.min(initial=0)) >= 0 and int(l.m0.max(initial=0)) < I32_LIMIT
            and 1 <= int(l.shift.min(initial=1)) and int(l.shift.max(initial=1)) <= 62)


def _pack(l: QDense, Kp: int) -> dict[str, np.ndarray]:
    """One layer in the kernel's layout (see _qkernel.c): padded, pair-interleaved, even/odd constants."""
    K, C = l.kernel.shape
    Cp = _round_up(C, 16)
    w = np.zeros((Kp, Cp), np.int8)
    w[:K, :C] = l.kernel
    order = np.arange(Cp).reshape(-1, 8)[:, [0, 2, 4, 6, 1, 3, 5, 7]].ravel()
    bias, m0, shift = np.zeros(Cp, np.int32), np.zeros(Cp, np.int64), np.ones(Cp, np.int64)
    bias[:C] = _bias(l)
    m0[:C], shift[:C] = l.m0, l.shift
    return {"w": np.ascontiguousarray(w.reshape(Kp // 2, 2, Cp // 16, 16).transpose(2, 0, 3, 1)), "bias": bias,
            "m0": m0[order], "rnd": (np.int64(1) << (shift - 1))[order], "shift": shift[order]}


class Engine:
    """Prepared integer network; see the module docstring."""

    def __init__(self, qnet: QNetwork, kernel: str | None = None, threads: int | None = None):
        kernel = kernel or os.environ.get("HAILOPIPE_KERNEL") or "auto"
        if kernel not in KERNELS:
            raise PipelineError(f"engine kernel {kernel!r} is not one of {', '.join(KERNELS)}")
        self.qnet = qnet
        self.in_features = int(qnet.layers[0].kernel.shape[0])
        self.out_features = int(qnet.layers[-1].kernel.shape[1])
        self.output_dtype = quant.storage_dtype(qnet.output.out_bits)
        self.threads = max(1, threads or _usable_cpus())
        self.kernel, why = "numpy", ""
        if kernel != "numpy":
            fn, why = load_kernel()
            wide = [l.name for l in qnet.layers if not avx2_exact(l)]
            if fn is not None and not wide:
                self._prepare_avx2(fn)
            elif kernel == "avx2":
                why = why or f"layers {', '.join(wide)} have 16-bit weights or may exceed int32 accumulators"
                raise PipelineError(f"engine: the avx2 kernel cannot run {qnet.name}: {why}")
        if self.kernel == "numpy":
            self._prepare_numpy()

    @property
    def input_dtype(self) -> np.dtype:
        return quant.storage_dtype(self.qnet.input_bits)

    def _prepare_avx2(self, fn) -> None:
        self.kernel, self._fn = "avx2", fn
        self._arrays, self._structs = [], (_QkLayer * len(self.qnet.layers))()
        Kp = _round_up(self.in_features, 16)
        layers = self.qnet.layers
        for i, l in enumerate(layers):
            p = _pack(l, Kp)
            self._arrays.append(p)  # keeps the buffers the structs point into alive
            lo, hi = _clamp_range(l)
            sub = _offset(layers[i + 1]) if i + 1 < len(layers) else 0  # the stored output is q_y - sub
            K, C = l.kernel.shape
            pointers = (p[k].ctypes.data for k in ("w", "bias", "m0", "rnd", "shift"))
            self._structs[i] = _QkLayer(K, C, Kp, len(p["bias"]), *pointers, l.out_zp - sub, lo - sub, hi - sub,
                                        _offset(l))
            Kp = len(p["bias"])
        self._structs_ptr = ctypes.addressof(self._structs)

    def _prepare_numpy(self) -> None:
        self._layers = []
        for l in self.qnet.layers:
            bound = (1 << (l.in_bits - 1)) * int(_abs_colsum(l).max(initial=0))
            if bound >= F64_EXACT:
                raise PipelineError(f"layer {l.name}: accumulator bound 2^{bound.bit_length()} is beyond exact float64")
            ftype = np.float32 if bound < F32_EXACT else np.float64
            self._layers.append((l.kernel.astype(ftype), quant.fold_zero_point(l.bias, l.kernel, l.in_zp), l, *_clamp_range(l)))

    def _rows(self, a, dtype: np.dtype, what: str) -> np.ndarray:
        """`a` as contiguous rows [N, K] of `dtype`, or a PipelineError saying what is wrong."""
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
            raise PipelineError(f"engine {what}: shape {list(a.shape)}, expected [N, ...] with {self.in_features} values per row")
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
        return self._run(x, self._out(out, len(x), self.output_dtype))

    def run_stream(self, u, out: np.ndarray | None = None) -> np.ndarray:
        """Unsigned stream values in (uint8/uint16, u = q - qmin) -> unsigned stream values out."""
        x = self._rows(u, np.dtype(np.uint8 if self.qnet.input_bits <= 8 else np.uint16), "input stream")
        return self._run(x, self._out(out, len(x), np.dtype(np.uint8 if self.qnet.output.out_bits <= 8 else np.uint16)))

    def _run(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        if self.kernel == "avx2":
            if self._fn(self._structs_ptr, len(self._structs), _address(x), _KINDS[x.dtype], len(x),
                        _address(out), _KINDS[out.dtype], self.threads):
                raise MemoryError("engine: could not allocate the kernel's row buffers")
            return out
        signed_in, signed_out = x.dtype.kind == "i", out.dtype.kind == "i"
        for start in range(0, len(x), CHUNK):
            h = x[start:start + CHUNK]
            h = h if signed_in else quant.from_unsigned(h, self.qnet.input_bits)
            for w, bias, l, lo, hi in self._layers:
                acc = h.astype(w.dtype) @ w
                h = quant.requantize(acc.astype(np.int64) + bias, l.m0, l.shift, l.out_zp, lo, hi)
            out[start:start + CHUNK] = h if signed_out else quant.to_unsigned(h, self.qnet.output.out_bits)
        return out
