"""The emulator's optimize step: `runner.optimize` with the model script's controls, then `save_har`."""

from __future__ import annotations

import numpy as np

from hailopipe.formats import har
from hailopipe.network import Pool
from hailopipe.quantization import arithmetic, model_script, optimizer
from hailopipe.quantization.config import OptimizeConfig

PRECISION_MODES = tuple(arithmetic.PRECISION_MODES)


def layer_names(har_path) -> list[str]:
    """The layers a precision mode can be set for (those with weights), in order."""
    return [d.name for d in har.load(har_path, expect_state="hailo_model").net.layers if not isinstance(d, Pool)]


def optimize(har_path, out_har_path, calib: np.ndarray, cfg: OptimizeConfig, hw_arch: str) -> dict:
    """Calibrate and quantize, writing the quantized HAR (with the equivalent model script)."""
    src = har.load(har_path, expect_state="hailo_model")
    qnet = optimizer.quantize_network(src.net, calib, cfg)
    ranges = [getattr(q, "limvals", None) for q in qnet.layers]  # a pooling layer has none of its own
    meta = {"hw_arch": hw_arch, "model_script": model_script.render(src.net, cfg, ranges=ranges),
            "calibset_size": int(len(calib))}
    har.save(har.Har("quantized_model", optimizer.with_normalization(src.net, cfg), qnet, meta), out_har_path)
    return {"layers": {q.name: {"limvals": list(q.limvals) if hasattr(q, "limvals") else None, "scale": q.out_scale,
                                "zero_point": q.out_zp} for q in [qnet.normalization, *qnet.layers]},
            "applied": optimizer.applied(cfg)}
