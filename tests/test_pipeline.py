"""End to end: the DVC pipeline on reduced params in a temporary copy of the repo.

Checks that `dvc repro` builds every artefact, that a second run does nothing, that changing
`calibration.size` re-runs only optimize/compile/evaluate and a layer size re-runs from train on,
that `dvc exp run -S` works, and that bad input stops a stage with one clear line.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
import yaml

from tests.conftest import ROOT, SHARED

MNIST = SHARED / "mnist.npz"
pytestmark = pytest.mark.skipif(not (MNIST.exists() or os.environ.get("MNIST_NPZ")),
                                reason="needs the real MNIST file (../shared/data/mnist.npz or $MNIST_NPZ)")


def run(repo, *cmd, check=True):
    env = dict(os.environ, MNIST_NPZ=os.environ.get("MNIST_NPZ", str(MNIST)),
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.com", PYTHONPATH="")
    bindir = os.path.dirname(sys.executable)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    p = subprocess.run(list(cmd), cwd=repo, env=env, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def ran_stages(p) -> set[str]:
    return set(re.findall(r"Running stage '(\w+)'", p.stdout + p.stderr))


def set_params(repo, **changes):
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        section, name = key.split("__")
        params[section][name] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


SMALL = {"train__hidden": [32, 16], "train__epochs": 1, "train__batch_size": 256, "calibration__size": 200}


def fresh_copy(dest, **params):
    """The repo's sources at `dest` (what git tracks or would add; no outputs, metrics or dvc.lock)
    with reduced params (SMALL unless given), committed in a new git repository."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    for f in files:
        if f.startswith(("metrics/", "tests/")) or f == "dvc.lock" or not (ROOT / f).is_file():
            continue
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, dest / f)
    set_params(dest, **(params or SMALL))
    run(dest, "git", "init", "-q")
    run(dest, "git", "config", "user.name", "test")
    run(dest, "git", "config", "user.email", "test@example.com")
    run(dest, "git", "add", "-A")
    run(dest, "git", "commit", "-qm", "sources")
    return dest


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return fresh_copy(tmp_path_factory.mktemp("pipeline") / "repo")


def test_full_run_builds_everything(repo):
    p = run(repo, "dvc", "repro")
    assert ran_stages(p) == {"check_params", "data", "train", "parse", "optimize", "analyze_noise", "compile",
                             "evaluate"}
    for out in ("data/mnist.npz", "models/float/model.tflite", "models/float/model.h5", "models/mnist.har",
                "models/mnist_quantized.har", "models/mnist.hef", "metrics/compile.json", "metrics/predictions.csv"):
        assert (repo / out).is_file(), out
    m = json.loads((repo / "metrics/evaluate.json").read_text())
    assert m["images"] == 10000
    for kind in ("float", "quantized", "compiled"):
        assert 0.8 < m[kind]["accuracy"] <= 1.0
    assert m["compiled"]["disagree_with_quantized"] == 0
    assert m["parse"]["max_abs_logit_diff"] < 1e-3
    n = json.loads((repo / "metrics/noise.json").read_text())
    assert n["images"] == 200 and set(n["layers"]) == {"fc1", "fc2", "fc3"}
    assert 20 < n["output_snr_db"] < 80
    assert (repo / "metrics/noise_snr.csv").read_text().startswith("layer,precision,snr_db,isolated_snr_db\n")
    applied = json.loads((repo / "metrics/optimize.json").read_text())["applied"]  # what the optimizer ran
    level = yaml.safe_load((repo / "params.yaml").read_text())["optimize"]["optimization_level"]
    assert applied["optimization_level"] == level and not (applied["bias_correction"] and applied["finetune"])
    assert "error" not in p.stderr.lower()
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "run")


def test_second_repro_does_nothing(repo):
    lock = (repo / "dvc.lock").read_text()
    p = run(repo, "dvc", "repro")
    assert ran_stages(p) == set()
    assert (repo / "dvc.lock").read_text() == lock


def test_calibration_change_reruns_only_the_tail(repo):
    set_params(repo, calibration__size=100)
    p = run(repo, "dvc", "repro")
    assert ran_stages(p) == {"check_params", "optimize", "analyze_noise", "compile", "evaluate"}


def test_noise_dataset_change_reruns_only_the_analysis(repo):
    set_params(repo, noise__dataset="validation")
    p = run(repo, "dvc", "repro")
    assert ran_stages(p) == {"check_params", "analyze_noise"}
    assert json.loads((repo / "metrics/noise.json").read_text())["images"] == 10000
    set_params(repo, noise__dataset="calibration")
    assert ran_stages(run(repo, "dvc", "repro")) == {"check_params", "analyze_noise"}


def test_snr_plot_renders(repo):
    shown = json.loads(run(repo, "dvc", "plots", "show", "--json").stdout)
    snr = shown["data"]["Per-layer SNR, quantized vs float (dB)"][0]["content"]["data"]["values"]
    assert [row["layer"] for row in snr] == ["fc1", "fc2", "fc3"]
    assert not [e for e in shown.get("errors", []) if e["source"] != "metrics/calibration_sweep.csv"]


def test_layer_size_change_reruns_from_train(repo):
    set_params(repo, train__hidden=[24, 16])
    p = run(repo, "dvc", "repro")
    assert ran_stages(p) == {"check_params", "train", "parse", "optimize", "analyze_noise", "compile", "evaluate"}
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "smaller")


def test_experiment_run_show_and_metrics_diff(repo):
    p = run(repo, "dvc", "exp", "run", "-S", "calibration.size=50")
    assert ran_stages(p) == {"check_params", "optimize", "analyze_noise", "compile", "evaluate"}
    show = run(repo, "dvc", "exp", "show", "--json").stdout
    assert '"size": 50' in show.replace(" ", "").replace('"size":50', '"size": 50')
    diff = run(repo, "dvc", "metrics", "diff", "--all").stdout
    assert "metrics/evaluate.json" in diff and "compiled.accuracy" in diff
    assert "metrics/noise.json" in diff and "layers.fc3.snr_db" in diff
    params_diff = run(repo, "dvc", "params", "diff").stdout
    assert "calibration.size" in params_diff and "50" in params_diff


def test_bad_param_stops_with_one_line(repo):
    before = (repo / "models/mnist_quantized.har").read_bytes()
    set_params(repo, calibration__size=0)
    p = run(repo, "dvc", "repro", check=False)
    assert p.returncode != 0
    assert "params.yaml: calibration.size must be between 1 and 10000, got 0" in p.stderr
    assert "Traceback" not in p.stderr
    assert ran_stages(p) == {"check_params"}  # refused before optimize ran: its output is the previous one, whole
    assert (repo / "models/mnist_quantized.har").read_bytes() == before
    set_params(repo, calibration__size=100)


@pytest.mark.parametrize("content", [b"", b"garbage" * 100])
def test_corrupt_har_stops_optimize(repo, content):
    run(repo, "dvc", "repro", "parse")
    har = repo / "models/mnist.har"
    good = har.read_bytes()
    har.chmod(0o644)
    har.write_bytes(content)
    try:
        p = run(repo, sys.executable, "-m", "stages.optimize", check=False)
        assert p.returncode == 1
        lines = [line for line in p.stderr.splitlines() if line.strip()]
        assert lines[-1].startswith("error: models/mnist.har:") and "Traceback" not in p.stderr
    finally:
        har.write_bytes(good)


def test_unknown_backend(repo):
    text = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(text.replace("backend: emulator", "backend: tpu"))
    try:
        p = run(repo, sys.executable, "-m", "stages.compile", check=False)
        assert p.returncode == 1 and "backend must be one of emulator, hailo, got 'tpu'" in p.stderr
    finally:
        (repo / "params.yaml").write_text(text)


OUTPUTS = ("models/float/model.h5", "models/float/model.tflite", "models/mnist.har", "models/mnist_quantized.har",
           "models/mnist.hef", "models/mnist_compiled.har", "metrics/evaluate.json", "metrics/noise.json")
RECOVER = (["git", "checkout", "--", "params.yaml", "dvc.lock", "metrics"], ["dvc", "checkout"])  # the README's


def _outputs(repo) -> dict:
    return {o: (repo / o).read_bytes() for o in OUTPUTS}


@pytest.mark.parametrize("value,message", [
    ("backend=foo", "backend must be one of emulator, hailo, got 'foo'"),
    ("train.hidden=[0]", "train.hidden[0] must be an integer between 1 and 8192, got 0"),
    ("+optimize.precision.fc9=a16_w16", "optimize.precision names unknown layer(s) ['fc9']"),
])
def test_a_failed_experiment_breaks_nothing(repo, value, message):
    """A bad value is refused with one line before any output is removed (check_params), or, when
    only a later stage can check it (the layer names need the parsed network), the README's
    recovery command puts everything back; then `dvc repro` runs no stage."""
    run(repo, "dvc", "repro")
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "before the experiment", check=False)
    before = _outputs(repo)
    p = run(repo, "dvc", "exp", "run", "-S", value, check=False)
    assert p.returncode != 0 and f"error: params.yaml: {message}" in p.stderr and "Traceback" not in p.stderr
    if "precision" not in value:
        assert ran_stages(p) == {"check_params"} and _outputs(repo) == before
    for cmd in RECOVER:
        run(repo, *cmd)
    start = time.perf_counter()
    p = run(repo, "dvc", "repro")
    assert ran_stages(p) == set() and time.perf_counter() - start < 10, p.stdout
    assert _outputs(repo) == before and run(repo, "git", "status", "--porcelain").stdout == ""



def test_cnn_experiment_runs_every_stage(repo):
    """`dvc exp run -S train.arch=cnn` on a finished dense pipeline (a narrower CNN than the default,
    one epoch at a higher learning rate): it re-runs from train on, and every stage's outputs
    describe the CNN."""
    run(repo, "dvc", "repro")
    p = run(repo, "dvc", "exp", "run", "-S", "train.arch=cnn", "-S", "train.conv=[4,8,8]",
            "-S", "train.learning_rate=0.01")
    assert ran_stages(p) == {"check_params", "train", "parse", "optimize", "analyze_noise", "compile", "evaluate"}
    m = json.loads((repo / "metrics/evaluate.json").read_text())
    for kind in ("float", "quantized", "compiled"):  # one short epoch of a narrow CNN: it learned (chance is 0.1)
        assert 0.5 < m[kind]["accuracy"] <= 1.0, m
    assert m["compiled"]["disagree_with_quantized"] == 0 and abs(m["compiled"]["drop_vs_float_pp"]) < 1.0
    report = json.loads((repo / "metrics/compile.json").read_text())["layers"]
    assert set(report) == {"normalization1", "conv1", "maxpool1", "conv2", "maxpool2", "conv3", "fc1"}  # (sorted keys)
    assert report["conv2"]["output_shape"] == [12, 12, 8] and report["conv2"]["macs"] == 12 * 12 * 8 * 3 * 3 * 4
    snr = json.loads((repo / "metrics/noise.json").read_text())["layers"]
    assert {"conv1", "conv2", "conv3", "fc1"} <= set(snr) and all(v["snr_db"] > 10 for k, v in snr.items()
                                                                   if k.startswith(("conv", "fc")))
    assert ran_stages(run(repo, "dvc", "repro")) == set()
