"""The engine's native kernel: `_qkernel.c`, built at install time or on first use, loaded with ctypes.

    fn, why = native.load_kernel()   # the `qk_run` function, or (None, why it is unavailable)

`pip install` builds it (setup.py) next to its source, as `_qkernel.<python's extension suffix>`,
recording the hash of the source it was built from; that library is used while the hash matches the
source beside it.  Otherwise (no compiler at install time, an edited source) the source is compiled
on first use with the system C compiler (`$CC`, default `cc`) and cached under `$HAILOPIPE_CACHE`
(default `~/.cache/hailopipe`), keyed by a hash of the source and flags (a new build deletes the
libraries of earlier versions; a process that has one loaded keeps its mapping); without a compiler
the engine runs its numpy path.
It runs only on x86-64 CPUs with AVX2 (`qk_paths` is 0 without), and its products also on AVX-512 VNNI and on
AMX where the CPU (and, for AMX, the OS) has them (`paths()`, chosen per call: the same bits on
each).  `QkLayer` mirrors the C struct `qk_layer`; `pack_layer` and `pack_amx` put a quantized layer
into the layouts the C header documents.  `engine.Engine` decides when to use it.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import platform
import subprocess
import sysconfig
import tempfile
import threading
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("_qkernel.c")
CFLAGS = ["-O3", "-std=gnu11", "-fPIC", "-shared", "-pthread"]
KINDS = {np.dtype(np.int8): 0, np.dtype(np.uint8): 1, np.dtype(np.int16): 2, np.dtype(np.uint16): 3}


class QkLayer(ctypes.Structure):
    """`qk_layer` of _qkernel.c."""
    _fields_ = [("K", ctypes.c_int32), ("C", ctypes.c_int32), ("Kp", ctypes.c_int32), ("Cp", ctypes.c_int32),
                ("w", ctypes.c_void_p), ("bias", ctypes.c_void_p), ("m0", ctypes.c_void_p), ("rnd", ctypes.c_void_p),
                ("shift", ctypes.c_void_p), ("add", ctypes.c_int32), ("lo", ctypes.c_int32), ("hi", ctypes.c_int32),
                ("in_sub", ctypes.c_int32), ("kind", ctypes.c_int32), ("H", ctypes.c_int32), ("W", ctypes.c_int32),
                ("Ci", ctypes.c_int32), ("ldi", ctypes.c_int32), ("OH", ctypes.c_int32), ("OW", ctypes.c_int32),
                ("kh", ctypes.c_int32), ("kw", ctypes.c_int32), ("sh", ctypes.c_int32), ("sw", ctypes.c_int32),
                ("dh", ctypes.c_int32), ("dw", ctypes.c_int32), ("pt", ctypes.c_int32), ("pl", ctypes.c_int32),
                ("pad", ctypes.c_int32), ("w4", ctypes.c_void_p), ("bias_u", ctypes.c_void_p), ("uoff", ctypes.c_int32),
                ("Ka", ctypes.c_int32)]


DENSE, CONV, MAXPOOL = 0, 1, 2  # qk_layer.kind
# qk_run's `path`, best first: the instruction sets the kernel's products can run on (same bits on each)
PATHS = {"amx": 2, "avx512_vnni": 1, "avx2": 0}


_lib_lock = threading.Lock()
_lib: list = []  # [ctypes function or None, reason, paths], filled once per process


def _build(cache: Path) -> Path:
    """Compile _qkernel.c into `cache` unless a library of the same source and flags is there."""
    cc = os.environ.get("CC", "cc")
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join([cc, *CFLAGS]).encode()).hexdigest()[:16]
    lib = cache / f"qkernel-{key}.so"
    if not lib.exists():
        cache.mkdir(mode=0o700, parents=True, exist_ok=True)
        if cache.stat().st_uid != os.getuid():
            raise PermissionError(f"{cache} belongs to another user")
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
        os.close(fd)
        try:
            subprocess.run([cc, *CFLAGS, str(SOURCE), "-o", tmp], check=True, capture_output=True, text=True,
                           timeout=300)
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
                log.info("engine: native kernel unavailable (%s); using the numpy kernel", _lib[1])
            else:
                log.debug("engine: native paths on this CPU: %s", ", ".join(_lib[2]))
        return _lib[0], _lib[1]


def paths() -> tuple[str, ...]:
    """The kernel's paths (PATHS) this CPU runs, best first; () where the kernel cannot run."""
    load_kernel()
    return _lib[2]


def installed_library() -> Path:
    """Where `pip install` puts the kernel it builds (setup.py)."""
    return SOURCE.with_name("_qkernel" + sysconfig.get_config_var("EXT_SUFFIX"))


def _installed():
    """The install-time build, loaded, if there is one built from the source beside it; else None."""
    path = installed_library()
    if not path.is_file():
        return None
    lib = ctypes.CDLL(str(path))
    lib.qk_source.restype = ctypes.c_char_p
    if lib.qk_source().decode() != hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]:
        log.debug("engine: %s was built from another version of %s; compiling this one", path.name, SOURCE.name)
        return None
    return lib


def _load(use_installed: bool = True):
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None, f"CPU is {platform.machine()}, not x86-64", ()
    cache = Path(os.environ.get("HAILOPIPE_CACHE") or Path.home() / ".cache" / "hailopipe")
    try:
        installed = _installed() if use_installed else None
        if installed is not None:
            lib = installed
        else:
            try:
                path = _build(cache)
            except OSError as exc:  # an unwritable cache (a missing compiler fails again below)
                log.debug("engine: cache %s unusable (%s); building in the temp dir", cache, exc)
                path = _build(Path(tempfile.gettempdir()) / f"hailopipe-{os.getuid()}")
            lib = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        return None, f"could not build {SOURCE.name}: {detail.strip().splitlines()[-1] if detail.strip() else exc}", ()
    bits = lib.qk_paths()
    if not bits:
        return None, "CPU lacks AVX2", ()
    fn = lib.qk_run
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_void_p,
                   ctypes.c_int, ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn, "", tuple(name for name, code in PATHS.items() if bits >> code & 1)


def address(a: np.ndarray) -> int:
    """The data pointer of a contiguous array; the buffer protocol is ~4x faster than `a.ctypes.data`."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(a))
    except (TypeError, ValueError):  # read-only or empty
        return a.ctypes.data


def round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def pack_layer(layer, Kp: int, bias_eff: np.ndarray, kernel: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """One layer in the kernel's layout (see _qkernel.c): padded, pair-interleaved, even/odd constants;
    `bias_eff` is the accumulator constant the engine computed for it; `kernel`, the int8 matrix
    [K, C] of the products (a conv layer's `arithmetic.conv_matrix`), defaults to layer.kernel."""
    kernel = layer.kernel if kernel is None else kernel
    K, C = kernel.shape
    Cp = round_up(C, 16)
    w = np.zeros((Kp, Cp), np.int8)
    w[:K, :C] = kernel
    order = np.arange(Cp).reshape(-1, 8)[:, [0, 2, 4, 6, 1, 3, 5, 7]].ravel()
    bias, m0, shift = np.zeros(Cp, np.int32), np.zeros(Cp, np.int64), np.ones(Cp, np.int64)
    bias[:C] = bias_eff
    m0[:C], shift[:C] = layer.m0, layer.shift
    return {"w": np.ascontiguousarray(w.reshape(Kp // 2, 2, Cp // 16, 16).transpose(2, 0, 3, 1)), "bias": bias,
            "m0": m0[order], "rnd": (np.int64(1) << (shift - 1))[order], "shift": shift[order]}


def pack_amx(layer_pack: dict, kernel: np.ndarray, Kp: int, uoff: int) -> dict[str, np.ndarray] | None:
    """The AMX path's operands of a layer with 8-bit inputs (see _qkernel.c, "AMX"), or None where its
    accumulators are not provably int32 for u = x + uoff in 0..255: the weights as tiles,
    w4[cb][t][k4][c][j] = w[64 t + 4 k4 + j][16 cb + c], and bias_u = b - uoff sum_k w[k, c]."""
    K, C = kernel.shape
    Cp, Ka = len(layer_pack["bias"]), round_up(Kp, 64)
    w = np.zeros((Ka, Cp), np.int64)
    w[:K, :C] = kernel
    bias_u = layer_pack["bias"].astype(np.int64) - uoff * w.sum(axis=0)
    if (np.abs(bias_u) + 255 * np.abs(w).sum(axis=0)).max(initial=0) >= 1 << 31:
        return None
    w4 = w.astype(np.int8).reshape(Ka // 64, 16, 4, Cp // 16, 16).transpose(3, 0, 1, 4, 2)
    return {"w4": np.ascontiguousarray(w4), "bias_u": bias_u.astype(np.int32), "Ka": Ka}
