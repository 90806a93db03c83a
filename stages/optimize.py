"""Stage optimize: calibrate on `calibration.size` validation images and quantize (params.yaml `optimize`).

    python -m stages.optimize [--calibration-size N]   # models/mnist.har -> models/mnist_quantized.har

dvc.yaml passes `--calibration-size ${calibration.size}` (see the note there); without the option
the value is read from params.yaml.  Which images: `calibration.selection` first (the first N, as
in the original workflow) or random (N drawn with `calibration.seed`).  What each `optimize` key
does is documented in params.yaml and in `hailopipe.optimizer`.
"""

import argparse
import logging

import numpy as np
import yaml

from hailopipe import backends, data, optimizer, params
from hailopipe.errors import run_main

log = logging.getLogger("stages.optimize")
HAR, DATA, OUT = "models/mnist.har", "data/mnist.npz", "models/mnist_quantized.har"


def calibration_images(p: params.Params, x_val: np.ndarray) -> np.ndarray:
    """The calibration images (NHWC float32) that params.yaml and `--calibration-size` select."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calibration-size", default=None, help="overrides params.yaml calibration.size")
    given = parser.parse_args().calibration_size
    if given is not None:  # parsed like a YAML value, then checked like one from params.yaml
        p.data.setdefault("calibration", {})["size"] = yaml.safe_load(given)
    size = p.int("calibration.size", 1, len(x_val))
    selection = p.choice("calibration.selection", optimizer.SELECTIONS)
    seed = p.int("calibration.seed", 0, 2**31 - 1)
    idx = optimizer.calibration_indices(len(x_val), size, selection, seed)
    log.info("calibration: %d of %d validation images (%s%s)", size, len(x_val), selection,
             f", seed {seed}" if selection == "random" else "")
    return data.to_float(x_val[idx])


def config(p: params.Params, calib_size: int) -> optimizer.OptimizeConfig:
    ft = optimizer.FinetuneConfig(epochs=p.int("optimize.finetune.epochs", 1, 1000),
                                  learning_rate=p.float("optimize.finetune.learning_rate", 1e-9, 1.0),
                                  batch_size=p.int("optimize.finetune.batch_size", 1, 100000))
    return optimizer.OptimizeConfig(
        calib_size=calib_size,
        per_channel=p.choice("optimize.weights", ("per_channel", "per_tensor")) == "per_channel",
        input_range=p.float_pair("optimize.input_range"), precision=p.mapping("optimize.precision"),
        optimization_level=p.int("optimize.optimization_level", min(optimizer.LEVELS), max(optimizer.LEVELS)),
        clipping_mode=p.choice("optimize.activation_clipping.mode", optimizer.CLIPPING_MODES),
        clipping_values=p.float_pair("optimize.activation_clipping.clipping_values"), finetune=ft)


def main() -> None:
    p = params.load()
    backend = backends.get(p.backend())
    calib = calibration_images(p, data.load_split(DATA)["x_val"])
    cfg = config(p, len(calib))
    log.info("optimize: optimization_level %d, activation clipping %s, weights %s, precision %s",
             cfg.optimization_level, cfg.clipping_mode, "per_channel" if cfg.per_channel else "per_tensor",
             cfg.precision or "a8_w8")
    summary = backend.optimize(HAR, OUT, calib, cfg, p.hw_arch())
    for warning in summary.get("warnings", []):  # the SDK's own warnings that change the result
        log.warning("optimize: warning from the %s backend: %s", p.backend(), warning)
    log.info("optimize: wrote %s", OUT)


if __name__ == "__main__":
    run_main(main)
