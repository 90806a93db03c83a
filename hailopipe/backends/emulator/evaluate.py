"""The emulator's three views of the model for the evaluate stage: native (the parsed HAR, pixels /
255 in), quantized and compiled (raw pixels 0-255 in, as the SDK's and HailoRT's after a model
script with normalization)."""

from __future__ import annotations

import numpy as np

from hailopipe import network
from hailopipe.engine import Engine
from hailopipe.formats import har
from hailopipe.quantization import arithmetic
from hailopipe.runtime import HEF, InferModel


def infer_native(har_path, x: np.ndarray) -> np.ndarray:
    """The parsed float model (SDK_NATIVE): float32 logits of the HAR's network, the same bits on any CPU."""
    return network.forward(har.load(har_path, expect_state="hailo_model").net, x)


def infer_quantized(har_path, raw: np.ndarray) -> np.ndarray:
    """The quantized HAR emulated (SDK_QUANTIZED): raw values in (pixels 0-255, which its model
    script normalizes), dequantized logits out."""
    q = har.load(har_path, expect_state="quantized_model").qnet
    out = Engine(q).run(arithmetic.quantize(raw, q.input_scale, q.input_zp, q.input_bits, limvals=q.input_limvals))
    return arithmetic.dequantize(out, q.output.out_scale, q.output.out_zp)


def infer_compiled(hef_path, raw: np.ndarray) -> np.ndarray:
    """The compiled file through the runtime, float32 in and out as HailoRT's FLOAT32 vstreams (raw pixels in)."""
    return InferModel(HEF(hef_path)).run_float(raw)
