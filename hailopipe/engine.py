"""The integer engine: runs a QNetwork on integer inputs, bit-exact, vectorised with numpy.

Per Dense layer (derivation in `quant`):  acc = q_x @ q_w + bias_eff;  q_y = requantize(acc).
The matrix product is done by BLAS in floating point on integer-valued operands, which is exact
while every partial sum is an integer below the format's exact range (2^24 in float32, 2^53 in
float64).  `Engine` proves a bound for each layer from its actual weights,
max|q_x| * max_c sum_k |q_w[k, c]|, and picks float32 when it holds, float64 otherwise, so the
result is the exact integer product whatever order BLAS sums in.  The requantization is done in
int64 as in (5).  No Python loop runs per image or per neuron.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hailopipe import quant
from hailopipe.qnetwork import QNetwork

F32_EXACT = 1 << 24
F64_EXACT = 1 << 53


@dataclass
class _Layer:
    w: np.ndarray  # float32 or float64 [K, C], integer-valued
    bias: np.ndarray  # int64 [C]
    m0: np.ndarray
    shift: np.ndarray
    zp: int
    lo: int
    hi: int
    dtype: np.dtype  # storage dtype of the output


class Engine:
    """Prepared integer network.  `run(q)` maps integer inputs [N, H, W, C] to integer outputs [N, F]."""

    def __init__(self, qnet: QNetwork):
        self.qnet = qnet
        self.layers = []
        for l in qnet.layers:
            bound = (1 << (l.in_bits - 1)) * int(np.abs(l.kernel.astype(np.int64)).sum(axis=0).max(initial=0))
            if bound >= F64_EXACT:
                raise ValueError(f"layer {l.name}: accumulator bound 2^{bound.bit_length()} is beyond exact float64")
            ftype = np.float32 if bound < F32_EXACT else np.float64
            qmin, qmax = quant.qrange(l.out_bits)
            lo = max(qmin, l.out_zp) if l.activation == "relu" else qmin
            self.layers.append(_Layer(l.kernel.astype(ftype), quant.fold_zero_point(l.bias, l.kernel, l.in_zp),
                                      l.m0, l.shift, l.out_zp, lo, qmax, quant.storage_dtype(l.out_bits)))

    @property
    def input_dtype(self) -> np.dtype:
        return quant.storage_dtype(self.qnet.input_bits)

    def run(self, q: np.ndarray) -> np.ndarray:
        x = np.asarray(q).reshape(len(q), -1)
        for layer in self.layers:
            acc = x.astype(layer.w.dtype) @ layer.w
            out = quant.requantize(acc.astype(np.int64) + layer.bias, layer.m0, layer.shift, layer.zp, layer.lo, layer.hi)
            x = out.astype(layer.dtype)
        return x
