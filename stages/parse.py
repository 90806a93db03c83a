"""Stage parse: translate models/float/model.tflite into models/mnist.har (state hailo_model).

    python -m stages.parse
"""

import logging

from hailopipe.errors import run_main
from stages import params, shared

log = logging.getLogger("stages.parse")
MODEL, OUT = "models/float/model.tflite", "models/mnist.har"


def net_name(p: params.Params) -> str:
    return p.str("parse.net_name", r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def main() -> None:
    p = params.load()
    backend = shared.backend(p, "parse")
    net_name_ = net_name(p)
    summary = backend.parse(MODEL, OUT, net_name_, p.hw_arch())
    log.info("parse: %s -> %s (%s backend, %s): %s; %d params", MODEL, OUT, p.str("backend"), p.hw_arch(),
             ", ".join(summary["layers"]), summary["params"])


if __name__ == "__main__":
    run_main(main)
