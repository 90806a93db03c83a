"""Calibration: which images calibrate, and each layer's range from the float network's outputs on them.

    idx = calibration.indices(10000, 2000)                     # the first 2000 (or `selection="random"`)
    ranges = calibration.ranges(net, x[idx], OptimizeConfig())  # [(lo, hi)] per layer

Every layer's outputs come from `network.forward` with exact products, so the ranges are the same
bits on any BLAS.  A layer's range [lo, hi] is chosen by the config's `clipping_mode`: `minmax` (the
SDK's default, no clipping), `percentile` (`clipping_values` = [low, high] percentiles) or `mse` (the
range minimising the quantization MSE of that layer's outputs); the math is in `arithmetic`.
"""

from __future__ import annotations

import numpy as np

from hailopipe import network
from hailopipe.errors import PipelineError
from hailopipe.quantization import arithmetic
from hailopipe.quantization.config import OptimizeConfig

SELECTIONS = ("first", "random")


def indices(n: int, size: int, selection: str = "first", seed: int = 0) -> np.ndarray:
    """Which of `n` images calibrate: the first `size`, or `size` drawn without replacement (sorted)."""
    if not 1 <= size <= n:
        raise PipelineError(f"calibration size must be between 1 and {n}, got {size}")
    if selection == "first":
        return np.arange(size)
    if selection == "random":
        return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
    raise PipelineError(f"calibration selection must be one of {', '.join(SELECTIONS)}, got {selection!r}")


def check_images(net: network.Network, calib: np.ndarray) -> None:
    """PipelineError unless `calib` is a non-empty, finite NHWC batch of the network's input shape."""
    if calib.ndim != 4 or calib.shape[1:] != net.input_shape or len(calib) == 0:
        raise PipelineError(f"calibration data has shape {list(calib.shape)}, "
                            f"expected [N, {', '.join(map(str, net.input_shape))}]")
    if not np.isfinite(calib).all():
        raise PipelineError("calibration data contains NaN or inf")


def choose_range(values: np.ndarray, cfg: OptimizeConfig, bits: int) -> tuple[float, float]:
    """One layer's calibrated output range by `cfg.clipping_mode` (see `arithmetic`'s docstring)."""
    if cfg.clipping_mode == "percentile":
        return arithmetic.percentile_range(values, *cfg.clipping_values)
    if cfg.clipping_mode == "mse":
        return arithmetic.mse_range(values, bits)
    return arithmetic.minmax_range(values)


def statistics(net: network.Network, calib: np.ndarray, cfg: OptimizeConfig):
    """(flattened calibration images, float outputs of every layer, calibrated ranges), checking the images."""
    check_images(net, calib)
    x = np.asarray(calib, np.float32).reshape(len(calib), -1)
    _, outs = network.forward(net, x, collect=True)
    return x, outs, [choose_range(o, cfg, cfg.bits_of(d.name)[0]) for d, o in zip(net.layers, outs)]


def ranges(net: network.Network, calib: np.ndarray, cfg: OptimizeConfig) -> list[tuple[float, float]]:
    """Per-layer output ranges of the float network over `calib` (NHWC float32), by the clipping mode."""
    return statistics(net, calib, cfg)[2]
