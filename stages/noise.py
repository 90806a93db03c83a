"""Stage analyze_noise: per-layer SNR of the quantized model against float (`hailo analyze-noise`).

    python -m stages.noise [--calibration-size N]   # writes metrics/noise.json and metrics/noise_snr.csv

`noise.dataset` picks the images: `calibration` (the optimize stage's calibration images, selected
by the same `calibration` params and option) or `validation` (all validation images).  The SNR per
layer is defined in `hailopipe.noise`; `dvc metrics diff` on metrics/noise.json and `dvc plots diff`
on the "Per-layer SNR" plot show which layer got better or worse between two experiments.
"""

import logging

from hailopipe import backends, data, noise, params
from hailopipe.errors import PipelineError, run_main
from hailopipe.fileio import write_bytes, write_json
from stages.optimize import calibration_images

log = logging.getLogger("stages.noise")
HAR, QHAR, DATA = "models/mnist.har", "models/mnist_quantized.har", "data/mnist.npz"
METRICS, PLOT = "metrics/noise.json", "metrics/noise_snr.csv"
DATASETS = ("calibration", "validation")


def main() -> None:
    p = params.load()
    backend = backends.get(p.backend())
    x_val = data.load_split(DATA)["x_val"]
    dataset = p.choice("noise.dataset", DATASETS)
    x = calibration_images(p, x_val) if dataset == "calibration" else data.to_float(x_val)
    if hasattr(backend, "analyze_noise"):
        result = backend.analyze_noise(HAR, QHAR, x)
    elif p.backend() == "emulator":
        result = noise.analyze_har(HAR, QHAR, x)
    else:
        raise PipelineError(f"params.yaml: backend {p.backend()!r} has no noise analysis yet; use backend: emulator")
    metrics, table = noise.report(result)
    write_json(METRICS, metrics)
    write_bytes(PLOT, table.encode())
    log.info("analyze_noise: %d %s images; SNR per layer (dB): %s", len(x), dataset,
             ", ".join(f"{name} {v['snr_db']:.1f} (alone {v['isolated_snr_db']:.1f})"
                       for name, v in metrics["layers"].items()))


if __name__ == "__main__":
    run_main(main)
