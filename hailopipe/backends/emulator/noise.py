"""The emulator's noise analysis (`hailo analyze-noise`): per-layer SNR of the quantized HAR against float."""

from __future__ import annotations

import numpy as np

from hailopipe.formats import har
from hailopipe.quantization import noise


def analyze_noise(har_path, qhar_path, raw: np.ndarray) -> dict:
    """`noise.analyze` of the quantized HAR against its float network (with the model script's
    normalization, as the SDK's FP-optimized model) on raw images; the parsed HAR must be in state
    hailo_model (checked, so the stage refuses a mismatched pair of files)."""
    har.load(har_path, expect_state="hailo_model")
    q = har.load(qhar_path, expect_state="quantized_model")
    return noise.analyze(q.net, q.qnet, raw)
