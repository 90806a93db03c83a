"""Accuracy against calibration size, as a DVC plot, from a `dvc exp run --queue` sweep.

    python bench/calibration_sweep.py queue 16 64 256 1000 2000 5000   # one queued experiment per size
    dvc queue start -j 1                                               # runs them: optimize .. evaluate only
    dvc queue status                                                   # wait until all are Success
    python bench/calibration_sweep.py collect                          # -> metrics/calibration_sweep.csv
    dvc plots show                                                     # plot "Accuracy against calibration size"

`queue` runs `dvc exp run --queue -S calibration.size=N` for each N (DVC's own grid syntax,
`dvc exp run --queue -S calibration.size=16,64,256`, queues the same).  Each experiment re-runs only
the stages that depend on the calibration (optimize, analyze_noise, compile, evaluate) in its own
copy of the repo, so the workspace is left alone.  `collect` reads `dvc exp show --json`: the
baseline commit (HEAD) and its experiments, keeps those whose params equal HEAD's in everything but
`calibration.size` and whose trained model (models/float/model.tflite) is HEAD's, byte for byte (so
the curve varies one thing, on one model), and writes one row per size, sorted:
`calibration_size, float, quantized, compiled` (accuracy on the validation set, from
metrics/evaluate.json), `output_snr_db` (from metrics/noise.json: measured on each experiment's
own calibration images unless `noise.dataset: validation`, which makes the column comparable across
sizes) and `model_md5`, the model every row was measured on.  Commit the CSV with the experiment you keep; `dvc plots diff` then compares curves
between commits.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hailopipe.errors import PipelineError, run_main
from hailopipe.fileio import write_bytes

log = logging.getLogger("calibration_sweep")
OUT = "metrics/calibration_sweep.csv"
COLUMNS = ("calibration_size", "float", "quantized", "compiled", "output_snr_db", "model_md5")
MODEL = "models/float/model.tflite"


def dvc(*args: str) -> str:
    p = subprocess.run(["dvc", *args], capture_output=True, text=True)
    if p.returncode != 0:
        raise PipelineError(f"dvc {' '.join(args)} failed: {(p.stderr or p.stdout).strip().splitlines()[-1:]}")
    return p.stdout


def _row(data: dict) -> tuple[dict, dict] | None:
    """(params without calibration.size, CSV row) of one `dvc exp show` revision, or None if it has no results."""
    params = json.loads(json.dumps(data["params"]["params.yaml"]["data"]))
    size = params.get("calibration", {}).pop("size", None)
    metrics = data.get("metrics") or {}
    ev = (metrics.get("metrics/evaluate.json") or {}).get("data")
    model = ((data.get("deps") or {}).get(MODEL) or {}).get("hash")
    if size is None or not ev or not model:
        return None
    snr = ((metrics.get("metrics/noise.json") or {}).get("data") or {}).get("output_snr_db", "")
    return params, {"calibration_size": size, "float": ev["float"]["accuracy"], "quantized": ev["quantized"]["accuracy"],
                    "compiled": ev["compiled"]["accuracy"], "output_snr_db": snr, "model_md5": model}


def collect(shown: list) -> list[dict]:
    """Rows of the baseline commit and of its experiments that differ from it only in calibration.size,
    all on the baseline's trained model."""
    baseline = next((r for r in shown if r["rev"] != "workspace"), None)
    if baseline is None or baseline.get("data") is None:
        raise PipelineError("dvc exp show: no baseline commit; commit the pipeline first")
    base = _row(baseline["data"])
    if base is None:
        raise PipelineError("dvc exp show: the baseline commit has no metrics/evaluate.json; run dvc repro and commit")
    rows = {base[1]["calibration_size"]: base[1]}
    for exp in baseline.get("experiments") or []:
        for rev in exp.get("revs") or []:
            got = _row(rev.get("data") or {})
            if got is None:
                continue
            name = exp.get("name") or rev["rev"][:7]
            if got[0] != base[0]:
                log.info("skip experiment %s: it changes more than calibration.size", name)
                continue
            if got[1]["model_md5"] != base[1]["model_md5"]:
                log.warning("skip experiment %s: it ran on another trained model (%s, not the baseline's %s); "
                            "queue the sweep again on this commit", name, got[1]["model_md5"], base[1]["model_md5"])
                continue
            rows.setdefault(got[1]["calibration_size"], got[1])
    return [rows[k] for k in sorted(rows)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    q = sub.add_parser("queue", help="queue one experiment per calibration size")
    q.add_argument("sizes", nargs="+", type=int)
    sub.add_parser("collect", help=f"write {OUT} from dvc exp show")
    args = ap.parse_args()
    if args.command == "queue":
        for n in args.sizes:
            dvc("exp", "run", "--queue", "-S", f"calibration.size={n}")
            log.info("queued calibration.size=%d", n)
        log.info("now: dvc queue start -j 1, wait for dvc queue status, then: python %s collect", sys.argv[0])
        return
    rows = collect(json.loads(dvc("exp", "show", "--json")))
    text = ",".join(COLUMNS) + "\n" + "".join(",".join(str(r[c]) for c in COLUMNS) + "\n" for r in rows)
    write_bytes(OUT, text.encode())
    log.info("wrote %s: %s", OUT, ", ".join(f"N={r['calibration_size']}: {r['compiled']:.4f}" for r in rows))


if __name__ == "__main__":
    run_main(main)
