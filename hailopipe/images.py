"""Digit images for `hailopipe infer`: read PNG, JPEG or NPY files of any size, grayscale or colour,
and prepare them the way the MNIST training data was made.

MNIST digits are white strokes on black, pixel values in [0, 1] (uint8 / 255); each digit was
scaled, aspect ratio kept and anti-aliased, so that the longer side of its bounding box is 20 px,
then placed in a 28x28 frame with its centre of mass at the centre (row 14, column 14: measured on
tests/data/mnist_subset.npz, mean 13.98 / 14.02).  `load_digit` does the same to any picture:

1. decode to grayscale floats in [0, 1].  PNG/JPEG (recognised by content, not extension) through
   Pillow, EXIF rotation applied, colour to luma (ITU-R 601: 0.299 R + 0.587 G + 0.114 B, Pillow's
   "L"), 16-bit to /65535.  NPY: [H, W] or [H, W, C] with C = 1, 3 (RGB) or 4 (RGBA); uint8 /255,
   uint16 /65535, bool 0/1, other integers and floats either within [0, 1] (taken as is) or within
   [0, 255] (/255).  Transparent pixels take the background colour, chosen opposite to the opaque
   pixels' mean (dark ink on transparent becomes dark on white, and so on).
2. polarity (`invert`): "auto" inverts when the border is mostly light (median of the outer frame,
   5% of the shorter side and at least 1 px, above 0.5), i.e. a dark digit on light paper;
   "yes" / "no" force it.
3. contrast: an image whose brightest ink stands less than 10% above its border's median level
   holds no digit (or has the wrong polarity forced): that is an error.  Then the background, as
   a document scanner removes it, with a square a third of the shorter side wide (wider than any
   stroke): dark ink on paper is divided by the paper's level (its grey closing: light varies
   multiplicatively, so ink is the relative darkness, 1 - image / paper, whatever the shading and
   uneven light); light ink on a dark background loses the background's level (the white top-hat,
   the image minus its grey opening).  On a photo (shorter side >= 64 px) a 3x3 median filter
   first takes away the sensor noise.  The brightest stroke becomes 1.
4. ink: Otsu's threshold, chosen from the image's own histogram, marks the ink; the largest
   8-connected ink component is the digit, with every other component at least 5 % of its
   size (the parts of a broken stroke); everything else (specks of noise, marks on the paper) is
   cleared, 1 px around the kept ink excepted (its anti-aliased edge).
5. crop to the bounding box of the kept pixels >= 0.2, resize so the longer side is 20 px
   (Lanczos, aspect kept), and paste into 28x28 with the centre of mass at (14, 14) (shifted less
   if the digit would leave the frame).

On a clean MNIST-style image (ink on a flat background) steps 3 and 4 change nothing: the opening
of a flat background is the background, and a digit is one component (or a few, all kept).
bench/digit_photos.py measures photos against clean digits.

Every problem (missing, unreadable, wrong kind, bad NPY shape/dtype/range, blank) raises a
PipelineError naming the file.
"""

from __future__ import annotations

import os
import tokenize
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from hailopipe.errors import PipelineError

PNG_MAGIC, JPEG_MAGIC, NPY_MAGIC = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"\x93NUMPY"
INVERT_CHOICES = ("auto", "yes", "no")
BOX, CENTRE = 20, 14.0          # MNIST: digit box (px) in the 28x28 frame, centre of mass
MIN_CONTRAST, INK = 0.1, 0.2    # below MIN_CONTRAST: no digit; bounding box of pixels >= INK
BACKGROUND_SQUARE = 1 / 3       # the top-hat's square, as a fraction of the shorter side (>= 15 px)
DENOISE_FROM = 64               # a median filter from this shorter side up (photos, not MNIST's 28 px)
PART = 0.05                     # ink components kept: at least this fraction of the largest one
MAX_PIXELS = 50_000_000
LUMA = np.array([0.299, 0.587, 0.114])


def _read_image(path: str) -> tuple[np.ndarray, np.ndarray | None]:
    """PNG/JPEG -> (gray [H, W] float in [0, 1], alpha [H, W] or None)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=["PNG", "JPEG"]) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise PipelineError(f"{path}: {im.width}x{im.height} pixels is too large for a digit image")
                im = ImageOps.exif_transpose(im)
                im.load()
                if im.mode.startswith("I"):  # 16-bit grayscale PNG
                    return np.asarray(im, np.float64) / 65535.0, None
                if "A" in im.getbands() or "transparency" in im.info:
                    rgba = im.convert("RGBA")
                    alpha = np.asarray(rgba, np.float64)[..., 3] / 255.0
                    return np.asarray(rgba.convert("L"), np.float64) / 255.0, alpha
                return np.asarray(im.convert("L"), np.float64) / 255.0, None
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning, OSError,
            ValueError, SyntaxError) as exc:
        raise PipelineError(f"{path}: unreadable image ({type(exc).__name__}: {exc})") from None


def _scale_values(a: np.ndarray, path: str) -> np.ndarray:
    if a.dtype == np.bool_:
        return a.astype(np.float64)
    if a.dtype == np.uint8:
        return a / 255.0
    if a.dtype == np.uint16:
        return a / 65535.0
    if a.dtype.kind not in "iuf":
        raise PipelineError(f"{path}: NPY dtype {a.dtype} is not a numeric image")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise PipelineError(f"{path}: NPY image contains NaN or inf")
    lo, hi = (a.min(), a.max()) if a.size else (0.0, 0.0)
    if lo < 0 or hi > 255:
        raise PipelineError(f"{path}: NPY values span [{lo:g}, {hi:g}]; expected [0, 1] or [0, 255]")
    return a if hi <= 1 else a / 255.0


def _read_npy(path: str) -> tuple[np.ndarray, np.ndarray | None]:
    try:  # memory-mapped first: the header's shape is checked before any pixel is read
        with warnings.catch_warnings():  # a hostile header's size overflows in numpy: an error, not a warning
            warnings.simplefilter("error", RuntimeWarning)
            a = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError, tokenize.TokenError, RuntimeWarning) as exc:  # TokenError: bad header
        raise PipelineError(f"{path}: unreadable NPY file ({exc})") from None
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))) or min(a.shape[:2]) < 1:
        raise PipelineError(f"{path}: NPY shape {list(a.shape)} is not one image ([H, W] or [H, W, 1|3|4])")
    if a.shape[0] * a.shape[1] > MAX_PIXELS:
        raise PipelineError(f"{path}: {a.shape[1]}x{a.shape[0]} pixels is too large for a digit image")
    a = _scale_values(np.array(a), path)
    if a.ndim == 2:
        return a, None
    return a[..., :3] @ LUMA, (a[..., 3] if a.shape[2] == 4 else None)


def read_gray(path: str | os.PathLike) -> np.ndarray:
    """Step 1: the file as grayscale floats [H, W] in [0, 1], transparency flattened."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise PipelineError(f"{path}: is a directory, not an image")
    if os.path.exists(path) and not os.path.isfile(path):
        raise PipelineError(f"{path}: not a regular file")  # a FIFO or device would block or never end
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except FileNotFoundError:
        raise PipelineError(f"{path}: file not found") from None
    except OSError as exc:
        raise PipelineError(f"{path}: cannot read ({exc.strerror})") from None
    if head.startswith(NPY_MAGIC[:6]):
        gray, alpha = _read_npy(path)
    elif head.startswith(PNG_MAGIC) or head.startswith(JPEG_MAGIC):
        gray, alpha = _read_image(path)
    else:
        raise PipelineError(f"{path}: not a PNG, JPEG or NPY image (starts with {head!r})")
    if alpha is not None and (alpha < 1).any():
        opaque = alpha > 0.5
        ink = gray[opaque].mean() if opaque.any() else 0.0
        background = 1.0 if ink < 0.5 else 0.0
        gray = alpha * gray + (1 - alpha) * background
    return gray


def _border(gray: np.ndarray) -> np.ndarray:
    k = max(1, round(0.05 * min(gray.shape)))
    return np.concatenate([gray[:k].ravel(), gray[-k:].ravel(), gray[:, :k].ravel(), gray[:, -k:].ravel()])


def otsu(x: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1]: the one that maximises the between-class variance."""
    hist, edges = np.histogram(x, bins=bins, range=(0.0, 1.0))
    p = hist.astype(np.float64) / max(1, hist.sum())
    centres = (edges[:-1] + edges[1:]) / 2
    w0, m0 = np.cumsum(p), np.cumsum(p * centres)
    w1, mean = 1.0 - w0, m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean * w0 - m0) ** 2 / (w0 * w1)
    return float(edges[1:][np.nanargmax(np.where((w0 > 0) & (w1 > 0), between, np.nan))])


def _ink(gray: np.ndarray, dark_ink: bool) -> np.ndarray:
    """Steps 3-4: the strokes alone as bright ink in [0, 1], background and specks cleared (all
    zero when nothing stands out)."""
    from scipy import ndimage

    if min(gray.shape) >= DENOISE_FROM:
        gray = ndimage.median_filter(gray, size=3, mode="nearest")
    side = max(15, round(min(gray.shape) * BACKGROUND_SQUARE))
    if dark_ink:  # paper: the light varies multiplicatively, so ink is the relative darkness (flat field)
        paper = ndimage.grey_closing(gray, size=(side, side), mode="nearest")
        x = (paper - gray) / np.maximum(paper, 1e-6)
    else:  # light ink on a dark background: the white top-hat
        x = gray - ndimage.grey_opening(gray, size=(side, side), mode="nearest")
    top = float(x.max())
    if top < MIN_CONTRAST:
        return np.zeros_like(x)
    x = np.clip(x / top, 0.0, 1.0)
    labels, _ = ndimage.label(x > otsu(x), structure=np.ones((3, 3)))
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.isin(labels, 1 + np.nonzero(sizes >= PART * sizes.max())[0])
    return np.where(ndimage.binary_dilation(keep, structure=np.ones((3, 3))), x, 0.0)


def prepare(gray: np.ndarray, invert: str = "auto", size: int = 28, label: str = "image") -> tuple[np.ndarray, bool]:
    """Steps 2-5: grayscale [H, W] -> (MNIST-style float32 [size, size] in [0, 1], inverted?)."""
    if invert not in INVERT_CHOICES:
        raise PipelineError(f"invert must be one of {', '.join(INVERT_CHOICES)}, got {invert!r}")
    inverted = invert == "yes" or (invert == "auto" and float(np.median(_border(gray))) > 0.5)
    bright = 1.0 - gray if inverted else gray  # ink bright: the border's level is the background's
    contrast = float(bright.max()) - float(np.median(_border(bright)))
    x = _ink(gray, dark_ink=inverted) if contrast >= MIN_CONTRAST else np.zeros_like(gray)
    if not (x >= INK).any():
        raise PipelineError(f"{label}: no digit found: the image has {max(contrast, 0):.0%} contrast over its "
                            f"border (need {MIN_CONTRAST:.0%}){'' if invert != 'no' else '; try --invert auto'}")
    rows, cols = np.nonzero((x >= INK).any(axis=1))[0], np.nonzero((x >= INK).any(axis=0))[0]
    crop = x[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    box = round(BOX * size / 28)
    scale = box / max(crop.shape)
    h, w = (max(1, round(d * scale)) for d in crop.shape)
    resized = Image.fromarray(crop.astype(np.float32)).resize((w, h), Image.Resampling.LANCZOS)
    digit = np.clip(np.asarray(resized, np.float64), 0.0, 1.0)
    mass = digit.sum()
    cy = (digit.sum(axis=1) @ np.arange(h)) / mass if mass else (h - 1) / 2
    cx = (digit.sum(axis=0) @ np.arange(w)) / mass if mass else (w - 1) / 2
    centre = CENTRE * size / 28
    top_row = int(np.clip(round(centre - cy), 0, size - h))
    left = int(np.clip(round(centre - cx), 0, size - w))
    out = np.zeros((size, size), np.float32)
    out[top_row:top_row + h, left:left + w] = digit
    return out, inverted


def load_digit(path: str | os.PathLike, invert: str = "auto", size: int = 28) -> tuple[np.ndarray, bool]:
    """A digit image file -> (float32 [size, size, 1] in [0, 1] as MNIST, whether it was inverted)."""
    x, inverted = prepare(read_gray(path), invert, size, os.fspath(path))
    return x[..., None], inverted
