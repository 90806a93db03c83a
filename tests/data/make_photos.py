"""Digits as a phone photographs them on paper: the realistic photo set of bench/digit_photos.py.

    from tests.data.make_photos import photo
    jpeg = photo(digit_28x28_uint8, np.random.default_rng(seed))   # JPEG bytes of one photo

Each MNIST digit (white ink on black, 28x28) becomes dark ink on light paper and is photographed:
a frame of 100-250 px with the digit at 35-65 % of it, off centre; ink of varying darkness on paper
of varying brightness, sometimes tinted; uneven lighting (a linear gradient and a vignette, down to
55 % of the light in a corner); a slight blur (Gaussian, sigma 0.4-1.4 px); grey sensor noise
(sigma 4-10 grey levels); JPEG at quality 55-90.  Everything is drawn from `rng`, so a seed gives
the same set on any machine.  Run as a script to write a few examples: `python
tests/data/make_photos.py OUT_DIR`.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter


def photo(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    size = int(rng.integers(100, 251))
    scale = rng.uniform(0.35, 0.65)  # the digit's 28-px frame against the photo's
    side = max(8, int(size * scale))
    ink_map = np.asarray(Image.fromarray(digit).resize((side, side), Image.Resampling.BICUBIC), np.float64) / 255
    canvas = np.zeros((size, size))
    y0, x0 = (int(rng.integers(0, size - side + 1)) for _ in range(2))
    canvas[y0:y0 + side, x0:x0 + side] = np.clip(ink_map, 0, 1)
    paper, ink = rng.uniform(175, 235), rng.uniform(15, 80)
    gray = paper - (paper - ink) * canvas
    yy, xx = np.mgrid[0:size, 0:size] / size
    angle = rng.uniform(0, 2 * np.pi)
    gradient = 1 - rng.uniform(0.1, 0.3) * ((np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5)) + 0.5)
    cy, cx = rng.uniform(0.2, 0.8, 2)
    vignette = 1 - rng.uniform(0.05, 0.25) * ((yy - cy) ** 2 + (xx - cx) ** 2) / 0.5
    gray = gray * gradient * vignette
    img = Image.fromarray(np.clip(gray, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.4)))
    gray = np.asarray(img, np.float64) + rng.normal(0, rng.uniform(4, 10), (size, size))
    if rng.random() < 0.5:  # a warm or cool tint: a colour photo
        tint = rng.uniform(0.85, 1.1, 3)
        rgb = np.clip(gray[..., None] * tint, 0, 255).astype(np.uint8)
        out = Image.fromarray(rgb, "RGB")
    else:
        out = Image.fromarray(np.clip(gray, 0, 255).astype(np.uint8), "L")
    buf = io.BytesIO()
    out.save(buf, "JPEG", quality=int(rng.integers(55, 91)))
    return buf.getvalue()


def main(out_dir: str) -> None:
    with np.load(Path(__file__).with_name("mnist_subset.npz")) as s:
        x, y = s["x_val"], s["y_val"]
    rng = np.random.default_rng(0)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    for i in range(10):
        (Path(out_dir) / f"photo_{i}_{y[i]}.jpg").write_bytes(photo(x[i], rng))


if __name__ == "__main__":
    main(sys.argv[1])
