"""Stage analyze_noise: per-layer SNR of the quantized model against float (`hailo analyze-noise`).

    python -m stages.noise [--calibration-size N]   # writes metrics/noise.json and metrics/noise_snr.csv

`noise.dataset` picks the images: `calibration` (the optimize stage's calibration images, selected
by the same `calibration` params and option) or `validation` (all validation images).  The SNR per
layer is defined in `hailopipe.quantization.noise`; `dvc metrics diff` on metrics/noise.json and
`dvc plots diff` on the "Per-layer SNR" plot show which layer got better or worse between two
experiments.
"""

import argparse
import logging

from hailopipe import data
from hailopipe.errors import run_main
from hailopipe.fileio import write_bytes, write_json
from hailopipe.quantization import noise
from stages import calibration, params, shared

log = logging.getLogger("stages.noise")
HAR, QHAR, DATA = "models/mnist.har", "models/mnist_quantized.har", "data/mnist.npz"
METRICS, PLOT = "metrics/noise.json", "metrics/noise_snr.csv"
DATASETS = ("calibration", "validation")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calibration-size", help="overrides params.yaml calibration.size")
    args = parser.parse_args()
    p = params.load()
    p.override("calibration.size", args.calibration_size)
    backend = shared.backend(p, "noise")
    x_val = data.load_split(DATA)["x_val"]
    dataset = p.choice("noise.dataset", DATASETS)
    x = calibration.images(p, x_val) if dataset == "calibration" else data.to_raw(x_val)
    metrics, table = noise.report(backend.analyze_noise(HAR, QHAR, x))
    write_json(METRICS, metrics)
    write_bytes(PLOT, table.encode())
    log.info("analyze_noise: %d %s images; SNR per layer (dB): %s", len(x), dataset,
             ", ".join(f"{name} {v['snr_db']:.1f} (alone {v['isolated_snr_db']:.1f})"
                       for name, v in metrics["layers"].items()))


if __name__ == "__main__":
    run_main(main)
