"""The hailo backend: the same stages through Hailo's Dataflow Compiler (DFC) and HailoRT.

Selected with `backend: hailo` in params.yaml; the stages call the functions below exactly as they
call the emulator's.  Each wraps the SDK's documented Python API (the DFC's ClientRunner, HailoRT's
hailo_platform):

    parse            ClientRunner(hw_arch) -> translate_tf_model(model.tflite, start/end nodes,
                     tensor_shapes) -> save_har.  Node names come from the TFLite file; a trailing
                     SOFTMAX is cut off (the end node is its input), so every output is logits.
    optimize         load_model_script(model_script.render(...)) -> optimize(NHWC float32 raw
                     pixels 0-255) -> save_har; the SDK's own warnings are returned under "warnings".
    compile          compile() -> bytes -> the .hef; the compiled HAR is saved beside it as
                     `<hef stem>_compiled.har`; the report has `formats.compile_report`'s layout.
    infer_quantized  infer_context(SDK_QUANTIZED) + infer (also infer_fp_optimized, infer_native).
    infer_compiled   HailoRT on a device: VDevice, HEF, ConfigureParams, FLOAT32 vstreams,
                     InferVStreams inside network_group.activate().

Input convention: the stages pass images in [0, 1] (pixels / 255, `data.to_float`).  The model
script carries `normalization([0], [255])`, so everything handed to the SDK or the device is raw
pixels, 255 * x, as a deployed camera pipeline would feed it.  Optimize refuses a script whose
normalization says otherwise.  Layers are named `dense<i>` in params.yaml and reports (as the
emulator names them) and mapped to the SDK's own HN names (`fc<i>`) in the model script.

Without the SDK, `check_available()` raises one PipelineError saying what to install and where.
All SDK failures become one-line PipelineErrors; HARs and HEFs are written atomically (that
plumbing, with the install and version checks, is in `sdk`).
Not tested against the real SDK here: see docs/hailo-backend.md and `bench/hailo_e2e.py`.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import os
import re
import time

import numpy as np

from hailopipe.backends import compiled_har_path
from hailopipe.backends.hailo import sdk as hailo_sdk
from hailopipe.errors import PipelineError
from hailopipe.fileio import write_bytes
from hailopipe.formats import compile_report, hailo_hef, tflite
from hailopipe.network import Dense, Network
from hailopipe.quantization import calibration, model_script
from hailopipe.quantization.config import OptimizeConfig

log = logging.getLogger(__name__)

PRECISION_MODES = ("a8_w8", "a8_w4", "a16_w16", "a16_w8", "a8_w8_a16", "a16_w8_a16")  # the SDK's precision_mode values
PIXEL_MAX = 255.0


# --- the HN as the adapter needs it ----------------------------------------------------------

KERNEL_TYPES = ("dense", "conv", "dw", "deconv")


def _kernel_layers(hn: dict, source) -> list[tuple[str, dict, list[int]]]:
    """(scoped name, layer, kernel shape [..., in, out]) of each layer with weights, walking the HN
    chain from its input layer."""
    layers = hn.get("layers") if isinstance(hn, dict) else None
    inputs = [n for n, spec in (layers or {}).items() if spec.get("type") == "input_layer"]
    if len(inputs) != 1:
        raise PipelineError(f"{source}: the hailo backend handles one input layer, the HN has {len(inputs)}")
    chain, current = [], inputs[0]
    for _ in range(len(layers)):
        nxt = layers[current].get("output") or []
        if not nxt:
            break
        if len(nxt) != 1 or nxt[0] not in layers:
            raise PipelineError(f"{source}: HN layer {current} does not feed a single next layer; "
                                "the hailo backend handles chains of layers")
        current, layer = nxt[0], layers[nxt[0]]
        params = layer.get("params", {})
        if layer.get("type") in KERNEL_TYPES or "kernel_shape" in params:
            shape = params.get("kernel_shape") or [int(np.prod(layer["input_shapes"][0][1:])),
                                                   layer["output_shapes"][0][-1]]
            chain.append((current, layer, [int(d) for d in shape]))
    else:
        raise PipelineError(f"{source}: the HN graph has a cycle")
    if not chain:
        raise PipelineError(f"{source}: the HN has no layer with weights")
    return chain


def _float_network(runner, source) -> Network:
    """The parsed float network, named as the SDK names it (for the model script)."""
    with hailo_sdk.sdk_call(f"{source}: reading the HN and params"):
        hn, params = runner.get_hn_dict(), dict(runner.get_params())
    dense = []
    for name, layer, _ in _kernel_layers(hn, source):
        kernel, bias = params.get(f"{name}/kernel:0"), params.get(f"{name}/bias:0")
        if kernel is None or bias is None:
            raise PipelineError(f"{source}: params {name}/kernel:0 or bias:0 missing")
        kernel = np.asarray(kernel, np.float32)
        dense.append(Dense(name.split("/")[-1], kernel.reshape(-1, kernel.shape[-1]),
                           np.asarray(bias, np.float32), layer.get("params", {}).get("activation", "linear")))
    first = next(spec for spec in hn["layers"].values() if spec["type"] == "input_layer")
    return Network(hn.get("name", "net"), tuple(first["output_shapes"][0][1:]), dense)


# --- model script ----------------------------------------------------------------------------

_NORMALIZATION = re.compile(r"normalization\(\s*\[([^\]]*)\]\s*,\s*\[([^\]]*)\]")
_QUANT_PARAM = re.compile(r"^\s*quantization_param\(\s*(\[[^\]]*\]|\{[^}]*\}|[^,]+),(.*)\)\s*$")


def _check_normalization(script: str, source) -> None:
    """The script must turn raw pixels 0-255 into the [0, 1] the model was trained on."""
    found = _NORMALIZATION.findall(script)
    means = [float(v) for m, _ in found for v in m.split(",") if v.strip()]
    stds = [float(v) for _, s in found for v in s.split(",") if v.strip()]
    if len(found) != 1 or any(m != 0 for m in means) or any(s != PIXEL_MAX for s in stds):
        got = "; ".join(f"normalization([{m}], [{s}])" for m, s in found) or "no normalization"
        raise PipelineError(f"{source}: backend hailo feeds the SDK raw pixels 0-255 and needs "
                            f"normalization([0], [255]) in the model script (optimize.input_range "
                            f"[0.0, 1.0]); the script has {got}")


def _precision_modes(script: str, names: list[str]) -> dict[str, str]:
    """SDK layer name -> precision_mode set by the script's quantization_param lines (else a8_w8)."""
    modes = dict.fromkeys(names, "a8_w8")
    for line in script.splitlines():
        m = _QUANT_PARAM.match(line)
        mode = re.search(r"precision_mode\s*=\s*(\w+)", m.group(2)) if m else None
        if mode:
            for pattern in m.group(1).strip("[]{} ").split(","):
                for name in fnmatch.filter(names, pattern.strip().split("/")[-1]):
                    modes[name] = mode.group(1)
    return modes


def _pixels(x: np.ndarray, shape, what: str, scale: float = PIXEL_MAX) -> np.ndarray:
    """Stage images in [0, 1], NHWC float32 -> C-contiguous raw pixels 0-255 (x * scale) for the SDK."""
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 4 or tuple(x.shape[1:]) != tuple(shape):
        got = f"{getattr(x, 'dtype', type(x).__name__)}{list(getattr(x, 'shape', []))}"
        raise PipelineError(f"{what}: expected NHWC float32 [N, {', '.join(map(str, shape))}], got {got}")
    if len(x) == 0 or not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise PipelineError(f"{what}: images must be non-empty, finite and in [0, 1] (pixels / 255)")
    return np.ascontiguousarray(x * np.float32(scale), np.float32)


# --- the stages ------------------------------------------------------------------------------

def parse(tflite_path, har_path, net_name: str, hw_arch: str) -> dict:
    """translate_tf_model on the TFLite file, then save_har (state hailo_model)."""
    sdk = hailo_sdk.load_sdk()
    hailo_sdk.check_versions(hw_arch, dfc=sdk.version)
    start, shape, end = tflite.io_names(tflite_path)
    runner = hailo_sdk.open_runner(sdk, hw_arch=hw_arch)
    with hailo_sdk.sdk_call(f"{tflite_path}: translate_tf_model failed"):
        try:
            runner.translate_tf_model(str(tflite_path), net_name, start_node_names=[start],
                                      end_node_names=[end], tensor_shapes={start: shape})
        except sdk.ParsingError as exc:
            raise PipelineError(f"{tflite_path}: the Dataflow Compiler could not parse the model (start "
                                f"{start!r}, end {end!r}): {' '.join(str(exc).split())}") from None
    hailo_sdk.save_har(runner, har_path)
    net = _float_network(runner, har_path)
    return {**net.summary(), "sdk_names": _sdk_names(net), "start_node": start, "end_node": end,
            "sdk_version": sdk.version}


def _sdk_names(net: Network) -> dict[str, str]:
    """The pipeline's layer names (dense<i>, as params.yaml and the reports use them) -> the SDK's."""
    return {f"dense{i}": d.name for i, d in enumerate(net.layers, 1)}


def layer_names(har_path) -> list[str]:
    """The layers a precision mode can be set for (dense<i>, in order)."""
    sdk = hailo_sdk.load_sdk()
    runner = hailo_sdk.open_runner(sdk, har_path)
    return list(_sdk_names(_float_network(runner, har_path)))


def optimize(har_path, out_har_path, calib: np.ndarray, cfg: OptimizeConfig, hw_arch: str) -> dict:
    """load_model_script + optimize on raw-pixel calibration data, then save_har (quantized_model)."""
    sdk = hailo_sdk.load_sdk()
    hailo_sdk.check_versions(hw_arch, dfc=sdk.version)
    runner = hailo_sdk.open_runner(sdk, har_path, hw_arch)
    hailo_sdk.expect_state(runner, (sdk.States.HAILO_MODEL,), har_path)
    net = _float_network(runner, har_path)
    names = _sdk_names(net)
    unknown = sorted(set(cfg.precision) - set(names))
    bad = {k: v for k, v in cfg.precision.items() if v not in PRECISION_MODES}
    if unknown or bad:  # the stage checks params.yaml first: this guards the Python API
        raise PipelineError(f"precision: unknown layer(s) {unknown} (layers are {sorted(names)}) or mode(s) {bad} "
                         f"(modes are {', '.join(PRECISION_MODES)})")
    sdk_cfg = dataclasses.replace(cfg, precision={names[k]: v for k, v in cfg.precision.items()})
    raw = _pixels(calib, net.input_shape, "calibration data")
    ranges = calibration.ranges(net, calib, sdk_cfg) if sdk_cfg.clipping_mode == "mse" else None
    lines = model_script.render(net, sdk_cfg, ranges).splitlines()
    # comments are not documented SDK syntax: they are reported, not sent
    notes = [line.lstrip("# ") for line in lines if line.lstrip().startswith("#")]
    script = "".join(f"{line}\n" for line in lines if line.strip() and not line.lstrip().startswith("#"))
    _check_normalization(script, "the generated model script")
    with hailo_sdk.sdk_call(f"{har_path}: load_model_script refused the generated script"):
        runner.load_model_script(script)
    with hailo_sdk.sdk_warnings() as records, hailo_sdk.sdk_call(f"{har_path}: runner.optimize failed"):
        runner.optimize(raw)
    hailo_sdk.save_har(runner, out_har_path)
    warnings = list(dict.fromkeys(" ".join(r.getMessage().split()) for r in records))
    warnings += [f"model script comment, not sent to the SDK: {n}" for n in notes]
    for w in warnings:
        log.warning("optimize: SDK warning: %s", w)
    reduced = [int(m) for w in warnings for m in re.findall(r"Reducing optimization level to (\d+)", w)]
    return {"model_script": script, "warnings": warnings,
            "optimization_level_reduced_to": reduced[-1] if reduced else None,
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
    return _compile_report(hn, script, hef_path, har_path)


def _compile_report(hn: dict, script: str, hef_path, source) -> dict:
    """The compile report (`formats.compile_report`, layers keyed dense<i>) from the HN's kernel
    shapes and the script's precision modes, plus what the HEF itself says (`formats.hailo_hef`)."""
    kernels = _kernel_layers(hn, source)
    modes = _precision_modes(script, [n.split("/")[-1] for n, _, _ in kernels])
    layers = {}
    for i, (name, layer, kshape) in enumerate(kernels, 1):
        out_shape = layer["output_shapes"][0]
        mode = modes[name.split("/")[-1]]
        w_bits = int(re.match(r"a\d+_w(\d+)", mode).group(1))
        fan_in, cout = int(np.prod(kshape[:-1])), int(kshape[-1])
        layers[f"dense{i}"] = compile_report.layer(
            [fan_in], [cout], fan_in * cout * int(np.prod(out_shape[1:-1])), fan_in * cout * w_bits // 8, cout * 4,
            mode, layer.get("params", {}).get("activation", "linear"), sdk_name=name.split("/")[-1])
    report = compile_report.build(hn.get("name"), layers)
    info = _hef_info(hef_path)
    if info is None:
        return report
    report["hef"] = {"hw_arch": info.hw_arch, "compatible": info.compatible_archs, "sdk_version": info.sdk_version,
                     "bytes": os.path.getsize(hef_path), "contexts": sum(g.contexts for g in info.network_groups)}
    return report


def _emulate(har_path, x: np.ndarray, context: str, raw: bool) -> np.ndarray:
    sdk = hailo_sdk.load_sdk()
    runner = hailo_sdk.open_runner(sdk, har_path)
    states = ((sdk.States.HAILO_MODEL,) if context == "SDK_NATIVE"
              else (sdk.States.QUANTIZED_MODEL, sdk.States.COMPILED_MODEL))
    hailo_sdk.expect_state(runner, states, har_path)
    with hailo_sdk.sdk_call(f"{har_path}: reading the HN"):
        hn, script = runner.get_hn_dict(), runner.model_script
    first = next(layer for layer in hn["layers"].values() if layer["type"] == "input_layer")
    shape = first["output_shapes"][0][1:]
    if raw and script.strip():  # optimize() loaded normalization([0], [255]); check it is still there
        _check_normalization(script, f"{har_path}: model script")
    data = _pixels(x, shape, f"{context} input", PIXEL_MAX if raw else 1.0)
    with hailo_sdk.sdk_call(f"{har_path}: {context} inference failed"):
        with runner.infer_context(getattr(sdk.InferenceContext, context)) as ctx:
            out = runner.infer(ctx, data)
    out = out[0] if isinstance(out, (list, tuple)) else out
    return np.asarray(out, np.float32).reshape(len(x), -1)


def infer_quantized(har_path, x: np.ndarray) -> np.ndarray:
    """The quantized HAR in the SDK's emulator (SDK_QUANTIZED): images in [0, 1] -> logits."""
    return _emulate(har_path, x, "SDK_QUANTIZED", raw=True)


def infer_fp_optimized(har_path, x: np.ndarray) -> np.ndarray:
    """The quantized HAR's float model with the script applied (SDK_FP_OPTIMIZED)."""
    return _emulate(har_path, x, "SDK_FP_OPTIMIZED", raw=True)


def infer_native(har_path, x: np.ndarray) -> np.ndarray:
    """The parsed HAR as translated (SDK_NATIVE: no model script, input in [0, 1])."""
    return _emulate(har_path, x, "SDK_NATIVE", raw=False)


def _hef_info(hef_path):
    """hailo_hef's reading of a real HEF, or None: the file is the SDK's and HailoRT checks it; this
    project's reader may lag a newer HEF version or the SDK venv's protobuf."""
    try:
        return hailo_hef.read(hef_path)
    except (PipelineError, ImportError, AttributeError) as exc:
        log.warning("%s: not described (%s: %s)", hef_path, type(exc).__name__, exc)
        return None


def infer_compiled(hef_path, x: np.ndarray) -> np.ndarray:
    """The HEF on a Hailo device through HailoRT, FLOAT32 vstreams: images in [0, 1] -> logits."""
    hp = hailo_sdk.load_hailort()
    try:
        with open(hef_path, "rb") as f:
            magic = f.read(4)
    except FileNotFoundError:
        raise PipelineError(f"{hef_path}: file not found") from None
    if not hailo_hef.is_hailo_hef(magic):
        raise PipelineError(f"{hef_path}: not a Hailo HEF (magic {magic!r}); re-run the compile stage "
                            "with backend: hailo")
    info = _hef_info(hef_path)
    arch = info.hw_arch if info is not None else ""
    if arch.startswith(("HAILO8", "HAILO10", "HAILO15")):  # check against a params hw_arch of its family
        family = "hailo8" if arch.startswith("HAILO8") else "hailo10h"
        hailo_sdk.check_versions(family, hailort=hailo_sdk.installed_version(hp, "hailort"),
                                 where=f"{hef_path}: a HEF for {arch}")
    with hailo_sdk.sdk_call("HailoRT: Device.scan failed"):
        devices = hp.Device.scan()
    if not devices:
        raise PipelineError(f"{hef_path}: no Hailo device was found (hailo_platform.Device.scan() is "
                            "empty); running the HEF needs a Hailo device with its driver loaded")
    with hailo_sdk.sdk_call(f"{hef_path}: HailoRT inference failed"):
        hef = hp.HEF(str(hef_path))
        in_info, out_info = hef.get_input_vstream_infos()[0], hef.get_output_vstream_infos()[0]
        data = _pixels(x, in_info.shape, f"{hef_path}: input {in_info.name}")
        with hp.VDevice() as target:
            params = hp.ConfigureParams.create_from_hef(hef=hef, interface=hp.HailoStreamInterface.PCIe)
            network_group = target.configure(hef, params)[0]
            ivp = hp.InputVStreamParams.make(network_group, format_type=hp.FormatType.FLOAT32)
            ovp = hp.OutputVStreamParams.make(network_group, format_type=hp.FormatType.FLOAT32)
            start = time.perf_counter()
            with hp.InferVStreams(network_group, ivp, ovp) as pipeline, \
                    network_group.activate(network_group.create_params()):
                out = pipeline.infer({in_info.name: data})[out_info.name]
            seconds = time.perf_counter() - start
    log.info("infer_compiled: %d images on %s in %.3f s (%.0f frames/s)", len(x), devices[0], seconds,
             len(x) / max(seconds, 1e-9))
    return np.asarray(out, np.float32).reshape(len(x), -1)


def analyze_noise(har_path, qhar_path, x: np.ndarray) -> dict:
    """Not wired to the SDK's `runner.analyze_noise` yet: one clear error."""
    raise PipelineError("the analyze_noise stage has no hailo backend yet (the SDK's runner.analyze_noise is not "
                        "wired in); run it with backend: emulator")
