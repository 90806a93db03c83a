"""The hailo backend: every step through Hailo's Dataflow Compiler and HailoRT (`adapter`), one module
per job beside it: `parsing` (translate_tf_model's node names and retries), `optimizing` (the model
script and what the DFC applied), `hn_view` (the SDK's HN: layers, float network, compile report),
`device` (HailoRT), and the plumbing to the closed-source packages in `sdk`; see `hailopipe.backends`."""

from hailopipe.backends.hailo.adapter import (
                                              PRECISION_MODES,
                                              analyze_noise,
                                              compile,
                                              infer_compiled,
                                              infer_fp_optimized,
                                              infer_native,
                                              infer_quantized,
                                              layer_names,
                                              optimize,
                                              parse,
)
from hailopipe.backends.hailo.sdk import check_available

__all__ = ["PRECISION_MODES", "analyze_noise", "check_available", "compile", "infer_compiled", "infer_fp_optimized",
           "infer_native", "infer_quantized", "layer_names", "optimize", "parse"]
