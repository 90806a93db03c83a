"""Stand-in for hailo_sdk_client's ClientRunner: records every call, enforces the documented state
machine (UNINITIALIZED -> HAILO_MODEL -> QUANTIZED_MODEL -> COMPILED_MODEL), hw_arch values, model
script spelling, NHWC float32 data of the input layer's shape, and that compile() returns HEF
bytes.  Results are emulated with hailopipe's own code (tflite reader, optimizer, engine): the
numbers are plausible, the file formats are this project's, not Hailo's.

SDK warnings go to a non-propagating logger with its own console handler, printed as
`[warning] ...`, the way the DFC prints them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

import fake_hailo_common as common
import numpy as np
from fake_hailo_common import FakeLimitation, record, summary

from hailo_sdk_client import model_script
from hailo_sdk_client.exposed_definitions import HailoSDKError, InferenceContext, States
from hailo_sdk_client.model_translator.exceptions import ParsingWithRecommendationException
from hailopipe.formats import hn
from hailopipe.quantization.config import OptimizeConfig

_log = logging.getLogger("hailo_sdk.client")
_log.propagate = False
if not _log.handlers:
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
    _log.addHandler(_handler)
_log.setLevel(logging.INFO)

_HAR_STATES = {States.HAILO_MODEL: "hailo_model", States.QUANTIZED_MODEL: "quantized_model",
               States.COMPILED_MODEL: "compiled_model"}


class _Context:
    def __init__(self, kind: InferenceContext):
        self.kind, self.active = kind, False


def _tflite_tensors(path) -> dict:
    from ai_edge_litert import schema_py_generated as s

    with open(path, "rb") as f:
        buf = f.read()
    model = s.Model.GetRootAs(buf, 0)
    g = model.Subgraphs(0)
    fc_outputs = []
    for i in range(g.OperatorsLength()):
        op = g.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        if max(code.BuiltinCode(), code.DeprecatedBuiltinCode()) == s.BuiltinOperator.FULLY_CONNECTED:
            fc_outputs.append(g.Tensors(op.Outputs(0)).Name().decode())
    inputs = {g.Tensors(g.Inputs(i)).Name().decode(): [int(d) for d in g.Tensors(g.Inputs(i)).ShapeAsNumpy()]
              for i in range(g.InputsLength())}
    return {"inputs": inputs, "fc_outputs": fc_outputs,
            "all": {g.Tensors(i).Name().decode() for i in range(g.TensorsLength())}}


class ClientRunner:
    def __init__(self, hw_arch: str | None = None, har: str | None = None):
        record("ClientRunner", hw_arch=hw_arch, har=None if har is None else str(har))
        self._state, self._net, self._qnet, self._script, self._norm = States.UNINITIALIZED, None, None, "", None
        self._hw_arch = hw_arch
        if har is not None:
            self.load_har(har)
        supported = common.ARCHS.get(common.major(common.DFC_VERSION), ())
        self._hw_arch = self._hw_arch or supported[0]
        if self._hw_arch not in supported:
            raise HailoSDKError(f"hw_arch {self._hw_arch!r} is not supported by DFC {common.DFC_VERSION} "
                                f"(SUPPORTED_HW_ARCHS: {', '.join(supported)})")

    # --- state ---------------------------------------------------------------------------------
    @property
    def state(self) -> States:
        return self._state

    @property
    def model_script(self) -> str:
        record("model_script")
        return self._script

    def _require(self, call: str, *states: States) -> None:
        if self._state not in states:
            wanted = " or ".join(s.name for s in states)
            raise HailoSDKError(f"{call} needs state {wanted}, runner is {self._state.name}")

    def load_har(self, har) -> None:
        from hailopipe.formats import har as har_format

        h = har_format.load(har)
        self._state = {v: k for k, v in _HAR_STATES.items()}[h.state]
        self._net, self._qnet = h.net, h.qnet
        self._script, self._norm = h.metadata.get("model_script", ""), h.metadata.get("normalization")
        self._hw_arch = self._hw_arch or h.metadata.get("hw_arch")

    def save_har(self, har_path) -> None:
        from hailopipe.formats import har as har_format

        record("save_har", path=str(har_path), state=self._state.name)
        self._require("save_har", *_HAR_STATES)
        meta = {"hw_arch": self._hw_arch, "model_script": self._script, "normalization": self._norm,
                "fake_sdk_version": common.DFC_VERSION}
        har_format.save(har_format.Har(_HAR_STATES[self._state], self._net, self._qnet, meta), har_path)

    def _hn(self) -> dict:
        self._require("get_hn_dict", *_HAR_STATES)
        return hn.to_hn(self._net)

    def get_hn_dict(self) -> dict:
        record("get_hn_dict")
        return self._hn()

    get_hn = get_hn_dict

    def get_params(self) -> dict:
        record("get_params")
        self._require("get_params", *_HAR_STATES)
        return dict(hn.weights(self._net))

    def _layers(self) -> set[str]:
        names = set(self._hn()["layers"])
        return names | {n.split("/", 1)[1] for n in names}

    # --- parse ---------------------------------------------------------------------------------
    def translate_tf_model(self, model_path, net_name, start_node_names=None, end_node_names=None,
                           tensor_shapes=None):
        from hailopipe.errors import PipelineError
        from hailopipe.formats import tflite

        record("translate_tf_model", model_path=str(model_path), net_name=net_name, start_node_names=start_node_names,
               end_node_names=end_node_names, tensor_shapes=tensor_shapes)
        self._require("translate_tf_model", States.UNINITIALIZED)
        if not str(model_path).endswith(".tflite"):
            raise FakeLimitation("the stand-in translates only .tflite files")
        t = _tflite_tensors(model_path)
        for name in start_node_names or []:
            if name not in t["inputs"]:
                raise HailoSDKError(f"start node {name!r} is not an input tensor of {model_path} ({list(t['inputs'])})")
        for name in end_node_names or []:
            if name not in t["all"]:
                raise HailoSDKError(f"end node {name!r} is not a tensor of {model_path}")
            if not t["fc_outputs"] or name != t["fc_outputs"][-1]:
                raise FakeLimitation(f"the stand-in only ends at the last FULLY_CONNECTED output, not {name!r}")
        for name, shape in (tensor_shapes or {}).items():
            want = t["inputs"].get(name)
            if name not in (start_node_names or []) or want is None or list(shape)[1:] != want[1:] or len(shape) != 4:
                raise HailoSDKError(f"tensor_shapes[{name!r}] = {shape} does not match the NHWC input {want}")
        try:
            net = tflite.read(model_path, net_name)
        except PipelineError as exc:
            raise ParsingWithRecommendationException(
                f"Parsing failed. The errors found in the graph are: UnsupportedModelError in {exc}. "
                "Please try to parse the model again, using these end node names: "
                f"{t['fc_outputs'][:1]}") from None
        for i, layer in enumerate(net.layers, 1):
            layer.name = f"fc{i}"  # the DFC's names for dense layers
        self._net, self._state = net, States.HAILO_MODEL
        return self._hn(), dict(hn.weights(self._net))

    # --- optimize ------------------------------------------------------------------------------
    def load_model_script(self, model_script_text: str, append: bool = False) -> None:
        record("load_model_script", text=model_script_text, append=append)
        self._require("load_model_script", States.HAILO_MODEL, States.QUANTIZED_MODEL)
        if os.path.isfile(model_script_text):
            with open(model_script_text, encoding="utf-8") as f:
                model_script_text = f.read()
        model_script.parse(model_script_text, self._layers())
        self._script = (self._script + "\n" + model_script_text) if append else model_script_text

    def _check_data(self, data, call: str) -> np.ndarray:
        graph = self._hn()
        in_name = next(n for n, layer in graph["layers"].items() if layer["type"] == "input_layer")
        if isinstance(data, dict):
            if list(data) != [in_name]:
                raise HailoSDKError(f"{call}: dataset keys {list(data)} are not the input layers [{in_name!r}]")
            data = data[in_name]
        if not isinstance(data, np.ndarray):
            raise FakeLimitation(f"{call}: the stand-in takes ndarrays (or dicts of them), not {type(data).__name__}")
        shape = tuple(graph["layers"][in_name]["output_shapes"][0][1:])
        if data.ndim != 4 or data.shape[1:] != shape:
            nchw = data.ndim == 4 and data.shape[1:] == (shape[2], shape[0], shape[1])
            raise HailoSDKError(f"{call}: data shape {list(data.shape)} does not match input layer [-1, "
                                f"{', '.join(map(str, shape))}] (NHWC){'; this looks NCHW' if nchw else ''}")
        if data.dtype != np.float32:
            raise HailoSDKError(f"{call}: data dtype {data.dtype}, expected float32")
        return data

    def _normalize(self, x: np.ndarray) -> np.ndarray:
        if self._norm is None:
            return x
        mean, std = (np.asarray(v, np.float32) for v in self._norm)
        return ((x - mean) / std).astype(np.float32)

    def optimize(self, calib_data, data_type=None, work_dir=None) -> None:
        from hailopipe.quantization import optimizer

        record("optimize", data=summary(calib_data), script=self._script)
        self._require("optimize", States.HAILO_MODEL)
        data = self._check_data(calib_data, "optimize")
        commands = model_script.parse(self._script, self._layers())
        opts = {(c.name, c.args[0] if c.args else None): c for c in commands}
        flavor = opts.get(("model_optimization_flavor", None))
        level = int(flavor.kwargs.get("optimization_level", 2)) if flavor else 2
        calib_cfg = opts.get(("model_optimization_config", "calibration"))
        n = min(len(data), int(calib_cfg.kwargs.get("calibset_size", 64)) if calib_cfg else 64)
        _log.info("Starting Model Optimization")
        if level > 0 and not common.HAS_GPU:
            why = ("less data than the recommended amount (1024), and there's no available GPU" if n < 1024
                   else "no available GPU")
            _log.warning("Reducing optimization level to 0 (the accuracy won't be optimized and compression "
                         "won't be used) because there's %s", why)
            level = 0
        if level == 0:
            _log.warning("Running model optimization with zero level of optimization is not recommended for "
                         "production use and might lead to suboptimal accuracy results")
        _log.info("Using dataset with %d entries for calibration", n)
        norm = [c for c in commands if c.name == "normalization"]
        self._norm = [model_script.numbers(norm[0].args[0]), model_script.numbers(norm[0].args[1])] if norm else None
        x = self._normalize(data[:n])
        lo, hi = ((0 - self._norm[0][0]) / self._norm[1][0], (255 - self._norm[0][0]) / self._norm[1][0]) if norm \
            else (float(x.min()), float(x.max()))
        precision = {}
        for c in commands:
            if c.name == "quantization_param" and "precision_mode" in c.kwargs:
                for name in model_script.layer_names(c.args[0]):
                    precision[name.split("/")[-1]] = c.kwargs["precision_mode"]
        if set(precision.values()) - {"a8_w8", "a16_w16"}:
            raise FakeLimitation(f"the stand-in emulates a8_w8 and a16_w16 only, not {precision}")
        cfg = OptimizeConfig(calib_size=n, per_channel=True, input_range=(lo, hi), precision=precision)
        self._qnet = optimizer.quantize_network(self._net, x, cfg)
        self._state = States.QUANTIZED_MODEL

    # --- compile and emulate -------------------------------------------------------------------
    def compile(self) -> bytes:
        record("compile", hw_arch=self._hw_arch)
        self._require("compile", States.QUANTIZED_MODEL)
        hef = common.build_hef(self._qnet, self._hw_arch, self._norm, common.DFC_VERSION)
        self._state = States.COMPILED_MODEL
        return hef

    @contextlib.contextmanager
    def infer_context(self, inference_context, device_ids=None, nms_score_threshold=None, custom_infer_config=None):
        record("infer_context", context=getattr(inference_context, "name", str(inference_context)))
        if not isinstance(inference_context, InferenceContext):
            raise HailoSDKError(f"unknown inference context {inference_context!r}")
        ctx = _Context(inference_context)
        ctx.active = True
        try:
            yield ctx
        finally:
            ctx.active = False

    def infer(self, context=None, dataset=None, batch_size=8, data_count=None):
        from hailopipe import network
        from hailopipe.runtime import HEF, InferModel

        record("infer", context=getattr(getattr(context, "kind", None), "name", None), data=summary(dataset))
        if not isinstance(context, _Context) or not context.active:
            raise HailoSDKError("infer needs the context object of an open `with runner.infer_context(...)` block")
        data = self._check_data(dataset, "infer")[:data_count]
        kind = context.kind
        if kind == InferenceContext.SDK_NATIVE:
            self._require("SDK_NATIVE inference", *_HAR_STATES)
            out = network.forward(self._net, data)
        elif kind == InferenceContext.SDK_FP_OPTIMIZED:
            self._require("SDK_FP_OPTIMIZED inference", States.QUANTIZED_MODEL, States.COMPILED_MODEL)
            out = network.forward(self._net, self._normalize(data))
        elif kind in (InferenceContext.SDK_QUANTIZED, InferenceContext.SDK_BIT_EXACT):
            self._require(f"{kind.name} inference", States.QUANTIZED_MODEL, States.COMPILED_MODEL)
            from hailopipe.formats import ehef

            model = InferModel(HEF(ehef.compile_network(self._qnet, self._hw_arch)))
            out = model.run_float(self._normalize(data))
        else:
            raise FakeLimitation(f"the stand-in does not emulate {kind.name}")
        return np.asarray(out, np.float32).reshape(len(data), 1, 1, -1)
