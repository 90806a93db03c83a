"""The float network: a chain of Dense layers, and its one forward pass.

A `Network` is an input of shape HxWxC, optionally a `Normalization` (the layer the model script's
`normalization(mean, std)` inserts after the input, per channel y = kernel x + bias with
kernel = 1/std, bias = -mean/std), flattened, then Dense layers (kernel [in, out], bias,
activation), named as the SDK names them (`fc1`, `fc2`, ...); its files are the HN and .npz of
`formats.hn`, its integer version `quantization.qnetwork.QNetwork`.  A parsed network has no
normalization (the SDK's parser adds none); an optimized one has it, and then takes raw values
(pixels 0-255) where the parsed one takes the model's own domain (pixels / 255).

`forward` runs it in numpy (what the SDK calls the native emulation).  By default every product is
`arithmetic.exact_dot`, summed on fixed-point grids so that the result is the same bits on any
BLAS, CPU and thread count (the calibration statistics and noise figures rely on it);
`exact=False` uses float32 BLAS products, faster, with last bits that may depend on the BLAS.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hailopipe.quantization import arithmetic

ACTIVATIONS = ("linear", "relu")


@dataclass
class Dense:
    name: str  # unscoped, e.g. "fc1"
    kernel: np.ndarray  # float32 [in, out]
    bias: np.ndarray  # float32 [out]
    activation: str = "linear"
    original_names: list[str] = field(default_factory=list)


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


@dataclass
class Network:
    name: str
    input_shape: tuple[int, int, int]  # H, W, C
    layers: list[Dense]
    input_original_name: str = "input"
    normalization: Normalization | None = None

    @property
    def input_size(self) -> int:
        return int(np.prod(self.input_shape))

    @property
    def num_outputs(self) -> int:
        return self.layers[-1].kernel.shape[1]

    def summary(self) -> dict:
        """What the parse step reports: one line per layer and the parameter count."""
        return {"layers": [f"{d.name} {d.kernel.shape[0]}->{d.kernel.shape[1]} {d.activation}" for d in self.layers],
                "params": int(sum(d.kernel.size + d.bias.size for d in self.layers))}


def apply_activation(x: np.ndarray, activation: str) -> np.ndarray:
    return np.maximum(x, 0) if activation == "relu" else x


def forward(net: Network, x: np.ndarray, collect: bool = False, exact: bool = True):
    """float32 outputs for NHWC input [N, H, W, C] (see the module docstring for `exact`); with
    `collect`, (output, [every Dense layer's output])."""
    h = np.asarray(x, np.float32)
    if net.normalization is not None:
        h = net.normalization.apply(h.reshape(len(x), -1, net.input_shape[-1]))
    h = h.reshape(len(x), -1)
    outputs = []
    for layer in net.layers:
        z = (arithmetic.exact_dot(h, layer.kernel) if exact else h @ layer.kernel) + layer.bias
        h = apply_activation(z, layer.activation).astype(np.float32, copy=False)
        outputs.append(h)
    return (h, outputs) if collect else h
