"""The float network: a chain of Conv, Pool and Dense layers, their shapes, and the forward pass.

A `Network` is an input of shape HxWxC, optionally a `Normalization` (the layer the model script's
`normalization(mean, std)` inserts after the input, per channel y = kernel x + bias with
kernel = 1/std, bias = -mean/std), then its layers in order, named as the SDK names them:

- `Conv` (`conv1`, ...; depthwise `dw1`, ...): kernel [kh, kw, cin, cout] (depthwise [kh, kw, C, 1]),
  bias, strides, dilations, padding VALID or SAME_TENSORFLOW (TensorFlow's SAME: the extra pad
  row/column at the end), activation; a BatchNorm is folded into its kernel and bias;
- `Pool` (`maxpool1`, `avgpool1`, ...): max or average over a window; SAME's padding is excluded
  (max: -inf; average: not counted), as in TensorFlow; a global average pool is a window of HxW;
- `Dense` (`fc1`, ...): kernel [in, out], bias, activation.  A Dense after an HxWxC tensor takes it
  flattened in NHWC order (TFLite's RESHAPE of an NHWC tensor), its kernel rows in that order.

Shapes follow TensorFlow's rule (`output_size`): VALID gives ceil((H - k_eff + 1) / s), SAME
ceil(H / s), with k_eff = (k - 1) d + 1; a Dense's output is 1x1xC, as the HN has it.  Its files
are the HN and .npz of `formats.hn`, its integer version `quantization.qnetwork.QNetwork`.  A parsed
network has no normalization (the SDK's parser adds none); an optimized one has it, and then takes
raw values (pixels 0-255) where the parsed one takes the model's own domain (pixels / 255).

`forward` runs it in numpy (what the SDK calls the native emulation).  By default every product is
`arithmetic.exact_dot`, summed on fixed-point grids so that the result is the same bits on any
BLAS, CPU and thread count (the calibration statistics and noise figures rely on it); a
convolution is its im2col patches times the kernel [kh kw cin, cout] (depthwise: a block-diagonal
kernel, one column per channel), computed a slice of images at a time on the grid of the whole
batch, so the bits are those of one product over the batch.  `exact=False` uses float32 BLAS
products, faster, with last bits that may depend on the BLAS.  Pooling is in numpy, its window
summed in a fixed order in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from hailopipe.quantization import arithmetic

ACTIVATIONS = ("linear", "relu", "relu6")
PADDINGS = ("VALID", "SAME_TENSORFLOW")
POOL_KINDS = ("max", "avg")
CHUNK = 1 << 22  # patch entries per exact product (32 MiB of float64): the memory of a conv layer


@dataclass
class Dense:
    name: str  # unscoped, e.g. "fc1"
    kernel: np.ndarray  # float32 [in, out]
    bias: np.ndarray  # float32 [out]
    activation: str = "linear"
    original_names: list[str] = field(default_factory=list)


@dataclass
class Conv:
    name: str  # unscoped, e.g. "conv1", "dw1"
    kernel: np.ndarray  # float32 [kh, kw, cin, cout]; depthwise [kh, kw, C, 1]
    bias: np.ndarray  # float32 [cout] (depthwise: [C])
    strides: tuple[int, int] = (1, 1)
    padding: str = "VALID"  # VALID | SAME_TENSORFLOW
    activation: str = "linear"
    depthwise: bool = False
    dilations: tuple[int, int] = (1, 1)
    original_names: list[str] = field(default_factory=list)

    @property
    def out_channels(self) -> int:
        return int(self.kernel.shape[2] if self.depthwise else self.kernel.shape[3])


@dataclass
class Pool:
    name: str  # unscoped, e.g. "maxpool1", "avgpool1"
    kind: str  # max | avg
    size: tuple[int, int]  # kh, kw
    strides: tuple[int, int]
    padding: str = "VALID"
    original_names: list[str] = field(default_factory=list)


Layer = Conv | Pool | Dense


@dataclass
class Normalization:
    name: str  # "normalization1"
    kernel: np.ndarray  # float32 [C], 1 / std
    bias: np.ndarray  # float32 [C], -mean / std

    @classmethod
    def from_mean_std(cls, mean, std, channels: int, name: str = "normalization1") -> Normalization:
        """The layer of `normalization([mean...], [std...])` (one value, or one per channel)."""
        mean = np.broadcast_to(np.asarray(mean, np.float64), (channels,))
        std = np.broadcast_to(np.asarray(std, np.float64), (channels,))
        return cls(name, (1.0 / std).astype(np.float32), (-mean / std).astype(np.float32))

    def invert(self, x: np.ndarray) -> np.ndarray:
        """The model's domain [..., C] -> raw values, (x - bias) / kernel in float64 (what a caller
        holding model-domain data, pixels / 255, feeds the raw input stream)."""
        return (np.asarray(x, np.float64) - self.bias) / self.kernel.astype(np.float64)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """NHWC (or [..., C]) raw values -> the model's domain, in float32."""
        return (np.asarray(x, np.float32) * self.kernel + self.bias).astype(np.float32, copy=False)


def output_size(size: int, k: int, stride: int, padding: str, dilation: int = 1) -> int:
    """TensorFlow's output size along one axis (0 when a VALID window does not fit)."""
    span = (k - 1) * dilation + 1
    return -(-size // stride) if padding == "SAME_TENSORFLOW" else max(0, -(-(size - span + 1) // stride))


def pads(size: int, k: int, stride: int, padding: str, dilation: int = 1) -> tuple[int, int]:
    """(before, after) padding along one axis: TensorFlow's SAME puts the odd one at the end."""
    if padding != "SAME_TENSORFLOW":
        return 0, 0
    total = max((output_size(size, k, stride, padding) - 1) * stride + (k - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def output_shape(layer: Layer, in_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """The HxWxC output of `layer` on an HxWxC input; ValueError (one line) if they do not fit."""
    h, w, c = in_shape
    if isinstance(layer, Dense):
        if layer.kernel.shape[0] != h * w * c:
            raise ValueError(f"{layer.name}: kernel has {layer.kernel.shape[0]} inputs, its input "
                             f"{h}x{w}x{c} has {h * w * c}")
        return 1, 1, int(layer.kernel.shape[1])
    if isinstance(layer, Conv):
        (kh, kw), dil, cin = layer.kernel.shape[:2], layer.dilations, layer.kernel.shape[2]
        if cin != c:
            raise ValueError(f"{layer.name}: kernel takes {cin} input channels, its input {h}x{w}x{c} has {c}")
        out_c = layer.out_channels
    else:
        (kh, kw), dil, out_c = layer.size, (1, 1), c
    oh = output_size(h, kh, layer.strides[0], layer.padding, dil[0])
    ow = output_size(w, kw, layer.strides[1], layer.padding, dil[1])
    if oh < 1 or ow < 1:
        raise ValueError(f"{layer.name}: a {kh}x{kw} {layer.padding} window does not fit its {h}x{w}x{c} input")
    return oh, ow, out_c


@dataclass
class Network:
    name: str
    input_shape: tuple[int, int, int]  # H, W, C
    layers: list[Layer]
    input_original_name: str = "input"
    normalization: Normalization | None = None

    @property
    def input_size(self) -> int:
        return int(np.prod(self.input_shape))

    @property
    def shapes(self) -> list[tuple[tuple[int, int, int], tuple[int, int, int]]]:
        """(input HxWxC, output HxWxC) of every layer, in order (ValueError if a layer does not fit)."""
        out, shape = [], tuple(self.input_shape)
        for layer in self.layers:
            nxt = output_shape(layer, shape)
            out.append((shape, nxt))
            shape = nxt
        return out

    @property
    def output_shape(self) -> tuple[int, int, int]:
        return self.shapes[-1][1]

    @property
    def num_outputs(self) -> int:
        last = self.layers[-1]
        return int(last.kernel.shape[1]) if isinstance(last, Dense) else math.prod(self.output_shape)

    def summary(self) -> dict:
        """What the parse step reports: one line per layer and the parameter count."""
        shapes = [out for _, out in self.shapes] if not self.is_dense else [None] * len(self.layers)
        return {"layers": [_line(layer, out) for layer, out in zip(self.layers, shapes)],
                "params": int(sum(d.kernel.size + d.bias.size for d in self.layers if not isinstance(d, Pool)))}

    @property
    def is_dense(self) -> bool:
        """Only Dense layers (the input is flattened before the first)."""
        return all(isinstance(layer, Dense) for layer in self.layers)


def _line(layer: Layer, out: tuple) -> str:
    if isinstance(layer, Dense):
        return f"{layer.name} {layer.kernel.shape[0]}->{layer.kernel.shape[1]} {layer.activation}"
    shape = "x".join(map(str, out))
    if isinstance(layer, Conv):
        kh, kw, cin = layer.kernel.shape[:3]
        what = f"dw {kh}x{kw} {cin}" if layer.depthwise else f"conv {kh}x{kw} {cin}->{layer.out_channels}"
        dil = "" if tuple(layer.dilations) == (1, 1) else f" dilation {layer.dilations[0]}x{layer.dilations[1]}"
        return (f"{layer.name} {what} stride {layer.strides[0]}x{layer.strides[1]}{dil} {layer.padding} "
                f"{layer.activation} -> {shape}")
    return (f"{layer.name} {layer.kind}pool {layer.size[0]}x{layer.size[1]} stride {layer.strides[0]}x"
            f"{layer.strides[1]} {layer.padding} -> {shape}")


def apply_activation(x: np.ndarray, activation: str) -> np.ndarray:
    if activation == "relu6":
        return np.clip(x, 0, 6)
    return np.maximum(x, 0) if activation == "relu" else x


def patches(x: np.ndarray, size, strides, padding: str, dilations=(1, 1), pad_value: float = 0.0) -> np.ndarray:
    """im2col: NHWC `x` -> [N, OH, OW, kh, kw, C], the window of every output position (TensorFlow's
    SAME padding filled with `pad_value`)."""
    n, h, w, c = x.shape
    (kh, kw), (sh, sw), (dh, dw) = size, strides, dilations
    oh, ow = output_size(h, kh, sh, padding, dh), output_size(w, kw, sw, padding, dw)
    xp = np.pad(x, ((0, 0), pads(h, kh, sh, padding, dh), pads(w, kw, sw, padding, dw), (0, 0)),
                constant_values=pad_value)
    out = np.empty((n, oh, ow, kh, kw, c), x.dtype)
    for i in range(kh):
        for j in range(kw):
            out[:, :, :, i, j, :] = xp[:, i * dh:i * dh + (oh - 1) * sh + 1:sh, j * dw:j * dw + (ow - 1) * sw + 1:sw, :]
    return out


def conv_kernel(layer: Conv) -> np.ndarray:
    """The conv's kernel as the matrix its patches multiply, [kh kw cin, cout]: a depthwise kernel
    becomes block-diagonal (the column of channel c takes only channel c of each window position)."""
    kh, kw, c = layer.kernel.shape[:3]
    if not layer.depthwise:
        return layer.kernel.reshape(kh * kw * c, -1)
    full = np.zeros((kh * kw, c, c), np.float32)
    full[:, np.arange(c), np.arange(c)] = layer.kernel.reshape(kh * kw, c)
    return full.reshape(kh * kw * c, c)


def _slices(n: int, per_image: int):
    """Slices of the batch holding about CHUNK entries each (at least one image)."""
    step = max(1, CHUNK // max(1, per_image))
    return [slice(s, s + step) for s in range(0, n, step)]


def _conv(h: np.ndarray, layer: Conv, exact: bool) -> np.ndarray:
    kh, kw = layer.kernel.shape[:2]
    kernel = conv_kernel(layer)
    k, cout = kernel.shape
    oh = output_size(h.shape[1], kh, layer.strides[0], layer.padding, layer.dilations[0])
    ow = output_size(h.shape[2], kw, layer.strides[1], layer.padding, layer.dilations[1])
    # One exact product over the whole batch, computed a slice of images at a time: each slice
    # carries one extra row holding the batch's largest |input| (the patches' largest entry; the
    # padding is 0), so exact_dot puts every slice on the grid of the whole batch.
    peak = np.zeros((1, k), np.float32)
    peak[0, 0] = np.abs(h).max(initial=0.0)
    out = np.empty((len(h), oh, ow, cout), np.float32)
    for part in _slices(len(h), oh * ow * k):
        cols = patches(h[part], (kh, kw), layer.strides, layer.padding, layer.dilations).reshape(-1, k)
        z = arithmetic.exact_dot(np.concatenate([cols, peak]), kernel)[:-1] if exact else cols @ kernel
        out[part] = apply_activation(z + layer.bias, layer.activation).reshape(-1, oh, ow, cout)
    return out


def _pool(h: np.ndarray, layer: Pool) -> np.ndarray:
    (kh, kw), c = layer.size, h.shape[3]
    oh = output_size(h.shape[1], kh, layer.strides[0], layer.padding)
    ow = output_size(h.shape[2], kw, layer.strides[1], layer.padding)
    out = np.empty((len(h), oh, ow, c), np.float32)
    count = patches(np.ones((1, *h.shape[1:3], 1)), layer.size, layer.strides, layer.padding).sum(axis=(3, 4))
    for part in _slices(len(h), oh * ow * kh * kw * c):
        if layer.kind == "max":
            out[part] = patches(h[part], layer.size, layer.strides, layer.padding, pad_value=-np.inf).max(axis=(3, 4))
            continue
        win = patches(h[part].astype(np.float64), layer.size, layer.strides, layer.padding)
        acc = np.zeros((len(win), oh, ow, c))
        for i in range(kh):  # a fixed summation order: the same bits anywhere
            for j in range(kw):
                acc += win[:, :, :, i, j, :]
        out[part] = acc / count
    return out


def forward(net: Network, x: np.ndarray, collect: bool = False, exact: bool = True):
    """float32 outputs for NHWC input [N, H, W, C] (see the module docstring for `exact`); with
    `collect`, (output, [every layer's output: NHWC for Conv and Pool, [N, C] for Dense])."""
    h = np.asarray(x, np.float32)
    if net.normalization is not None:
        h = net.normalization.apply(h.reshape(len(x), -1, net.input_shape[-1]))
    h = h.reshape(len(x), -1) if isinstance(net.layers[0], Dense) else h.reshape(len(x), *net.input_shape)
    outputs = []
    for layer in net.layers:
        if isinstance(layer, Dense):
            h = h.reshape(len(h), -1)
            z = (arithmetic.exact_dot(h, layer.kernel) if exact else h @ layer.kernel) + layer.bias
            h = apply_activation(z, layer.activation).astype(np.float32, copy=False)
        else:
            h = h if h.ndim == 4 else h.reshape(len(h), 1, 1, -1)
            h = _conv(h, layer, exact) if isinstance(layer, Conv) else _pool(h, layer)
        outputs.append(h)
    return (h, outputs) if collect else h
