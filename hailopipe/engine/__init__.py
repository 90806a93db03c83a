"""The integer engine: `engine.Engine` runs a quantized network bit-exactly (`native`: its compiled kernel)."""

from hailopipe.engine.engine import Engine, quantize_input, run_layer

__all__ = ["Engine", "quantize_input", "run_layer"]
