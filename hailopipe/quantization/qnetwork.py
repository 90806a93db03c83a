"""The quantized network: integer weights and requantization constants, layer by layer.

Produced by `optimizer.quantize_network`, stored as .q.npz arrays (`formats.qnpz`) in the quantized
HAR and the compiled file, and executed by `engine.Engine`.  The meaning of every field is derived
in `arithmetic`'s docstring; this module only holds them.

The input qparams (`input_scale`, ...) are those of the input stream.  With the model script's
`normalization`, the stream carries raw values with identity quantization (scale 1, limvals
[0, 255], as Hailo's HEFs do) and `normalization` is the per-channel affine layer that maps them to
the first layer's input qparams: a QDense of kernel [1, C], the same integer arithmetic applied to
each channel's values alone (`engine.normalize` runs it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class QDense:
    name: str
    activation: str
    in_bits: int
    w_bits: int
    out_bits: int
    kernel: np.ndarray  # int8/int16 [K, C]
    bias: np.ndarray  # int64 [C], q_b = round(b / (s_x s_w))
    w_scale: np.ndarray  # float32 [C]
    in_scale: float
    in_zp: int
    out_scale: float
    out_zp: int
    m0: np.ndarray  # int32 [C]
    shift: np.ndarray  # int32 [C]
    limvals: tuple[float, float]  # calibrated output range

    @property
    def macs(self) -> int:
        return int(self.kernel.shape[0] * self.kernel.shape[1])


@dataclass
class QNetwork:
    name: str
    input_shape: tuple[int, int, int]
    input_scale: float
    input_zp: int
    input_bits: int
    input_limvals: tuple[float, float]
    layers: list[QDense]
    normalization: QDense | None = None

    @property
    def output(self) -> QDense:
        return self.layers[-1]
