"""Stand-in for hailo_sdk_client.exposed_definitions: the runner states and inference contexts."""

from enum import Enum


class States(str, Enum):
    UNINITIALIZED = "uninitialized"
    HAILO_MODEL = "hailo_model"
    FP_OPTIMIZED_MODEL = "fp_optimized_model"
    QUANTIZED_MODEL = "quantized_model"
    COMPILED_MODEL = "compiled_model"


class InferenceContext(str, Enum):
    SDK_NATIVE = "sdk_native"
    SDK_FP_OPTIMIZED = "sdk_fp_optimized"
    SDK_QUANTIZED = "sdk_quantized"
    SDK_BIT_EXACT = "sdk_bit_exact"
    SDK_HAILO_HW = "sdk_hailo_hw"


class HailoSDKError(Exception):
    """What the stand-in raises for input the real DFC would refuse (its real types are not public)."""
