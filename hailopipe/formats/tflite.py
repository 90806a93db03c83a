"""Read an exported float TFLite model into a `Network`, without TensorFlow (Hailo's parser step).

The flatbuffer is decoded with the schema that LiteRT (`ai_edge_litert`) ships.  The data path is
followed from the graph input: RESHAPE (the Flatten) and FULLY_CONNECTED with a fused activation
(NONE or RELU) become dense layers; a trailing standalone RELU is fused, a trailing SOFTMAX is left
to the host.  Ops whose outputs are not float32 only compute shapes and are skipped.  Anything else
is refused with a PipelineError naming the op, as Hailo's parser refuses unsupported layers.
"""

from __future__ import annotations

import os

import numpy as np

from hailopipe.errors import PipelineError
from hailopipe.fileio import read_limited
from hailopipe.network import Dense, Network

MAX_TFLITE_BYTES = 1 << 30


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


def read(path: str | os.PathLike, net_name: str) -> Network:
    """Parse the TFLite file at `path` into a Network named `net_name`."""
    return _decode(path, lambda model, graph, s: _parse(model, graph, s, path, net_name))


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


def _parse(model, graph, s, path, net_name: str) -> Network:
    ops = s.BuiltinOperator
    in_index = int(graph.Inputs(0))
    in_t = graph.Tensors(in_index)
    in_shape = [int(d) for d in in_t.ShapeAsNumpy()]
    if in_t.Type() != s.TensorType.FLOAT32 or len(in_shape) != 4:
        raise PipelineError(f"{path}: input must be float32 NHWC, got shape {in_shape}")

    names = {v: k for k, v in vars(ops).items() if not k.startswith("_")}
    current, layers = in_index, []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        outs = [int(o) for o in op.OutputsAsNumpy()]
        if all(graph.Tensors(o).Type() != s.TensorType.FLOAT32 for o in outs):
            continue  # shape computation (SHAPE, STRIDED_SLICE, PACK, ...)
        c = _code(model, op)
        ins = [int(x) for x in op.InputsAsNumpy()]
        if not ins or ins[0] != current:
            raise PipelineError(f"{path}: op {i} ({names.get(c, c)}) is not on the single data path; "
                                "only chains of Dense layers are supported")
        if c == ops.RESHAPE:
            pass
        elif c == ops.FULLY_CONNECTED:
            opts = s.FullyConnectedOptions()
            table = op.BuiltinOptions()
            opts.Init(table.Bytes, table.Pos)
            fused = opts.FusedActivationFunction()
            act = {s.ActivationFunctionType.NONE: "linear", s.ActivationFunctionType.RELU: "relu"}.get(fused)
            if act is None:
                raise PipelineError(f"{path}: op {i}: fused activation {fused} is not supported (linear, relu)")
            w = _const(model, graph, ins[1], path)  # [out, in]
            b = _const(model, graph, ins[2], path) if len(ins) > 2 and ins[2] >= 0 else np.zeros(w.shape[0], np.float32)
            layers.append(Dense(f"fc{len(layers) + 1}", np.ascontiguousarray(w.T), b, act,
                                _original_names(graph, outs[0], ins[1:])))
        elif c == ops.RELU and layers and layers[-1].activation == "linear":
            layers[-1].activation = "relu"
            layers[-1].original_names = _original_names(graph, outs[0], [], layers[-1].original_names)
        elif c == ops.SOFTMAX and i == graph.OperatorsLength() - 1:
            pass  # left to the host, as logits_layer(..., softmax, cpu)
        else:
            raise PipelineError(f"{path}: op {i} ({names.get(c, c)}) is not supported; "
                                "supported: RESHAPE, FULLY_CONNECTED (+RELU), trailing SOFTMAX")
        current = outs[0]
    if not layers:
        raise PipelineError(f"{path}: no FULLY_CONNECTED layer found")
    features = int(np.prod(in_shape[1:]))
    for layer in layers:
        if layer.kernel.shape[0] != features:
            raise PipelineError(f"{path}: {layer.name} expects {layer.kernel.shape[0]} inputs, gets {features}")
        features = layer.kernel.shape[1]
    return Network(net_name, tuple(in_shape[1:]), layers, _name(in_t).split(":")[0] or "input")
