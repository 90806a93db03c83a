"""The evaluate step: accuracy of the float, quantized and compiled models on the validation set.

(a) float: the exported TFLite model run by LiteRT's reference kernels (no TensorFlow import);
(b) quantized: the quantized HAR emulated by the backend (SDK_QUANTIZED), on raw pixels 0-255
    (its model script's normalization maps them to the model's pixels / 255);
(c) compiled: the compiled file run through the runtime with FLOAT32 streams, raw pixels in.
Also: the confusion matrix of (c), how many predictions (b) and (c) disagree on (0 for a faithful
compile), the float HAR against the TFLite logits (a check of the parser), and artefact sizes.

Every figure is the same on any CPU: LiteRT runs its reference kernels (plain loops in a fixed
order; XNNPACK's kernels, its default, pick the instruction set at run time and so the last bits),
and the backend's native view of the HAR sums its products exactly (`network.forward`).
"""

from __future__ import annotations

import logging
import os

import numpy as np

from hailopipe import data

log = logging.getLogger(__name__)


def tflite_logits(path, x: np.ndarray) -> np.ndarray:
    """Run the float TFLite model on NHWC float32 `x` with LiteRT's reference kernels."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(model_path=str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    inp = interp.get_input_details()[0]
    interp.resize_tensor_input(inp["index"], list(x.shape))
    interp.allocate_tensors()
    interp.set_tensor(inp["index"], np.ascontiguousarray(x, np.float32))
    interp.invoke()
    return interp.get_tensor(interp.get_output_details()[0]["index"]).copy()


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == labels).mean())


def confusion(pred: np.ndarray, labels: np.ndarray, classes: int = 10) -> np.ndarray:
    m = np.zeros((classes, classes), np.int64)
    np.add.at(m, (labels.astype(np.int64), pred.astype(np.int64)), 1)
    return m


def evaluate(backend, tflite_path, har_path, qhar_path, hef_path, pixels: np.ndarray,
             y: np.ndarray) -> tuple[dict, np.ndarray]:
    """Metrics dict and the compiled model's predictions, for uint8 [N, 28, 28] `pixels`: the float
    models take pixels / 255, the quantized and compiled ones raw pixels (their script normalizes)."""
    x, raw = data.to_float(pixels), data.to_raw(pixels)
    c = backend.infer_compiled(hef_path, raw)  # first: without a device (hailo backend) fail before the rest
    fl = tflite_logits(tflite_path, x)
    har_fl = backend.infer_native(har_path, x)
    q = backend.infer_quantized(qhar_path, raw)
    pred = c.argmax(axis=1)
    metrics = {
        "float": {"accuracy": accuracy(fl, y)},
        "quantized": {"accuracy": accuracy(q, y)},
        "compiled": {"accuracy": accuracy(c, y),
                     "disagree_with_quantized": int((pred != q.argmax(axis=1)).sum()),
                     "agree_with_float": float((pred == fl.argmax(axis=1)).mean())},
        "parse": {"max_abs_logit_diff": float(np.abs(har_fl - fl).max())},
        "images": int(len(y)),
        "confusion": confusion(pred, y).tolist(),
        "size_bytes": {name: os.path.getsize(p) for name, p in (("tflite", tflite_path), ("har", har_path),
                                                                 ("quantized_har", qhar_path), ("compiled", hef_path))},
    }
    drop = metrics["float"]["accuracy"] - metrics["compiled"]["accuracy"]
    metrics["compiled"]["drop_vs_float_pp"] = round(100 * drop, 4)
    return metrics, pred
