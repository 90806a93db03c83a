"""Stand-in for hailo_sdk_client's ClientRunner: records every call, enforces the documented state
machine (UNINITIALIZED -> HAILO_MODEL -> QUANTIZED_MODEL -> COMPILED_MODEL), hw_arch values, model
script spelling, NHWC numeric data of the input layer's shape, and that compile() returns HEF
bytes.  Results are emulated with hailopipe's own code (tflite reader, optimizer, engine): the
numbers are plausible, the file formats are this project's, not Hailo's.  The optimized HN has the
`normalization1` layer (kernel 1/std, bias -mean/std) the script's `normalization` inserts.

What it models of the real DFC, and from where (public code and logs; none is Hailo's source):
- translate_tf_model: node names as the DFC prints them, without `:0` (the stand-in refuses `:0`
  names: no public caller passes them); an unsupported op raises ParsingWithRecommendationException
  recommending the last FULLY_CONNECTED output before it (public messages: "Please try to parse the
  model again, using these end node names: ...").
- optimize: calibration data of any integer or float dtype (xmihol00's MNIST compile passes uint8
  pixels); the level is the script's `model_optimization_flavor(optimization_level=N)` as given,
  else 2 reduced to 1 below 1024 images and to 0 without a GPU, with the DFC's warnings (a
  third-party reading of DFC 3.33.1's mo_config; logs quoted in the reference); per algorithm the
  level's default (1: bias correction; 2: finetune, "Bias Correction skipped" as level-2 logs show),
  overridden by an explicit policy (Model Zoo scripts enable finetune at level 0); both
  bias_correction and finetune enabled is not something any public script or log shows: the
  stand-in warns and runs finetune alone.  Each algorithm logs "Starting <name>" and "Model
  Optimization Algorithm <name> is done ..." or "<name> skipped", as DFC logs do.

SDK log lines go to a non-propagating logger with its own console handler, printed as
`[warning] ...`, the way the DFC prints them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import tempfile

import fake_hailo_common as common
import numpy as np
from fake_hailo_common import FakeLimitation, record, summary

from hailo_sdk_client import model_script
from hailo_sdk_client.exposed_definitions import HailoSDKError, InferenceContext, States
from hailo_sdk_client.model_translator.exceptions import ParsingWithRecommendationException
from hailopipe.formats import hn

_log = logging.getLogger("hailo_sdk.client")
_log.propagate = False
if not _log.handlers:
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
    _log.addHandler(_handler)
_log.setLevel(logging.INFO)

_HAR_STATES = {States.HAILO_MODEL: "hailo_model", States.QUANTIZED_MODEL: "quantized_model",
               States.COMPILED_MODEL: "compiled_model"}
_ALGORITHMS = (("bias_correction", "Bias Correction"), ("adaround", "Adaround"),
               ("finetune", "Quantization-Aware Fine-Tuning"))


class _Context:
    def __init__(self, kind: InferenceContext):
        self.kind, self.active = kind, False


def _node(name: str) -> str:
    return name[:-2] if name.endswith(":0") else name


def _graph(path) -> dict:
    """The TFLite file's input tensors, its ops (code name, output tensor names, float outputs?)."""
    from ai_edge_litert import schema_py_generated as s

    with open(path, "rb") as f:
        buf = f.read()
    model = s.Model.GetRootAs(buf, 0)
    g = model.Subgraphs(0)
    names = {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_")}
    ops = []
    for i in range(g.OperatorsLength()):
        op = g.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        outs = [g.Tensors(j) for j in op.OutputsAsNumpy()]
        ops.append((names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())],
                    [_node(t.Name().decode()) for t in outs], any(t.Type() == s.TensorType.FLOAT32 for t in outs)))
    inputs = {_node(g.Tensors(g.Inputs(i)).Name().decode()): [int(d) for d in g.Tensors(g.Inputs(i)).ShapeAsNumpy()]
              for i in range(g.InputsLength())}
    return {"buf": buf, "inputs": inputs, "ops": ops,
            "all": {_node(g.Tensors(i).Name().decode()) for i in range(g.TensorsLength())}}


# Float ops the stand-in parses (hailopipe's tflite reader: layers with weights, pooling, the flatten,
# a separate RELU, MUL/ADD folded into the layer before), and those whose output may be an end node.
PARSED = ("RESHAPE", "FULLY_CONNECTED", "RELU", "CONV_2D", "DEPTHWISE_CONV_2D", "MAX_POOL_2D", "AVERAGE_POOL_2D",
          "MEAN", "MUL", "ADD")
END_OPS = ("FULLY_CONNECTED", "RELU", "CONV_2D", "DEPTHWISE_CONV_2D")


def _unsupported(ops) -> int | None:
    """Index of the first float op the stand-in's parser (hailopipe's tflite reader) cannot take."""
    for i, (code, _, is_float) in enumerate(ops):
        last = i == len(ops) - 1
        if is_float and code not in PARSED and not (code == "SOFTMAX" and last):
            return i
    return None


def _read_until(path, graph: dict, end: str | None, net_name: str):
    """hailopipe's reading of the TFLite file, cut after the op producing tensor `end`."""
    from ai_edge_litert import schema_py_generated as s

    from hailopipe.formats import tflite

    if end is None:
        return tflite.read(path, net_name)
    import flatbuffers

    model = s.ModelT.InitFromObj(s.Model.GetRootAs(graph["buf"], 0))
    sub = model.subgraphs[0]
    k = next(i for i, (_, outs, _) in enumerate(graph["ops"]) if end in outs)
    sub.outputs = [int(sub.operators[k].outputs[0])]
    sub.operators = sub.operators[:k + 1]
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    with tempfile.TemporaryDirectory() as tmp:
        cut = os.path.join(tmp, "cut.tflite")
        with open(cut, "wb") as f:
            f.write(bytes(builder.Output()))
        return tflite.read(cut, net_name)


class ClientRunner:
    def __init__(self, hw_arch: str | None = None, har: str | None = None):
        record("ClientRunner", hw_arch=hw_arch, har=None if har is None else str(har))
        self._state, self._net, self._qnet, self._script = States.UNINITIALIZED, None, None, ""
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
        self._script = h.metadata.get("model_script", "")
        self._hw_arch = self._hw_arch or h.metadata.get("hw_arch")

    def save_har(self, har_path) -> None:
        from hailopipe.formats import har as har_format

        record("save_har", path=str(har_path), state=self._state.name)
        self._require("save_har", *_HAR_STATES)
        meta = {"hw_arch": self._hw_arch, "model_script": self._script, "fake_sdk_version": common.DFC_VERSION}
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

        record("translate_tf_model", model_path=str(model_path), net_name=net_name, start_node_names=start_node_names,
               end_node_names=end_node_names, tensor_shapes=tensor_shapes)
        self._require("translate_tf_model", States.UNINITIALIZED)
        if not str(model_path).endswith(".tflite"):
            raise FakeLimitation("the stand-in translates only .tflite files")
        g = _graph(model_path)
        given = list(start_node_names or []) + list(end_node_names or []) + list(tensor_shapes or {})
        if any(str(n).endswith(":0") for n in given):
            raise HailoSDKError(f"node names {given}: the stand-in takes TFLite node names as the DFC prints them, "
                                "without ':0' (no public caller passes ':0' names)")
        for name in start_node_names or []:
            if name not in g["inputs"]:
                raise HailoSDKError(f"start node {name!r} is not an input tensor of {model_path} ({list(g['inputs'])})")
        fc_outputs = [outs[0] for code, outs, _ in g["ops"] if code in END_OPS]
        for name in end_node_names or []:
            if name not in g["all"]:
                raise HailoSDKError(f"end node {name!r} is not a tensor of {model_path}")
            if name not in fc_outputs:
                raise FakeLimitation(f"the stand-in ends only at a layer with weights (or its RELU), not {name!r}")
        for name, shape in (tensor_shapes or {}).items():
            want = g["inputs"].get(name)
            if name not in (start_node_names or []) or want is None or list(shape)[1:] != want[1:] or len(shape) != 4:
                raise HailoSDKError(f"tensor_shapes[{name!r}] = {shape} does not match the NHWC input {want}")
        end = (end_node_names or [None])[-1]
        stop = next((i for i, (_, outs, _) in enumerate(g["ops"]) if end in outs), len(g["ops"]))
        bad = _unsupported(g["ops"][:stop + 1])
        if bad is not None:
            before = [outs[0] for code, outs, _ in g["ops"][:bad] if code in END_OPS][-1:]
            code, outs, _ = g["ops"][bad]
            raise ParsingWithRecommendationException(
                f"Parsing failed. The errors found in the graph are:\n UnsupportedOperationError in op {outs[0]}: "
                f"{code} operation is unsupported\nPlease try to parse the model again, using these end node names: "
                f"{', '.join(before)}", before)
        if end is None and g["ops"] and g["ops"][-1][0] == "SOFTMAX":
            raise FakeLimitation("the stand-in does not emulate the SDK's softmax layer; end at the logits")
        try:
            net = _read_until(model_path, g, end, net_name)
        except PipelineError as exc:
            raise HailoSDKError(f"Parsing failed: {exc}") from None
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
        if data.dtype.kind not in "uif":
            raise HailoSDKError(f"{call}: data dtype {data.dtype} is not numeric")
        return data.astype(np.float32)

    def _plan(self, commands, n: int) -> tuple[int, dict]:
        """(level, {algorithm: on}) for `commands` and `n` images, logging what the DFC logs."""
        opts = {(c.name, c.args[0] if c.args else None): c for c in commands}
        flavor = opts.get(("model_optimization_flavor", None))
        explicit = flavor.kwargs.get("optimization_level") if flavor else None
        if explicit is not None:
            level = int(explicit)
        else:
            level, why = 2, []
            if n < 1024:
                level, why = 1, ["less data than the recommended amount (1024)"]
            if not common.gpu_visible():
                level, why = 0, why + ["no available GPU"]
            if why:
                _log.warning("Reducing optimization level to %d (the accuracy won't be optimized and compression "
                             "won't be used) because there's %s", level, ", and there's ".join(why))
        if level == 0:
            _log.warning("Running model optimization with zero level of optimization is not recommended for "
                         "production use and might lead to suboptimal accuracy results")
        on = {"bias_correction": level == 1, "adaround": level >= 3, "finetune": level >= 2}
        for c in commands:
            if c.name == "post_quantization_optimization" and c.args[0] in on and "policy" in c.kwargs:
                on[c.args[0]] = c.kwargs["policy"] == "enabled"
        if on["bias_correction"] and on["finetune"]:
            _log.warning("(stand-in) bias_correction and finetune are both enabled; what the DFC does then is not "
                         "public: running finetune only")
            on["bias_correction"] = False
        if on["adaround"] or level > 2:
            raise FakeLimitation("the stand-in emulates optimization levels 0-2 and no adaround")
        return level, on

    def optimize(self, calib_data, data_type=None, work_dir=None) -> None:
        from hailopipe.quantization import optimizer
        from hailopipe.quantization.config import FinetuneConfig, OptimizeConfig

        record("optimize", data=summary(calib_data), script=self._script, gpu=common.gpu_visible())
        self._require("optimize", States.HAILO_MODEL)
        data = self._check_data(calib_data, "optimize")
        commands = model_script.parse(self._script, self._layers())
        opts = {(c.name, c.args[0] if c.args else None): c for c in commands}
        calib_cfg = opts.get(("model_optimization_config", "calibration"))
        n = min(len(data), int(calib_cfg.kwargs.get("calibset_size", 64)) if calib_cfg else 64)
        _log.info("Starting Model Optimization")
        level, on = self._plan(commands, n)
        norm = [c for c in commands if c.name == "normalization"]
        if not norm:
            raise FakeLimitation("the stand-in needs a normalization line (it emulates raw-pixel input streams)")
        precision = {}
        for c in commands:
            if c.name == "quantization_param" and "precision_mode" in c.kwargs:
                for name in model_script.layer_names(c.args[0]):
                    precision[name.split("/")[-1]] = c.kwargs["precision_mode"]
        if set(precision.values()) - {"a8_w8", "a16_w16"}:
            raise FakeLimitation(f"the stand-in emulates a8_w8 and a16_w16 only, not {precision}")
        ft = opts.get(("post_quantization_optimization", "finetune"))
        ft_kw = {k: type(getattr(FinetuneConfig(), k))(float(ft.kwargs[k]))
                 for k in ("learning_rate", "epochs", "batch_size") if ft and k in ft.kwargs}
        cfg = OptimizeConfig(calib_size=n, per_channel=True, precision=precision,
                             normalization=(tuple(model_script.numbers(norm[0].args[0])),
                                            tuple(model_script.numbers(norm[0].args[1]))),
                             optimization_level=2 if on["finetune"] else 1 if on["bias_correction"] else 0,
                             finetune=FinetuneConfig(**ft_kw))
        _log.info("Starting Statistics Collector")
        _log.info("Using dataset with %d entries for calibration", n)
        self._qnet = optimizer.quantize_network(self._net, data[:n], cfg)
        for algo, name in _ALGORITHMS:
            if on[algo]:
                _log.info("Starting %s", name)
                _log.info("Model Optimization Algorithm %s is done (completion time is 00:00:00.01)", name)
            else:
                _log.info("%s skipped", name)
        self._net = optimizer.with_normalization(self._net, cfg)  # the HN now has normalization1
        self._state = States.QUANTIZED_MODEL
        _log.info("Model Optimization is done")

    # --- compile and emulate -------------------------------------------------------------------
    def compile(self) -> bytes:
        record("compile", hw_arch=self._hw_arch)
        self._require("compile", States.QUANTIZED_MODEL)
        hef = common.build_hef(self._qnet, self._hw_arch, common.DFC_VERSION)
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
        from hailopipe.formats import ehef
        from hailopipe.runtime import HEF, InferModel

        record("infer", context=getattr(getattr(context, "kind", None), "name", None), data=summary(dataset))
        if not isinstance(context, _Context) or not context.active:
            raise HailoSDKError("infer needs the context object of an open `with runner.infer_context(...)` block")
        data = self._check_data(dataset, "infer")[:data_count]
        kind = context.kind
        if kind == InferenceContext.SDK_NATIVE:  # the model as translated: no model script
            self._require("SDK_NATIVE inference", *_HAR_STATES)
            out = network.forward(dataclasses.replace(self._net, normalization=None), data)
        elif kind == InferenceContext.SDK_FP_OPTIMIZED:  # the script applied (normalization1), float
            self._require("SDK_FP_OPTIMIZED inference", States.QUANTIZED_MODEL, States.COMPILED_MODEL)
            out = network.forward(self._net, data)
        elif kind in (InferenceContext.SDK_QUANTIZED, InferenceContext.SDK_BIT_EXACT):
            self._require(f"{kind.name} inference", States.QUANTIZED_MODEL, States.COMPILED_MODEL)
            out = InferModel(HEF(ehef.compile_network(self._qnet, self._hw_arch))).run_float(data)
        else:
            raise FakeLimitation(f"the stand-in does not emulate {kind.name}")
        return np.asarray(out, np.float32).reshape(len(data), 1, 1, -1)
