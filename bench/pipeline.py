"""Benchmark the pipeline's targets in a temporary copy of this repo, and print them.

    MNIST_NPZ=../shared/data/mnist.npz python bench/pipeline.py [--keep DIR]

Measures, with the default params.yaml: the full `dvc repro` from scratch, a no-op `dvc repro`, a
`calibration.size` change (only check_params and optimize .. evaluate re-run), the accuracies from
metrics/evaluate.json, and whether any stage after train imports TensorFlow; then, from that finished
dense pipeline, `dvc exp run -S train.arch=cnn` (Hailo's MNIST CNN with params.yaml's CNN schedule:
every stage from train on re-runs) with the CNN's accuracies (skip it with --no-cnn).  Prints each
figure beside its target.  The copy is deleted at the end, also when a step fails, unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LATER_STAGES = ("parse", "optimize", "compile", "evaluate")


def sh(repo: Path, *cmd: str, env=None) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed:\n{p.stdout}\n{p.stderr}")
    return dt, p


def copy_repo(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        if f == "dvc.lock" or f.startswith("tests/") or not (ROOT / f).is_file():
            continue
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, dest / f)


def imports_tensorflow(repo: Path, stage: str, env) -> bool:
    """Run the stage script in-process under a wrapper and report whether TF got imported."""
    code = ("import runpy, sys; sys.argv = ['x']; runpy.run_module('stages.%s', run_name='__main__'); "
            "print('TF' if any(m in sys.modules for m in ('tensorflow', 'keras')) else 'noTF')" % stage)
    _, p = sh(repo, sys.executable, "-c", code, env=env)
    return p.stdout.strip().splitlines()[-1] == "TF"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", help="run in this directory and keep it")
    ap.add_argument("--no-cnn", dest="cnn", action="store_false", help="skip the `train.arch=cnn` experiment")
    args = ap.parse_args()
    if os.environ.get("MNIST_NPZ"):  # a relative path is relative to here, not to the copy
        os.environ["MNIST_NPZ"] = str(Path(os.environ["MNIST_NPZ"]).resolve())
        if not Path(os.environ["MNIST_NPZ"]).is_file():
            sys.exit(f"error: MNIST_NPZ={os.environ['MNIST_NPZ']}: file not found")
    elif not (Path.home() / ".keras/datasets/mnist.npz").exists():
        sys.exit("error: set MNIST_NPZ to a local mnist.npz (no internet here)")
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    try:
        measure(work, args.cnn)
    finally:
        if args.keep:
            print(f"(repo copy kept in {work / 'repo'})")
        else:
            shutil.rmtree(work, ignore_errors=True)


def cnn_rows(repo: Path, env) -> list[tuple]:
    """`dvc exp run -S train.arch=cnn` on the finished dense pipeline: its time, the stages it ran
    and the CNN's accuracies (the experiment's results are in the workspace afterwards)."""
    exp, p = sh(repo, "dvc", "exp", "run", "-S", "train.arch=cnn", env=env)
    ran = re.findall(r"Running stage '(\w+)'", p.stdout)
    metrics = json.loads((repo / "metrics/evaluate.json").read_text())
    fl, c = metrics["float"]["accuracy"], metrics["compiled"]["accuracy"]
    want = {"train", "parse", "optimize", "analyze_noise", "compile", "evaluate"}
    return [
        ("dvc exp run -S train.arch=cnn (s)", f"{exp:.1f}", "<= 180, re-runs train on", exp <= 180 and want <= set(ran),
         f"ran {', '.join(ran)}"),
        ("CNN float accuracy", f"{fl:.4f}", ">= 0.990", fl >= 0.990, ""),
        ("CNN compiled int8 accuracy", f"{c:.4f}", f">= {fl - 0.001:.4f} (float - 0.1 pp)", c >= fl - 0.001 - 1e-12,
         f"drop {100 * (fl - c):.2f} pp"),
    ]


def cpu_flags() -> str:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return " ".join(sorted(set(re.findall(r"\b(avx2|avx512_vnni|avx_vnni|amx_int8)\b", text)))) or "none of them"


def measure(work: Path, cnn: bool = True) -> None:
    repo = work / "repo"
    if repo.exists():
        shutil.rmtree(repo)
    copy_repo(repo)
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    for cmd in (["git", "init", "-q"], ["git", "config", "user.name", "bench"],
                ["git", "config", "user.email", "bench@example.com"], ["git", "add", "-A"],
                ["git", "commit", "-qm", "bench"]):
        sh(repo, *cmd, env=env)

    full, p = sh(repo, "dvc", "repro", env=env)
    ran = re.findall(r"Running stage '(\w+)'", p.stdout)
    noop, p2 = sh(repo, "dvc", "repro", env=env)
    noop_ran = re.findall(r"Running stage '(\w+)'", p2.stdout)
    params = (repo / "params.yaml").read_text()
    size = int(re.search(r"^\s+size:\s*(\d+)", params, re.M).group(1))
    (repo / "params.yaml").write_text(re.sub(r"(^\s+size:\s*)\d+", rf"\g<1>{size // 2}", params, count=1, flags=re.M))
    calib, p3 = sh(repo, "dvc", "repro", env=env)
    calib_ran = re.findall(r"Running stage '(\w+)'", p3.stdout)
    (repo / "params.yaml").write_text(params)
    sh(repo, "dvc", "repro", env=env)
    metrics = json.loads((repo / "metrics/evaluate.json").read_text())
    tf_stages = [s for s in LATER_STAGES if imports_tensorflow(repo, s, env)]

    fl, q, c = (metrics[k]["accuracy"] for k in ("float", "quantized", "compiled"))
    rows = [
        ("full dvc repro (s)", f"{full:.1f}", "<= 90", full <= 90, f"ran {', '.join(ran)}"),
        ("no-op dvc repro (s)", f"{noop:.2f}", "<= 2", noop <= 2 and not noop_ran, f"ran {noop_ran or 'nothing'}"),
        (f"calibration.size {size}->{size // 2} (s)", f"{calib:.1f}", "<= 15",
         calib <= 15 and set(calib_ran) - {"check_params", "analyze_noise"} == {"optimize", "compile", "evaluate"},
         f"ran {', '.join(calib_ran)}"),
        ("float accuracy", f"{fl:.4f}", ">= 0.980", fl >= 0.980, ""),
        ("quantized (HAR emulated) accuracy", f"{q:.4f}", "", True, ""),
        ("compiled int8 accuracy", f"{c:.4f}", f">= {fl - 0.001:.4f} (float - 0.1 pp)", c >= fl - 0.001 - 1e-12,
         f"drop {100 * (fl - c):.2f} pp"),
        ("stages after train importing TF", ", ".join(tf_stages) or "none", "none", not tf_stages, ""),
    ]
    if cnn:
        rows += cnn_rows(repo, env)
    w = max(len(r[0]) for r in rows)
    print(f"{'figure':<{w}}  {'measured':>12}  {'target':<28}  ok    note")
    for name, val, target, ok, note in rows:
        print(f"{name:<{w}}  {val:>12}  {target:<28}  {'yes' if ok else 'NO':<4}  {note}")
    print(f"(machine: {os.cpu_count()} cores, CPU flags {cpu_flags()})")


if __name__ == "__main__":
    main()
