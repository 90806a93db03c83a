"""Stage optimize: calibrate on `calibration.size` validation images and quantize (params.yaml `optimize`).

    python -m stages.optimize [--calibration-size N]   # models/mnist.har -> models/mnist_quantized.har,
                                                       # metrics/optimize.json (what ran)

dvc.yaml passes `--calibration-size ${calibration.size}` (see the note there); without the option
the value is read from params.yaml.  Which images: `calibration.selection` first (the first N, as
in the original workflow) or random (N drawn with `calibration.seed`).  What each `optimize` key
does is documented in params.yaml and in `hailopipe.quantization.optimizer`.
"""

import argparse
import logging

from hailopipe import data
from hailopipe.errors import run_main
from hailopipe.fileio import write_json
from hailopipe.quantization.config import CLIPPING_MODES, LEVELS, FinetuneConfig, OptimizeConfig
from stages import calibration, params, shared

log = logging.getLogger("stages.optimize")
HAR, DATA, OUT = "models/mnist.har", "data/mnist.npz", "models/mnist_quantized.har"
METRICS = "metrics/optimize.json"


def normalization(p: params.Params) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """optimize.normalization's mean and std (raw pixels -> the model's domain), one value or one per channel."""
    mean, std = p.float_list("optimize.normalization.mean"), p.float_list("optimize.normalization.std", above=0.0)
    if len(mean) != len(std):
        raise p.fail("optimize.normalization", "must give as many std values as mean values",
                     p.mapping("optimize.normalization"))
    return tuple(mean), tuple(std)


def config(p: params.Params, calib_size: int, layers: list[str] | None, modes) -> OptimizeConfig:
    """The OptimizeConfig params.yaml asks for, every value checked (precision against the network's
    `layers` and the backend's `modes`, each unless None)."""
    ft = FinetuneConfig(epochs=p.int("optimize.finetune.epochs", 1, 1000),
                        learning_rate=p.float("optimize.finetune.learning_rate", 1e-9, 1.0),
                        batch_size=p.int("optimize.finetune.batch_size", 1, 100000))
    precision = p.mapping("optimize.precision")
    unknown = sorted(set(precision) - set(layers)) if layers is not None else []
    if unknown:
        raise p.fail("optimize.precision", f"names unknown layer(s) {unknown}; layers are {layers}", precision)
    for name, mode in precision.items():
        if modes is not None and mode not in modes:
            raise p.fail(f"optimize.precision.{name}", f"must be a precision mode, one of {', '.join(modes)}", mode)
    clipping_values = p.float_pair("optimize.activation_clipping.clipping_values")
    if not 0.0 <= clipping_values[0] < clipping_values[1] <= 100.0:
        raise p.fail("optimize.activation_clipping.clipping_values", "must be [low, high] percentiles with "
                     "0 <= low < high <= 100", list(clipping_values))
    return OptimizeConfig(
        calib_size=calib_size,
        per_channel=p.choice("optimize.weights", ("per_channel", "per_tensor")) == "per_channel",
        normalization=normalization(p), precision=precision,
        optimization_level=p.int("optimize.optimization_level", min(LEVELS), max(LEVELS)),
        clipping_mode=p.choice("optimize.activation_clipping.mode", CLIPPING_MODES),
        clipping_values=clipping_values, finetune=ft)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calibration-size", help="overrides params.yaml calibration.size")
    args = parser.parse_args()
    p = params.load()
    p.override("calibration.size", args.calibration_size)
    backend = shared.backend(p, "optimize")
    calib = calibration.images(p, data.load_split(DATA)["x_val"])
    cfg = config(p, len(calib), backend.layer_names(HAR), backend.PRECISION_MODES)
    log.info("optimize: optimization_level %d, activation clipping %s, weights %s, precision %s",
             cfg.optimization_level, cfg.clipping_mode, "per_channel" if cfg.per_channel else "per_tensor",
             cfg.precision or "a8_w8")
    summary = backend.optimize(HAR, OUT, calib, cfg, p.hw_arch())
    applied = summary.get("applied", {})
    log.info("optimize: applied %s", ", ".join(f"{k} {v}" for k, v in applied.items()))
    write_json(METRICS, {"applied": applied, "calibration_images": len(calib),
                         "sdk_warnings": len(summary.get("warnings", []))})
    for warning in summary.get("warnings", []):  # the SDK's own warnings that change the result
        log.warning("optimize: warning from the %s backend: %s", p.str("backend"), warning)
    log.info("optimize: wrote %s", OUT)


if __name__ == "__main__":
    run_main(main)
