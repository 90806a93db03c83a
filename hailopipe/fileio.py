"""Atomic, byte-stable file writing and safe reading of the small formats the pipeline uses.

- `atomic_write(path)`: write to a temporary file beside `path`, fsync, then `os.replace`, so a
  killed stage leaves the previous file whole (or none), never a truncated one.
- `npz_bytes(arrays)` / `save_npz`: an .npz (zip of .npy members) with fixed member order and a
  fixed timestamp, so the same arrays always give the same bytes (numpy's `savez` stamps the time).
- `load_npz(path_or_bytes)`: `allow_pickle=False`, member names and sizes checked, errors as
  PipelineError naming the file.
- `write_json`: sorted keys, fixed indentation, trailing newline, atomic.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import IO, Iterator, Mapping

import numpy as np

from hailopipe.errors import PipelineError

ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
MAX_NPZ_BYTES = 1 << 31  # refuse archives that declare more than 2 GiB of arrays


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


def read_json(path: str | os.PathLike) -> dict:
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        raise PipelineError(f"{path}: file not found") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{path}: not valid JSON ({exc})") from None


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


def load_npz(source: str | os.PathLike | bytes, name: str | None = None) -> dict[str, np.ndarray]:
    """Read every array of an .npz into memory; any problem is a PipelineError naming `name`."""
    label = name or str(source)
    fileobj = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with zipfile.ZipFile(fileobj) as zf:
            total = sum(i.file_size for i in zf.infolist())
            if total > MAX_NPZ_BYTES:
                raise PipelineError(f"{label}: declares {total} bytes of arrays, more than allowed")
        if isinstance(fileobj, io.BytesIO):
            fileobj.seek(0)
        with np.load(fileobj, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except PipelineError:
        raise
    except FileNotFoundError:
        raise PipelineError(f"{label}: file not found") from None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise PipelineError(f"{label}: not a readable .npz ({exc})") from None
