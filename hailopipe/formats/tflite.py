"""Read an exported float TFLite model into a `Network`, without TensorFlow (Hailo's parser step).

The flatbuffer is decoded with the schema that LiteRT (`ai_edge_litert`) ships.  The data path is
followed from the graph input, one op after the other (`SUPPORTED`):

- CONV_2D and DEPTHWISE_CONV_2D (depth multiplier 1), fused activation NONE, RELU or RELU6, become
  `conv<N>` / `dw<N>` layers (TFLite's [cout, kh, kw, cin] and [1, kh, kw, C] kernels transposed to
  the HN's [kh, kw, cin, cout] and [kh, kw, C, 1]); FULLY_CONNECTED becomes `fc<N>` (kernel [in, out]);
- MAX_POOL_2D and AVERAGE_POOL_2D become `maxpool<N>` / `avgpool<N>`; a MEAN over H and W (a global
  average pool) becomes an `avgpool<N>` of the whole HxW;
- RESHAPE is the Flatten (NHWC order, which the next dense layer's kernel rows follow); Keras 3
  writes it SHAPE -> STRIDED_SLICE -> PACK -> RESHAPE, whose int32 side computation is skipped like
  every op whose outputs are not float32;
- a standalone RELU or RELU6 after a linear conv or dense layer is fused into it, as is one after
  (or fused by the converter into) a max pool that follows such a layer;
- a BatchNorm is folded into the layer before it, as the SDK folds it: the TFLite converter already
  folds a Keras conv's BatchNorm into its weights, and a standalone MUL / ADD by a per-channel
  constant (a BatchNorm it could not fold) right after a linear conv or dense layer is folded here;
- a trailing SOFTMAX is left to the host.

Anything else stops the parse with one line naming the op, its node (output tensor), the supported
set and the end node to cut at (the last tensor parsed), as Hailo's parser proposes end nodes.
"""

from __future__ import annotations

import os

import numpy as np

from hailopipe.errors import PipelineError
from hailopipe.fileio import read_limited
from hailopipe.network import Conv, Dense, Network, Pool, output_shape

MAX_TFLITE_BYTES = 1 << 30
SUPPORTED = ("CONV_2D", "DEPTHWISE_CONV_2D", "MAX_POOL_2D", "AVERAGE_POOL_2D", "MEAN", "RESHAPE",
             "FULLY_CONNECTED", "RELU", "RELU6", "MUL", "ADD", "SOFTMAX")
SUPPORTED_TEXT = ("CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED (fused NONE, RELU, RELU6), MAX_POOL_2D, "
                  "AVERAGE_POOL_2D, MEAN over H,W, RESHAPE (flatten), RELU/RELU6 and a BatchNorm's MUL/ADD "
                  "after a linear conv or dense layer, trailing SOFTMAX")


def _schema():
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


def _name(tensor) -> str:
    return (tensor.Name() or b"").decode("utf-8", "replace")


def _const(model, graph, index: int, path) -> np.ndarray:
    s = _schema()
    t = graph.Tensors(index)
    if t.Type() != s.TensorType.FLOAT32:
        raise PipelineError(f"{path}: tensor {_name(t)!r} is not float32 (quantized TFLite input is not supported)")
    buf = model.Buffers(t.Buffer())
    data = buf.DataAsNumpy() if buf is not None and buf.DataLength() else None
    if data is None or isinstance(data, int):
        raise PipelineError(f"{path}: tensor {_name(t)!r} has no constant data")
    shape = tuple(int(d) for d in t.ShapeAsNumpy())
    arr = np.frombuffer(data.tobytes(), dtype="<f4")
    if arr.size != int(np.prod(shape)):
        raise PipelineError(f"{path}: tensor {_name(t)!r} data does not match its shape {list(shape)}")
    return arr.reshape(shape).astype(np.float32)


def _decode(path: str | os.PathLike, what):
    """what(model, graph, schema) on the TFLite file at `path`: one size-limited read, the file
    identifier checked, and a corrupt flatbuffer (which raises anything from IndexError to
    struct.error) turned into one PipelineError naming the file."""
    buf = read_limited(path, MAX_TFLITE_BYTES, "TFLite model")
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise PipelineError(f"{path}: not a TFLite file (no TFL3 identifier)")
    s = _schema()  # import errors are not file errors
    try:
        model = s.Model.GetRootAs(buf, 0)
        if model.SubgraphsLength() != 1:
            raise PipelineError(f"{path}: expected one subgraph, found {model.SubgraphsLength()}")
        graph = model.Subgraphs(0)
        if graph.InputsLength() != 1 or graph.OutputsLength() != 1:
            raise PipelineError(f"{path}: expected one input and one output tensor")
        return what(model, graph, s)
    except PipelineError:
        raise
    except Exception as exc:
        raise PipelineError(f"{path}: corrupt TFLite flatbuffer ({type(exc).__name__}: {exc})") from None


def _code(model, op) -> int:
    oc = model.OperatorCodes(op.OpcodeIndex())
    return max(int(oc.BuiltinCode()), int(oc.DeprecatedBuiltinCode()))


def io_names(path: str | os.PathLike) -> tuple[str, list[int], str]:
    """(input tensor name, input shape, end tensor name): the end is the graph output, or the
    logits feeding a trailing SOFTMAX (which the host applies)."""
    def names(model, graph, s):
        in_t, end = graph.Tensors(graph.Inputs(0)), int(graph.Outputs(0))
        for i in range(graph.OperatorsLength()):
            op = graph.Operators(i)
            if _code(model, op) == s.BuiltinOperator.SOFTMAX and int(op.Outputs(0)) == end:
                end = int(op.Inputs(0))
        return _name(in_t), [int(d) for d in in_t.ShapeAsNumpy()], _name(graph.Tensors(end))

    return _decode(path, names)


def _original_names(graph, out: int, consts, before=()) -> list[str]:
    """The source model's names of a layer, as the SDK keeps them: its output tensor's name and the
    names of the ops fused into it (TFLite joins them with ';' in the tensor names), without ':0'."""
    names = list(before)
    for index in [out, *(i for i in consts if i >= 0)]:
        for part in _name(graph.Tensors(index)).split(";"):
            part = part.removesuffix(":0")
            if part and part not in names:
                names.append(part)
    return names


def op_names(path: str | os.PathLike) -> tuple[list[str], list[int]]:
    """(the builtin op names in graph order, the shape of the `io_names` end tensor)."""
    def ops(model, graph, s):
        names = {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_")}
        end = io_names(path)[2]
        shape = next([int(d) for d in graph.Tensors(i).ShapeAsNumpy()] for i in range(graph.TensorsLength())
                     if _name(graph.Tensors(i)) == end)
        return [names.get(_code(model, graph.Operators(i)), "?") for i in range(graph.OperatorsLength())], shape

    return _decode(path, ops)


def _int_const(model, graph, index: int, path) -> np.ndarray:
    t = graph.Tensors(index)
    buf = model.Buffers(t.Buffer())
    data = buf.DataAsNumpy() if buf is not None and buf.DataLength() else None
    if t.Type() != _schema().TensorType.INT32 or data is None or isinstance(data, int):
        raise PipelineError(f"{path}: tensor {_name(t)!r} is not a constant int32 tensor")
    return np.frombuffer(data.tobytes(), dtype="<i4").astype(np.int64)


def _node(name: str) -> str:
    """A TFLite tensor name as a node name: its first op (TFLite joins fused ops' names with ';'), no ':0'."""
    return name.split(";")[0].removesuffix(":0")


def read(path: str | os.PathLike, net_name: str) -> Network:
    """Parse the TFLite file at `path` into a Network named `net_name`."""
    return _decode(path, lambda model, graph, s: _Parser(model, graph, s, path).run(net_name))


class _Parser:
    """One pass over the ops of the data path (module docstring)."""

    def __init__(self, model, graph, s, path):
        self.model, self.graph, self.s, self.path = model, graph, s, path
        self.op_names = {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_")}
        act = s.ActivationFunctionType
        self.acts = {act.NONE: "linear", act.RELU: "relu", act.RELU6: "relu6"}
        self.act_names = {v: k for k, v in vars(act).items() if not k.startswith("_")}
        self.layers: list = []
        self.counts: dict[str, int] = {}
        self.layer_out = -1  # the tensor the last layer (with any op folded into it) writes

    def run(self, net_name: str) -> Network:
        s, graph = self.s, self.graph
        in_index = int(graph.Inputs(0))
        in_t = graph.Tensors(in_index)
        in_shape = [int(d) for d in in_t.ShapeAsNumpy()] if in_t.ShapeLength() else []
        if in_t.Type() != s.TensorType.FLOAT32 or len(in_shape) != 4 or min(in_shape[1:]) < 1:
            raise PipelineError(f"{self.path}: input must be float32 NHWC, got shape {in_shape}")
        self.current, self.shape, self.flat = in_index, tuple(in_shape[1:]), False
        last = graph.OperatorsLength() - 1
        for i in range(graph.OperatorsLength()):
            op = graph.Operators(i)
            outs = [int(o) for o in op.OutputsAsNumpy()] if op.OutputsLength() else []
            if not outs or all(graph.Tensors(o).Type() != s.TensorType.FLOAT32 for o in outs):
                continue  # shape computation (SHAPE, STRIDED_SLICE, PACK, ...)
            self.op(i, op, outs, last)
        if not self.layers:
            raise PipelineError(f"{self.path}: no supported layer found (supported: {SUPPORTED_TEXT})")
        return Network(net_name, tuple(in_shape[1:]), self.layers, _name(in_t).split(":")[0] or "input")

    # --- helpers -------------------------------------------------------------------------------

    def code_name(self, code: int) -> str:
        return self.op_names.get(code, str(code))

    def unsupported(self, i: int, code: int, outs, why: str = "") -> PipelineError:
        node = _node(_name(self.graph.Tensors(outs[0])))
        end = (f"try end node '{_node(_name(self.graph.Tensors(self.current)))}'" if self.layers
               else "no supported layer comes before it")
        return PipelineError(f"{self.path}: op {i} ({self.code_name(code)}) at node '{node}' is not supported"
                             f"{why}; supported: {SUPPORTED_TEXT}; {end}")

    def options(self, op, cls):
        table = op.BuiltinOptions()
        if table is None:
            raise PipelineError(f"{self.path}: an op has no options")
        opts = cls()
        opts.Init(table.Bytes, table.Pos)
        return opts

    def activation(self, i, code, outs, fused: int) -> str:
        if fused not in self.acts:
            raise self.unsupported(i, code, outs, f" with fused activation {self.act_names.get(fused, fused)}")
        return self.acts[fused]

    def name(self, kind: str) -> str:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        return f"{kind}{self.counts[kind]}"

    def add(self, i: int, code: int, layer, out: int) -> None:
        """Append `layer`, checking its shape against the TFLite tensor it writes."""
        try:
            shape = output_shape(layer, self.shape)
        except ValueError as exc:
            raise PipelineError(f"{self.path}: op {i} ({self.code_name(code)}): {exc}") from None
        t = self.graph.Tensors(out)
        dims = [int(d) for d in t.ShapeAsNumpy()] if t.ShapeLength() else []
        if dims[1:] != list(shape) and not (len(dims) == 2 and dims[1] == int(np.prod(shape))):
            raise PipelineError(f"{self.path}: op {i} ({self.code_name(code)}): output shape {dims}, "
                                f"expected [N, {', '.join(map(str, shape))}]")
        self.layers.append(layer)
        self.shape, self.layer_out = shape, out

    def linear_before(self, direct: bool = True):
        """The last layer if it is a linear conv or dense layer (that writes the current tensor)."""
        last = self.layers[-1] if self.layers else None
        if (isinstance(last, (Conv, Dense)) and last.activation == "linear"
                and (not direct or self.layer_out == self.current)):
            return last
        return None

    def activation_target(self):
        """The layer a standalone RELU/RELU6 belongs to: the linear conv or dense layer before it, or
        before the max pool before it (max commutes with a ReLU: max(relu(x)) = relu(max(x)))."""
        if self.linear_before(direct=False) is not None:
            return self.layers[-1]
        if len(self.layers) >= 2 and isinstance(self.layers[-1], Pool) and self.layers[-1].kind == "max":
            before = self.layers[-2]
            if isinstance(before, (Conv, Dense)) and before.activation == "linear":
                return before
        return None

    # --- the ops -------------------------------------------------------------------------------

    def op(self, i: int, op, outs: list[int], last: int) -> None:
        s, ops = self.s, self.s.BuiltinOperator
        code = _code(self.model, op)
        ins = [int(x) for x in op.InputsAsNumpy()] if op.InputsLength() else []
        data = [x for x in ins if x == self.current]
        if not data or (code not in (ops.MUL, ops.ADD) and ins[0] != self.current):
            raise PipelineError(f"{self.path}: op {i} ({self.code_name(code)}) is not on the single data path; "
                                "only chains of layers are supported")
        if code in (ops.CONV_2D, ops.DEPTHWISE_CONV_2D) and not self.flat:
            self.conv(i, code, op, ins, outs, depthwise=code == ops.DEPTHWISE_CONV_2D)
        elif code in (ops.MAX_POOL_2D, ops.AVERAGE_POOL_2D) and not self.flat:
            self.pool(i, code, op, outs)
        elif code == ops.MEAN and not self.flat:
            self.mean(i, code, op, ins, outs)
        elif code == ops.RESHAPE:
            self.reshape(i, code, outs)
        elif code == ops.FULLY_CONNECTED:
            fused = self.options(op, s.FullyConnectedOptions).FusedActivationFunction()
            act = self.activation(i, code, outs, fused)
            w = _const(self.model, self.graph, ins[1], self.path)  # [out, in]
            if w.ndim != 2:
                raise PipelineError(f"{self.path}: op {i} (FULLY_CONNECTED): kernel shape {list(w.shape)} is not 2-D")
            b = self.bias(ins, w.shape[0], i, code)
            self.add(i, code, Dense(self.name("fc"), np.ascontiguousarray(w.T), b, act,
                                    _original_names(self.graph, outs[0], ins[1:])), outs[0])
            self.flat = True
        elif code in (ops.RELU, ops.RELU6) and self.activation_target() is not None:
            self.fuse_activation(self.activation_target(), "relu" if code == ops.RELU else "relu6", outs[0])
        elif code in (ops.MUL, ops.ADD) and self.linear_before() is not None:
            self.fold(i, code, op, ins, outs)
        elif code == ops.SOFTMAX and i == last:
            return  # left to the host, as logits_layer(..., softmax, cpu)
        else:
            why = " after a flatten" if self.flat and code in (
                ops.CONV_2D, ops.DEPTHWISE_CONV_2D, ops.MAX_POOL_2D, ops.AVERAGE_POOL_2D, ops.MEAN) else ""
            if code in (ops.RELU, ops.RELU6, ops.MUL, ops.ADD):
                why = " here (only right after a linear conv or dense layer)"
            elif code == ops.SOFTMAX:
                why = " before the last op"
            raise self.unsupported(i, code, outs, why)
        self.current = outs[0]

    def bias(self, ins, units: int, i: int, code: int) -> np.ndarray:
        if len(ins) > 2 and ins[2] >= 0:
            b = _const(self.model, self.graph, ins[2], self.path)
            if b.shape != (units,):
                raise PipelineError(f"{self.path}: op {i} ({self.code_name(code)}): bias shape {list(b.shape)} "
                                    f"!= [{units}]")
            return b
        return np.zeros(units, np.float32)

    def conv(self, i, code, op, ins, outs, depthwise: bool) -> None:
        s = self.s
        o = self.options(op, s.DepthwiseConv2DOptions if depthwise else s.Conv2DOptions)
        act = self.activation(i, code, outs, o.FusedActivationFunction())
        w = _const(self.model, self.graph, ins[1], self.path)
        channels = self.shape[-1]
        if w.ndim != 4:
            raise PipelineError(f"{self.path}: op {i} ({self.code_name(code)}): kernel shape {list(w.shape)} "
                                "is not 4-D")
        if depthwise:  # [1, kh, kw, C x multiplier]
            if w.shape[0] != 1 or w.shape[3] != channels:
                raise self.unsupported(i, code, outs, f" with kernel {list(w.shape)} (only depth multiplier 1 "
                                       f"on {channels} channels)")
            kernel = w[0][:, :, :, None]
        else:  # [cout, kh, kw, cin]
            kernel = w.transpose(1, 2, 3, 0)
        strides, dilations = (o.StrideH(), o.StrideW()), (o.DilationHFactor(), o.DilationWFactor())
        if min(*strides, *dilations) < 1:
            raise PipelineError(f"{self.path}: op {i} ({self.code_name(code)}): strides {list(strides)} and "
                                f"dilations {list(dilations)} must be >= 1")
        b = self.bias(ins, channels if depthwise else kernel.shape[3], i, code)
        layer = Conv(self.name("dw" if depthwise else "conv"), np.ascontiguousarray(kernel), b, strides,
                     self.padding(o.Padding()), act, depthwise, dilations,
                     _original_names(self.graph, outs[0], ins[1:]))
        self.add(i, code, layer, outs[0])

    def padding(self, value: int) -> str:
        pad = {self.s.Padding.SAME: "SAME_TENSORFLOW", self.s.Padding.VALID: "VALID"}.get(value)
        if pad is None:
            raise PipelineError(f"{self.path}: unknown padding {value}")
        return pad

    def pool(self, i, code, op, outs) -> None:
        o = self.options(op, self.s.Pool2DOptions)
        kind = "max" if code == self.s.BuiltinOperator.MAX_POOL_2D else "avg"
        size, strides = (o.FilterHeight(), o.FilterWidth()), (o.StrideH(), o.StrideW())
        if min(*size, *strides) < 1:
            raise PipelineError(f"{self.path}: op {i} ({self.code_name(code)}): filter {list(size)} and strides "
                                f"{list(strides)} must be >= 1")
        act = self.activation(i, code, outs, o.FusedActivationFunction())
        before = self.linear_before()
        if act != "linear" and (kind != "max" or before is None):
            raise self.unsupported(i, code, outs, f" with fused activation {act} (only a max pool right after a "
                                   "linear conv or dense layer, whose activation it becomes)")
        if act != "linear":  # max(relu(x)) = relu(max(x)): the activation belongs to the layer before
            before.activation = act
        self.add(i, code, Pool(self.name(f"{kind}pool"), kind, size, strides, self.padding(o.Padding()),
                               _original_names(self.graph, outs[0], [])), outs[0])

    def mean(self, i, code, op, ins, outs) -> None:
        axes = sorted(int(a) % 4 for a in _int_const(self.model, self.graph, ins[1], self.path)) if len(ins) > 1 else []
        if axes != [1, 2]:
            raise self.unsupported(i, code, outs, f" over axes {axes} (only over H and W, a global average pool)")
        h, w = self.shape[:2]
        self.add(i, code, Pool(self.name("avgpool"), "avg", (h, w), (h, w), "VALID",
                               _original_names(self.graph, outs[0], [])), outs[0])

    def reshape(self, i, code, outs) -> None:
        t = self.graph.Tensors(outs[0])
        dims = [int(d) for d in t.ShapeAsNumpy()] if t.ShapeLength() else []
        size = int(np.prod(self.shape))
        if dims[1:] == [size] or (dims[1:] == list(self.shape)):
            self.flat = self.flat or dims[1:] == [size]
            return
        if self.shape[:2] == (1, 1) and dims[1:] in ([1, 1, size], [size]):
            return
        raise self.unsupported(i, code, outs, f" to {dims} (only a flatten of the {'x'.join(map(str, self.shape))} "
                               "tensor)")

    def fuse_activation(self, layer, act: str, out: int) -> None:
        layer.activation = act
        layer.original_names = _original_names(self.graph, out, [], layer.original_names)
        if self.layer_out == self.current and layer is self.layers[-1]:
            self.layer_out = out

    def fold(self, i, code, op, ins, outs) -> None:
        """MUL / ADD by a per-channel constant into the linear layer before it (a BatchNorm)."""
        s, layer = self.s, self.layers[-1]
        other = [x for x in ins if x != self.current]
        channels = self.shape[-1]
        value = _const(self.model, self.graph, other[0], self.path) if len(other) == 1 else None
        if value is None or value.size not in (1, channels) or any(d != 1 for d in value.shape[:-1]):
            raise self.unsupported(i, code, outs, " (only by a constant of one value per channel)")
        value = np.broadcast_to(value.reshape(-1), (channels,)).astype(np.float32)
        is_mul = code == s.BuiltinOperator.MUL
        opts = self.options(op, s.MulOptions if is_mul else s.AddOptions)
        act = self.activation(i, code, outs, opts.FusedActivationFunction())
        if is_mul:
            scale = value[None, None, :, None] if isinstance(layer, Conv) and layer.depthwise else value
            layer.kernel = (layer.kernel * scale).astype(np.float32)
            layer.bias = (layer.bias * value).astype(np.float32)
        else:
            layer.bias = (layer.bias + value).astype(np.float32)
        layer.activation = act
        layer.original_names = _original_names(self.graph, outs[0], other, layer.original_names)
        self.layer_out = outs[0]
