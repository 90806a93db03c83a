"""The compile report (metrics/compile.json): per-layer shapes, MACs, weight bytes and precision, and totals.

Both backends write it in this one layout, the emulator from its quantized network
(`ehef.layer_report`), the hailo backend from the SDK's HN and model script:

    {"network": <name>,
     "layers": {<layer>: {"input_shape", "output_shape", "macs", "weight_bytes", "bias_bytes",
                          "precision_mode", "activation", ...}},
     "total": {"macs", "weight_bytes" (weights and biases), "layers"}}
"""

from __future__ import annotations


def layer(input_shape: list[int], output_shape: list[int], macs: int, weight_bytes: int, bias_bytes: int,
          precision_mode: str, activation: str, **extra) -> dict:
    """One layer's entry; `extra` keys (e.g. the SDK's own layer name) are kept beside them."""
    return {"input_shape": input_shape, "output_shape": output_shape, "macs": macs, "weight_bytes": weight_bytes,
            "bias_bytes": bias_bytes, "precision_mode": precision_mode, "activation": activation, **extra}


def build(network: str, layers: dict[str, dict]) -> dict:
    """The report of `network` from its layers' entries (`layer`), with the totals."""
    return {"network": network, "layers": layers,
            "total": {"macs": sum(v["macs"] for v in layers.values()),
                      "weight_bytes": sum(v["weight_bytes"] + v["bias_bytes"] for v in layers.values()),
                      "layers": len(layers)}}
