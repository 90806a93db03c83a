"""The emulator's noise analysis (`hailo analyze-noise`): per-layer SNR of the quantized HAR against float."""

from __future__ import annotations

import numpy as np

from hailopipe.formats import har
from hailopipe.quantization import noise


def analyze_noise(har_path, qhar_path, x: np.ndarray) -> dict:
    """`noise.analyze` on the parsed HAR (state hailo_model) and the quantized HAR of the same network."""
    net = har.load(har_path, expect_state="hailo_model").net
    return noise.analyze(net, har.load(qhar_path, expect_state="quantized_model").qnet, x)
