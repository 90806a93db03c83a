"""MNIST: fetch the official file (or reuse a local copy), verify it, and hand out arrays.

Where the data comes from, in order:
1. `$MNIST_NPZ`, a path to a local copy (for machines without internet, e.g. ../shared/data/mnist.npz);
2. the Keras cache, `~/.keras/datasets/mnist.npz`;
3. the official file that `keras.datasets.mnist.load_data()` downloads (URL and sha256 below),
   saved into the Keras cache.
A downloaded file must match the official file's sha256.  Every source must pass the content check:
keys, shapes, dtypes, label range and a sha256 over the arrays' bytes, which is the same for every
faithful copy whatever its zip container.

The data stage writes `data/mnist.npz` with `x_train, y_train` (60k) and `x_val, y_val` (the 10k
official test images, used as the validation set as in the original workflow).
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.request
from pathlib import Path

import numpy as np

from hailopipe.errors import PipelineError
from hailopipe.fileio import atomic_write, load_npz, save_npz

log = logging.getLogger(__name__)

MNIST_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
MNIST_FILE_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"
MNIST_CONTENT_SHA256 = "06b0d1f124c4e5fa796686ade41a9b778edacc8622f2195a352ef479ad44fc16"
KERAS_CACHE = Path.home() / ".keras" / "datasets" / "mnist.npz"
SHAPES = {"x_train": (60000, 28, 28), "y_train": (60000,), "x_test": (10000, 28, 28), "y_test": (10000,)}
NUM_CLASSES = 10


def content_sha256(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in ("x_train", "y_train", "x_test", "y_test"):
        h.update(np.ascontiguousarray(arrays[key]).tobytes())
    return h.hexdigest()


def verify(arrays: dict[str, np.ndarray], source: str, check_digest: bool = True) -> None:
    """Raise PipelineError naming `source` unless `arrays` is the real MNIST."""
    for key, shape in SHAPES.items():
        if key not in arrays:
            raise PipelineError(f"{source}: not an MNIST file: array {key!r} missing")
        a = arrays[key]
        if a.dtype != np.uint8 or a.shape != shape:
            raise PipelineError(f"{source}: {key} is {a.dtype}{list(a.shape)}, expected uint8{list(shape)}")
    for key in ("y_train", "y_test"):
        if arrays[key].max() >= NUM_CLASSES:
            raise PipelineError(f"{source}: {key} has labels outside 0..9")
    if check_digest and content_sha256(arrays) != MNIST_CONTENT_SHA256:
        raise PipelineError(f"{source}: content checksum differs from the official MNIST (corrupt or modified copy)")


def _download(dest: Path) -> None:
    log.info("data: downloading %s", MNIST_URL)
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(MNIST_URL, timeout=60) as resp, atomic_write(dest) as f:
            for block in iter(lambda: resp.read(1 << 20), b""):
                h.update(block)
                f.write(block)
            if h.hexdigest() != MNIST_FILE_SHA256:
                raise PipelineError(f"{MNIST_URL}: sha256 {h.hexdigest()} differs from the official "
                                    f"{MNIST_FILE_SHA256}")
    except OSError as exc:
        raise PipelineError(
            f"{MNIST_URL}: download failed ({exc}); without internet set MNIST_NPZ=<path to a local mnist.npz>"
        ) from None


def locate() -> Path:
    """The file to read: $MNIST_NPZ, else the Keras cache, else a fresh download into the cache."""
    env = os.environ.get("MNIST_NPZ")
    if env:
        path = Path(env)
        if not path.is_file():
            raise PipelineError(f"MNIST_NPZ={env}: file not found")
        return path
    if KERAS_CACHE.is_file():
        return KERAS_CACHE
    _download(KERAS_CACHE)
    return KERAS_CACHE


def load_official() -> dict[str, np.ndarray]:
    path = locate()
    log.info("data: reading %s", path)
    arrays = load_npz(path)
    verify(arrays, str(path))
    return arrays


def prepare(out_path: str | os.PathLike) -> dict[str, int]:
    """Fetch, verify and write the train/validation split to `out_path`; return the counts."""
    arrays = load_official()
    split = {"x_train": arrays["x_train"], "y_train": arrays["y_train"],
             "x_val": arrays["x_test"], "y_val": arrays["y_test"]}
    save_npz(out_path, split)
    return {"train": len(split["y_train"]), "val": len(split["y_val"])}


def load_split(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read the data stage's output, checking the arrays a later stage relies on."""
    arrays = load_npz(path)
    for key in ("x_train", "y_train", "x_val", "y_val"):
        if key not in arrays:
            raise PipelineError(f"{path}: array {key!r} missing; re-run the data stage")
    for x, y in (("x_train", "y_train"), ("x_val", "y_val")):
        if arrays[x].dtype != np.uint8 or arrays[x].ndim != 3 or arrays[x].shape[1:] != (28, 28):
            raise PipelineError(f"{path}: {x} must be uint8 [N,28,28]")
        if arrays[y].shape != (arrays[x].shape[0],):
            raise PipelineError(f"{path}: {y} does not match {x}")
    return arrays


def to_raw(images: np.ndarray) -> np.ndarray:
    """uint8 [N,28,28] pixels -> float32 NHWC [N,28,28,1] raw values 0-255: what the quantized and
    compiled models take, their model script normalizing them (HailoRT's FLOAT32 input format)."""
    return images.astype(np.float32)[..., None]


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 [N,28,28] pixels -> float32 NHWC [N,28,28,1] in [0, 1], the model's input domain."""
    return (images.astype(np.float32) / np.float32(255.0))[..., None]
