"""The seam between the stages and a toolchain: `get(name)` returns the backend module.

Both backends offer the same functions, called by the stages:

    parse(tflite_path, har_path, net_name, hw_arch) -> summary dict
    optimize(har_path, out_har_path, calib_nhwc_float32, OptimizeConfig, hw_arch) -> summary dict
    compile(har_path, hef_path, hw_arch) -> compile report dict; also saves the compiled HAR at
        `compiled_har_path(hef_path)` (models/mnist.hef -> models/mnist_compiled.har)
    infer_native(har_path, x_nhwc_float32) -> float32 logits       (the parsed model, SDK_NATIVE)
    infer_quantized(har_path, x_nhwc_float32) -> float32 logits   (the SDK's SDK_QUANTIZED emulation)
    infer_compiled(hef_path, x_nhwc_float32) -> float32 logits    (the runtime on the compiled file)

`emulator` (default) is this project's open implementation; `hailo` drives Hailo's Dataflow
Compiler and HailoRT when they are installed and fails with one clear message when they are not.
The emulator never imports the SDK.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from hailopipe.errors import PipelineError

NAMES = ("emulator", "hailo")


def get(name: str):
    if name not in NAMES:
        raise PipelineError(f"params.yaml: backend must be one of {', '.join(NAMES)}, got {name!r}")
    module = importlib.import_module(f"hailopipe.backends.{name}")
    if hasattr(module, "check_available"):
        module.check_available()
    return module


def compiled_har_path(hef_path) -> Path:
    """Where compile() saves the compiled HAR: models/mnist.hef -> models/mnist_compiled.har."""
    hef_path = Path(hef_path)
    return hef_path.with_name(f"{hef_path.stem}_compiled.har")
