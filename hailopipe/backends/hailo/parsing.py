"""The hailo backend's parse step: which node names `translate_tf_model` gets, and the retries.

Public Keras -> TFLite -> DFC flows call `runner.translate_tf_model(model.tflite, net_name)` with no
node names (e.g. the Hailo-8L MNIST guide's `hailo parser tf ... mnist.tflite`), and no public caller
passes the `:0`-suffixed tensor names a Keras 3 export has (`serving_default_input:0`).  So:

  1. no node names, unless the graph ends in a SOFTMAX: then `end_node_names=[<its input>]`
     (the logits; softmax is left to the host) with the `:0` dropped;
  2. on `ParsingWithRecommendationException`, once more on a fresh runner with the parser's
     recommended end nodes (its `recommended_end_node_names`, as public retry code reads it, or the
     message's "Please try to parse the model again, using these end node names: a, b");
  3. if an attempt that named nodes fails without a recommendation, once more with none.

Every attempt is logged, and the summary lists them.  A parse that kept fewer layers with weights
(FULLY_CONNECTED, CONV_2D, DEPTHWISE_CONV_2D) than the TFLite file has, or whose output is not the
logits' width, is refused: the rest would have to run on the host, which this pipeline does not
do.  A Keras export with a dynamic batch writes Flatten as SHAPE -> STRIDED_SLICE -> PACK ->
RESHAPE; exported with a fixed batch of 1 it is one RESHAPE, the form parsers handle best (the
error says so when that pattern is present).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import numpy as np

from hailopipe.backends.hailo import hn_view
from hailopipe.backends.hailo import sdk as hailo_sdk
from hailopipe.errors import PipelineError
from hailopipe.formats import tflite

log = logging.getLogger(__name__)
WEIGHT_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D")
_RECOMMENDED = re.compile(r"using these end node names:\s*(.+?)\s*(?:\n|$)", re.IGNORECASE)


@dataclass(frozen=True)
class Graph:
    """What the parse step needs to know of the TFLite file."""
    input_name: str
    logits: str             # the graph output, or the input of a trailing SOFTMAX
    softmax: bool           # the graph ends in a SOFTMAX
    logits_width: int
    weight_layers: int      # FULLY_CONNECTED, CONV_2D and DEPTHWISE_CONV_2D ops
    dynamic_flatten: bool   # Flatten written as SHAPE -> STRIDED_SLICE -> PACK -> RESHAPE


def node_name(tensor_name: str) -> str:
    """A TFLite tensor name as the DFC prints node names: without the `:0` output suffix."""
    return re.sub(r":0$", "", tensor_name)


def read_graph(path) -> Graph:
    input_name, _, logits = tflite.io_names(path)
    ops, shape = tflite.op_names(path)
    dynamic = all(op in ops for op in ("SHAPE", "STRIDED_SLICE", "PACK", "RESHAPE"))
    return Graph(input_name, logits, bool(ops) and ops[-1] == "SOFTMAX", int(np.prod(shape[1:])),
                 sum(ops.count(op) for op in WEIGHT_OPS), dynamic)


def recommended_end_nodes(exc: Exception) -> list[str]:
    names = getattr(exc, "recommended_end_node_names", None)
    if not names:
        m = _RECOMMENDED.search(str(exc))
        names = m.group(1).split(",") if m else []
    if isinstance(names, str):
        names = names.split(",")
    return [n.strip() for n in names if str(n).strip()]


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def translate(sdk, tflite_path, net_name: str, hw_arch: str):
    """(runner holding the parsed model, its HN, its params, the attempts made), per the module docstring."""
    graph = read_graph(tflite_path)
    end = [node_name(graph.logits)] if graph.softmax else None
    attempts: list[dict] = []
    while True:
        runner = hailo_sdk.open_runner(sdk, hw_arch=hw_arch)
        log.info("parse: translate_tf_model(%s, %r, %s)", tflite_path, net_name, _nodes(end))
        try:
            runner.translate_tf_model(str(tflite_path), net_name, **({} if end is None else {"end_node_names": end}))
        except Exception as exc:  # ParsingWithRecommendationException, or another of the SDK's non-public types
            log.debug("translate_tf_model failed", exc_info=True)
            attempts.append({"end_node_names": end, "error": f"{type(exc).__name__}: {_one_line(exc)}"})
            recommended = recommended_end_nodes(exc) if isinstance(exc, sdk.ParsingError) else []
            tried = [a["end_node_names"] for a in attempts]
            untried = [c for c in ([recommended] if recommended else []) + [None] if c not in tried]  # None: no names
            if not untried or len(attempts) >= 3:
                raise _give_up(tflite_path, attempts, graph) from None
            retry = untried[0]
            log.warning("parse: the Dataflow Compiler could not parse %s with %s (%s); retrying with %s",
                        tflite_path, _nodes(end), attempts[-1]["error"][:300],
                        f"its recommended end nodes {retry}" if retry else "no node names")
            end = retry
            continue
        attempts.append({"end_node_names": end, "error": None})
        with hailo_sdk.sdk_call(f"{tflite_path}: reading the parsed HN and params"):
            hn, params = runner.get_hn_dict(), dict(runner.get_params())
        _check_complete(tflite_path, hn, graph, end)
        if len(attempts) > 1:
            log.warning("parse: parsed %s with %s after %d attempts", tflite_path, _nodes(end), len(attempts))
        return runner, hn, params, attempts


def _nodes(end) -> str:
    return "no node names" if end is None else f"end_node_names={end}"


def _hint(graph: Graph) -> str:
    if graph.dynamic_flatten:
        return ("; its Flatten is SHAPE/STRIDED_SLICE/PACK/RESHAPE (a dynamic batch): export the model with a "
                "fixed batch of 1 so that Flatten is one RESHAPE")
    return ""


def _give_up(path, attempts: list[dict], graph: Graph) -> PipelineError:
    tried = "; ".join(f"{_nodes(a['end_node_names'])}: {a['error']}" for a in attempts)
    return PipelineError(f"{path}: the Dataflow Compiler could not parse the model ({tried}){_hint(graph)}")


def _check_complete(path, hn: dict, graph: Graph, end) -> None:
    """Refuse a parse that lost layers with weights or does not end at the logits."""
    layers = hn_view.layers(hn, path)
    kernels = [layer for layer in layers if layer.kernel_shape is not None and layer.type != "normalization"]
    width = int(np.prod(layers[-1].output_shape[1:])) if layers else 0
    if len(kernels) != graph.weight_layers or width != graph.logits_width:
        raise PipelineError(
            f"{path}: the Dataflow Compiler parsed the model only up to {_nodes(end)}: {len(kernels)} of "
            f"{graph.weight_layers} layers with weights, output width {width} instead of the logits' "
            f"{graph.logits_width}; the rest would have to run on the host, which this pipeline does not do"
            f"{_hint(graph)}")
