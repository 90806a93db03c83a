"""Stage compile: the quantized HAR -> models/mnist.hef and the compile report metrics/compile.json.

    python -m stages.compile
"""

import logging
import os

from hailopipe.errors import run_main
from hailopipe.fileio import write_json
from stages import params, shared

log = logging.getLogger("stages.compile")
HAR, OUT, REPORT = "models/mnist_quantized.har", "models/mnist.hef", "metrics/compile.json"


def main() -> None:
    p = params.load()
    backend = shared.backend(p, "compile")
    report = backend.compile(HAR, OUT, p.hw_arch())
    write_json(REPORT, report)
    log.info("compile: wrote %s (%d bytes) for %s; %d MACs per image, %d bytes of weights", OUT,
             os.path.getsize(OUT), p.hw_arch(), report["total"]["macs"], report["total"]["weight_bytes"])


if __name__ == "__main__":
    run_main(main)
