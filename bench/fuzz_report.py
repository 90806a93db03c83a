"""Run the fuzz cases of tests/test_fuzz.py, test_fuzz_models.py and test_fuzz_data.py and print, per
format, how many cases ran and how they ended.

    python bench/fuzz_report.py            # all formats
    python bench/fuzz_report.py har tflite # formats whose name starts with one of these words

Outcomes: `refused` (a PipelineError naming the file), `loaded` (the mutation left a valid file,
e.g. it changed a weight), `FAILED` (anything else: another exception, a timeout, too much
memory, a write under the fuzz directory); failures are listed below the table.  Exit status 1 if
any case failed.  (The CLI cases, tests/test_fuzz_cli.py, run only under pytest.)
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import test_fuzz, test_fuzz_data, test_fuzz_models
from tests.fuzzing import MIN_CASES, fuzz

FORMATS = {**test_fuzz.FORMATS, **test_fuzz_models.FORMATS, **test_fuzz_data.FORMATS}


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.ERROR)  # readers warn about odd but readable files
    names = [n for n in FORMATS if not argv or any(n.startswith(a) for a in argv)]
    print(f"{'format':38s} {'cases':>6s} {'refused':>8s} {'loaded':>7s} {'FAILED':>7s} {'seconds':>8s}  mutation kinds")
    failures, total = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(names):
            start = time.perf_counter()
            tally = fuzz(FORMATS[name], Path(tmp) / str(i))
            seconds = time.perf_counter() - start
            o = tally.outcomes
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(tally.kinds.items()))
            print(f"{name:38s} {tally.total:6d} {o['refused']:8d} {o['loaded']:7d} {o['FAILED']:7d} "
                  f"{seconds:8.1f}  {kinds}")
            failures += tally.failures
            total += tally.total
    print(f"{'total':38s} {total:6d}   (at least {MIN_CASES} per format required)")
    for line in failures:
        print("FAILED", line)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
