"""The seam between the stages and a toolchain: `get(backend, step)` returns the module that runs a step.

The stages call these functions, with the same meaning on both backends.  Images are NHWC float32:
`raw` is raw pixels 0-255 (what the SDK takes once the model script's normalization is loaded, and
what HailoRT's FLOAT32 input stream takes), `x` is the parsed model's own domain, pixels / 255:

    parse      parse(tflite_path, har_path, net_name, hw_arch) -> summary dict
    optimize   layer_names(har_path) -> the names params.yaml's optimize.precision may use;
               PRECISION_MODES; optimize(har_path, out_har_path, calib_raw, OptimizeConfig,
               hw_arch) -> summary dict, with `applied`: the level and algorithms that ran
    compile    compile(har_path, hef_path, hw_arch) -> compile report dict; also saves the compiled
               HAR at `compiled_har_path(hef_path)` (models/mnist.hef -> models/mnist_compiled.har)
    noise      analyze_noise(har_path, qhar_path, raw) -> per-layer SNR (quantization.noise)
    evaluate   infer_native(har_path, x) -> float32 logits        (the parsed model, SDK_NATIVE)
               infer_quantized(har_path, raw) -> float32 logits   (the SDK's SDK_QUANTIZED emulation)
               infer_compiled(hef_path, raw) -> float32 logits    (the runtime on the compiled file)

`emulator` (default) is this project's open implementation, one module per step
(`hailopipe.backends.emulator.<step>`), so that each stage imports, and its DVC deps cover, only
what its step runs.  `hailo` is one adapter for every step (`hailopipe.backends.hailo`) that drives
Hailo's Dataflow Compiler and HailoRT when they are installed and fails with one clear message when
they are not.  Neither backend imports the other.
"""

from __future__ import annotations

import importlib
from pathlib import Path

NAMES = ("emulator", "hailo")
STEPS = ("parse", "optimize", "compile", "noise", "evaluate")


def module_name(name: str, step: str) -> str:
    """The module that runs `step` on backend `name`."""
    if name not in NAMES or step not in STEPS:
        raise ValueError(f"no backend {name!r} (one of {', '.join(NAMES)}) or step {step!r} "
                         f"(one of {', '.join(STEPS)})")
    return f"hailopipe.backends.emulator.{step}" if name == "emulator" else "hailopipe.backends.hailo"


def get(name: str, step: str):
    """The module that runs `step` on backend `name`, after its own availability check (if it has one)."""
    module = importlib.import_module(module_name(name, step))
    if hasattr(module, "check_available"):
        module.check_available()
    return module


def compiled_har_path(hef_path) -> Path:
    """Where compile() saves the compiled HAR: models/mnist.hef -> models/mnist_compiled.har."""
    hef_path = Path(hef_path)
    return hef_path.with_name(f"{hef_path.stem}_compiled.har")
