"""Noise analysis, as `hailo analyze-noise`: the SNR of each layer's quantized output against float.

    from hailopipe.quantization import noise
    result = noise.analyze(float_net, qnet, x_nhwc_float32)
    result["layers"]["fc3"]["snr_db"]

For every layer (conv, pool, dense; the normalization layer is exact for the default
normalization([0], [255]) and not reported), over all images and output channels of `x`:

    SNR_dB = 10 log10( sum f^2 / sum (q - f)^2 )

with f the float network's output of that layer (`network.forward`, its products summed in an
order-independent way) and q the quantized network's, dequantized (r = scale (q - zero_point),
`arithmetic`).  Two figures per layer:
  snr_db           the quantized network run from the input (noise accumulated through the layers
                   before it: what the deployed model sees);
  isolated_snr_db  only this layer quantized: the float network's input to it, quantized with the
                   layer's input qparams (Hailo's per-layer "partial" view: which layer adds noise).
No noise gives +inf; `report` caps the figures at +-`SNR_CAP_DB` for JSON.

The quantized outputs come from the engine itself: `engine.run_layer` runs one layer as a one-layer
network, so stepping layer by layer gives the engine's bits exactly (the tests check it against
`Engine.run` of the whole network).  The stage is `stages/noise.py`.
"""

from __future__ import annotations

import math

import numpy as np

from hailopipe import network
from hailopipe.engine.engine import quantize_input, run_layer
from hailopipe.quantization import arithmetic
from hailopipe.quantization.qnetwork import QNetwork, QPool

SNR_CAP_DB = 300.0


def quantized_layer_outputs(qnet: QNetwork, q_in: np.ndarray) -> list[np.ndarray]:
    """Every layer's integer output, running the engine one layer at a time."""
    outs, q = [], q_in
    for layer in qnet.layers:
        q = run_layer(layer, q)
        outs.append(q)
    return outs


def snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """10 log10(signal energy / noise energy); +inf when test == reference, -inf for a zero signal."""
    f = np.asarray(reference, np.float64)
    noise = float(np.sum((np.asarray(test, np.float64) - f) ** 2))
    signal = float(np.sum(f**2))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def analyze(net: network.Network, qnet: QNetwork, x: np.ndarray) -> dict:
    """Per-layer SNR (dB) of `qnet` against `net` over the NHWC float32 images `x`, in the domain
    both take (raw pixels when `net` has the model script's normalization, as `qnet` then has)."""
    x = np.asarray(x, np.float32)
    _, float_outs = network.forward(net, x, collect=True)
    first_in = x if net.normalization is None else net.normalization.apply(x.reshape(len(x), -1, x.shape[-1]))
    layers = {}
    quantized = quantized_layer_outputs(qnet, quantize_input(qnet, x))
    for i, (layer, q, f) in enumerate(zip(qnet.layers, quantized, float_outs)):
        f_in = first_in.reshape(len(x), -1) if i == 0 else float_outs[i - 1]
        pool = isinstance(layer, QPool)
        in_bits = layer.bits if pool else layer.in_bits
        alone = run_layer(layer, arithmetic.quantize(f_in, layer.in_scale, layer.in_zp, in_bits))
        layers[layer.name] = {
            "snr_db": snr_db(f, arithmetic.dequantize(q, layer.out_scale, layer.out_zp)),
            "isolated_snr_db": snr_db(f, arithmetic.dequantize(alone, layer.out_scale, layer.out_zp)),
            "precision": f"a{layer.bits}" if pool else f"a{layer.out_bits}_w{layer.w_bits}"}
    return {"images": int(len(x)), "layers": layers, "output_snr_db": layers[qnet.layers[-1].name]["snr_db"]}


def _cap(v: float) -> float:
    return round(max(-SNR_CAP_DB, min(SNR_CAP_DB, v)), 4)


def report(result: dict) -> tuple[dict, str]:
    """The metrics dict (numbers only, capped) and the per-layer plot table (CSV) of `analyze`'s result."""
    layers = {name: {"snr_db": _cap(v["snr_db"]), "isolated_snr_db": _cap(v["isolated_snr_db"])}
              for name, v in result["layers"].items()}
    metrics = {"images": result["images"], "output_snr_db": _cap(result["output_snr_db"]),
               "min_snr_db": min(v["snr_db"] for v in layers.values()), "layers": layers}
    rows = [f"{name},{result['layers'][name]['precision']},{v['snr_db']},{v['isolated_snr_db']}"
            for name, v in layers.items()]
    return metrics, "layer,precision,snr_db,isolated_snr_db\n" + "\n".join(rows) + "\n"
