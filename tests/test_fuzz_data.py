"""Fuzz the data readers with broken and hostile inputs: the data stage's MNIST split
(`data.load_split`), the official MNIST arrays (`data.verify`, edited in memory: labels, dtypes,
shapes, one flipped pixel against the content digest), calibration data
(`calibration.ranges`: NaN/inf, wrong shapes and dtypes, empty) and digit images for
`hailopipe infer` (`images.load_digit`: PNG, JPEG, NPY; huge declared sizes).  Engine: tests/fuzzing.py.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from hailopipe import data, images
from hailopipe.fileio import load_npz, npz_bytes
from hailopipe.quantization import calibration
from hailopipe.quantization.config import OptimizeConfig
from tests.conftest import ROOT, SHARED, random_network
from tests.fuzzing import (
    DTYPES,
    LINUX_ONLY,
    NPY_HEADERS,
    PATH_CASES,
    Format,
    check,
    edit_arrays,
    npy,
    npy_raw,
    raw_cases,
    zip_members,
)

pytestmark = LINUX_ONLY


# --- MNIST: the data stage's split (data.load_split) and the official file (data.verify) -------


def mnist_cases(rng) -> Iterator[tuple[str, object]]:
    r = np.random.default_rng(0)
    split = {"x_train": r.integers(0, 256, (20, 28, 28), np.uint8), "y_train": r.integers(0, 10, 20, np.uint8),
             "x_val": r.integers(0, 256, (10, 28, 28), np.uint8), "y_val": r.integers(0, 10, 10, np.uint8)}
    yield from raw_cases(rng, [npz_bytes(split)], 450)
    for _ in range(450):
        op, members = edit_arrays(rng, split)
        yield f"arrays:{op}", zip_members(members)
    yield "hostile:pickled-object", zip_members({k + ".npy": npy(np.array([None], dtype=object)) for k in split})
    yield "hostile:labels-as-float", npz_bytes(dict(split, y_val=split["y_val"].astype(np.float32)))
    yield from PATH_CASES
    official = Path(os.environ.get("MNIST_NPZ") or SHARED / "mnist.npz")
    if not official.is_file():
        return
    real = load_npz(official)
    yield "official:unchanged", real
    for i in range(100):
        arrays = dict(real)
        key = str(rng.choice(sorted(data.SHAPES)))
        op = ["label-out-of-range", "dtype", "shape", "missing", "pixel"][i % 5]
        if op == "pixel" and i >= 50:
            op = "label-out-of-range"  # the digest is the slow check: keep ten of them
        if op == "label-out-of-range":
            key = str(rng.choice(["y_train", "y_test"]))
            arrays[key] = arrays[key].copy()
            arrays[key][int(rng.integers(len(arrays[key])))] = int(rng.integers(10, 256))
        elif op == "dtype":
            arrays[key] = arrays[key].astype(DTYPES[int(rng.integers(9))])
        elif op == "shape":
            arrays[key] = arrays[key][:-1] if rng.random() < 0.5 else arrays[key][None]
        elif op == "missing":
            del arrays[key]
        else:
            arrays[key] = arrays[key].copy()
            flat = arrays[key].reshape(-1)
            flat[int(rng.integers(flat.size))] ^= 1
        yield f"official:{op}", arrays


def load_mnist(target):
    if isinstance(target, dict):  # the official file's arrays, edited in memory
        return data.verify(target, "official mnist.npz")
    return data.load_split(target)


# --- calibration data (calibration.ranges) -----------------------------------------------

CALIB_NET = random_network((8,), name="net")
CLIPPING = [OptimizeConfig(calib_size=1), OptimizeConfig(calib_size=1, clipping_mode="percentile"),
            OptimizeConfig(calib_size=1, clipping_mode="mse")]


def calibration_cases(rng) -> Iterator[tuple[str, tuple]]:
    shapes = [lambda n: (n, 28, 28, 1), lambda n: (n, 784), lambda n: (n, 28, 28), lambda n: (28, 28, 1),
              lambda n: (), lambda n: (n, 28, 28, 2), lambda n: (n, 1, 28, 28), lambda n: (n, 28, 28, 1, 1)]
    dtypes = [np.float32, np.float64, np.float16, np.uint8, np.int64, np.bool_]
    for _ in range(1000):
        shape = shapes[int(rng.integers(len(shapes)))](int(rng.choice([0, 1, 2, 7, 33])))
        dtype = dtypes[int(rng.integers(len(dtypes)))]
        x = (rng.random(shape) * 2 - 0.5).astype(dtype)
        cfg = CLIPPING[int(rng.integers(len(CLIPPING)))]
        label = f"{dtype.__name__}{list(shape)}-{cfg.clipping_mode}"
        if x.dtype.kind == "f" and x.size and rng.random() < 0.5:
            bad = [np.nan, np.inf, -np.inf][int(rng.integers(3))]
            x.reshape(-1)[int(rng.integers(x.size))] = bad
            label += f"+{bad}"
        yield f"array:{label}", (x, cfg)


def load_calibration(case):
    ranges = calibration.ranges(CALIB_NET, *case)
    if not all(np.isfinite(lo) and np.isfinite(hi) and lo <= hi for lo, hi in ranges):
        raise AssertionError(f"accepted calibration data but returned ranges {ranges}")
    return ranges


# --- digit images for `hailopipe infer` (images.load_digit) ---------------------------------------


def image_seeds() -> list[bytes]:
    from PIL import Image

    with np.load(ROOT / "tests/data/mnist_subset.npz") as npz:
        digit = npz["x_val"][0]
    out = []
    for mode, fmt in (("L", "PNG"), ("RGBA", "PNG"), ("L", "JPEG")):
        buf = io.BytesIO()
        Image.fromarray(255 - digit).convert(mode).save(buf, fmt)
        out.append(buf.getvalue())
    return out + [npy(digit), npy(digit.astype(np.float32) / 255), npy(np.stack([digit] * 4, -1))]


def png_with_size(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height (and one tiny IDAT): a decompression-bomb header."""
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def image_cases(rng) -> Iterator[tuple[str, bytes]]:
    seeds = image_seeds()
    yield from raw_cases(rng, seeds, 700)
    digit = np.load(io.BytesIO(seeds[3]))
    for _ in range(300):
        op, members = edit_arrays(rng, {"img": digit})
        yield f"npy-array:{op}", members.get("img.npy", npy(np.zeros(0)))
    for w, h in ((1 << 16, 1 << 16), (100000, 1), (1, 100000), (0, 0), (8000, 8000)):
        yield f"hostile:png-{w}x{h}", png_with_size(w, h)
    for i, header in enumerate(NPY_HEADERS):
        yield f"hostile:npy-header-{i}", npy_raw(header, bytes(784))
    yield from PATH_CASES


FORMATS = {f.name: f for f in [
    Format("mnist (load_split / verify)", "mnist.npz", mnist_cases, load_mnist),
    Format("calibration data (calibration_ranges)", "-", calibration_cases, load_calibration, names_file=False),
    Format("digit image (images.load_digit)", "digit.png", image_cases, images.load_digit)]}


@pytest.mark.parametrize("name", list(FORMATS))
def test_fuzz_format(name, tmp_path):
    check(FORMATS[name], tmp_path)
