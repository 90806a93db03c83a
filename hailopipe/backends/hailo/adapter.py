"""The hailo backend: the same stages through Hailo's Dataflow Compiler (DFC) and HailoRT.

Selected with `backend: hailo` in params.yaml; the stages call the functions below exactly as they
call the emulator's.  Each wraps the SDK's documented Python API (the DFC's ClientRunner, HailoRT's
hailo_platform):

    parse            ClientRunner(hw_arch) -> translate_tf_model(model.tflite, net_name), with no
                     node names first, retried with the parser's recommendations (`parsing`) ->
                     save_har.
    optimize         load_model_script(`optimizing.script`) -> optimize(NHWC float32 raw pixels
                     0-255) -> save_har; returns the SDK's warnings and what it `applied` (level,
                     bias correction, finetune, GPU) as its log says.
    compile          compile() -> bytes -> the .hef; the compiled HAR is saved beside it as
                     `<hef stem>_compiled.har`; the report (`hn_view.compile_report`) is keyed by
                     the SDK's layer names, normalization included.
    infer_quantized  infer_context(SDK_QUANTIZED) + infer (also infer_fp_optimized, infer_native).
    infer_compiled   HailoRT on a device (`device`: InferVStreams on 4.x, InferModel on 5.x).

Inputs, as the emulator takes them: `infer_native` the model's domain (pixels / 255, what the
parsed network takes); the calibration data, `infer_quantized`, `infer_fp_optimized` and
`infer_compiled` raw pixels 0-255, which the model script's `normalization` maps to that domain,
as a deployed camera pipeline feeds them.  Layers are named as the SDK names them (`fc1`, ...) in
params.yaml, the model script and the reports.

Without the SDK, `check_available()` raises one PipelineError saying what to install and where.
All SDK failures become one-line PipelineErrors; HARs and HEFs are written atomically (`sdk`).
Not tested against the real SDK here: see docs/hailo-backend.md and `bench/hailo_e2e.py`.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np

from hailopipe.backends import compiled_har_path
from hailopipe.backends.hailo import device, hn_view, optimizing, parsing
from hailopipe.backends.hailo import sdk as hailo_sdk
from hailopipe.errors import PipelineError
from hailopipe.fileio import write_bytes
from hailopipe.formats import hailo_hef
from hailopipe.network import Normalization, Pool
from hailopipe.quantization import calibration
from hailopipe.quantization.config import OptimizeConfig

log = logging.getLogger(__name__)

PRECISION_MODES = ("a8_w8", "a8_w4", "a16_w16", "a16_w8", "a8_w8_a16", "a16_w8_a16")  # the SDK's precision_mode values
RAW_MAX = 255.0  # the input stream's raw pixels


def _images(x: np.ndarray, shape, what: str, raw: bool) -> np.ndarray:
    """Check NHWC float32 images of `shape` (raw pixels 0-255 when `raw`) -> C-contiguous float32."""
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 4 or tuple(x.shape[1:]) != tuple(shape):
        got = f"{getattr(x, 'dtype', type(x).__name__)}{list(getattr(x, 'shape', []))}"
        raise PipelineError(f"{what}: expected NHWC float32 [N, {', '.join(map(str, shape))}], got {got}")
    if len(x) == 0 or not np.isfinite(x).all():
        raise PipelineError(f"{what}: images must be non-empty and finite")
    if raw and (x.min() < 0 or x.max() > RAW_MAX):
        raise PipelineError(f"{what}: images must be raw pixels in [0, 255] (the model script normalizes them), "
                            f"got [{x.min():g}, {x.max():g}]")
    return np.ascontiguousarray(x)


def _read(runner, source):
    with hailo_sdk.sdk_call(f"{source}: reading the HN and params"):
        return runner.get_hn_dict(), dict(runner.get_params())


# --- the stages ------------------------------------------------------------------------------

def parse(tflite_path, har_path, net_name: str, hw_arch: str) -> dict:
    """translate_tf_model on the TFLite file (`parsing`), then save_har (state hailo_model)."""
    sdk = hailo_sdk.load_sdk()
    hailo_sdk.check_versions(hw_arch, dfc=sdk.version)
    runner, hn, params, attempts = parsing.translate(sdk, tflite_path, net_name, hw_arch)
    net = hn_view.float_network(hn, params, tflite_path)
    hailo_sdk.save_har(runner, har_path)
    return {**net.summary(), "end_node_names": attempts[-1]["end_node_names"], "attempts": attempts,
            "sdk_version": sdk.version}


def layer_names(har_path) -> list[str]:
    """The layers a precision mode can be set for: the SDK's names of the layers with weights, in order."""
    sdk = hailo_sdk.load_sdk()
    runner = hailo_sdk.open_runner(sdk, har_path)
    return _weight_layers(hn_view.float_network(*_read(runner, har_path), har_path))


def _weight_layers(net) -> list[str]:
    return [layer.name for layer in net.layers if not isinstance(layer, Pool)]


def optimize(har_path, out_har_path, calib: np.ndarray, cfg: OptimizeConfig, hw_arch: str) -> dict:
    """load_model_script + optimize on raw-pixel calibration data, then save_har (quantized_model)."""
    sdk = hailo_sdk.load_sdk()
    hailo_sdk.check_versions(hw_arch, dfc=sdk.version)
    runner = hailo_sdk.open_runner(sdk, har_path, hw_arch)
    hailo_sdk.expect_state(runner, (sdk.States.HAILO_MODEL,), har_path)
    net = hn_view.float_network(*_read(runner, har_path), har_path)
    names = _weight_layers(net)
    unknown = sorted(set(cfg.precision) - set(names))
    bad = {k: v for k, v in cfg.precision.items() if v not in PRECISION_MODES}
    if unknown or bad:  # the stage checks params.yaml first: this guards the Python API
        raise PipelineError(f"precision: unknown layer(s) {unknown} (layers are {names}) or mode(s) {bad} "
                            f"(modes are {', '.join(PRECISION_MODES)})")
    raw = _images(calib, net.input_shape, "calibration data", raw=True)
    if 0 < raw.max() <= 1:
        raise PipelineError(f"calibration data: values in [0, {raw.max():g}] look like pixels / 255; the "
                            "calibration data are raw pixels 0-255, which the model script normalizes")
    ranges = None
    if cfg.clipping_mode == "mse":
        norm = Normalization.from_mean_std(*cfg.normalization, net.input_shape[-1])
        ranges = calibration.ranges(dataclasses.replace(net, normalization=norm), raw, cfg)
    script, notes = optimizing.script(net, cfg, ranges)
    with hailo_sdk.sdk_call(f"{har_path}: load_model_script refused the generated script"):
        runner.load_model_script(script)
    with hailo_sdk.sdk_records() as records, hailo_sdk.sdk_call(f"{har_path}: runner.optimize failed"):
        runner.optimize(raw)
    hailo_sdk.save_har(runner, out_har_path)
    messages = [" ".join(r.getMessage().split()) for r in records]
    applied, more = optimizing.applied(script, cfg, messages, hailo_sdk.gpu_available())
    warnings = list(dict.fromkeys(m for r, m in zip(records, messages) if r.levelno >= logging.WARNING))
    warnings += notes + more
    for w in warnings:
        log.warning("optimize: %s", w)
    return {"model_script": script, "warnings": warnings, "applied": applied,
            "optimization_level_reduced_to": applied["optimization_level"] if applied["reduced"] else None,
            "calibration": {"images": int(len(raw)), "min": float(raw.min()), "max": float(raw.max())}}


def compile(har_path, hef_path, hw_arch: str) -> dict:
    """runner.compile() -> HEF bytes, written atomically; the compiled HAR saved beside it."""
    sdk = hailo_sdk.load_sdk()
    hailo_sdk.check_versions(hw_arch, dfc=sdk.version)
    runner = hailo_sdk.open_runner(sdk, har_path, hw_arch)
    hailo_sdk.expect_state(runner, (sdk.States.QUANTIZED_MODEL,), har_path)
    with hailo_sdk.sdk_call(f"{har_path}: runner.compile failed"):
        hef = runner.compile()
    if not isinstance(hef, (bytes, bytearray)) or not hailo_hef.is_hailo_hef(hef):
        raise PipelineError(f"{har_path}: runner.compile() returned {type(hef).__name__} "
                            f"{bytes(hef[:4]) if isinstance(hef, (bytes, bytearray)) else ''!r}, not HEF bytes")
    write_bytes(hef_path, bytes(hef))
    hailo_sdk.save_har(runner, compiled_har_path(hef_path))
    with hailo_sdk.sdk_call(f"{har_path}: reading the HN"):
        hn, script = runner.get_hn_dict(), runner.model_script
    report = hn_view.compile_report(hn, script, har_path)
    info = _hef_info(hef_path)
    if info is not None:
        report["hef"] = {"hw_arch": info.hw_arch, "compatible": info.compatible_archs,
                         "sdk_version": info.sdk_version, "bytes": os.path.getsize(hef_path),
                         "contexts": sum(g.contexts for g in info.network_groups)}
    return report


def _emulate(har_path, x: np.ndarray, context: str) -> np.ndarray:
    sdk = hailo_sdk.load_sdk()
    runner = hailo_sdk.open_runner(sdk, har_path)
    native = context == "SDK_NATIVE"
    states = (sdk.States.HAILO_MODEL,) if native else (sdk.States.QUANTIZED_MODEL, sdk.States.COMPILED_MODEL)
    hailo_sdk.expect_state(runner, states, har_path)
    with hailo_sdk.sdk_call(f"{har_path}: reading the HN"):
        hn, script = runner.get_hn_dict(), runner.model_script
    if not native and script.strip():  # optimize() loaded a normalization; check it is still there
        optimizing.check_normalization(script, None, f"{har_path}: model script")
    data = _images(x, hn_view.input_shape(hn), f"{context} input", raw=not native)
    with hailo_sdk.sdk_call(f"{har_path}: {context} inference failed"):
        with runner.infer_context(getattr(sdk.InferenceContext, context)) as ctx:
            out = runner.infer(ctx, data)
    out = out[0] if isinstance(out, (list, tuple)) else out
    return np.asarray(out, np.float32).reshape(len(x), -1)


def infer_quantized(har_path, raw: np.ndarray) -> np.ndarray:
    """The quantized HAR in the SDK's emulator (SDK_QUANTIZED): raw pixels 0-255 -> logits."""
    return _emulate(har_path, raw, "SDK_QUANTIZED")


def infer_fp_optimized(har_path, raw: np.ndarray) -> np.ndarray:
    """The quantized HAR's float model with the script applied (SDK_FP_OPTIMIZED): raw pixels -> logits."""
    return _emulate(har_path, raw, "SDK_FP_OPTIMIZED")


def infer_native(har_path, x: np.ndarray) -> np.ndarray:
    """The parsed HAR as translated (SDK_NATIVE: no model script, input in the model's domain)."""
    return _emulate(har_path, x, "SDK_NATIVE")


def _hef_info(hef_path):
    """hailo_hef's reading of a real HEF, or None: the file is the SDK's and HailoRT checks it; this
    project's reader may lag a newer HEF version or the SDK venv's protobuf."""
    try:
        return hailo_hef.read(hef_path)
    except (PipelineError, ImportError, AttributeError) as exc:
        log.warning("%s: not described (%s: %s)", hef_path, type(exc).__name__, exc)
        return None


def infer_compiled(hef_path, raw: np.ndarray) -> np.ndarray:
    """The HEF on a Hailo device through HailoRT (`device`), FLOAT32 streams: raw pixels 0-255 -> logits."""
    hailo_sdk.load_hailort()
    try:
        with open(hef_path, "rb") as f:
            magic = f.read(4)
    except FileNotFoundError:
        raise PipelineError(f"{hef_path}: file not found") from None
    if not hailo_hef.is_hailo_hef(magic):
        raise PipelineError(f"{hef_path}: not a Hailo HEF (magic {magic!r}); re-run the compile stage "
                            "with backend: hailo")
    info = _hef_info(hef_path)
    data = _images(raw, raw.shape[1:] if isinstance(raw, np.ndarray) else (), f"{hef_path}: input", raw=True)
    return device.run(hef_path, data, info)


def analyze_noise(har_path, qhar_path, raw: np.ndarray) -> dict:
    """Not wired to the SDK's `runner.analyze_noise` yet: one clear error."""
    raise PipelineError("the analyze_noise stage has no hailo backend yet (the SDK's runner.analyze_noise is not "
                        "wired in); run it with backend: emulator")
