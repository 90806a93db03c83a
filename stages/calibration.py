"""The calibration images optimize and analyze_noise share: `images(p, x_val)` picks them from the
validation images as params.yaml's `calibration` section says (first N, or N drawn with a seed)."""

from __future__ import annotations

import logging

import numpy as np

from hailopipe import data
from hailopipe.quantization import calibration
from stages.params import Params

log = logging.getLogger("stages")


def selection(p: Params, n: int) -> tuple[int, str, int]:
    """(size, selection, seed) of params.yaml's `calibration` section, checked for `n` images."""
    return (p.int("calibration.size", 1, n), p.choice("calibration.selection", calibration.SELECTIONS),
            p.int("calibration.seed", 0, 2**31 - 1))


def images(p: Params, x_val: np.ndarray) -> np.ndarray:
    """The calibration images that params.yaml's `calibration` section selects, as raw pixels (NHWC
    float32, 0-255: the SDK's calibration data when the model script normalizes)."""
    size, how, seed = selection(p, len(x_val))
    idx = calibration.indices(len(x_val), size, how, seed)
    log.info("calibration: %d of %d validation images (%s%s)", size, len(x_val), how,
             f", seed {seed}" if how == "random" else "")
    return data.to_raw(x_val[idx])
