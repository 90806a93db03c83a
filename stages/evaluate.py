"""Stage evaluate: accuracy of the float, quantized and compiled models on the 10k validation images.

    python -m stages.evaluate        # writes metrics/evaluate.json and metrics/predictions.csv
"""

import logging

from hailopipe import data, evaluate
from hailopipe.errors import run_main
from hailopipe.fileio import write_bytes, write_json
from stages import params, shared

log = logging.getLogger("stages.evaluate")
TFLITE, HAR, QHAR, HEF, DATA = ("models/float/model.tflite", "models/mnist.har", "models/mnist_quantized.har",
                                "models/mnist.hef", "data/mnist.npz")
METRICS, PREDICTIONS = "metrics/evaluate.json", "metrics/predictions.csv"


def main() -> None:
    p = params.load()
    backend = shared.backend(p, "evaluate")
    arrays = data.load_split(DATA)
    x, y = arrays["x_val"], arrays["y_val"]
    metrics, pred = evaluate.evaluate(backend, TFLITE, HAR, QHAR, HEF, x, y)
    write_json(METRICS, metrics)
    rows = "".join(f"{a},{b}\n" for a, b in zip(y.tolist(), pred.tolist()))
    write_bytes(PREDICTIONS, ("actual,predicted\n" + rows).encode())
    log.info("evaluate: accuracy float %.4f, quantized %.4f, compiled %.4f (drop %.2f pp) on %d images",
             metrics["float"]["accuracy"], metrics["quantized"]["accuracy"], metrics["compiled"]["accuracy"],
             metrics["compiled"]["drop_vs_float_pp"], metrics["images"])


if __name__ == "__main__":
    run_main(main)
