"""The hailo backend (hailopipe/backends/hailo/) against the SDK stand-in in tests/fake_hailo.

The real Dataflow Compiler and HailoRT cannot be installed here, so these tests check the adapter
against fake `hailo_sdk_client` / `hailo_platform` packages that record every call and do what the
real ones do as far as public code and logs show (docs/hailo-backend.md).  The first group checks
the stand-in itself (what it refuses and accepts), so the adapter tests after it can fail.  Then
the adapter, step by step, over the variants a user meets: DFC 3.x and 5.x, HailoRT 4.x and 5.x,
with and without a GPU, and the parse retry paths.  Without the stand-in on the path, the backend
must stop with one clear message, and the emulator must never import the SDK.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import subprocess
import sys

import flatbuffers
import numpy as np
import pytest
import yaml

from hailopipe import backends, network
from hailopipe.backends.emulator import compile as emulator_compile
from hailopipe.errors import PipelineError
from hailopipe.formats import ehef, har
from hailopipe.quantization.config import OptimizeConfig
from tests.conftest import ROOT

FAKE = ROOT / "tests" / "fake_hailo"
SDK_MODULES = ("hailo_sdk_client", "hailo_platform", "fake_hailo_common")
IN_NAME = "serving_default_input:0"


# --- TFLite files without TensorFlow ----------------------------------------------------------

def tflite_bytes(net: network.Network, softmax: bool = False, tanh_after: int | None = None,
                 keras3: bool = False) -> bytes:
    """A float TFLite flatbuffer for `net` (Flatten -> FULLY_CONNECTED chain [-> SOFTMAX]), built with
    LiteRT's schema object API, as the Keras converter lays it out.  `tanh_after=i` puts a TANH after
    the i-th dense layer (0: after the Flatten).  `keras3`: Flatten as a Keras 3 export with a
    dynamic batch writes it (SHAPE -> STRIDED_SLICE -> PACK -> RESHAPE), `:0` tensor names."""
    from ai_edge_litert import schema_py_generated as s

    tensors, buffers, ops, codes = [], [s.BufferT()], [], []
    suffix = ":0" if keras3 else ""

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

    def tanh(cur, where):
        out = tensor(f"mnist/tanh_{where}", tensors[cur].shape)
        op(s.BuiltinOperator.TANH, [cur], [out])
        return out

    i32 = s.TensorType.INT32
    x = tensor(IN_NAME, [1, *net.input_shape])
    flat = tensor("mnist/flatten/Reshape", [1, net.input_size])
    if keras3:
        shape = tensor("mnist/flatten/Shape", [4], ttype=i32)
        shape_opts = s.ShapeOptionsT()
        shape_opts.outType = i32
        op(s.BuiltinOperator.SHAPE, [x], [shape], s.BuiltinOptions.ShapeOptions, shape_opts)
        batch = tensor("mnist/flatten/strided_slice", [], ttype=i32)
        consts = [tensor(f"mnist/flatten/strided_slice/{n}", [1], np.array([v], "<i4"), i32)
                  for n, v in (("begin", 0), ("end", 1), ("strides", 1))]
        slice_opts = s.StridedSliceOptionsT()
        slice_opts.shrinkAxisMask = 1
        op(s.BuiltinOperator.STRIDED_SLICE, [shape, *consts], [batch], s.BuiltinOptions.StridedSliceOptions, slice_opts)
        packed = tensor("mnist/flatten/Reshape/shape", [2], ttype=i32)
        pack_opts = s.PackOptionsT()
        pack_opts.valuesCount, pack_opts.axis = 2, 0
        op(s.BuiltinOperator.PACK, [batch, tensor("mnist/flatten/Const", [], np.array(net.input_size, "<i4"), i32)],
           [packed], s.BuiltinOptions.PackOptions, pack_opts)
        op(s.BuiltinOperator.RESHAPE, [x, packed], [flat])
    else:
        op(s.BuiltinOperator.RESHAPE, [x, tensor("mnist/flatten/shape", [2], np.array([-1, net.input_size], "<i4"),
                                                 i32)], [flat])
    cur = tanh(flat, 0) if tanh_after == 0 else flat
    for i, layer in enumerate(net.layers, 1):
        opts = s.FullyConnectedOptionsT()
        opts.fusedActivationFunction = (s.ActivationFunctionType.RELU if layer.activation == "relu"
                                        else s.ActivationFunctionType.NONE)
        w = tensor(f"mnist/dense{i}/MatMul", layer.kernel.T.shape, layer.kernel.T.astype("<f4"))
        b = tensor(f"mnist/dense{i}/BiasAdd", layer.bias.shape, layer.bias.astype("<f4"))
        last = i == len(net.layers) and not softmax and tanh_after != i
        name = f"StatefulPartitionedCall_1{suffix}" if last and keras3 else f"mnist/dense{i}/out"
        out = tensor(name, [1, layer.kernel.shape[1]])
        op(s.BuiltinOperator.FULLY_CONNECTED, [cur, w, b], [out], s.BuiltinOptions.FullyConnectedOptions, opts)
        cur = tanh(out, i) if tanh_after == i else out
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


@pytest.fixture(scope="module")
def raw(subset):
    """The validation digits as raw pixels 0-255, NHWC float32: what optimize and the quantized and
    compiled models take (the model script normalizes them)."""
    return subset["x_val"].astype(np.float32)[..., None]


@pytest.mark.parametrize("keras3", [False, True])
def test_tflite_builder_runs_in_litert(fitted_net, tmp_path, val_images, keras3):
    from hailopipe import evaluate

    path = tmp_path / "m.tflite"
    path.write_bytes(tflite_bytes(fitted_net, keras3=keras3))
    x = val_images[0][:32]
    np.testing.assert_allclose(evaluate.tflite_logits(path, x), network.forward(fitted_net, x), atol=1e-4)


# --- the stand-in on the path -----------------------------------------------------------------

def _forget_sdk():
    for name in list(sys.modules):
        if name.split(".")[0] in SDK_MODULES:
            del sys.modules[name]


@pytest.fixture
def fake(monkeypatch):
    """Put tests/fake_hailo on sys.path with the default environment; `fake(VAR=value)` re-imports
    the stand-in with changed environment variables (CUDA_VISIBLE_DEVICES unset first, so the fake
    DFC picks its GPU again at import unless the call sets it).  Yields that function."""
    for var in ("FAKE_HAILO_DFC_VERSION", "FAKE_HAILORT_VERSION", "FAKE_HAILO_DEVICES", "FAKE_HAILO_GPU",
                "FAKE_HAILO_LOG", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.syspath_prepend(str(FAKE))
    # The adapter asks TensorFlow for a GPU once the DFC has imported it; the stand-in DFC does not, so a
    # TensorFlow that an earlier test imported would answer for the fake's machine: hide it (restored after).
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)

    def configure(**env):
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        _forget_sdk()
        importlib.invalidate_caches()
        importlib.import_module("hailo_sdk_client")
        importlib.import_module("hailo_platform")

    configure()
    yield configure
    _forget_sdk()


def calls(kind=None) -> list[dict]:
    log = importlib.import_module("fake_hailo_common").CALLS
    return [c for c in log if kind is None or c["call"] == kind]


def sdk():
    return importlib.import_module("hailo_sdk_client")


def hailort():
    return importlib.import_module("hailo_platform")


@pytest.fixture
def cfg():
    return OptimizeConfig(calib_size=200)


@pytest.fixture
def parsed(fake, tflite_path, tmp_path):
    from hailopipe.backends import hailo

    hailo.parse(tflite_path, tmp_path / "m.har", "mnist", "hailo8")
    return tmp_path / "m.har"


@pytest.fixture
def quantized(parsed, raw, cfg, tmp_path):
    from hailopipe.backends import hailo

    hailo.optimize(parsed, tmp_path / "q.har", raw[:200], cfg, "hailo8")
    return tmp_path / "q.har"


def parsed_runner(tflite_path):
    runner = sdk().ClientRunner(hw_arch="hailo8")
    runner.translate_tf_model(str(tflite_path), "mnist")
    return runner


# --- the stand-in refuses what the real toolchain refuses, and accepts what it accepts -------

def test_stand_in_enforces_state_order(fake, tflite_path, raw):
    runner = sdk().ClientRunner(hw_arch="hailo8")
    with pytest.raises(Exception, match="optimize needs state HAILO_MODEL"):
        runner.optimize(raw[:8])
    with pytest.raises(Exception, match="compile needs state QUANTIZED_MODEL"):
        runner.compile()
    runner.translate_tf_model(str(tflite_path), "mnist")
    with pytest.raises(Exception, match="compile needs state QUANTIZED_MODEL"):
        runner.compile()
    with pytest.raises(Exception, match="translate_tf_model needs state UNINITIALIZED"):
        runner.translate_tf_model(str(tflite_path), "mnist")


@pytest.mark.parametrize("data, match", [
    (lambda x: np.transpose(x, (0, 3, 1, 2)), "this looks NCHW"),
    (lambda x: x[..., 0], "does not match input layer"),
    (lambda x: {"mnist/input": x}, "are not the input layers"),
    (lambda x: x > 0, "not numeric"),
    (lambda x: x.astype(np.complex64), "not numeric"),
])
def test_stand_in_refuses_bad_calibration_data(fake, tflite_path, raw, data, match):
    runner = parsed_runner(tflite_path)
    with pytest.raises(Exception, match=match):
        runner.optimize(data(raw[:8]))


def test_stand_in_accepts_uint8_and_float64_calibration(fake, tflite_path, raw, tmp_path):
    """xmihol00's Hailo-8 MNIST compile passes uint8 pixels; float64 is numpy's default: the SDK takes both."""
    outputs = []
    for dtype in (np.float32, np.uint8, np.float64):
        runner = parsed_runner(tflite_path)
        runner.load_model_script("normalization1 = normalization([0], [255])\n"
                                 "model_optimization_flavor(optimization_level=0)")
        runner.optimize(raw[:64].astype(dtype))
        with runner.infer_context(sdk().InferenceContext.SDK_QUANTIZED) as ctx:
            outputs.append(runner.infer(ctx, raw[:50]))
    np.testing.assert_array_equal(outputs[0], outputs[1])
    np.testing.assert_array_equal(outputs[0], outputs[2])


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
    runner = parsed_runner(tflite_path)
    if match is None:
        runner.load_model_script(line)
    else:
        with pytest.raises(Exception, match=match):
            runner.load_model_script(line)


@pytest.mark.parametrize("version, arch, ok", [
    ("3.27.0", "hailo8l", True), ("3.27.0", "hailo10h", False), ("3.27.0", "hailo12l", False),
    ("5.1.0", "hailo15h", True), ("5.1.0", "hailo10p", True), ("5.1.0", "hailo12l", True),
    ("5.1.0", "hailo8", False), ("3.27.0", "hailo9", False)])
def test_stand_in_checks_hw_arch(fake, version, arch, ok):
    fake(FAKE_HAILO_DFC_VERSION=version)
    if ok:
        sdk().ClientRunner(hw_arch=arch)
    else:
        with pytest.raises(Exception, match="not supported by DFC"):
            sdk().ClientRunner(hw_arch=arch)


# What the DFC does with a script, as public logs and scripts show it (see the stand-in's docstring):
# script lines, GPU, images -> (level applied, bias correction ran, finetune ran, a warning it gives).
NORM = "normalization1 = normalization([0], [255])"
PLANS = [
    ([], False, 200, 0, False, False, "because there's less data than the recommended amount (1024), and there's no "
                                      "available GPU"),
    ([], True, 200, 1, True, False, "because there's less data than the recommended amount (1024)"),
    ([], True, 1024, 2, False, True, None),
    (["model_optimization_flavor(optimization_level=2)"], False, 200, 2, False, True, None),  # explicit: kept
    (["model_optimization_flavor(optimization_level=1)"], False, 200, 1, True, False, None),
    (["model_optimization_flavor(optimization_level=0)", "post_quantization_optimization(finetune, policy=enabled)"],
     False, 200, 0, False, True, "zero level of optimization"),  # as Model Zoo's clip_*_text_encoder.alls
    (["model_optimization_flavor(optimization_level=2)", "post_quantization_optimization(bias_correction, "
      "policy=enabled)"], False, 200, 2, False, True, "both enabled"),
]


@pytest.mark.parametrize("lines, gpu, n, level, bias, finetune, warning", PLANS)
def test_stand_in_optimizes_as_the_dfc_logs_show(fake, tflite_path, raw, caplog, lines, gpu, n, level, bias,
                                                 finetune, warning):
    if gpu:
        fake(FAKE_HAILO_GPU="1")
    images = np.concatenate([raw] * (1 + n // len(raw)))[:n]
    runner = parsed_runner(tflite_path)
    runner.load_model_script("\n".join([NORM, f"model_optimization_config(calibration, calibset_size={n})", *lines]))
    logger = logging.getLogger("hailo_sdk.client")
    logger.addHandler(caplog.handler)
    try:
        runner.optimize(images)
    finally:
        logger.removeHandler(caplog.handler)
    messages = [r.getMessage() for r in caplog.records]
    reducing = [m for m in messages if m.startswith("Reducing optimization level")]
    assert reducing == ([f"Reducing optimization level to {level} (the accuracy won't be optimized and compression "
                         f"won't be used) {warning}"] if warning and warning.startswith("because") else [])
    assert ("Starting Bias Correction" in messages, "Bias Correction skipped" in messages) == (bias, not bias)
    assert ("Starting Quantization-Aware Fine-Tuning" in messages) == finetune
    if warning and not warning.startswith("because"):
        assert any(warning in m for m in messages), messages
    assert runner.state == sdk().States.QUANTIZED_MODEL
    assert "mnist/normalization1" in runner.get_hn_dict()["layers"]  # the optimized HN has the layer
    assert runner.get_params()["mnist/normalization1/kernel:0"].tolist() == [np.float32(1 / 255)]


def test_stand_in_parser_recommends_end_nodes(fake, fitted_net, tmp_path):
    path = tmp_path / "tanh.tflite"
    path.write_bytes(tflite_bytes(fitted_net, tanh_after=1))
    exc_type = importlib.import_module("hailo_sdk_client.model_translator.exceptions").ParsingWithRecommendationException
    with pytest.raises(exc_type) as err:
        sdk().ClientRunner(hw_arch="hailo8").translate_tf_model(str(path), "mnist")
    assert err.value.recommended_end_node_names == ["mnist/dense1/out"]
    assert str(err.value).endswith("Please try to parse the model again, using these end node names: mnist/dense1/out")
    with pytest.raises(Exception, match="without ':0'"):
        sdk().ClientRunner(hw_arch="hailo8").translate_tf_model(str(path), "mnist", start_node_names=[IN_NAME])


def test_stand_in_infer_needs_an_open_context(fake, quantized, raw):
    runner = sdk().ClientRunner(har=str(quantized))
    with runner.infer_context(sdk().InferenceContext.SDK_QUANTIZED) as ctx:
        pass
    with pytest.raises(Exception, match="open `with runner.infer_context"):
        runner.infer(ctx, raw[:4])


@pytest.fixture
def hef_path(quantized, tmp_path):
    from hailopipe.backends import hailo

    hailo.compile(quantized, tmp_path / "m.hef", "hailo8")
    return tmp_path / "m.hef"


def test_stand_in_hef_takes_a_path_or_bytes(fake, hef_path):
    hp = hailort()
    by_path, by_bytes = hp.HEF(str(hef_path)), hp.HEF(hef_path.read_bytes())
    assert by_path.get_input_vstream_infos() == by_bytes.get_input_vstream_infos()
    with pytest.raises(ValueError, match="file path .str. or a buffer .bytes."):
        hp.HEF(hef_path)  # a pathlib.Path is neither, in pyhailort


@pytest.mark.parametrize("scheduling, needs_activate", [("ROUND_ROBIN", False), ("NONE", True)])
def test_stand_in_activation_follows_the_scheduler(fake, hef_path, raw, caplog, scheduling, needs_activate):
    """HailoRT 4.x and 5.x alike: VDevice()'s default scheduler (ROUND_ROBIN) makes activate() a
    deprecated no-op; only without a scheduler does InferVStreams need it."""
    fake(FAKE_HAILO_DEVICES="0")
    hp = hailort()
    params = hp.VDevice.create_params()
    assert params.scheduling_algorithm == hp.HailoSchedulingAlgorithm.ROUND_ROBIN
    params.scheduling_algorithm = getattr(hp.HailoSchedulingAlgorithm, scheduling)
    hef = hp.HEF(str(hef_path))
    name = hef.get_input_vstream_infos()[0].name
    with hp.VDevice(params) as vdevice:
        ng = vdevice.configure(hef)[0]
        ivp = hp.InputVStreamParams.make(ng, format_type=hp.FormatType.FLOAT32)
        ovp = hp.OutputVStreamParams.make(ng, format_type=hp.FormatType.FLOAT32)
        with hp.InferVStreams(ng, ivp, ovp) as pipe:
            if needs_activate:
                with pytest.raises(hp.HailoRTException, match="Network group is not activated"):
                    pipe.infer({name: raw[:4]})
            else:
                pipe.infer({name: raw[:4]})
            with ng.activate(ng.create_params()):
                pipe.infer({name: raw[:4]})
    assert any("activate()` when working with scheduler are deprecated" in r.getMessage()
               for r in caplog.records) == (not needs_activate)


def test_stand_in_hailort5_has_no_infer_vstreams_on_hailo10(fake, tflite_path, raw, tmp_path):
    from hailopipe.backends import hailo

    fake(FAKE_HAILO_DFC_VERSION="5.2.0", FAKE_HAILORT_VERSION="5.2.0", FAKE_HAILO_DEVICES="0")
    hailo.parse(tflite_path, tmp_path / "m.har", "mnist", "hailo10h")
    hailo.optimize(tmp_path / "m.har", tmp_path / "q.har", raw[:200], OptimizeConfig(calib_size=200), "hailo10h")
    hailo.compile(tmp_path / "q.har", tmp_path / "m.hef", "hailo10h")
    hp = hailort()
    with hp.VDevice() as vdevice:
        with pytest.raises(hp.HailoRTException, match="use InferModel instead"):
            vdevice.configure(hp.HEF(str(tmp_path / "m.hef")))
        model = vdevice.create_infer_model(str(tmp_path / "m.hef"))
        with model.configure() as configured:
            bindings = [configured.create_bindings() for _ in range(configured.get_async_queue_size() + 1)]
            with pytest.raises(hp.HailoRTException, match="async queue size"):
                configured.run(bindings, 1000)


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
    assert (tmp_path / "m.har").is_file() and summary["layers"][0].startswith("fc1 784->")


def test_broken_hailort_is_one_clear_error(fake, monkeypatch, tmp_path):
    from hailopipe.backends import hailo

    monkeypatch.setitem(sys.modules, "hailo_platform", None)  # import raises ImportError
    with pytest.raises(PipelineError, match="needs HailoRT .hailo_platform., which does not import"):
        hailo.infer_compiled(tmp_path / "m.hef", np.zeros((1, 28, 28, 1), np.float32))


def test_emulator_never_imports_the_sdk(tmp_path, tflite_path, subset):
    """Even with the stand-in importable, the emulator's functions leave the SDK modules unloaded."""
    np.savez(tmp_path / "x.npz", x=subset["x_val"][:100])
    code = f"""
import sys, numpy as np
from hailopipe import backends
from hailopipe.quantization.config import OptimizeConfig
e = lambda step: backends.get("emulator", step)
pixels = np.load({str(tmp_path / "x.npz")!r})["x"]
x, raw = (pixels / np.float32(255))[..., None].astype(np.float32), pixels.astype(np.float32)[..., None]
d = {str(tmp_path)!r}
e("parse").parse({str(tflite_path)!r}, d + "/m.har", "mnist", "hailo8")
e("optimize").optimize(d + "/m.har", d + "/q.har", raw, OptimizeConfig(calib_size=100), "hailo8")
e("compile").compile(d + "/q.har", d + "/m.hef", "hailo8")
e("evaluate").infer_native(d + "/m.har", x)
e("evaluate").infer_quantized(d + "/q.har", raw); e("evaluate").infer_compiled(d + "/m.hef", raw)
e("noise").analyze_noise(d + "/m.har", d + "/q.har", raw)
bad = [m for m in sys.modules if m.startswith(("hailo_sdk_client", "hailo_platform", "fake_hailo"))]
assert not bad, bad
import importlib.util
assert importlib.util.find_spec("hailo_sdk_client")  # it was importable: an import would have shown
"""
    env = dict(os.environ, PYTHONPATH=str(FAKE))
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


# --- parse ------------------------------------------------------------------------------------

@pytest.mark.parametrize("keras3", [False, True])
def test_parse_passes_no_node_names(fake, fitted_net, tmp_path, keras3):
    """As public Keras -> TFLite -> DFC flows do; a Keras 3 export's `:0` names are never passed."""
    from hailopipe.backends import hailo

    path = tmp_path / "model.tflite"
    path.write_bytes(tflite_bytes(fitted_net, keras3=keras3))
    summary = hailo.parse(path, tmp_path / "models" / "m.har", "mnist", "hailo8l")
    assert [c["call"] for c in calls()] == ["ClientRunner", "translate_tf_model", "get_hn_dict", "get_params",
                                            "save_har"]
    (t,) = calls("translate_tf_model")
    assert (t["start_node_names"], t["end_node_names"], t["tensor_shapes"]) == (None, None, None)
    assert calls("ClientRunner")[0]["hw_arch"] == "hailo8l"
    assert calls("save_har")[0]["path"] != str(tmp_path / "models" / "m.har")  # a temporary name, then renamed
    assert sorted(os.listdir(tmp_path / "models")) == ["m.har"]
    assert summary["layers"] == ["fc1 784->64 relu", "fc2 64->32 relu", "fc3 32->10 linear"]
    assert summary["end_node_names"] is None and summary["attempts"] == [{"end_node_names": None, "error": None}]
    assert summary["params"] == sum(layer.kernel.size + layer.bias.size for layer in fitted_net.layers)
    assert har.load(tmp_path / "models" / "m.har").state == "hailo_model"


def test_parse_ends_at_the_logits_before_a_softmax(fake, fitted_net, tmp_path):
    from hailopipe.backends import hailo

    path = tmp_path / "model.tflite"
    path.write_bytes(tflite_bytes(fitted_net, softmax=True))
    summary = hailo.parse(path, tmp_path / "m.har", "mnist", "hailo8")
    assert [c["end_node_names"] for c in calls("translate_tf_model")] == [["mnist/dense3/out"]]
    assert summary["end_node_names"] == ["mnist/dense3/out"] and len(summary["layers"]) == 3


@pytest.mark.parametrize("attribute", [True, False])  # the recommendation as an attribute, or only in the message
def test_parse_retries_with_the_recommended_end_nodes(fake, fitted_net, tmp_path, caplog, monkeypatch, attribute):
    from hailopipe.backends import hailo

    if not attribute:
        exc_type = importlib.import_module("hailo_sdk_client.model_translator.exceptions").ParsingWithRecommendationException
        monkeypatch.setattr(exc_type, "recommended_end_node_names", property(lambda self: None, lambda self, v: None),
                            raising=False)
    path = tmp_path / "model.tflite"
    path.write_bytes(tflite_bytes(fitted_net, tanh_after=3))  # TANH after the logits: cut off by the parser
    with caplog.at_level(logging.WARNING, logger="hailopipe"):
        summary = hailo.parse(path, tmp_path / "m.har", "mnist", "hailo8")
    assert [c["end_node_names"] for c in calls("translate_tf_model")] == [None, ["mnist/dense3/out"]]
    assert len(calls("ClientRunner")) == 2  # a fresh runner for the retry, as public retry code does
    assert summary["end_node_names"] == ["mnist/dense3/out"] and len(summary["layers"]) == 3
    assert summary["attempts"][0]["error"].startswith("ParsingWithRecommendationException: Parsing failed")
    assert any("retrying with its recommended end nodes ['mnist/dense3/out']" in r.getMessage() for r in caplog.records)
    assert har.load(tmp_path / "m.har").state == "hailo_model"


@pytest.mark.parametrize("tanh_after, keras3, match", [
    (1, False, "parsed the model only up to end_node_names=\\['mnist/dense1/out'\\]: 1 of 3 layers with weights, output "
               "width 64 instead of the logits' 10"),
    (0, False, "could not parse the model \\(no node names: ParsingWithRecommendationException: .*TANH"),
    (0, True, "export the model with a fixed batch of 1 so that Flatten is one RESHAPE"),
])
def test_parse_refuses_what_the_retries_cannot_fix(fake, fitted_net, tmp_path, tanh_after, keras3, match):
    from hailopipe.backends import hailo

    path = tmp_path / "model.tflite"
    path.write_bytes(tflite_bytes(fitted_net, tanh_after=tanh_after, keras3=keras3))
    with pytest.raises(PipelineError, match=match) as err:
        hailo.parse(path, tmp_path / "m.har", "mnist", "hailo8")
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)
    assert not (tmp_path / "m.har").exists()


def test_parse_retries_without_node_names_when_named_ones_fail(fake, fitted_net, tmp_path, monkeypatch):
    from hailopipe.backends import hailo
    from hailopipe.backends.hailo import parsing

    path = tmp_path / "model.tflite"
    path.write_bytes(tflite_bytes(fitted_net))
    real = parsing.read_graph
    monkeypatch.setattr(parsing, "read_graph", lambda p: real(p).__class__(**{**real(p).__dict__, "softmax": True,
                                                                                "logits": "no/such/node:0"}))
    summary = hailo.parse(path, tmp_path / "m.har", "mnist", "hailo8")
    assert [c["end_node_names"] for c in calls("translate_tf_model")] == [["no/such/node"], None]
    assert summary["attempts"][0]["error"].startswith("HailoSDKError: end node 'no/such/node'")


@pytest.mark.parametrize("arch, dfc, ok", [("hailo8", "3.31.0", True), ("hailo8r", "5.2.0", False),
                                           ("hailo10h", "5.2.0", True), ("hailo12l", "5.2.0", True),
                                           ("hailo15h", "3.33.0", False)])
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

def test_optimize_loads_the_generated_script_and_raw_pixels(fake, parsed, raw, tmp_path):
    from hailopipe.backends import hailo

    assert hailo.layer_names(parsed) == ["fc1", "fc2", "fc3"]
    cfg = OptimizeConfig(calib_size=200, precision={"fc3": "a16_w16"})
    summary = hailo.optimize(parsed, tmp_path / "q.har", raw[:200], cfg, "hailo8")
    assert [c["call"] for c in calls()][-6:] == ["ClientRunner", "get_hn_dict", "get_params", "load_model_script",
                                                 "optimize", "save_har"]
    script = calls("load_model_script")[-1]["text"]
    assert "normalization1 = normalization([0], [255])" in script
    assert "quantization_param(mnist/fc3, precision_mode=a16_w16)" in script
    assert "calibset_size=200" in script and "#" not in script
    data_seen = calls("optimize")[-1]["data"]
    assert data_seen == {"type": "ndarray", "dtype": "float32", "shape": [200, 28, 28, 1], "c_contiguous": True,
                         "min": 0.0, "max": 255.0}
    assert summary["calibration"] == {"images": 200, "min": 0.0, "max": 255.0}
    q = har.load(tmp_path / "q.har")
    assert q.state == "quantized_model" and q.net.normalization is not None


def _enabled(script: str, algorithm: str) -> bool:
    return f"post_quantization_optimization({algorithm}, policy=enabled" in script


@pytest.mark.parametrize("dfc", ["3.27.0", "5.2.0"])
@pytest.mark.parametrize("gpu, level, bias, finetune", [(False, 2, False, True), (True, 2, False, True),
                                                        (False, 1, True, False), (False, 0, False, False)])
def test_optimize_returns_what_the_dfc_applied(fake, tflite_path, raw, tmp_path, dfc, gpu, level, bias, finetune):
    """The script names its level, so the DFC keeps it with or without a GPU (no 'Reducing ...'),
    and never enables bias correction with finetune; `applied` is read from the DFC's log."""
    from hailopipe.backends import hailo

    arch = "hailo8" if dfc.startswith("3") else "hailo10h"
    fake(FAKE_HAILO_DFC_VERSION=dfc, **({"FAKE_HAILO_GPU": "1"} if gpu else {}))
    hailo.parse(tflite_path, tmp_path / "m.har", "mnist", arch)
    summary = hailo.optimize(tmp_path / "m.har", tmp_path / "q.har", raw[:200],
                             OptimizeConfig(calib_size=200, optimization_level=level), arch)
    script = calls("load_model_script")[-1]["text"]
    assert f"model_optimization_flavor(optimization_level={level}" in script
    assert (_enabled(script, "bias_correction"), _enabled(script, "finetune")) == (bias, finetune)
    assert summary["applied"] == {"optimization_level": level, "requested_optimization_level": level,
                                  "activation_clipping": "minmax", "bias_correction": bias, "finetune": finetune,
                                  "adaround": False, "equalization": False, "gpu": gpu, "reduced": False,
                                  "from": "dfc log"}
    assert summary["optimization_level_reduced_to"] is None
    assert not any(w.startswith("Reducing optimization level") for w in summary["warnings"])
    assert any("finetune ran without a GPU" in w for w in summary["warnings"]) == (finetune and not gpu)
    assert any("zero level of optimization" in w for w in summary["warnings"]) == (level == 0)


def test_optimize_never_sends_bias_correction_with_finetune(fake, parsed, raw, tmp_path, monkeypatch):
    """A model script renderer that enables both (as this project's did) is sent with bias correction
    disabled, as every Model Zoo script that enables one does with the other."""
    from hailopipe.backends import hailo
    from hailopipe.quantization import model_script

    real = model_script.render
    monkeypatch.setattr(model_script, "render", lambda *a, **k: real(*a, **k).replace(
        "bias_correction, policy=disabled", "bias_correction, policy=enabled"))
    summary = hailo.optimize(parsed, tmp_path / "q.har", raw[:200], OptimizeConfig(calib_size=200, optimization_level=2),
                             "hailo8")
    script = calls("load_model_script")[-1]["text"]
    assert _enabled(script, "finetune") and not _enabled(script, "bias_correction")
    assert any("bias_correction disabled: finetune is enabled" in w for w in summary["warnings"])
    assert not any("both enabled" in w for w in summary["warnings"])  # the stand-in's own warning never fires
    assert (summary["applied"]["bias_correction"], summary["applied"]["finetune"]) == (False, True)


def test_optimize_reports_a_level_the_dfc_reduced(fake, parsed, raw, tmp_path, monkeypatch):
    """A script without an explicit level: the DFC reduces its default and says so."""
    from hailopipe.backends import hailo
    from hailopipe.quantization import model_script

    real = model_script.render
    monkeypatch.setattr(model_script, "render", lambda *a, **k: "\n".join(
        line for line in real(*a, **k).splitlines()
        if not line.startswith(("model_optimization_flavor", "post_quantization_optimization"))))
    summary = hailo.optimize(parsed, tmp_path / "q.har", raw[:200], OptimizeConfig(calib_size=200), "hailo8")
    assert summary["optimization_level_reduced_to"] == 0
    assert {k: summary["applied"][k] for k in ("optimization_level", "requested_optimization_level", "reduced",
                                               "bias_correction", "finetune", "gpu")} == {
        "optimization_level": 0, "requested_optimization_level": 2, "reduced": True, "bias_correction": False,
        "finetune": False, "gpu": False}
    (reducing,) = [w for w in summary["warnings"] if w.startswith("Reducing optimization level to 0")]
    assert "less data than the recommended amount (1024), and there's no available GPU" in reducing


@pytest.mark.parametrize("env, gpu", [({"FAKE_HAILO_GPU": "1", "CUDA_VISIBLE_DEVICES": "-1"}, False),
                                      ({"FAKE_HAILO_GPU": "1", "CUDA_VISIBLE_DEVICES": "0"}, True),
                                      ({}, False)])
def test_optimize_reports_whether_the_dfc_had_a_gpu(fake, tflite_path, raw, tmp_path, env, gpu):
    from hailopipe.backends import hailo

    fake(**env)
    hailo.parse(tflite_path, tmp_path / "m.har", "mnist", "hailo8")
    summary = hailo.optimize(tmp_path / "m.har", tmp_path / "q.har", raw[:200], OptimizeConfig(calib_size=200),
                             "hailo8")
    assert summary["applied"]["gpu"] is gpu and calls("optimize")[-1]["gpu"] is gpu


def test_optimize_without_the_dfcs_log_reports_the_script(fake, parsed, raw, tmp_path, monkeypatch):
    """A DFC whose messages do not go through Python logging: `applied` falls back to the script."""
    from hailopipe.backends import hailo

    monkeypatch.setattr(logging.getLogger("hailo_sdk.client"), "disabled", True)
    summary = hailo.optimize(parsed, tmp_path / "q.har", raw[:200], OptimizeConfig(calib_size=200,
                             optimization_level=1), "hailo8")
    assert summary["applied"]["from"] == "model script"
    assert (summary["applied"]["bias_correction"], summary["applied"]["finetune"]) == (True, False)


def test_optimize_sends_the_configured_normalization(fake, parsed, raw, tmp_path, monkeypatch, val_images,
                                                    fitted_net):
    """optimize.normalization reaches the SDK as written; a script that says otherwise is not sent."""
    from hailopipe.backends import hailo
    from hailopipe.quantization import model_script

    cfg = OptimizeConfig(calib_size=200, normalization=((127.5,), (127.5,)))
    hailo.optimize(parsed, tmp_path / "q.har", raw[:200], cfg, "hailo8")
    assert "normalization1 = normalization([127.5], [127.5])" in calls("load_model_script")[-1]["text"]
    kernel = sdk().ClientRunner(har=str(tmp_path / "q.har")).get_params()["mnist/normalization1/kernel:0"]
    np.testing.assert_allclose(kernel, [1 / 127.5], rtol=1e-6)
    shifted = network.forward(fitted_net, (raw[:50] - 127.5) / 127.5)  # what the float model sees now
    np.testing.assert_allclose(hailo.infer_fp_optimized(tmp_path / "q.har", raw[:50]), shifted, rtol=1e-5, atol=1e-4)
    real = model_script.render
    monkeypatch.setattr(model_script, "render", lambda *a, **k: real(*a, **k).replace("[127.5], [127.5]", "[0], [1]"))
    with pytest.raises(PipelineError, match="needs one normalization\\(\\[127.5\\], \\[127.5\\]\\) line .* it has "
                                            "normalization\\(\\[0\\], \\[1\\]\\)"):
        hailo.optimize(parsed, tmp_path / "q2.har", raw[:200], cfg, "hailo8")


@pytest.mark.parametrize("change, match", [
    (dict(precision={"dense3": "a16_w16"}), "unknown layer"),
    (dict(precision={"fc3": "a4_w4"}), "mode"),
])
def test_optimize_refuses_what_the_sdk_path_cannot_do(fake, parsed, raw, tmp_path, change, match):
    from hailopipe.backends import hailo

    cfg = OptimizeConfig(calib_size=200, **change)
    with pytest.raises(PipelineError, match=match):
        hailo.optimize(parsed, tmp_path / "q.har", raw[:200], cfg, "hailo8")
    assert calls("optimize") == [] and not (tmp_path / "q.har").exists()


@pytest.mark.parametrize("bad, match", [(lambda x: x / 255, "look like pixels / 255"),
                                        (lambda x: x.astype(np.float64), "expected NHWC float32"),
                                        (lambda x: x[..., 0], "expected NHWC float32"),
                                        (lambda x: x * 2, "raw pixels in \\[0, 255\\]")])
def test_optimize_checks_calibration_before_the_sdk(fake, parsed, raw, tmp_path, cfg, bad, match):
    from hailopipe.backends import hailo

    with pytest.raises(PipelineError, match=f"calibration data: .*{match}|{match}"):
        hailo.optimize(parsed, tmp_path / "q.har", bad(raw[:200]), cfg, "hailo8")
    assert calls("optimize") == []


def test_optimize_and_compile_need_the_right_state(fake, parsed, quantized, raw, tmp_path, cfg):
    from hailopipe.backends import hailo

    with pytest.raises(PipelineError, match="state QUANTIZED_MODEL, expected HAILO_MODEL"):
        hailo.optimize(quantized, tmp_path / "q2.har", raw[:200], cfg, "hailo8")
    with pytest.raises(PipelineError, match="state HAILO_MODEL, expected QUANTIZED_MODEL"):
        hailo.compile(parsed, tmp_path / "m.hef", "hailo8")
    with pytest.raises(PipelineError, match="file not found"):
        hailo.compile(tmp_path / "missing.har", tmp_path / "m.hef", "hailo8")


# --- compile ----------------------------------------------------------------------------------

def test_compile_writes_the_hef_and_the_compiled_har(fake, quantized, tmp_path):
    from hailopipe.backends import hailo

    hef_path = tmp_path / "models" / "mnist.hef"
    report = hailo.compile(quantized, hef_path, "hailo8")
    assert [c["call"] for c in calls()][-5:] == ["ClientRunner", "compile", "save_har", "get_hn_dict", "model_script"]
    assert calls("ClientRunner")[-1] == {"call": "ClientRunner", "hw_arch": "hailo8", "har": str(quantized)}
    assert hef_path.read_bytes()[:4] == bytes([0x01, 0x48, 0x45, 0x46])
    assert backends.compiled_har_path(hef_path) == tmp_path / "models" / "mnist_compiled.har"
    assert har.load(tmp_path / "models" / "mnist_compiled.har").state == "compiled_model"
    assert sorted(os.listdir(hef_path.parent)) == ["mnist.hef", "mnist_compiled.har"]
    # keyed by the SDK's names, normalization included: the emulator's figures for the same network
    expected = ehef.layer_report(har.load(quantized).qnet)
    assert list(report["layers"]) == ["normalization1", "fc1", "fc2", "fc3"]
    assert report["layers"] == expected["layers"] and report["total"] == expected["total"]
    assert report["hef"]["hw_arch"] == "HAILO8P" and report["hef"]["compatible"] == ["HAILO8"]


def _split_activations(hn: dict) -> dict:
    """The HN with each dense layer's activation split off into an `activation` layer after it, and a
    layer of a type the backend does not know before the output layer, as the real SDK's HN may have."""
    hn = json.loads(json.dumps(hn))
    layers, out = {}, {}
    for name, spec in hn["layers"].items():
        act = spec.get("params", {}).get("activation")
        if spec["type"] == "dense" and act != "linear":
            spec["params"]["activation"] = "linear"
            act_name = name.replace("/fc", "/activation")
            out[name] = act_name
            layers[name] = spec
            layers[act_name] = {"type": "activation", "input": [name], "output": spec["output"],
                                "input_shapes": spec["output_shapes"], "output_shapes": spec["output_shapes"],
                                "params": {"activation": act}}
            spec["output"] = [act_name]
        else:
            layers[name] = spec
    for spec in layers.values():
        spec["input"] = [out.get(i, i) if spec["type"] != "activation" else i for i in spec["input"]]
    hn["layers"] = layers
    return hn


def test_compile_report_handles_split_activations(fake, quantized, tmp_path, monkeypatch):
    from hailopipe.backends import hailo

    runner_type = sdk().ClientRunner
    real = runner_type.get_hn_dict
    monkeypatch.setattr(runner_type, "get_hn_dict", lambda self: _split_activations(real(self)))
    report = hailo.compile(quantized, tmp_path / "m.hef", "hailo8")
    expected = ehef.layer_report(har.load(quantized).qnet)
    assert list(report["layers"]) == ["normalization1", "fc1", "fc2", "fc3"]
    assert report["layers"]["fc1"]["activation"] == "relu" and report["layers"]["fc1"]["activation_layer"] == \
        "activation1"
    assert {k: {f: v for f, v in e.items() if f != "activation_layer"} for k, e in report["layers"].items()} == \
        expected["layers"]
    assert report["total"] == expected["total"]
    assert hailo.layer_names(quantized) == ["fc1", "fc2", "fc3"]  # the float network reads it too


# --- evaluate ---------------------------------------------------------------------------------

def test_infer_quantized_uses_the_sdk_emulator(fake, quantized, raw, val_images, fitted_net):
    from hailopipe.backends import hailo

    x, y = val_images
    logits = hailo.infer_quantized(quantized, raw)
    assert [c["call"] for c in calls()][-5:] == ["ClientRunner", "get_hn_dict", "model_script", "infer_context", "infer"]
    assert logits.shape == (len(x), 10) and logits.dtype == np.float32
    assert calls("infer_context")[-1]["context"] == "SDK_QUANTIZED"
    seen = calls("infer")[-1]["data"]
    assert (seen["dtype"], seen["shape"], seen["min"], seen["max"]) == ("float32", [len(x), 28, 28, 1], 0.0, 255.0)
    float_logits = network.forward(fitted_net, x)
    agree = (logits.argmax(1) == float_logits.argmax(1)).mean()
    assert agree > 0.97, agree
    np.testing.assert_allclose(hailo.infer_native(quantized.with_name("m.har"), x), float_logits, atol=1e-5)
    np.testing.assert_allclose(hailo.infer_fp_optimized(quantized, raw), float_logits, atol=1e-4)
    assert calls("infer")[-1]["data"]["max"] == 255.0 and calls("infer")[-2]["data"]["max"] <= 1.0
    with pytest.raises(PipelineError, match="raw pixels in \\[0, 255\\]"):
        hailo.infer_quantized(quantized, raw * 2)


def test_infer_compiled_without_a_device(fake, hef_path, raw):
    from hailopipe.backends import hailo

    with pytest.raises(PipelineError) as err:
        hailo.infer_compiled(hef_path, raw)
    assert "no Hailo device was found" in str(err.value) and "\n" not in str(err.value)
    assert calls("VDevice") == []


@pytest.mark.parametrize("dfc, hailort, arch, flow", [
    ("3.27.0", "4.22.0", "hailo8", ["HEF", "VDevice", "ConfigureParams.create_from_hef", "VDevice.configure",
                                    "InputVStreamParams.make", "OutputVStreamParams.make", "InferVStreams.infer"]),
    ("5.2.0", "5.2.0", "hailo10h", ["VDevice", "VDevice.create_infer_model", "HEF", "InferModel.configure"]
     + ["ConfiguredInferModel.run"] * 125),  # 500 frames, 4 per run (the async queue)
])
def test_infer_compiled_on_a_device(fake, tflite_path, raw, tmp_path, dfc, hailort, arch, flow):
    """HailoRT 4.x: InferVStreams, no activate() (VDevice()'s scheduler is on); 5.x: InferModel."""
    from hailopipe.backends import hailo

    fake(FAKE_HAILO_DFC_VERSION=dfc, FAKE_HAILORT_VERSION=hailort, FAKE_HAILO_DEVICES="0000:01:00.0")
    hailo.parse(tflite_path, tmp_path / "m.har", "mnist", arch)
    hailo.optimize(tmp_path / "m.har", tmp_path / "q.har", raw[:200], OptimizeConfig(calib_size=200), arch)
    hailo.compile(tmp_path / "q.har", tmp_path / "m.hef", arch)
    start = len(calls())
    logits = hailo.infer_compiled(tmp_path / "m.hef", raw)
    assert [c["call"] for c in calls()[start:]] == ["Device.scan", *flow]
    assert calls("ConfiguredNetwork.activate") == []
    if flow[-1] == "InferVStreams.infer":
        assert calls("ConfigureParams.create_from_hef")[0]["interface"] == "PCIe"
        assert {c["format_type"] for c in calls() if c["call"].endswith("VStreamParams.make")} == {"FLOAT32"}
        infer = calls("InferVStreams.infer")[0]
        assert (infer["active"], infer["scheduled"]) == (False, True)
        assert infer["data"]["keys"] == ["mnist/input_layer1"]
        (seen,) = infer["data"]["values"]
        assert (seen["dtype"], seen["shape"], seen["max"], seen["c_contiguous"]) == ("float32", [len(raw), 28, 28, 1],
                                                                                     255.0, True)
    else:
        assert calls("InferModel.configure")[0]["formats"] == ["FLOAT32", "FLOAT32"]
    assert calls("HEF")[-1]["source"] == str(tmp_path / "m.hef")
    np.testing.assert_array_equal(logits, hailo.infer_quantized(tmp_path / "q.har", raw))


@pytest.mark.parametrize("arch, hailort", [("hailo8", "5.2.0")])
def test_infer_compiled_checks_the_hailort_major(fake, hef_path, raw, arch, hailort):
    from hailopipe.backends import hailo

    fake(FAKE_HAILORT_VERSION=hailort, FAKE_HAILO_DEVICES="0")
    with pytest.raises(PipelineError, match=f"a HEF for HAILO8P .Hailo-8 family. needs the HailoRT "
                                            f".hailo_platform. 4.x, but {hailort} is installed"):
        hailo.infer_compiled(hef_path, raw)


def test_infer_compiled_refuses_the_emulators_file(fake, quantized, tmp_path, raw):
    from hailopipe.backends import hailo

    emulator_compile.compile(quantized, tmp_path / "e.hef", "hailo8")  # the fake's HAR is this project's format
    with pytest.raises(PipelineError, match="not a Hailo HEF"):
        hailo.infer_compiled(tmp_path / "e.hef", raw)


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
    (dest / "models" / "float" / "model.tflite").write_bytes(tflite_bytes(fitted_net, keras3=True))
    return dest


def run_stage(repo, stage, *args, fake_path=True, **env):
    full = {k: v for k, v in os.environ.items() if not k.startswith("FAKE_HAILO") and k != "CUDA_VISIBLE_DEVICES"}
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
    assert report["hef"]["hw_arch"] == "HAILO8P" and sorted(report["layers"]) == ["fc1", "fc2", "fc3", "normalization1"]


def test_stage_without_the_sdk_fails_in_one_line(stage_repo):
    p = run_stage(stage_repo, "parse", fake_path=False)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    (line,) = p.stderr.strip().splitlines()
    assert line.startswith("error: params.yaml: backend 'hailo' needs Hailo's Dataflow Compiler")
