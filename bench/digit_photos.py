"""How well `hailopipe infer` reads digits photographed on paper, against the same digits given clean.

    MNIST_NPZ=../shared/data/mnist.npz python bench/digit_photos.py [--images 1000] [--model models/mnist.hef]

For the first N validation digits (never trained on), the compiled model's accuracy on:
  direct   the 28x28 digit fed to the model as it is, no preparation (the anchor);
  clean    the same digit as a 28x28 PNG, prepared by `images.load_digit` (what infer does);
  photo    the same digit photographed on paper (tests/data/make_photos.py: uneven light, sensor
           noise, blur, JPEG, 100-250 px, fixed seed), prepared by `images.load_digit`.
Targets: photo within 5 points of clean; clean not below direct by more than 0.5 points.
The model is models/mnist.hef when the pipeline has run, else tests/data/mnist_128x64.hef.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hailopipe import data, images
from hailopipe.runtime import InferModel
from tests.data.make_photos import photo

ROOT = Path(__file__).resolve().parents[1]


def validation(n: int) -> tuple[np.ndarray, np.ndarray]:
    if (ROOT / "data/mnist.npz").is_file():
        arrays = data.load_split(ROOT / "data/mnist.npz")
        return arrays["x_val"][:n], arrays["y_val"][:n]
    if os.environ.get("MNIST_NPZ"):
        arrays = data.load_official()
        return arrays["x_test"][:n], arrays["y_test"][:n]
    with np.load(ROOT / "tests/data/mnist_subset.npz") as s:
        return s["x_val"][:n], s["y_val"][:n]


def prepared(files: list[bytes], tmp: Path) -> np.ndarray:
    out = []
    for i, blob in enumerate(files):
        path = tmp / f"{i}.img"
        path.write_bytes(blob)
        out.append(images.load_digit(path)[0])
    return np.stack(out) * np.float32(255)  # the model's FLOAT32 input takes raw pixels 0-255


def png(digit: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(digit).save(buf, "PNG")
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--model", default=None)
    args = ap.parse_args()
    model_path = Path(args.model) if args.model else (
        ROOT / "models/mnist.hef" if (ROOT / "models/mnist.hef").is_file() else ROOT / "tests/data/mnist_128x64.hef")
    model = InferModel(model_path)
    x, y = validation(args.images)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as work:
        tmp = Path(work)
        start = time.perf_counter()
        acc = {"direct": float((model.run_float(data.to_raw(x)).argmax(1) == y).mean())}
        acc["clean"] = float((model.run_float(prepared([png(d) for d in x], tmp)).argmax(1) == y).mean())
        acc["photo"] = float((model.run_float(prepared([photo(d, rng) for d in x], tmp)).argmax(1) == y).mean())
        seconds = time.perf_counter() - start
    flags = " ".join(sorted(set(re.findall(r"\b(avx2|avx512_vnni|avx_vnni|amx_int8)\b",
                                           Path("/proc/cpuinfo").read_text()))))
    print(f"{len(y)} validation digits, model {model_path.relative_to(ROOT) if model_path.is_relative_to(ROOT) else model_path}"
          f"; {os.cpu_count()} cores, CPU flags {flags or 'none of them'}; {seconds:.1f} s")
    print(f"{'input':<8}{'accuracy':>10}")
    for k, v in acc.items():
        print(f"{k:<8}{v:>10.4f}")
    photo_ok = acc["photo"] >= acc["clean"] - 0.05
    clean_ok = acc["clean"] >= acc["direct"] - 0.005
    print(f"targets: photo within 5 points of clean ({100 * (acc['clean'] - acc['photo']):+.1f} points): "
          f"{'met' if photo_ok else 'NOT met'};  clean within 0.5 points of direct "
          f"({100 * (acc['direct'] - acc['clean']):+.1f}): {'met' if clean_ok else 'NOT met'}")


if __name__ == "__main__":
    main()
