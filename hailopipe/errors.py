"""One error type for every expected failure, and the wrapper that turns it into one clear line.

Every reader and stage raises `PipelineError("<file or param>: <what is wrong>")` for bad input;
`run_main(main)` logs it as a single `error:` line and exits with status 1 (or the error's
`exit_status`: `hailopipe check` uses 2, its 1 meaning "not compatible"), so users never see a
traceback from deep inside a library.  Unexpected exceptions still show their traceback: those are
bugs, not bad input.
"""

from __future__ import annotations

import logging
import sys
from typing import Callable

log = logging.getLogger("hailopipe")


class PipelineError(Exception):
    """Bad input, bad params or a broken file: the message names what and why, in one line."""

    exit_status = 1  # what run_main exits with


def setup_logging(level: int = logging.INFO) -> None:
    """Plain `stage: message` lines on stderr, configured once per process."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("absl", "tensorflow", "h5py", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def run_main(main: Callable[[], None]) -> None:
    """Run a stage or command `main`; turn PipelineError into `error: ...` and exit status 1."""
    setup_logging()
    try:
        main()
    except PipelineError as exc:
        log.error("error: %s", exc)
        sys.exit(exc.exit_status)
    except KeyboardInterrupt:
        log.error("error: interrupted")
        sys.exit(130)
