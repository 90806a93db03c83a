"""Stage data: fetch MNIST (or $MNIST_NPZ), verify it, write data/mnist.npz.

    python -m stages.data            # as dvc.yaml runs it
"""

import logging

from hailopipe import data
from hailopipe.errors import run_main

log = logging.getLogger("stages.data")
OUT = "data/mnist.npz"


def main() -> None:
    counts = data.prepare(OUT)
    log.info("data: wrote %s (%d train, %d validation images)", OUT, counts["train"], counts["val"])


if __name__ == "__main__":
    run_main(main)
