"""The integer engine: `engine.Engine` runs a quantized network bit-exactly (`native`: its compiled kernel);
`conv` runs convolution and pooling layers (NHWC) bit-exactly."""

from hailopipe.engine.conv import PreparedConv, PreparedPool, run_conv, run_pool
from hailopipe.engine.engine import Engine, quantize_input, run_layer

__all__ = ["Engine", "PreparedConv", "PreparedPool", "quantize_input", "run_conv", "run_layer", "run_pool"]
