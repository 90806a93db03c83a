"""The quantized network: integer weights and requantization constants, layer by layer.

Produced by `optimizer.quantize_network`, stored as .q.npz arrays (`formats.qnpz`) in the quantized
HAR and the compiled file, and executed by `engine.Engine`.  The meaning of every field is derived
in `arithmetic`'s docstring; this module only holds them.

The input qparams (`input_scale`, ...) are those of the input stream.  With the model script's
`normalization`, the stream carries raw values with identity quantization (scale 1, limvals
[0, 255], as Hailo's HEFs do) and `normalization` is the per-channel affine layer that maps them to
the first layer's input qparams: a QDense of kernel [1, C], the same integer arithmetic applied to
each channel's values alone (`engine.normalize` runs it).

A convolutional network's layers are also `QConv` (convolution, depthwise) and `QPool` (max and
average pooling) on NHWC tensors, run by `engine.conv`; `window` is TensorFlow's output-size rule.
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


PADDINGS = ("VALID", "SAME_TENSORFLOW")
CONV_ACTIVATIONS = ("linear", "relu", "relu6")
POOL_KINDS = ("max", "avg")


def window(n: int, k: int, stride: int, dilation: int, padding: str) -> tuple[int, int, int]:
    """TensorFlow's output size and padding of a sliding window along one axis of `n` values:
    (out, pad_before, pad_after).  With the dilated extent k' = (k - 1) * dilation + 1,
    VALID: out = ceil((n - k' + 1) / stride), no padding;  SAME: out = ceil(n / stride),
    pad_total = max((out - 1) * stride + k' - n, 0), pad_before = pad_total // 2 (the odd one after)."""
    if padding not in PADDINGS:
        raise ValueError(f"padding {padding!r} is not one of {', '.join(PADDINGS)}")
    extent = (k - 1) * dilation + 1
    if padding == "VALID":
        if extent > n:
            raise ValueError(f"a VALID window of {extent} does not fit {n} values")
        return -(-(n - extent + 1) // stride), 0, 0
    out = -(-n // stride)
    total = max((out - 1) * stride + extent - n, 0)
    return out, total // 2, total - total // 2


def window_counts(in_shape, size, strides, padding: str) -> np.ndarray:
    """int64 [Ho, Wo]: the number of real (unpadded) inputs under the pooling window at each output
    position, the in-bounds rows times the in-bounds columns."""
    per_axis = []
    for n, k, s in zip(in_shape[:2], size, strides):
        out, before, _ = window(n, k, s, 1, padding)
        start = np.arange(out, dtype=np.int64) * s - before
        per_axis.append(np.minimum(start + k, n) - np.maximum(start, 0))
    return per_axis[0][:, None] * per_axis[1][None, :]


@dataclass
class QConv:
    """A 2-D convolution (or depthwise convolution) in integers, NHWC; the math is `arithmetic`'s (7).

    name        the layer's name ("conv1", "dw1")
    depthwise   True: channel c of the input to channel c of the output alone (multiplier 1)
    activation  "linear", "relu" or "relu6", applied as the clamp's bounds (`arithmetic.activation_bounds`)
    in_bits     bits of the input integers (the producer's out_bits): 8 or 16
    w_bits      bits of the symmetric weights: 8 or 16
    out_bits    bits of the output integers: 8 or 16
    kernel      int8/int16 [kh, kw, cin, cout] (TensorFlow's layout); depthwise [kh, kw, C, 1]
    bias        int64 [cout], q_b = round(b / (s_x s_w)), before the zero point's fold (3)
    w_scale     float32 [cout], the weights' scale per output channel (depthwise: per channel)
    in_scale    the input's scale s_x
    in_zp       the input's zero point z_x (also the SAME padding value: the real 0)
    out_scale   the output's scale s_y
    out_zp      the output's zero point z_y
    m0          int32 [cout], fixed-point multiplier of M = s_x s_w / s_y (5)
    shift       int32 [cout], its exponent e: M ~= m0 2^-e
    limvals     the calibrated output range (lo, hi) in real units
    strides     (sh, sw)
    padding     "VALID" or "SAME_TENSORFLOW" (`window`: TensorFlow's output size and pad placement)
    in_shape    (H, W, C) of one input
    dilations   (dh, dw), (1, 1) for an ordinary convolution
    """

    name: str
    depthwise: bool
    activation: str
    in_bits: int
    w_bits: int
    out_bits: int
    kernel: np.ndarray
    bias: np.ndarray
    w_scale: np.ndarray
    in_scale: float
    in_zp: int
    out_scale: float
    out_zp: int
    m0: np.ndarray
    shift: np.ndarray
    limvals: tuple[float, float]
    strides: tuple[int, int]
    padding: str
    in_shape: tuple[int, int, int]
    dilations: tuple[int, int] = (1, 1)

    def __post_init__(self):
        kh, kw, cin, cout = self.kernel.shape
        if self.activation not in CONV_ACTIVATIONS:
            raise ValueError(f"{self.name}: activation {self.activation!r} is not one of {CONV_ACTIVATIONS}")
        if cin != self.in_shape[2] or (self.depthwise and cout != 1):
            raise ValueError(f"{self.name}: kernel {list(self.kernel.shape)} does not fit input {list(self.in_shape)}"
                             + (" (depthwise needs [kh, kw, C, 1])" if self.depthwise else ""))
        window(self.in_shape[0], kh, self.strides[0], self.dilations[0], self.padding)

    @property
    def channels(self) -> int:
        """Output channels: cout, or C for a depthwise layer."""
        return int(self.kernel.shape[2] if self.depthwise else self.kernel.shape[3])

    @property
    def pads(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """((top, bottom), (left, right)) rows and columns of padding."""
        return tuple(window(n, k, s, d, self.padding)[1:] for n, k, s, d in
                     zip(self.in_shape[:2], self.kernel.shape[:2], self.strides, self.dilations))

    @property
    def out_shape(self) -> tuple[int, int, int]:
        (ho, _, _), (wo, _, _) = (window(n, k, s, d, self.padding) for n, k, s, d in
                                  zip(self.in_shape[:2], self.kernel.shape[:2], self.strides, self.dilations))
        return ho, wo, self.channels

    @property
    def macs(self) -> int:
        """Multiply-accumulates per input image: Ho Wo kh kw cin cout (depthwise: Ho Wo kh kw C)."""
        ho, wo, _ = self.out_shape
        return int(ho * wo * np.prod(self.kernel.shape))


@dataclass
class QPool:
    """Max or average pooling in integers, NHWC; the math is `arithmetic`'s (8) and the paragraph before it.

    name       the layer's name ("maxpool1", "avgpool1")
    kind       "max" or "avg"
    size       (kh, kw), the window; a global average pooling has size = (H, W)
    strides    (sh, sw)
    padding    "VALID" or "SAME_TENSORFLOW"; SAME pads are excluded (max: as -inf; avg: not counted)
    in_shape   (H, W, C) of one input
    bits       bits of the input and output integers: 8 or 16
    in_scale   the input's scale s_x
    in_zp      the input's zero point z_x
    out_scale  the output's scale s_y (max pooling: must equal in_scale)
    out_zp     the output's zero point z_y (max pooling: must equal in_zp)
    m0         avg only: int32 [Ho, Wo], the fixed-point multiplier of M_n = s_x / (s_y n) for the count n
               of real inputs under the window at each output position (`counts`); None for max
    shift      avg only: int32 [Ho, Wo], its exponent e (M_n ~= m0 2^-e); None for max
    """

    name: str
    kind: str
    size: tuple[int, int]
    strides: tuple[int, int]
    padding: str
    in_shape: tuple[int, int, int]
    bits: int
    in_scale: float
    in_zp: int
    out_scale: float
    out_zp: int
    m0: np.ndarray | None = None
    shift: np.ndarray | None = None

    def __post_init__(self):
        if self.kind not in POOL_KINDS:
            raise ValueError(f"{self.name}: pooling kind {self.kind!r} is not one of {POOL_KINDS}")
        if self.kind == "max" and (self.out_scale != self.in_scale or self.out_zp != self.in_zp):
            raise ValueError(f"{self.name}: max pooling keeps the input's qparams (it commutes with them only)")
        hw = self.out_shape[:2]
        if self.kind == "avg" and (self.m0 is None or self.shift is None or np.shape(self.m0) != hw
                                   or np.shape(self.shift) != hw):
            raise ValueError(f"{self.name}: average pooling needs m0 and shift of shape {list(self.out_shape[:2])}")

    def _windows(self):
        return [window(n, k, s, 1, self.padding) for n, k, s in zip(self.in_shape[:2], self.size, self.strides)]

    @property
    def pads(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """((top, bottom), (left, right)) rows and columns of padding."""
        return tuple(w[1:] for w in self._windows())

    @property
    def out_shape(self) -> tuple[int, int, int]:
        (ho, _, _), (wo, _, _) = self._windows()
        return ho, wo, int(self.in_shape[2])

    @property
    def counts(self) -> np.ndarray:
        """int64 [Ho, Wo]: how many real (unpadded) inputs each output position's window covers."""
        return window_counts(self.in_shape, self.size, self.strides, self.padding)
