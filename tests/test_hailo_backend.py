"""The hailo backend (hailopipe/backends/hailo/: adapter.py, sdk.py) against the SDK stand-in in tests/fake_hailo.

The real Dataflow Compiler and HailoRT cannot be installed here, so these tests check the adapter
against fake `hailo_sdk_client` / `hailo_platform` packages that record every call and refuse what
the real ones refuse (state order, hw_arch, model-script spelling, NHWC float32 data, vstream
names and formats, network-group activation).  The first group checks that the stand-in does
refuse those things, so the adapter tests after it can fail.  Without the stand-in on the path,
the backend must stop with one clear message, and the emulator must never import the SDK.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys

import flatbuffers
import numpy as np
import pytest
import yaml

from hailopipe import backends, data, network
from hailopipe.backends.emulator import compile as emulator_compile
from hailopipe.errors import PipelineError
from hailopipe.formats import ehef, har
from hailopipe.quantization.config import OptimizeConfig
from tests.conftest import ROOT

FAKE = ROOT / "tests" / "fake_hailo"
SDK_MODULES = ("hailo_sdk_client", "hailo_platform", "fake_hailo_common")
IN_NAME = "serving_default_input:0"


# --- a TFLite file without TensorFlow ---------------------------------------------------------

def tflite_bytes(net: network.Network, softmax: bool = False, tanh: bool = False) -> bytes:
    """A float TFLite flatbuffer for `net` (Flatten -> FULLY_CONNECTED chain [-> SOFTMAX]), built with
    LiteRT's schema object API, as the Keras converter lays it out."""
    from ai_edge_litert import schema_py_generated as s

    tensors, buffers, ops, codes = [], [s.BufferT()], [], []

    def tensor(name, shape, values=None, ttype=s.TensorType.FLOAT32):
        buf = s.BufferT()
        if values is not None:
            buf.data = np.frombuffer(np.ascontiguousarray(values).tobytes(), np.uint8)
        buffers.append(buf)
        tensors.append(s.TensorT(shape=list(shape), type=ttype, buffer=len(buffers) - 1, name=name))
        return len(tensors) - 1

    def op(code, inputs, outputs, opts_type=0, opts=None):
        if code not in codes:
            codes.append(code)
        ops.append(s.OperatorT(opcodeIndex=codes.index(code), inputs=inputs, outputs=outputs,
                               builtinOptionsType=opts_type, builtinOptions=opts))

    x = tensor(IN_NAME, [1, *net.input_shape])
    flat = tensor("mnist/flatten/Reshape", [1, net.input_size])
    op(s.BuiltinOperator.RESHAPE, [x, tensor("mnist/flatten/shape", [2], np.array([-1, net.input_size], "<i4"),
                                             s.TensorType.INT32)], [flat])
    cur = flat
    for i, layer in enumerate(net.layers, 1):
        opts = s.FullyConnectedOptionsT()
        opts.fusedActivationFunction = (s.ActivationFunctionType.RELU if layer.activation == "relu"
                                        else s.ActivationFunctionType.NONE)
        w = tensor(f"mnist/dense{i}/MatMul", layer.kernel.T.shape, layer.kernel.T.astype("<f4"))
        b = tensor(f"mnist/dense{i}/BiasAdd", layer.bias.shape, layer.bias.astype("<f4"))
        out = tensor(f"mnist/dense{i}/out", [1, layer.kernel.shape[1]])
        op(s.BuiltinOperator.FULLY_CONNECTED, [cur, w, b], [out], s.BuiltinOptions.FullyConnectedOptions, opts)
        cur = out
        if tanh and i == 1:
            cur2 = tensor("mnist/tanh", [1, layer.kernel.shape[1]])
            op(s.BuiltinOperator.TANH, [cur], [cur2])
            cur = cur2
    if softmax:
        probs = tensor("mnist/softmax", [1, net.num_outputs])
        opts = s.SoftmaxOptionsT()
        opts.beta = 1.0
        op(s.BuiltinOperator.SOFTMAX, [cur], [probs], s.BuiltinOptions.SoftmaxOptions, opts)
        cur = probs
    model = s.ModelT(version=3, description="test", buffers=buffers,
                     operatorCodes=[s.OperatorCodeT(builtinCode=c, deprecatedBuiltinCode=min(c, 127)) for c in codes],
                     subgraphs=[s.SubGraphT(tensors=tensors, inputs=[x], outputs=[cur], operators=ops, name="main")])
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


@pytest.fixture(scope="module")
def tflite_path(fitted_net, tmp_path_factory):
    path = tmp_path_factory.mktemp("tflite") / "model.tflite"
    path.write_bytes(tflite_bytes(fitted_net))
    return path


def test_tflite_builder_runs_in_litert(fitted_net, tflite_path, val_images):
    from hailopipe import evaluate

    x = val_images[0][:32]
    np.testing.assert_allclose(evaluate.tflite_logits(tflite_path, x), network.forward(fitted_net, x), atol=1e-4)


# --- the stand-in on the path -----------------------------------------------------------------

def _forget_sdk():
    for name in list(sys.modules):
        if name.split(".")[0] in SDK_MODULES:
            del sys.modules[name]


@pytest.fixture
def fake(monkeypatch):
    """Put tests/fake_hailo on sys.path with the default environment; `fake(VAR=value)` re-imports
    the stand-in with changed environment variables.  Yields that function."""
    for var in ("FAKE_HAILO_DFC_VERSION", "FAKE_HAILORT_VERSION", "FAKE_HAILO_DEVICES", "FAKE_HAILO_GPU",
                "FAKE_HAILO_LOG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.syspath_prepend(str(FAKE))

    def configure(**env):
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        _forget_sdk()
        importlib.invalidate_caches()
        importlib.import_module("hailo_sdk_client")

    configure()
    yield configure
    _forget_sdk()


def calls(kind=None) -> list[dict]:
    log = importlib.import_module("fake_hailo_common").CALLS
    return [c for c in log if kind is None or c["call"] == kind]


def sdk():
    return importlib.import_module("hailo_sdk_client")


@pytest.fixture
def cfg():
    return OptimizeConfig(calib_size=200)


@pytest.fixture
def parsed(fake, tflite_path, tmp_path):
    from hailopipe.backends import hailo

    hailo.parse(tflite_path, tmp_path / "m.har", "mnist", "hailo8")
    return tmp_path / "m.har"


@pytest.fixture
def quantized(parsed, val_images, cfg, tmp_path):
    from hailopipe.backends import hailo

    hailo.optimize(parsed, tmp_path / "q.har", val_images[0][:200], cfg, "hailo8")
    return tmp_path / "q.har"


# --- the stand-in refuses what the real toolchain refuses --------------------------------------

def test_stand_in_enforces_state_order(fake, tflite_path, val_images):
    runner = sdk().ClientRunner(hw_arch="hailo8")
    with pytest.raises(Exception, match="optimize needs state HAILO_MODEL"):
        runner.optimize(val_images[0][:8] * 255)
    with pytest.raises(Exception, match="compile needs state QUANTIZED_MODEL"):
        runner.compile()
    runner.translate_tf_model(str(tflite_path), "mnist", start_node_names=[IN_NAME])
    with pytest.raises(Exception, match="compile needs state QUANTIZED_MODEL"):
        runner.compile()
    with pytest.raises(Exception, match="translate_tf_model needs state UNINITIALIZED"):
        runner.translate_tf_model(str(tflite_path), "mnist")


@pytest.mark.parametrize("data, match", [
    (lambda x: np.transpose(x, (0, 3, 1, 2)), "this looks NCHW"),
    (lambda x: x.astype(np.float64), "expected float32"),
    (lambda x: x[..., 0], "does not match input layer"),
    (lambda x: {"mnist/input": x}, "are not the input layers"),
])
def test_stand_in_refuses_bad_calibration_data(fake, tflite_path, val_images, data, match):
    runner = sdk().ClientRunner(hw_arch="hailo8")
    runner.translate_tf_model(str(tflite_path), "mnist")
    with pytest.raises(Exception, match=match):
        runner.optimize(data(val_images[0][:8] * np.float32(255)))


@pytest.mark.parametrize("line, match", [
    ("normalisation1 = normalization([0], [255])", None),  # fine: any assigned name
    ("model_optimization_flavour(optimization_level=0)", "unknown command"),
    ("model_optimization_flavor(optimisation_level=0)", "unknown argument 'optimisation_level'"),
    ("model_optimization_flavor(optimization_level=7)", "bad value"),
    ("model_optimization_config(calibrate, calibset_size=64)", "unknown model_optimization_config item"),
    ("quantization_param(mnist/dense3, precision_mode=a16_w16)", "unknown layer 'mnist/dense3'"),
    ("quantization_param(fc3, precision_mode=a32_w32)", "bad value"),
    ("quantization_param({fc*}, precision_mode=a16_w16)", None),
    ("logits_layer1 = logits_layer(mnist/fc3, softmax, -1, cpu)", None),
    ("logits_layer1 = logits_layer(mnist/fc3, sigmoid, -1, cpu)", "softmax|argmax"),
    ("post_quantization_optimization(finetune, policy=enabled, loss_layer_names=[mnist/fc9])", "unknown layer"),
    ("# a comment", "not a command"),
])
def test_stand_in_checks_model_script_spelling(fake, tflite_path, line, match):
    runner = sdk().ClientRunner(hw_arch="hailo8")
    runner.translate_tf_model(str(tflite_path), "mnist")
    if match is None:
        runner.load_model_script(line)
    else:
        with pytest.raises(Exception, match=match):
            runner.load_model_script(line)


@pytest.mark.parametrize("version, arch, ok", [("3.27.0", "hailo8l", True), ("3.27.0", "hailo10h", False),
                                               ("5.1.0", "hailo15h", True), ("5.1.0", "hailo8", False),
                                               ("3.27.0", "hailo9", False)])
def test_stand_in_checks_hw_arch(fake, version, arch, ok):
    fake(FAKE_HAILO_DFC_VERSION=version)
    if ok:
        sdk().ClientRunner(hw_arch=arch)
    else:
        with pytest.raises(Exception, match="not supported by DFC"):
            sdk().ClientRunner(hw_arch=arch)


def test_stand_in_infer_needs_an_open_context(fake, quantized, val_images):
    runner = sdk().ClientRunner(har=str(quantized))
    with runner.infer_context(sdk().InferenceContext.SDK_QUANTIZED) as ctx:
        pass
    with pytest.raises(Exception, match="open `with runner.infer_context"):
        runner.infer(ctx, val_images[0][:4] * np.float32(255))


# --- without the SDK --------------------------------------------------------------------------

def test_without_sdk_one_clear_message():
    _forget_sdk()
    from hailopipe import backends

    with pytest.raises(PipelineError) as err:
        backends.get("hailo", "parse")
    msg = str(err.value)
    assert "\n" not in msg
    for part in ("hailo_sdk_client", "hailo_dataflow_compiler-", "hailort-", "hailo.ai/developer-zone",
                 "x86_64", "Python 3.10-3.11", "DFC 3.x", "backend: emulator"):
        assert part in msg, part


def test_broken_sdk_install_is_one_clear_error(fake, monkeypatch, tflite_path, tmp_path):
    from hailopipe.backends import hailo

    monkeypatch.setitem(sys.modules, "hailo_sdk_client.exposed_definitions", None)  # import raises ImportError
    with pytest.raises(PipelineError, match="hailo_sdk_client is installed but does not import .ModuleNotFoundError"):
        hailo.parse(tflite_path, tmp_path / "m.har", "mnist", "hailo8")


def test_a_dfc_that_moves_its_parsing_exception_is_not_a_broken_install(fake, monkeypatch, tflite_path, tmp_path):
    """`model_translator.exceptions` is an internal module: without it the SDK still parses."""
    from hailopipe.backends import hailo

    monkeypatch.setitem(sys.modules, "hailo_sdk_client.model_translator.exceptions", None)  # ImportError
    summary = hailo.parse(tflite_path, tmp_path / "m.har", "mnist", "hailo8")
    assert (tmp_path / "m.har").is_file() and summary["sdk_names"] == {"dense1": "fc1", "dense2": "fc2",
                                                                      "dense3": "fc3"}


def test_broken_hailort_is_one_clear_error(fake, monkeypatch, tmp_path):
    from hailopipe.backends import hailo

    monkeypatch.setitem(sys.modules, "hailo_platform", None)  # import raises ImportError
    with pytest.raises(PipelineError, match="needs HailoRT .hailo_platform., which does not import"):
        hailo.infer_compiled(tmp_path / "m.hef", np.zeros((1, 28, 28, 1), np.float32))


def test_emulator_never_imports_the_sdk(tmp_path, tflite_path, subset):
    """Even with the stand-in importable, the emulator's functions leave the SDK modules unloaded."""
    np.savez(tmp_path / "x.npz", x=data.to_float(subset["x_val"][:100]))
    code = f"""
import sys, numpy as np
from hailopipe import backends
from hailopipe.quantization.config import OptimizeConfig
e = lambda step: backends.get("emulator", step)
x = np.load({str(tmp_path / "x.npz")!r})["x"]
d = {str(tmp_path)!r}
e("parse").parse({str(tflite_path)!r}, d + "/m.har", "mnist", "hailo8")
e("optimize").optimize(d + "/m.har", d + "/q.har", x, OptimizeConfig(calib_size=100), "hailo8")
e("compile").compile(d + "/q.har", d + "/m.hef", "hailo8")
e("evaluate").infer_quantized(d + "/q.har", x); e("evaluate").infer_compiled(d + "/m.hef", x)
e("noise").analyze_noise(d + "/m.har", d + "/q.har", x)
bad = [m for m in sys.modules if m.startswith(("hailo_sdk_client", "hailo_platform", "fake_hailo"))]
assert not bad, bad
import importlib.util
assert importlib.util.find_spec("hailo_sdk_client")  # it was importable: an import would have shown
"""
    env = dict(os.environ, PYTHONPATH=str(FAKE))
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


# --- parse ------------------------------------------------------------------------------------

@pytest.mark.parametrize("softmax", [False, True])
def test_parse_translates_with_nodes_from_the_tflite_file(fake, fitted_net, tmp_path, softmax):
    from hailopipe.backends import hailo

    path = tmp_path / "model.tflite"
    path.write_bytes(tflite_bytes(fitted_net, softmax=softmax))
    summary = hailo.parse(path, tmp_path / "models" / "m.har", "mnist", "hailo8l")
    assert [c["call"] for c in calls()] == ["ClientRunner", "translate_tf_model", "save_har", "get_hn_dict",
                                            "get_params"]
    (t,) = calls("translate_tf_model")
    assert t["start_node_names"] == [IN_NAME]
    assert t["end_node_names"] == ["mnist/dense3/out"]  # the logits, also when a SOFTMAX follows
    assert t["tensor_shapes"] == {IN_NAME: [1, 28, 28, 1]}
    assert calls("ClientRunner")[0]["hw_arch"] == "hailo8l"
    assert calls("save_har")[0]["path"] != str(tmp_path / "models" / "m.har")  # a temporary name, then renamed
    assert sorted(os.listdir(tmp_path / "models")) == ["m.har"]
    assert summary["sdk_names"] == {"dense1": "fc1", "dense2": "fc2", "dense3": "fc3"}
    assert summary["params"] == sum(layer.kernel.size + layer.bias.size for layer in fitted_net.layers)
    assert har.load(tmp_path / "models" / "m.har").state == "hailo_model"


def test_parse_failure_is_one_clear_error(fake, fitted_net, tmp_path):
    from hailopipe.backends import hailo

    path = tmp_path / "tanh.tflite"
    path.write_bytes(tflite_bytes(fitted_net, tanh=True))
    with pytest.raises(PipelineError) as err:
        hailo.parse(path, tmp_path / "m.har", "mnist", "hailo8")
    msg = str(err.value)
    assert msg.startswith(f"{path}: the Dataflow Compiler could not parse the model") and "TANH" in msg
    assert "\n" not in msg and not (tmp_path / "m.har").exists()


@pytest.mark.parametrize("arch, dfc, ok", [("hailo8", "3.31.0", True), ("hailo8r", "5.2.0", False),
                                           ("hailo10h", "5.2.0", True), ("hailo15h", "3.33.0", False)])
def test_hw_arch_checked_against_the_sdk_major(fake, tflite_path, tmp_path, arch, dfc, ok):
    from hailopipe.backends import hailo

    fake(FAKE_HAILO_DFC_VERSION=dfc)
    if ok:
        hailo.parse(tflite_path, tmp_path / "m.har", "mnist", arch)
        return
    with pytest.raises(PipelineError) as err:
        hailo.parse(tflite_path, tmp_path / "m.har", "mnist", arch)
    assert f"hw_arch {arch}" in str(err.value) and f"but {dfc} is installed" in str(err.value)
    assert calls("ClientRunner") == []  # refused before touching the SDK


# --- optimize ---------------------------------------------------------------------------------

def test_optimize_loads_the_generated_script_and_raw_pixels(fake, parsed, val_images, tmp_path):
    from hailopipe.backends import hailo

    cfg = OptimizeConfig(calib_size=200, precision={"dense3": "a16_w16"})
    summary = hailo.optimize(parsed, tmp_path / "q.har", val_images[0][:200], cfg, "hailo8")
    assert [c["call"] for c in calls()][-6:] == ["ClientRunner", "get_hn_dict", "get_params", "load_model_script",
                                                 "optimize", "save_har"]
    script = calls("load_model_script")[-1]["text"]
    assert "normalization1 = normalization([0], [255])" in script
    assert "quantization_param(mnist/fc3, precision_mode=a16_w16)" in script  # dense3 -> the SDK's fc3
    assert "calibset_size=200" in script and "#" not in script
    data_seen = calls("optimize")[-1]["data"]
    assert data_seen == {"type": "ndarray", "dtype": "float32", "shape": [200, 28, 28, 1], "c_contiguous": True,
                         "min": 0.0, "max": 255.0}
    assert summary["calibration"] == {"images": 200, "min": 0.0, "max": 255.0}
    assert har.load(tmp_path / "q.har").state == "quantized_model"


@pytest.mark.parametrize("gpu, level, reduced", [(False, 2, 0), (True, 2, None), (False, 0, None)])
def test_optimize_returns_the_sdks_warnings(fake, parsed, val_images, tmp_path, gpu, level, reduced):
    from hailopipe.backends import hailo

    if gpu:
        fake(FAKE_HAILO_GPU="1")
    cfg = OptimizeConfig(calib_size=200, optimization_level=level)
    summary = hailo.optimize(parsed, tmp_path / "q.har", val_images[0][:200], cfg, "hailo8")
    assert summary["optimization_level_reduced_to"] == reduced
    reducing = [w for w in summary["warnings"] if w.startswith("Reducing optimization level to 0")]
    assert bool(reducing) == (reduced is not None)
    if reducing:
        assert "less data than the recommended amount (1024)" in reducing[0]
    assert any("zero level of optimization" in w for w in summary["warnings"]) == (not gpu)


@pytest.mark.parametrize("change, match", [
    (dict(precision={"dense9": "a16_w16"}), "unknown layer"),
    (dict(precision={"dense3": "a4_w4"}), "mode"),
    (dict(input_range=(-1.0, 1.0)), "needs normalization\\(\\[0\\], \\[255\\]\\)"),
])
def test_optimize_refuses_what_the_sdk_path_cannot_do(fake, parsed, val_images, tmp_path, change, match):
    from hailopipe.backends import hailo

    cfg = OptimizeConfig(calib_size=200, **change)
    with pytest.raises(PipelineError, match=match):
        hailo.optimize(parsed, tmp_path / "q.har", val_images[0][:200], cfg, "hailo8")
    assert calls("optimize") == [] and not (tmp_path / "q.har").exists()


@pytest.mark.parametrize("bad", [lambda x: x * 255, lambda x: x.astype(np.float64), lambda x: x[..., 0]])
def test_optimize_checks_calibration_before_the_sdk(fake, parsed, val_images, tmp_path, cfg, bad):
    from hailopipe.backends import hailo

    with pytest.raises(PipelineError, match="calibration data"):
        hailo.optimize(parsed, tmp_path / "q.har", bad(val_images[0][:200]), cfg, "hailo8")


def test_optimize_and_compile_need_the_right_state(fake, parsed, quantized, val_images, tmp_path, cfg):
    from hailopipe.backends import hailo

    with pytest.raises(PipelineError, match="state QUANTIZED_MODEL, expected HAILO_MODEL"):
        hailo.optimize(quantized, tmp_path / "q2.har", val_images[0][:200], cfg, "hailo8")
    with pytest.raises(PipelineError, match="state HAILO_MODEL, expected QUANTIZED_MODEL"):
        hailo.compile(parsed, tmp_path / "m.hef", "hailo8")
    with pytest.raises(PipelineError, match="file not found"):
        hailo.compile(tmp_path / "missing.har", tmp_path / "m.hef", "hailo8")


# --- compile ----------------------------------------------------------------------------------

def test_compile_writes_the_hef_and_the_compiled_har(fake, quantized, tmp_path, val_images, cfg):
    from hailopipe.backends import hailo

    hef_path = tmp_path / "models" / "mnist.hef"
    report = hailo.compile(quantized, hef_path, "hailo8")
    assert [c["call"] for c in calls()][-5:] == ["ClientRunner", "compile", "save_har", "get_hn_dict", "model_script"]
    assert calls("ClientRunner")[-1] == {"call": "ClientRunner", "hw_arch": "hailo8", "har": str(quantized)}
    assert hef_path.read_bytes()[:4] == bytes([0x01, 0x48, 0x45, 0x46])
    assert backends.compiled_har_path(hef_path) == tmp_path / "models" / "mnist_compiled.har"
    assert har.load(tmp_path / "models" / "mnist_compiled.har").state == "compiled_model"
    assert sorted(os.listdir(hef_path.parent)) == ["mnist.hef", "mnist_compiled.har"]
    # the same figures as the emulator's report for the same network
    qnet = har.load(quantized).qnet
    expected = ehef.layer_report(qnet)
    assert report["total"] == expected["total"]
    assert {k: {f: v for f, v in layer.items() if f != "sdk_name"} for k, layer in report["layers"].items()} == \
        {f"dense{i}": layer for i, layer in enumerate(expected["layers"].values(), 1)}
    assert report["hef"]["hw_arch"] == "HAILO8P" and report["hef"]["compatible"] == ["HAILO8"]


# --- evaluate ---------------------------------------------------------------------------------

def test_infer_quantized_uses_the_sdk_emulator(fake, quantized, val_images, fitted_net):
    from hailopipe.backends import hailo

    x, y = val_images
    logits = hailo.infer_quantized(quantized, x)
    assert [c["call"] for c in calls()][-5:] == ["ClientRunner", "get_hn_dict", "model_script", "infer_context", "infer"]
    assert logits.shape == (len(x), 10) and logits.dtype == np.float32
    assert calls("infer_context")[-1]["context"] == "SDK_QUANTIZED"
    seen = calls("infer")[-1]["data"]
    assert (seen["dtype"], seen["shape"], seen["min"], seen["max"]) == ("float32", [len(x), 28, 28, 1], 0.0, 255.0)
    agree = (logits.argmax(1) == network.forward(fitted_net, x).argmax(1)).mean()
    assert agree > 0.97, agree
    float_logits = network.forward(fitted_net, x)
    np.testing.assert_allclose(hailo.infer_native(quantized.with_name("m.har"), x), float_logits, atol=1e-5)
    np.testing.assert_allclose(hailo.infer_fp_optimized(quantized, x), float_logits, atol=1e-4)
    assert calls("infer")[-1]["data"]["max"] == 255.0 and calls("infer")[-2]["data"]["max"] <= 1.0


def test_infer_compiled_without_a_device(fake, quantized, tmp_path, val_images):
    from hailopipe.backends import hailo

    hailo.compile(quantized, tmp_path / "m.hef", "hailo8")
    with pytest.raises(PipelineError) as err:
        hailo.infer_compiled(tmp_path / "m.hef", val_images[0])
    assert "no Hailo device was found" in str(err.value) and "\n" not in str(err.value)
    assert calls("VDevice") == []


def test_infer_compiled_on_a_device(fake, quantized, tmp_path, val_images):
    from hailopipe.backends import hailo

    hailo.compile(quantized, tmp_path / "m.hef", "hailo8")
    fake(FAKE_HAILO_DEVICES="0000:01:00.0")
    x = val_images[0]
    logits = hailo.infer_compiled(tmp_path / "m.hef", x)
    order = [c["call"] for c in calls()]
    assert order == ["Device.scan", "HEF", "VDevice", "ConfigureParams.create_from_hef", "VDevice.configure",
                     "InputVStreamParams.make", "OutputVStreamParams.make", "ConfiguredNetwork.activate",
                     "InferVStreams.infer"]
    assert calls("ConfigureParams.create_from_hef")[0]["interface"] == "PCIe"
    assert {c["format_type"] for c in calls() if c["call"].endswith("VStreamParams.make")} == {"FLOAT32"}
    infer = calls("InferVStreams.infer")[0]
    assert infer["active"] is True
    assert infer["data"]["keys"] == ["mnist/input_layer1"]
    (seen,) = infer["data"]["values"]
    assert (seen["dtype"], seen["shape"], seen["max"], seen["c_contiguous"]) == ("float32", [len(x), 28, 28, 1],
                                                                                 255.0, True)
    np.testing.assert_array_equal(logits, hailo.infer_quantized(quantized, x))


@pytest.mark.parametrize("arch, hailort", [("hailo8", "5.2.0")])
def test_infer_compiled_checks_the_hailort_major(fake, quantized, tmp_path, val_images, arch, hailort):
    from hailopipe.backends import hailo

    hailo.compile(quantized, tmp_path / "m.hef", arch)
    fake(FAKE_HAILORT_VERSION=hailort, FAKE_HAILO_DEVICES="0")
    with pytest.raises(PipelineError, match=f"a HEF for HAILO8P .Hailo-8 family. needs the HailoRT "
                                            f".hailo_platform. 4.x, but {hailort} is installed"):
        hailo.infer_compiled(tmp_path / "m.hef", val_images[0])


def test_infer_compiled_refuses_the_emulators_file(fake, quantized, tmp_path, val_images):
    from hailopipe.backends import hailo

    emulator_compile.compile(quantized, tmp_path / "e.hef", "hailo8")  # the fake's HAR is this project's format
    with pytest.raises(PipelineError, match="not a Hailo HEF"):
        hailo.infer_compiled(tmp_path / "e.hef", val_images[0])


# --- the stages, as DVC runs them, with the stand-in on PYTHONPATH ----------------------------

@pytest.fixture(scope="module")
def stage_repo(tmp_path_factory, fitted_net, subset):
    """A copy of the repo with backend: hailo, a small data/mnist.npz and a TFLite model."""
    dest = tmp_path_factory.mktemp("hailo_stages") / "repo"
    for sub in ("hailopipe", "stages"):
        shutil.copytree(ROOT / sub, dest / sub, ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params.update(backend="hailo", hw_arch="hailo8")
    params["calibration"]["size"] = 200
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (dest / "data").mkdir()
    np.savez(dest / "data" / "mnist.npz", **subset)
    (dest / "models" / "float").mkdir(parents=True)
    (dest / "models" / "float" / "model.tflite").write_bytes(tflite_bytes(fitted_net))
    return dest


def run_stage(repo, stage, *args, fake_path=True, **env):
    full = {k: v for k, v in os.environ.items() if not k.startswith("FAKE_HAILO")}
    full.update(PYTHONPATH=str(FAKE) if fake_path else "", FAKE_HAILO_LOG=str(repo / "calls.jsonl"), **env)
    return subprocess.run([sys.executable, "-m", f"stages.{stage}", *args], cwd=repo, env=full,
                          capture_output=True, text=True)


def test_stages_run_through_the_stand_in(stage_repo):
    log = stage_repo / "calls.jsonl"
    for stage, args in (("parse", ()), ("optimize", ("--calibration-size", "200")), ("compile", ())):
        p = run_stage(stage_repo, stage, *args)
        assert p.returncode == 0, p.stderr
    p = run_stage(stage_repo, "evaluate")
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("error: models/mnist.hef: no Hailo device was found")
    p = run_stage(stage_repo, "evaluate", FAKE_HAILO_DEVICES="0000:01:00.0")
    assert p.returncode == 0, p.stderr
    recorded = [json.loads(line) for line in log.read_text().splitlines()]
    sequence = [c["call"] for c in recorded if c["call"] in ("translate_tf_model", "load_model_script", "optimize",
                                                            "compile", "infer", "InferVStreams.infer")]
    assert sequence == ["translate_tf_model", "load_model_script", "optimize", "compile", "InferVStreams.infer",
                        "infer", "infer"]
    assert (stage_repo / "models" / "mnist.hef").read_bytes()[:4] == b"\x01HEF"
    assert (stage_repo / "models" / "mnist_compiled.har").is_file()
    m = json.loads((stage_repo / "metrics" / "evaluate.json").read_text())
    assert m["images"] == 500 and m["compiled"]["disagree_with_quantized"] == 0
    assert abs(m["compiled"]["accuracy"] - m["float"]["accuracy"]) < 0.02
    report = json.loads((stage_repo / "metrics" / "compile.json").read_text())
    assert report["hef"]["hw_arch"] == "HAILO8P" and report["total"]["layers"] == 3


def test_stage_without_the_sdk_fails_in_one_line(stage_repo):
    p = run_stage(stage_repo, "parse", fake_path=False)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    (line,) = p.stderr.strip().splitlines()
    assert line.startswith("error: params.yaml: backend 'hailo' needs Hailo's Dataflow Compiler")
