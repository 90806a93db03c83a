"""The emulator backend: Hailo's parse / optimize / compile steps done by this project's code."""

from __future__ import annotations

import logging

import numpy as np

from hailopipe import har, hef, network, optimizer, tflite
from hailopipe.backends import compiled_har_path
from hailopipe.engine import Engine
from hailopipe.fileio import write_bytes
from hailopipe.runtime import HEF, InferModel

log = logging.getLogger(__name__)


def parse(tflite_path, har_path, net_name: str, hw_arch: str) -> dict:
    """Translate the TFLite model into a HAR in state hailo_model (`translate_tf_model` + `save_har`)."""
    net = tflite.read(tflite_path, net_name)
    har.save(har.Har("hailo_model", net, metadata={"hw_arch": hw_arch, "source": str(tflite_path)}), har_path)
    return {"layers": [f"{l.name} {l.kernel.shape[0]}->{l.kernel.shape[1]} {l.activation}" for l in net.layers],
            "params": int(sum(l.kernel.size + l.bias.size for l in net.layers))}


def optimize(har_path, out_har_path, calib: np.ndarray, cfg: optimizer.OptimizeConfig, hw_arch: str) -> dict:
    """Calibrate and quantize (`runner.optimize`), writing the quantized HAR."""
    src = har.load(har_path, expect_state="hailo_model")
    qnet = optimizer.quantize_network(src.net, calib, cfg)
    meta = {"hw_arch": hw_arch,
            "model_script": optimizer.model_script(src.net, cfg, ranges=[l.limvals for l in qnet.layers]),
            "calibset_size": int(len(calib))}
    har.save(har.Har("quantized_model", src.net, qnet, meta), out_har_path)
    return {"layers": {l.name: {"limvals": list(l.limvals), "scale": l.out_scale, "zero_point": l.out_zp}
                       for l in qnet.layers}}


def compile(har_path, hef_path, hw_arch: str) -> dict:
    """Write the compiled file (`runner.compile()` returns its bytes) and return the compile report."""
    src = har.load(har_path, expect_state="quantized_model")
    compiled = hef.compile_network(src.qnet, hw_arch)
    write_bytes(hef_path, compiled)
    har.save(har.Har("compiled_model", src.net, src.qnet, src.metadata, compiled), compiled_har_path(hef_path))
    return hef.compile_report(src.qnet)


def infer_native(har_path, x: np.ndarray) -> np.ndarray:
    """The parsed float model (SDK_NATIVE): float32 logits of the HAR's network."""
    return network.forward(har.load(har_path, expect_state="hailo_model").net, x)


def infer_quantized(har_path, x: np.ndarray) -> np.ndarray:
    """The quantized HAR emulated (SDK_QUANTIZED): float in, dequantized logits out."""
    q = har.load(har_path, expect_state="quantized_model").qnet
    from hailopipe import quant

    out = Engine(q).run(quant.quantize(x, q.input_scale, q.input_zp, q.input_bits))
    return quant.dequantize(out, q.output.out_scale, q.output.out_zp)


def infer_compiled(hef_path, x: np.ndarray) -> np.ndarray:
    """The compiled file through the runtime, float32 in and out as HailoRT's FLOAT32 vstreams."""
    return InferModel(HEF(hef_path)).run_float(x)
