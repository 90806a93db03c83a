"""Stage check_params: every value of params.yaml checked before any other stage runs.

    python -m stages.check_params          # writes data/params_checked.txt

Every stage after data depends on its output, so a bad value (`dvc exp run -S 'train.hidden=[0]'`,
`-S backend=foo`) stops the pipeline here, with the stage's own one-line error, before DVC removes
the outputs of the stages that would have used it: they stay as they were.  The checks are the
stages' own (each stage's config function), so a value is checked by one piece of code.  What
needs an artefact (a precision mode's layer name, which needs the parsed network; whether the
hailo backend's SDK is installed) is checked by the stage that has it.  The output's content
never changes, so a new value re-runs only the stages that use it.
"""

import logging

from hailopipe import data
from hailopipe.errors import run_main
from hailopipe.fileio import write_bytes
from stages import calibration, noise, optimize, params, parse, shared, train

log = logging.getLogger("stages.check_params")
OUT = "data/params_checked.txt"


def main() -> None:
    p = params.load()
    shared.backend_name(p)
    p.hw_arch()
    train.config(p)
    parse.net_name(p)
    size, _, _ = calibration.selection(p, data.SHAPES["x_test"][0])
    optimize.config(p, size, None, None)
    p.choice("noise.dataset", noise.DATASETS)
    write_bytes(OUT, b"params.yaml: every value checked (stages/check_params.py)\n")
    log.info("check_params: %s: every value checked", p.path)


if __name__ == "__main__":
    run_main(main)
