"""Atomic, byte-stable file writing and safe reading of the small formats the pipeline uses.

- `atomic_write(path)`: write to a temporary file beside `path`, fsync, then `os.replace`, so a
  killed stage leaves the previous file whole (or none), never a truncated one.
- `npz_bytes(arrays)` / `save_npz`: an .npz (zip of .npy members) with fixed member order and a
  fixed timestamp, so the same arrays always give the same bytes (numpy's `savez` stamps the time).
- `load_npz(path_or_bytes)`: `allow_pickle=False`, member names and sizes checked, errors as
  PipelineError naming the file.
- `write_json`: sorted keys, fixed indentation, trailing newline, atomic.
- `open_regular(path, what)` / `read_limited(path, max_bytes, what)`: the readers' way in.  Only a
  regular file is opened (a FIFO would block, /dev/zero never ends) and a size limit is checked
  before a byte is read; every problem is a PipelineError naming the file.

Every size a file declares (an .npz member, a .npy shape) is checked against the bytes the file
really holds before anything is allocated, so a small hostile file cannot claim gigabytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import stat
import tempfile
import tokenize
import zipfile
from pathlib import Path
from typing import IO, Iterator, Mapping

import numpy as np

from hailopipe.errors import PipelineError

ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
MAX_NPZ_BYTES = 1 << 31  # refuse archives that declare more than 2 GiB of arrays
MAX_INFLATION = 100  # ... or more than 100x their own size (+1 MiB): a decompression bomb


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """Open a temporary file for binary writing; on success it atomically replaces `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_write(path) as f:
        f.write(data)


def json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()


def write_json(path: str | os.PathLike, obj) -> None:
    write_bytes(path, json_bytes(obj))


def open_regular(path: str | os.PathLike, what: str = "file", error: type[PipelineError] = PipelineError) -> IO[bytes]:
    """Open `path` for binary reading if it is a regular file; otherwise `error` naming it."""
    try:  # O_NONBLOCK: opening a FIFO must not wait for a writer; it has no effect on regular files
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except OSError as exc:
        raise error(f"{path}: cannot open ({exc.strerror or exc})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file (a device, FIFO or socket)"
        raise error(f"{path}: is {kind}, not a {what}")
    return os.fdopen(fd, "rb")


def read_limited(path: str | os.PathLike, max_bytes: int, what: str = "file",
                 error: type[PipelineError] = PipelineError) -> bytes:
    """The bytes of the regular file `path`, refusing it before reading if it exceeds `max_bytes`;
    every problem is `error` (a PipelineError type) naming the file."""
    with open_regular(path, what, error) as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise error(f"{path}: file is {size} bytes, more than the {max_bytes}-byte limit for a {what}")
        try:
            data = f.read(size + 1)  # not max_bytes + 1: read(n) allocates n bytes up front
        except OSError as exc:
            raise error(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(data) > size:
        raise error(f"{path}: grew while being read")
    return data


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """Serialise `arrays` as an uncompressed .npz with sorted members and fixed timestamps."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(key + ".npy", date_time=ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asarray(arrays[key], order="C"), allow_pickle=False)
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


def save_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> None:
    write_bytes(path, npz_bytes(arrays))


def _read_npy(zf: zipfile.ZipFile, info: zipfile.ZipInfo, label: str) -> np.ndarray:
    """One .npy member; the size its header declares is checked against the member's before allocating."""
    if not info.filename.endswith(".npy"):
        raise PipelineError(f"{label}: member {info.filename!r} is not a .npy array")
    with zf.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version not in ((1, 0), (2, 0)):
            raise PipelineError(f"{label}: {info.filename}: unsupported .npy format version {version}")
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(member)
        if dtype.hasobject:
            raise PipelineError(f"{label}: {info.filename} holds Python objects (pickle), which are refused")
        count = math.prod(shape)
        if count * dtype.itemsize > info.file_size:
            raise PipelineError(f"{label}: {info.filename} declares {count * dtype.itemsize} bytes of data "
                                f"but the member holds {info.file_size}")
        buf = bytearray(count * dtype.itemsize)
        if member.readinto(buf) != len(buf):
            raise PipelineError(f"{label}: {info.filename} is truncated")
    array = np.frombuffer(buf, dtype, count)
    return array.reshape(shape[::-1]).T if fortran else array.reshape(shape)


def load_npz(source: str | os.PathLike | bytes, name: str | None = None) -> dict[str, np.ndarray]:
    """Read every array of an .npz into memory; any problem is a PipelineError naming `name`."""
    label = name or str(source)
    try:
        with (io.BytesIO(source) if isinstance(source, bytes) else open_regular(source, ".npz file")) as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(0)
            with zipfile.ZipFile(f) as zf:
                infos = zf.infolist()
                total = sum(i.file_size for i in infos)
                if total > min(MAX_NPZ_BYTES, MAX_INFLATION * size + (1 << 20)):
                    raise PipelineError(f"{label}: declares {total} bytes of arrays in a {size}-byte file, "
                                        "more than allowed")
                arrays = {}
                for info in infos:
                    key = info.filename[:-len(".npy")]
                    if key in arrays:
                        raise PipelineError(f"{label}: member {info.filename!r} appears twice")
                    arrays[key] = _read_npy(zf, info, label)
                return arrays
    except PipelineError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError, KeyError, NotImplementedError,
            tokenize.TokenError) as exc:
        raise PipelineError(f"{label}: not a readable .npz ({type(exc).__name__}: {exc})") from None
