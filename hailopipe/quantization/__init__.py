"""Quantization, float32 -> int8/int16, as the SDK's optimize step does it:

    arithmetic    the math, derived once: affine quantization, integer layers, requantization, ranges
    qnetwork      the quantized network's records
    config        what the optimizer is asked for (the model script's controls)
    calibration   which images calibrate, and each layer's range from them
    optimizer     quantize_network: ranges -> integer layers, bias correction
    finetune      level 2's quantization-aware distillation
    model_script  the SDK model script equivalent to a config
    noise         per-layer SNR of the quantized network against float (analyze-noise)
"""
