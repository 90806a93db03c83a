"""The fuzzing engine behind tests/test_fuzz*.py: run a reader on mutated files, one case at a time.

A `Format` names a reader and a generator of cases (a label and a payload: bytes for a file, a
callable that makes something else at the path, e.g. a FIFO, or an in-memory object).  `fuzz(fmt,
dir)` writes each case to a file under `dir`, runs the reader on it and classifies the outcome:

- `refused`: PipelineError (or a subclass) with a one-line message naming the file;
- `loaded`: the reader accepted it (a mutation that only changed a weight still gives a valid file);
- anything else is a failure: another exception, longer than TIME_LIMIT (SIGALRM), more than
  MEMORY_FLOOR + MEMORY_PER_BYTE x input size of new address space (RLIMIT_AS, set per case, so
  numpy's and C allocations count), or any file created or changed under `dir`.

The mutators: `mutate_bytes` (truncation, bit flips, insertions, deletions, overwrites, boundary
integers, splices, oversize, empty, another format's bytes), `mutate_json` (delete, replace,
rename, duplicate, borrow another node's value), `edit_arrays` (an .npz's arrays: dtype, shape,
values, pickled objects, hand-made .npy headers), and PATH_CASES (missing, directory, FIFO,
/dev/zero, symlink loops, a sparse file past every size limit).  Linux only (/proc, FIFOs, RLIMIT_AS).
"""

from __future__ import annotations

import copy
import io
import json
import os
import resource
import signal
import struct
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest

from hailopipe.errors import PipelineError
from hailopipe.network import Dense, Network
from hailopipe.quantization import optimizer
from hailopipe.quantization.config import OptimizeConfig

LINUX_ONLY = pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux (/proc, RLIMIT_AS)")

SEED = 6
MIN_CASES = 1000
TIME_LIMIT = 5.0  # seconds per case
MEMORY_FLOOR = 128 << 20  # new address space a case may take, plus MEMORY_PER_BYTE times its input size
MEMORY_PER_BYTE = 16
PAGE = os.sysconf("SC_PAGE_SIZE")


# --- the runner --------------------------------------------------------------------------------


class CaseTimeout(BaseException):
    """Raised by SIGALRM when a case runs past TIME_LIMIT (BaseException: readers must not catch it)."""


@dataclass
class Format:
    name: str
    filename: str
    cases: Callable[[np.random.Generator], Iterator[tuple[str, object]]]
    load: Callable[[Path], object]  # reads the case file (or, for in-memory formats, gets the payload)
    names_file: bool = True


@dataclass
class Tally:
    outcomes: Counter = field(default_factory=Counter)  # loaded / refused / failure kinds
    kinds: Counter = field(default_factory=Counter)  # cases per mutation kind
    failures: list[str] = field(default_factory=list)
    refused_files: list[bytes] = field(default_factory=list)  # a reservoir sample, for the CLI cases

    @property
    def total(self) -> int:
        return sum(self.outcomes.values())


def _alarm(signum, frame):
    raise CaseTimeout()


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(d, n)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_size if n != "case" else 0)
    return out


def _prepare(path: Path, payload) -> int:
    """Put the case at `path`: bytes are written, a callable makes something else (FIFO, link...)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        path.rmdir()
    elif path.exists():
        path.unlink()
    if isinstance(payload, bytes):
        path.write_bytes(payload)
        return len(payload)
    if callable(payload):
        payload(path)
        return 0
    return 0


def _address_space() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * PAGE


def _one(fmt: Format, path: Path, payload, size: int) -> str:
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    bound = MEMORY_FLOOR + MEMORY_PER_BYTE * size
    try:  # more than `bound` of new address space fails with MemoryError, numpy's and C allocations included
        resource.setrlimit(resource.RLIMIT_AS, (_address_space() + bound, hard))
        signal.setitimer(signal.ITIMER_REAL, TIME_LIMIT)
        try:
            fmt.load(path if isinstance(payload, bytes) or callable(payload) else payload)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        return "loaded"
    except PipelineError as exc:
        msg = str(exc)
        named = not fmt.names_file or not (isinstance(payload, bytes) or callable(payload)) or str(path) in msg
        return "refused" if "\n" not in msg and named else f"unclear message: {msg[:200]!r}"
    except CaseTimeout:
        return "TIMEOUT"
    except MemoryError:
        return f"MEMORY: more than {bound >> 20} MiB"
    except Exception as exc:  # noqa: BLE001 - any other exception is what the fuzzer looks for
        return f"{type(exc).__name__}: {str(exc)[:200]}"


def fuzz(fmt: Format, workdir: Path) -> Tally:
    """Run every case of `fmt` in `workdir`; count outcomes and collect failures."""
    rng = np.random.default_rng([SEED, zlib.crc32(fmt.name.encode())])
    case_dir = workdir / fmt.name / "case"
    case_dir.mkdir(parents=True)
    path = case_dir / fmt.filename
    tally, sampler = Tally(), np.random.default_rng(SEED)
    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        for label, payload in fmt.cases(rng):
            size = _prepare(path, payload)
            before = _tree(workdir)
            outcome = _one(fmt, path, payload, size)
            if _tree(workdir) != before:
                outcome = "WROTE under the fuzz directory"
            tally.kinds[label.split(":")[0]] += 1
            tally.outcomes[outcome if outcome in ("loaded", "refused") else "FAILED"] += 1
            if outcome == "refused" and isinstance(payload, bytes):
                _keep(tally.refused_files, tally.outcomes["refused"], payload, sampler)
            if outcome not in ("loaded", "refused"):
                tally.failures.append(f"{fmt.name} {label}: {outcome}")
    finally:
        signal.signal(signal.SIGALRM, old)
    TALLIES[fmt.name] = tally
    return tally


TALLIES: dict[str, Tally] = {}  # the last run of each format, for the CLI cases
SAMPLE = 50  # refused files each format keeps for the CLI tests


def _keep(sample: list, seen: int, item, rng) -> None:
    """Reservoir sampling: after `seen` items, each is in `sample` with probability SAMPLE / seen."""
    if len(sample) < SAMPLE:
        sample.append(item)
    elif (j := int(rng.integers(seen))) < SAMPLE:
        sample[j] = item


# --- generic byte and JSON mutations -------------------------------------------------------------

INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
               2**63 - 1, 2**63, 2**64 - 1]
BYTE_KINDS = ("truncate", "bitflip", "insert", "delete", "overwrite", "integer", "splice", "oversize",
              "empty", "wrong_type")
OTHER_FILES = [b"\x89PNG\r\n\x1a\n" + bytes(64), b"\x7fELF\x02\x01\x01" + bytes(100), b'{"a": 1}\n',
               b"PK\x05\x06" + bytes(18), b"\x1f\x8b\x08" + bytes(40), b"\0" * 4096, b"hello\n" * 50]


def mutate_bytes(rng: np.random.Generator, raw: bytes, kind: str | None = None) -> tuple[str, bytes]:
    kind = kind or str(rng.choice(BYTE_KINDS))
    n = len(raw)
    if not n and kind not in ("oversize", "empty", "wrong_type"):
        kind = "insert"
    pos = int(rng.integers(0, n + 1))
    if kind == "truncate":
        return kind, raw[:int(rng.integers(0, max(n, 1)))]
    if kind == "bitflip":
        b = bytearray(raw)
        for _ in range(int(rng.integers(1, 9))):
            i = int(rng.integers(0, n * 8))
            b[i // 8] ^= 1 << (i % 8)
        return kind, bytes(b)
    if kind == "insert":
        return kind, raw[:pos] + rng.bytes(int(rng.integers(1, 65))) + raw[pos:]
    if kind == "delete":
        return kind, raw[:pos] + raw[pos + int(rng.integers(1, 65)):]
    if kind == "overwrite":
        chunk = rng.bytes(int(rng.integers(1, 33)))
        return kind, raw[:pos] + chunk + raw[pos + len(chunk):]
    if kind == "integer":
        value = int(rng.choice(INTERESTING))
        fmt = str(rng.choice([">I", "<I", ">Q", "<Q", ">H"]))
        packed = struct.pack(fmt, value & ((1 << (8 * struct.calcsize(fmt))) - 1))
        return kind, raw[:pos] + packed + raw[pos + len(packed):]
    if kind == "splice":
        a, b = sorted(int(x) for x in rng.integers(0, n + 1, 2))
        return kind, raw[:pos] + raw[a:b] + raw[pos:]
    if kind == "oversize":
        return kind, raw + (raw if rng.random() < 0.5 else rng.bytes(int(rng.integers(1, 1 << 16))))
    if kind == "empty":
        return kind, b""
    return kind, OTHER_FILES[int(rng.integers(len(OTHER_FILES)))]


def raw_cases(rng, seeds: list[bytes], count: int, prefix: str = "raw") -> Iterator[tuple[str, bytes]]:
    """`count` byte-level mutations (1-3 stacked) of randomly chosen seeds."""
    for _ in range(count):
        out = seeds[int(rng.integers(len(seeds)))]
        kinds = []
        for _ in range(int(rng.integers(1, 4))):
            kind, out = mutate_bytes(rng, out)
            kinds.append(kind)
        yield f"{prefix}:{'+'.join(kinds)}", out


def deep(n: int):
    """A JSON value nested `n` deep."""
    text = "[" * n + "]" * n
    return json.loads(text) if n < 500 else text  # deeper ones only exist as text


JSON_VALUES = [None, True, False, 0, -1, 1, 7, 2**31, 2**63, -(2**63), 10**30, 1.5, float("nan"), float("inf"),
               -float("inf"), "", "x", "\0", "../x", "a" * 5000, [], {}, [[-1, 2, 2, 1]], [[-1, 0, 1, 1]],
               ["x"], [1, 2], {"a": None}]


def _nodes(obj, trail=()):
    yield trail
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _nodes(v, trail + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _nodes(v, trail + (i,))


def mutate_json(rng, doc, rounds: int = 1):
    """Structured edits of a JSON document: delete, replace, rename, duplicate, borrow another value."""
    doc = copy.deepcopy(doc)
    for _ in range(rounds):
        trails = [t for t in _nodes(doc) if t]
        if not trails:
            return rng.choice(np.array(JSON_VALUES, dtype=object))
        trail = trails[int(rng.integers(len(trails)))]
        parent = doc
        for k in trail[:-1]:
            parent = parent[k]
        key = trail[-1]
        op = int(rng.integers(5))
        if op == 0:
            del parent[key]
        elif op == 1:
            parent[key] = copy.deepcopy(JSON_VALUES[int(rng.integers(len(JSON_VALUES)))])
        elif op == 2 and isinstance(parent, dict):
            parent[str(rng.choice(["type", "input", "output", "name", "x", str(key) + "_"]))] = parent.pop(key)
        elif op == 3 and isinstance(parent, list):
            parent.insert(int(key), copy.deepcopy(parent[key]))
        else:  # borrow another node's value (creates cross-references, cycles in layer names)
            other = trails[int(rng.integers(len(trails)))]
            value = doc
            for k in other:
                value = value[k]
            parent[key] = copy.deepcopy(value)
    return doc


def json_text(doc) -> bytes:
    return doc.encode() if isinstance(doc, str) else json.dumps(doc).encode()


# --- hostile paths, shared by every file format ----------------------------------------------------


def _fifo(p):
    os.mkfifo(p)


def _dir(p):
    p.mkdir()


def _dangling(p):
    p.symlink_to(p.parent / "missing-target")


def _loop(p):
    p.symlink_to(p)


def _dev_zero(p):
    p.symlink_to("/dev/zero")


def _dev_null(p):
    p.symlink_to("/dev/null")


def _sparse(p):
    with open(p, "wb") as f:
        f.truncate((4 << 30) + 1)  # past every reader's limit, and no disk used


def _missing(p):
    pass


PATH_CASES = [("path:missing", _missing), ("path:directory", _dir), ("path:fifo", _fifo),
              ("path:dangling-symlink", _dangling), ("path:symlink-loop", _loop), ("path:dev-zero", _dev_zero),
              ("path:dev-null", _dev_null), ("path:sparse-4GiB", _sparse)]


# --- seeds -----------------------------------------------------------------------------------------


def tiny_net(seed: int = 0, hidden=(4,), shape=(2, 2, 1)) -> Network:
    rng = np.random.default_rng(seed)
    sizes = (int(np.prod(shape)), *hidden, 3)
    layers = [Dense(f"fc{i}", rng.standard_normal((k, c)).astype(np.float32),
                    rng.standard_normal(c).astype(np.float32), "relu" if i < len(sizes) - 1 else "linear",
                    [f"orig/fc{i}"]) for i, (k, c) in enumerate(zip(sizes[:-1], sizes[1:]), start=1)]
    return Network("net", shape, layers)


def tiny_qnet(net: Network):
    calib = np.random.default_rng(1).random((16, *net.input_shape), dtype=np.float32) * np.float32(255)  # raw pixels
    return optimizer.quantize_network(net, calib, OptimizeConfig(calib_size=16))


# --- .npy / .npz edits -------------------------------------------------------------------------


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, a, allow_pickle=True)
    return buf.getvalue()


def npy_raw(header: str, payload: bytes = b"") -> bytes:
    """A .npy member with an arbitrary header text (version 1.0 framing)."""
    h = header.encode("latin1")
    h += b" " * (-(10 + len(h) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h + payload


def zip_members(members: dict[str, bytes], compression=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, payload in members.items():
            zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), payload, compress_type=compression)
    return buf.getvalue()


DTYPES = [np.float64, np.float16, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.bool_,
          np.complex64, ">f4", ">i4", "<U3", "V4"]
NPY_HEADERS = ["{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000,), }",
               "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296), }",
               "{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }",
               "{'descr': '<f4', 'fortran_order': False, 'shape': (), }",
               "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }",
               "{'descr': '<U1000000000', 'fortran_order': False, 'shape': (1,), }",
               "{'descr': 'V1000000000', 'fortran_order': False, 'shape': (2,), }",
               "{'descr': [('a', '<f4'), ('b', '|O')], 'fortran_order': False, 'shape': (3,), }",
               "{'descr': '<f4', 'fortran_order': 1, 'shape': (3, 4), }",
               "{'descr': '<f4', 'shape': (3,), }", "{'descr': '<f4'", "__import__('os').system('true')",
               "{'descr': '<f4', 'fortran_order': False, 'shape': (3.5,), }", "[1, 2, 3]"]


def edit_arrays(rng, arrays: dict[str, np.ndarray]) -> tuple[str, dict[str, bytes]]:
    members = {k + ".npy": npy(v) for k, v in arrays.items()}
    keys = sorted(arrays)
    key = keys[int(rng.integers(len(keys)))]
    a = np.asarray(arrays[key])
    op = str(rng.choice(["dtype", "shape", "values", "drop", "rename", "extra", "swap", "object", "fortran",
                         "header", "not-npy"]))
    name = key + ".npy"
    if op == "dtype":
        members[name] = npy(a.astype(DTYPES[int(rng.integers(len(DTYPES)))]) if a.size else a)
    elif op == "shape":
        variants = [a.reshape(-1), a[None], a.T, a.reshape(-1)[:0], a.reshape(-1)[:1], np.float32(0) + np.zeros(())]
        members[name] = npy(np.asarray(variants[int(rng.integers(len(variants)))]))
    elif op == "values":
        b = a.copy().reshape(-1)
        if b.size:
            values = [np.nan, np.inf, -np.inf, 1e38, 0] if b.dtype.kind == "f" else [0, 1]
            if b.dtype.kind in "iu":
                values += [np.iinfo(b.dtype).max, np.iinfo(b.dtype).min]
            b[int(rng.integers(b.size))] = values[int(rng.integers(len(values)))]
        members[name] = npy(b.reshape(a.shape))
    elif op == "drop":
        del members[name]
    elif op == "rename":
        members[key + "x.npy"] = members.pop(name)
    elif op == "extra":
        members["extra.npy"] = npy(np.zeros(3))
    elif op == "swap":
        other = keys[int(rng.integers(len(keys)))] + ".npy"
        members[name], members[other] = members[other], members[name]
    elif op == "object":
        members[name] = npy(np.array([object(), 1], dtype=object))
    elif op == "fortran":
        members[name] = npy(np.asfortranarray(np.atleast_2d(a)))
    elif op == "header":
        members[name] = npy_raw(NPY_HEADERS[int(rng.integers(len(NPY_HEADERS)))], a.tobytes())
    else:
        members[name] = b"not an array"
    return op, members


def check(fmt: Format, workdir: Path) -> Tally:
    """Fuzz `fmt` and assert what every format must satisfy."""
    tally = fuzz(fmt, workdir)
    summary = f"{fmt.name}: {tally.total} cases, {dict(tally.outcomes)}"
    assert tally.total >= MIN_CASES, summary
    assert not tally.failures, summary + "\n" + "\n".join(tally.failures[:40])
    assert tally.outcomes["refused"] >= tally.total // 3, summary  # the mutations do reach the checks
    return tally
