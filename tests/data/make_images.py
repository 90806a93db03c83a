"""Write the small digit images tests/test_cli.py feeds to `hailopipe infer` (tests/data/digits/).

Run from the repository root:  python tests/data/make_images.py

Each file is a real MNIST test digit from mnist_subset.npz (the first image of each class in x_val),
drawn in one of several styles a user might bring: named `<style>_<label>.<ext>` so the test knows
the right answer.  Deterministic: the same bytes on every run (fixed digits, no randomness, PNG and
JPEG written with fixed settings by Pillow).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
OUT = HERE / "digits"


def _canvas(digit: np.ndarray, size: tuple[int, int], at: tuple[int, int], scale: tuple[int, int]) -> np.ndarray:
    """White-on-black `digit` resized to `scale` (w, h) and placed at `at` (x, y) on a black canvas (w, h)."""
    big = np.asarray(Image.fromarray(digit).resize(scale, Image.Resampling.BICUBIC), np.float64) / 255.0
    out = np.zeros((size[1], size[0]))
    out[at[1]:at[1] + scale[1], at[0]:at[0] + scale[0]] = big
    return out


def _mix(ink: np.ndarray, fg, bg) -> np.ndarray:
    """Colour image: `fg` where ink is 1, `bg` where 0 (uint8 RGB)."""
    fg, bg = np.asarray(fg, np.float64), np.asarray(bg, np.float64)
    return np.rint(ink[..., None] * fg + (1 - ink[..., None]) * bg).astype(np.uint8)


def styles(d: np.ndarray) -> dict[str, tuple[str, object]]:
    """style name -> (extension, PIL image or numpy array) for one uint8 28x28 white-on-black digit."""
    ink = d / 255.0
    odd = _canvas(d, (90, 61), (41, 4), (40, 52))
    return {
        "mnist": ("png", Image.fromarray(d)),                                   # as in the data set
        "paper": ("png", Image.fromarray(255 - d)),                             # dark ink on white
        "photo": ("jpg", Image.fromarray(np.rint(235 - 200 * _canvas(d, (64, 64), (4, 6), (56, 56))).astype(np.uint8))),
        "colour": ("png", Image.fromarray(_mix(_canvas(d, (45, 37), (6, 2), (30, 33)), (20, 30, 160), (250, 235, 120)))),
        "alpha": ("png", Image.fromarray(np.dstack([np.zeros((28, 28, 3), np.uint8), d]))),  # ink on clear
        "wide": ("jpg", Image.fromarray(_mix(odd, (255, 255, 255), (10, 40, 10)))),
        "deep": ("png", Image.fromarray(d.astype(np.uint16) * 257)),            # 16-bit grayscale
        "u8": ("npy", d.copy()),
        "float": ("npy", (1.0 - ink).astype(np.float32)),
    }


def main() -> None:
    with np.load(HERE / "mnist_subset.npz") as npz:
        x, y = npz["x_val"], npz["y_val"]
    firsts = [int(np.nonzero(y == c)[0][0]) for c in range(10)]
    OUT.mkdir(exist_ok=True)
    for i, name in enumerate(styles(x[0])):
        for c in (2 * i % 10, (2 * i + 1) % 10):  # two classes per style, all ten over the styles
            ext, img = styles(x[firsts[c]])[name]
            path = OUT / f"{name}_{c}.{ext}"
            if ext == "npy":
                np.save(path, img)
            elif ext == "jpg":
                img.save(path, "JPEG", quality=85)
            else:
                img.save(path, "PNG", optimize=True)
    print(f"wrote {len(list(OUT.iterdir()))} files to {OUT}")


if __name__ == "__main__":
    main()
