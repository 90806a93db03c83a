"""Stage optimize: calibrate on the first `calibration.size` validation images, quantize to int8.

    python -m stages.optimize [--calibration-size N]   # models/mnist.har -> models/mnist_quantized.har

dvc.yaml passes `--calibration-size ${calibration.size}` (see the note there); without the option
the value is read from params.yaml.
"""

import argparse
import logging

import yaml

from hailopipe import backends, data, params
from hailopipe.errors import run_main
from hailopipe.optimizer import OptimizeConfig

log = logging.getLogger("stages.optimize")
HAR, DATA, OUT = "models/mnist.har", "data/mnist.npz", "models/mnist_quantized.har"


def main() -> None:
    p = params.load()
    backend = backends.get(p.backend())
    arrays = data.load_split(DATA)
    n_val = len(arrays["y_val"])
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calibration-size", default=None, help="overrides params.yaml calibration.size")
    given = parser.parse_args().calibration_size
    if given is not None:  # parsed like a YAML value, then checked like one from params.yaml
        p.data.setdefault("calibration", {})["size"] = yaml.safe_load(given)
    size = p.int("calibration.size", 1, n_val)
    precision = p.mapping("optimize.precision")
    cfg = OptimizeConfig(calib_size=size,
                         per_channel=p.choice("optimize.weights", ("per_channel", "per_tensor")) == "per_channel",
                         input_range=p.float_pair("optimize.input_range"), precision=precision)
    calib = data.to_float(arrays["x_val"][:size])
    log.info("optimize: calibrating on the first %d of %d validation images", size, n_val)
    backend.optimize(HAR, OUT, calib, cfg, p.hw_arch())
    log.info("optimize: wrote %s", OUT)


if __name__ == "__main__":
    run_main(main)
